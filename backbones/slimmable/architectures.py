"""The universally slimmable networks and their registered factories (``'slimmable'`` family).

* :class:`USMobileNetV1` (US-Nets Sec. 4.1; MutualNet Sec. 4.1), :class:`USMobileNetV2` (US-Nets Sec. 4.1),
  :class:`USVGG16BN` (MutualNet Sec. 4.3, App. A.2), :class:`USResNet50` (MutualNet ResNet-50 v1.5);
* their building blocks: :class:`DepthwiseSeparable` (MobileNet v1), :class:`InvertedResidual` (MobileNet
  v2), :class:`Bottleneck` (ResNet v1.5), made of the slimmable ops of :mod:`backbones.slimmable.ops`;
* the factories ``us_mobilenet_v1``, ``us_mobilenet_v2``, ``us_vgg16_bn``, ``us_resnet50`` registered on
  ``import backbones``.
"""
from torch import nn

from .._registry import register_model
from ..base import output_stride_dilations
from .model import SlimmableBackbone
from .ops import SlimmableBatchNorm2d, SlimmableConv2d, SlimmableLinear


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


def _check_num_classes(num_classes):
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
        _check_norm_layer(norm_layer)
        _check_num_classes(num_classes)
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
        _check_norm_layer(norm_layer)
        _check_num_classes(num_classes)
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
        _check_norm_layer(norm_layer)
        _check_num_classes(num_classes)
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
        _check_norm_layer(norm_layer)
        _check_num_classes(num_classes)
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
