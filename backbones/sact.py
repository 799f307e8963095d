"""Pre-activation ResNet-v2 with Adaptive Computation Time (ACT) and Spatially Adaptive Computation Time (SACT).

Figurnov et al., "Spatially Adaptive Computation Time for Residual Networks", CVPR 2017 (the paper's
Sec. 2 gives ACT for one block of residual units, Sec. 3 its per-position version SACT); architecture and
conventions follow ``../shared/reference/official_implementations.md`` Sec. 5 (facts of ``mfigurnov/sact``).

Network (Sec. 5.5 of the reference): conv1 7x7/2 (no BN/ReLU), max-pool 3x3/2, four stages ("blocks") of
pre-activation bottleneck units (BN+ReLU -> 1x1 -> BN+ReLU -> 3x3 (stride) -> BN+ReLU -> 1x1; the shortcut
is the identity or a 1x1 conv on the pre-activation), down-sampling in the *first* unit of stages 2-4 on
the 3x3 conv, a final post-norm BN+ReLU, global average pooling and a linear classifier.  Units per
stage: [3, 4, 6, 3] (ResNet-50), [3, 4, 23, 3] (ResNet-101); output depths 256/512/1024/2048.
Convolutions have no bias (TF-Slim gives the un-normalised convs a bias; we drop it so that the layout is
the one of timm's ``resnetv2_50`` and the counted MACs are unaffected).

Each stage is one ACT module over its L units (reference Sec. 5.1-5.3):

* the first unit always runs; a halting score h_t in (0, 1) follows every unit t < L; h_L = 1;
* ACT: h_t = sigmoid(W . BN(GAP(x_t)) + b) per image; SACT: h_t(i, j) = sigmoid(conv3x3(BN(x_t))(i, j) + b
  + W_g . BN(GAP(x_t))) per position (SAME padding, bias b only on the local conv); b is initialised to
  -3 (h ~ 0.047) and the halting weights to zero (our choice; the reference gives only the bias);
* with eps = 0.01: N = min{n : sum_{t<=n} h_t >= 1 - eps} (or L), remainder R = 1 - sum_{t<N} h_t,
  halting distribution p_t = h_t (t < N), p_N = R, 0 after;
* stage output = sum_t p_t * x_t (per position for SACT), ponder cost rho = N + R where N carries no
  gradient (paper eq. 7-8; only R is differentiable);
* SACT: a unit t > 1 updates only the positions that have not halted yet (x_t = x_{t-1} + m_t * F_t(x_{t-1})
  with m_t the mask of still-running positions); halted positions keep their state.

Execution (:attr:`PreActResNet.execution`):

* training mode: a dense masked computation (every unit on every position, residuals multiplied by the
  mask; BN sees all positions, as in the authors' code); a stage still stops early once *every* position
  of the batch has halted (this changes nothing in outputs or gradients);
* eval mode actually skips work: ``'image'`` runs a unit only on the images that still have running
  positions (ACT always runs this way: a stage ends when every image has halted); ``'gather'`` (SACT)
  computes the unit only at the running positions: the first 1x1 conv on the running mask dilated by the
  3x3 footprint of the second conv, the 3x3 conv as a matrix product over gathered 3x3 neighbourhoods and
  the last 1x1 conv at the running positions, results scattered back into the (channels-last) state;
  ``'auto'`` (default) picks ``'image'`` while more than :attr:`gather_threshold` of the positions run and
  ``'gather'`` below; ``'dense'`` is the dense masked reference.  All of them give the output of the dense
  masked computation within float tolerance (tests/test_sact.py).  ``'gather'`` needs normalisation
  layers that are per-channel affine maps in eval mode (BatchNorm, SyncBatchNorm, FrozenBatchNorm2d);
  other norms fall back to ``'image'``.

Dense-prediction features: the stage output of a pre-activation network is an un-normalised residual
stream, so :meth:`PreActResNet.forward_features` returns each stage output passed through the BN+ReLU
that follows it in the network: for stages 1-3 the pre-activation of the next stage's first unit (the same
tensor that unit consumes, computed once), for stage 4 the final post-norm BN+ReLU (timm's ResNetV2 feature
extraction does the same).  ``feature_preact=False`` returns the raw ACT-weighted stage outputs for stages
1-3 instead (stage 4 keeps the post-norm).

MACs (:meth:`PreActResNet.data_dependent_macs`) follow the authors' ``flopsometer`` (reference Sec. 5.4,
5.7): multiply-accumulates of convolutions and the classifier, counted at the running positions only
(conv2 and conv3 on the running mask, conv1 on that mask dilated by a 3x3 max-pool, halting convs at the
positions they are evaluated for); the paper reports FLOPs = 2 x MACs.
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model
from .base import DynamicBackbone, classifier_head, output_stride_dilations

__all__ = ['PreActBottleneck', 'ACTHalting', 'SACTHalting', 'ACTStage', 'PreActResNet', 'ponder_loss',
           'ponder_cost_map', 'set_halting_bias', 'halting_distribution', 'EXECUTION_MODES']

#: execution strategies of an ACT/SACT stage in eval mode (see the module docstring)
EXECUTION_MODES = ('auto', 'dense', 'image', 'gather')
MAC_CONVENTION = 'MACs (FLOPs = 2 x MACs in the SACT paper)'


# ----------------------------------------------------------------------------------------------------
# helpers
def _default_norm(channels):
    return nn.BatchNorm2d(channels)


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


def _norm_pooled(norm, v):
    """Apply ``norm`` to globally pooled features ``v`` ``[N, C, 1, 1]``.

    A BatchNorm in training mode cannot take batch statistics of a single vector (PyTorch raises; TF's
    batch_norm would return its offset); for a batch of one image the running statistics are used instead
    (and not updated).  Every other case is ``norm(v)``.
    """
    if (v.shape[0] == 1 and norm.training and isinstance(norm, nn.modules.batchnorm._BatchNorm)
            and norm.running_mean is not None):
        return F.batch_norm(v, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
    return norm(v)


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


# ----------------------------------------------------------------------------------------------------
# units and halting branches
class PreActBottleneck(nn.Module):
    """Pre-activation (ResNet-v2) bottleneck unit, stride on the 3x3 conv (reference Sec. 5.5).

    ``pre = ReLU(norm1(x))``; residual ``conv3(ReLU(norm3(conv2(ReLU(norm2(conv1(pre)))))))``; shortcut
    ``x`` or ``downsample(pre)`` (1x1 conv, stride) when the depth or the stride changes.

    Args:
        in_channels (int): input channels C_in.
        depth (int): output channels (4 x bottleneck width).
        stride (int): 1 or 2 (on the 3x3 conv and the shortcut).
        dilation (int): dilation (and padding) of the 3x3 conv (output stride 16/8).
        norm_layer (callable): ``C -> norm module``.

    Shapes: ``[N, C_in, H, W] -> [N, depth, ceil(H/stride), ceil(W/stride)]``.
    """

    def __init__(self, in_channels, depth, stride=1, dilation=1, norm_layer=_default_norm):
        super().__init__()
        mid = depth // 4
        self.in_channels, self.depth, self.mid = in_channels, depth, mid
        self.stride, self.dilation = stride, dilation
        self.norm1 = norm_layer(in_channels)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.norm2 = norm_layer(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.norm3 = norm_layer(mid)
        self.conv3 = nn.Conv2d(mid, depth, 1, bias=False)
        self.downsample = (nn.Conv2d(in_channels, depth, 1, stride=stride, bias=False)
                           if in_channels != depth or stride != 1 else None)

    def preact(self, x):
        """``ReLU(norm1(x))``, the pre-activation shared by the residual branch and a projection shortcut."""
        y = self.norm1(x)
        return F.relu(y, inplace=y is not x)  # in place unless the norm returned its input (nn.Identity)

    def residual(self, pre):
        """Residual branch on the pre-activation ``pre`` ``[N, C_in, H, W]``."""
        y = self.conv1(pre)
        z = self.norm2(y)
        y = self.conv2(F.relu(z, inplace=z is not y))
        z = self.norm3(y)
        return self.conv3(F.relu(z, inplace=z is not y))

    def forward(self, x, pre=None):
        """Unit output ``shortcut + residual``; ``pre`` may pass a precomputed :meth:`preact` of ``x``."""
        if pre is None:
            pre = self.preact(x)
        shortcut = x if self.downsample is None else self.downsample(pre)
        return shortcut + self.residual(pre)

    def residual_sparse(self, x_rows, mask, inplace):
        """Residual branch at the running positions only (eval mode; per-channel affine norms).

        Args:
            x_rows (Tensor): ``[N, C, H, W]`` channels-last state (identity shortcut: C = depth).
            mask (Tensor): ``[N, H, W]`` bool, positions to update.
            inplace (bool): update ``x_rows`` in place (no autograd).

        Returns:
            Tensor: the state with ``residual`` added at ``mask`` (the dense masked result), or None when
            a normalisation layer is not a per-channel affine map (caller falls back to dense).
        """
        aff = [_eval_affine(n) for n in (self.norm1, self.norm2, self.norm3)]
        if any(a is None for a in aff) or self.downsample is not None or self.stride != 1:
            return None
        (s1, b1), (s2, b2), (s3, b3) = aff
        n, c, h, w = x_rows.shape
        flat = mask.reshape(-1)
        wide = _dilate_mask(mask, self.dilation).reshape(-1)
        idx_a = flat.nonzero().squeeze(1)
        idx_d = wide.nonzero().squeeze(1)
        x = _rows(x_rows)
        pre = F.relu(x.index_select(0, idx_d) * s1 + b1)
        y1 = F.relu(torch.mm(pre, self.conv1.weight.view(self.mid, c).t()) * s2 + b2)
        g = _Gather3x3((n, h, w), idx_d, idx_a, self.dilation).gather(y1)  # [Pa, 9, mid]
        w2 = self.conv2.weight.permute(0, 2, 3, 1).reshape(self.mid, 9 * self.mid)
        y2 = F.relu(torch.mm(g.reshape(-1, 9 * self.mid), w2.t()) * s3 + b3)
        y3 = torch.mm(y2, self.conv3.weight.view(self.depth, self.mid).t())
        return _index_add_rows(x_rows, idx_a, y3, inplace)


class ACTHalting(nn.Module):
    """Per-image halting score of ACT (reference Sec. 5.2): ``h = sigmoid(W . norm(GAP(x)) + b)``.

    Args:
        channels (int): channels C of the unit output.
        norm_layer (callable): ``C -> norm module`` (applied to ``[N, C, 1, 1]``; see :func:`_norm_pooled`
            for a batch of one image in training mode).
        bias_init (float): initial b (-3: h ~ 0.047).

    Shapes: ``[N, C, H, W] -> [N, 1, 1]`` in (0, 1).
    """

    spatial = False

    def __init__(self, channels, norm_layer=_default_norm, bias_init=-3.0):
        super().__init__()
        self.norm = norm_layer(channels)
        self.fc = nn.Conv2d(channels, 1, 1, bias=True)
        nn.init.zeros_(self.fc.weight)
        nn.init.constant_(self.fc.bias, bias_init)

    def set_bias(self, value):
        """Set the halting bias b (in place, no gradient)."""
        with torch.no_grad():
            self.fc.bias.fill_(value)

    def forward(self, x):
        return torch.sigmoid(self.fc(_norm_pooled(self.norm, x.mean((2, 3), keepdim=True))))[:, 0]


class SACTHalting(nn.Module):
    """Per-position halting score of SACT (reference Sec. 5.2).

    ``h(i, j) = sigmoid(conv3x3(norm_local(x))(i, j) + b + W_g . norm_global(GAP(x)))``: a 3x3 conv C -> 1
    with SAME padding and bias b, plus a bias-free 1x1 conv on the globally pooled features broadcast over
    space.

    Args:
        channels (int): channels C of the unit output.
        norm_layer (callable): ``C -> norm module``.
        bias_init (float): initial b of the local conv (-3: h ~ 0.047).

    Shapes: ``[N, C, H, W] -> [N, H, W]`` in (0, 1).
    """

    spatial = True

    def __init__(self, channels, norm_layer=_default_norm, bias_init=-3.0):
        super().__init__()
        self.norm_local = norm_layer(channels)
        self.conv_local = nn.Conv2d(channels, 1, 3, padding=1, bias=True)
        self.norm_global = norm_layer(channels)
        self.conv_global = nn.Conv2d(channels, 1, 1, bias=False)
        for m in (self.conv_local, self.conv_global):
            nn.init.zeros_(m.weight)
        nn.init.constant_(self.conv_local.bias, bias_init)

    def set_bias(self, value):
        """Set the halting bias b of the local conv (in place, no gradient)."""
        with torch.no_grad():
            self.conv_local.bias.fill_(value)

    def global_logit(self, x):
        """``W_g . norm_global(GAP(x))`` -> ``[N, 1, 1]``."""
        return self.conv_global(_norm_pooled(self.norm_global, x.mean((2, 3), keepdim=True)))[:, 0]

    def forward(self, x):
        aff = None if self.training else _eval_affine(self.norm_local)
        if aff is None:
            local = self.conv_local(self.norm_local(x))[:, 0]
        else:
            local = self._local_folded(x, *aff)
        return torch.sigmoid(local + self.global_logit(x))

    def _local_folded(self, x, scale, shift):
        """``conv_local(norm_local(x))`` for an affine norm without the normalised copy of ``x``.

        The 3x3 conv with zero padding is written as 9 per-tap 1x1 convs (one GEMM with 9 outputs, the norm
        folded into the weights) whose outputs are shifted and summed; taps falling outside the image
        contribute zero, exactly as the SAME padding of the normalised input.  ``[N, C, H, W] -> [N, H, W]``.
        """
        n, c, h, w = x.shape
        wk = self.conv_local.weight[0].permute(1, 2, 0).reshape(9, c)  # taps in (kh, kw) order
        z = F.conv2d(x, (wk * scale).view(9, c, 1, 1), wk @ shift)
        z = F.pad(z, (1, 1, 1, 1))
        out = self.conv_local.bias.view(1, 1, 1).expand(n, h, w).clone()
        for k in range(9):
            di, dj = divmod(k, 3)
            out += z[:, k, di:di + h, dj:dj + w]
        return out

    def forward_sparse(self, x_rows, mask):
        """Halting scores at ``mask`` only (eval mode, per-channel affine norms).

        Args:
            x_rows (Tensor): ``[N, C, H, W]`` channels-last unit output.
            mask (Tensor): ``[N, H, W]`` bool.

        Returns:
            tuple: ``(h, idx)`` with ``h`` ``[P]`` the scores at the flat positions ``idx`` ``[P]`` of
            ``mask``, or None when a norm is not a per-channel affine map.
        """
        aff_l, aff_g = _eval_affine(self.norm_local), _eval_affine(self.norm_global)
        if aff_l is None or aff_g is None:
            return None
        n, c, h, w = x_rows.shape
        idx_a = mask.reshape(-1).nonzero().squeeze(1)
        idx_s = _dilate_mask(mask, 1).reshape(-1).nonzero().squeeze(1)
        x = _rows(x_rows)
        xs = x.index_select(0, idx_s) * aff_l[0] + aff_l[1]
        g = _Gather3x3((n, h, w), idx_s, idx_a, 1).gather(xs).reshape(-1, 9 * c)
        wl = self.conv_local.weight.permute(0, 2, 3, 1).reshape(1, 9 * c)
        local = torch.mm(g, wl.t())[:, 0] + self.conv_local.bias
        imgs = mask.reshape(n, -1).any(1).nonzero().squeeze(1)
        pooled = x_rows.index_select(0, imgs).mean((2, 3)) * aff_g[0] + aff_g[1]  # [Ni, C]
        glob = torch.zeros(n, dtype=x.dtype, device=x.device)
        glob[imgs] = torch.mm(pooled, self.conv_global.weight.view(1, c).t())[:, 0]
        return torch.sigmoid(local + glob[idx_a // (h * w)]), idx_a


# ----------------------------------------------------------------------------------------------------
# the ACT module
def halting_distribution(h_list, eps=0.01):
    """ACT halting rule on a list of halting scores (paper eqs. 2-5; reference Sec. 5.3).

    Args:
        h_list (list[Tensor]): ``L`` tensors of equal shape (e.g. ``[N]`` or ``[N, H, W]``) with scores in
            [0, 1]; the last one is ignored (h_L = 1).
        eps (float): halting threshold margin, halting when the cumulative score reaches ``1 - eps``.

    Returns:
        tuple: ``(p, n_units, remainder, rho)``: ``p`` ``[L, *shape]`` the halting distribution (sums to 1
        over the first dim), ``n_units`` N (float, no gradient), ``remainder`` R and the ponder cost
        ``rho = N + R`` (gradient through R only).

    Raises:
        ValueError: empty ``h_list``.
    """
    if not h_list:
        raise ValueError('halting_distribution needs at least one halting score tensor')
    cum = torch.zeros_like(h_list[0])
    alive = torch.ones_like(h_list[0], dtype=torch.bool)
    n_units = torch.zeros_like(cum)
    rem = torch.zeros_like(cum)
    ps = []
    for t, h in enumerate(h_list):
        last = t == len(h_list) - 1
        p, cum, rem, halt_now = _act_step(h, cum, rem, alive, eps, last)
        n_units = n_units + alive.to(cum.dtype)
        alive = alive & ~halt_now
        ps.append(p)
    return torch.stack(ps), n_units, rem, n_units + rem


def _act_step(h, cum, rem, alive, eps, last):
    """One ACT step: returns ``(p_t, cum, remainder, halt_now)`` (``h`` ignored when ``last``)."""
    if last:
        halt_now = alive
        new_cum = cum
    else:
        new_cum = cum + h
        halt_now = alive & (new_cum >= 1.0 - eps)
    zero = torch.zeros_like(cum)
    p = torch.where(halt_now, 1.0 - cum, zero if last else torch.where(alive, h, zero))
    rem = torch.where(halt_now, 1.0 - cum, rem)
    cum = torch.where(alive, new_cum, cum)
    return p, cum, rem, halt_now


class ACTStage(nn.Module):
    """One stage ("block") of pre-activation bottleneck units run as an ACT / SACT module.

    Args:
        units (list[PreActBottleneck]): the L units; the first may stride / project.
        act (str): ``'none'`` (plain stage, every unit), ``'act'`` (per-image halting) or ``'sact'``
            (per-position halting).
        norm_layer (callable): norm of the halting branches.
        eps (float): ACT threshold margin (0.01).
        halting_bias (float): initial halting bias (-3).

    Attributes set by :meth:`forward` (None for ``'none'``):
        ponder_cost (Tensor): rho = N + R, ``[N]`` (ACT) or ``[N, h, w]`` (SACT), gradient through R.
        n_units (Tensor): N, same shape (no gradient).
        unit_masks (list[Tensor]): for each executed unit t >= 2, the bool mask of the positions/images that
            ran it (``[N, h, w]`` or ``[N, 1, 1]``); used to count MACs.
        input_hw (tuple): spatial size of the stage input.

    Shapes: ``[N, C_in, H, W] -> [N, depth, H/s, W/s]``.
    """

    def __init__(self, units, act='sact', norm_layer=_default_norm, eps=0.01, halting_bias=-3.0):
        super().__init__()
        if act not in ('none', 'act', 'sact'):
            raise ValueError(f"act must be 'none', 'act' or 'sact', got {act!r}")
        self.units = nn.ModuleList(units)
        self.act = act
        self.eps = eps
        self.execution = 'auto'
        self.gather_threshold = 0.4
        depth = units[-1].depth
        if act == 'none':
            self.halting = None
        else:
            cls = SACTHalting if act == 'sact' else ACTHalting
            self.halting = nn.ModuleList([cls(depth, norm_layer, halting_bias) for _ in range(len(units) - 1)])
        self.ponder_cost = self.n_units = None
        self.unit_masks = []
        self.input_hw = None

    # -------------------------------------------------------------------------------------------
    def __getstate__(self):
        # the last forward's ponder cost is a non-leaf tensor: not part of the module's state (deepcopy, pickle)
        state = self.__dict__.copy()
        state['ponder_cost'] = state['n_units'] = None
        return state

    def forward(self, x, pre=None):
        """Run the stage; ``pre`` is an optional precomputed ``units[0].preact(x)``."""
        self.input_hw = tuple(x.shape[-2:])
        state = self.units[0](x, pre)
        if self.act == 'none':
            for u in self.units[1:]:
                state = u(state)
            self.ponder_cost = self.n_units = None
            self.unit_masks = []
            return state
        if self.training or self.execution == 'dense':
            return self._forward_dense(state)
        return self._forward_sparse(state)

    def _halting_shape(self, state):
        n, _, h, w = state.shape
        return (n, h, w) if self.act == 'sact' else (n, 1, 1)

    def _forward_dense(self, state):
        """Dense masked computation (training; the reference for the sparse paths)."""
        shape = self._halting_shape(state)
        cum = state.new_zeros(shape)
        rem = state.new_zeros(shape)
        n_units = state.new_zeros(shape)
        alive = torch.ones(shape, dtype=torch.bool, device=state.device)
        out = None
        masks = []
        L = len(self.units)
        for t in range(L):
            if t > 0:
                if not bool(alive.any()):
                    break
                masks.append(alive)
                m = alive.unsqueeze(1).to(state.dtype)
                state = state + m * self.units[t].residual(self.units[t].preact(state))
            last = t == L - 1
            h = None if last else self.halting[t](state)
            p, cum, rem, halt_now = _act_step(h, cum, rem, alive, self.eps, last)
            contrib = p.unsqueeze(1) * state
            out = contrib if out is None else out + contrib
            n_units = n_units + alive.to(state.dtype)
            alive = alive & ~halt_now
        return self._finish(out, n_units, rem, masks)

    def _finish(self, out, n_units, rem, masks):
        rho = n_units + rem
        if self.act == 'act':
            rho, n_units, masks = rho[:, 0, 0], n_units[:, 0, 0], masks
        self.ponder_cost, self.n_units, self.unit_masks = rho, n_units, masks
        return out

    def _choose(self, alive):
        if self.act == 'act' or self.execution == 'image':
            return 'image'
        if self.execution == 'gather':
            return 'gather'
        frac = alive.float().mean().item()
        return 'image' if frac > self.gather_threshold else 'gather'

    @torch.no_grad()
    def _alive_images(self, alive):
        imgs = alive.reshape(alive.shape[0], -1).any(1)
        return None if bool(imgs.all()) else imgs.nonzero().squeeze(1)

    def _forward_sparse(self, state):
        """Eval-mode computation that skips halted images (``'image'``) or positions (``'gather'``)."""
        inplace = not torch.is_grad_enabled()
        if self.act == 'sact':
            state = state.contiguous(memory_format=torch.channels_last)
        shape = self._halting_shape(state)
        cum = state.new_zeros(shape)
        rem = state.new_zeros(shape)
        n_units = state.new_zeros(shape)
        alive = torch.ones(shape, dtype=torch.bool, device=state.device)
        masks = []
        L = len(self.units)
        out = None
        for t in range(L):
            last = t == L - 1
            idx_pos = idx_img = None  # which rows / images were updated by this unit
            mode = 'dense'
            if t > 0:
                if not bool(alive.any()):
                    break
                masks.append(alive)
                unit = self.units[t]
                mode = self._choose(alive)
                new_state = None
                if mode == 'gather':
                    new_state = unit.residual_sparse(state, alive, inplace)
                    if new_state is None:
                        mode = 'image'
                    else:
                        idx_pos = alive.reshape(-1).nonzero().squeeze(1)
                if mode == 'image':
                    idx_img = self._alive_images(alive)
                    sub = state if idx_img is None else state.index_select(0, idx_img)
                    res = unit.residual(unit.preact(sub))
                    if self.act == 'sact':
                        a = (alive if idx_img is None else alive.index_select(0, idx_img)).unsqueeze(1)
                        if inplace and idx_img is None:  # fused masked update
                            new_state = state.addcmul_(res, a.to(res.dtype))
                        else:
                            res = res * a.to(res.dtype)
                    if new_state is None:
                        new_state = _index_add_images(state, idx_img, res, inplace)
                state = new_state
            h = None
            if not last:
                h = self._halting_eval(t, state, alive, mode, idx_img)
            p, cum, rem, halt_now = _act_step(h, cum, rem, alive, self.eps, last)
            # out += p * state, only where p can be non-zero (the positions / images that ran this unit)
            if out is None:
                out = p.unsqueeze(1) * state
                if self.act == 'sact':
                    out = out.contiguous(memory_format=torch.channels_last)
            elif mode == 'gather':
                x = _rows(state)
                out = _index_add_rows(out, idx_pos, p.reshape(-1, 1)[idx_pos] * x.index_select(0, idx_pos),
                                      inplace)
            elif inplace and idx_img is None:
                out.addcmul_(p.unsqueeze(1), state)
            else:
                ps = p if idx_img is None else p.index_select(0, idx_img)
                st = state if idx_img is None else state.index_select(0, idx_img)
                out = _index_add_images(out, idx_img, ps.unsqueeze(1) * st, inplace)
            n_units = n_units + alive.to(state.dtype)
            alive = alive & ~halt_now
        return self._finish(out, n_units, rem, masks)

    def _halting_eval(self, t, state, alive, mode, idx_img):
        """Halting scores after unit t (full shape; values matter only where ``alive``)."""
        halt = self.halting[t]
        if mode == 'gather':
            res = halt.forward_sparse(state, alive)
            if res is not None:
                hs, idx = res
                h = state.new_zeros(alive.shape)
                h.view(-1)[idx] = hs
                return h
            idx_img = self._alive_images(alive)
        if idx_img is None:
            return halt(state)
        h = state.new_zeros(alive.shape)
        h[idx_img] = halt(state.index_select(0, idx_img))
        return h


# ----------------------------------------------------------------------------------------------------
# the network
class PreActResNet(DynamicBackbone):
    """Pre-activation ResNet-v2 bottleneck network, plain or with ACT / SACT stages (Figurnov et al. 2017).

    Args:
        layers (tuple[int]): units per stage, e.g. (3, 4, 6, 3).
        act (str): ``'none'``, ``'act'`` or ``'sact'``.
        num_classes (int): classifier outputs (0: no head, features only).
        out_indices, frozen_stages, norm_eval: see :class:`backbones.base.DynamicBackbone`.
        output_stride (int): 32, 16 or 8 (dilated 3x3 convs in the last stages, DeepLabV3).
        multi_grid (tuple[int] | None): per-unit dilation multipliers of the last stage (length 3) when
            ``output_stride < 32``.
        norm_layer (callable | None): ``C -> norm module`` (default ``nn.BatchNorm2d``).
        eps (float): ACT threshold margin (0.01).
        halting_bias (float): initial halting bias (-3).
        execution (str): eval-mode execution, one of :data:`EXECUTION_MODES`.
        feature_preact (bool): features of stages 1-3 pass through the next unit's BN+ReLU (see module
            docstring).
        tau (float): ponder cost weight the training recipes use (attribute only; :func:`ponder_loss`
            takes tau explicitly).

    Attributes:
        ponder_costs (list[Tensor]): set by each forward, one ponder-cost map per executed stage
            (``[N, h, w]`` SACT, ``[N]`` ACT); empty for the plain network.

    Raises:
        ValueError: bad ``act``, ``output_stride``, ``multi_grid``, ``execution`` or ``out_indices``.
    """

    family = 'sact'

    def __init__(self, layers, act='sact', num_classes=1000, out_indices=(0, 1, 2, 3), frozen_stages=-1,
                 norm_eval=False, output_stride=32, multi_grid=None, norm_layer=None, eps=0.01,
                 halting_bias=-3.0, execution='auto', feature_preact=True, tau=0.01, variant=None):
        super().__init__()
        if act not in ('none', 'act', 'sact'):
            raise ValueError(f"act must be 'none', 'act' or 'sact', got {act!r}")
        if multi_grid is None:
            multi_grid = (1,) * layers[3]
        multi_grid = tuple(multi_grid)
        if len(multi_grid) != layers[3]:
            raise ValueError(f'multi_grid needs one multiplier per unit of the last stage ({layers[3]}), '
                             f'got {multi_grid}')
        strides, dilations, grid = output_stride_dilations(output_stride, multi_grid)
        if output_stride == 32 and any(m != 1 for m in multi_grid):
            raise ValueError('multi_grid applies to dilated last stages only; use output_stride 16 or 8')
        norm_layer = norm_layer or _default_norm
        self.act, self.layers, self.variant = act, tuple(layers), variant
        self.eps, self.tau, self.output_stride = eps, tau, output_stride
        self.feature_preact = feature_preact
        self.stem = nn.Sequential(OrderedDict([
            ('conv', nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)),
            ('pool', nn.MaxPool2d(3, stride=2, padding=1))]))
        depths = (256, 512, 1024, 2048)
        stages, cin = [], 64
        for i, (n, depth) in enumerate(zip(layers, depths)):
            units = []
            for j in range(n):
                dil = grid[j] if i == 3 else dilations[i]
                units.append(PreActBottleneck(cin, depth, strides[i] if j == 0 else 1, dil, norm_layer))
                cin = depth
            stages.append(ACTStage(units, act, norm_layer, eps, halting_bias))
        self.stages = nn.ModuleList(stages)
        self.norm = norm_layer(2048)  # post-norm BN+ReLU before pooling
        self.head = classifier_head(2048, num_classes)
        self._stage_channels = depths
        self._stage_strides = tuple(4 * math.prod(strides[:i + 1]) for i in range(4))
        self.num_classes = num_classes
        self.ponder_costs = []
        self._init_weights()
        self.execution = execution
        self._init_dense(out_indices, frozen_stages, norm_eval)

    def _init_weights(self):
        # variance scaling (fan-in, factor 2) as TF-Slim's resnet_arg_scope; halting branches keep their init
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and '.halting.' not in f'.{name}.':
                nn.init.kaiming_normal_(m.weight, mode='fan_in', nonlinearity='relu')
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------------------- options
    @property
    def execution(self):
        """Eval-mode execution of the ACT/SACT stages, one of :data:`EXECUTION_MODES`."""
        return self._execution

    @execution.setter
    def execution(self, mode):
        if mode not in EXECUTION_MODES:
            raise ValueError(f'execution must be one of {EXECUTION_MODES}, got {mode!r}')
        self._execution = mode
        for s in self.stages:
            s.execution = mode

    def set_halting_bias(self, value):
        """Set the bias of every halting branch (e.g. +5 to force early halting in tests/benchmarks)."""
        set_halting_bias(self, value)

    # ------------------------------------------------------------------------------------------- forward
    def forward_features(self, x):
        """Stage features for dense heads and the ponder costs.

        Args:
            x (Tensor): ``[N, 3, H, W]`` normalised images.

        Returns:
            OrderedDict[str, Tensor]: ``'stage{i+1}' -> [N, C_i, ceil(H/s_i), ceil(W/s_i)]`` for i in
            ``out_indices``: BN+ReLU of the ACT-weighted stage output (stages 1-3: the next unit's
            pre-activation, raw if ``feature_preact=False``; stage 4: the post-norm).  Also sets
            :attr:`ponder_costs` (one map per executed stage).

        Raises:
            ValueError: input not ``[N, 3, H, W]``.
        """
        self.check_input(x)
        x = self.stem(x)
        out = OrderedDict()
        last = max(self.out_indices) if (self.out_indices and self.head is None) else 3
        costs = []
        pre = None
        for i, stage in enumerate(self.stages):
            x = stage(x, pre)
            if stage.ponder_cost is not None:
                costs.append(stage.ponder_cost)
            more = i < last
            pre = None
            if i == 3:
                pre = F.relu(self.norm(x))
                feat = pre
            elif more or (i in self.out_indices and self.feature_preact):
                pre = self.stages[i + 1].units[0].preact(x)
                feat = pre if self.feature_preact else x
            else:
                feat = x
            if i in self.out_indices:
                out[f'stage{i + 1}'] = feat
            if not more:
                break
        self.ponder_costs = costs
        self._last_stage_output = pre
        return out

    def forward_with_ponder(self, x):
        """``(output, ponder_costs)``: logits (or the features dict when ``num_classes=0``) and the list of
        per-stage ponder-cost maps (``[N, h, w]`` SACT, ``[N]`` ACT; empty for the plain network)."""
        out = self.forward(x)
        return out, list(self.ponder_costs)

    # ------------------------------------------------------------------------------------------- MACs
    @torch.no_grad()
    def data_dependent_macs(self, batch):
        """MACs of an eval forward of ``batch`` counted at the running positions (reference Sec. 5.4/5.7).

        conv1 7x7 and the classifier dense; the first unit of every stage dense; a later unit t: conv1
        (1x1) on its running mask dilated by the 3x3 footprint of conv2, conv2 and conv3 on the mask;
        halting branches after unit t < L at the positions that ran unit t (SACT: 9C per position plus
        C per image for the global term; ACT: C per image).  BN, ReLU, pooling, additions and biases are
        not counted.

        Args:
            batch (Tensor): ``[N, 3, H, W]`` images.

        Returns:
            dict: ``macs`` (mean per image, float), ``macs_std`` (std over images), ``macs_per_image``
            (list), ``ponder_cost`` (mean over images of the sum over stages of the mean ponder cost; None
            for the plain network), ``units_per_stage`` (mean N per stage, averaged over positions and
            images), ``convention``.
        """
        was_training = self.training
        self.eval()
        try:
            self.forward(batch)
        finally:
            self.train(was_training)
        n = batch.shape[0]
        dev = batch.device
        macs = torch.zeros(n, dtype=torch.float64, device=dev)
        conv = self.stem.conv
        h0, w0 = (batch.shape[2] + 2 * 3 - 7) // 2 + 1, (batch.shape[3] + 2 * 3 - 7) // 2 + 1
        macs += conv.in_channels * conv.out_channels * 49 * h0 * w0
        units_per_stage = []
        last = max(self.out_indices) if (self.out_indices and self.head is None) else 3
        for i, stage in enumerate(self.stages[:last + 1]):
            u0 = stage.units[0]
            hi, wi = stage.input_hw
            s = u0.stride
            ho, wo = (hi - 1) // s + 1, (wi - 1) // s + 1
            dense = u0.in_channels * u0.mid * hi * wi + 9 * u0.mid * u0.mid * ho * wo + u0.mid * u0.depth * ho * wo
            if u0.downsample is not None:
                dense += u0.in_channels * u0.depth * ho * wo
            macs += dense
            c = u0.depth
            if stage.act == 'none':
                for u in stage.units[1:]:
                    macs += (u.in_channels * u.mid + 9 * u.mid * u.mid + u.mid * u.depth) * ho * wo
                units_per_stage.append(float(len(stage.units)))
                continue
            full = torch.ones(n, ho, wo, dtype=torch.bool, device=dev)
            halt_masks = [full] + list(stage.unit_masks)
            for t, m in enumerate(stage.unit_masks, start=1):
                u = stage.units[t]
                if stage.act == 'act':
                    cnt = m.reshape(n).to(torch.float64) * (ho * wo)
                    macs += cnt * (u.in_channels * u.mid + 9 * u.mid * u.mid + u.mid * u.depth)
                else:
                    cnt = m.reshape(n, -1).sum(1).to(torch.float64)
                    wide = _dilate_mask(m, u.dilation).reshape(n, -1).sum(1).to(torch.float64)
                    macs += wide * u.in_channels * u.mid + cnt * (9 * u.mid * u.mid + u.mid * u.depth)
            for t, m in enumerate(halt_masks):
                if t >= len(stage.units) - 1:
                    break
                if stage.act == 'act':
                    macs += m.reshape(n, -1).any(1).to(torch.float64) * c
                else:
                    m = m.expand(n, ho, wo)
                    macs += m.reshape(n, -1).sum(1).to(torch.float64) * 9 * c
                    macs += m.reshape(n, -1).any(1).to(torch.float64) * c
            units_per_stage.append(stage.n_units.float().mean().item())
        if self.head is not None:
            lin = self.head[-1]
            macs += lin.in_features * lin.out_features
        ponder = None
        if self.ponder_costs:
            ponder = sum(r.reshape(n, -1).mean(1) for r in self.ponder_costs).mean().item()
        return {'macs': macs.mean().item(), 'macs_std': macs.std(unbiased=False).item(),
                'macs_per_image': macs.tolist(), 'ponder_cost': ponder, 'units_per_stage': units_per_stage,
                'convention': MAC_CONVENTION}


# ----------------------------------------------------------------------------------------------------
# losses and utilities
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
        ValueError: ``model`` has no halting branches (plain network).
    """
    found = False
    for m in model.modules():
        if isinstance(m, (ACTHalting, SACTHalting)):
            m.set_bias(value)
            found = True
    if not found:
        raise ValueError(f'{type(model).__name__} has no halting branches; use an act_* or sact_* model')


# ----------------------------------------------------------------------------------------------------
# registered variants
def _build(name, layers, act, kwargs):
    return PreActResNet(layers, act=act, variant=name, **kwargs)


@register_model('sact')
def preact_resnet50(**kwargs):
    """Plain pre-activation ResNet-50 ([3, 4, 6, 3]); 4.089 G MACs at 224 (8.18 GFLOPs)."""
    return _build('preact_resnet50', (3, 4, 6, 3), 'none', kwargs)


@register_model('sact')
def preact_resnet101(**kwargs):
    """Plain pre-activation ResNet-101 ([3, 4, 23, 3]); 7.801 G MACs at 224 (15.60 GFLOPs)."""
    return _build('preact_resnet101', (3, 4, 23, 3), 'none', kwargs)


@register_model('sact')
def act_resnet50(**kwargs):
    """Pre-activation ResNet-50 with per-image ACT in every stage (Figurnov et al. 2017, Sec. 2)."""
    return _build('act_resnet50', (3, 4, 6, 3), 'act', kwargs)


@register_model('sact')
def act_resnet101(**kwargs):
    """Pre-activation ResNet-101 with per-image ACT in every stage (Figurnov et al. 2017, Sec. 2)."""
    return _build('act_resnet101', (3, 4, 23, 3), 'act', kwargs)


@register_model('sact')
def sact_resnet50(**kwargs):
    """Pre-activation ResNet-50 with per-position SACT in every stage (Figurnov et al. 2017, Sec. 3)."""
    return _build('sact_resnet50', (3, 4, 6, 3), 'sact', kwargs)


@register_model('sact')
def sact_resnet101(**kwargs):
    """Pre-activation ResNet-101 with per-position SACT in every stage (Figurnov et al. 2017, Sec. 3)."""
    return _build('sact_resnet101', (3, 4, 23, 3), 'sact', kwargs)
