"""Command-line plumbing shared by ``tools/train_seg.py`` and ``tools/test_seg.py`` (thin MMEngine Runner
wrappers, following MMSeg 1.x ``tools/train.py`` / ``tools/test.py``)."""
import os
import os.path as osp

__all__ = ['add_common_args', 'load_config', 'set_data_root', 'dataset_cfgs']


def add_common_args(parser):
    """Arguments both tools take: ``config``, ``--work-dir``, ``--cfg-options``, ``--launcher``,
    ``--local-rank``, ``--data-root``."""
    from mmengine.config import DictAction
    parser.add_argument('config', help='config file (seg_configs/...)')
    parser.add_argument('--work-dir', help='logs and checkpoints folder (default work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override config keys, e.g. model.test_cfg.resolution=224 '
                             'train_cfg.max_iters=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher: none (one process), pytorch (torchrun), slurm (srun)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    parser.add_argument('--data-root', default=None,
                        help='datasets root replacing ../shared/datasets (the folder holding VOCdevkit/, '
                             'nyudv2/ ...)')
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
    """Point every dataset of ``cfg`` at ``root``.

    If the config defines ``datasets_root`` (the configs in ``seg_configs`` do: ``../shared/datasets``), each
    dataset's ``data_root`` keeps its sub-folder (``VOCdevkit/VOC2012``, ``nyudv2``, ...) below ``root``;
    otherwise ``data_root`` becomes ``root`` itself.  Returns the number of datasets changed.
    """
    old = cfg.get('datasets_root')
    n = 0
    for d in dataset_cfgs(cfg):
        if 'data_root' not in d:
            continue
        cur = d['data_root']
        if old and isinstance(cur, str) and cur.startswith(old):
            d['data_root'] = osp.join(root, cur[len(old):].lstrip('/'))
        else:
            d['data_root'] = root
        n += 1
    cfg.datasets_root = root
    return n


def load_config(args):
    """``Config.fromfile(args.config)`` with ``--cfg-options``, ``--launcher``, ``--work-dir`` and
    ``--data-root`` applied (MMSeg ``tools/train.py`` semantics)."""
    from mmengine.config import Config
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
    return cfg
