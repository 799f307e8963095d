"""Train an MMDetection 3.x detector with a dynscale backbone (thin wrapper over mmengine's Runner).

Examples::

    # single process (CPU or one GPU)
    DYNSCALE_DATA=../shared/datasets python tools/train_det_mm.py \\
        det_configs/mmdet/elastic/mask-rcnn_elastic-x50-32x4d_fpn_short_coco-subset.py \\
        --work-dir work_dirs/demo
    # 8 GPUs on one machine (torchrun sets LOCAL_RANK etc.)
    torchrun --nproc_per_node=8 tools/train_det_mm.py <config> --launcher pytorch
    # slurm
    srun -p <partition> --ntasks=8 --gres=gpu:8 python -u tools/train_det_mm.py <config> --launcher slurm
    # resume the latest checkpoint of the work dir, mixed precision, overrides
    python tools/train_det_mm.py <config> --resume --amp --cfg-options train_dataloader.batch_size=4

Every config under ``det_configs/mmdet/`` imports ``plugins.mm`` through ``custom_imports``; datasets
are found under ``$DYNSCALE_DATA`` (see the configs' ``_base_/datasets``).  This mirrors MMDetection's
``tools/train.py`` (same flags) so the usual mmengine logging, checkpoints and progress apply.
"""
import argparse
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

# mmengine 0.10 checkpoints hold Python objects (message hub, config) that torch >= 2.6 refuses to unpickle
# with its default weights_only=True; mmengine calls torch.load without the argument, so this documented
# switch restores the old default for --resume / load_from / evaluation.  Load only checkpoints you trust.
os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')


def parse_args(argv=None):
    """Command line (MMDetection ``tools/train.py`` flags)."""
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description='Train an MMDetection detector with a dynscale backbone')
    p.add_argument('config', help='config file (det_configs/mmdet/<method>/*.py)')
    p.add_argument('--work-dir', help='folder for logs and checkpoints (default work_dirs/<config name>)')
    p.add_argument('--amp', action='store_true',
                   help='automatic mixed precision (AmpOptimWrapper, dynamic loss scale)')
    p.add_argument('--auto-scale-lr', action='store_true',
                   help='scale the lr linearly with the total batch size (auto_scale_lr.base_batch_size)')
    p.add_argument('--resume', nargs='?', type=str, const='auto',
                   help='resume from this checkpoint, or (no value) from the latest one in the work dir')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config entries, key=value (lists as key="[a,b]")')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                   help='job launcher: none (single process), pytorch (torchrun), slurm (srun), mpi')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    """Load the config and apply the command-line options (returns an ``mmengine.Config``).

    Raises:
        FileNotFoundError: the config file does not exist.
        RuntimeError: ``--auto-scale-lr`` on a config without ``auto_scale_lr.base_batch_size``.
    """
    from mmengine.config import Config
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config not found: {args.config} (configs live in det_configs/mmdet/)')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if not cfg.get('auto_scale_lr', {}).get('base_batch_size'):
            raise RuntimeError('--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    """Build the runner from the config and train; returns the runner."""
    args = parse_args(argv)
    cfg = build_cfg(args)
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()
    return runner


if __name__ == '__main__':
    main()
