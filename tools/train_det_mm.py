"""Train an MMDetection 3.x detector with a dynscale backbone (thin wrapper over mmengine's Runner).

Examples::

    # single process (CPU or one GPU); datasets under $DYNSCALE_DATASETS (default ../shared/datasets)
    python tools/train_det_mm.py det_configs/mmdet/elastic/mask-rcnn_elastic-x50-32x4d_fpn_short_coco-subset.py \\
        --work-dir work_dirs/demo
    # 8 GPUs on one machine (torchrun sets LOCAL_RANK etc.)
    torchrun --nproc_per_node=8 tools/train_det_mm.py <config> --launcher pytorch
    # slurm
    srun -p <partition> --ntasks=8 --gres=gpu:8 python -u tools/train_det_mm.py <config> --launcher slurm
    # resume the latest checkpoint of the work dir, mixed precision, overrides
    python tools/train_det_mm.py <config> --resume --amp --cfg-options train_dataloader.batch_size=4

Every config under ``det_configs/mmdet/`` imports ``plugins.mm`` through ``custom_imports``.  Same flags as
MMDetection's ``tools/train.py`` plus ``--data-root``; the plumbing is shared with the MMSeg tools
(:mod:`plugins.mm.cli`).
"""
import argparse
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

from plugins.mm import cli  # noqa: E402


def parse_args(argv=None):
    """Command line (MMDetection ``tools/train.py`` flags, ``--data-root``)."""
    p = argparse.ArgumentParser(description='Train an MMDetection detector with a dynscale backbone')
    cli.add_train_args(cli.add_common_args(p, 'config file (det_configs/mmdet/<method>/*.py)'))
    return p.parse_args(argv)


def build_cfg(args):
    """The config with the command-line options applied (an ``mmengine.Config``).

    Raises:
        FileNotFoundError: the config file does not exist.
        ValueError: ``--auto-scale-lr`` on a config without ``auto_scale_lr.base_batch_size``; ``--amp`` with an
            optimiser wrapper other than ``OptimWrapper``.
    """
    return cli.apply_train_args(cli.load_config(args), args)


def main(argv=None):
    """Build the runner from the config and train; returns the runner."""
    return cli.train(parse_args(argv))


if __name__ == '__main__':
    from backbones.errors import run_main
    run_main(main)
