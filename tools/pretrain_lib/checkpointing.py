"""Checkpoints of the pretraining tool: what a training checkpoint holds, writing it atomically (``last.pth``,
``best.pth`` a hard link to it) and restoring everything from it.  Functions of a :class:`.engine.Trainer`; the
checkpoint layout is in the docstring of :mod:`.engine`."""
import os

from backbones.checkpoint import atomic_link, atomic_save

from . import dist as pdist
from .logs import LOG
from .rng import rng_state, set_rng_state

__all__ = ['training_state', 'save', 'resume']


def training_state(trainer):
    """Everything a resume needs (the module docstring of :mod:`.engine` lists the keys); every rank joins the
    RNG gather."""
    rngs = pdist.all_gather_object(rng_state(), trainer.info)
    return {'version': 1, 'args': vars(trainer.args), 'epoch': trainer.epoch, 'consumed': trainer.consumed,
            'global_step': trainer.global_step, 'model': trainer.net.state_dict(),
            'optimizer': trainer.optimizer.state_dict(), 'lr_scheduler': trainer.scheduler.state_dict(),
            'scaler': trainer.scaler.state_dict(), 'model_ema': trainer.ema.state_dict() if trainer.ema else None,
            'best_top1': trainer.best_top1, 'best_epoch': trainer.best_epoch, 'rng': rngs,
            'world_size': trainer.info.world_size, 'batch_size': trainer.args.batch_size,
            'accum_steps': trainer.args.accum_steps, 'micro_per_epoch': trainer.micro_per_epoch,
            'classes': trainer.classes}


def save(trainer, best=False):
    """Write ``last.pth`` (and ``best.pth``) atomically from rank 0; every rank joins the RNG gather."""
    st = training_state(trainer)
    if not trainer.info.is_main:
        return
    path = atomic_save(st, os.path.join(trainer.out, 'last.pth'))
    LOG.info(f'saved checkpoint {path} (epoch {trainer.epoch}, micro-batch {trainer.consumed}, '
             f'step {trainer.global_step})')
    if best:
        path = atomic_link(path, os.path.join(trainer.out, 'best.pth'))  # the same bytes: one file on disk
        LOG.info(f'saved checkpoint {path} (best {"mAP" if trainer.multilabel else "top-1"} {trainer.best_top1:.2f})')


def resume(trainer, path):
    """Restore everything from a training checkpoint (the layout in the docstring of :mod:`.engine`).

    Raises:
        ValueError: a mid-epoch checkpoint from a run with another per-process batch size, number of
            processes or accumulation (the position inside the epoch would not mean the same samples).
    """
    from backbones.pretrained.files import load_file
    ck = load_file(path, remedy='resume from another checkpoint of the run (best.pth) or without --resume')
    if not isinstance(ck, dict) or ck.get('version') != 1 or 'optimizer' not in ck:
        raise ValueError(f'{path} is not a pretrain.py training checkpoint (exported backbones cannot be '
                         f'resumed; use --init-checkpoint to start from their weights)')
    from backbones.integrity import DIGEST_KEY, verify_digests
    verify_digests(ck['model'], ck.get(DIGEST_KEY), path)
    same = (ck['world_size'], ck['batch_size'], ck['accum_steps']) == \
        (trainer.info.world_size, trainer.args.batch_size, trainer.args.accum_steps)
    if ck['consumed'] and not same:
        raise ValueError(f'{path} was saved mid-epoch by a run with {ck["world_size"]} process(es), batch '
                         f'{ck["batch_size"]}, accum {ck["accum_steps"]}; resume with the same settings '
                         f'(now {trainer.info.world_size}, {trainer.args.batch_size}, {trainer.args.accum_steps})')
    if getattr(trainer.args, 'non_strict', False):
        LOG.warning(f'--non-strict: {path} is resumed without checking that it fits the model')
        trainer.net.load_state_dict(ck['model'], strict=False)
    else:
        from backbones.checkpoint import check_state_fits
        check_state_fits(trainer.net, ck['model'], path, fix='--non-strict')
        trainer.net.load_state_dict(ck['model'])
    trainer.optimizer.load_state_dict(ck['optimizer'])
    trainer.scheduler.load_state_dict(ck['lr_scheduler'])
    trainer.scaler.load_state_dict(ck['scaler'])
    if trainer.ema is not None and ck.get('model_ema') is not None:
        trainer.ema.load_state_dict(ck['model_ema'])
    trainer.epoch, trainer.consumed, trainer.global_step = ck['epoch'], ck['consumed'], ck['global_step']
    trainer.best_top1, trainer.best_epoch = ck['best_top1'], ck['best_epoch']
    rngs = ck.get('rng') or []
    if rngs:
        set_rng_state(rngs[trainer.info.rank] if len(rngs) == trainer.info.world_size else rngs[0])
    LOG.info(f'resumed from {path}: epoch {trainer.epoch}, micro-batch {trainer.consumed}/{trainer.micro_per_epoch}, '
             f'optimizer step {trainer.global_step}/{trainer.total_steps}')
