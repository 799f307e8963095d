"""Post-statistics BN: one reset-and-average primitive, the slimmable calibration built on it, and the
cross-rank agreement every frontend uses.

US-Nets (Yu & Huang 2019, Sec. 3.3) and MutualNet (Yang et al. 2020, Sec. 3.3; ``ComputePostBN``) re-estimate
the BN statistics of each evaluated configuration after training: reset them, forward training batches with
only those BNs in train mode and cumulative averaging (momentum ``None``: the exact mean over the batches),
then evaluate.  The same primitive serves the slimmable backbone's private statistics and the BNs of heads
and necks shared by every width (a segmentation decode head).

Cross-rank policy (DDP): each rank forwards its own calibration batches, then the running means and variances
are **averaged over ranks** (``all_reduce``), so every rank evaluates with identical statistics and the
checkpoint written by rank 0 holds them; with equal batch sizes the mean equals the mean over all ranks'
images.  Nothing happens when ``torch.distributed`` is not initialised or has one process.
"""
import contextlib
import itertools
import types

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from .distributed import average_bn_statistics, check_ranks_agree

__all__ = ['reset_and_average', 'calibrate', 'bn_statistics_modules', 'head_batchnorms']


@torch.no_grad()
def reset_and_average(model, targets, batches, forward=None, num_batches=None):
    """Re-estimate the running statistics of ``targets`` as exact averages over ``batches``.

    Every module of ``model`` is put in eval mode except the ``targets``, which are reset and put in train mode
    with ``momentum=None`` (cumulative average; a ``SyncBatchNorm`` target normalises each batch on its own, without
    synchronising, during the calibration); each batch is forwarded without gradient; afterwards every
    module's mode and the momenta are restored and, under DDP, the statistics are averaged over ranks
    (:func:`~backbones.training.distributed.average_bn_statistics`) and checked to be identical on every rank.

    Args:
        model (nn.Module): called as ``forward(model, batch)`` (default ``model(batch)``).
        targets (list[_BatchNorm]): the statistics to re-estimate (plain BN modules: a slimmable BN's private
            statistics module, a head's BN, ...).
        batches (Iterable): whatever ``forward`` takes (typically ``[N, 3, H, W]`` tensors at the evaluated
            configuration's input size).
        forward (callable | None): ``forward(model, batch)``.
        num_batches (int | None): stop after this many batches.

    Returns:
        int: batches forwarded.

    Raises:
        ValueError: ``targets`` empty, a target without running statistics (e.g. a converted FrozenBN), or no
            batch forwarded.
    """
    if not targets:
        raise ValueError('reset_and_average got no BN layer to calibrate')
    bad = [type(t).__name__ for t in targets if not isinstance(t, _BatchNorm) or not t.track_running_stats]
    if bad:
        raise ValueError(f'cannot calibrate {sorted(set(bad))}: their statistics are frozen or absent (only BatchNorm '
                         f'layers with running statistics can be re-estimated; calibrate before converting to '
                         f'FrozenBatchNorm2d)')
    forward = forward or (lambda m, b: m(b))
    modes = {m: m.training for m in model.modules()}
    momenta = [t.momentum for t in targets]
    seen = 0
    try:
        model.eval()
        for t in targets:
            t.reset_running_stats()
            t.momentum = None
            t.train()
            if isinstance(t, torch.nn.SyncBatchNorm):
                # each rank's batches on their own (a synchronised forward would pair batches across ranks and
                # hang when the ranks hold different numbers of batches); the ranks' averages are combined below
                t.forward = types.MethodType(_BatchNorm.forward, t)
            t.__dict__.pop('uncalibrated', None)  # re-estimated now (SlimmableBatchNorm2d.mark_uncalibrated)
        for batch in itertools.islice(batches, num_batches):
            forward(model, batch)
            seen += 1
    finally:
        for t, mom in zip(targets, momenta):
            t.momentum = mom
            t.__dict__.pop('forward', None)
        for m, mode in modes.items():
            m.training = mode
    # weighted by the batches each rank saw: the result is the average over every batch, however they were split
    if average_bn_statistics(targets, weight=seen) == 0:
        raise ValueError('BN calibration got no batch to forward (empty iterable)')
    check_ranks_agree([t.running_mean for t in targets] + [t.running_var for t in targets],
                      'the calibrated BN statistics')
    return seen


def bn_statistics_modules(model):
    """The statistics modules that the current configuration of the slimmable backbones inside ``model`` uses,
    created if missing (a width / (width, resolution) without stored statistics).

    Returns:
        list[_BatchNorm]: one private statistics module per :class:`~backbones.slimmable.ops.SlimmableBatchNorm2d`.
    """
    from ..slimmable.ops import SlimmableBatchNorm2d

    out = []
    for m in model.modules():
        if isinstance(m, SlimmableBatchNorm2d):
            out.append(m.add_config(m.width, m.resolution))
    return out


def head_batchnorms(model, exclude):
    """Plain BNs of ``model`` outside the module ``exclude`` (e.g. a decode head's BNs shared by every width).

    Returns:
        list[_BatchNorm]: modules that track running statistics.
    """
    from ..slimmable.ops import SlimmableBatchNorm2d

    skip = set(exclude.modules()) if exclude is not None else set()
    for m in model.modules():  # private statistics of slimmable BNs belong to their configuration
        if isinstance(m, SlimmableBatchNorm2d):
            skip.update(m.private.values())
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m not in skip and m.track_running_stats]


def calibrate(model, batches, backbone=None, width=None, bn_resolution=None, heads=False, forward=None,
              num_batches=None):
    """Post-statistics BN of one configuration of a model holding a slimmable backbone.

    The backbone is switched to ``(width, bn_resolution)`` (its private statistics of that configuration are
    created if missing), those statistics - and with ``heads`` every other BN of ``model`` (decode heads,
    necks shared by all widths) - are re-estimated on ``batches`` by :func:`reset_and_average` (identical on
    every rank under DDP), then the previous configuration is restored.  The batches must already be at the
    configuration's input size: resizing is the frontend's business (crop side, detection shorter side).

    Args:
        model (nn.Module): the network forwarded (a classifier, segmentor or detector).
        batches (Iterable): inputs for ``forward(model, batch)``.
        backbone (SlimmableBackbone | None): the slimmable network inside ``model`` (default: found in it).
        width (float | None): width multiplier (None: the backbone's current one).
        bn_resolution (int | None): statistics key of the resolution (MutualNet per-(width, resolution)
            statistics); None: the width-only statistics (US-Nets).
        heads (bool | nn.Module): also re-estimate the BNs outside the backbone: of ``model`` (True) or of the
            given module (e.g. a detector's neck: only what ``forward`` runs may be re-estimated).
        forward (callable | None): ``forward(model, batch)``; default ``model(batch)``.
        num_batches (int | None): stop after this many batches.

    Returns:
        int: batches forwarded.

    Raises:
        ValueError: no slimmable backbone in ``model``; width outside the range; frozen statistics; no batch.
    """
    from ..slimmable import SlimmableBackbone

    if backbone is None:
        nets = [m for m in model.modules() if isinstance(m, SlimmableBackbone) and m._static_config is None]
        if not nets:
            raise ValueError('calibrate needs a model that contains a slimmable backbone (US-Nets / MutualNet); '
                             'use reset_and_average for other BN layers')
        backbone = nets[0]
    w = backbone.width if width is None else width
    stack = contextlib.ExitStack()
    with stack:
        stack.enter_context(backbone.width_context(w, bn_resolution))
        targets = bn_statistics_modules(backbone)
        if heads is True:
            targets += head_batchnorms(model, backbone)
        elif heads:
            targets += head_batchnorms(heads, backbone)
        return reset_and_average(model, targets, batches, forward, num_batches)
