"""Sparse execution helpers of SACT: evaluating a unit only at the positions that have not halted.

Figurnov et al., CVPR 2017, Sec. 3 (SACT skips the computation of halted positions); reference Sec. 5.6.
Channels-last row views and index-add updates (:func:`_rows`, :func:`_index_add_rows`,
:func:`_index_add_images`), the 3x3 footprint of a mask (:func:`_dilate_mask`), a 3x3 convolution as a
gather over neighbourhoods (:class:`_Gather3x3`) and eval-mode norms folded to per-channel affine maps
(:func:`_eval_affine`).  Used by :mod:`backbones.sact.halting` and :mod:`backbones.sact.model`.
"""
import torch
import torch.nn.functional as F
from torch import nn


def _eval_affine(norm):
    """``(scale, shift)`` (each ``[C]``) if ``norm`` is a per-channel affine map in its current mode, else None.

    True for BatchNorm/SyncBatchNorm in eval mode with running statistics and detectron2's
    ``FrozenBatchNorm2d``.  GroupNorm/LayerNorm-like layers (statistics over positions) return None.
    """
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        if norm.training or norm.running_mean is None:
            return None
    elif not (type(norm).__name__ == 'FrozenBatchNorm2d' and hasattr(norm, 'running_var')):
        return None
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if getattr(norm, 'weight', None) is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if getattr(norm, 'bias', None) is not None:
        shift = shift + norm.bias
    return scale, shift


def _rows(t):
    """``[N, C, H, W]`` channels-last tensor -> ``[N*H*W, C]`` view (in-place writes reach ``t``)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _index_add_rows(t, idx, values, inplace):
    """Add ``values`` ``[P, C]`` to the rows ``idx`` of channels-last ``t`` ``[N, C, H, W]``; returns ``t``."""
    n, c, h, w = t.shape
    if inplace and t.is_contiguous(memory_format=torch.channels_last):
        _rows(t).index_add_(0, idx, values)
        return t
    return _rows(t).index_add(0, idx, values).view(n, h, w, c).permute(0, 3, 1, 2)


def _index_add_images(t, idx, values, inplace):
    """``t[idx] += values`` along the batch dimension (``idx`` None: all images); returns ``t``."""
    if idx is None:
        return t.add_(values) if inplace else t + values
    return t.index_add_(0, idx, values) if inplace else t.index_add(0, idx, values)


def _dilate_mask(mask, dilation):
    """Positions read by a 3x3 conv (dilation ``dilation``) evaluated at ``mask`` ``[N, H, W]`` (bool)."""
    n, h, w = mask.shape
    d = dilation
    padded = F.pad(mask, (d, d, d, d))
    out = torch.zeros_like(mask)
    for di in (0, d, 2 * d):
        for dj in (0, d, 2 * d):
            out |= padded[:, di:di + h, dj:dj + w]
    return out


class _Gather3x3:
    """Index arithmetic of a 3x3 conv (dilation d, zero padding d) evaluated at a subset of positions.

    Rows are flat positions ``n*H*W + i*W + j`` of an ``[N, H, W]`` grid.  ``gather(values_src)`` returns
    ``[P_dst, 9, C]``: for each destination position the 9 neighbours (kernel order ``(kh, kw)``) from
    ``values_src`` ``[P_src, C]`` given at ``idx_src``; neighbours outside the image read zero (SAME
    padding).  The caller guarantees that every in-image neighbour of ``idx_dst`` is in ``idx_src``.
    """

    def __init__(self, shape, idx_src, idx_dst, dilation):
        n, h, w = shape
        d = dilation
        self.hp, self.wp = h + 2 * d, w + 2 * d
        dev = idx_src.device
        self.n_src = idx_src.numel()
        lookup = torch.full((n * self.hp * self.wp,), self.n_src, dtype=torch.long, device=dev)
        lookup[self._padded(idx_src, h, w, d)] = torch.arange(self.n_src, device=dev)
        offs = torch.tensor([di * d * self.wp + dj * d for di in (-1, 0, 1) for dj in (-1, 0, 1)], device=dev)
        self.nbr = lookup[self._padded(idx_dst, h, w, d)[:, None] + offs]  # [P_dst, 9]

    def _padded(self, idx, h, w, d):
        img, r = idx // (h * w), idx % (h * w)
        return img * (self.hp * self.wp) + (r // w + d) * self.wp + (r % w + d)

    def gather(self, values_src):
        ext = torch.cat([values_src, values_src.new_zeros(1, values_src.shape[1])], 0)
        return ext[self.nbr]
