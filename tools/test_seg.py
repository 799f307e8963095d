"""Evaluate a dynscale segmentation checkpoint with MMSegmentation (thin wrapper over mmengine's Runner).

    python tools/test_seg.py CONFIG CHECKPOINT [--width 0.5] [--resolution 224] [--show-dir DIR]
    torchrun --nproc_per_node=8 tools/test_seg.py CONFIG CHECKPOINT --launcher pytorch

--width / --resolution set model.test_cfg.width / .resolution (slimmable: evaluate that sub-network after
BN calibration by the config's BNCalibrationHook; RS-Net: test at that resolution with its BN).
SACT configs save ponder-cost maps to <work_dir>/ponder_maps.  Metrics are printed and logged.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plugins.mm.cli import add_common_args, load_config  # noqa: E402

# mmengine 0.10 checkpoints hold Python objects (message hub history, numpy arrays) that torch >= 2.6
# refuses to unpickle with its default weights_only=True, and mmengine calls torch.load without the
# argument: this documented switch restores the old default for --resume / load_from / testing.
# Load only checkpoints you trust.
os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')


def parse_args(argv=None):
    """Command-line arguments (``argv`` None: ``sys.argv``)."""
    parser = argparse.ArgumentParser(description='Test a dynscale segmentor (MMSeg)')
    parser = add_common_args(parser)
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--width', type=float, default=None,
                        help='slimmable models: width multiplier to test')
    parser.add_argument('--resolution', type=int, default=None,
                        help='RS-Net: test resolution (one of the trained ones); '
                             'slimmable: BN/input resolution')
    parser.add_argument('--show-dir', default=None, help='save painted predictions to this folder')
    return parser.parse_args(argv)


def main(argv=None):
    """Load the checkpoint into the config's model, run the test loop, print and return the metrics dict."""
    args = parse_args(argv)
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.width is not None:
        cfg.model.test_cfg.width = args.width
    if args.resolution is not None:
        cfg.model.test_cfg.resolution = args.resolution
    if args.show_dir:
        vis = cfg.default_hooks.visualization
        vis.draw = True
        vis.interval = 1
        cfg.visualizer.save_dir = args.show_dir
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    metrics = runner.test()
    print(metrics)
    return metrics


if __name__ == '__main__':
    main()
