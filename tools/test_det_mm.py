"""Evaluate an MMDetection 3.x detector with a dynscale backbone (thin wrapper over mmengine's Runner).

Examples::

    python tools/test_det_mm.py <config> <checkpoint>                       # COCO bbox (+ segm) AP
    # a MutualNet / US-Net sub-network: width 0.5 at shorter side 480, BN re-calibrated first
    python tools/test_det_mm.py \\
        det_configs/mmdet/mutualnet/mask-rcnn_us-vgg16-bn_sliced-fpn_mutualnet-1x_coco.py <checkpoint> \\
        --width 0.5 --scale 480 --calib-batches 50
    # RS-Net at one of its trained scales (that scale's private BN)
    python tools/test_det_mm.py det_configs/mmdet/rsnet/faster-rcnn_rs-r50_fpn_1x_coco.py <checkpoint> \\
        --scale 480
    # SACT: also save every image's ponder-cost map as <work_dir>/ponder_maps/<img_id>.npy
    python tools/test_det_mm.py det_configs/mmdet/sact/faster-rcnn_sact-r101_fpn_1x_coco.py <ckpt> \\
        --save-ponder-maps
    torchrun --nproc_per_node=8 tools/test_det_mm.py <config> <checkpoint> --launcher pytorch

``--scale S`` means MMDet's keep-ratio resize to shorter side S (longer side capped as in the
config).  For the slimmable and RS-Net detectors the detector rescales its input (``test_resolution``);
for any other detector the test pipeline's ``Resize`` is changed.
"""
import argparse
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# mmengine 0.10 checkpoints hold Python objects (message hub, config) that torch >= 2.6 refuses to unpickle
# with its default weights_only=True; mmengine calls torch.load without the argument, so this documented
# switch restores the old default for --resume / load_from / evaluation.  Load only checkpoints you trust.
os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')

_SCALED = ('SlimmableTwoStageDetector', 'RSNetTwoStageDetector')


def parse_args(argv=None):
    """Command line: MMDetection ``tools/test.py`` flags plus ``--width``, ``--scale``,
    ``--calib-batches`` and ``--save-ponder-maps``."""
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description='Evaluate an MMDetection detector with a dynscale backbone')
    p.add_argument('config', help='config file (det_configs/mmdet/<method>/*.py)')
    p.add_argument('checkpoint', help='detector checkpoint')
    p.add_argument('--work-dir', help='folder for the evaluation log (default work_dirs/<config name>)')
    p.add_argument('--out', help='also dump the raw predictions to this .pkl file')
    p.add_argument('--width', type=float, help='slimmable detectors: width multiplier to evaluate')
    p.add_argument('--scale', type=int, help='shorter side (pixels) to evaluate at')
    p.add_argument('--calib-batches', type=int,
                   help='slimmable detectors: training batches for the BN re-calibration '
                   '(default: the config\'s)')
    p.add_argument('--save-ponder-maps', nargs='?', const='ponder_maps',
                   help='SACT detectors: save ponder-cost maps (.npy) into this folder '
                   '(default <work_dir>/ponder_maps)')
    p.add_argument('--amp', action='store_true', help='fp16 inference (TestLoop fp16)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config entries, key=value (lists as key="[a,b]")')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                   help='job launcher')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _resize_transforms(pipeline):
    for t in pipeline:
        if t.get('type') == 'Resize':
            yield t
        for key in ('transforms',):
            if isinstance(t.get(key), list):
                yield from _resize_transforms(t[key])


def build_cfg(args):
    """Load the config and apply the evaluation options (returns an ``mmengine.Config``).

    Raises:
        FileNotFoundError: config or checkpoint missing.
        ValueError: ``--width``/``--calib-batches`` on a non-slimmable detector, ``--save-ponder-maps`` on a
            non-SACT detector, a ``--scale`` for a config without a ``Resize`` in its test pipeline, or
            ``--out`` without ``.pkl``.
    """
    from mmengine.config import Config
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{what} not found: {path}')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    mtype = cfg.model.get('type')
    slim = mtype == 'SlimmableTwoStageDetector'
    if (args.width is not None or args.calib_batches is not None) and not slim:
        raise ValueError('--width/--calib-batches need a SlimmableTwoStageDetector config, '
                         f'this one builds {mtype}')
    if args.width is not None:
        cfg.model.test_width = args.width
    if args.scale is not None:
        if mtype in _SCALED:
            cfg.model.test_resolution = args.scale
        else:
            resizes = list(_resize_transforms(cfg.test_dataloader.dataset.pipeline))
            if not resizes:
                raise ValueError('--scale: the test pipeline has no Resize transform to change')
            for t in resizes:
                t['scale'] = (max(t['scale']), args.scale)
    if slim:
        hooks = [dict(h) for h in cfg.get('custom_hooks', [])]
        calib = [h for h in hooks if h.get('type') == 'BNCalibrationHook']
        if not calib:
            calib = [dict(type='BNCalibrationHook')]
            hooks += calib
        if args.calib_batches is not None:
            calib[0]['num_batches'] = args.calib_batches
        cfg.custom_hooks = hooks
    if args.save_ponder_maps is not None:
        if mtype != 'SACTTwoStageDetector':
            raise ValueError('--save-ponder-maps needs an SACTTwoStageDetector config, '
                             f'this one builds {mtype}')
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='DetPonderMapSaveHook', out_dir=args.save_ponder_maps)]
    if args.amp:
        cfg.test_cfg = dict(cfg.get('test_cfg', None) or dict(type='TestLoop'), fp16=True)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must be a .pkl file, got {args.out}')
    return cfg


def main(argv=None):
    """Build the runner and evaluate; returns the metrics dict."""
    args = parse_args(argv)
    cfg = build_cfg(args)
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    return runner.test()


if __name__ == '__main__':
    main()
