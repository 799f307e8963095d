"""Pre-activation ResNet-v2 with ACT / SACT stages and its registered factories (``'sact'`` family).

:class:`PreActBottleneck` (the unit, with its sparse residual for SACT's eval mode), :class:`PreActResNet`
(stem, four :class:`~backbones.sact.halting.ACTStage` s, post-norm and classifier; dense-prediction features
and ponder costs per forward) and the ``preact_resnet*``, ``act_resnet*``, ``sact_resnet*`` variants
(Figurnov et al., CVPR 2017, Sec. 2-4; reference Sec. 5.5).
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import register_model
from ..base import DynamicBackbone, classifier_head, output_stride_dilations
from .halting import EXECUTION_MODES, ACTStage, _default_norm
from .macs import data_dependent_macs
from .ponder import set_halting_bias
from .sparse import _dilate_mask, _eval_affine, _Gather3x3, _index_add_rows, _rows


# ----------------------------------------------------------------------------------------------------
# the unit
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
        feature_preact (bool): features of stages 1-3 pass through the next unit's BN+ReLU (see the
            :mod:`backbones.sact` docstring).
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
    def forward_stages(self, x):
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
        return self._forward_stages(x)[0]

    def _forward_stages(self, x, all_stages=False):
        """``(features, head input)`` for ``forward_stages`` and ``forward``: the features dict and the
        post-norm BN+ReLU of stage 4 (what :meth:`forward_head` takes; None when the stages stop earlier
        without a head and without ``all_stages``).  Sets :attr:`ponder_costs`."""
        self.check_input(x)
        x = self.stem(x)
        out = OrderedDict()
        last = max(self.out_indices) if (self.out_indices and self.head is None and not all_stages) else 3
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
        return out, pre

    def __getstate__(self):
        # the last forward's ponder costs are non-leaf tensors: not part of the module's state (deepcopy, pickle)
        state = self.__dict__.copy()
        state['ponder_costs'] = []
        return state

    def forward_with_ponder(self, x):
        """``(output, ponder_costs)``: logits (or the features dict when ``num_classes=0``) and the list of
        per-stage ponder-cost maps (``[N, h, w]`` SACT, ``[N]`` ACT; empty for the plain network)."""
        out = self.forward(x)
        return out, list(self.ponder_costs)

    # ------------------------------------------------------------------------------------------- MACs
    def data_dependent_macs(self, batch):
        """MACs of an eval forward of ``batch`` counted at the running positions (reference Sec. 5.4/5.7).

        See :func:`backbones.sact.macs.data_dependent_macs` for the counting rules and the returned dict
        (``macs``, ``macs_std``, ``macs_per_image``, ``ponder_cost``, ``units_per_stage``, ``convention``).
        """
        return data_dependent_macs(self, batch)


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
