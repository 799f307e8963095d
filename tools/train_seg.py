"""Train a dynscale segmentation model with MMSegmentation (thin wrapper over mmengine's Runner).

    python tools/train_seg.py seg_configs/deeplabv3_elastic-resnext50-d16-mg124_1xb8-1k_voc12subset-321x321.py
    torchrun --nproc_per_node=8 tools/train_seg.py CONFIG --launcher pytorch
    srun -p PART --gres=gpu:8 --ntasks=8 python -u tools/train_seg.py CONFIG --launcher slurm

Options: --work-dir, --resume [CKPT] (latest checkpoint of the work dir, or CKPT), --amp (mixed precision,
GPU only), --cfg-options key=value ..., --data-root (replaces ../shared/datasets).
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
    parser = add_common_args(argparse.ArgumentParser(description='Train a dynscale segmentor (MMSeg)'))
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from the latest checkpoint in the work dir, or from the given one')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (AmpOptimWrapper, GPU)')
    return parser.parse_args(argv)


def main(argv=None):
    """Build the Runner from the config and train; returns the Runner (its message hub holds the
    logged scalars).  Raises ValueError for ``--amp`` with a non-default optimiser wrapper."""
    args = parse_args(argv)
    cfg = load_config(args)
    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
            raise ValueError(f'--amp needs optim_wrapper.type=OptimWrapper, '
                             f'the config has {cfg.optim_wrapper.type}')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()
    return runner


if __name__ == '__main__':
    main()
