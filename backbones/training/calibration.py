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
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .distributed import average_bn_statistics, check_ranks_agree

__all__ = ['reset_and_average', 'calibrate', 'calibrate_bn', 'bn_statistics_modules', 'head_batchnorms']


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
              num_batches=None, policy=None):
    """Post-statistics BN of one configuration of a model holding a slimmable backbone (or the backbone of any
    policy with ``needs_calibration``).

    The backbone is switched to ``(width, bn_resolution)`` (its private statistics of that configuration are
    created if missing; with ``policy``: inside ``policy.calibration_context``), those statistics - and with
    ``heads`` every other BN of ``model`` (decode heads, necks shared by all widths) - are re-estimated on
    ``batches`` by :func:`reset_and_average` (identical on every rank under DDP), then the previous configuration
    is restored.  The batches must already be at the
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
        policy (TrainingPolicy | None): the method's policy: its
            :meth:`~backbones.training.TrainingPolicy.calibration_context` switches ``backbone`` (required then)
            to the configuration, so that a method registered later calibrates through the same call; None: the
            slimmable backbone's ``width_context``.

    Returns:
        int: batches forwarded.

    Raises:
        ValueError: no slimmable backbone in ``model`` (without ``policy``), no ``backbone`` with ``policy``, a
            policy without post-statistics BN; width outside the range; frozen statistics; no batch.
    """
    from ..slimmable import SlimmableBackbone

    if policy is not None:
        if backbone is None:
            raise ValueError('calibrate(policy=...) needs backbone=: the network whose configuration the policy '
                             'switches')
        context = policy.calibration_context(backbone, width, bn_resolution)
    else:
        if backbone is None:
            nets = [m for m in model.modules() if isinstance(m, SlimmableBackbone) and m._static_config is None]
            if not nets:
                raise ValueError('calibrate needs a model that contains a slimmable backbone (US-Nets / MutualNet); '
                                 'use reset_and_average for other BN layers')
            backbone = nets[0]
        context = backbone.width_context(backbone.width if width is None else width, bn_resolution)
    with context:
        # slimmable BNs: the configuration's private statistics; any other backbone: its BN modules, which the
        # policy's context loaded with the configuration's statistics
        targets = bn_statistics_modules(backbone) or head_batchnorms(backbone, None)
        if heads is True:
            targets += head_batchnorms(model, backbone)
        elif heads:
            targets += head_batchnorms(heads, backbone)
        return reset_and_average(model, targets, batches, forward, num_batches)


def _batch_tensor(batch):
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, (list, tuple)) and batch and torch.is_tensor(batch[0]):
        return batch[0]
    if isinstance(batch, dict):
        for k in ('img', 'image', 'images', 'inputs'):
            if torch.is_tensor(batch.get(k)):
                return batch[k]
    raise ValueError('calibrate_bn batches must be image tensors [N,3,H,W], (images, targets) tuples or '
                     f'dicts with an "img"/"image"/"images"/"inputs" tensor; got {type(batch).__name__}')


def _resize(x, resolution):
    h, w = x.shape[-2:]
    if h == w:
        size = (resolution, resolution)
    else:  # shorter side to `resolution`, aspect ratio kept
        s = resolution / min(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode='bilinear', align_corners=True)


@torch.no_grad()
def calibrate_bn(model, batches, width=None, resolution=None, num_batches=None):
    """Post-statistics BN in one call (US-Nets Sec. 3.3; MutualNet ``ComputePostBN``, reference §2.3, §3.3).

    Resets the private statistics of the configuration ``(width, resolution)`` (creating them if the width
    was not listed), puts exactly those statistics modules in train mode with cumulative averaging
    (``momentum=None``, so the result is the exact average over the batches) and every other module in eval
    mode, forwards the batches without gradient, then restores every module's mode, the momenta and the
    model's width.  Unlike the authors' US-Nets code (whose calibration pass leaves the slimmable BN in eval
    mode so nothing is updated), the modules that hold the statistics are the ones put in train mode.  Other
    widths' statistics and all parameters are left untouched.  The model is not switched to the calibrated
    width afterwards (use ``set_width``).

    For a model without slimmable BN (e.g. an :func:`export_static` result) every ``_BatchNorm`` is
    calibrated. BNs outside slimmable backbones (e.g. in a neck shared by all widths) are left alone.

    Args:
        model (nn.Module): a :class:`SlimmableBackbone` or a module containing one (called as
            ``model(images)``).
        batches (Iterable): tensors ``[N, 3, H, W]`` (normalised images, train-time augmentation
            recommended), ``(images, ...)`` tuples or dicts with an ``img``/``image``/``images``/``inputs``
            tensor.
        width (float | None): width to calibrate; ``None``: the model's current width.
        resolution (int | None): calibrate the statistics of ``(width, resolution)``; each batch is resized
            bilinearly (``align_corners=True``, MutualNet) to ``resolution`` x ``resolution`` (non-square
            batches: shorter side to ``resolution``).  ``None``: width-only statistics, batches used as they
            are (or the model's current resolution setting if it has one).
        num_batches (int | None): stop after this many batches (MutualNet: 9 x 1024 images; US-Nets: 2000
            images suffice); ``None``: all of ``batches``.

    Returns:
        nn.Module: ``model``.

    Raises:
        ValueError: no slimmable backbone inside while ``width``/``resolution`` is given; width outside the
            range; no batch forwarded; statistics frozen by a FrozenBN conversion; batches of an unknown
            type.
    """
    from ..slimmable import SlimmableBackbone

    if num_batches is not None and num_batches < 1:
        raise ValueError(f'num_batches must be >= 1 or None, got {num_batches}')
    nets = [m for m in model.modules() if isinstance(m, SlimmableBackbone) and m._static_config is None]
    if (width is not None or resolution is not None) and not nets:
        raise ValueError('calibrate_bn(width=..., resolution=...) needs a model that contains a '
                         'SlimmableBackbone; for a static model call calibrate_bn(model, batches) without '
                         'width/resolution')
    device = next((p.device for p in model.parameters()), torch.device('cpu'))

    def prepared():
        for batch in batches:
            x = _batch_tensor(batch).to(device)
            yield x if resolution is None else _resize(x, resolution)
    existing = set(model.modules())
    with contextlib.ExitStack() as stack:
        for net in nets:
            stack.enter_context(net.width_context(net.width if width is None else width,
                                                  net.resolution if resolution is None else resolution))
        if nets:
            targets = [t for net in nets for t in bn_statistics_modules(net)]
        else:
            targets = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
            if not targets:
                raise ValueError('calibrate_bn found no BN layer with running statistics in the model')
        try:
            reset_and_average(model, targets, prepared(), num_batches=num_batches)
        finally:
            for net in nets:  # statistics created by this call take their owner's mode
                for bn in net.slimmable_bns():
                    for stats in bn.private.values():
                        if stats not in existing:
                            stats.train(bn.training)
    return model
