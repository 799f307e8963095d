"""Ponder cost utilities of ACT / SACT (Figurnov et al. 2017, eq. 7-8; reference Sec. 5.3, 5.7).

:func:`ponder_loss` (the ``tau``-weighted ponder term of the loss), :func:`ponder_cost_map` (visualisation)
and :func:`set_halting_bias` (force or sweep halting in tests and benchmarks).
"""
import math

import torch
import torch.nn.functional as F

from .halting import ACTHalting, SACTHalting


def ponder_loss(ponder_costs, tau):
    """Ponder cost term of the loss: ``tau * sum over stages of mean(rho)`` (Figurnov et al. 2017, eq. 8;
    the mean is over images, and over positions for SACT; reference Sec. 5.3).

    Args:
        ponder_costs (list[Tensor]): per-stage maps ``[N]`` or ``[N, h, w]`` (``model.ponder_costs``).
        tau (float): ponder cost weight (ImageNet release 0.005, CIFAR 0.01).

    Returns:
        Tensor: scalar (0 for an empty list).

    Raises:
        ValueError: negative ``tau``.
    """
    if tau < 0:
        raise ValueError(f'tau must be >= 0, got {tau}')
    if not ponder_costs:
        return torch.zeros(())
    return tau * sum(r.mean() for r in ponder_costs)


def ponder_cost_map(ponder_costs, size):
    """Ponder-cost map for visualisation: each stage's ``[N, h, w]`` map resized nearest-neighbour to
    ``size`` (H, W) and summed over stages (reference Sec. 5.7).  ACT ``[N]`` costs broadcast.

    Returns:
        Tensor: ``[N, H, W]``.

    Raises:
        ValueError: empty list.
    """
    if not ponder_costs:
        raise ValueError('no ponder costs: run a forward of an act_* / sact_* model first')
    total = 0
    for r in ponder_costs:
        r = r.detach()
        if r.dim() == 1:
            r = r[:, None, None]
        total = total + F.interpolate(r[:, None].float().expand(-1, 1, *r.shape[1:]), size=size,
                                      mode='nearest')[:, 0]
    return total


def set_halting_bias(model, value):
    """Set the bias of every halting branch of ``model`` to ``value`` (no gradient).

    Used to force halting in tests and to sweep the ponder cost in ``tools/benchmark.py``: with zero
    halting weights (fresh model) h = sigmoid(value) everywhere.

    Raises:
        ValueError: ``model`` has no halting branches (plain network); a NaN or infinite ``value``.
        TypeError: ``value`` is not a real number.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            torch.is_tensor(value) and value.numel() == 1):
        raise TypeError(f'the halting bias is a number (e.g. -3.0, the initialisation; +5 halts after the first '
                        f'unit), got {value!r}')
    if not math.isfinite(float(value)):
        raise ValueError(f'the halting bias must be finite, got {float(value)}: a NaN bias makes every halting score '
                         f'NaN; pass e.g. -3.0 (the initialisation)')
    found = False
    for m in model.modules():
        if isinstance(m, (ACTHalting, SACTHalting)):
            m.set_bias(value)
            found = True
    if not found:
        raise ValueError(f'{type(model).__name__} has no halting branches; use an act_* or sact_* model')
