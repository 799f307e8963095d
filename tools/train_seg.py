"""Train a dynscale segmentation model with MMSegmentation (thin wrapper over mmengine's Runner).

    python tools/train_seg.py seg_configs/deeplabv3_elastic-resnext50-d16-mg124_1xb8-1k_voc12subset-321x321.py
    torchrun --nproc_per_node=8 tools/train_seg.py CONFIG --launcher pytorch
    srun -p PART --gres=gpu:8 --ntasks=8 python -u tools/train_seg.py CONFIG --launcher slurm

Options: --work-dir, --resume [CKPT] (latest checkpoint of the work dir, or CKPT), --amp (mixed precision,
GPU only), --auto-scale-lr, --cfg-options key=value ..., --data-root (replaces ../shared/datasets; or
$DYNSCALE_DATASETS).  The plumbing is shared with the other OpenMMLab tools (:mod:`plugins.mm.cli`).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plugins.mm import cli  # noqa: E402


def parse_args(argv=None):
    """Command-line arguments (``argv`` None: ``sys.argv``)."""
    parser = argparse.ArgumentParser(description='Train a dynscale segmentor (MMSeg)')
    cli.add_train_args(cli.add_common_args(parser, 'config file (seg_configs/...)'))
    return parser.parse_args(argv)


def main(argv=None):
    """Train; returns the Runner.  Raises ValueError for ``--amp`` with a non-default optimiser wrapper."""
    return cli.train(parse_args(argv))


if __name__ == '__main__':
    from backbones.errors import run_main
    run_main(main)
