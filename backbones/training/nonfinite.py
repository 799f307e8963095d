"""Non-finite training steps: detect them (loss or BN running statistics), name the batch, or skip the step.

One ``inf`` pixel makes a step's loss and the BN running statistics of every layer after it non-finite; the next
evaluation then prints a meaningless metric.  Every training path (the pretraining tool, the MMSeg / MMDet
runners through :class:`plugins.mm.hooks.NonFiniteCheckHook`, the Detectron2 trainer) calls
:func:`check_step` after each step, before any checkpoint of that step is written:

* by default it raises :class:`NonFiniteStepError` naming the iteration, what was non-finite and the files of
  the batch, so that the last good checkpoint is left untouched;
* with ``skip=True`` (``--skip-nonfinite`` / ``skip_nonfinite=True`` / ``MODEL.DYNSCALE.SKIP_NONFINITE``) the
  frontend restores the BN statistics saved before the step (:class:`BNSnapshot`), drops the gradients, does
  not step the optimiser, and logs the skip.

Framework-free: only torch.
"""
import math

import torch
from torch import nn

__all__ = ['NonFiniteStepError', 'BNSnapshot', 'nonfinite_bn_statistics', 'describe_nonfinite', 'is_finite_number']


class NonFiniteStepError(FloatingPointError):
    """A training step produced a non-finite loss or BN running statistic; the message names the batch."""


def is_finite_number(v):
    """Whether ``v`` (a Python number or a tensor of any shape) is entirely finite."""
    if torch.is_tensor(v):
        return bool(torch.isfinite(v.detach()).all())
    return math.isfinite(float(v))


def _bn_buffers(model):
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None:
            yield name, m


def nonfinite_bn_statistics(model, limit=5):
    """Names of BN layers of ``model`` whose running mean or variance holds NaN / inf (at most ``limit``)."""
    mods = list(_bn_buffers(model))
    if not mods:
        return []
    finite = torch.stack([torch.isfinite(m.running_mean).all() & torch.isfinite(m.running_var).all()
                          for _, m in mods])
    if bool(finite.all()):  # the common case: one host-device synchronisation per step
        return []
    return [name or type(m).__name__ for (name, m), ok in zip(mods, finite.tolist()) if not ok][:limit]


class BNSnapshot:
    """A copy of every BN running statistic of ``model`` (taken before a step), restored when the step is skipped.

    Args:
        model (nn.Module): any model; slimmable private statistics and RS-Net private BNs are ``_BatchNorm``
            modules and are included.
    """

    def __init__(self, model):
        self.saved = [(m, m.running_mean.clone(), m.running_var.clone(),
                       None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
                      for _, m in _bn_buffers(model)]

    def restore(self):
        """Put the saved statistics back (in place)."""
        with torch.no_grad():
            for m, mean, var, n in self.saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                if n is not None:
                    m.num_batches_tracked.copy_(n)


def describe_nonfinite(iteration, loss=None, bn_layers=(), files=(), where='training'):
    """The message of a non-finite step: ``iteration``, what was non-finite, the batch's ``files``, the fix.

    Args:
        iteration (int): the step's iteration (0-based, as the framework logs it).
        loss (float | None): the step's loss if it was non-finite.
        bn_layers (Sequence[str]): BN layers with non-finite running statistics.
        files (Sequence[str]): paths of the batch's images (``[]`` when the frontend cannot tell).
        where (str): the run (``'tools/pretrain.py'``, ``'MMEngine runner'`` ...).

    Returns:
        str
    """
    what = []
    if loss is not None:
        what.append(f'loss {loss}')
    if bn_layers:
        what.append(f'BN running statistics of {", ".join(bn_layers)}')
    shown = ', '.join(str(f) for f in list(files)[:16]) + (' ...' if len(files) > 16 else '')
    return (f'{where}: non-finite {" and ".join(what) or "values"} at iteration {iteration}; batch files: '
            f'[{shown or "unknown"}]. Check those images (an inf / NaN pixel, an empty file), lower the learning rate '
            f'or clip gradients; the last checkpoint was not overwritten. Pass --skip-nonfinite (MM configs: '
            f'skip_nonfinite=True on NonFiniteCheckHook; Detectron2: MODEL.DYNSCALE.SKIP_NONFINITE True) to skip '
            f'such steps instead, logging each')
