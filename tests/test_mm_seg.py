"""MMSegmentation plugins: configs, adapter, heads, segmentors, datasets and a short real training run."""
import glob
import os
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import fast_subset

pytest.importorskip('mmseg', reason='mmsegmentation not installed: run bash tools/setup_env.sh')

from mmengine.config import Config, ConfigDict  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

import backbones as dyn  # noqa: E402
import plugins.mm  # noqa: E402,F401  (registers everything)
from backbones.checkpoint import CheckpointMismatchError, save_backbone_checkpoint  # noqa: E402
from plugins.mm.backbones import DynscaleBackbone  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(glob.glob(osp.join(ROOT, 'seg_configs', '*.py')))
CI_CONFIG = osp.join(ROOT, 'seg_configs',
                     'deeplabv3_elastic-resnext50-d16-mg124_1xb2-40it_voc12subset-129x129.py')


@pytest.fixture(autouse=True)
def _mmseg_scope():
    """Every test builds in the mmseg scope, whatever scope an earlier test module (mmdet) left current."""
    init_default_scope('mmseg')
    yield


def _build(cfg_dict):
    return MODELS.build(Config(dict(model=cfg_dict)).model)


def _samples(n, h, w, num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ds = SegDataSample()
        lab = torch.randint(0, num_classes, (1, h, w), generator=g)
        lab[:, :2] = 255
        ds.gt_sem_seg = PixelData(data=lab)
        ds.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), padding_size=[0, 0, 0, 0]))
        out.append(ds)
    return out


# ------------------------------------------------------------------------------------------------ configs
def test_configs_found():
    assert len(CONFIGS) >= 12 and osp.isfile(CI_CONFIG)


@pytest.mark.slow
@pytest.mark.parametrize('path', CONFIGS, ids=[osp.basename(p)[:-3] for p in CONFIGS])
def test_config_builds_and_channels_match(path):
    """Every seg config loads, builds its model, and the backbone's declared channels feed the head."""
    cfg = Config.fromfile(path)
    assert cfg.custom_imports['imports'] == ['plugins.mm']
    model = MODELS.build(cfg.model)
    bb, head = model.backbone, model.decode_head
    assert isinstance(bb, DynscaleBackbone)
    idx = head.in_index if isinstance(head.in_index, (list, tuple)) else [head.in_index]
    want = head.in_channels if isinstance(head.in_channels, (list, tuple)) else [head.in_channels]
    assert [bb.out_channels[i] for i in idx] == list(want), (bb.out_channels, head.in_channels)
    assert head.num_classes == (40 if 'nyudv2' in path else 21)
    if 'd16' in path:
        assert bb.strides[-1] == 16
    # data roots resolve to ../shared/datasets beside the repository unless $DYNSCALE_DATASETS is set
    if 'DYNSCALE_DATASETS' not in os.environ:
        assert osp.normpath(cfg.datasets_root) == osp.normpath(osp.join(ROOT, '..', 'shared', 'datasets'))


def test_cli_data_root_override():
    from plugins.mm.cli import dataset_cfgs, set_data_root
    cfg = Config.fromfile(osp.join(ROOT, 'seg_configs',
                                   'deeplabv3_elastic-resnext50-d16-mg124_1xb16-33k_voc12aug-513x513.py'))
    set_data_root(cfg, '/data/x')
    roots = {d['data_root'] for d in dataset_cfgs(cfg) if 'data_root' in d}
    assert roots == {'/data/x/VOCdevkit/VOC2012'}


# ------------------------------------------------------------------------------------------------ adapter
def _stage_params_frozen(stage):
    return all(not p.requires_grad for p in stage.parameters())


@pytest.mark.parametrize('arch,kw', [('resnext50_32x4d', {}), ('rs_resnet18', dict(resolutions=(64, 32))),
                                     ('sact_resnet50', {}), ('us_mobilenet_v2', {})])
def test_adapter_out_indices_frozen_norm_eval(arch, kw):
    bb = DynscaleBackbone(arch=arch, out_indices=(1, 3), frozen_stages=2, norm_eval=True, **kw)
    bb.train()
    m = bb.model
    assert not m.stem.training and not m.stages[0].training and not m.stages[1].training
    assert m.stages[2].training and m.stages[3].training
    assert _stage_params_frozen(m.stem) and _stage_params_frozen(m.stages[1])
    assert any(p.requires_grad for p in m.stages[2].parameters())
    bns = [x for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not b.training for b in bns)  # norm_eval re-applied by train()
    out = bb(torch.randn(2, 3, 64, 64))
    assert len(out) == 2
    assert [o.shape[1] for o in out] == bb.out_channels
    assert [64 // o.shape[-1] for o in out] == bb.strides == [8, 32]


def test_adapter_strides_dilations_and_norm_cfg():
    bb = DynscaleBackbone(arch='resnext50_32x4d', strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                          multi_grid=(1, 2, 4),
                          norm_cfg=dict(type='GN', num_groups=16))
    assert bb.strides == [4, 8, 8, 8]
    assert isinstance(bb.model.stem.bn, torch.nn.GroupNorm)
    bb = DynscaleBackbone(arch='resnext50_32x4d',
                          norm_cfg=dict(type='BN', momentum=0.05, requires_grad=False))
    bn = bb.model.stages[0][0].bn1
    assert bn.momentum == 0.05 and not bn.weight.requires_grad
    with pytest.raises(ValueError, match='not a supported layout'):
        DynscaleBackbone(arch='resnext50_32x4d', strides=(1, 2, 2, 2), dilations=(1, 1, 2, 1))
    with pytest.raises(ValueError, match='Did you mean'):
        DynscaleBackbone(arch='resnext50')
    with pytest.raises(ValueError, match='ElasticBackbone'):
        MODELS.build(dict(type='SlimmableNet', arch='resnext50_elastic'))
    with pytest.raises(ValueError, match='outside'):
        DynscaleBackbone(arch='us_mobilenet_v2', width=0.2)
    with pytest.raises(ValueError, match='not a trained resolution'):
        DynscaleBackbone(arch='rs_resnet18', resolutions=(64, 32), resolution=48)
    with pytest.raises(ValueError, match='does not accept'):
        DynscaleBackbone(arch='sact_resnet50', with_cp=True)


def test_adapter_pretrained_loads_and_mismatch_fails_loudly(tmp_path):
    src = dyn.create('resnext50_32x4d', num_classes=10)
    path = str(tmp_path / 'r50.pth')
    save_backbone_checkpoint(src, path)
    bb = MODELS.build(dict(type='ElasticBackbone', arch='resnext50_32x4d',
                           init_cfg=dict(type='Pretrained', checkpoint=path)))
    bb.init_weights()
    assert torch.equal(bb.model.stages[2][1].conv2.weight, src.stages[2][1].conv2.weight)
    # a segmentor checkpoint, selected with prefix
    seg = str(tmp_path / 'seg.pth')
    torch.save({'state_dict': {'backbone.model.' + k: v for k, v in src.state_dict().items()
                               if not k.startswith('head.')}, 'meta': {}}, seg)
    bb = DynscaleBackbone(arch='resnext50_32x4d',
                          init_cfg=dict(type='Pretrained', checkpoint=seg, prefix='backbone.'))
    bb.init_weights()
    assert torch.equal(bb.model.stem.conv.weight, src.stem.conv.weight)
    # wrong variant: every unmatched key class is listed
    bad = DynscaleBackbone(arch='resnext50_elastic', init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointMismatchError) as e:
        bad.init_weights()
    msg = str(e.value)
    assert 'missing' in msg and 'unexpected' in msg and 'conv1_d' in msg
    with pytest.raises(CheckpointMismatchError, match='prefix'):
        DynscaleBackbone(arch='resnext50_32x4d', init_cfg=dict(type='Pretrained', checkpoint=path,
                                                               prefix='backbone.')).init_weights()
    # segmentor-level pretrained= is mapped to the backbone's Pretrained init_cfg
    model = _build(dict(type='EncoderDecoder', pretrained=path,
                        backbone=dict(type='ElasticBackbone', arch='resnext50_32x4d', out_indices=(3,)),
                        decode_head=dict(type='FCNHead', in_channels=2048, channels=8, num_convs=1,
                                         num_classes=3)))
    model.init_weights()
    assert torch.equal(model.backbone.model.stem.conv.weight, src.stem.conv.weight)


# ------------------------------------------------------------------------------------------------ heads
def test_refinenet_head_shapes_and_loss():
    head = MODELS.build(dict(type='RefineNetHead', in_channels=[16, 32, 64, 128], in_index=[0, 1, 2, 3],
                             channels=24, top_channels=40, num_classes=5))
    feats = [torch.randn(2, c, 32 // 2 ** i, 40 // 2 ** i) for i, c in enumerate([16, 32, 64, 128])]
    out = head(feats)
    assert out.shape == (2, 5, 32, 40)
    assert [b.fusion.convs is None for b in head.refine_blocks] == [True, False, False, False]
    # RefineNet-3 adapts the top_channels-wide output of RefineNet-4
    assert head.refine_blocks[1].fusion.convs[0].conv.in_channels == 40
    losses = head.loss_by_feat(out, _samples(2, 64, 80, 5))
    losses['loss_ce'].backward()
    assert head.adapt[3].conv.weight.grad is not None
    # output stride 16: the last two features share a resolution
    feats[3] = torch.randn(2, 128, 4, 5)
    assert head(feats).shape == (2, 5, 32, 40)
    with pytest.raises(ValueError, match='multiple_select'):
        MODELS.build(dict(type='RefineNetHead', in_channels=[16], in_index=[0], channels=8, num_classes=2,
                          input_transform='resize_concat'))


def test_deeplabv3_head_input_sliced():
    head = MODELS.build(dict(type='DeepLabV3Head', in_channels=64, in_index=0, channels=16,
                             dilations=(1, 6, 12, 18), num_classes=3, input_sliced=True,
                             norm_cfg=dict(type='BN')))
    assert head.bottleneck.conv.kernel_size == (1, 1)
    head.eval()
    full = head([torch.randn(2, 64, 9, 9)])
    slim = head([torch.randn(2, 24, 9, 9)])  # a backbone at a smaller width
    assert full.shape == slim.shape == (2, 3, 9, 9)


# ------------------------------------------------------------------------------------------------ segmentors
def _pre():
    return dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                size=(64, 64), bgr_to_rgb=True, pad_val=0, seg_pad_val=255)


def test_sact_segmentor_ponder_loss_and_maps():
    model = _build(dict(type='SACTEncoderDecoder', tau=0.01, data_preprocessor=_pre(),
                        backbone=dict(type='SACTResNet', arch='sact_resnet50', out_indices=(3,)),
                        decode_head=dict(type='FCNHead', in_channels=2048, in_index=0, channels=8,
                                         num_convs=1, num_classes=3),
                        test_cfg=dict(mode='whole')))
    x = torch.randn(2, 3, 64, 64)
    losses = model.loss(x, _samples(2, 64, 64, 3))
    assert losses['loss_ponder'] > 0 and losses['ponder_cost'] >= 4  # rho >= 1 per stage, 4 stages
    assert torch.allclose(losses['loss_ponder'], 0.01 * losses['ponder_cost'])
    losses['loss_ponder'].backward()
    halting = [p for n, p in model.named_parameters() if 'halting' in n]
    assert halting and any(p.grad is not None and p.grad.abs().sum() > 0 for p in halting)
    model.eval()
    samples = _samples(2, 64, 64, 3)
    for s in samples:
        s.set_metainfo(dict(ori_shape=(80, 96)))
    res = model.predict(x, samples)
    assert res[0].ponder_map.data.shape == (1, 80, 96)
    assert float(res[0].ponder_map.data.min()) >= 4 - 1e-4


def test_rsnet_segmentor_multires_training_and_test_resolution():
    model = _build(dict(type='RSNetEncoderDecoder', data_preprocessor=_pre(),
                        backbone=dict(type='RSNetBackbone', arch='rs_resnet18', resolutions=(64, 48, 32)),
                        decode_head=dict(type='RefineNetHead', in_channels=[64, 128, 256, 512],
                                         in_index=[0, 1, 2, 3], channels=16, top_channels=24, num_classes=4),
                        train_cfg=dict(bn_resolutions=(64, 48, 32)),
                        test_cfg=dict(mode='whole', resolution=48)))
    seen, net = [], model.backbone.model
    net.stem.register_forward_pre_hook(lambda m, a: seen.append((tuple(a[0].shape[-2:]), net.resolution)))
    x = torch.randn(2, 3, 64, 64)
    losses = model.loss(x, _samples(2, 64, 64, 4))
    assert seen == [((64, 64), 64), ((48, 48), 48), ((32, 32), 32)]  # each copy with its own private BN
    assert {'loss_mred', 'mred_ce_0', 'mred_ce_ens', 'mred_kd', 'r32.acc_seg'} <= set(losses)
    losses['loss_mred'].backward()
    assert model.mred.alpha.grad is not None and model.mred.alpha.grad.abs().sum() > 0
    model.eval()
    seen.clear()
    out = model.predict(torch.randn(1, 3, 40, 60), None)
    assert out[0].seg_logits.data.shape == (4, 40, 60)  # logits back at the image size
    assert seen[-1] == ((48, 48), 48)  # computed at the test resolution with its BN
    model.test_cfg['resolution'] = 40  # not trained: refused by default (issue 19), whatever the backbone's rule
    with pytest.raises(ValueError, match="has no private BN.*untrained_resolution='nearest'"):
        model.predict(torch.randn(1, 3, 40, 60), None)
    model.policy.untrained_resolution = 'nearest'  # the explicit opt-in: the nearest trained BN (tie: larger)
    model.predict(torch.randn(1, 3, 40, 60), None)
    assert seen[-1] == ((40, 40), 48)


def test_rsnet_segmentor_untrained_resolution_from_test_cfg():
    cfg = dict(type='RSNetEncoderDecoder', data_preprocessor=_pre(),
               backbone=dict(type='RSNetBackbone', arch='rs_resnet18', resolutions=(64, 32)),
               decode_head=dict(type='RefineNetHead', in_channels=[64, 128, 256, 512], in_index=[0, 1, 2, 3],
                                channels=16, top_channels=24, num_classes=4),
               test_cfg=dict(mode='whole', resolution=56, untrained_resolution='nearest'))
    model = _build(cfg)
    assert model.policy.untrained_resolution == 'nearest'
    model.eval()
    seen, net = [], model.backbone.model
    net.stem.register_forward_pre_hook(lambda m, a: seen.append(net.resolution))
    model.predict(torch.randn(1, 3, 40, 60), None)
    assert seen == [64]


def test_slimmable_segmentor_sandwich_step_and_calibration():
    from mmengine.optim import OptimWrapper
    model = _build(dict(type='SlimmableEncoderDecoder', data_preprocessor=_pre(), num_subnets=3, seed=0,
                        backbone=dict(type='SlimmableNet', arch='us_mobilenet_v2', output_stride=16),
                        decode_head=dict(type='DeepLabV3Head', in_channels=320, in_index=3, channels=16,
                                         dilations=(1, 2), num_classes=3, input_sliced=True,
                                         norm_cfg=dict(type='BN')),
                        train_cfg=dict(input_sizes=(64, 48), max_input_size=64), test_cfg=dict(mode='whole')))
    model.train()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    w0 = model.decode_head.conv_seg.weight.detach().clone()
    imgs = [torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8) for _ in range(2)]
    data = dict(inputs=imgs, data_samples=_samples(2, 64, 64, 3))
    log = model.train_step(data, optim)
    assert 'max.decode.loss_ce' in log and 'min.loss_distill' in log and 'rand1.loss_distill' in log
    assert optim._inner_count == 1
    assert not torch.equal(w0, model.decode_head.conv_seg.weight)
    # evaluation at a width without statistics needs calibration first
    from backbones.training import calibrate_bn
    model.eval()
    model.test_cfg = ConfigDict(mode='whole', width=0.6, resolution=48)
    with pytest.raises(ValueError, match='calibrate'):
        model.predict(torch.randn(1, 3, 64, 64), None)
    calibrate_bn(model, [torch.randn(2, 3, 64, 64)], width=0.6, resolution=48)
    out = model.predict(torch.randn(1, 3, 64, 64), None)
    assert out[0].seg_logits.data.shape == (3, 64, 64)


# ------------------------------------------------------------------------------------------------ datasets
def test_nyudv2_sample_loads(shared_dir):
    from mmseg.registry import DATASETS
    root = osp.join(shared_dir, 'datasets', 'nyudv2_sample')
    ds = DATASETS.build(dict(type='NYUDv2Dataset', data_root=root,
                             data_prefix=dict(img_path='', seg_map_path=''),
                             pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                                       dict(type='PackSegInputs')]))
    assert len(ds) == 1 and len(ds.metainfo['classes']) == 40
    item = ds[0]
    gt = item['data_samples'].gt_sem_seg.data[0].numpy()
    from PIL import Image
    raw = np.asarray(Image.open(osp.join(root, 'label40.png')))
    assert gt.shape == raw.shape == (512, 682)
    assert (gt[raw == 0] == 255).all()
    assert (gt[raw > 0] == raw[raw > 0] - 1).all() and gt[raw > 0].max() <= 39
    assert item['inputs'].shape == (3, 512, 682)


def test_voc_missing_path_is_explained(tmp_path):
    from mmseg.registry import DATASETS
    with pytest.raises(FileNotFoundError) as e:
        DATASETS.build(dict(type='VOCSegDataset', data_root=str(tmp_path / 'nowhere'),
                            ann_file='ImageSets/Segmentation/train.txt'))
    msg = str(e.value)
    assert 'nowhere' in msg and 'SegmentationClass' in msg and 'make_synthetic_voc' in msg
    with pytest.raises(FileNotFoundError, match='NYUDv2 image folder'):
        DATASETS.build(dict(type='NYUDv2Dataset', data_root=str(tmp_path)))


def test_synthetic_voc_layout(tmp_path):
    from mmseg.registry import DATASETS

    from plugins.mm.datasets import make_synthetic_voc
    root = make_synthetic_voc(str(tmp_path / 'VOC2012'), num_train=3, num_val=2, size=(64, 48))
    ds = DATASETS.build(dict(type='VOCSegDataset', data_root=root, ann_file='ImageSets/Segmentation/val.txt',
                             pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                                       dict(type='PackSegInputs')]))
    assert len(ds) == 2
    gt = ds[0]['data_samples'].gt_sem_seg.data
    vals = set(torch.unique(gt).tolist())
    assert 0 in vals and 255 in vals and any(0 < v < 21 for v in vals)


# ------------------------------------------------------------------------------------ main job (CI size)
def _voc_root(tmp_path):
    shared = os.environ.get('DYNSCALE_SHARED', osp.join(osp.dirname(ROOT), 'shared'))
    split = osp.join(shared, 'datasets', 'VOCdevkit', 'VOC2012', 'ImageSets', 'Segmentation', 'train.txt')
    if osp.isfile(split):
        return osp.join(shared, 'datasets'), 'real'
    from plugins.mm.datasets import make_synthetic_voc
    make_synthetic_voc(str(tmp_path / 'datasets' / 'VOCdevkit' / 'VOC2012'), num_train=32, num_val=16,
                       size=(192, 144))
    return str(tmp_path / 'datasets'), 'synthetic'


def _load_tool(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', osp.join(ROOT, 'tools', name + '.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_main_job_ci(tmp_path, monkeypatch):
    """DeepLabV3 ResNeXt50+Elastic trains on the VOC subset (synthetic VOC if absent) with the CI config's recipe
    over 24 of its 40 iterations (the poly schedule ends at 24; ``DYNSCALE_E2E_ITERS`` for the full run), the loss
    goes down and val mIoU is produced (on 16 of the val images)."""
    torch.set_num_threads(1)  # one thread: robust on a shared 2-core CI box (OpenMP threads stall under load)
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')  # what the tools set; undone after the test
    train_seg = _load_tool('train_seg')
    data_root, kind = _voc_root(tmp_path)
    iters = int(os.environ.get('DYNSCALE_E2E_ITERS', 24))
    runner = train_seg.main([CI_CONFIG, '--work-dir', str(tmp_path / 'work'), '--data-root', data_root,
                             '--cfg-options', 'randomness.seed=0', 'val_dataloader.dataset.indices=16',
                             f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
                             f'param_scheduler.0.end={iters}', f'default_hooks.checkpoint.interval={iters}'])
    losses = runner.message_hub.get_scalar('train/loss').data[0]
    assert len(losses) == iters and np.isfinite(losses).all()
    first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
    assert last < first, f'loss did not go down on {kind} data: {first:.3f} -> {last:.3f}'
    miou = runner.message_hub.get_scalar('val/mIoU').current()
    assert 0.0 <= miou <= 100.0
    ckpt = osp.join(str(tmp_path / 'work'), f'iter_{iters}.pth')
    assert osp.isfile(ckpt)
    # tools/test_seg.py evaluates the checkpoint (4 val images to keep it short)
    test_seg = _load_tool('test_seg')
    metrics = test_seg.main([CI_CONFIG, ckpt, '--work-dir', str(tmp_path / 'test'), '--data-root', data_root,
                             '--cfg-options', 'test_dataloader.dataset.indices=4'])
    assert 0.0 <= metrics['mIoU'] <= 100.0


def test_ponder_map_save_hook(tmp_path):
    from types import SimpleNamespace

    from mmengine.logging import MessageHub

    from plugins.mm.hooks import PonderMapSaveHook
    hook = PonderMapSaveHook()
    runner = SimpleNamespace(work_dir=str(tmp_path), message_hub=MessageHub.get_instance('ponder_test'), model=None)
    hook.before_test(runner)
    hook.before_test_epoch(runner)
    ds = SegDataSample(metainfo=dict(img_path='/x/img_0001.jpg'))
    ds.set_data({'ponder_map': PixelData(data=torch.full((1, 6, 8), 5.0))})
    hook.after_test_iter(runner, 0, None, [ds, SegDataSample()])
    hook.after_test_epoch(runner)
    arr = np.load(tmp_path / 'ponder_maps' / 'img_0001.npy')
    assert arr.shape == (6, 8) and np.allclose(arr, 5.0)
    from PIL import Image
    assert Image.open(tmp_path / 'ponder_maps' / 'img_0001.png').size == (int(3.2 * 2 * 80), int(3.4 * 80))
    assert runner.message_hub.get_scalar('test/ponder_cost').current() == pytest.approx(5.0)


METHOD_CONFIGS = ['deeplabv3_us-mobilenetv2-d16_mutualnet-4net_1xb8-1k_voc12subset-321x321.py',
                  'deeplabv3_sact-resnet50-d16-mg124_1xb8-1k_voc12subset-321x321.py',
                  'deeplabv3_rs-resnet50-d16-mg124_s321-193-97_1xb8-1k_voc12subset-321x321.py']


@pytest.mark.slow
@pytest.mark.parametrize('name', METHOD_CONFIGS, ids=['mutualnet', 'sact', 'rsnet'])
def test_method_configs_run_in_runner(name, tmp_path):
    """Two training iterations and a validation of each method-specific segmentor in the mmengine Runner
    (sandwich-rule train_step + BN-calibration hook, ponder loss, multi-resolution MRED) on a tiny synthetic
    VOC set with 65-pixel crops."""
    torch.set_num_threads(1)
    from mmengine.runner import Runner

    from plugins.mm.cli import set_data_root
    from plugins.mm.datasets import make_synthetic_voc
    make_synthetic_voc(str(tmp_path / 'data' / 'VOCdevkit' / 'VOC2012'), num_train=4, num_val=2,
                       size=(72, 56))
    cfg = Config.fromfile(osp.join(ROOT, 'seg_configs', name))
    set_data_root(cfg, str(tmp_path / 'data'))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.pipeline = [
        dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
        dict(type='RandomCrop', crop_size=(65, 65)), dict(type='PackSegInputs')]
    cfg.val_dataloader.update(num_workers=0, persistent_workers=False)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.model.data_preprocessor.size = (65, 65)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1, save_last=False)
    if 'rs-resnet' in name:
        cfg.model.test_cfg.resolution = 97  # validate at the smallest trained resolution (its private BN)
    cfg.default_hooks.visualization = dict(type='SegVisualizationHook', draw=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    for h in cfg.get('custom_hooks', []):
        if h['type'] == 'BNCalibrationHook':
            h['num_batches'] = 1
    runner = Runner.from_cfg(cfg)
    runner.train()
    hub = runner.message_hub
    assert np.isfinite(hub.get_scalar('train/loss').data[0]).all()
    assert 0.0 <= hub.get_scalar('val/mIoU').current() <= 100.0
    if 'mutualnet' in name:
        assert 'train/min.loss_distill' in hub.log_scalars
    elif 'sact' in name:
        assert hub.get_scalar('train/ponder_cost').current() >= 4.0
        runner.test()  # ponder maps are written at test time
        assert len(glob.glob(osp.join(cfg.work_dir, 'ponder_maps', '*.npy'))) == 2
        from PIL import Image  # drawn over the test image: sum + the 4 stages, colour bars (backbones.sact.drawing)
        pngs = glob.glob(osp.join(cfg.work_dir, 'ponder_maps', '*.png'))
        assert len(pngs) == 2 and Image.open(pngs[0]).size == (int(3.2 * 6 * 80), int(3.4 * 80))
    else:
        assert 'train/mred_kd' in hub.log_scalars


@pytest.mark.parametrize('name', fast_subset(['deeplabv3_densenet201-elastic-d16_1xb16-33k_voc12aug-513x513.py',
                                              'deeplabv3_dla60x-elastic-d16_1xb16-33k_voc12aug-513x513.py'],
                                             ['deeplabv3_dla60x-elastic-d16_1xb16-33k_voc12aug-513x513.py']))
def test_densenet_dla_configs_train_one_step(name, tmp_path):
    """Issue 20: the DenseNet-201+Elastic and DLA-X60+Elastic DeepLabV3 configs (OS 16) train one CPU iteration in
    the Runner (synthetic VOC, 65-pixel crops, random initialisation instead of the converted zoo file)."""
    torch.set_num_threads(1)
    from mmengine.runner import Runner

    from plugins.mm.cli import set_data_root
    from plugins.mm.datasets import make_synthetic_voc
    make_synthetic_voc(str(tmp_path / 'data' / 'VOCdevkit' / 'VOC2012'), num_train=2, num_val=1, size=(72, 56))
    cfg = Config.fromfile(osp.join(ROOT, 'seg_configs', name))
    set_data_root(cfg, str(tmp_path / 'data'))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.model.backbone.init_cfg = dict()
    cfg.model.backbone.norm_cfg = dict(type='BN', requires_grad=True)  # one process
    cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.train_dataloader = dict(
        batch_size=2, num_workers=0, persistent_workers=False, sampler=dict(type='InfiniteSampler', shuffle=True),
        dataset=dict(type='VOCSegDataset', data_root=str(tmp_path / 'data' / 'VOCdevkit' / 'VOC2012'),
                     data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
                     ann_file='ImageSets/Segmentation/train.txt',
                     pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                               dict(type='RandomCrop', crop_size=(65, 65)), dict(type='PackSegInputs')]))
    cfg.model.data_preprocessor.size = (65, 65)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1, val_interval=100)
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1, save_last=False)
    cfg.default_hooks.visualization = dict(type='SegVisualizationHook', draw=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    runner = Runner.from_cfg(cfg)
    before = {n: p.detach().clone() for n, p in runner.model.backbone.named_parameters()}
    runner.train()
    assert np.isfinite(runner.message_hub.get_scalar('train/loss').data[0]).all()
    changed = [n for n, p in runner.model.backbone.named_parameters() if not torch.equal(before[n], p.detach())]
    assert changed and any('stages.3' in n for n in changed)


@pytest.mark.slow
def test_torchrun_two_processes_train_on_cpu(tmp_path):
    """Issue 23: ``torchrun --nproc_per_node 2 tools/train_seg.py CFG --launcher pytorch`` trains on a machine without
    a GPU (gloo instead of MMEngine's CUDA device call, DDP without device_ids, SyncBN as BN): two iterations."""
    import subprocess
    import sys

    from plugins.mm.datasets import make_synthetic_voc
    make_synthetic_voc(str(tmp_path / 'data' / 'VOCdevkit' / 'VOC2012'), num_train=4, num_val=2, size=(72, 56))
    base = osp.join(ROOT, 'seg_configs', 'deeplabv3_elastic-resnext50-d16-mg124_1xb2-40it_voc12subset-129x129.py')
    cfg = tmp_path / 'two_iters.py'
    cfg.write_text(f'''_base_ = [{base!r}]
crop_size = (65, 65)
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(arch='resnext50_32x4d'))
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
    dict(type='RandomCrop', crop_size=crop_size), dict(type='PackSegInputs')]))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=100)
val_dataloader = None
val_evaluator = None
val_cfg = None
param_scheduler = []
default_hooks = dict(logger=dict(type='LoggerHook', interval=1),
                     checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2, max_keep_ckpts=1))
''')
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        'tools/train_seg.py', str(cfg), '--launcher', 'pytorch', '--work-dir', str(tmp_path / 'work'),
                        '--data-root', str(tmp_path / 'data')], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert 'Iter(train) [2/2]' in out
    assert 'SyncBN layers run as BN' in out
    assert glob.glob(str(tmp_path / 'work' / 'iter_2.pth'))


# ------------------------------------------------------------------ fine-tune from the released weights (issue 22)
#: the VOC DeepLabV3 config of each released family whose zoo row it names
FINETUNE = ['deeplabv3_elastic-resnext50-d16-mg124_1xb16-33k_voc12aug-513x513.py',
            'deeplabv3_rs-resnet50-d16-mg124_s513-321-129_1xb16-33k_voc12aug-513x513.py',
            'deeplabv3_densenet201-elastic-d16_1xb16-33k_voc12aug-513x513.py',
            'deeplabv3_dla60x-elastic-d16_1xb16-33k_voc12aug-513x513.py',
            'deeplabv3_us-mobilenetv2-d16_mutualnet-4net_1xb16-33k_voc12aug-513x513.py',
            'deeplabv3_sact-resnet50-d16-mg124_1xb16-33k_voc12aug-513x513.py']


@pytest.mark.slow
@pytest.mark.parametrize('name', FINETUNE, ids=lambda n: n.split('_')[1])
def test_config_fine_tunes_from_its_released_file_on_the_voc_subset(name, tmp_path, shared_dir):
    """The documented path of a user with a download: ``tools/convert_weights.py <download> checkpoints/<row>.pth
    --model M`` on a file in the origin's container (random weights, from the manifests), then the config as
    shipped starting from it (strict: any unmatched key raises; InputNormalizationHook checks the config's
    mean/std against the file), four iterations on the same two shared VOC images at 97x97: finite loss that
    falls."""
    torch.set_num_threads(1)
    from mm_finetune import convert_release_for, train_and_check

    from plugins.mm.cli import set_data_root
    cfg = Config.fromfile(osp.join(ROOT, 'seg_configs', name))
    convert_release_for(cfg, tmp_path)
    set_data_root(cfg, osp.join(shared_dir, 'datasets'))
    voc = osp.join(shared_dir, 'datasets', 'VOCdevkit', 'VOC2012')
    with open(osp.join(voc, 'ImageSets', 'Segmentation', 'train.txt')) as f:
        (tmp_path / 'two.txt').write_text(''.join(f.readlines()[:2]))
    for part in (cfg.model.backbone, cfg.model.decode_head, cfg.model.get('auxiliary_head') or {}):
        if part.get('norm_cfg', {}).get('type') == 'SyncBN':
            part.norm_cfg = dict(type='BN', requires_grad=True)  # one process
    cfg.train_dataloader = dict(
        batch_size=2, num_workers=0, persistent_workers=False, sampler=dict(type='InfiniteSampler', shuffle=False),
        dataset=dict(type='VOCSegDataset', data_root=voc, ann_file=str(tmp_path / 'two.txt'),
                     data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
                     pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                               dict(type='Resize', scale=(97, 97), keep_ratio=False), dict(type='PackSegInputs')]))
    cfg.model.data_preprocessor.size = (97, 97)
    if cfg.model.type == 'RSNetEncoderDecoder':  # its two smallest resolutions (private BNs of 321 / 129), not 513
        cfg.model.train_cfg.bn_resolutions = (321, 129)
    train_and_check(cfg, tmp_path / 'work', 'SegVisualizationHook')
