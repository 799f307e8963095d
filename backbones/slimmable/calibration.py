"""Post-statistics batch normalisation in one call: :func:`calibrate_bn` (US-Nets Sec. 3.3; MutualNet
``ComputePostBN``).

Recomputes the private BN statistics of one ``(width, resolution)`` configuration of a slimmable backbone
(or every BN of a static model) from a few training batches, leaving parameters and other configurations
untouched.  The reset-and-average itself is the training core's one primitive
(:func:`backbones.training.reset_and_average`, statistics averaged over DDP ranks); this module only accepts
loose batch formats and resizes them.
"""
import contextlib

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .model import SlimmableBackbone


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
    from ..training.calibration import bn_statistics_modules, reset_and_average

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
