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
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from backbones.capabilities import check_options  # noqa: E402
from plugins.mm import cli  # noqa: E402
from plugins.mm.options import backbone_arch  # noqa: E402

#: detectors that rescale their input to ``test_resolution`` themselves
_SCALED = ('SlimmableTwoStageDetector', 'RSNetTwoStageDetector', 'DynscaleTwoStageDetector')
#: flag -> the backbone capability it needs (backbones.capabilities)
_FLAG_CAPABILITY = {'width': 'width', 'calib_batches': 'calibration', 'save_ponder_maps': 'ponder_cost'}


def parse_args(argv=None):
    """Command line: MMDetection ``tools/test.py`` flags plus ``--width``, ``--scale``,
    ``--calib-batches``, ``--save-ponder-maps`` and ``--data-root``."""
    p = argparse.ArgumentParser(description='Evaluate an MMDetection detector with a dynscale backbone')
    cli.add_common_args(p, 'config file (det_configs/mmdet/<method>/*.py)', checkpoint=True)
    p.add_argument('--out', help='also dump the raw predictions to this .pkl file')
    p.add_argument('--width', type=float, help='slimmable detectors: width multiplier to evaluate')
    p.add_argument('--scale', type=int, help='shorter side (pixels) to evaluate at')
    p.add_argument('--calib-batches', type=int,
                   help='slimmable detectors: training batches for the BN re-calibration '
                   '(default: the config\'s)')
    p.add_argument('--save-ponder-maps', nargs='?', const='ponder_maps',
                   help='SACT detectors: save ponder-cost maps (.npy, .png) into this folder '
                   '(default <work_dir>/ponder_maps)')
    p.add_argument('--amp', action='store_true', help='fp16 inference (TestLoop fp16)')
    return p.parse_args(argv)


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
        backbones.capabilities.OptionNotApplicable: ``--width``/``--calib-batches`` on a non-slimmable backbone,
            ``--save-ponder-maps`` on a non-SACT backbone.
        ValueError: a ``--scale`` for a config without a ``Resize`` in its test pipeline, or
            ``--out`` without ``.pkl``.
    """
    cfg = cli.load_config(args)
    mtype = cfg.model.get('type')
    # options a backbone family does not have fail here, before anything is built or read (one table:
    # backbones.capabilities)
    given = {f'--{k.replace("_", "-")}': cap for k, cap in _FLAG_CAPABILITY.items() if getattr(args, k) is not None}
    arch = backbone_arch(cfg)
    caps = check_options(arch, given, where='tools/test_det_mm.py', label=arch or 'this backbone')
    slim = 'calibration' in caps
    if args.width is not None:
        cfg.model.test_width = args.width
    if args.scale is not None:
        if mtype in _SCALED and 'resolution' in caps:
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
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [
            dict(type='PonderMapSaveHook', out_dir=args.save_ponder_maps)]
    if args.amp:
        cfg.test_cfg = dict(cfg.get('test_cfg', None) or dict(type='TestLoop'), fp16=True)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must be a .pkl file, got {args.out}')
    return cfg


def main(argv=None):
    """Build the runner and evaluate; returns the metrics dict."""
    args = parse_args(argv)
    runner = cli.build_runner(build_cfg(args), {'model.test_width': '--width'}, checkpoint=args.checkpoint)
    cli.check_checkpoint(runner, args.checkpoint, args.non_strict)
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    return runner.test()


if __name__ == '__main__':
    from backbones.errors import run_main
    run_main(main)
