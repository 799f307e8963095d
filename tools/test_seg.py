"""Evaluate a dynscale segmentation checkpoint with MMSegmentation (thin wrapper over mmengine's Runner).

    python tools/test_seg.py CONFIG CHECKPOINT [--width 0.5] [--resolution 224] [--show-dir DIR] [--save-ponder-maps]
    torchrun --nproc_per_node=8 tools/test_seg.py CONFIG CHECKPOINT --launcher pytorch

--width / --resolution set model.test_cfg.width / .resolution (slimmable: evaluate that sub-network after
BN calibration by the config's BNCalibrationHook; RS-Net: test at that resolution with its BN).  Either on a
backbone without that switch (``backbones.capabilities``) exits with an error before anything is built or read.
SACT configs save ponder-cost maps to <work_dir>/ponder_maps (``--save-ponder-maps DIR`` elsewhere; refused for
other families), drawn over each image with a colour bar.  Metrics are printed and logged.  The plumbing is
shared with the other OpenMMLab tools (:mod:`plugins.mm.cli`).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plugins.mm import cli  # noqa: E402


def parse_args(argv=None):
    """Command-line arguments (``argv`` None: ``sys.argv``)."""
    parser = argparse.ArgumentParser(description='Test a dynscale segmentor (MMSeg)')
    cli.add_common_args(parser, 'config file (seg_configs/...)', checkpoint=True)
    parser.add_argument('--width', type=float, default=None,
                        help='slimmable models: width multiplier to test')
    parser.add_argument('--resolution', type=int, default=None,
                        help='RS-Net: test resolution (a trained one; see --untrained-resolution); '
                             'slimmable: BN/input resolution')
    parser.add_argument('--untrained-resolution', choices=['error', 'nearest'], default=None,
                        help="RS-Net: a --resolution without a private BN is an error (default); 'nearest' "
                             "evaluates it with the nearest trained resolution's private BN (logged)")
    parser.add_argument('--show-dir', default=None, help='save painted predictions to this folder')
    parser.add_argument('--save-ponder-maps', nargs='?', const='ponder_maps', default=None, metavar='DIR',
                        help='SACT: save each image\'s ponder-cost map (.npy) and its drawing over the image (.png) '
                             'to DIR (relative: under --work-dir; default ponder_maps)')
    return parser.parse_args(argv)


def main(argv=None):
    """Load the checkpoint into the config's model, run the test loop, print and return the metrics dict."""
    args = parse_args(argv)
    cfg = cli.load_config(args)
    if args.width is not None:
        cfg.model.test_cfg.width = args.width
    if args.resolution is not None:
        cfg.model.test_cfg.resolution = args.resolution
    if args.untrained_resolution is not None:
        cfg.model.test_cfg.untrained_resolution = args.untrained_resolution
    if args.show_dir:
        vis = cfg.default_hooks.visualization
        vis.draw = True
        vis.interval = 1
        cfg.visualizer.save_dir = args.show_dir
    if args.save_ponder_maps is not None:  # one PonderMapSaveHook, writing where the flag says
        cfg.custom_hooks = [h for h in cfg.get('custom_hooks', []) if h.get('type') != 'PonderMapSaveHook'] + [
            dict(type='PonderMapSaveHook', out_dir=args.save_ponder_maps)]
    flags = {'model.test_cfg.width': '--width', 'model.test_cfg.resolution': '--resolution',
             'model.test_cfg.untrained_resolution': '--untrained-resolution',
             "custom_hooks type='PonderMapSaveHook'": '--save-ponder-maps'}
    runner = cli.build_runner(cfg, flags, checkpoint=args.checkpoint)
    cli.check_checkpoint(runner, args.checkpoint, args.non_strict)
    metrics = runner.test()
    print(metrics)
    return metrics


if __name__ == '__main__':
    from backbones.errors import run_main
    run_main(main)
