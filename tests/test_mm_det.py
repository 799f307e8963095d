"""MMDetection side: every det config builds, channels match, MutualNet/RS-Net/SACT training steps do what
the papers say, the width-sliced FPN serves every width, and a short Mask R-CNN run on the real COCO subset
produces bbox/segm AP with the loss going down."""
import glob
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet', reason='mmdet not installed: run bash tools/setup_env.sh')

from mmdet.registry import MODELS  # noqa: E402
from mmdet.structures import DetDataSample  # noqa: E402
from mmdet.structures.mask import BitmapMasks  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

import plugins.mm  # noqa: E402,F401  (registration)
from plugins.mm import detectors as det  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG_DIR = osp.join(ROOT, 'det_configs', 'mmdet')
MUTUALNET = 'mutualnet/mask-rcnn_us-mbv2_sliced-fpn_mutualnet-short_coco-subset.py'
CONFIGS = sorted(osp.relpath(p, CFG_DIR) for p in glob.glob(osp.join(CFG_DIR, '*', '*.py'))
                 if not p.startswith(osp.join(CFG_DIR, '_base_')))


@pytest.fixture(autouse=True)
def _mmdet_scope():
    """Every test builds in the mmdet scope, whatever scope an earlier test module (mmseg) left current."""
    init_default_scope('mmdet')
    yield


@pytest.fixture(autouse=True)
def _torch_threads():
    """One intra-op thread: on the shared 2-core CI machine two spinning OpenMP threads are much slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# fewer proposals / sampled RoIs than the configs, so that one CPU training step stays short
_LIGHT = dict(train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=100),
                             rcnn=dict(sampler=dict(num=32))))


def _cfg(name):
    init_default_scope('mmdet')
    return Config.fromfile(osp.join(CFG_DIR, name))


def _build(name, light=True, **model_overrides):
    cfg = _cfg(name)
    if light:
        cfg.merge_from_dict(dict(model=_LIGHT))
    cfg.merge_from_dict(dict(model=model_overrides))
    torch.manual_seed(0)
    return MODELS.build(cfg.model), cfg


def _batch(n=2, shape=(3, 240, 320), ori=(384, 512), num_boxes=3, seed=0):
    """A packed mmdet batch as the subset configs' pipeline makes it: 384x512 originals resized to
    scale (320, 256) -> 240x320 uint8 images, with boxes, labels and masks."""
    rng = np.random.RandomState(seed)
    inputs, samples = [], []
    h, w = shape[1:]
    for i in range(n):
        inputs.append(torch.from_numpy(rng.randint(0, 255, size=shape, dtype=np.uint8)))
        ds = DetDataSample(metainfo=dict(img_id=i, img_shape=(h, w), ori_shape=ori,
                                         scale_factor=(w / ori[1], h / ori[0]), flip=False,
                                         flip_direction=None))
        x1 = rng.randint(0, w // 2, num_boxes)
        y1 = rng.randint(0, h // 2, num_boxes)
        bw = rng.randint(24, w // 2, num_boxes)
        bh = rng.randint(24, h // 2, num_boxes)
        boxes = np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32)
        masks = np.zeros((num_boxes, h, w), np.uint8)
        for k, (a, b, c, d) in enumerate(boxes.astype(int)):
            masks[k, b:d, a:c] = 1
        gt = InstanceData(bboxes=torch.from_numpy(boxes),
                          labels=torch.from_numpy(rng.randint(0, 80, num_boxes)),
                          masks=BitmapMasks(masks, h, w))
        ds.gt_instances = gt
        samples.append(ds)
    return dict(inputs=inputs, data_samples=samples)


# ------------------------------------------------------------------------------------------ configs
def test_config_list_covers_every_method():
    names = ' '.join(CONFIGS)
    for key in ('faster-rcnn_elastic-x50', 'faster-rcnn_elastic-x101', 'mask-rcnn_elastic-x50',
                'mask-rcnn_elastic-x101',
                'us-vgg16-bn_sliced-fpn_mutualnet', 'us-mbv2_sliced-fpn_mutualnet', 'faster-rcnn_sact-r50',
                'faster-rcnn_sact-r101', 'rs-r50', 'short_coco-subset'):
        assert key in names, key


@pytest.mark.slow
@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds_and_channels_match_neck(name):
    cfg = _cfg(name)
    assert cfg.custom_imports['imports'] == ['plugins.mm']
    model = MODELS.build(cfg.model)
    bb = model.backbone
    if model.__class__.__name__ == 'SlimmableTwoStageDetector':
        assert type(model.neck).__name__ == 'SlicedFPN'
        bb.set_width(bb.model.width_range[1])  # the neck is built for the largest width
    # declared channels == what the neck expects == what the backbone really emits
    assert list(bb.out_channels) == list(cfg.model.neck.in_channels), name
    bb.eval()
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == list(cfg.model.neck.in_channels)
    assert [64 // f.shape[2] for f in feats] == bb.strides
    if 'mask-rcnn' in name:
        assert model.roi_head.with_mask
        assert 'segm' in cfg.val_evaluator.metric


def test_sact_config_has_paper_detection_settings():
    cfg = _cfg('sact/faster-rcnn_sact-r101_fpn_1x_coco.py')
    m = MODELS.build(cfg.model)
    gen = m.rpn_head.prior_generator
    sizes, ratios = set(), set()
    for level in gen.base_anchors:  # [A, 4] anchors (x1, y1, x2, y2) centred on one position
        w, h = level[:, 2] - level[:, 0], level[:, 3] - level[:, 1]
        sizes |= {int(round(v)) for v in (w * h).sqrt().tolist()}
        ratios |= {round(v, 2) for v in (h / w).tolist()}
    assert sorted(sizes) == [64, 128, 256, 512]
    assert sorted(ratios) == [0.5, 1.0, 2.0]
    assert len(gen.base_anchors) == 4 and gen.num_base_priors == [3, 3, 3, 3]
    assert cfg.model.test_cfg.rpn.max_per_img == 300 and cfg.model.train_cfg.rpn_proposal.max_per_img == 300
    assert cfg.model.test_cfg.rcnn.nms.iou_threshold == 0.6
    assert m.backbone.arch == 'sact_resnet101'


def test_unknown_backbone_and_bad_resolution_raise():
    cfg = _cfg('rsnet/faster-rcnn_rs-r50_fpn_short_coco-subset.py')
    bad = cfg.model.copy()
    bad['test_resolution'] = 300
    with pytest.raises(ValueError, match='no private BN'):
        MODELS.build(bad)
    cfg = _cfg('elastic/faster-rcnn_elastic-x50-32x4d_fpn_1x_coco.py')
    cfg.model.backbone.arch = 'resnext50_elastc'
    with pytest.raises(Exception, match='resnext50_elastic'):
        MODELS.build(cfg.model)


# ------------------------------------------------------------------------------------------ rescaling
def test_rescale_batch_follows_mmdet_resize_rule():
    model, _ = _build(MUTUALNET)
    data = model.data_preprocessor(_batch(), True)
    x, samples = data['inputs'], data['data_samples']
    old_boxes = samples[0].gt_instances.bboxes.clone()
    y, new = det.rescale_batch(x, samples, 128, max_size=320)
    # ori 384x512 -> scale (320, 128): factor min(320/512, 128/384) = 1/3 -> 128x171
    assert new[0].img_shape == (128, 171)
    assert tuple(y.shape[-2:]) == (128, 192) and new[0].batch_input_shape == (128, 192)
    np.testing.assert_allclose(new[0].scale_factor, (171 / 512, 128 / 384))
    sx, sy = 171 / 320, 128 / 240
    torch.testing.assert_close(new[0].gt_instances.bboxes, old_boxes * torch.tensor([sx, sy, sx, sy]))
    m = new[0].gt_instances.masks
    assert (m.height, m.width) == (128, 192)  # padded to the new batch shape like DetDataPreprocessor
    # the box region of the first mask keeps its place after rescaling
    b = new[0].gt_instances.bboxes[0].round().int().tolist()
    assert m.masks[0][b[1] + 2:b[3] - 2, b[0] + 2:b[2] - 2].all()
    assert samples[0].img_shape == (240, 320)  # inputs not modified
    with pytest.raises(ValueError, match='short_side'):
        det.rescale_batch(x, samples, 0)


# ------------------------------------------------------------------------------------------ MutualNet
def _record_backbone_forwards(model):
    seen = []
    net = model.backbone.model

    def hook(mod, args):
        seen.append((net.width, tuple(args[0].shape[-2:])))
    return seen, model.backbone.register_forward_pre_hook(hook)


def test_mutualnet_train_step_runs_sandwich_widths_and_scales():
    model, _ = _build(MUTUALNET, sandwich=dict(seed=3))
    model.train()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    seen, h = _record_backbone_forwards(model)
    log = model.train_step(_batch(), optim)
    h.remove()
    lo, hi = model.backbone.model.width_range
    widths = [w for w, _ in seen]
    assert len(seen) == 4
    assert widths[0] == hi and widths[1] == lo and all(lo <= w <= hi for w in widths)
    assert len(set(widths)) >= 3  # the two random widths differ from the ends
    assert seen[0][1] == (256, 320)  # the largest width runs at the pipeline's (largest) scale, unrescaled
    subs = model.last_subnets
    assert [s[0] for s in subs] == ['', 'min', 'rand1', 'rand2']
    for (tag, w, res, hw), (w2, hw2) in zip(subs, seen):
        assert hw == hw2
        if res is not None:  # shorter side of a 384x512 original at that scale, padded to 32
            assert hw[0] == -(-res // 32) * 32
    for key in ('loss_rpn_cls', 'loss_cls', 'loss_mask', 'min_loss_cls', 'min_loss_mask', 'rand2_loss_bbox'):
        assert key in log, key
    total = sum(v for k, v in log.items() if 'loss' in k and k != 'loss')
    torch.testing.assert_close(log['loss'], total)
    # the neck and the heads are shared: one set of parameters got gradients from every width
    assert model.backbone.model.width == hi  # width restored after the step


def test_sandwich_rule_over_many_steps_covers_all_scales():
    model, _ = _build(MUTUALNET, sandwich=dict(seed=0))
    scales = set()
    for step in range(30):
        subs = model.policy.subnets(step)  # a pure function of (seed, step): the same on every rank
        assert subs == model.policy.subnets(step)
        assert subs[0].input_size is None and subs[1].width == model.backbone.model.width_range[0]
        scales |= {s.input_size for s in subs[1:]}
    assert scales == {None, 208, 152, 104}  # None = the largest scale (256), no rescaling


def test_sliced_fpn_accepts_every_width_and_equals_fpn_at_full_width():
    model, cfg = _build(MUTUALNET)
    model.eval()
    bb, neck = model.backbone, model.neck
    x = torch.randn(1, 3, 96, 128)
    outs = {}
    with torch.no_grad():
        for w in (0.35, 0.5, 0.73, 1.0):
            with bb.model.width_context(w):
                with bb.model.probe_context():
                    feats = bb(x)
                assert [f.shape[1] for f in feats] == bb.out_channels
                if w < 1.0:
                    assert feats[-1].shape[1] < cfg.model.neck.in_channels[-1]
                outs[w] = neck(feats)
            assert all(o.shape[1] == 256 for o in outs[w])
        # at full width SlicedFPN is exactly mmdet's FPN with the same weights
        from mmdet.models.necks import FPN
        ref = FPN(**{k: v for k, v in cfg.model.neck.items() if k != 'type'})
        ref.load_state_dict(neck.state_dict())
        ref.eval()
        feats = bb(x)
        for a, b in zip(neck(feats), ref(feats)):
            torch.testing.assert_close(a, b)
        too_wide = [torch.randn(1, c + 8, 8, 8) for c in cfg.model.neck.in_channels]
        with pytest.raises(ValueError, match='largest width'):
            neck(too_wide)


def test_bn_calibration_and_evaluation_at_any_width_and_scale():
    model, _ = _build(MUTUALNET, test_width=0.6,
                      test_resolution=152)
    model.eval()
    data = model.data_preprocessor(_batch(n=1), False)
    with pytest.raises(ValueError, match='calibrate_bn'):  # width 0.6 has no statistics yet
        model.predict(data['inputs'], data['data_samples'])
    n = model.calibrate_bn([_batch(n=2, seed=s) for s in range(2)])
    assert n == 2
    assert (0.6, 152) in model.backbone.model.bn_configs
    seen, h = _record_backbone_forwards(model)
    with torch.no_grad():
        res = model.predict(data['inputs'], data['data_samples'])
    h.remove()
    assert seen == [(0.6, (160, 224))]  # 384x512 at shorter side 152 -> 152x203, padded to 32
    assert res[0].pred_instances.bboxes.shape[1] == 4
    if len(res[0].pred_instances):  # boxes come back in original-image coordinates
        assert res[0].pred_instances.bboxes[:, 2].max() <= 512 + 1e-3
        assert res[0].pred_instances.masks.shape[-2:] == (384, 512)


# ------------------------------------------------------------------------------------------ RS-Net / SACT
def test_rsnet_step_trains_every_scale_with_its_private_bn():
    model, _ = _build('rsnet/faster-rcnn_rs-r50_fpn_short_coco-subset.py')
    model.train()
    net = model.backbone.model
    picked = []
    h = model.backbone.register_forward_pre_hook(
        lambda m, a: picked.append((net.explicit_resolution, tuple(a[0].shape[-2:]))))
    losses = model.loss(*_preprocessed(model))
    h.remove()
    # private BN of each scale selected explicitly; 384x512 originals: the pipeline's 240x320 (padded
    # 256x320) for the largest scale, then shorter side 192 (192x256) and 128 (128x171, padded 128x192)
    assert picked == [(256, (256, 320)), (192, (192, 256)), (128, (128, 192))]
    assert net.explicit_resolution is None  # back to the resolution rule after the step
    for key in ('loss_cls', 'r192_loss_cls', 'r128_loss_bbox', 'r128_loss_rpn_cls'):
        assert key in losses


def _preprocessed(model, **kw):
    d = model.data_preprocessor(_batch(**kw), True)
    return d['inputs'], d['data_samples']


def test_former_ponder_tau_name_is_refused_naming_tau():
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(CFG_DIR, 'sact', 'faster-rcnn_sact-r50_fpn_short_coco-subset.py'))
    g = dict(cfg.model)
    g['ponder_tau'] = g.pop('tau')
    with pytest.raises(ValueError, match=r'model\.ponder_tau was renamed model\.tau'):
        MODELS.build(g)


def test_sact_losses_include_ponder_cost():
    model, cfg = _build('sact/faster-rcnn_sact-r50_fpn_short_coco-subset.py')
    model.train()
    losses = model.loss(*_preprocessed(model))
    costs = model.backbone.ponder_costs
    assert len(costs) == 4 and costs[0].dim() == 3  # SACT: one [N, h, w] map per stage
    expected = cfg.model.tau * sum(c.mean() for c in costs)
    torch.testing.assert_close(losses['loss_ponder'], expected)
    torch.testing.assert_close(losses['ponder_cost'], sum(c.mean() for c in costs).detach())
    assert losses['ponder_cost'].item() >= 4.0  # at least one unit per stage and position
    parsed, log = model.parse_losses(losses)
    assert 'loss_ponder' in log and 'ponder_cost' in log
    halting = [p for n, p in model.backbone.named_parameters() if 'halt' in n]
    assert halting
    model.zero_grad()
    losses['loss_ponder'].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in halting)


def test_sact_predict_keeps_ponder_maps_for_the_saver_hook(tmp_path):
    model, _ = _build('sact/faster-rcnn_sact-r50_fpn_short_coco-subset.py')
    model.eval()
    d = model.data_preprocessor(_batch(n=2), False)
    with torch.no_grad():
        res = model.predict(d['inputs'], d['data_samples'])
    assert all('ponder_map' not in r for r in res)  # only on request
    from plugins.mm.hooks import PonderMapSaveHook
    hook = PonderMapSaveHook(out_dir=str(tmp_path / 'maps'))

    class _Runner:  # what the hook reads from mmengine's Runner
        model = None
        work_dir = str(tmp_path)
    runner = _Runner()
    runner.model = model
    hook.before_test(runner)
    with torch.no_grad():
        res = model.predict(d['inputs'], d['data_samples'])
    hook.after_test_iter(runner, 0, None, res)
    for r in res:
        m = r.ponder_map
        assert tuple(m.shape) == tuple(r.img_shape)  # cropped to the image, at the network input's size
        assert m.min() >= 4.0  # sum over 4 stages of rho = N + R >= 1
        saved = np.load(tmp_path / 'maps' / f'{r.img_id}.npy')
        np.testing.assert_allclose(saved, m.numpy())
        assert r.ponder_stage_maps.shape == (4, *m.shape)
        torch.testing.assert_close(r.ponder_stage_maps.sum(0), m)
        from PIL import Image  # drawn over the image: image + sum + 4 stages, colour bars
        assert Image.open(tmp_path / 'maps' / f'{r.img_id}.png').size == (int(3.2 * 6 * 80), int(3.4 * 80))


def test_test_tool_maps_width_scale_and_rejects_wrong_detectors(tmp_path):
    from tools import test_det_mm
    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'')
    cfg = test_det_mm.build_cfg(test_det_mm.parse_args(
        [osp.join(CFG_DIR, MUTUALNET), str(ckpt), '--width', '0.5', '--scale', '152',
         '--calib-batches', '3']))
    assert cfg.model.test_width == 0.5 and cfg.model.test_resolution == 152
    hooks = [h for h in cfg.custom_hooks if h['type'] == 'BNCalibrationHook']
    assert len(hooks) == 1 and hooks[0]['num_batches'] == 3
    elastic = osp.join(CFG_DIR, 'elastic', 'mask-rcnn_elastic-x50-32x4d_fpn_short_coco-subset.py')
    cfg = test_det_mm.build_cfg(test_det_mm.parse_args([elastic, str(ckpt), '--scale', '200']))
    resize = [t for t in cfg.test_dataloader.dataset.pipeline if t['type'] == 'Resize']
    assert tuple(resize[0]['scale']) == (320, 200)
    with pytest.raises(ValueError, match='--width .* only the slimmable'):
        test_det_mm.build_cfg(test_det_mm.parse_args([elastic, str(ckpt), '--width', '0.5']))
    with pytest.raises(ValueError, match='--save-ponder-maps .* only the sact'):
        test_det_mm.build_cfg(test_det_mm.parse_args([elastic, str(ckpt), '--save-ponder-maps']))
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        test_det_mm.build_cfg(test_det_mm.parse_args([elastic, str(tmp_path / 'missing.pth')]))


# ------------------------------------------------------------------------------------------ data errors
def test_missing_coco_names_path_and_layout(tmp_path):
    init_default_scope('mmdet')
    from mmdet.registry import DATASETS
    with pytest.raises(FileNotFoundError) as e:
        DATASETS.build(dict(type='CheckedCocoDataset', data_root=str(tmp_path / 'coco'),
                            ann_file='annotations/instances_train2017.json',
                            data_prefix=dict(img='train2017/'), pipeline=[]))
    msg = str(e.value)
    assert str(tmp_path / 'coco' / 'annotations' / 'instances_train2017.json') in msg
    assert 'expected COCO 2017 layout' in msg and 'val2017/' in msg


# ------------------------------------------------------------------------------------------ end to end
def _scalars(work_dir):
    files = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return [json.loads(line) for line in f if line.strip()]


def _val_subset(coco, n, out):
    """Annotation file of the first ``n`` val images of the subset (CocoMetric scores every image of its
    annotation file, so evaluating fewer images needs a matching file)."""
    with open(osp.join(coco, 'annotations', 'instances_val2017.json')) as f:
        d = json.load(f)
    images = sorted(d['images'], key=lambda im: im['id'])[:n]
    ids = {im['id'] for im in images}
    d['images'] = images
    d['annotations'] = [a for a in d['annotations'] if a['image_id'] in ids]
    with open(out, 'w') as f:
        json.dump(d, f)
    return out


@pytest.mark.slow
def test_mask_rcnn_elastic_short_run_on_coco_subset(shared_dir, tmp_path, monkeypatch):
    """Mask R-CNN + Elastic-ResNeXt50-FPN: tens of CPU iterations on the real 80-image COCO subset
    (images <= 256 x 192, 32 sampled RoIs per image), then bbox and segm AP through pycocotools on 8 val images of
    the subset (``DYNSCALE_E2E_ITERS`` / ``DYNSCALE_E2E_VAL_IMAGES`` for a longer run)."""
    coco = osp.join(shared_dir, 'datasets', 'coco')
    if not osp.isdir(coco):
        pytest.skip(f'COCO subset missing: expected {coco} with annotations/, train2017/, val2017/')
    monkeypatch.setenv('DYNSCALE_DATASETS', osp.join(shared_dir, 'datasets'))
    from tools import train_det_mm
    iters = int(os.environ.get('DYNSCALE_E2E_ITERS', 14))
    n_val = int(os.environ.get('DYNSCALE_E2E_VAL_IMAGES', 8))
    ann = _val_subset(coco, n_val, str(tmp_path / 'instances_val_subset.json'))
    work = str(tmp_path / 'work')
    runner = train_det_mm.main([
        osp.join(CFG_DIR, 'elastic', 'mask-rcnn_elastic-x50-32x4d_fpn_short_coco-subset.py'),
        '--work-dir', work,
        '--cfg-options', f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={iters}', 'default_hooks.logger.interval=2',
        'log_processor.window_size=2', 'randomness.seed=0', f'val_dataloader.dataset.ann_file={ann}',
        # half the config's 64 sampled RoIs (the mask head on the positives) and images <= 256 x 192 instead of
        # 320 x 256 (the backbone's backward): the two costs of a CPU iteration
        'model.train_cfg.rcnn.sampler.num=32', 'train_dataloader.dataset.pipeline.2.scale=(256,192)',
        'val_dataloader.dataset.pipeline.1.scale=(256,192)',
        # at most 20 detections (masks pasted and RLE-encoded) per val image instead of 100: most of a CPU val step
        'model.test_cfg.rcnn.max_per_img=20',
        f'val_evaluator.ann_file={ann}'])
    assert runner.iter == iters
    rows = _scalars(work)
    train = [r for r in rows if 'loss' in r]
    assert len(train) == iters // 2
    first = np.mean([r['loss'] for r in train[:2]])
    last = np.mean([r['loss'] for r in train[-2:]])
    val = [r for r in rows if 'coco/bbox_mAP' in r]
    assert val, 'no COCO metrics were logged'
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert key in val[-1] and 0.0 <= val[-1][key] <= 1.0
    print(f'\n[e2e mask-rcnn elastic-x50 fpn, COCO subset] iters={iters} '
          f'time/iter={np.mean([r["time"] for r in train[1:]]):.2f}s loss {first:.3f} -> {last:.3f}; '
          f'{n_val} val images: bbox mAP {val[-1]["coco/bbox_mAP"]:.4f} '
          f'segm mAP {val[-1]["coco/segm_mAP"]:.4f}')
    assert last < first, f'loss did not go down: {first:.3f} -> {last:.3f}'


def test_dla_elastic_mask_rcnn_trains_one_step():
    """Issue 20: the DLA-X60+Elastic Mask R-CNN 1x config builds and trains one CPU step; its backbone holds only
    the projections the network uses (no dead convolution: every parameter gets a gradient)."""
    model, cfg = _build('elastic/mask-rcnn_dla-x60-elastic_fpn_1x_coco.py', backbone=dict(init_cfg=dict()))
    assert cfg.model.backbone.arch == 'dla60x_elastic'
    model.train()
    data = model.data_preprocessor(_batch(n=1), True)
    loss, log = model.parse_losses(model.loss(data['inputs'], data['data_samples']))
    loss.backward()
    assert torch.isfinite(loss) and 'loss_mask' in log
    trainable = [(n, p) for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert trainable  # frozen_stages=1 keeps the stem and stage 1 frozen, the rest trains
    dead = [n for n, p in trainable if p.grad is None]
    assert not dead, f'backbone parameters without a gradient (unused convolutions): {dead[:5]}'


@pytest.mark.slow
def test_torchrun_two_processes_train_on_cpu(shared_dir, tmp_path):
    """Issue 23: ``torchrun --nproc_per_node 2 tools/train_det_mm.py CFG --launcher pytorch`` trains on a machine
    without a GPU (gloo, DDP without device_ids): two iterations of Faster R-CNN on the real COCO subset, with a
    checkpoint written at the end."""
    import subprocess
    import sys
    coco = osp.join(shared_dir, 'datasets', 'coco')
    if not osp.isdir(coco):
        pytest.skip(f'COCO subset missing: expected {coco} with annotations/, train2017/, val2017/')
    base = osp.join(CFG_DIR, 'rsnet', 'faster-rcnn_rs-r50_fpn_short_coco-subset.py')
    cfg = tmp_path / 'two_iters.py'
    cfg.write_text(f'''_base_ = [{base!r}]
train_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False)
# what is under test is the launch (gloo, DDP without device_ids, rank-0 checkpoint), not the scale: two private-BN
# resolutions of shorter side 128 / 96 (longer side <= 160) instead of the smoke run's three up to 256 / 320
model = dict(max_size=160, backbone=dict(resolutions=(128, 96)))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=100)
val_dataloader = None
val_evaluator = None
val_cfg = None
test_dataloader = None
test_evaluator = None
test_cfg = None
param_scheduler = []
default_hooks = dict(logger=dict(type='LoggerHook', interval=1),
                     checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2, max_keep_ckpts=1))
''')
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        'tools/train_det_mm.py', str(cfg), '--launcher', 'pytorch', '--work-dir',
                        str(tmp_path / 'work'), '--data-root', osp.join(shared_dir, 'datasets')], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert 'Iter(train) [2/2]' in out
    assert glob.glob(str(tmp_path / 'work' / 'iter_2.pth'))


# ------------------------------------------------------------------ fine-tune from the released weights (issue 22)
#: the COCO Mask R-CNN 1x config of each released family
FINETUNE = ['elastic/mask-rcnn_elastic-x50-32x4d_fpn_1x_coco.py', 'elastic/mask-rcnn_dla-x60-elastic_fpn_1x_coco.py',
            'mutualnet/mask-rcnn_us-mbv2_sliced-fpn_mutualnet-1x_coco.py', 'rsnet/mask-rcnn_rs-r50_fpn_1x_coco.py',
            'sact/mask-rcnn_sact-r50_fpn_1x_coco.py']


@pytest.mark.slow
@pytest.mark.parametrize('name', FINETUNE, ids=lambda n: n.split('/')[1].split('_')[1])
def test_config_fine_tunes_from_its_released_file_on_the_coco_subset(name, tmp_path, shared_dir):
    """``tools/convert_weights.py <download> checkpoints/<row>.pth --model M`` on a file in the origin's container
    (random weights, from the manifests), then the 1x config as shipped starting from it (strict load, the
    normalisation hook), four iterations on the same two shared COCO images resized to 160 px with 32 sampled RoIs
    per image: zero unmatched keys, a finite loss that falls (learning rate 0.002 without warm-up; MutualNet's
    sandwich of 2 sub-networks at shorter sides 160 / 96 instead of 4 at 600-240; RS-Net at its 240 scale with that
    private BN, not all five)."""
    torch.set_num_threads(1)
    from mm_finetune import convert_release_for, train_and_check

    from plugins.mm.cli import set_data_root
    cfg = Config.fromfile(osp.join(CFG_DIR, name))
    convert_release_for(cfg, tmp_path)
    set_data_root(cfg, osp.join(shared_dir, 'datasets'))
    ds = cfg.train_dataloader.dataset
    while 'dataset' in ds:  # dataset wrappers
        ds = ds.dataset
    ds.indices = 2
    ds.pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                   dict(type='Resize', scale=(160, 160), keep_ratio=True), dict(type='PackDetInputs')]
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False,
                                sampler=dict(type='InfiniteSampler', shuffle=False))
    cfg.train_dataloader.pop('batch_sampler', None)
    cfg.optim_wrapper.optimizer.lr = 0.002  # no warm-up in four iterations: the 1x rate would diverge
    # a light RoI stage for CPU, as in the short configs: 32 sampled RoIs from 100 proposals (the 1x setting's 512
    # from 1000 puts up to 128 positives per image through the mask head, ~75% of the run's time)
    cfg.model.train_cfg.rpn_proposal.max_per_img = 100
    cfg.model.train_cfg.rcnn.sampler.num = 32
    if cfg.model.get('sandwich'):  # MutualNet: two sub-networks at shorter sides 160 / 96 (not 4 at 600 ... 240)
        cfg.model.sandwich.update(num_subnets=2, input_sizes=(160, 96))
    if cfg.model.type == 'RSNetTwoStageDetector':  # RS-Net: the smallest scale only (not all five up to 800 px)
        cfg.model.bn_resolutions = [240]
    train_and_check(cfg, tmp_path / 'work', 'DetVisualizationHook')
