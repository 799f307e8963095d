"""Command-line plumbing shared by the four OpenMMLab tools: ``tools/train_seg.py``, ``tools/test_seg.py``,
``tools/train_det_mm.py`` and ``tools/test_det_mm.py`` (thin MMEngine Runner wrappers, following MMSeg 1.x /
MMDet 3.x ``tools/train.py`` and ``tools/test.py``: same flags, launchers, logging, checkpoints and progress)."""
import logging
import os
import os.path as osp

__all__ = ['add_common_args', 'add_train_args', 'load_config', 'apply_train_args', 'build_runner',
           'prepare_cpu_launcher', 'set_data_root', 'dataset_cfgs', 'train', 'check_checkpoint',
           'check_data_roots', 'resume_path']

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
        parser.add_argument('--non-strict', action='store_true',
                            help='load a checkpoint that does not fit the model (missing / unexpected / '
                                 'shape-mismatched keys; default: refuse, listing them)')
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
    parser.add_argument('--non-strict', action='store_true',
                        help='--resume from a checkpoint that does not fit the model (default: refuse, listing '
                             'the keys)')
    parser.add_argument('--skip-nonfinite', action='store_true',
                        help='skip a step whose loss or BN running statistics are non-finite (logged with its '
                             'image paths; default: stop, naming them, before the checkpoint of that step)')
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


def check_data_roots(cfg):
    """Raise unless the ``data_root`` of every dataset of ``cfg`` is an existing folder (checked before the model
    is built; each dataset class then checks its own layout when it is built).

    Raises:
        FileNotFoundError: the first missing folder, with the config key and the ways to point the config at the
            data (``--data-root``, ``$DYNSCALE_DATASETS``, the synthetic-set scripts).
    """
    for d in dataset_cfgs(cfg):
        root = d.get('data_root')
        if isinstance(root, str) and root and '://' not in root and not osp.isdir(root):
            raise FileNotFoundError(
                f"dataset folder {root} (dataset type {d.get('type')}) does not exist; pass --data-root DIR, the "
                f'folder that holds VOCdevkit/ (VOC), coco/ (COCO) or nyudv2/ (NYUDv2) (default ../shared/datasets '
                f'beside the repository, or $DYNSCALE_DATASETS), or create a small synthetic set with '
                f'tools/make_synthetic_voc.py / tools/make_synthetic_coco.py')


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
    semantics).  Checkpoints are written atomically (:mod:`plugins.mm.file_backend`) unless the config's
    checkpoint hook chooses a backend or an ``out_dir``.

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
    ckpt_hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if isinstance(ckpt_hook, dict) and not ckpt_hook.get('backend_args') and not ckpt_hook.get('out_dir'):
        from .file_backend import BACKEND
        ckpt_hook['backend_args'] = dict(backend=BACKEND)  # atomic writes, a full disk named (file_backend.py)
    hooks = list(cfg.get('custom_hooks', None) or [])
    types = {h.get('type') for h in hooks if isinstance(h, dict)}
    if 'TensorDigestHook' not in types:
        hooks.append(dict(type='TensorDigestHook'))  # every checkpoint carries tensor digests
    if 'NonFiniteCheckHook' not in types:
        hooks.append(dict(type='NonFiniteCheckHook'))  # a non-finite step stops the run, naming its files
    cfg.custom_hooks = hooks
    return cfg


def apply_train_args(cfg, args):
    """Apply ``--amp``, ``--auto-scale-lr``, ``--skip-nonfinite`` and ``--resume`` to ``cfg``; returns it.

    Raises:
        ValueError: ``--amp`` without CUDA or with an optimiser wrapper other than ``OptimWrapper``;
            ``--auto-scale-lr`` on a config without ``auto_scale_lr.base_batch_size``.
    """
    if args.amp:
        import torch
        if not torch.cuda.is_available():
            raise ValueError('--amp (mixed precision) needs a GPU: MMEngine\'s AmpOptimWrapper refuses to train on '
                             'CPU; drop --amp on this machine')
        if cfg.optim_wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
            raise ValueError(f'--amp needs optim_wrapper.type=OptimWrapper, the config has {cfg.optim_wrapper.type}')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if getattr(args, 'auto_scale_lr', False):
        if not cfg.get('auto_scale_lr', {}).get('base_batch_size'):
            raise ValueError('--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True
    if getattr(args, 'skip_nonfinite', False):
        for h in cfg.custom_hooks:
            if h.get('type') == 'NonFiniteCheckHook':
                h['skip_nonfinite'] = True
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'OptimWrapper':
            cfg.optim_wrapper.type = 'NonFiniteSkipOptimWrapper'
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def build_runner(cfg, flags=None, checkpoint=None):
    """The MMEngine runner of ``cfg`` (``runner_type`` honoured), after checking that every option of ``cfg``
    applies to its backbone (:func:`plugins.mm.options.check_config_options`: nothing is built or read first).

    Args:
        cfg (mmengine.Config): the merged config.
        flags (dict | None): ``config key -> command-line flag`` that set it (named in the error).
        checkpoint (str | None): a local checkpoint the tool will check with :func:`check_checkpoint`: read after
            the options are checked and before anything is built, so that a file that is not a checkpoint fails
            first (the object is kept on the runner for :func:`check_checkpoint`).

    Raises:
        backbones.capabilities.OptionNotApplicable: an option the backbone's family does not have.
        FileNotFoundError: a dataset folder that does not exist (:func:`check_data_roots`).
        FileNotFoundError, backbones.pretrained.files.CheckpointFileError: ``checkpoint`` is missing or unreadable.
    """
    from .options import check_config_options
    check_config_options(cfg, flags, where=cfg.get('filename'))
    check_data_roots(cfg)
    read = None
    if checkpoint and '://' not in checkpoint:
        from backbones.pretrained.files import load_file
        read = (checkpoint, load_file(checkpoint, remedy=_REMEDY))
        _refuse_backbone_checkpoint(checkpoint, read[1], cfg.model.get('type'))
    prepare_cpu_launcher(cfg)
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner._dynscale_checkpoint = read
    return runner


def prepare_cpu_launcher(cfg):
    """Let ``--launcher pytorch`` (torchrun) run on machines without CUDA: MMEngine's launcher calls
    ``torch.cuda.set_device`` and its DDP wrapper passes ``device_ids=[LOCAL_RANK]``, both of which fail on CPU.
    Without CUDA the process group is initialised here with the ``gloo`` backend (MMEngine then finds it
    initialised), the model is wrapped with ``device_ids=None``, and ``SyncBN`` norm layers of ``cfg.model``
    become ``BN`` (PyTorch's SyncBatchNorm needs GPU tensors; in evaluation both are the same layer, in training
    each process then normalises with its own batch's statistics: logged).  Nothing changes with CUDA or another
    launcher.

    Args:
        cfg (mmengine.Config): the merged config (``launcher``, ``env_cfg.dist_cfg.timeout``,
            ``model_wrapper_cfg``, ``find_unused_parameters`` are read; ``model_wrapper_cfg`` may be set).

    Raises:
        ValueError: the process was not started by ``torchrun`` (its rendezvous variables are missing).
    """
    import datetime

    import torch
    import torch.distributed as dist
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return
    missing = [v for v in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT') if v not in os.environ]
    if not dist.is_initialized() and missing:
        raise ValueError(f'--launcher pytorch expects the variables torchrun sets ({", ".join(missing)} missing): '
                         f'start the tool with torchrun --nproc_per_node N tools/<tool>.py ... --launcher pytorch, '
                         f'or drop --launcher for one process')
    if not dist.is_initialized():
        timeout = (cfg.get('env_cfg') or {}).get('dist_cfg', {}).get('timeout')
        kwargs = {'timeout': datetime.timedelta(seconds=timeout)} if timeout else {}
        dist.init_process_group('gloo', **kwargs)
        import atexit
        atexit.register(_destroy_process_group)  # an orderly teardown: a live gloo thread at exit aborts (SIGABRT)
    if _sync_bn_to_bn(cfg.model):
        from mmengine.logging import print_log
        print_log('--launcher pytorch without CUDA: SyncBN layers run as BN (gloo has no synchronised batch norm); '
                  'in training each process normalises with its own batch statistics', logger='current',
                  level=logging.WARNING)
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                                     find_unused_parameters=cfg.get('find_unused_parameters', False))
    elif isinstance(wrapper, dict) and wrapper.get('type', 'MMDistributedDataParallel') == 'MMDistributedDataParallel':
        wrapper.setdefault('device_ids', None)


def _destroy_process_group():
    """Destroy the gloo process group :func:`prepare_cpu_launcher` created (at interpreter exit)."""
    import torch.distributed as dist
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 -- exiting anyway; the peer may already be gone
            pass


def _sync_bn_to_bn(node):
    """Replace ``type='SyncBN'`` by ``'BN'`` in every dict of a config subtree; returns how many."""
    n = 0
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            n += 1
        for v in node.values():
            n += _sync_bn_to_bn(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            n += _sync_bn_to_bn(v)
    return n


def check_checkpoint(runner, path, non_strict=False):
    """Raise unless the checkpoint at ``path`` fits ``runner.model`` exactly (MMEngine loads ``load_from`` and
    ``resume`` checkpoints non-strictly: a checkpoint of another model would be scored with random weights).

    Args:
        runner (mmengine.runner.Runner): built, not yet run.
        path (str): the checkpoint ``load_from`` / ``resume`` will read.
        non_strict (bool): the explicit opt-out (``--non-strict``): log that the check is skipped.

    Raises:
        FileNotFoundError, backbones.pretrained.files.CheckpointFileError: a local file that is missing or not a
            checkpoint (the message says what it is and the fix).
        backbones.integrity.CorruptedCheckpointError: a tensor that does not match its recorded digest.
        backbones.checkpoint.CheckpointMismatchError: missing, unexpected or shape-mismatched keys (listed).
    """
    from mmengine.logging import print_log
    from mmengine.model import is_model_wrapper
    from mmengine.runner.checkpoint import _load_checkpoint

    from backbones.checkpoint import CheckpointMismatchError, check_state_fits
    from backbones.integrity import DIGEST_KEY, verify_digests
    from backbones.pretrained.files import CheckpointFileError, load_file
    read = getattr(runner, '_dynscale_checkpoint', None)
    if read is not None and read[0] == path:
        ckpt = read[1]
        runner._dynscale_checkpoint = None
    else:
        ckpt = load_file(path, remedy=_REMEDY) if '://' not in path else _load_checkpoint(path, map_location='cpu')
    if not isinstance(ckpt, dict):
        raise CheckpointFileError(f'{path} holds a {type(ckpt).__name__}, not a checkpoint dict: save '
                                  f'{{"state_dict": model.state_dict()}} (MMEngine Runner checkpoints do)')
    sd = ckpt.get('state_dict', ckpt)
    meta = ckpt.get('meta')
    verify_digests(sd, meta.get(DIGEST_KEY) if isinstance(meta, dict) else None, path)
    if non_strict:
        print_log(f'--non-strict: {path} is loaded without checking that it fits the model (unmatched keys keep '
                  f'their initialisation)', logger='current', level=logging.WARNING)
        return
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    tops = {k.split('.', 1)[0] for k, _ in model.named_parameters()}
    d2 = isinstance(ckpt.get('model'), dict) and 'state_dict' not in ckpt
    if d2:  # a Detectron2 checkpoint ({'model': ..., '__author__': ...})
        sd = ckpt['model']
    if isinstance(sd, dict) and sd and (d2 or not any(str(k).split('.', 1)[0] in tops for k in sd)):
        _refuse_backbone_checkpoint(path, ckpt, type(model).__name__)
        kind = (f'a Detectron2 / pretrain.py checkpoint (keys like {list(sd)[:2]})' if d2 else
                f'a backbone / ImageNet checkpoint (keys like {list(sd)[:2]})')
        raise CheckpointMismatchError(
            f'{path} is {kind}, not an MMEngine checkpoint of this {type(model).__name__} (keys {sorted(tops)}.*): '
            f'evaluate a checkpoint written by the MM training tool, or train from its backbone weights with '
            f"--cfg-options model.backbone.init_cfg.type=Pretrained model.backbone.init_cfg.checkpoint={path}")
    check_state_fits(model, sd, path, fix='--non-strict')


def _refuse_backbone_checkpoint(path, ckpt, model_type):
    """Raise when ``ckpt`` is a dynscale backbone checkpoint (it has no neck or head: not what a test or a resume
    reads), naming the way to train from it."""
    from backbones.checkpoint import FORMAT, CheckpointMismatchError
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    if isinstance(meta, dict) and meta.get('format') == FORMAT:
        raise CheckpointMismatchError(
            f"{path} is a dynscale backbone checkpoint ({meta.get('variant')}), not a checkpoint of this {model_type}: "
            f'evaluate or resume a checkpoint written by the training tool, or train from these weights with '
            f'--cfg-options model.backbone.init_cfg.type=Pretrained model.backbone.init_cfg.checkpoint={path}')


_REMEDY = 'pass a checkpoint written by the MM tools (work_dir/iter_N.pth, best_*.pth) or the released file again'


def resume_path(cfg):
    """The checkpoint ``cfg`` resumes from (``resume=True``: ``load_from``, else the work dir's latest), or None."""
    if not cfg.get('resume'):
        return None
    if cfg.get('load_from'):
        return cfg.load_from
    from mmengine.runner import find_latest_checkpoint
    return find_latest_checkpoint(cfg.work_dir) if osp.isdir(cfg.work_dir) else None


def train(args):
    """Load the config, apply the training flags, build the runner and train; returns the runner (its message
    hub holds the logged scalars).  A ``--resume`` checkpoint must fit the model unless ``--non-strict``."""
    cfg = apply_train_args(load_config(args), args)
    init = cfg.get('load_from')
    if init and not cfg.get('resume') and '://' not in init:  # fine-tuning: fits or not, the file must be one
        from backbones.pretrained.files import load_file
        load_file(init, remedy='set load_from to a checkpoint file (MMEngine / dynscale), or to None')
    path = resume_path(cfg)
    runner = build_runner(cfg, checkpoint=path)  # the file is read before the model is built
    if path:
        check_checkpoint(runner, path, getattr(args, 'non_strict', False))
    runner.train()
    return runner
