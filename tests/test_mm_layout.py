"""OpenMMLab plugin layout (issue 10): one module per registry kind, MMDet imported only when installed, renamed
names fail naming the new ones, one datasets-root variable, generic segmentor / detector equal to the presets."""
import importlib
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip('mmseg', reason='mmsegmentation not installed: run bash tools/setup_env.sh')

from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

import plugins.mm  # noqa: E402,F401  (registers everything)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _run(code, env=None):
    e = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    e.pop('DYNSCALE_DATA', None)
    e.update(env or {})
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=e)


@pytest.mark.slow  # a new Python process importing the frameworks
def test_mmseg_only_environment_never_imports_mmdet():
    """With mmdet made unimportable, plugins.mm imports, registers the MMSeg pieces and trains a segmentor step."""
    proc = _run("""
import sys
sys.modules['mmdet'] = None  # as if MMDetection were not installed
import torch
import plugins.mm
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
init_default_scope('mmseg')
m = MODELS.build(dict(type='SACTEncoderDecoder', data_preprocessor=dict(type='SegDataPreProcessor'),
                      backbone=dict(type='SACTResNet', arch='sact_resnet50', out_indices=(3,)),
                      decode_head=dict(type='FCNHead', in_channels=2048, channels=8, num_convs=1, num_classes=3)))
from mmseg.structures import SegDataSample
from mmengine.structures import PixelData
samples = []
for _ in range(2):
    ds = SegDataSample(); ds.gt_sem_seg = PixelData(data=torch.zeros(1, 64, 64, dtype=torch.long))
    ds.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
    samples.append(ds)
losses = m.loss(torch.randn(2, 3, 64, 64), samples)
assert 'loss_ponder' in losses and 'decode.loss_ce' in losses, sorted(losses)
loaded = sorted(k for k, v in sys.modules.items() if v is not None and k.split('.')[0] == 'mmdet')
print('MMDET MODULES', loaded)
print('HAS DETECTORS', hasattr(plugins.mm, 'detectors'))
""")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'MMDET MODULES []' in proc.stdout
    assert 'HAS DETECTORS False' in proc.stdout


@pytest.mark.slow  # a new Python process
def test_former_datasets_variable_fails_naming_the_new_one():
    proc = _run('import plugins.mm', env={'DYNSCALE_DATA': '/data'})
    assert proc.returncode != 0
    assert 'DYNSCALE_DATASETS' in proc.stderr and 'DYNSCALE_DATA ' in proc.stderr
    from plugins._compat import check_datasets_variable
    assert check_datasets_variable({'DYNSCALE_DATASETS': '/d'}) == '/d'
    with pytest.raises(ValueError, match='export DYNSCALE_DATASETS=/x'):
        check_datasets_variable({'DYNSCALE_DATA': '/x'})


@pytest.mark.slow  # a new Python process
def test_datasets_root_and_data_root_flag_reach_every_dataset_and_evaluator(tmp_path):
    from plugins.mm import cli
    det = osp.join(ROOT, 'det_configs', 'mmdet', 'elastic', 'mask-rcnn_elastic-x50-32x4d_fpn_short_coco-subset.py')
    seg = osp.join(ROOT, 'seg_configs', 'deeplabv3_elastic-resnext50-d16-mg124_1xb2-40it_voc12subset-129x129.py')
    for path, sub in ((det, 'coco'), (seg, 'VOCdevkit/VOC2012')):
        cfg = Config.fromfile(path)
        assert osp.normpath(cfg.datasets_root) == osp.normpath(osp.join(ROOT, '..', 'shared', 'datasets'))
        n = cli.set_data_root(cfg, str(tmp_path))
        roots = [d['data_root'] for d in cli.dataset_cfgs(cfg)]
        assert n >= 2 and roots and all(osp.normpath(r) == osp.normpath(osp.join(str(tmp_path), sub)) for r in roots)
        if sub == 'coco':
            assert cfg.val_evaluator.ann_file.startswith(str(tmp_path))
            assert cfg.test_evaluator.ann_file.startswith(str(tmp_path))
    code = f'from mmengine.config import Config; print(Config.fromfile({det!r}).train_dataloader.dataset.data_root)'
    proc = _run(code, env={'DYNSCALE_DATASETS': str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith(f'{tmp_path}/coco/')


@pytest.mark.parametrize('old,new,registry,scope', [
    ('ElasticResNeXt', 'ElasticBackbone', 'MODELS', 'mmseg'),
    ('RSNet', 'RSNetBackbone', 'MODELS', 'mmseg'),
    ('ElasticResNeXt', 'ElasticBackbone', 'MODELS', 'mmdet'),
    ('RSNet', 'RSNetBackbone', 'MODELS', 'mmdet'),
    ('SlimmableBNCalibrationHook', 'BNCalibrationHook', 'HOOKS', 'mmseg'),
    ('SlimmableDetBNCalibrationHook', 'BNCalibrationHook', 'HOOKS', 'mmdet'),
    ('DetPonderMapSaveHook', 'PonderMapSaveHook', 'HOOKS', 'mmdet'),
])
def test_renamed_types_fail_naming_the_new_name(old, new, registry, scope):
    reg = getattr(__import__(f'{scope}.registry', fromlist=[registry]), registry)
    init_default_scope(scope)
    with pytest.raises(Exception, match=f"{old}.*renamed.*{new}") as e:
        reg.build(dict(type=old, arch='resnext50_elastic') if registry == 'MODELS' else dict(type=old))
    assert new in str(e.value)


def test_renamed_python_names_fail_naming_the_new_name():
    import plugins.mm.backbones as b
    with pytest.raises(AttributeError, match='renamed ElasticBackbone'):
        b.ElasticResNeXt
    with pytest.raises(AttributeError, match='renamed RSNetBackbone'):
        b.RSNet


def test_one_module_per_registry_kind():
    """Backbones, segmentors, detectors, necks, heads, hooks and datasets each live in their own module."""
    import inspect

    import plugins.mm as mm
    where = {'DynscaleBackbone': 'backbones', 'ElasticBackbone': 'backbones', 'RSNetBackbone': 'backbones',
             'DynscaleEncoderDecoder': 'segmentors', 'SlimmableEncoderDecoder': 'segmentors',
             'DynscaleTwoStageDetector': 'detectors', 'SACTTwoStageDetector': 'detectors', 'SlicedFPN': 'necks',
             'DeepLabV3Head': 'heads', 'BNCalibrationHook': 'hooks', 'PonderMapSaveHook': 'hooks',
             'InputNormalizationHook': 'hooks'}
    for name, module in where.items():
        assert inspect.getmodule(getattr(mm, name)).__name__ == f'plugins.mm.{module}', name
    from plugins.mm.datasets import CheckedCocoDataset, NYUDv2Dataset, VOCSegDataset
    assert {c.__module__ for c in (CheckedCocoDataset, NYUDv2Dataset, VOCSegDataset)} == {
        'plugins.mm.datasets.coco', 'plugins.mm.datasets.seg'}


def _seg_samples(n, size, classes, seed=0):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ds = SegDataSample()
        ds.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, size, size), generator=g))
        ds.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
        out.append(ds)
    return out


@pytest.mark.parametrize('preset,generic', [
    (dict(type='SACTEncoderDecoder', tau=0.02), dict(type='sact', tau=0.02)),
    (dict(type='RSNetEncoderDecoder', kd='ens', train_cfg=dict(bn_resolutions=(64, 32))),
     dict(type='rsnet', mred='ens', bn_resolutions=(64, 32))),
    (dict(type='SlimmableEncoderDecoder', num_subnets=3, seed=3, train_cfg=dict(input_sizes=(64, 48))),
     dict(type='mutualnet', num_subnets=3, seed=3, input_sizes=(64, 48))),
], ids=['sact', 'rsnet', 'mutualnet'])
def test_generic_segmentor_equals_the_method_presets(preset, generic):
    """DynscaleEncoderDecoder(policy=...) trains exactly as the preset with the same settings (same weights)."""
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    arch = {'SACTEncoderDecoder': ('SACTResNet', 'sact_resnet50', {}),
            'RSNetEncoderDecoder': ('RSNetBackbone', 'rs_resnet18', dict(resolutions=(64, 32))),
            'SlimmableEncoderDecoder': ('SlimmableNet', 'us_mobilenet_v2', {})}[preset['type']]
    chans = {'sact_resnet50': 2048, 'rs_resnet18': 512, 'us_mobilenet_v2': 320}[arch[1]]
    common = dict(data_preprocessor=dict(type='SegDataPreProcessor'),
                  backbone=dict(type=arch[0], arch=arch[1], out_indices=(3,), **arch[2]),
                  decode_head=dict(type='DeepLabV3Head', in_channels=chans, in_index=0, channels=8, dilations=(1, 2),
                                   num_classes=3, input_sliced=True, norm_cfg=dict(type='BN'), dropout_ratio=0.0))
    torch.manual_seed(0)
    a = MODELS.build(dict(common, **preset))
    b_cfg = dict(common, type='DynscaleEncoderDecoder', policy=generic,
                 input_align_corners=True if generic['type'] == 'mutualnet' else None)
    if 'train_cfg' in preset:
        b_cfg['train_cfg'] = preset['train_cfg']
    b = MODELS.build(b_cfg)
    b.load_state_dict(a.state_dict())
    assert type(b.policy) is type(a.policy) and repr(b.policy) == repr(a.policy)
    x = torch.randn(2, 3, 64, 64)
    la, lb = a.loss(x, _seg_samples(2, 64, 3)), b.loss(x, _seg_samples(2, 64, 3))
    assert sorted(la) == sorted(lb)
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=0, atol=0, msg=k)


def test_generic_detector_equals_the_sact_preset():
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(ROOT, 'det_configs', 'mmdet', 'sact',
                                   'faster-rcnn_sact-r50_fpn_short_coco-subset.py'))
    torch.manual_seed(0)
    a = MODELS.build(cfg.model)
    g = dict(cfg.model)
    g['type'] = 'DynscaleTwoStageDetector'
    g['policy'] = dict(type='sact', tau=g.pop('tau'))
    b = MODELS.build(g)
    b.load_state_dict(a.state_dict())
    assert repr(a.policy) == repr(b.policy)


@pytest.mark.parametrize('scope, model, old, new', [
    ('mmseg', dict(type='SlimmableEncoderDecoder', train_cfg=dict(resolutions=(64, 48))), 'train_cfg.resolutions',
     'train_cfg.input_sizes'),
    ('mmseg', dict(type='SlimmableEncoderDecoder', train_cfg=dict(max_resolution=64)), 'train_cfg.max_resolution',
     'train_cfg.max_input_size'),
    ('mmseg', dict(type='RSNetEncoderDecoder', train_cfg=dict(resolutions=(64, 32))), 'train_cfg.resolutions',
     'train_cfg.bn_resolutions'),
    ('mmdet', dict(type='SlimmableTwoStageDetector', sandwich=dict(resolutions=(160, 96))),
     'model.sandwich.resolutions', 'model.sandwich.input_sizes'),
    ('mmdet', dict(type='RSNetTwoStageDetector', train_resolutions=[240]), 'model.train_resolutions',
     'model.bn_resolutions'),
])
def test_presets_refuse_the_old_resolution_keys_naming_the_new(scope, model, old, new):
    """One word per meaning (issue 26): input sizes (crop / shorter sides trained at) and private-BN resolutions
    have their own keys in every preset; a config with the old ``resolutions`` key fails before anything is built,
    naming the new key."""
    pytest.importorskip(scope, reason=f'{scope} (the mm extra) is not installed')
    registry = importlib.import_module(f'{scope}.registry').MODELS
    init_default_scope(scope)
    with pytest.raises(ValueError, match=rf'{re.escape(old)} was renamed {re.escape(new)}'):
        registry.build(model)
