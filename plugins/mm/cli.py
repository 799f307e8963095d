"""Command-line plumbing shared by the four OpenMMLab tools: ``tools/train_seg.py``, ``tools/test_seg.py``,
``tools/train_det_mm.py`` and ``tools/test_det_mm.py`` (thin MMEngine Runner wrappers, following MMSeg 1.x /
MMDet 3.x ``tools/train.py`` and ``tools/test.py``: same flags, launchers, logging, checkpoints and progress)."""
import os
import os.path as osp

__all__ = ['add_common_args', 'add_train_args', 'load_config', 'apply_train_args', 'build_runner', 'set_data_root',
           'dataset_cfgs', 'train']

# mmengine 0.10 checkpoints hold Python objects (message hub history, numpy arrays) that torch >= 2.6 refuses to
# unpickle with its default weights_only=True, and mmengine calls torch.load without the argument: this documented
# switch restores the old default for --resume / load_from / testing.  Load only checkpoints you trust.
os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')


def add_common_args(parser, config_help='config file', checkpoint=False):
    """Arguments every tool takes: ``config`` (and ``checkpoint`` for the test tools), ``--work-dir``,
    ``--cfg-options``, ``--launcher``, ``--local-rank``, ``--data-root``.  Returns ``parser``."""
    from mmengine.config import DictAction
    parser.add_argument('config', help=config_help)
    if checkpoint:
        parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='logs and checkpoints folder (default work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override config keys, key=value (lists as key="[a,b]"), e.g. train_cfg.max_iters=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher: none (one process), pytorch (torchrun), slurm (srun), mpi')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help='set by the launcher')
    parser.add_argument('--data-root', default=None,
                        help='datasets root (the folder holding VOCdevkit/, nyudv2/, coco/ ...); default '
                             '$DYNSCALE_DATASETS, else ../shared/datasets beside the repository')
    return parser


def add_train_args(parser):
    """Training flags: ``--resume [CKPT]``, ``--amp``, ``--auto-scale-lr``.  Returns ``parser``."""
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from the latest checkpoint in the work dir, or from the given one')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (AmpOptimWrapper, dynamic loss scale; GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr linearly with the total batch size (auto_scale_lr.base_batch_size)')
    return parser


def dataset_cfgs(cfg):
    """Every dataset config dict under the train/val/test dataloaders (``ConcatDataset``/``RepeatDataset``
    children included)."""
    out = []

    def walk(d):
        if not isinstance(d, dict):
            return
        out.append(d)
        for key in ('dataset',):
            walk(d.get(key))
        for child in d.get('datasets', []) or []:
            walk(child)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if loader:
            walk(loader.get('dataset'))
    return out


def set_data_root(cfg, root):
    """Point every dataset (and every evaluator's ``ann_file``) of ``cfg`` at ``root``.

    If the config defines ``datasets_root`` (the configs in ``seg_configs`` and ``det_configs/mmdet`` do), each
    path below it keeps its sub-folder (``VOCdevkit/VOC2012``, ``nyudv2``, ``coco/`` ...) below ``root``;
    otherwise a dataset's ``data_root`` becomes ``root`` itself.  Returns the number of entries changed.
    """
    old = cfg.get('datasets_root')

    def moved(path):
        if old and isinstance(path, str) and path.startswith(old):
            return osp.join(root, path[len(old):].lstrip('/'))
        return None
    n = 0
    for d in dataset_cfgs(cfg):
        if 'data_root' not in d:
            continue
        d['data_root'] = moved(d['data_root']) or root
        n += 1
    for key in ('val_evaluator', 'test_evaluator'):
        evs = cfg.get(key)
        for ev in (evs if isinstance(evs, (list, tuple)) else [evs]):
            if isinstance(ev, dict) and moved(ev.get('ann_file')):
                ev['ann_file'] = moved(ev['ann_file'])
                n += 1
    cfg.datasets_root = root
    return n


def load_config(args):
    """``Config.fromfile(args.config)`` with ``--cfg-options``, ``--launcher``, ``--work-dir`` and ``--data-root``
    applied, and ``load_from`` set to ``args.checkpoint`` when the tool takes one (MMSeg/MMDet ``tools/*.py``
    semantics).

    Raises:
        FileNotFoundError: the config or checkpoint does not exist.
        ValueError: a former datasets-root variable is set (:func:`plugins._compat.check_datasets_variable`).
    """
    from mmengine.config import Config

    from .._compat import check_datasets_variable
    check_datasets_variable()
    for path, what in ((args.config, 'config'), (getattr(args, 'checkpoint', None), 'checkpoint')):
        if path is not None and not osp.isfile(path):
            where = ' (configs live in seg_configs/ and det_configs/mmdet/)' if what == 'config' else ''
            raise FileNotFoundError(f'{what} not found: {path}{where}')
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if getattr(args, 'checkpoint', None):
        cfg.load_from = args.checkpoint
    return cfg


def apply_train_args(cfg, args):
    """Apply ``--amp``, ``--auto-scale-lr`` and ``--resume`` to ``cfg``; returns it.

    Raises:
        ValueError: ``--amp`` with an optimiser wrapper other than ``OptimWrapper``; ``--auto-scale-lr`` on a
            config without ``auto_scale_lr.base_batch_size``.
    """
    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
            raise ValueError(f'--amp needs optim_wrapper.type=OptimWrapper, the config has {cfg.optim_wrapper.type}')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if getattr(args, 'auto_scale_lr', False):
        if not cfg.get('auto_scale_lr', {}).get('base_batch_size'):
            raise ValueError('--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def build_runner(cfg):
    """The MMEngine runner of ``cfg`` (``runner_type`` honoured)."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def train(args):
    """Load the config, apply the training flags, build the runner and train; returns the runner (its message
    hub holds the logged scalars)."""
    runner = build_runner(apply_train_args(load_config(args), args))
    runner.train()
    return runner
