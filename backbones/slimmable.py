"""Universally slimmable backbones: US-Nets (Yu & Huang, ICCV 2019) and MutualNet (Yang et al., ECCV 2020).

One set of weights runs at any width multiplier ``w`` in ``width_range``: every layer uses the first
``make_divisible(C * w / ratio, 8) * ratio`` channels (:mod:`backbones.slimmable_ops`).  BN affine parameters
are shared; running statistics are private per *BN configuration* ``(width, resolution)``.

Models (registered in the ``'slimmable'`` family; all :class:`backbones.base.DynamicBackbone`):

* ``us_mobilenet_v1`` (US-Nets / MutualNet MobileNet v1, default range [0.25, 1]),
* ``us_mobilenet_v2`` (default range [0.35, 1]; the last 1x1 conv keeps 1280 channels, classifier a plain
  Linear),
* ``us_vgg16_bn`` (VGG-16 with BN, MutualNet Sec. 4.3 / App. A.2 detection backbone, range [0.25, 1]),
* ``us_resnet50`` (MutualNet ResNet-50, v1.5 (stride on the 3x3), range [0.25, 1]).

BN configurations (design).  ``model.set_width(w)`` selects width ``w`` and its width-only statistics
(US-Nets: one set per width).  ``model.set_width(w, resolution=r)`` selects the same weights with the
statistics calibrated for the pair ``(w, r)`` (MutualNet's ``ComputePostBN`` calibrates per width-resolution
pair).  The two are never mixed silently: evaluating a configuration without statistics raises ``ValueError``
naming :func:`calibrate_bn`.  ``width_list`` lists the widths with width-only statistics, ``bn_configs``
every stored ``(width, resolution)`` pair (``resolution=None`` for width-only).  Training at any width of the
range works: a configuration without statistics uses batch statistics (US-Nets trains only the listed
widths' statistics).

Also here: :func:`calibrate_bn` (post-statistics BN), :func:`export_static` (plain ``nn.Module`` at one
width), :class:`SandwichRule` / :class:`SubnetConfig` (sandwich rule and MutualNet width-resolution sampling),
:func:`inplace_distillation_loss`, and the ops re-exported from :mod:`backbones.slimmable_ops`
(:func:`make_divisible`, :class:`InputSlicedConv2d`, ...).
"""
import contextlib
import copy
import itertools
import math
import random
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._registry import register_model
from .base import DynamicBackbone, output_stride_dilations
from .slimmable_ops import (
    InputSlicedConv2d,
    SlimmableBatchNorm2d,
    SlimmableConv2d,
    SlimmableLinear,
    WidthAware,
    active_channels,
    config_key,
    make_divisible,
    normalize_width,
    parse_config_key,
)

__all__ = ['SlimmableBackbone', 'USMobileNetV1', 'USMobileNetV2', 'USVGG16BN', 'USResNet50',
           'us_mobilenet_v1', 'us_mobilenet_v2', 'us_vgg16_bn', 'us_resnet50',
           'calibrate_bn', 'export_static', 'SandwichRule', 'SubnetConfig', 'inplace_distillation_loss',
           'make_divisible', 'active_channels', 'config_key', 'InputSlicedConv2d', 'SlimmableConv2d',
           'SlimmableLinear', 'SlimmableBatchNorm2d']

_TOL = 1e-9


# ------------------------------------------------------------------------------------- building blocks
def _conv_bn(inp, oup, k, stride=1, dilation=1, depthwise=False, ratio=1.0, divisor=8, act=nn.ReLU6,
             slim_out=True, bias=False):
    """Slimmable conv -> slimmable BN (-> activation) as an ``nn.Sequential``."""
    pad = dilation * (k - 1) // 2
    layers = [SlimmableConv2d(inp, oup, k, stride, pad, dilation, bias=bias, depthwise=depthwise,
                              slim_out=slim_out, out_ratio=ratio, divisor=divisor),
              SlimmableBatchNorm2d(oup, ratio=ratio, divisor=divisor, slim=slim_out or depthwise)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


class DepthwiseSeparable(nn.Sequential):
    """MobileNet v1 unit: 3x3 depthwise and 1x1 pointwise conv-BN-ReLU6 (Howard et al. 2017, Fig. 3).

    ``[N, c_in(w), H, W] -> [N, c_out(w), H/stride, W/stride]``.
    """

    def __init__(self, inp, oup, stride, dilation=1, divisor=8):
        super().__init__(_conv_bn(inp, inp, 3, stride, dilation, depthwise=True, divisor=divisor),
                         _conv_bn(inp, oup, 1, divisor=divisor))


class InvertedResidual(nn.Module):
    """MobileNet v2 unit (Sandler et al. 2018, Table 1) with slimmable ops.

    1x1 expansion (``t != 1``; hidden channels use ``ratio = t`` so they stay ``t`` x the active input),
    3x3 depthwise, 1x1 linear projection; identity shortcut when ``stride == 1`` and ``inp == oup``.
    ``[N, c_in(w), H, W] -> [N, c_out(w), H/stride, W/stride]``.
    """

    def __init__(self, inp, oup, stride, expand_ratio, dilation=1, divisor=8):
        super().__init__()
        hidden = inp * expand_ratio
        layers = []
        if expand_ratio != 1:
            layers.append(_conv_bn(inp, hidden, 1, ratio=expand_ratio, divisor=divisor))
        layers.append(_conv_bn(hidden, hidden, 3, stride, dilation, depthwise=True, ratio=expand_ratio,
                               divisor=divisor))
        layers.append(_conv_bn(hidden, oup, 1, divisor=divisor, act=None))
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and inp == oup

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_residual else out


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3) as in MutualNet's ``resnet.Model`` (reference §3.1).

    Mid layers use ``ratio = 0.25`` so that at every width they are exactly a quarter of the output
    channels; projection shortcut (1x1 conv with the stride + BN) when the shape changes; post-add ReLU.
    ``[N, c_in(w), H, W] -> [N, c_out(w), H/stride, W/stride]``.
    """

    def __init__(self, inp, oup, stride=1, dilation=1, divisor=8):
        super().__init__()
        mid = oup // 4
        self.conv1 = SlimmableConv2d(inp, mid, 1, out_ratio=0.25, divisor=divisor)
        self.bn1 = SlimmableBatchNorm2d(mid, ratio=0.25, divisor=divisor)
        self.conv2 = SlimmableConv2d(mid, mid, 3, stride, dilation, dilation, out_ratio=0.25, divisor=divisor)
        self.bn2 = SlimmableBatchNorm2d(mid, ratio=0.25, divisor=divisor)
        self.conv3 = SlimmableConv2d(mid, oup, 1, divisor=divisor)
        self.bn3 = SlimmableBatchNorm2d(oup, divisor=divisor)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inp != oup:
            self.downsample = nn.Sequential(SlimmableConv2d(inp, oup, 1, stride, divisor=divisor),
                                            SlimmableBatchNorm2d(oup, divisor=divisor))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def _init_weights(model):
    """US-Nets / MutualNet init (reference §2.2).

    Conv ``N(0, sqrt(2 / (k * k * C_out)))`` (bias 0), BN ``(1, 0)``, Linear ``N(0, 0.01)`` (bias 0).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (SlimmableBatchNorm2d, nn.BatchNorm2d)) and getattr(m, 'weight', None) is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _check_norm_layer(norm_layer):
    if norm_layer not in (None, nn.BatchNorm2d):
        raise ValueError('slimmable backbones use SlimmableBatchNorm2d (shared affine, private statistics '
                         'per width); norm_layer must be None or nn.BatchNorm2d. Build the model, then '
                         'convert its BNs with nn.SyncBatchNorm.convert_sync_batchnorm / '
                         'FrozenBatchNorm2d.convert_frozen_batchnorm (the private statistics survive), got '
                         f'norm_layer={norm_layer!r}')


def _stage_strides(strides):
    out, s = [], 4
    for st in strides:
        s *= st
        out.append(s)
    return tuple(out)


# --------------------------------------------------------------------------------------------- base class
class SlimmableBackbone(DynamicBackbone):
    """Base class of the universally slimmable backbones (US-Nets Sec. 3; MutualNet Sec. 3).

    Attributes:
        width_range (tuple[float, float]): ``(w_min, w_max)``; any width inside runs.
        width (float): current width multiplier.
        resolution (int | None): resolution whose BN statistics are selected (``None``: width-only
            statistics).
        channel_divisor (int): ``make_divisible`` divisor (8).

    Subclasses build their layers, set ``self._stage_rules`` (4 ``(C_max, ratio)`` of the stage outputs)
    and call :meth:`_init_slimmable` then ``_init_dense``.
    """

    family = 'slimmable'
    channel_divisor = 8
    _static_config = None

    def _init_slimmable(self, width_range, width_list, divisor):
        try:
            lo, hi = (normalize_width(w) for w in width_range)
        except (TypeError, ValueError):
            raise ValueError(f'width_range must be (w_min, w_max), got {width_range!r}') from None
        if not 0 < lo <= hi:
            raise ValueError(f'width_range must satisfy 0 < w_min <= w_max, got {width_range!r}')
        self.width_range = (lo, hi)
        self.channel_divisor = divisor
        self.width, self.resolution = hi, None
        for entry in ((lo, hi) if width_list is None else width_list):
            w, r = entry if isinstance(entry, (tuple, list)) else (entry, None)
            self.add_bn_config(w, r)
        _init_weights(self)
        self.set_width(hi)

    # ----------------------------------------------------------------- width / BN configuration
    def _check_width(self, width):
        w = normalize_width(width)
        lo, hi = self.width_range
        if not lo - _TOL <= w <= hi + _TOL:
            raise ValueError(f'width multiplier {width} is outside the trained range [{lo}, {hi}] of '
                             f'{self.variant}; choose a width in [{lo}, {hi}]')
        return w

    @staticmethod
    def _check_resolution(resolution):
        if resolution is None:
            return None
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0:
            raise ValueError('resolution must be None or a positive int (input side in pixels), got '
                             f'{resolution!r}')
        return resolution

    def slimmable_bns(self):
        """The :class:`SlimmableBatchNorm2d` layers of the model (list)."""
        return [m for m in self.modules() if isinstance(m, SlimmableBatchNorm2d)]

    def set_width(self, width, resolution=None):
        """Run at width multiplier ``width`` with the BN statistics of ``(width, resolution)``.

        Args:
            width (float): in ``width_range`` (quantised to 1e-4).
            resolution (int | None): select statistics calibrated for this input resolution (MutualNet);
                ``None`` selects the width-only statistics (US-Nets).

        Returns:
            self

        Raises:
            ValueError: width outside ``width_range`` (the message names the range); bad resolution; a
                width other than the exported one on an :func:`export_static` model.
        """
        if self._static_config is not None:
            sw, sr = self._static_config
            if normalize_width(width) != sw or (resolution is not None and resolution != sr):
                raise ValueError(f'this model was exported by export_static at width {sw}'
                                 + ('' if sr is None else f', resolution {sr}')
                                 + '; it cannot switch width. Export again from the slimmable model.')
            return self
        w = self._check_width(width)
        r = self._check_resolution(resolution)
        for m in self.modules():
            if isinstance(m, WidthAware):
                m.set_active(w, r)
        self.width, self.resolution = w, r
        return self

    @contextlib.contextmanager
    def width_context(self, width, resolution=None):
        """Context manager: ``set_width(width, resolution)`` inside, the previous setting restored after."""
        saved = (self.width, self.resolution)
        self.set_width(width, resolution)
        try:
            yield self
        finally:
            self.set_width(*saved)

    @contextlib.contextmanager
    def resolution_context(self, resolution):
        """Context manager: keep the width, select the BN statistics of ``resolution`` (``complexity``)."""
        with self.width_context(self.width, resolution):
            yield self

    @contextlib.contextmanager
    def probe_context(self):
        """Context manager for counting MACs / checking shapes at configurations without statistics.

        Inside, an eval-mode forward at a configuration without private statistics normalises with mean 0 /
        var 1 instead of raising.  Outputs are *not* meaningful predictions; MACs and shapes are exact.
        """
        bns = self.slimmable_bns()
        saved = [bn.probe for bn in bns]
        for bn in bns:
            bn.probe = True
        try:
            yield self
        finally:
            for bn, p in zip(bns, saved):
                bn.probe = p

    def add_bn_config(self, width, resolution=None):
        """Create private statistics for ``(width, resolution)`` in every slimmable BN (no-op if present).

        Raises:
            ValueError: width outside ``width_range`` or bad resolution.
        """
        w = self._check_width(width)
        r = self._check_resolution(resolution)
        for bn in self.slimmable_bns():
            bn.add_config(w, r)

    @property
    def bn_configs(self):
        """Sorted tuple of the ``(width, resolution)`` pairs with private statistics in every slimmable BN."""
        if self._static_config is not None:
            return (self._static_config,)
        bns = self.slimmable_bns()
        if not bns:
            return ()
        keys = set(bns[0].private)
        for bn in bns[1:]:
            keys &= set(bn.private)
        pairs = [parse_config_key(k) for k in keys]
        return tuple(sorted(pairs, key=lambda p: (p[0], -1 if p[1] is None else p[1])))

    @property
    def width_list(self):
        """Sorted tuple of the widths with width-only private statistics (evaluable by ``set_width(w)``)."""
        return tuple(w for w, r in self.bn_configs if r is None)

    # ----------------------------------------------------------------- metadata
    def stage_channels(self):
        """Channels of the 4 stage outputs at the current width (list of int)."""
        return [active_channels(c, self.width, r, self.channel_divisor) for c, r in self._stage_rules]

    def extra_repr(self):
        return (super().extra_repr() + f', width={self.width}, resolution={self.resolution}, '
                f'width_range={self.width_range}')


def _common(num_classes, out_indices, frozen_stages, norm_eval, norm_layer):
    _check_norm_layer(norm_layer)
    if num_classes < 0:
        raise ValueError(f'num_classes must be >= 0 (0 = no head), got {num_classes}')


# --------------------------------------------------------------------------------------------- MobileNet v1
class USMobileNetV1(SlimmableBackbone):
    """US-MobileNet v1 (US-Nets Sec. 4.1; MutualNet Sec. 4.1), 4.232M parameters, 568.7M MACs at 1.0 / 224.

    Stem: 3x3/2 conv 32 (only its output slimmed), DW-separable 64 (/1), 128 (/2) -> stride 4.
    Stages (outputs at stride 4/8/16/32): [128], [256/2, 256], [512/2, 512 x5], [1024/2, 1024];
    head: global average pool + Linear(1024 -> classes) slimmed at its input (adaptive pooling: any size).

    Args:
        num_classes (int): 0 drops the head.
        width_range (tuple): default (0.25, 1.0).
        width_list (iterable): widths (or ``(width, resolution)`` pairs) with private BN statistics;
            default the range ends.
        output_stride (int): 32, 16 or 8 (dilated depthwise convs in the last stages).
        channel_divisor (int): 8 (MutualNet used 1 before July 2020).

    Raises:
        ValueError: bad width range/list, output stride, ``norm_layer`` or indices.
    """

    def __init__(self, num_classes=1000, out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False,
                 output_stride=32, norm_layer=None, width_range=(0.25, 1.0), width_list=None,
                 channel_divisor=8):
        super().__init__()
        _common(num_classes, out_indices, frozen_stages, norm_eval, norm_layer)
        d = channel_divisor
        strides, dilations, _ = output_stride_dilations(output_stride)
        self.variant = 'us_mobilenet_v1'
        self.stem = nn.Sequential(_conv_bn(3, 32, 3, 2, divisor=d), DepthwiseSeparable(32, 64, 1, divisor=d),
                                  DepthwiseSeparable(64, 128, 2, divisor=d))
        cfg = [(128, 1), (256, 2), (512, 6), (1024, 2)]
        stages, inp = [], 128
        for i, (c, n) in enumerate(cfg):
            units = [DepthwiseSeparable(inp if j == 0 else c, c, strides[i] if j == 0 else 1, dilations[i], d)
                     for j in range(n)]
            stages.append(nn.Sequential(*units))
            inp = c
        self.stages = nn.ModuleList(stages)
        self.head = None if num_classes == 0 else nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1), SlimmableLinear(1024, num_classes))
        self._stage_channels = [128, 256, 512, 1024]
        self._stage_rules = [(c, 1.0) for c in self._stage_channels]
        self._stage_strides = _stage_strides(strides)
        self._init_slimmable(width_range, width_list, d)
        self._init_dense(out_indices, frozen_stages, norm_eval)


# --------------------------------------------------------------------------------------------- MobileNet v2
class USMobileNetV2(SlimmableBackbone):
    """US-MobileNet v2 (US-Nets Sec. 4.1; MutualNet), 3.505M parameters, 300.8M MACs at 1.0 / 224.

    Stem: 3x3/2 conv 32, IR(t1, 16), IR(t6, 24, /2) -> stride 4.  Stages (outputs 24/32/96/320 at stride
    4/8/16/32): [IR 24], [IR 32 /2, x3], [IR 64 /2 x4, IR 96 x3], [IR 160 /2 x3, IR 320].  Head: 1x1 conv to
    1280 channels that is **not slimmed** (only its input), BN, ReLU6, global average pool, plain Linear.

    The head BN keeps 1280 channels at every width but, unlike the authors' plain BN, has private
    statistics per width like every other BN: its input distribution changes with width, and a single shared
    set would be overwritten by each calibration (parameters are identical).

    Args:
        num_classes (int): 0 drops the head (and the 1280 conv).
        width_range (tuple): default (0.35, 1.0).
        width_list (iterable): widths (or ``(width, resolution)`` pairs) with private statistics; default
            the range ends.
        output_stride (int): 32, 16 or 8 (stride removed and depthwise convs dilated in the last stages, as
            DeepLabV3 MobileNet v2).
        dropout (float): dropout before the classifier (0: none, as US-Nets).
        channel_divisor (int): 8.

    Raises:
        ValueError: bad width range/list, output stride, ``norm_layer`` or indices.
    """

    def __init__(self, num_classes=1000, out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False,
                 output_stride=32, norm_layer=None, width_range=(0.35, 1.0), width_list=None, dropout=0.0,
                 channel_divisor=8):
        super().__init__()
        _common(num_classes, out_indices, frozen_stages, norm_eval, norm_layer)
        d = channel_divisor
        strides, dilations, _ = output_stride_dilations(output_stride)
        self.variant = 'us_mobilenet_v2'
        self.stem = nn.Sequential(_conv_bn(3, 32, 3, 2, divisor=d), InvertedResidual(32, 16, 1, 1, divisor=d),
                                  InvertedResidual(16, 24, 2, 6, divisor=d))
        # (t, c, n) per group; the first group of each stage carries the stage stride
        cfg = [[(6, 24, 1)], [(6, 32, 3)], [(6, 64, 4), (6, 96, 3)], [(6, 160, 3), (6, 320, 1)]]
        stages, inp = [], 24
        for i, groups in enumerate(cfg):
            units = []
            for g, (t, c, n) in enumerate(groups):
                for j in range(n):
                    s = strides[i] if (g == 0 and j == 0) else 1
                    units.append(InvertedResidual(inp, c, s, t, dilations[i], d))
                    inp = c
            stages.append(nn.Sequential(*units))
        self.stages = nn.ModuleList(stages)
        if num_classes == 0:
            self.head = None
        else:
            layers = [_conv_bn(320, 1280, 1, divisor=d, slim_out=False), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(1)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(1280, num_classes))
            self.head = nn.Sequential(*layers)
        self._stage_channels = [24, 32, 96, 320]
        self._stage_rules = [(c, 1.0) for c in self._stage_channels]
        self._stage_strides = _stage_strides(strides)
        self._init_slimmable(width_range, width_list, d)
        self._init_dense(out_indices, frozen_stages, norm_eval)


# --------------------------------------------------------------------------------------------- VGG-16 BN
class USVGG16BN(SlimmableBackbone):
    """Universally slimmable VGG-16 with BN (MutualNet Sec. 4.3, App. A.2: its COCO Mask R-CNN-FPN backbone).

    Grouping into 4 stages (the layout of mmcv's ``VGG``, i.e. the MMDetection backbone the paper used, with
    its out_indices (1, 2, 3, 4)): each VGG block is its 3x3 convs (conv-BN-ReLU, conv bias as torchvision)
    followed by its 2x2 max-pool.

    * stem: block 1 (conv1_1, conv1_2: 64) + pool1 -> stride 2 (VGG has no stride-4 stem);
    * stage1: block 2 (128 x2) + pool2 -> stride 4;  stage2: block 3 (256 x3) + pool3 -> stride 8;
    * stage3: block 4 (512 x3) + pool4 -> stride 16; stage4: block 5 (512 x3) + pool5 -> stride 32.

    The max-pools use ``ceil_mode=True`` so that stage ``i`` is ``ceil(H / stride)`` like the other families
    (identical to torchvision at sizes divisible by 32).

    Head (torchvision ``vgg16_bn``): adaptive 7x7 average pool, Linear(512*7*7 -> 4096) slimmed at its input,
    ReLU, Dropout, Linear(4096, 4096), ReLU, Dropout, Linear(4096, classes) — 138.37M parameters with the
    head, 14.73M without.  Only ``output_stride=32``.

    Args:
        num_classes (int): 0 drops the head (dense prediction).
        width_range (tuple): default (0.25, 1.0).
        width_list (iterable): widths (or ``(width, resolution)`` pairs) with private statistics; default
            the range ends.
        dropout (float): classifier dropout (0.5, torchvision).

    Raises:
        ValueError: output stride other than 32; bad width range/list, ``norm_layer`` or indices.
    """

    def __init__(self, num_classes=1000, out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False,
                 output_stride=32, norm_layer=None, width_range=(0.25, 1.0), width_list=None, dropout=0.5,
                 channel_divisor=8):
        super().__init__()
        _common(num_classes, out_indices, frozen_stages, norm_eval, norm_layer)
        if output_stride != 32:
            raise ValueError(f'us_vgg16_bn supports output_stride=32 only (pooling), got {output_stride}')
        d = channel_divisor
        self.variant = 'us_vgg16_bn'
        blocks, inp = [], 3
        for c, n in [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]:
            layers = []
            for _ in range(n):
                layers.append(_conv_bn(inp, c, 3, divisor=d, act=nn.ReLU, bias=True))
                inp = c
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            blocks.append(nn.Sequential(*layers))
        self.stem = blocks[0]
        self.stages = nn.ModuleList(blocks[1:])
        self.head = None if num_classes == 0 else nn.Sequential(
            nn.AdaptiveAvgPool2d(7), nn.Flatten(1), SlimmableLinear(512 * 7 * 7, 4096), nn.ReLU(True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes))
        self._stage_channels = [128, 256, 512, 512]
        self._stage_rules = [(c, 1.0) for c in self._stage_channels]
        self._stage_strides = (4, 8, 16, 32)
        self._init_slimmable(width_range, width_list, d)
        self._init_dense(out_indices, frozen_stages, norm_eval)

    def check_input(self, x):
        """Raise ValueError unless ``x`` is ``[N, 3, H, W]`` with H, W >= 32 (five 2x2 max-pools)."""
        super().check_input(x)
        if min(x.shape[-2:]) < 32:
            raise ValueError(f'us_vgg16_bn needs H, W >= 32 (five 2x2 max-pools), got {tuple(x.shape[-2:])}')


# --------------------------------------------------------------------------------------------- ResNet-50
class USResNet50(SlimmableBackbone):
    """MutualNet ResNet-50 (reference §3.1), v1.5, 25.557M parameters, 4.089G MACs at 1.0 / 224.

    Stem: 7x7/2 conv 64 (output ratio 0.25, so it equals the first mid width) + BN + ReLU + 3x3/2 max-pool.
    Stages: bottlenecks [3, 4, 6, 3] with outputs 256/512/1024/2048 (mid = output / 4 at every width,
    ratio 0.25).  Head: global average pool + Linear(2048 -> classes) slimmed at its input.

    Args:
        num_classes (int): 0 drops the head.
        width_range (tuple): default (0.25, 1.0) (MutualNet's own recipe trains [0.9, 1.0]).
        width_list (iterable): widths (or ``(width, resolution)`` pairs) with private statistics; default
            the range ends.
        output_stride (int): 32, 16 or 8 (DeepLabV3 dilation; every unit of a dilated stage uses its rate).
        multi_grid (tuple[int]): 3 unit multipliers of the last stage's dilation (DeepLabV3 Sec. 3.2).

    Raises:
        ValueError: bad output stride, multi_grid, width range/list, ``norm_layer`` or indices.
    """

    def __init__(self, num_classes=1000, out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False,
                 output_stride=32, norm_layer=None, width_range=(0.25, 1.0), width_list=None,
                 multi_grid=(1, 1, 1), channel_divisor=8):
        super().__init__()
        _common(num_classes, out_indices, frozen_stages, norm_eval, norm_layer)
        if len(tuple(multi_grid)) != 3:
            raise ValueError(f'multi_grid needs 3 entries (units of the last stage), got {multi_grid!r}')
        d = channel_divisor
        strides, dilations, grid = output_stride_dilations(output_stride, tuple(multi_grid))
        self.variant = 'us_resnet50'
        self.stem = nn.Sequential(SlimmableConv2d(3, 64, 7, 2, 3, out_ratio=0.25, divisor=d),
                                  SlimmableBatchNorm2d(64, ratio=0.25, divisor=d), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        stages, inp = [], 64
        for i, (c, n) in enumerate([(256, 3), (512, 4), (1024, 6), (2048, 3)]):
            units = []
            for j in range(n):
                dil = grid[j] if i == 3 else dilations[i]
                units.append(Bottleneck(inp, c, strides[i] if j == 0 else 1, dil, d))
                inp = c
            stages.append(nn.Sequential(*units))
        self.stages = nn.ModuleList(stages)
        self.head = None if num_classes == 0 else nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1), SlimmableLinear(2048, num_classes))
        self._stage_channels = [256, 512, 1024, 2048]
        self._stage_rules = [(c, 1.0) for c in self._stage_channels]
        self._stage_strides = _stage_strides(strides)
        self._init_slimmable(width_range, width_list, d)
        self._init_dense(out_indices, frozen_stages, norm_eval)


# --------------------------------------------------------------------------------------------- registry
@register_model('slimmable')
def us_mobilenet_v1(**kwargs):
    """US-MobileNet v1 / MutualNet MobileNet v1, width range [0.25, 1] (see :class:`USMobileNetV1`)."""
    return USMobileNetV1(**kwargs)


@register_model('slimmable')
def us_mobilenet_v2(**kwargs):
    """US-MobileNet v2 / MutualNet MobileNet v2, width range [0.35, 1] (see :class:`USMobileNetV2`)."""
    return USMobileNetV2(**kwargs)


@register_model('slimmable')
def us_vgg16_bn(**kwargs):
    """Slimmable VGG-16-BN for MutualNet detection, width range [0.25, 1] (see :class:`USVGG16BN`)."""
    return USVGG16BN(**kwargs)


@register_model('slimmable')
def us_resnet50(**kwargs):
    """MutualNet ResNet-50 (v1.5), width range [0.25, 1] (see :class:`USResNet50`)."""
    return USResNet50(**kwargs)


# ------------------------------------------------------------------------------------ post-statistics BN
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
    if num_batches is not None and num_batches < 1:
        raise ValueError(f'num_batches must be >= 1 or None, got {num_batches}')
    nets = [m for m in model.modules() if isinstance(m, SlimmableBackbone) and m._static_config is None]
    if (width is not None or resolution is not None) and not nets:
        raise ValueError('calibrate_bn(width=..., resolution=...) needs a model that contains a '
                         'SlimmableBackbone; for a static model call calibrate_bn(model, batches) without '
                         'width/resolution')
    device = next((p.device for p in model.parameters()), torch.device('cpu'))
    modes = {m: m.training for m in model.modules()}
    stack = contextlib.ExitStack()
    with stack:
        for net in nets:
            w = net.width if width is None else width
            r = net.resolution if resolution is None else resolution
            stack.enter_context(net.width_context(w, r))
        bns = [bn for net in nets for bn in net.slimmable_bns()]
        model.eval()
        if bns:
            targets = []
            for bn in bns:
                stats = bn.add_config(bn.width, bn.resolution)
                if not isinstance(stats, _BatchNorm):
                    raise ValueError(f'the statistics {bn.key!r} are frozen ({type(stats).__name__}); '
                                     'calibrate before converting to FrozenBatchNorm2d')
                targets.append(stats)
                bn.train()
        else:
            targets = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
            if not targets:
                raise ValueError('calibrate_bn found no BN layer with running statistics in the model')
        momenta = [t.momentum for t in targets]
        try:
            for t in targets:
                t.reset_running_stats()
                t.momentum = None
                t.train()
            seen = 0
            for batch in itertools.islice(batches, num_batches):
                x = _batch_tensor(batch).to(device)
                if resolution is not None:
                    x = _resize(x, resolution)
                model(x)
                seen += 1
            if seen == 0:
                raise ValueError('calibrate_bn got no batch to forward (empty iterable)')
        finally:
            for t, mom in zip(targets, momenta):
                t.momentum = mom
            for m, mode in modes.items():
                m.training = mode
            for bn in bns:  # statistics created by this call take their owner's mode
                for stats in bn.private.values():
                    if stats not in modes:
                        stats.train(bn.training)
    return model


# --------------------------------------------------------------------------------------------- export
@torch.no_grad()
def export_static(model, width, resolution=None):
    """A plain-module copy of a slimmable backbone at one width (and BN configuration).

    Every :class:`SlimmableConv2d` / :class:`SlimmableLinear` / :class:`SlimmableBatchNorm2d` is replaced by
    an ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` holding the sliced weights and a copy of the private
    statistics of ``(width, resolution)``; the block structure (residuals, pooling, heads) is kept, so
    ``forward``/``forward_features``/``feature_info`` behave as before.  The result is output-identical to
    ``model`` at that configuration in eval mode, traceable with ``torch.jit.trace`` at a fixed input size,
    and returned in eval mode.  Its ``set_width`` accepts only the exported width.

    Args:
        model (SlimmableBackbone): the slimmable model (left unchanged).
        width (float): width multiplier in ``model.width_range``.
        resolution (int | None): BN statistics of ``(width, resolution)`` (``None``: width-only statistics).

    Returns:
        SlimmableBackbone: a static copy (only plain ``nn`` layers inside).

    Raises:
        ValueError: not a slimmable backbone; width outside the range; no private statistics for that
            configuration (run :func:`calibrate_bn` first; the message says so).
    """
    if not isinstance(model, SlimmableBackbone):
        raise ValueError(f'export_static needs a SlimmableBackbone, got {type(model).__name__}')
    if model._static_config is not None:
        raise ValueError('this model is already static (exported)')
    w = model._check_width(width)
    r = model._check_resolution(resolution)
    net = copy.deepcopy(model)
    net.set_width(w, r)
    for bn in net.slimmable_bns():
        bn.static_bn()  # raises the calibrate_bn ValueError before any work when statistics are missing
    net.eval()
    # record the input channels each sliced layer sees at this width (one probe forward, every stage + head)
    in_ch, hooks = {}, []
    for name, m in net.named_modules():
        if isinstance(m, (SlimmableConv2d, SlimmableLinear)):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, inp, name=name: in_ch.__setitem__(name, inp[0].shape)))
    saved_idx = net.out_indices
    net.out_indices = (0, 1, 2, 3)
    p = next(net.parameters())
    try:
        net(torch.zeros(1, 3, 64, 64, device=p.device, dtype=p.dtype))
    finally:
        net.out_indices = saved_idx
        for h in hooks:
            h.remove()

    def take(t):
        return None if t is None else nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)

    for name, m in list(net.named_modules()):
        if isinstance(m, SlimmableConv2d):
            ci = in_ch[name][1]
            co = ci if m.depthwise else m.active_out
            # built on the meta device (no init work), then given the sliced weights
            new = nn.Conv2d(ci, co, m.kernel_size, m.stride, m.padding, m.dilation, ci if m.depthwise else 1,
                            bias=m.bias is not None, device='meta')
            new.weight = take(m.weight[:co] if m.depthwise else m.weight[:co, :ci])
            new.bias = take(None if m.bias is None else m.bias[:co])
        elif isinstance(m, SlimmableLinear):
            fi = in_ch[name][-1]
            new = nn.Linear(fi, m.out_features, bias=m.bias is not None, device='meta')
            new.weight = take(m.weight[:, :fi])
            new.bias = take(m.bias)
        elif isinstance(m, SlimmableBatchNorm2d):
            new = m.static_bn()
        else:
            continue
        parent_name, _, child = name.rpartition('.')
        setattr(net.get_submodule(parent_name) if parent_name else net, child, new)
    net._static_config = (w, r)
    net.width_range = (w, w)
    return net.eval()


# ------------------------------------------------------------------------------------- training helpers
class SubnetConfig(NamedTuple):
    """One sub-network of a sandwich-rule step.

    Attributes:
        width (float): width multiplier.
        resolution (int | None): input resolution (``None``: the batch as loaded, US-Nets).
        is_teacher (bool): the max-width network (trained with labels; its logits teach the others).
    """
    width: float
    resolution: Optional[int]
    is_teacher: bool


class SandwichRule:
    """Sub-network sampler of US-Nets (sandwich rule, Sec. 3.2) and MutualNet (width-resolution, Sec. 3.2).

    Each :meth:`sample` returns ``num_subnets`` configurations: ``[max width at max resolution (teacher),
    min width, num_subnets - 2 widths ~ U(w_min, w_max)]``.  With ``resolutions`` (MutualNet) every
    non-teacher sub-network draws its resolution independently and uniformly from ``resolutions`` (the max
    included, and the min width is not tied to the min resolution, as MutualNet's code); the teacher always
    uses ``max_resolution``.  Without ``resolutions`` (US-Nets) every resolution is ``max_resolution``
    (default ``None``: the batch as is).

    Args:
        width_range (tuple[float, float]): ``(w_min, w_max)`` (e.g. ``model.width_range``).
        num_subnets (int): >= 2 (4 in both papers).
        resolutions (Iterable[int] | None): MutualNet resolution list, e.g. (224, 192, 160, 128).
        max_resolution (int | None): teacher resolution; default ``max(resolutions)``.
        seed (int | None): seed of the private ``random.Random`` (reproducible sampling).

    Raises:
        ValueError: ``num_subnets < 2``, a bad width range, or non-positive resolutions.
    """

    def __init__(self, width_range, num_subnets=4, resolutions=None, max_resolution=None, seed=None):
        lo, hi = (normalize_width(w) for w in width_range)
        if not 0 < lo <= hi:
            raise ValueError(f'width_range must satisfy 0 < w_min <= w_max, got {width_range!r}')
        if int(num_subnets) != num_subnets or num_subnets < 2:
            raise ValueError(f'num_subnets must be an int >= 2 (max and min width), got {num_subnets}')
        if resolutions is not None:
            resolutions = tuple(int(r) for r in resolutions)
            if not resolutions or min(resolutions) <= 0:
                raise ValueError(f'resolutions must be positive ints, got {resolutions!r}')
            if max_resolution is None:
                max_resolution = max(resolutions)
        if max_resolution is not None and max_resolution <= 0:
            raise ValueError(f'max_resolution must be a positive int, got {max_resolution!r}')
        self.width_range = (lo, hi)
        self.num_subnets = int(num_subnets)
        self.resolutions = resolutions
        self.max_resolution = max_resolution
        self._rng = random.Random(seed)

    def sample(self):
        """One step's sub-networks: ``list[SubnetConfig]`` (teacher, min width, then random widths)."""
        lo, hi = self.width_range
        widths = [lo] + [normalize_width(self._rng.uniform(lo, hi)) for _ in range(self.num_subnets - 2)]
        out = [SubnetConfig(hi, self.max_resolution, True)]
        for w in widths:
            r = self._rng.choice(self.resolutions) if self.resolutions else self.max_resolution
            out.append(SubnetConfig(w, r, False))
        return out

    __call__ = sample

    def __repr__(self):
        return (f'SandwichRule(width_range={self.width_range}, num_subnets={self.num_subnets}, '
                f'resolutions={self.resolutions}, max_resolution={self.max_resolution})')


def inplace_distillation_loss(student_logits, teacher_logits):
    """Inplace distillation (US-Nets Sec. 3.3; MutualNet eq. 3): ``KL(p_teacher || p_student)``.

    The teacher is detached (no gradient reaches it), temperature 1, ``batchmean`` reduction (sum over
    classes, mean over the batch; for dense logits ``[N, C, H, W]`` the mean runs over every position).

    Args:
        student_logits (Tensor): ``[N, C]`` or ``[N, C, ...]``.
        teacher_logits (Tensor): same shape (the max-width network's logits).

    Returns:
        Tensor: scalar loss.

    Raises:
        ValueError: shapes differ or fewer than 2 dimensions.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 2:
        raise ValueError(f'student and teacher logits must have the same shape [N, C, ...], got '
                         f'{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}')
    s, t = student_logits, teacher_logits.detach()
    if s.dim() > 2:
        c = s.shape[1]
        s = s.movedim(1, -1).reshape(-1, c)
        t = t.movedim(1, -1).reshape(-1, c)
    return F.kl_div(F.log_softmax(s, dim=1), F.softmax(t, dim=1), reduction='batchmean')
