"""No silent wrong numbers (issue 19): options a backbone family does not have stop every tool and config system
before anything is built or read.

Each tool is run from its command line (in-process through its ``__main__`` block, see ``conftest.run_tool``); it
must exit non-zero with a message that names the option and the families that have it.  The checkpoint handed to
the test tools is a text file: a tool that built its model or read the file before checking would fail with a
different message (or, before this issue, evaluate the full network and exit 0).
"""
import importlib.util
import os
import shutil
import sys

import pytest
from conftest import SHARED, run_tool

import backbones
from backbones.capabilities import FAMILY_CAPABILITIES, OptionNotApplicable, capabilities, check_options, families_with

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG, MMDET, D2 = (os.path.join(ROOT, *p) for p in (('seg_configs',), ('det_configs', 'mmdet'),
                                                   ('det_configs', 'detectron2', 'quick_schedules')))
ELASTIC_SEG = os.path.join(SEG, 'deeplabv3_elastic-resnext50-d16-mg124_1xb2-40it_voc12subset-129x129.py')
SACT_SEG = os.path.join(SEG, 'deeplabv3_sact-resnet50-d16-mg124_1xb8-1k_voc12subset-321x321.py')
RSNET_SEG = os.path.join(SEG, 'deeplabv3_rs-resnet50-d16-mg124_s321-193-97_1xb8-1k_voc12subset-321x321.py')
ELASTIC_DET = os.path.join(MMDET, 'elastic', 'mask-rcnn_elastic-x50-32x4d_fpn_short_coco-subset.py')
RSNET_DET = os.path.join(MMDET, 'rsnet', 'faster-rcnn_rs-r50_fpn_short_coco-subset.py')
ELASTIC_D2 = os.path.join(D2, 'mask_rcnn_resnext50_elastic_FPN_quick.yaml')
HAS_MMSEG = importlib.util.find_spec('mmseg') is not None
HAS_MMDET = importlib.util.find_spec('mmdet') is not None
HAS_D2 = importlib.util.find_spec('detectron2') is not None


def _build_segmentor(config):
    """The segmentor of an MMSeg config, built in the mmseg scope (random weights)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    import plugins.mm  # noqa: F401
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(Config.fromfile(config).model)


def _run(args, cwd, timeout=300, env=None):
    """A tool's command line: in-process through its ``__main__`` block (``conftest.run_tool``; test_bad_inputs.py
    runs each tool once as a real process), a ``-m torch.distributed.run`` launch as processes."""
    return run_tool(args, cwd=cwd, env=env, timeout=timeout)


@pytest.fixture
def text_checkpoint(tmp_path):
    p = tmp_path / 'not_a_checkpoint.pth'
    p.write_text('this is not a checkpoint\n')
    return str(p)


# ------------------------------------------------------------------------------------------ the table
def test_every_family_is_in_the_table():
    fams = {backbones.model_family(n) for n in backbones.list_models()}
    assert fams <= set(FAMILY_CAPABILITIES), f'families without a capability row: {fams - set(FAMILY_CAPABILITIES)}'


@pytest.mark.parametrize('name', backbones.list_models())
def test_model_reports_the_table(name):
    fam = backbones.model_family(name)
    assert capabilities(name) == FAMILY_CAPABILITIES[fam]
    if name in ('resnext50_elastic', 'us_mobilenet_v1', 'rs_resnet18', 'sact_resnet50'):
        m = backbones.create(name, num_classes=0)
        assert m.capabilities == FAMILY_CAPABILITIES[fam]
        # the table agrees with what the model can actually switch
        assert ('width' in m.capabilities) == hasattr(m, 'width_context')
        assert ('resolution' in m.capabilities) == hasattr(m, 'resolution_context')
        assert ('private_bn' in m.capabilities) == hasattr(m, 'private_bn')
        assert ('ponder_cost' in m.capabilities) == hasattr(m, 'ponder_costs')


def test_check_options_names_the_families_that_have_it():
    with pytest.raises(OptionNotApplicable) as e:
        check_options('resnext50_elastic', {'--width': 'width'}, where='a tool')
    msg = str(e.value)
    assert '--width' in msg and 'resnext50_elastic' in msg and 'elastic family' in msg and 'slimmable' in msg
    assert families_with('resolution') == ['rsnet', 'slimmable']
    assert check_options('us_mobilenet_v1', {'--width': 'width', '--resolution': 'resolution'}) == capabilities(
        'us_mobilenet_v1')
    with pytest.raises(OptionNotApplicable, match='ponder cost'):
        check_options(None, {'tau': 'ponder_cost'}, label="backbone type='ResNetV1c'")


# ------------------------------------------------------------------------------------------ pretraining tool
@pytest.mark.parametrize('flags, model, expect', [
    (['--eval-widths', '1.0', '0.5'], 'resnext50_elastic', 'slimmable'),
    (['--widths', '0.25', '1.0'], 'rs_resnet18', 'slimmable'),
    (['--bn-resolutions', '96', '64'], 'sact_resnet50', 'rsnet'),
    (['--tau', '0.01'], 'us_mobilenet_v1', 'sact'),
    (['--calib-batches', '3'], 'rs_resnet18', 'slimmable'),
    (['--kd-type', 'ens'], 'us_mobilenet_v1', 'rsnet'),
])
def test_pretrain_refuses_a_flag_the_family_does_not_have(tmp_path, flags, model, expect):
    out = tmp_path / 'run'
    r = _run(['tools/pretrain.py', '--data-path', str(tmp_path / 'nowhere'), '--model', model, '--output-dir',
              str(out), *flags], cwd=ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert flags[0] in r.stderr and expect in r.stderr, r.stderr
    assert not out.exists(), 'the run directory (args.json) must not be written'


def test_pretrain_refuses_a_flag_the_method_does_not_read(tmp_path):
    r = _run(['tools/pretrain.py', '--data-path', str(tmp_path), '--model', 'us_mobilenet_v1', '--method', 'standard',
              '--num-subnets', '3', '--output-dir', str(tmp_path / 'run')], cwd=ROOT)
    assert r.returncode == 2 and '--num-subnets' in r.stderr and 'usnet' in r.stderr, r.stderr
    r = _run(['tools/pretrain.py', '--data-path', str(tmp_path), '--model', 'us_mobilenet_v1', '--method', 'usnet',
              '--policy-options', '{"num_subnets": 3}', '--output-dir', str(tmp_path / 'run')], cwd=ROOT)
    assert r.returncode == 2 and '--policy-options' in r.stderr, r.stderr


def test_pretrain_check_comes_before_reading_pretrained(tmp_path, text_checkpoint):
    r = _run(['tools/pretrain.py', '--data-path', str(tmp_path), '--model', 'resnext50_elastic', '--pretrained',
              text_checkpoint, '--eval-widths', '0.5', '--output-dir', str(tmp_path / 'run')], cwd=ROOT)
    assert r.returncode == 2 and '--eval-widths' in r.stderr and 'slimmable' in r.stderr, r.stderr


def test_pretrain_accepts_the_recipes():
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        import pretrain
        from pretrain_lib import recipes
        for name, recipe in recipes.RECIPES.items():
            args = pretrain.parse_args(['--recipe', name, '--data-path', '/nowhere'])
            assert args.model == recipe['model']
    finally:
        sys.path.remove(os.path.join(ROOT, 'tools'))


# ------------------------------------------------------------------------------------------ MMSeg / MMDet tools
@pytest.mark.skipif(not HAS_MMSEG, reason='mmsegmentation not installed (tools/setup_env.sh installs it)')
@pytest.mark.parametrize('config, flags, expect', [
    (ELASTIC_SEG, ['--width', '0.5'], 'slimmable'),
    (ELASTIC_SEG, ['--resolution', '97'], 'rsnet'),
    (SACT_SEG, ['--width', '0.5'], 'slimmable'),
    (ELASTIC_SEG, ['--save-ponder-maps'], 'sact'),
])
def test_test_seg_refuses_before_building(tmp_path, text_checkpoint, config, flags, expect):
    r = _run(['tools/test_seg.py', config, text_checkpoint, '--work-dir', str(tmp_path / 'wd'), *flags], cwd=ROOT)
    assert r.returncode != 0
    err = r.stderr
    assert 'OptionNotApplicable' in err and flags[0] in err and expect in err, err[-3000:]
    # nothing was built: MMEngine's runner logs its environment and config when it is built
    assert 'Environment info' not in r.stdout + err and 'Config:' not in r.stdout + err
    assert not (tmp_path / 'wd').exists()


@pytest.mark.skipif(not HAS_MMSEG, reason='mmsegmentation not installed (tools/setup_env.sh installs it)')
def test_mm_config_keys_are_checked_too():
    from mmengine.config import Config

    from plugins.mm.options import check_config_options
    cfg = Config.fromfile(ELASTIC_SEG)
    cfg.model.test_cfg.width = 0.5
    with pytest.raises(OptionNotApplicable, match=r'model\.test_cfg\.width'):
        check_config_options(cfg)
    cfg = Config.fromfile(ELASTIC_SEG)
    cfg.custom_hooks = [dict(type='BNCalibrationHook')]
    with pytest.raises(OptionNotApplicable, match='BNCalibrationHook.*calibration'):
        check_config_options(cfg)
    # the shipped configs pass
    assert check_config_options(Config.fromfile(RSNET_SEG)) == capabilities('rs_resnet50')
    assert check_config_options(Config.fromfile(SACT_SEG)) == capabilities('sact_resnet50')


@pytest.mark.skipif(not HAS_MMDET, reason='mmdetection not installed (tools/setup_env.sh installs it)')
@pytest.mark.parametrize('config, flags, expect', [
    (ELASTIC_DET, ['--width', '0.5'], 'slimmable'),
    (ELASTIC_DET, ['--calib-batches', '2'], 'slimmable'),
    (RSNET_DET, ['--save-ponder-maps'], 'sact'),
])
def test_test_det_mm_refuses_before_building(tmp_path, text_checkpoint, config, flags, expect):
    r = _run(['tools/test_det_mm.py', config, text_checkpoint, '--work-dir', str(tmp_path / 'wd'), *flags], cwd=ROOT)
    assert r.returncode != 0
    assert 'OptionNotApplicable' in r.stderr and flags[0] in r.stderr and expect in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / 'wd').exists()


# ------------------------------------------------------------------------------------------ Detectron2
@pytest.mark.skipif(not HAS_D2, reason='detectron2 not installed: build it from source (README, "Detectron2")')
@pytest.mark.parametrize('opts, expect', [
    (['MODEL.DYNSCALE.WIDTH', '0.5'], 'MODEL.DYNSCALE.WIDTH'),
    (['MODEL.DYNSCALE.EVAL_POINTS', '[[0.5, 320]]'], 'EVAL_POINTS'),
    (['MODEL.DYNSCALE.RESOLUTIONS', '[224, 128]'], 'MODEL.DYNSCALE.RESOLUTIONS'),
    (['MODEL.DYNSCALE.TAU', '0.05'], 'MODEL.DYNSCALE.TAU'),
    (['--save-ponder-maps'], 'MODEL.DYNSCALE.SAVE_PONDER_MAPS'),
])
def test_detectron2_refuses_before_building(tmp_path, text_checkpoint, opts, expect):
    flags = [o for o in opts if o.startswith('--')]  # before the trailing KEY VALUE overrides
    opts = [o for o in opts if not o.startswith('--')]
    r = _run(['tools/train_det.py', '--eval-only', *flags, '--config-file', ELASTIC_D2, 'OUTPUT_DIR',
              str(tmp_path / 'out'), 'MODEL.WEIGHTS', text_checkpoint, *opts], cwd=ROOT)
    assert r.returncode != 0
    assert 'OptionNotApplicable' in r.stderr and expect in r.stderr and 'resnext50_elastic' in r.stderr, \
        r.stderr[-3000:]
    assert not (tmp_path / 'out').exists()


@pytest.mark.skipif(not HAS_D2, reason='detectron2 not installed: build it from source (README, "Detectron2")')
def test_detectron2_shipped_configs_pass():
    import glob

    from plugins.detectron2 import get_dynscale_cfg
    files = glob.glob(os.path.join(ROOT, 'det_configs', 'detectron2', '**', '*.yaml'), recursive=True)
    assert len(files) > 5
    for f in files:
        if os.path.basename(f).startswith('Base-'):
            continue
        cfg = get_dynscale_cfg(f)
        assert cfg.MODEL.DYNSCALE.NAME, f


# ------------------------------------------------------------------------------------------ RS-Net untrained resolution
def test_one_nearest_rule():
    from backbones.rsnet import nearest_resolution
    assert nearest_resolution((224, 192, 160), 208) == 224  # tie -> the larger
    assert nearest_resolution((160, 192, 224), 208) == 224  # whatever the order
    assert nearest_resolution((321, 193, 97), 250) == 193
    model = backbones.create('rs_resnet18', num_classes=0, resolutions=(64, 32))
    assert model.resolution_for_input((48, 60)) == nearest_resolution((64, 32), 48) == 64
    with pytest.raises(ValueError, match='no trained resolutions'):
        nearest_resolution((), 48)


def test_resolution_policy_refuses_untrained_by_default(caplog):
    from backbones.training import policy_for
    model = backbones.create('rs_resnet18', num_classes=0, resolutions=(64, 32)).eval()
    assert model.resolution_rule == 'nearest'  # the backbone's own rule does not decide evaluation
    pol = policy_for(model, 'rsnet')
    with pytest.raises(ValueError, match="resolution 40 has no private BN.*untrained_resolution='nearest'"):
        pol.eval_context(model, None, 40)
    with pol.eval_context(model, None, 32):
        assert model.resolution == 32
    pol = policy_for(model, 'rsnet', untrained_resolution='nearest')
    with caplog.at_level('WARNING', logger='backbones.training.resolutions'):
        for _ in range(3):
            with pol.eval_context(model, None, 40):
                assert model.resolution == 32
    served = [r for r in caplog.records if 'not trained' in r.getMessage()]
    assert len(served) == 1 and 'resolution 40' in served[0].getMessage() and 'resolution 32' in served[0].getMessage()
    with pytest.raises(ValueError, match='untrained_resolution must be one of'):
        policy_for(model, 'rsnet', untrained_resolution='closest')


def test_pretrain_refuses_untrained_eval_resolution():
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        import argparse

        from pretrain_lib.methods import RSNetMethod
        model = backbones.create('rs_resnet18', num_classes=10, resolutions=(64, 32))
        args = argparse.Namespace(bn_resolutions=None, eval_resolutions=[48, 32], kd_type='ens_topdown', seed=0,
                                  untrained_resolution='error', label_smoothing=0.0, method='rsnet',
                                  model='rs_resnet18', channels_last=False)
        with pytest.raises(ValueError, match='--untrained-resolution nearest'):
            RSNetMethod(args, model).val_resolutions()
        args.untrained_resolution = 'nearest'
        method = RSNetMethod(args, model)
        assert method.val_resolutions() == [48, 32]
        with method.point_context(model, None, 48):
            assert model.resolution == 64
    finally:
        sys.path.remove(os.path.join(ROOT, 'tools'))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MMSEG, reason='mmsegmentation not installed (tools/setup_env.sh installs it)')
def test_test_seg_rsnet_untrained_resolution(tmp_path, shared_dir):
    import torch
    ckpt = str(tmp_path / 'rs.pth')
    torch.save({'state_dict': _build_segmentor(RSNET_SEG).state_dict(), 'meta': {}}, ckpt)
    common = ['tools/test_seg.py', RSNET_SEG, ckpt, '--work-dir', str(tmp_path / 'wd'), '--data-root',
              os.path.join(shared_dir, 'datasets'), '--resolution', '150',
              '--cfg-options', 'test_dataloader.dataset.indices=1']
    r = _run(common, cwd=ROOT)
    assert r.returncode != 0 and 'resolution 150 has no private BN' in r.stderr, r.stderr[-3000:]
    r = _run(common + ['--untrained-resolution', 'nearest'], cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'resolution 150 was not trained; the private BN of resolution 193 serves it' in r.stdout + r.stderr
    assert "'mIoU': " in r.stdout  # the metrics dict the tool prints


# ------------------------------------------------------------------------------------------ checkpoints that do not fit
@pytest.fixture(scope='module')
def rsnet_seg_checkpoint(tmp_path_factory):
    """A checkpoint (MMEngine layout) of the RS-Net DeepLabV3 segmentor with random weights."""
    if not HAS_MMSEG:
        pytest.skip('mmsegmentation not installed (tools/setup_env.sh installs it)')
    import torch
    path = str(tmp_path_factory.mktemp('ckpt') / 'rsnet_seg.pth')
    torch.save({'state_dict': _build_segmentor(RSNET_SEG).state_dict(), 'meta': {}}, path)
    yield path
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)  # module-scoped: kept to the session's end otherwise


@pytest.mark.slow  # an MMEngine runner / Detectron2 trainer run
@pytest.mark.parametrize('tool, config', [('tools/test_seg.py', ELASTIC_SEG), ('tools/test_det_mm.py', ELASTIC_DET)])
def test_mm_test_tools_refuse_a_checkpoint_of_another_model(tmp_path, rsnet_seg_checkpoint, tool, config):
    if 'det' in tool and not HAS_MMDET:
        pytest.skip('mmdetection not installed (tools/setup_env.sh installs it)')
    r = _run([tool, config, rsnet_seg_checkpoint, '--work-dir', str(tmp_path / 'wd')], cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert 'CheckpointMismatchError' in out and 'does not fit this' in out and '--non-strict' in out, out[-3000:]
    assert 'missing [backbone.model.' in out and '(backbone: ' in out  # both namings
    assert 'Iter(test)' not in out  # nothing was evaluated


@pytest.mark.slow  # an MMEngine runner / Detectron2 trainer run
@pytest.mark.skipif(not HAS_MMSEG, reason='mmsegmentation not installed (tools/setup_env.sh installs it)')
def test_mm_resume_refuses_a_checkpoint_of_another_model(tmp_path, rsnet_seg_checkpoint):
    r = _run(['tools/train_seg.py', ELASTIC_SEG, '--work-dir', str(tmp_path / 'wd'), '--resume', rsnet_seg_checkpoint],
             cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and 'does not fit this' in out, out[-3000:]
    assert 'Iter(train)' not in out


# ------------------------------------------------------------------------------------------ uncalibrated statistics
@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, 'reference', 'official_checkpoints')),
                    reason='../shared/reference/official_checkpoints (the manifests) is missing')
def test_mutualnet_release_statistics_must_be_calibrated(tmp_path):
    import torch
    from official_files import write_official

    from backbones.training import calibrate
    path, _ = write_official('mutualnet_mobilenet_v1', str(tmp_path / 'mn.pth'))
    model = backbones.create('us_mobilenet_v1', pretrained=path)
    assert model.pretrained_meta['calibration_required']
    model.set_width(1.0)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match=r'not calibrated \(taoyang1122/MutualNet stores training-time.*calibrate_bn'):
        model(x)
    # post-statistics BN for (1.0, None) clears the mark of that configuration only
    calibrate(model, [torch.randn(4, 3, 64, 64) for _ in range(2)], width=1.0, num_batches=2)
    model.set_width(1.0)
    assert torch.isfinite(model(x)).all()
    model.set_width(0.25)
    with pytest.raises(ValueError, match='not calibrated'):
        model(x)
    # a US-Nets release keeps its calibrated post-statistics: usable as they are
    path, _ = write_official('us_mobilenet_v1', str(tmp_path / 'us.pth'))
    us = backbones.create('us_mobilenet_v1', pretrained=path).eval()
    assert torch.isfinite(us(x)).all()


@pytest.mark.skipif(not HAS_D2, reason='detectron2 not installed: build it from source (README, "Detectron2")')
def test_detectron2_eval_only_refuses_a_checkpoint_of_another_model(tmp_path):
    import torch
    from detectron2.modeling import build_model

    from plugins.detectron2 import get_dynscale_cfg
    cfg = get_dynscale_cfg(ELASTIC_D2, ['MODEL.DEVICE', 'cpu', 'MODEL.DYNSCALE.NAME', 'resnext101_elastic'])
    path = str(tmp_path / 'x101.pth')
    torch.save({'model': build_model(cfg).state_dict()}, path)
    r = _run(['tools/train_det.py', '--eval-only', '--config-file', ELASTIC_D2, 'OUTPUT_DIR', str(tmp_path / 'out'),
              'MODEL.WEIGHTS', path], cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and 'CheckpointMismatchError' in out and 'does not fit this' in out, out[-3000:]
    assert 'unexpected [backbone.bottom_up.net.' in out and 'MODEL.DYNSCALE.NON_STRICT True' in out, out[-3000:]
    assert 'Inference done' not in out


# ------------------------------------------------------------------------------------------ corrupted files
def _corrupt(path, at=0.5, n=64):
    """Overwrite ``n`` bytes in the middle of ``path`` (tensor data: the file still unpickles)."""
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.seek(int(size * at))
        f.write(bytes(range(7, 7 + n)))


def test_corrupted_backbone_checkpoint_is_refused(tmp_path):
    import torch

    from backbones.checkpoint import save_backbone_checkpoint
    from backbones.integrity import DIGEST_KEY, CorruptedCheckpointError
    model = backbones.create('rs_resnet18', num_classes=10)
    path = save_backbone_checkpoint(model, str(tmp_path / 'rs18.pth'))
    meta = torch.load(path, weights_only=False)['meta']
    assert len(meta[DIGEST_KEY]) == len([k for k in model.state_dict() if not k.startswith('head.')])
    backbones.create('rs_resnet18', num_classes=0, pretrained=path)  # intact: loads
    _corrupt(path)
    with pytest.raises(CorruptedCheckpointError, match=rf'corrupted: tensor \S+ in {path}'):
        backbones.create('rs_resnet18', num_classes=0, pretrained=path)


def test_foreign_file_with_non_finite_values_is_refused(tmp_path):
    import torch
    import torchvision

    from backbones.integrity import CorruptedCheckpointError
    sd = torchvision.models.resnet18().state_dict()
    sd['layer2.0.conv1.weight'][0, 0, 0, 0] = float('nan')
    torch.save(sd, tmp_path / 'tv.pth')
    with pytest.raises(CorruptedCheckpointError, match='tensor layer2.0.conv1.weight .* non-finite'):
        backbones.create('rs_resnet18', pretrained=str(tmp_path / 'tv.pth'))


@pytest.mark.parametrize('values, finite', [
    ([1.0, float('nan')], False), ([float('inf'), 1.0], False), ([float('-inf'), 2.0], False),
    ([float('inf'), float('-inf')], False),
    ([3e38, 3e38, -1.0], True),  # finite elements whose sum overflows: checked element by element
    ([0.0, -2.5], True),
])
@pytest.mark.parametrize('dtype', ['float32', 'float16', 'float64'])
def test_non_finite_check_of_a_file_sees_every_element(values, finite, dtype):
    import torch

    from backbones.integrity import CorruptedCheckpointError, check_finite
    dtype = getattr(torch, dtype)
    if dtype == torch.float16:  # its largest finite value is 65504
        values = [min(max(v, -6e4), 6e4) if v == v and abs(v) != float('inf') else v for v in values]
    t = torch.zeros(1000, dtype=dtype)
    t[7:7 + len(values)] = torch.tensor(values, dtype=torch.float64).to(dtype)
    sd = {'a': torch.ones(3), 'b': t, 'n': torch.tensor([1, 2])}
    if finite:
        assert check_finite(sd, 'x.pth') == 2
    else:
        with pytest.raises(CorruptedCheckpointError, match='tensor b in x.pth holds non-finite'):
            check_finite(sd, 'x.pth')


def test_pretrain_resume_refuses_a_corrupted_checkpoint(tmp_path):
    import torch

    from backbones.checkpoint import atomic_save
    from backbones.integrity import DIGEST_KEY, CorruptedCheckpointError
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        from pretrain_lib.engine import Trainer
    finally:
        sys.path.remove(os.path.join(ROOT, 'tools'))
    path = str(tmp_path / 'last.pth')
    atomic_save({'version': 1, 'model': {'w': torch.randn(256, 256)}, 'optimizer': {}}, path)
    assert DIGEST_KEY in torch.load(path, weights_only=False)
    _corrupt(path)

    class _T:  # only what Trainer.resume reads before it verifies
        args = None
    with pytest.raises(CorruptedCheckpointError, match='corrupted: tensor w in'):
        Trainer.resume(_T(), path)


@pytest.mark.parametrize('hard_links', [True, False], ids=['hard-link', 'copy-fallback'])
def test_best_checkpoint_is_a_second_name_keeping_its_bytes_when_last_is_replaced(tmp_path, monkeypatch, hard_links):
    """``best.pth`` = ``atomic_link(last.pth)``: one file on disk (or a copy without hard links); the next
    ``atomic_save`` of ``last.pth`` replaces that name only, so ``best.pth`` keeps the best epoch's bytes."""
    import torch

    from backbones.checkpoint import atomic_link, atomic_save
    if not hard_links:
        def no_link(src, dst):
            raise OSError(1, 'Operation not permitted')
        monkeypatch.setattr(os, 'link', no_link)
    last, best = tmp_path / 'last.pth', tmp_path / 'best.pth'
    atomic_save({'epoch': 1, 'w': torch.ones(3)}, last)
    assert atomic_link(last, best) == str(best)
    assert (os.stat(best).st_ino == os.stat(last).st_ino) is hard_links
    atomic_save({'epoch': 2, 'w': torch.zeros(3)}, last)
    assert torch.load(best, weights_only=False)['epoch'] == 1 and torch.load(last, weights_only=False)['epoch'] == 2
    assert sorted(os.listdir(tmp_path)) == ['best.pth', 'last.pth']  # no temporary name left behind
    with pytest.raises(FileNotFoundError):
        atomic_link(tmp_path / 'missing.pth', best)
    assert torch.load(best, weights_only=False)['epoch'] == 1


@pytest.mark.slow  # an MMEngine runner / Detectron2 trainer run
@pytest.mark.skipif(not HAS_MMSEG, reason='mmsegmentation not installed (tools/setup_env.sh installs it)')
def test_mm_checkpoints_carry_digests_and_corrupted_ones_are_refused(tmp_path):
    import torch

    from backbones.integrity import DIGEST_KEY
    from plugins.mm.hooks import TensorDigestHook
    sd = _build_segmentor(ELASTIC_SEG).state_dict()
    ckpt = {'state_dict': sd, 'meta': {}}
    TensorDigestHook().before_save_checkpoint(None, ckpt)
    assert set(ckpt['meta'][DIGEST_KEY]) == set(sd)
    path = str(tmp_path / 'seg.pth')
    torch.save(ckpt, path)
    _corrupt(path)
    r = _run(['tools/test_seg.py', ELASTIC_SEG, path, '--work-dir', str(tmp_path / 'wd')], cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and 'corrupted: tensor' in out and path in out, out[-3000:]
    assert 'Iter(test)' not in out


@pytest.mark.skipif(not HAS_D2, reason='detectron2 not installed: build it from source (README, "Detectron2")')
def test_detectron2_checkpoints_carry_digests_and_corrupted_ones_are_refused(tmp_path):
    import torch
    from detectron2.modeling import build_model

    from backbones.integrity import DIGEST_KEY
    from plugins.detectron2 import DynscaleCheckpointer, get_dynscale_cfg
    cfg = get_dynscale_cfg(ELASTIC_D2, ['MODEL.DEVICE', 'cpu'])
    ck = DynscaleCheckpointer(build_model(cfg), save_dir=str(tmp_path))
    ck.save('model_final')
    path = str(tmp_path / 'model_final.pth')
    assert DIGEST_KEY in torch.load(path, weights_only=False)
    _corrupt(path)
    r = _run(['tools/train_det.py', '--eval-only', '--config-file', ELASTIC_D2, 'OUTPUT_DIR', str(tmp_path / 'out'),
              'MODEL.WEIGHTS', path], cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and 'corrupted: tensor' in out, out[-3000:]


# ------------------------------------------------------------------------------------------ non-finite batches
# (MMEngine validates after the last iteration whatever val_interval says: 2 val images, not the subset's 64)
_NONFINITE_SEG = ['--cfg-options', 'model.data_preprocessor.std=[0,0,0]', 'train_cfg.max_iters=2',
                  'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=1',
                  'val_dataloader.dataset.indices=2']


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MMSEG, reason='mmsegmentation not installed (tools/setup_env.sh installs it)')
def test_mm_training_stops_on_a_nonfinite_batch_naming_its_files(tmp_path, shared_dir):
    # std 0: every normalised pixel is inf / NaN, as a corrupt image would make them
    wd = tmp_path / 'wd'
    r = _run(['tools/train_seg.py', ELASTIC_SEG, '--work-dir', str(wd), '--data-root',
              os.path.join(shared_dir, 'datasets'), *_NONFINITE_SEG], cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and 'NonFiniteStepError' in out and 'at iteration 0; batch files: [' in out, out[-3000:]
    assert '.jpg' in out.split('batch files: [')[1].split(']')[0]
    assert not list(wd.glob('iter_*.pth'))  # no checkpoint of the bad step
    r = _run(['tools/train_seg.py', ELASTIC_SEG, '--work-dir', str(tmp_path / 'skip'), '--data-root',
              os.path.join(shared_dir, 'datasets'), '--skip-nonfinite', *_NONFINITE_SEG], cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert out.count('skip_nonfinite: step skipped') == 2
    import torch
    sd = torch.load(tmp_path / 'skip' / 'iter_2.pth', weights_only=False, map_location='cpu')['state_dict']
    assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


@pytest.mark.slow  # an MMEngine runner / Detectron2 trainer run
@pytest.mark.skipif(not HAS_D2, reason='detectron2 not installed: build it from source (README, "Detectron2")')
def test_detectron2_training_stops_on_a_nonfinite_batch_naming_its_files(tmp_path, shared_dir):
    opts = ['MODEL.PIXEL_STD', '[0.0, 0.0, 0.0]', 'SOLVER.MAX_ITER', '2', 'SOLVER.CHECKPOINT_PERIOD', '1',
            'TEST.EVAL_PERIOD', '0', 'DATALOADER.NUM_WORKERS', '0']
    env_root = os.path.join(shared_dir, 'datasets')
    r = _run(['tools/train_det.py', '--config-file', ELASTIC_D2, 'OUTPUT_DIR', str(tmp_path / 'out'), *opts],
             cwd=ROOT, env={'DYNSCALE_DATASETS': env_root})
    out = r.stdout + r.stderr
    assert r.returncode != 0 and 'NonFiniteStepError' in out and 'at iteration 0; batch files: [' in out, out[-3000:]
    assert '.jpg' in out.split('batch files: [')[1].split(']')[0]
    assert not list((tmp_path / 'out').glob('model_*.pth'))
    r = _run(['tools/train_det.py', '--config-file', ELASTIC_D2, 'OUTPUT_DIR', str(tmp_path / 'skip'), *opts,
              'MODEL.DYNSCALE.SKIP_NONFINITE', 'True', 'DATASETS.TEST', '()'], cwd=ROOT,
             env={'DYNSCALE_DATASETS': env_root})
    out = r.stdout + r.stderr
    assert r.returncode == 0 and out.count('SKIP_NONFINITE: iteration skipped') == 2, out[-3000:]


def test_digests_describe_their_file_only(tmp_path):
    """A verified file's digests are not carried along: re-wrapping its tensors (a prefix selection, the float32
    cast of half-precision tensors) must not read as corruption."""
    from backbones.checkpoint import atomic_save
    from backbones.integrity import DIGEST_KEY
    from backbones.pretrained import load_pretrained, read_checkpoint, read_source
    model = backbones.create('rs_resnet18', num_classes=0)
    sd = {'backbone.' + k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = str(tmp_path / 'seg.pth')
    atomic_save({'state_dict': sd, 'meta': {'family': 'rsnet'}}, path)
    src = read_source(path)
    assert DIGEST_KEY not in src.meta and src.meta['family'] == 'rsnet'
    full, meta = read_checkpoint({'state_dict': src.state_dict, 'meta': src.meta})
    sel = {k[len('backbone.'):]: v for k, v in full.items()}
    rep = load_pretrained(model, {'state_dict': sel, 'meta': meta})
    assert rep.loaded == len(sel)
    assert DIGEST_KEY not in read_checkpoint(path)[1]


# ------------------------------------------------------------------------------------------ ranks that disagree
def test_calibration_batches_do_not_depend_on_the_number_of_processes():
    """One process and three read the same calibration images, each augmented identically (seeded per image)."""
    import random

    import numpy as np

    from backbones.training import CalibrationSampler, SeededSamples

    class Augmented:
        def __len__(self):
            return 11

        def __getitem__(self, i):  # draws from every global generator, as MMCV transforms do
            import torch
            return (i, random.random(), float(np.random.rand()), float(torch.rand(())))

    data = SeededSamples(Augmented(), seed=3)
    one = [data[i] for i in CalibrationSampler(11, 2, 1, 0, seed=3, num_batches=4)]
    shares = [CalibrationSampler(11, 2, 3, r, seed=3, num_batches=4) for r in range(3)]
    three = [data[i] for s in shares for i in s]
    assert len(one) == 8 and sorted(one) == sorted(three)
    assert [len(s) for s in shares] == [4, 2, 2]  # global batches 0, 3 | 1 | 2
    assert len({x[1] for x in one}) == 8  # each image its own draw
    state = np.random.get_state()[1].copy()
    data[0]
    assert (np.random.get_state()[1] == state).all()  # the caller's generators are left alone
    other = [SeededSamples(Augmented(), seed=4)[i] for i in CalibrationSampler(11, 2, 1, 0, seed=3, num_batches=4)]
    assert other != one


def _metrics_line(out):
    """The metrics dict a test tool printed last (``{'mIoU': np.float32(1.52), ...}``) as ``{name: float}``."""
    import re
    lines = [ln for ln in out.splitlines() if ln.startswith('{') and 'mIoU' in ln]
    assert lines, out[-3000:]
    return {k: float(v) for k, v in re.findall(r"'([^']+)': (?:np\.float\d+\()?([-+0-9.eE]+|nan)", lines[-1])}


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MMSEG, reason='mmsegmentation not installed (tools/setup_env.sh installs it)')
def test_test_seg_two_processes_report_what_one_reports(tmp_path, shared_dir):
    """``torchrun --nproc_per_node 2 tools/test_seg.py ... --launcher pytorch`` (gloo, CPU) of a slimmable
    MutualNet checkpoint with BN calibration reports the one-process metrics: the calibration batches and their
    augmentation do not depend on the number of processes, the statistics are averaged weighted by batches."""
    import torch
    voc = os.path.join(shared_dir, 'datasets', 'VOCdevkit', 'VOC2012')
    with open(os.path.join(voc, 'ImageSets', 'Segmentation', 'val.txt')) as f:
        (tmp_path / 'val8.txt').write_text(''.join(f.readlines()[:8]))
    base = os.path.join(SEG, 'deeplabv3_us-mobilenetv2-d16_mutualnet-4net_1xb8-1k_voc12subset-321x321.py')
    cfg = tmp_path / 'mutualnet_small.py'
    cfg.write_text(f'''_base_ = [{base!r}]
crop_size = (129, 129)
model = dict(data_preprocessor=dict(size=crop_size))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(160, 160), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size), dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(ann_file={str(tmp_path / 'val8.txt')!r},
    pipeline=[dict(type='LoadImageFromFile'), dict(type='Resize', scale=(160, 160), keep_ratio=True),
              dict(type='LoadAnnotations'), dict(type='PackSegInputs')]))
test_dataloader = val_dataloader
custom_hooks = [dict(type='BNCalibrationHook', num_batches=3)]
default_hooks = dict(visualization=dict(type='SegVisualizationHook', draw=False))
''')
    torch.manual_seed(0)
    ckpt = str(tmp_path / 'mutualnet.pth')
    torch.save({'state_dict': _build_segmentor(str(cfg)).state_dict(), 'meta': {}}, ckpt)
    data = os.path.join(shared_dir, 'datasets')
    common = ['tools/test_seg.py', str(cfg), ckpt, '--width', '0.6', '--data-root', data]
    one = _run([*common, '--work-dir', str(tmp_path / 'one')], cwd=ROOT, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', *common, '--launcher',
                'pytorch', '--work-dir', str(tmp_path / 'two')], cwd=ROOT, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    m1, m2 = _metrics_line(one.stdout), _metrics_line(two.stdout)
    assert set(m1) == set(m2) and all(abs(m1[k] - m2[k]) <= 1e-6 for k in m1), (m1, m2)
    assert 'averaged over ranks' in two.stdout + two.stderr  # the two processes did calibrate on their shares
    assert 'on 2 batches' in two.stdout + two.stderr  # rank 0: global batches 0 and 2 (rank 1 logs errors only)
