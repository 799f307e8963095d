"""The RS-Nets networks and their registered factories (``'rsnet'`` family; RS-Nets Sec. 3.1, 4.1).

* :class:`RSResNet` (torchvision ResNet v1.5 with :class:`RSBasicBlock` / :class:`RSBottleneck`):
  ``rs_resnet18``, ``rs_resnet50``, ``rs_resnet101``;
* :class:`RSMobileNetV2` (MobileNet v2 with :class:`RSInvertedResidual`): ``rs_mobilenet_v2``.

Every norm layer is a :class:`~backbones.rsnet.private_bn.PrivateBatchNorm`; residual units support gradient
checkpointing (``with_cp``) with the private BN index replayed in the recomputation.
"""
import math
from collections import OrderedDict

import torch
import torch.utils.checkpoint as cp
from torch import nn

from .._registry import register_model
from ..base import classifier_head, output_stride_dilations
from .model import DEFAULT_RESOLUTIONS, RSNet
from .private_bn import PrivateBatchNorm


def _forward_block(block, x):
    """Run ``block._inner_forward`` with gradient checkpointing when ``block.with_cp`` and training.

    The private BN index is captured now and re-applied during the backward recomputation (then
    restored), so :meth:`RSNet.forward_parallel` (several resolutions before one backward) recomputes
    each branch with its own BN.  As in mmcv's ``with_cp``, BN running statistics are updated again by
    the recomputation.
    """
    if block.with_cp and block.training and torch.is_grad_enabled():
        state = block.res_state
        index = state.index

        def run(inp):
            saved, state.index = state.index, index
            try:
                return block._inner_forward(inp)
            finally:
                state.index = saved

        return cp.checkpoint(run, x, use_reentrant=False)
    return block._inner_forward(x)


# --------------------------------------------------------------------------------------------- ResNet
def _conv3x3(cin, cout, stride=1, dilation=1, groups=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups,
                     bias=False)


def _conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class RSBasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with private BNs; ``[N, inplanes, H, W] -> [N, planes, H/s, W/s]``.

    Both 3x3 convs use ``dilation`` (atrous conversion of a stage, DeepLabV3 Sec. 3.1).
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride, dilation, downsample, bn, with_cp=False):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = bn(planes)
        self.downsample = downsample
        self.with_cp = with_cp

    @property
    def res_state(self):
        """The :class:`ResolutionState` of this unit's private BNs."""
        return self.bn1.state

    def _inner_forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def forward(self, x):
        """``[N, inplanes, H, W] -> [N, planes, ceil(H/stride), ceil(W/stride)]``."""
        return _forward_block(self, x)


class RSBottleneck(nn.Module):
    """ResNet v1.5 bottleneck (1x1, 3x3 with the stride, 1x1 x4) with private BNs."""

    expansion = 4

    def __init__(self, inplanes, planes, stride, dilation, downsample, bn, with_cp=False):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = bn(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = bn(planes)
        self.conv3 = _conv1x1(planes, planes * 4)
        self.bn3 = bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_cp = with_cp

    @property
    def res_state(self):
        """The :class:`ResolutionState` of this unit's private BNs."""
        return self.bn1.state

    def _inner_forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def forward(self, x):
        """``[N, inplanes, H, W] -> [N, 4*planes, ceil(H/stride), ceil(W/stride)]``."""
        return _forward_block(self, x)


class RSResNet(RSNet):
    """RS-ResNet: torchvision ResNet v1.5 with shared convs/fc and a private BN per resolution.

    Source: RS-Nets (Wang et al. 2020) Sec. 3.1; reference ``official_implementations.md`` Sec. 4.1
    (``ParallelResNet``).  Stem: 7x7/2 conv, private BN, ReLU, 3x3/2 max-pool (stride 4); stages
    ``layer1..layer4`` at strides 4, 8, 16, 32 (output stride 32).

    Args:
        block (type): :class:`RSBasicBlock` or :class:`RSBottleneck`.
        layers (tuple[int]): units per stage.
        num_classes (int): classifier outputs; 0 drops the head (features only).
        resolutions (tuple[int]): training resolutions, descending (one private BN each).
        resolution_rule (str): ``'nearest'`` (default) or ``'explicit'``; see the :mod:`backbones.rsnet` docstring.
        out_indices, frozen_stages, norm_eval: see :class:`~backbones.base.DynamicBackbone`.
        output_stride (int): 32, 16 or 8 (stride of stages 4 / 3-4 replaced by dilation 2 / 2, 4).
        multi_grid (tuple[int] | None): per-unit dilation multipliers of stage 4 (DeepLabV3), one per unit.
        norm_layer (callable | None): ``C -> norm module`` used for every private BN (default BatchNorm2d).
        with_cp (bool): gradient checkpointing of every residual unit while training.
        zero_init_residual (bool): zero-initialise the last BN gamma of each unit (torchvision option).

    Raises:
        ValueError: bad resolutions / rule / output stride / multi_grid length / norm_layer.
    """

    def __init__(self, block, layers, num_classes=1000, resolutions=DEFAULT_RESOLUTIONS,
                 resolution_rule='nearest', out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False,
                 output_stride=32, multi_grid=None, norm_layer=None, with_cp=False, zero_init_residual=False):
        super().__init__()
        self._init_resolutions(resolutions, resolution_rule, norm_layer)
        if multi_grid is not None and len(tuple(multi_grid)) != layers[3]:
            raise ValueError(f'multi_grid must have one entry per unit of the last stage ({layers[3]}), '
                             f'e.g. {(1, 2, 4)[:layers[3]] if layers[3] <= 3 else (1,) * layers[3]}; '
                             f'got {multi_grid}')
        multi_grid = tuple(multi_grid or (1,) * layers[3])
        strides, dilations, grid = output_stride_dilations(output_stride, multi_grid)
        self.output_stride = output_stride
        self.with_cp = with_cp
        self.stem = nn.Sequential(OrderedDict([
            ('conv1', nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)),
            ('bn1', self.private_bn(64)),
            ('relu', nn.ReLU(inplace=True)),
            ('maxpool', nn.MaxPool2d(3, stride=2, padding=1)),
        ]))
        self.inplanes = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            unit_dil = grid if i == 3 else (dilations[i],) * n
            stages.append(self._make_stage(block, planes, n, strides[i], unit_dil, with_cp))
        self.stages = nn.ModuleList(stages)
        del self.inplanes
        self._stage_channels = [p * block.expansion for p in (64, 128, 256, 512)]
        s, self._stage_strides = 4, []
        for st in strides:
            s *= st
            self._stage_strides.append(s)
        self.head = classifier_head(512 * block.expansion, num_classes)
        self.num_classes = num_classes
        self._init_weights(zero_init_residual)
        self._apply_index(0)
        self._init_dense(out_indices, frozen_stages, norm_eval)

    def _make_stage(self, block, planes, n, stride, unit_dilations, with_cp):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       self.private_bn(planes * block.expansion))
        units = [block(self.inplanes, planes, stride, unit_dilations[0], downsample, self.private_bn, with_cp)]
        self.inplanes = planes * block.expansion
        units += [block(self.inplanes, planes, 1, unit_dilations[j], None, self.private_bn, with_cp)
                  for j in range(1, n)]
        return nn.Sequential(*units)

    def _init_weights(self, zero_init_residual):
        # torchvision ResNet init (reference Sec. 4.1): Kaiming-normal fan_out for convs, norm 1/0, fc default
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, PrivateBatchNorm):
                for bn in m.bns:
                    if getattr(bn, 'weight', None) is not None:
                        nn.init.ones_(bn.weight)
                        nn.init.zeros_(bn.bias)
        if zero_init_residual:
            for m in self.modules():
                last = getattr(m, 'bn3', None) if isinstance(m, RSBottleneck) else (
                    getattr(m, 'bn2', None) if isinstance(m, RSBasicBlock) else None)
                if last is not None:
                    for bn in last.bns:
                        if getattr(bn, 'weight', None) is not None:
                            nn.init.zeros_(bn.weight)


# --------------------------------------------------------------------------------------------- MobileNet v2
class RSInvertedResidual(nn.Module):
    """MobileNet v2 inverted residual (expand 1x1, depthwise 3x3, project 1x1) with private BNs.

    ``[N, cin, H, W] -> [N, cout, ceil(H/stride), ceil(W/stride)]``; identity shortcut when stride 1 and
    ``cin == cout`` (Sandler et al. 2018, Table 1/2).
    """

    def __init__(self, cin, cout, stride, expand_ratio, dilation, bn, with_cp=False):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), bn(hidden), nn.ReLU6(inplace=True)]
        layers += [_conv3x3(hidden, hidden, stride, dilation, groups=hidden), bn(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), bn(cout)]
        self.conv = nn.Sequential(*layers)
        self.with_cp = with_cp

    @property
    def res_state(self):
        """The :class:`ResolutionState` of this unit's private BNs."""
        return self.conv[1].state

    def _inner_forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res_connect else out

    def forward(self, x):
        """``[N, cin, H, W] -> [N, cout, H', W']``."""
        return _forward_block(self, x)


class RSMobileNetV2(RSNet):
    """RS-MobileNet v2: MobileNet v2 (width 1.0) with shared convs/fc and a private BN per resolution.

    Source: RS-Nets Sec. 3.1/4.1; reference Sec. 4.1 (``ParallelMobileNetV2``, the standard config
    t,c,n,s = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1), last conv
    1280).  Grouped into the four output strides of the base class: stem = 3x3/2 conv + the 16- and
    first 24-channel units (stride 4); stage1 = the second 24-channel unit (24 ch, stride 4); stage2 =
    32-channel units (stride 8); stage3 = 64- and 96-channel units (stride 16); stage4 = 160- and
    320-channel units (stride 32).  The 1x1 conv to 1280 belongs to the classification head (dropped with
    ``num_classes=0``, as in MMSeg's MobileNetV2 whose last feature has 320 channels).

    Args:
        num_classes, resolutions, resolution_rule, out_indices, frozen_stages, norm_eval, norm_layer,
        with_cp: as :class:`RSResNet`.
        output_stride (int): 32, 16 or 8 (the stride-2 depthwise convs of stage 4 / stages 3-4 become
            dilated).
        multi_grid: not defined for MobileNet v2; must be None.

    Raises:
        ValueError: bad resolutions / rule / output stride / norm_layer, or ``multi_grid`` given.
    """

    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))
    LAST_CHANNEL = 1280

    def __init__(self, num_classes=1000, resolutions=DEFAULT_RESOLUTIONS, resolution_rule='nearest',
                 out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False, output_stride=32,
                 multi_grid=None, norm_layer=None, with_cp=False):
        super().__init__()
        self._init_resolutions(resolutions, resolution_rule, norm_layer)
        if multi_grid is not None:
            raise ValueError('multi_grid is defined for the ResNet variants only; use multi_grid=None for '
                             'rs_mobilenet_v2')
        strides, dilations, _ = output_stride_dilations(output_stride)
        self.output_stride = output_stride
        self.with_cp = with_cp
        # flatten the config into units with (cin, cout, stride, t), then group by output stride
        units, cin = [], 32
        for t, c, n, s in self.CONFIG:
            for j in range(n):
                units.append((cin, c, s if j == 0 else 1, t))
                cin = c
        # unit indices: 0 (16), 1-2 (24), 3-5 (32), 6-9 (64), 10-12 (96), 13-15 (160), 16 (320)
        groups = {'stem': units[0:2], 0: units[2:3], 1: units[3:6], 2: units[6:13], 3: units[13:17]}
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), self.private_bn(32), nn.ReLU6(inplace=True),
            *[RSInvertedResidual(a, b, s, t, 1, self.private_bn, with_cp) for a, b, s, t in groups['stem']])
        stages = []
        for i in range(4):
            blocks = []
            for j, (a, b, s, t) in enumerate(groups[i]):
                if j == 0 and s == 2:
                    s = strides[i]  # 1 when this stage is dilated (output stride 16/8)
                # every unit of a dilated stage uses its dilation (as MMSeg's MobileNetV2 and ResNet)
                blocks.append(RSInvertedResidual(a, b, s, t, dilations[i], self.private_bn, with_cp))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self._stage_channels = [24, 32, 96, 320]
        s, self._stage_strides = 4, []
        for st in strides:
            s *= st
            self._stage_strides.append(s)
        if num_classes:
            self.head = nn.Sequential(
                nn.Conv2d(320, self.LAST_CHANNEL, 1, bias=False), self.private_bn(self.LAST_CHANNEL),
                nn.ReLU6(inplace=True),
                *classifier_head(self.LAST_CHANNEL, num_classes))
        else:
            self.head = None
        self.num_classes = num_classes
        self._init_weights()
        self._apply_index(0)
        self._init_dense(out_indices, frozen_stages, norm_eval)

    def _init_weights(self):
        # tonylins MobileNet v2 init (reference Sec. 4.1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, PrivateBatchNorm):
                for bn in m.bns:
                    if getattr(bn, 'weight', None) is not None:
                        nn.init.ones_(bn.weight)
                        nn.init.zeros_(bn.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------- factories
def _build(cls, variant, *args, **kwargs):
    model = cls(*args, **kwargs)
    model.variant = variant
    return model


@register_model('rsnet')
def rs_resnet18(**kwargs):
    """RS-ResNet-18 (BasicBlock, [2, 2, 2, 2]); 11.69M shared params + 9.6k per extra private BN set,
    1.814 GMACs at 224 (reference Sec. 4.4).  kwargs: see :class:`RSResNet`."""
    return _build(RSResNet, 'rs_resnet18', RSBasicBlock, (2, 2, 2, 2), **kwargs)


@register_model('rsnet')
def rs_resnet50(**kwargs):
    """RS-ResNet-50 (Bottleneck v1.5, [3, 4, 6, 3]); 25.56M shared params, 4.089 GMACs at 224 (paper
    4.14G incl. element-wise ops, reference Sec. 4.4).  kwargs: see :class:`RSResNet`."""
    return _build(RSResNet, 'rs_resnet50', RSBottleneck, (3, 4, 6, 3), **kwargs)


@register_model('rsnet')
def rs_resnet101(**kwargs):
    """RS-ResNet-101 (Bottleneck v1.5, [3, 4, 23, 3]); the RefineNet NYUDv2 backbone of the supplementary
    material (resolutions (352, 224, 96)); ``resolutions=(r,)`` is the plain ResNet-101.  kwargs: see
    :class:`RSResNet`."""
    return _build(RSResNet, 'rs_resnet101', RSBottleneck, (3, 4, 23, 3), **kwargs)


@register_model('rsnet')
def rs_mobilenet_v2(**kwargs):
    """RS-MobileNet v2 (width 1.0, last conv 1280); 3.505M shared params, 0.301 GMACs at 224 (reference
    Sec. 4.4).  kwargs: see :class:`RSMobileNetV2`."""
    return _build(RSMobileNetV2, 'rs_mobilenet_v2', **kwargs)
