"""Parameter and MAC counting with ``torch.utils.flop_counter`` (conv + matmul ops only).

Convention (matches ``../shared/reference/official_implementations.md``): MACs are the
multiply-accumulates of convolutions and linear layers; BN, activations, pooling, element-wise
additions and bilinear resizing are not counted.  ``FlopCounterMode`` reports FLOPs = 2 x MACs, so
MACs = FLOPs / 2.  Parameters are ``sum(p.numel())`` of the stored (max-width) tensors.
"""
import contextlib

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(model, trainable_only=False):
    """Number of parameters (stored tensors; slimmable models count their max width)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model, x):
    """MACs of one forward of ``model`` on ``x`` (a tensor ``[N,3,H,W]``), summed over the batch.

    Returns:
        int: multiply-accumulates (FLOPs / 2 as counted by ``torch.utils.flop_counter``).
    """
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    return counter.get_total_flops() // 2


def complexity(model, input_size=224, width=None, resolution=None, batch=None):
    """Parameters and MACs of ``model`` at one configuration.

    Args:
        model (nn.Module): a dynscale backbone (or any module taking ``[N,3,H,W]``).
        input_size (int | tuple[int, int]): H (and W) of a dummy input when ``batch`` is None.
        width (float | None): width multiplier for slimmable models (uses ``model.width_context``).
        resolution (int | None): RS-Net training resolution whose private BN is used; also the input
            size when ``input_size`` is left at its default.
        batch (Tensor | None): ``[N,3,H,W]`` real images; required for data-dependent models (SACT),
            whose MACs are then those of the active positions of this batch, per image.

    Returns:
        dict: ``params`` (int), ``macs`` (float, per image), and for SACT also ``macs_std`` and
        ``ponder_cost`` (mean over the batch, summed over stages).

    Raises:
        ValueError: ``width`` given for a non-slimmable model, or ``resolution`` for a non-RS model.
    """
    was_training = model.training
    model.eval()
    ctx = contextlib.ExitStack()
    if hasattr(model, 'probe_context'):
        # slimmable: MACs do not depend on BN statistics, so uncalibrated widths are counted too
        ctx.enter_context(model.probe_context())
    if width is not None:
        if not hasattr(model, 'width_context'):
            raise ValueError(f'{type(model).__name__} is not slimmable; width={width} is meaningless')
        ctx.enter_context(model.width_context(width))
    if resolution is not None:
        if not hasattr(model, 'resolution_context'):
            raise ValueError(f'{type(model).__name__} is not resolution-switchable; pass input_size instead')
        ctx.enter_context(model.resolution_context(resolution))
        if input_size == 224:
            input_size = resolution
    if batch is None:
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        batch = torch.zeros(1, 3, h, w)
    try:
        with ctx:
            out = {'params': count_params(model)}
            if hasattr(model, 'data_dependent_macs'):
                # SACT: MACs counted at active positions only (Figurnov et al. 2017, Sec. 3.3).
                out.update(model.data_dependent_macs(batch))
            else:
                out['macs'] = count_macs(model, batch) / batch.shape[0]
    finally:
        model.train(was_training)
    return out
