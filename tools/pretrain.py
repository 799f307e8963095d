#!/usr/bin/env python
"""ImageNet pretraining for every dynscale family with its paper's method.

Single process (CPU or one GPU)::

    python tools/pretrain.py --data-path /data/imagenet --recipe mutualnet-mobilenetv2 --output-dir runs/mn2

Several GPUs / machines (DDP; ``--batch-size`` is per process, total = processes x batch x accum)::

    torchrun --nproc_per_node=8 tools/pretrain.py --data-path /data/imagenet --recipe rsnet-resnet50 \\
        --output-dir runs/rs50 --sync-bn

On a CPU shared with other jobs, set ``OMP_NUM_THREADS=1`` (``torchrun`` does so for several processes):
spinning OpenMP threads made a MobileNet step about 10x slower in our measurements.

``--recipe NAME`` loads a paper's settings (``--list-recipes``); any flag given explicitly overrides it.

Released weights (MODEL_ZOO.md)::

    # the paper's ImageNet number: each origin's own test protocol per width x resolution
    python tools/pretrain.py --evaluate --pretrained us_mobilenet_v2_calibrated.pt.zip --data-path /data/imagenet
    # transfer learning (MutualNet Sec. 4.2): new classifier, the method's own rule over widths and resolutions
    python tools/pretrain.py --pretrained checkpoints/us_mobilenet_v2_mutualnet_in1k.pth --data-path DATASET \
        --num-classes K --epochs 30 --output-dir runs/transfer
The run directory receives ``args.json`` (resolved arguments), ``log.txt``, ``train_log.csv``,
``summary.csv``, ``tb/`` (TensorBoard), ``last.pth``/``best.pth`` (full training state, for
``--resume``), ``eval.txt``/``eval.json`` (top-1/top-5 and MACs per width x resolution) and the
exported backbone checkpoint (``backbone.pth``, with the trained classifier; loads into the Detectron2/OpenMMLab
plugins, which drop the classifier, through ``backbones.pretrained.load_backbone_state``).
"""
import argparse
import json
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _p in (_ROOT, _HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from pretrain_lib import recipes  # noqa: E402
from pretrain_lib.pretrained import parse_eval_point  # noqa: E402


def _floats(s):
    return [float(v) for v in s]


def get_parser():
    """The argument parser (defaults are the built-in ones; recipes are applied in :func:`parse_args`)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group('run')
    g.add_argument('--recipe', default=None, help='paper preset (see --list-recipes); explicit flags override it')
    g.add_argument('--list-recipes', action='store_true', help='print the recipes and exit')
    g.add_argument('--output-dir', default='runs/pretrain', help='run directory (created)')
    g.add_argument('--resume', default=None, help="training checkpoint to continue from, or 'auto' "
                   '(OUTPUT_DIR/last.pth if it exists)')
    g.add_argument('--skip-nonfinite', action='store_true',
                   help='skip a step whose loss or BN running statistics are non-finite (logged with the batch\'s '
                        'files; default: stop, naming them, without overwriting the last checkpoint)')
    g.add_argument('--non-strict', action='store_true',
                   help='--resume from a checkpoint that does not fit the model (default: refuse, listing the keys)')
    g.add_argument('--ckpt-interval', type=int, default=0,
                   help='also save last.pth every N optimizer steps inside an epoch (0: at epoch ends only)')
    g.add_argument('--log-interval', type=int, default=20, help='log every N micro-batches')
    g.add_argument('--eval-interval', type=int, default=1, help='validate every N epochs (and after the last)')
    g.add_argument('--evaluate', action='store_true',
                   help='only evaluate (the --resume checkpoint, --pretrained or --init-checkpoint weights) and export')
    g.add_argument('--save-ponder-maps', type=int, nargs='?', const=16, default=None, metavar='N',
                   help='SACT / ACT: draw the ponder-cost maps of the first N validation images (default 16) over '
                        'them into <output-dir>/ponder_maps (PNG with colour bars, and .npy)')
    g.add_argument('--no-final-eval', dest='final_eval', action='store_false',
                   help='skip the full width x resolution evaluation after training')
    g.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    g.add_argument('--dist-backend', default='auto', choices=['auto', 'nccl', 'gloo'],
                   help='process-group backend under torchrun (auto: nccl on GPU, gloo on CPU)')
    g.add_argument('--find-unused-parameters', action='store_true', default=None,
                   help='DDP find_unused_parameters (default: what the method\'s training policy needs: on for '
                   'sact, off otherwise)')
    g.add_argument('--tensorboard', action=argparse.BooleanOptionalAction, default=True,
                   help='TensorBoard event files in OUTPUT_DIR/tb (--no-tensorboard: none)')
    g.add_argument('--progress-bar', action='store_true', help='tqdm progress bar (rank 0) instead of periodic '
                   'lines on stdout (the lines still go to log.txt)')
    g.add_argument('--export-name', default='backbone.pth', help='file name of the exported backbone checkpoint')
    g.add_argument('--export-ema', action='store_true', help='evaluate and export the EMA weights')
    g.add_argument('--seed', type=int, default=0)
    g.add_argument('--iter-delay', type=float, default=0.0, help=argparse.SUPPRESS)  # throttle for kill/resume tests

    g = p.add_argument_group('data')
    g.add_argument('--data-path', default=None, help='ImageFolder root with train/<class>/ and val/<class>/ (--task '
                   'multilabel: the COCO folder with annotations/ and train2017/, val2017/)')
    g.add_argument('--task', default='classification', choices=['classification', 'multilabel'],
                   help='multilabel: MS-COCO 80-label classification (Elastic paper Sec. 4.2): BCE loss, mAP / CP / '
                        'CR / CF1 / OP / OR / OF1, the scale stress test over --stress-sizes')
    g.add_argument('--stress-sizes', type=int, nargs='+', default=None,
                   help='--task multilabel: input sizes (square resize, no crop) of the final evaluation\'s scale '
                        'stress test (default: --val-crop-size only)')
    g.add_argument('--train-dir', default='train')
    g.add_argument('--val-dir', default='val')
    g.add_argument('--train-crop-size', type=int, default=224, help='RandomResizedCrop size')
    g.add_argument('--val-resize-size', type=int, default=256, help='validation Resize (shorter side)')
    g.add_argument('--val-crop-size', type=int, default=224, help='validation CenterCrop size')
    g.add_argument('--interpolation', default='bilinear', help='bilinear | bicubic | nearest')
    g.add_argument('--crop-scale-min', type=float, default=0.08, help='RandomResizedCrop scale lower bound')
    g.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability')
    g.add_argument('--color-jitter', type=float, default=0.0, help='brightness/contrast/saturation jitter')
    g.add_argument('--lighting', type=float, default=0.0, help='PCA lighting noise std (AlexNet)')
    g.add_argument('--workers', '-j', type=int, default=4, help='data loader processes per training process')
    g.add_argument('--pin-mem', action='store_true', help='pinned host memory for CUDA transfers')
    g.add_argument('--bad-images', default='skip', choices=['skip', 'fail'],
                   help='unreadable/corrupted images: report path and skip, or fail')
    g.add_argument('--max-train-samples', type=int, default=None, help='use a fixed random subset (quick runs)')
    g.add_argument('--max-val-samples', type=int, default=None)

    g = p.add_argument_group('model and method')
    g.add_argument('--model', default=None, help='registered backbone name (backbones.list_models())')
    g.add_argument('--model-kwargs', type=json.loads, default=None,
                   help='JSON dict of extra factory arguments, e.g. \'{"resolutions": [224, 160]}\'')
    g.add_argument('--num-classes', type=int, default=None, help='default: number of class folders')
    g.add_argument('--init-checkpoint', default=None, help='initial weights (non-strict load, key report)')
    g.add_argument('--pretrained', default=None,
                   help='weights to start from or evaluate, loaded strictly: a dynscale checkpoint, a released file of '
                   'allenai/elastic, slimmable_networks, MutualNet, RS-Nets, or a torchvision/timm state dict '
                   '(MODEL_ZOO.md). Sets --model, --method and the origin\'s evaluation protocol unless given; '
                   'with another number of classes the classifier is re-initialised (transfer learning)')
    g.add_argument('--pretrained-source', default=None, help='origin of --pretrained when detection should be bypassed')
    g.add_argument('--method', default='standard',
                   help='training method, one of backbones.training.POLICIES: standard, usnet, mutualnet, rsnet, sact, '
                   'or one registered with backbones.training.register_policy (see --custom-imports)')
    g.add_argument('--custom-imports', nargs='+', default=None, metavar='MODULE',
                   help='import these modules first: a training method registered with '
                   'backbones.training.register_policy or a backbone with backbones.register_model (their folder '
                   'on PYTHONPATH), as an MMEngine config\'s custom_imports')
    g.add_argument('--policy-options', type=json.loads, default=None,
                   help='JSON dict of options of a method without flags of its own (the policy\'s arguments), e.g. '
                   '\'{"num_passes": 2}\'')
    g.add_argument('--widths', type=float, nargs=2, default=None, metavar=('MIN', 'MAX'),
                   help='width-multiplier range of the sandwich rule (default: the model width range)')
    g.add_argument('--num-subnets', type=int, default=4, help='sub-networks per step (sandwich rule)')
    g.add_argument('--no-inplace-distill', dest='inplace_distill', action='store_false',
                   help='train every width with labels instead of distilling from the max width')
    g.add_argument('--input-sizes', type=int, nargs='+', default=None, metavar='SIZE',
                   help='mutualnet: input sizes (crop sides, px) a student sub-network is drawn at; the largest is '
                   'the teacher\'s, = --train-crop-size (MutualNet Sec. 3.2)')
    g.add_argument('--bn-resolutions', type=int, nargs='+', default=None, metavar='RES',
                   help='rsnet: resolutions trained in parallel, one private BN each (RS-Nets Sec. 3.1; default: the '
                   'model\'s)')
    g.add_argument('--resolutions', type=int, nargs='+', default=None, help=argparse.SUPPRESS)  # refused: renamed
    g.add_argument('--untrained-resolution', default='error', choices=['error', 'nearest'],
                   help="rsnet: an --eval-resolutions entry without a private BN is an error (default); 'nearest' "
                        "evaluates it with the nearest trained resolution's private BN (logged)")
    g.add_argument('--kd-type', default='ens_topdown', choices=['ens_topdown', 'ens', 'none'], help='rsnet MRED KD')
    g.add_argument('--tau', type=float, default=None, help='sact ponder cost weight (default: model.tau)')
    g.add_argument('--eval-widths', type=float, nargs='+', default=None, help='widths of the final evaluation')
    g.add_argument('--eval-resolutions', type=int, nargs='+', default=None, help='resolutions of the final evaluation')
    g.add_argument('--val-resize-mode', default='interpolate', choices=['interpolate', 'crop'],
                   help='multi-resolution evaluation of slimmable models: resize the val crop (MutualNet) or '
                   'Resize+CenterCrop per resolution')
    g.add_argument('--eval-points', type=parse_eval_point, nargs='+', default=None, metavar='wW-rR',
                   help='slimmable final evaluation at these (width, resolution) points, e.g. w0.75-r160 w0.7-r128, '
                   'instead of the --eval-widths x --eval-resolutions grid (default for a MutualNet release: the '
                   'points its model-zoo row lists)')
    g.add_argument('--calib-batches', type=int, default=5, help='training batches for post-statistics BN')
    g.add_argument('--calib-batch-size', type=int, default=None,
                   help='images per post-statistics BN batch (default: --batch-size; a MutualNet release: 1024, '
                   "as the authors' ComputePostBN: 9 x 1024 training images)")
    g.add_argument('--bn-calibration', default='always', choices=['always', 'auto', 'never'],
                   help='slimmable final evaluation: recalibrate BN at every point (always), only at points without '
                   'stored statistics (auto: US-Nets releases), or use stored statistics only (never)')
    g.add_argument('--macs-budgets', type=float, nargs='+', default=None,
                   help='MMACs budgets of the MutualNet query table (default: every evaluated point)')
    g.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm under DDP (plain BN models)')
    g.add_argument('--channels-last', action='store_true')

    g = p.add_argument_group('optimisation')
    g.add_argument('--epochs', type=int, default=90)
    g.add_argument('--batch-size', '-b', type=int, default=None,
                   help='images per process per micro-batch (total = processes x batch x accum)')
    g.add_argument('--total-batch-size', type=int, default=None,
                   help='total batch the recipe was tuned for; gives --batch-size when that is not set')
    g.add_argument('--val-batch-size', type=int, default=None)
    g.add_argument('--accum-steps', type=int, default=1, help='gradient accumulation micro-batches per step')
    g.add_argument('--lr', type=float, default=0.1, help='base lr for the total batch')
    g.add_argument('--auto-scale-lr', action='store_true',
                   help='scale lr linearly when the effective total batch differs from --total-batch-size')
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--nesterov', action=argparse.BooleanOptionalAction, default=False)
    g.add_argument('--weight-decay', '--wd', type=float, default=1e-4)
    g.add_argument('--wd-policy', default='all', choices=['all', 'no-norm-bias', 'conv-fc'],
                   help='all params (Elastic, RS-Nets) | no decay on norm/bias | only non-depthwise conv and fc '
                   'weights (US-Nets, MutualNet)')
    g.add_argument('--lr-schedule', default='cosine', choices=['step', 'cosine', 'linear', 'constant'],
                   help='per-iteration schedule')
    g.add_argument('--lr-step-epochs', type=float, default=30, help='step schedule: decay every N epochs')
    g.add_argument('--lr-milestones', type=float, nargs='+', default=None, help='step schedule: decay at epochs')
    g.add_argument('--lr-gamma', type=float, default=0.1)
    g.add_argument('--min-lr', type=float, default=0.0, help='final lr of cosine/linear')
    g.add_argument('--warmup-epochs', type=float, default=0.0)
    g.add_argument('--warmup-factor', type=float, default=0.1, help='lr factor at the start of warmup')
    g.add_argument('--label-smoothing', type=float, default=0.0)
    g.add_argument('--clip-grad-norm', type=float, default=None)
    g.add_argument('--amp', action='store_true', help='autocast (bf16 on CPU, fp16 + GradScaler or bf16 on GPU)')
    g.add_argument('--amp-dtype', default=None, choices=['fp16', 'bf16'], help='default: fp16 on GPU, bf16 on CPU')
    g.add_argument('--model-ema', action='store_true', help='keep an EMA of the weights (AveragedModel)')
    g.add_argument('--model-ema-decay', type=float, default=0.9999)
    g.add_argument('--model-ema-steps', type=int, default=1, help='update the EMA every N optimizer steps')
    return p


#: flag (argparse dest) -> (the backbone capability it sets, whether only the training methods needing that
#: capability read it (backbones.training.methods_needing), else every method); which family has a capability is
#: decided by the one table backbones.capabilities, which method needs one by its policy class
FLAG_CAPABILITY = {
    'widths': ('width', False), 'eval_widths': ('width', False), 'macs_budgets': ('width', False),
    'num_subnets': ('width', True), 'inplace_distill': ('width', True),
    'input_sizes': ('resolution', False), 'bn_resolutions': ('private_bn', False),
    'eval_resolutions': ('resolution', False),
    'kd_type': ('private_bn', True), 'untrained_resolution': ('private_bn', True),
    'tau': ('ponder_cost', True), 'save_ponder_maps': ('ponder_cost', False),
    'calib_batches': ('calibration', False), 'bn_calibration': ('calibration', False),
    'calib_batch_size': ('calibration', False), 'eval_points': ('width', False),
}


def check_flags(args, given):
    """Raise unless every flag in ``given`` applies to ``args.model`` and ``args.method``.

    Runs before any model is built, any file is read or ``args.json`` is written.

    Args:
        args (argparse.Namespace): parsed arguments (``model``, ``method``, ``policy_options``).
        given (iterable[str]): argparse destinations the user or the recipe set.

    Raises:
        backbones.capabilities.OptionNotApplicable: a flag whose capability the model's family lacks (naming the
            families that have it).
        ValueError: a method that cannot train the model (``check_method_model``), a flag the chosen method does
            not read (naming the methods that read it), or ``--policy-options`` with a method of this tool that
            does not take them.
    """
    from pretrain_lib.methods import METHOD_CLASSES, check_method_model

    from backbones.capabilities import check_options
    from backbones.training import methods_needing, supplied_capabilities
    given = set(given)
    flag = {d: '--' + d.replace('_', '-') for d in FLAG_CAPABILITY}
    flag['inplace_distill'] = '--no-inplace-distill'
    options = {flag[d]: FLAG_CAPABILITY[d][0] for d in sorted(given & set(FLAG_CAPABILITY))}
    supplied = supplied_capabilities(args.method)  # e.g. a method with its own calibration: its flags apply
    options = {o: c for o, c in options.items() if c not in supplied}
    check_options(args.model, options, where='tools/pretrain.py')
    check_method_model(args.method, args.model)  # now, not when the trainer builds the method after writing files
    for d in sorted(given & set(FLAG_CAPABILITY)):
        cap, method_specific = FLAG_CAPABILITY[d]
        readers = methods_needing(cap) if method_specific else None
        if readers and args.method not in readers:
            raise ValueError(f'{flag[d]} is read only by --method {" / ".join(readers)}; --method {args.method} '
                             f'ignores it: remove it or choose one of those methods')
    if 'input_sizes' in given and not getattr(METHOD_CLASSES.get(args.method), 'input_sizes', False):
        readers = [m for m, cls in METHOD_CLASSES.items() if cls.input_sizes]
        raise ValueError(f'--input-sizes is read only by --method {" / ".join(readers)} (random input sizes per '
                         f'sub-network); --method {args.method} ignores it: remove it or choose one of those methods')
    if args.policy_options and args.method in METHOD_CLASSES:
        raise ValueError(f'--policy-options is read only by methods registered with '
                         f'backbones.training.register_policy; --method {args.method} takes its own flags '
                         f'(tools/pretrain.py --help)')


def parse_args(argv=None, world_size=None):
    """Parse ``argv``: built-in defaults < ``--recipe`` < explicit flags; derive the per-process batch.

    Raises:
        ValueError: unknown recipe, a recipe key that is not an argument, missing --data-path/--model,
            or inconsistent numbers.
    """
    parser = get_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.list_recipes:
        return pre
    from backbones.custom_imports import import_custom_modules
    import_custom_modules(pre.custom_imports)  # before --method / --model are checked against the registries
    dests = {a.dest for a in parser._actions}
    recipe = {}
    if pre.recipe:
        recipe = recipes.get_recipe(pre.recipe)
        unknown = sorted(set(recipe) - dests)
        if unknown:
            raise ValueError(f'recipe {pre.recipe!r} sets unknown arguments {unknown}')
        parser.set_defaults(**recipe)
    args = parser.parse_args(argv)
    # which values the user gave explicitly: the same parser with every default suppressed
    probe = get_parser()
    for act in probe._actions:
        act.default = argparse.SUPPRESS
    explicit = set(vars(probe.parse_args(argv)))
    if 'resolutions' in explicit:
        raise ValueError('--resolutions was two flags in one: use --input-sizes for MutualNet\'s input sizes '
                         '(--method mutualnet) or --bn-resolutions for RS-Net\'s private-BN resolutions '
                         '(--method rsnet)')
    args.explicit_args = sorted(explicit)
    args.recipe_args = sorted(k for k in recipe if k not in explicit)

    if args.data_path is None:
        raise ValueError('--data-path is required (ImageFolder root with train/ and val/)')
    given = explicit | set(recipe)
    if args.model is not None:
        check_flags(args, given)  # before --pretrained is read
    if args.pretrained:
        from pretrain_lib.pretrained import apply_pretrained_defaults
        apply_pretrained_defaults(args, log=lambda m: print(f'pretrain.py: {m}', flush=True))
    if args.model is None:
        raise ValueError('--model is required (or a --recipe that names one, or --pretrained); see '
                         'backbones.list_models()')
    check_flags(args, given)
    if args.task == 'multilabel':
        from pretrain_lib.methods import METHOD_CLASSES
        if not getattr(METHOD_CLASSES.get(args.method), 'multilabel', False):
            ok = ' or '.join(m for m, cls in METHOD_CLASSES.items() if cls.multilabel)
            raise ValueError(f'--task multilabel trains with --method {ok} (the Elastic paper fine-tunes Elastic '
                             f'and dense classifiers); --method {args.method} is for ImageNet classification')
        if args.train_dir == 'train' and 'train_dir' not in explicit:
            args.train_dir = 'train2017'
        if args.val_dir == 'val' and 'val_dir' not in explicit:
            args.val_dir = 'val2017'
    elif args.stress_sizes:
        raise ValueError('--stress-sizes belongs to --task multilabel (the scale stress test); remove it')
    for name in ('epochs', 'accum_steps', 'num_subnets', 'log_interval', 'eval_interval', 'model_ema_steps',
                 'calib_batches', 'calib_batch_size'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    from backbones.training import methods_needing
    if args.num_subnets < 2 and args.method in methods_needing('width'):
        raise ValueError('--num-subnets must be >= 2 (max and min width) for the sandwich rule')
    world = world_size or int(os.environ.get('WORLD_SIZE', '1'))
    if args.batch_size is None:
        if args.total_batch_size:
            per = args.total_batch_size // (world * args.accum_steps)
            if per < 1 or per * world * args.accum_steps != args.total_batch_size:
                raise ValueError(f'total batch {args.total_batch_size} is not divisible by {world} process(es) x '
                                 f'accum {args.accum_steps}; pass --batch-size')
            args.batch_size = per
        else:
            args.batch_size = 32
    eff = args.batch_size * world * args.accum_steps
    args.effective_batch_size = eff
    if args.total_batch_size and eff != args.total_batch_size and args.auto_scale_lr:
        args.lr = args.lr * eff / args.total_batch_size
    if args.amp_dtype is None:
        import torch
        gpu = args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available())
        args.amp_dtype = 'fp16' if gpu else 'bf16'
    return args


def save_args(args, out):
    """Resolved arguments as ``args.json`` (and ``args.yaml`` when PyYAML is installed)."""
    d = dict(vars(args))
    with open(os.path.join(out, 'args.json'), 'w') as f:
        json.dump(d, f, indent=1, sort_keys=True)
    try:
        import yaml
    except ImportError:
        return
    with open(os.path.join(out, 'args.yaml'), 'w') as f:
        yaml.safe_dump(d, f, sort_keys=True)


def main(argv=None):
    """Entry point; returns the final evaluation rows (rank 0) or None."""
    args = parse_args(argv)
    if args.list_recipes:
        for name in sorted(recipes.RECIPES):
            print(recipes.describe(name))
        return None
    from pretrain_lib import dist as pdist
    from pretrain_lib import engine, logs

    resume = args.resume
    last = os.path.join(args.output_dir, 'last.pth')
    if resume == 'auto':
        resume = last if os.path.exists(last) else None
    elif not resume and not args.evaluate and os.path.exists(last):
        raise ValueError(f'{last} exists: pass --resume auto to continue that run, or choose another '
                         f'--output-dir (a new run would overwrite its checkpoints)')
    elif resume and not os.path.isfile(resume):
        raise FileNotFoundError(f'--resume {resume}: no such checkpoint file; pass a last.pth / best.pth written by '
                                f'tools/pretrain.py, or --resume auto to continue the run in --output-dir')
    info = pdist.init_distributed(args.device, args.dist_backend)
    try:
        if info.is_main:
            os.makedirs(args.output_dir, exist_ok=True)
        pdist.barrier(info)
        logs.setup_logging(args.output_dir, info)
        if info.is_main:
            save_args(args, args.output_dir)
        if args.recipe:
            logs.LOG.info(f'recipe {args.recipe}; overridden by explicit flags: '
                          f'{[a for a in args.explicit_args if a in recipes.get_recipe(args.recipe)] or "none"}')
        trainer = engine.Trainer(args, info)
        if resume:
            trainer.resume(resume)
        elif args.evaluate and not (args.init_checkpoint or args.pretrained):
            logs.LOG.warning('--evaluate without --resume, --pretrained or --init-checkpoint evaluates untrained '
                             'weights')
        rows = None
        if not args.evaluate:
            trainer.fit()
        if args.final_eval or args.evaluate:
            rows = trainer.final_eval()
        if args.save_ponder_maps:
            trainer.save_ponder_maps(args.save_ponder_maps)
        trainer.export(rows)
        trainer.close()
        logs.LOG.info(f'done: {trainer.global_step} optimizer steps')
        return rows if info.is_main else None
    finally:
        logs.close_logging()
        pdist.cleanup(info)


if __name__ == '__main__':
    from pretrain_lib.data import UnreadableImageError

    from backbones.checkpoint import CheckpointWriteError
    from backbones.training.nonfinite import NonFiniteStepError
    try:
        main()
    except (ValueError, FileNotFoundError, UnreadableImageError, NonFiniteStepError, CheckpointWriteError) as e:
        print(f'pretrain.py: error: {e}', file=sys.stderr)
        sys.exit(2)
