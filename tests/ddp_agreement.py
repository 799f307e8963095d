"""Two CPU processes (gloo) run each frontend's policy and BN calibration; each writes what it drew and what it
calibrated, so that tests/test_training_core.py can assert that both ranks agree.

Usage: ``python tests/ddp_agreement.py FRONTEND[,FRONTEND...] OUT_DIR`` with FRONTEND in core, pretrain, mmseg,
mmdet, detectron2: the same two processes run the frontends one after the other (each writes
``OUT_DIR/FRONTEND.rank{0,1}.pt``; a frontend that fails writes ``OUT_DIR/FRONTEND.error`` and the run stops: a
rank cannot go on alone past a collective), so that the suite starts two processes once instead of once per
frontend.  Each rank seeds torch differently before the policy is built (a drawn seed must be agreed over the
ranks) and calibrates on different images (the statistics must be averaged over the ranks).
"""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))
sys.path.insert(0, os.path.join(ROOT, 'tools'))


def _images(rank, n=2, size=64):
    g = torch.Generator().manual_seed(1000 + rank)
    return [torch.randn(n, 3, size, size, generator=g) for _ in range(2)]


def _stats(module):
    from backbones.slimmable.ops import SlimmableBatchNorm2d
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, SlimmableBatchNorm2d):
            for key, s in m.private.items():
                out[f'{name}.{key}.mean'] = s.running_mean.clone()
                out[f'{name}.{key}.var'] = s.running_var.clone()
        elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            out[f'{name}.mean'] = m.running_mean.clone()
    return out


def run_core(rank):
    import backbones
    from backbones import training
    torch.manual_seed(0)
    model = backbones.create('us_mobilenet_v1', num_classes=4).eval()
    torch.manual_seed(100 + rank)  # a seed drawn now must still be the same on both ranks
    policy = training.SandwichPolicy(model.width_range, input_sizes=(64, 48, 32), seed=None)
    training.calibrate(model, _images(rank), width=0.5, bn_resolution=48)
    return [policy.subnets(s) for s in range(5)], _stats(model)


def run_pretrain(rank):
    import pretrain
    from pretrain_lib import evaluation as pev
    from pretrain_lib import methods as pm
    from pretrain_lib import model as pmodel
    from pretrain_lib.dist import DistInfo
    root = os.environ['DDP_TINY']
    args = pretrain.parse_args(['--data-path', root, '--model', 'us_mobilenet_v1', '--method', 'mutualnet',
                                '--input-sizes', '40', '32', '--train-crop-size', '40', '--val-resize-size', '36',
                                '--val-crop-size', '32', '--calib-batches', '2', '--eval-widths', '1.0', '0.5',
                                '--no-tensorboard'], world_size=2)
    torch.manual_seed(0)
    model = pmodel.build_model(args, 4)
    torch.manual_seed(100 + rank)
    method = pm.build_method(args, model)
    images = [(x[:, :, :32, :32], torch.zeros(x.shape[0], dtype=torch.long)) for x in _images(rank)]
    info = DistInfo(rank, 2, 0, torch.device('cpu'))
    stats = {}

    def log(msg):
        pass
    orig = pm.training.calibrate

    def keep_calibrated(m, *a, **k):  # the copy final_evaluation calibrates and evaluates
        stats['model'] = m
        return orig(m, *a, **k)
    pm.training.calibrate = keep_calibrated
    try:
        pev.final_evaluation(method, model, images, images, info, lambda: torch.autocast('cpu', enabled=False),
                             args, log)
    finally:
        pm.training.calibrate = orig
    return [method.policy.subnets(s) for s in range(5)], _stats(stats['model'])


def run_mmseg(rank):
    from mmengine.registry import DefaultScope

    import plugins.mm  # noqa: F401
    from plugins.mm.hooks import BNCalibrationHook
    DefaultScope.get_instance(f'ddp-mmseg-{rank}', scope_name='mmseg')
    from mmseg.registry import MODELS
    from test_mm_seg import _pre, _samples
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='SlimmableEncoderDecoder', data_preprocessor=_pre(), num_subnets=3,
        backbone=dict(type='SlimmableNet', arch='us_mobilenet_v2', output_stride=16),
        decode_head=dict(type='DeepLabV3Head', in_channels=320, in_index=3, channels=16, dilations=(1, 2),
                         num_classes=3, input_sliced=True, norm_cfg=dict(type='SyncBN')),
        train_cfg=dict(input_sizes=(64, 48), max_input_size=64),
        test_cfg=dict(mode='whole', width=0.6, resolution=48)))
    torch.manual_seed(100 + rank)
    model.policy = type(model.policy)(model.backbone.model.width_range, 3, (64, 48), 64, seed=None)
    g = torch.Generator().manual_seed(1000 + rank)
    # rank 1 holds one batch fewer: the SyncBN head must calibrate each rank's batches on their own
    data = [dict(inputs=[torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8, generator=g) for _ in range(2)],
                 data_samples=_samples(2, 64, 64, 3)) for _ in range(2 - rank)]
    runner = type('R', (), {'model': model, 'cfg': None, 'seed': 0})()
    BNCalibrationHook(num_batches=2, dataloader=data).calibrate(runner)
    return [model.policy.subnets(s) for s in range(5)], _stats(model)


def run_mmdet(rank):
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    import plugins.mm  # noqa: F401
    DefaultScope.get_instance(f'ddp-mmdet-{rank}', scope_name='mmdet')
    from mmdet.registry import MODELS
    from test_mm_det import _batch

    from plugins.mm.hooks import BNCalibrationHook
    cfg = Config.fromfile(os.path.join(ROOT, 'det_configs', 'mmdet', 'mutualnet',
                                       'mask-rcnn_us-mbv2_sliced-fpn_mutualnet-short_coco-subset.py'))
    cfg.model.sandwich = dict(num_subnets=3, input_sizes=(256, 208, 152))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    torch.manual_seed(100 + rank)
    model.policy = type(model.policy)(model.backbone.model.width_range, 3, (256, 208, 152), 256, distill=None,
                                      student_gt_weight=1.0, seed=None)
    data = [_batch(n=1, seed=10 * rank + s) for s in range(2)]
    runner = type('R', (), {'model': model, 'cfg': None, 'seed': 0})()
    BNCalibrationHook(num_batches=2, width=0.6, resolution=152, dataloader=data).calibrate(runner)
    return [model.policy.subnets(s) for s in range(5)], _stats(model.backbone)


def run_detectron2(rank):
    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode
    from PIL import Image

    from plugins.detectron2 import DynscaleTrainer, build_policy, calibrate, find_dynscale_backbone, get_dynscale_cfg
    folder = os.path.join(os.environ['DDP_OUT'], f'img{rank}')
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(rank)
    dicts = []
    for i in range(4):
        path = os.path.join(folder, f'{i}.png')
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(path)
        dicts.append({'file_name': path, 'image_id': i, 'height': 64, 'width': 80, 'annotations': [
            {'bbox': [5, 5, 30, 30], 'bbox_mode': BoxMode.XYWH_ABS, 'category_id': 0, 'iscrowd': 0}]})
    DatasetCatalog.register('ddp_tiny', lambda: dicts)
    MetadataCatalog.get('ddp_tiny').set(thing_classes=['a'])
    cfg = get_dynscale_cfg(os.path.join(ROOT, 'det_configs', 'detectron2', 'quick_schedules',
                                        'mask_rcnn_us_vgg16_bn_FPN_quick.yaml'),
                           ['MODEL.DEVICE', 'cpu', 'MODEL.WEIGHTS', '', 'MODEL.DYNSCALE.NAME', 'us_mobilenet_v2',
                            'MODEL.DYNSCALE.WIDTH_RANGE', '[0.35, 1.0]', 'MODEL.ROI_HEADS.NUM_CLASSES', '1',
                            'DATASETS.TRAIN', '("ddp_tiny",)', 'SOLVER.IMS_PER_BATCH', '2',
                            'MODEL.DYNSCALE.CALIBRATION.NUM_BATCHES', '2', 'MODEL.DYNSCALE.NORM', 'BN',
                            'DATALOADER.NUM_WORKERS', '0', 'SEED', str(rank)])
    torch.manual_seed(0)
    model = DynscaleTrainer.build_model(cfg)
    torch.manual_seed(100 + rank)
    bb = find_dynscale_backbone(model)
    policy = build_policy(cfg, bb)
    calibrate(cfg, model, 0.5, 48)
    return [policy.subnets(s) for s in range(5)], _stats(bb.net)


def worker(rank, frontends, out):
    import traceback
    dist.init_process_group('gloo', init_method=f'file://{out}/rdzv', rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        for frontend in frontends:
            try:
                subnets, stats = globals()[f'run_{frontend}'](rank)
            except Exception:  # the test of this frontend fails with the traceback
                with open(os.path.join(out, f'{frontend}.error'), 'a') as f:
                    f.write(f'rank {rank}:\n{traceback.format_exc()}')
                raise
            steps = [[dict(s.__dict__) for s in step] for step in subnets]
            torch.save({'subnets': steps, 'stats': stats}, os.path.join(out, f'{frontend}.rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


if __name__ == '__main__':
    frontends, out = sys.argv[1].split(','), sys.argv[2]
    os.environ['DDP_OUT'] = out
    mp.spawn(worker, args=(frontends, out), nprocs=2, join=True)
    print('DDP_AGREEMENT_DONE', *frontends)
