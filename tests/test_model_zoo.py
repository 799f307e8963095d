"""Model zoo: every row's convert command on a synthetic file of its origin, MODEL_ZOO.md, the 1x configs of the
three frameworks naming converted files, loading them with zero unmatched keys, input-normalisation checks and a
short fine-tuning run from converted weights (MMSeg, MMDet; Detectron2 in test_detectron2_plugin.py)."""
import glob
import os
import os.path as osp
import re
import shlex
import shutil
import sys
import types

import pytest
import torch
from official_files import MANIFEST_DIR, write_zoo_source

import backbones
from backbones.pretrained import ZOO, convert_command, missing_file_message, read_source

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
needs_manifests = pytest.mark.skipif(not os.path.isdir(MANIFEST_DIR),
                                     reason=f'the official checkpoint manifests are missing: {MANIFEST_DIR}')
SEG_1X = sorted(p for p in glob.glob(osp.join(ROOT, 'seg_configs', '*.py')) if re.search(r'-(33k|20k)_', p))
MMDET_1X = sorted(glob.glob(osp.join(ROOT, 'det_configs', 'mmdet', '*', '*1x_coco.py')))
D2_1X = sorted(glob.glob(osp.join(ROOT, 'det_configs', 'detectron2', '*_1x.yaml')))


#: converted rows kept on disk at once (source + converted file each, up to 1 GB for VGG16-BN): all 32 rows, on
#: both xdist workers, came to ~10 GB of the suite's temporary files
ZOO_KEEP = 2


@pytest.fixture(scope='module')
def zoo_files(tmp_path_factory):
    """Lazily runs each zoo row's convert command (from MODEL_ZOO.md) on a synthetic source; key -> converted path.
    Only the ``ZOO_KEEP`` most recently asked rows stay on disk; an older row is converted again when asked again."""
    import convert_weights

    work = tmp_path_factory.mktemp('zoo')
    done = {}  # key -> converted path, oldest first

    def get(key):
        if key in done:
            done[key] = done.pop(key)  # most recent last
            return done[key]
        e = ZOO[key]
        while len(done) >= ZOO_KEEP:
            old = ZOO[next(iter(done))]
            del done[old.key]
            kept = {n for k in done for n in (ZOO[k].download_name, ZOO[k].converted)}  # rows may share a source
            for name in {old.download_name, old.converted} - kept:
                (work / name).unlink(missing_ok=True)
        write_zoo_source(e, str(work))
        argv = shlex.split(convert_command(e))[2:]  # drop "python tools/convert_weights.py"
        cwd = os.getcwd()
        os.chdir(work)
        try:
            assert convert_weights.main(argv) == 0, convert_command(e)
        finally:
            os.chdir(cwd)
        done[key] = str(work / e.converted)
        return done[key]
    yield get
    shutil.rmtree(work, ignore_errors=True)  # module-scoped: pytest would keep it to the end of the session


@pytest.mark.slow
@needs_manifests
@pytest.mark.parametrize('key', list(ZOO))
def test_every_zoo_row_converts_with_its_command(key, zoo_files):
    e = ZOO[key]
    path = zoo_files(key)
    meta = read_source(path).meta
    assert meta['variant'] == e.model and meta['origin'] == e.origin and meta['zoo'] == key
    assert meta['paper_top1'] == e.top1
    assert meta['source_sha256'] == read_source(osp.join(osp.dirname(osp.dirname(path)), e.download_name)).sha256
    model = backbones.create(e.model, pretrained=path)  # strict both ways
    assert model.pretrained_meta['zoo'] == key


@needs_manifests
def test_convert_rsnet_release_with_its_bn_resolutions(tmp_path, capsys):
    """``--bn-resolutions``: the private-BN resolutions an RS-Nets release was trained at (one word with
    ``tools/pretrain.py --bn-resolutions`` and the configs); a list that does not fit the file is refused."""
    import convert_weights
    e = ZOO['rs_resnet50.rsnet_in1k']
    write_zoo_source(e, str(tmp_path))
    src, dst = str(tmp_path / e.download_name), str(tmp_path / 'rs.pth')
    assert convert_weights.main([src, dst, '--model', e.model, '--bn-resolutions', '224', '192', '160', '128',
                                 '96']) == 0
    assert list(read_source(dst).meta['resolutions']) == [224, 192, 160, 128, 96]
    capsys.readouterr()
    assert convert_weights.main([src, str(tmp_path / 'rs2.pth'), '--model', e.model, '--bn-resolutions', '224',
                                 '160']) == 1
    assert 'has 5 private BNs per layer' in capsys.readouterr().err
    assert not (tmp_path / 'rs2.pth').exists()


def test_model_zoo_page_lists_every_row_and_command():
    with open(osp.join(ROOT, 'MODEL_ZOO.md')) as f:
        page = f.read()
    for e in ZOO.values():
        assert f'`{e.key}`' in page, e.key
        assert convert_command(e) in page, e.key
        assert e.url in page
    for cfg in SEG_1X + MMDET_1X + D2_1X:
        assert osp.relpath(cfg, ROOT) in page, cfg


def _converted_path(text):
    m = re.search(r"checkpoints/(?:d2/)?[\w.-]+\.(?:pth|pkl)", text)
    return m.group(0) if m else None


@pytest.mark.parametrize('cfg', SEG_1X + MMDET_1X + D2_1X, ids=lambda p: osp.basename(p))
def test_every_1x_config_names_a_zoo_file(cfg):
    with open(cfg) as f:
        path = _converted_path(f.read())
    assert path, f'{cfg} names no converted checkpoint'
    names = {e.converted for e in ZOO.values()} | {e.d2_converted(x) for e in ZOO.values() for x in ('fpn', 'c4')}
    assert path in names, path
    msg = missing_file_message(path, cfg)
    assert 'tools/convert_weights.py' in msg and 'MODEL_ZOO.md' in msg


# ----------------------------------------------------------------------------------------------- OpenMMLab
def _mm_cfg(path):
    from mmengine.config import Config
    return Config.fromfile(path)


@pytest.fixture
def mm_scope(request):
    pytest.importorskip('mmseg', reason='MMSegmentation (the mm extra) is not installed')
    from mmengine.registry import DefaultScope

    import plugins.mm  # noqa: F401
    scope = 'mmdet' if '/mmdet/' in request.node.name or 'mmdet' in request.node.name else 'mmseg'
    name = f'test-zoo-{scope}-{id(request)}'
    DefaultScope.get_instance(name, scope_name=scope)
    yield scope


def _zoo_key_of(path):
    name = osp.basename(path)
    for e in ZOO.values():
        if osp.basename(e.converted) == name or name.startswith(f'{e.model}_{e.tag}_'):
            return e.key
    raise AssertionError(f'no zoo row for {path}')


@pytest.mark.slow
@needs_manifests
@pytest.mark.parametrize('cfg', SEG_1X + MMDET_1X, ids=lambda p: ('mmdet-' if '/mmdet/' in p else '') + osp.basename(p))
def test_mm_1x_config_backbone_loads_converted_weights_with_zero_unmatched_keys(cfg, zoo_files, mm_scope):
    from mmengine.registry import MODELS

    c = _mm_cfg(cfg)
    bb = c.model.backbone
    key = _zoo_key_of(bb.init_cfg.checkpoint)
    bb.init_cfg.checkpoint = zoo_files(key)
    if bb.get('norm_cfg', {}).get('type') == 'SyncBN':
        bb.norm_cfg = dict(bb.norm_cfg, type='BN')  # SyncBN needs a process group; the keys are the same
    module = MODELS.build(bb)
    module.init_weights()
    rep = module.pretrained_report
    assert not rep.missing and not rep.unexpected and not rep.shape_mismatch
    assert rep.loaded > 0 and all(why for _, why in rep.dropped)
    # the config's data_preprocessor agrees with the weights' input normalisation
    pre = c.model.get('data_preprocessor') or {}
    norm = module.input_normalization
    assert norm.matches(pre['mean'], pre['std'], 'RGB' if pre.get('bgr_to_rgb') else 'BGR'), (cfg, norm, pre)


@needs_manifests
def test_input_normalization_hook_checks_and_can_adopt(zoo_files, mm_scope):
    from mmengine.registry import MODELS

    from plugins.mm.hooks import InputNormalizationHook

    name = 'deeplabv3_rs-resnet50-d16-mg124_s513-321-129_1xb16-33k_voc12aug-513x513.py'
    cfg = _mm_cfg(osp.join(ROOT, 'seg_configs', name))
    cfg.model.backbone.init_cfg.checkpoint = zoo_files('rs_resnet50.rsnet_in1k')
    cfg.model.backbone.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.data_preprocessor.mean = [123.675, 116.28, 103.53]  # a user's ImageNet mean/std: wrong for RS-Nets
    cfg.model.data_preprocessor.std = [58.395, 57.12, 57.375]
    model = MODELS.build(cfg.model)
    model.init_weights()
    runner = types.SimpleNamespace(model=model)
    with pytest.raises(ValueError, match=r'mean=\[0.0, 0.0, 0.0\], std=\[255.0, 255.0, 255.0\]'):
        InputNormalizationHook().before_train(runner)
    InputNormalizationHook(mode='from_checkpoint').before_train(runner)
    assert model.data_preprocessor.mean.flatten().tolist() == [0.0, 0.0, 0.0]
    assert model.data_preprocessor.std.flatten().tolist() == [255.0, 255.0, 255.0]
    InputNormalizationHook().before_train(runner)  # agrees now


def test_mm_missing_checkpoint_prints_the_convert_command(mm_scope):
    from plugins.mm.backbones import DynscaleBackbone

    path = 'checkpoints/resnext50_elastic_elastic_in1k.pth'
    bb = DynscaleBackbone('resnext50_elastic', init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(FileNotFoundError, match=rf'tools/convert_weights.py resnext50_elastic.pth.tar {path} '
                                                r'--model resnext50_elastic'):
        bb.init_weights()


def _voc_root(shared_dir):
    root = osp.join(shared_dir, 'datasets')
    if not osp.isdir(osp.join(root, 'VOCdevkit', 'VOC2012')):
        pytest.skip(f'VOC subset missing: expected {root}/VOCdevkit/VOC2012')
    return root


@pytest.mark.slow
@needs_manifests
def test_mmseg_fine_tunes_from_converted_weights(shared_dir, zoo_files, mm_scope, tmp_path, monkeypatch):
    """tools/train_seg.py on the CPU config, starting from the converted allenai/elastic ResNeXt50+Elastic file."""
    import importlib.util

    torch.set_num_threads(1)
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    spec = importlib.util.spec_from_file_location('_train_seg_zoo', osp.join(ROOT, 'tools', 'train_seg.py'))
    train_seg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_seg)
    ckpt = zoo_files('resnext50_elastic.elastic_in1k')
    cfg = osp.join(ROOT, 'seg_configs', 'deeplabv3_elastic-resnext50-d16-mg124_1xb2-40it_voc12subset-129x129.py')
    runner = train_seg.main([cfg, '--work-dir', str(tmp_path / 'work'), '--data-root', _voc_root(shared_dir),
                             '--cfg-options', 'randomness.seed=0', 'model.backbone.init_cfg.type=Pretrained',
                             f'model.backbone.init_cfg.checkpoint={ckpt}', 'train_cfg.max_iters=4',
                             'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=4',
                             'val_dataloader.dataset.indices=2', 'model.backbone.frozen_stages=1'])
    src = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
    bb = runner.model.backbone.model
    assert bb.pretrained_meta['zoo'] == 'resnext50_elastic.elastic_in1k'
    # the frozen stem and first stage hold the file's tensors after training; the others were fine-tuned
    assert torch.equal(bb.stem.conv.weight.detach(), src['stem.conv.weight'])
    assert torch.equal(bb.stages[0][3].conv2_d.weight.detach(), src['stages.0.3.conv2_d.weight'])
    assert not torch.equal(bb.stages[2][1].conv1.weight.detach(), src['stages.2.1.conv1.weight'])
    losses = runner.message_hub.get_scalar('train/loss').data[0]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.slow
@needs_manifests
def test_mmdet_fine_tunes_from_converted_weights(shared_dir, zoo_files, tmp_path, monkeypatch):
    """tools/train_det_mm.py, Mask R-CNN Elastic-ResNeXt50-FPN on the COCO subset, from the converted allenai/elastic
    file: the frozen stem keeps the file's tensors, fine-tuned stages move."""
    pytest.importorskip('mmdet', reason='MMDetection (the mm extra) is not installed')
    coco = osp.join(shared_dir, 'datasets', 'coco')
    if not osp.isdir(coco):
        pytest.skip(f'COCO subset missing: expected {coco}')
    from mmengine.registry import DefaultScope

    import plugins.mm  # noqa: F401
    DefaultScope.get_instance(f'test-zoo-mmdet-ft-{id(tmp_path)}', scope_name='mmdet')
    torch.set_num_threads(1)
    monkeypatch.setenv('DYNSCALE_DATASETS', osp.join(shared_dir, 'datasets'))
    from tools import train_det_mm
    ckpt = zoo_files('resnext50_elastic.elastic_in1k')
    cfg = osp.join(ROOT, 'det_configs', 'mmdet', 'elastic', 'mask-rcnn_elastic-x50-32x4d_fpn_short_coco-subset.py')
    runner = train_det_mm.main([cfg, '--work-dir', str(tmp_path / 'work'), '--cfg-options', 'train_cfg.max_iters=3',
                                'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=100',
                                'randomness.seed=0', 'model.backbone.init_cfg.type=Pretrained',
                                f'model.backbone.init_cfg.checkpoint={ckpt}', 'model.backbone.frozen_stages=1',
                                'val_dataloader.dataset.indices=2',
                                # the light CPU setting of the fine-tune tests of test_mm_det.py: images <= 160 x 128
                                # and 32 sampled RoIs from 100 proposals (what is asserted is the load and which
                                # stages move, not the image size)
                                'train_dataloader.dataset.pipeline.2.scale=(160,128)',
                                'model.train_cfg.rpn_proposal.max_per_img=100', 'model.train_cfg.rcnn.sampler.num=32'])
    assert runner.iter == 3
    src = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
    bb = runner.model.backbone.model
    assert torch.equal(bb.stem.conv.weight.detach(), src['stem.conv.weight'])
    assert not torch.equal(bb.stages[2][1].conv1.weight.detach(), src['stages.2.1.conv1.weight'])
