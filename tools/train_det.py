#!/usr/bin/env python
"""Train / evaluate a detectron2 detector with a dynscale backbone (detectron2's ``tools/train_net.py``).

Examples::

    # CPU smoke run on the 80-image COCO subset (datasets root: $DYNSCALE_DATASETS, default ../shared/datasets
    # beside the repository; detectron2's own DETECTRON2_DATASETS wins when set)
    python tools/train_det.py \\
        --config-file det_configs/detectron2/quick_schedules/mask_rcnn_resnext50_elastic_FPN_quick.yaml
    # 8 GPUs, then 2 machines x 8 GPUs
    python tools/train_det.py --num-gpus 8 \\
        --config-file det_configs/detectron2/mask_rcnn_resnext50_elastic_FPN_1x.yaml
    python tools/train_det.py --num-gpus 8 --num-machines 2 --machine-rank 0 --dist-url tcp://host:port \\
        --config-file ...
    # evaluate a checkpoint at every MODEL.DYNSCALE.EVAL_POINTS (width, scale)
    python tools/train_det.py --eval-only --config-file ... MODEL.WEIGHTS output/model_final.pth

Options are detectron2's ``default_argument_parser`` (``--resume``, ``--eval-only``, ``--num-gpus``,
``--num-machines``, ``--machine-rank``, ``--dist-url``, trailing ``KEY VALUE`` overrides).
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plugins._compat import export_detectron2_datasets  # noqa: E402

export_detectron2_datasets()  # before detectron2 registers its builtin datasets

from detectron2.engine import default_argument_parser, launch  # noqa: E402

from plugins.detectron2 import DynscaleCheckpointer, DynscaleTrainer, setup  # noqa: E402


def parser():
    """detectron2's ``default_argument_parser`` plus ``--save-ponder-maps [DIR]`` (SACT: sets
    ``MODEL.DYNSCALE.SAVE_PONDER_MAPS``, default folder ``ponder_maps`` under ``OUTPUT_DIR``)."""
    p = default_argument_parser()
    p.add_argument('--save-ponder-maps', nargs='?', const='ponder_maps', default=None, metavar='DIR',
                   help='SACT evaluation: save each image\'s ponder-cost map (.npy) and its drawing (.png) to DIR '
                        'under OUTPUT_DIR (MODEL.DYNSCALE.SAVE_PONDER_MAPS)')
    p.add_argument('--custom-imports', nargs='+', default=None, metavar='MODULE',
                   help='import these modules first (in every process): a training method registered with '
                        'backbones.training.register_policy (MODEL.DYNSCALE.POLICY.NAME) or a backbone with '
                        'backbones.register_model; their folder on PYTHONPATH')
    return p


def main(args):
    """Train (or, with ``--eval-only``, evaluate) one config; returns detectron2's result dict."""
    from backbones.custom_imports import import_custom_modules
    import_custom_modules(getattr(args, 'custom_imports', None))  # before the config is checked and built
    if getattr(args, 'save_ponder_maps', None):
        args.opts = list(args.opts) + ['MODEL.DYNSCALE.SAVE_PONDER_MAPS', args.save_ponder_maps]
    cfg = setup(args)
    if args.eval_only:
        model = DynscaleTrainer.build_model(cfg)
        non_strict = cfg.MODEL.DYNSCALE.NON_STRICT
        if non_strict:
            logging.getLogger('plugins').warning('MODEL.DYNSCALE.NON_STRICT: MODEL.WEIGHTS is evaluated without '
                                                 'checking that it fits the whole detector')
        DynscaleCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, strict=cfg.MODEL.DYNSCALE.STRICT_BACKBONE_LOAD, whole_model=not non_strict
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return DynscaleTrainer.test(cfg, model)
    trainer = DynscaleTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == '__main__':
    from backbones.errors import run_main
    args = parser().parse_args()
    run_main(lambda: launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                            dist_url=args.dist_url, args=(args,)))
