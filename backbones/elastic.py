"""Elastic ResNeXt (Wang et al., "ELASTIC: Improving CNNs with Dynamic Scaling Policies", CVPR 2019).

Every ResNeXt-32x4d bottleneck is split into **two parallel branches of equal width** (16 groups each):
a full-resolution branch and a half-resolution branch (2x2 average pooling, stride 2, before its
convolutions; bilinear x2 upsampling, ``align_corners=False``, after them).  The branch outputs are
summed before one shared normalisation ``bn3`` (zero-initialised), then [squeeze-and-excitation],
the shortcut is added and a ReLU applied (paper Sec. 3.2-3.3, eq. 3 and Fig. 3-left; block layout and
initialisation from the authors' code as summarised in ``official_implementations.md`` Sec. 1.1-1.2).
Elastic is switched off on stride-2 units and in the last stage; blocks were re-allocated to the
earlier stages to keep parameters and multiply-adds equal (ResNeXt50+Elastic [6, 8, 5, 3],
ResNeXt101+Elastic [12, 14, 20, 3]; supplementary Sec. B).  sElastic (supplementary Sec. A) keeps
ResNeXt50's [3, 4, 6, 3] and switches Elastic on wherever allowed.

Implementation notes (all exact re-arrangements of the same arithmetic; the MAC count is unchanged):

* A unit with Elastic off runs its two 16-group branches as **one** 32-group bottleneck: the two
  first 1x1 convolutions become one convolution with the outputs stacked (full-resolution branch
  first), the two 16-group 3x3 convolutions one 32-group convolution, the two last 1x1 convolutions
  (whose outputs are summed) one convolution over the stacked channels, and the two per-branch
  BatchNorms one BatchNorm over the stacked channels (BN is per channel).  This is exactly
  torchvision's ``resnext50_32x4d`` bottleneck and uses its parameter names (``conv1/bn1/conv2/bn2/
  conv3/bn3/downsample``).  (With a group-wise norm such as GroupNorm the stacked norm groups channels
  across the two halves, as a standard ResNeXt does.)
* A unit with Elastic on keeps two sets of modules: ``conv1 bn1 conv2 bn2 conv3`` (full resolution)
  and ``conv1_d bn1_d conv2_d bn2_d conv3_d`` (the downsampled, half-resolution branch).
* Odd feature sizes: the authors replicate-pad one pixel right/bottom before the pooling and crop the
  upsampled map.  Here the pooling uses ``ceil_mode=True``, whose last (partial) window averages only
  the in-bounds pixels -- the same values as replicate padding -- and the upsampling evaluates the x2
  bilinear map only at the ``H x W`` output positions that survive the crop (``scales_h = scales_w =
  2``).  No padded copy or cropped copy is made; ``tests/test_elastic.py`` checks the equivalence with
  the literal pad/crop formulation.
* Speed on CPU: PyTorch's CPU average pooling, bilinear upsampling and training-mode BatchNorm are several
  times slower on NCHW tensors than on channels-last ones, and frameworks feed NCHW.  The Elastic families
  therefore compute in channels-last on CPU whatever the input layout (``cpu_layout``, see
  :class:`backbones.base.DynamicBackbone`): an NCHW input is converted once, the feature maps are handed back
  NCHW.  ``tools/benchmark.py --pairs elastic elastic_nchw elastic101`` measures the ratios against the dense
  twin; the README's table holds the last run.
"""
import contextlib
import functools

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from ._registry import register_model
from .base import DynamicBackbone, classifier_head, output_stride_dilations

__all__ = ['ElasticBottleneck', 'ElasticResNeXt', 'elastic_downsample', 'elastic_upsample',
           'resnext50_32x4d', 'resnext101_32x4d', 'resnext50_elastic', 'resnext101_elastic',
           'selastic_resnext50', 'se_resnext50', 'se_resnext50_elastic']


def elastic_downsample(x):
    """Half-resolution input of the Elastic branch: 2x2 average pooling with stride 2.

    Odd H or W behaves as replicate-padding one pixel on the right/bottom first (authors' code),
    computed without the padded copy (``ceil_mode=True``: the partial last window averages its
    in-bounds pixels, which equals the replicate-padded average).

    Args:
        x (Tensor): ``[N, C, H, W]``.

    Returns:
        Tensor: ``[N, C, ceil(H/2), ceil(W/2)]``.

    Source: Elastic paper Sec. 4.1 (stride-2 average pooling as downsampling); odd sizes from the
    reference implementation (``official_implementations.md`` Sec. 1.1).
    """
    return F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


def elastic_upsample(x, size):
    """Bilinear x2 upsampling (``align_corners=False``) cropped to ``size``.

    Equals ``F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)[..., :H, :W]``
    but only evaluates the kept positions (source coordinates use the scale factor 2, not H / h).

    Args:
        x (Tensor): ``[N, C, h, w]``.
        size (tuple[int, int]): output ``(H, W)`` with ``H in (2h - 1, 2h)``, ``W in (2w - 1, 2w)``.

    Returns:
        Tensor: ``[N, C, H, W]``.

    Source: Elastic paper Sec. 3.2 (bilinear upsampling, Table 6); crop from the reference code.
    """
    if torch.onnx.is_in_onnx_export():  # ONNX has no "output size with scale 2": Resize x2, then Slice
        return F.interpolate(x, scale_factor=2.0, mode='bilinear', align_corners=False)[..., :size[0], :size[1]]
    return torch.ops.aten.upsample_bilinear2d(x, [size[0], size[1]], False, 2.0, 2.0)


class ElasticBottleneck(nn.Module):
    """ResNeXt bottleneck split into two equal branches, one at half resolution (Elastic, Fig. 3-left).

    Each branch: 1x1 conv (inplanes -> w) -> norm -> ReLU -> 3x3 conv (w -> w, ``cardinality/2``
    groups, stride, dilation) -> norm -> ReLU -> 1x1 conv (w -> ``4 * planes``, no norm), with
    ``w = planes * base_width / 64 * cardinality / 2`` (64 for the first stage of 32x4d).  Branch
    outputs are summed -> ``bn3`` (weight zero-initialised by :class:`ElasticResNeXt`) -> [SE] ->
    + shortcut -> ReLU.  With ``elastic=True`` the second branch runs on :func:`elastic_downsample`
    of the input and its output is :func:`elastic_upsample`-d back; with ``elastic=False`` both
    branches run at full resolution and are computed as one 32-group bottleneck (exactly equal; see
    the module docstring).  The stride sits on the 3x3 convolution (ResNet v1.5 placement).

    Args:
        inplanes (int): input channels.
        planes (int): bottleneck base width; output channels are ``4 * planes``.
        stride (int): 1 or 2 (on the 3x3 convolution and the projection shortcut).
        dilation (int): dilation (and padding) of the 3x3 convolutions (atrous, output stride < 32).
        elastic (bool): run the second branch at half resolution.  Requires ``stride == 1``.
        se (bool): squeeze-and-excitation (reduction 16) after ``bn3``.
        cardinality (int): groups of the whole unit (32); each branch has ``cardinality // 2``.
        base_width (int): channels per group (4).
        norm_layer (callable): ``C -> nn.Module`` normalisation factory.
        with_cp (bool): activation checkpointing (``torch.utils.checkpoint``) while training; running
            statistics are updated once (restored after the recomputation).

    Shapes:
        ``[N, inplanes, H, W] -> [N, 4 * planes, ceil(H / stride), ceil(W / stride)]``.

    Raises:
        ValueError: ``elastic=True`` with ``stride != 1``, odd ``cardinality``, or a branch width not
            divisible by its groups.
    """

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, elastic=False, se=False, cardinality=32,
                 base_width=4, norm_layer=nn.BatchNorm2d, with_cp=False):
        super().__init__()
        if elastic and stride != 1:
            raise ValueError(f'Elastic is only defined for stride-1 units (the paper switches it off on '
                             f'stride-2 units), got stride={stride}; pass elastic=False')
        if cardinality % 2:
            raise ValueError(f'cardinality must be even (two branches of cardinality/2 groups), '
                             f'got {cardinality}')
        width = int(planes * (base_width / 64.0)) * cardinality
        half, groups = width // 2, cardinality // 2
        if half % groups:
            raise ValueError(f'branch width {half} is not divisible by its {groups} groups')
        out_ch = planes * self.expansion
        self.elastic = bool(elastic)
        self.stride = stride
        self.dilation = dilation
        self.with_cp = with_cp
        conv3x3 = functools.partial(nn.Conv2d, kernel_size=3, padding=dilation, dilation=dilation, bias=False)
        if self.elastic:
            self.conv1 = nn.Conv2d(inplanes, half, 1, bias=False)
            self.bn1 = norm_layer(half)
            self.conv2 = conv3x3(half, half, groups=groups)
            self.bn2 = norm_layer(half)
            self.conv3 = nn.Conv2d(half, out_ch, 1, bias=False)
            self.conv1_d = nn.Conv2d(inplanes, half, 1, bias=False)
            self.bn1_d = norm_layer(half)
            self.conv2_d = conv3x3(half, half, groups=groups)
            self.bn2_d = norm_layer(half)
            self.conv3_d = nn.Conv2d(half, out_ch, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
            self.bn1 = norm_layer(width)
            self.conv2 = conv3x3(width, width, groups=cardinality, stride=stride)
            self.bn2 = norm_layer(width)
            self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = norm_layer(out_ch)
        self.se = None
        if se:  # imported here: torchvision's import (~1 s, torch._dynamo through torchvision.ops) only when used
            from torchvision.ops import SqueezeExcitation
            self.se = SqueezeExcitation(out_ch, out_ch // 16)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or inplanes != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out_ch, 1, stride=stride, bias=False),
                                            norm_layer(out_ch))
        else:
            self.downsample = None

    def _branch(self, x, conv1, bn1, conv2, bn2, conv3):
        x = self.relu(bn1(conv1(x)))
        x = self.relu(bn2(conv2(x)))
        return conv3(x)

    def _forward(self, x):
        if self.elastic:
            out = self._branch(x, self.conv1, self.bn1, self.conv2, self.bn2, self.conv3)
            low = self._branch(elastic_downsample(x), self.conv1_d, self.bn1_d, self.conv2_d, self.bn2_d,
                               self.conv3_d)
            out += elastic_upsample(low, out.shape[-2:])  # in place: conv backward does not need its output
        else:
            out = self._branch(x, self.conv1, self.bn1, self.conv2, self.bn2, self.conv3)
        out = self.bn3(out)
        if self.se is not None:
            out = self.se(out)
        out += x if self.downsample is None else self.downsample(x)  # in place (bn3/SE outputs are not saved)
        return self.relu(out)

    def forward(self, x):
        """``[N, inplanes, H, W] -> [N, 4 * planes, ceil(H / stride), ceil(W / stride)]``."""
        if self.with_cp and self.training and torch.is_grad_enabled():
            return cp.checkpoint(self._forward, x, use_reentrant=False,
                                 context_fn=functools.partial(_recompute_contexts, self))
        return self._forward(x)

    def extra_repr(self):
        return f'elastic={self.elastic}, stride={self.stride}, dilation={self.dilation}'


class _RestoreBuffers:
    """Context manager that puts a module's buffers (BN running statistics) back on exit, so the
    forward recomputed by activation checkpointing does not update them a second time."""

    def __init__(self, module):
        self.buffers = list(module.buffers())

    def __enter__(self):
        self.saved = [b.detach().clone() for b in self.buffers]

    def __exit__(self, *exc):
        with torch.no_grad():
            for b, s in zip(self.buffers, self.saved):
                b.copy_(s)
        return False


def _recompute_contexts(module):
    return contextlib.nullcontext(), _RestoreBuffers(module)


class ElasticResNeXt(DynamicBackbone):
    """ResNeXt-32x4d with optional Elastic units and squeeze-and-excitation (Wang et al. 2019).

    Stem: 7x7/2 conv (3 -> 64) -> norm -> ReLU -> 3x3/2 max-pool.  Stages 1-4 with ``layers`` units of
    :class:`ElasticBottleneck` (planes 64, 128, 256, 512; outputs 256, 512, 1024, 2048 channels at
    strides 4, 8, 16, 32).  Elastic (if ``elastic``) is on in every stride-1 unit of stages 1-3; it is
    off in stride-2 units and in the whole last stage.  Which units are Elastic is fixed by the
    classification (output stride 32) layout, so checkpoints load at every output stride.

    Dense prediction (DeepLabV3, Chen et al. 2017, Sec. 3; as in the Elastic paper's PASCAL VOC setup,
    Sec. 4.3): ``output_stride`` 16 removes the stride of stage 4 and dilates it by 2 x ``multi_grid``;
    8 also removes the stride of stage 3 and dilates it by 2 (stage 4 by 4 x ``multi_grid``).  An
    Elastic unit keeps its half-resolution branch at any output stride (its 3x3 uses the stage's
    dilation on the pooled map).

    Initialisation (reference code, ``official_implementations.md`` Sec. 1.2; paper Sec. 4.1 "normal He
    initialization"): every convolution Kaiming-normal (fan_in, ReLU) with zero bias, norm weights 1
    and biases 0 except ``bn3`` weights 0 (each unit starts as ReLU(shortcut)), classifier weights
    normal(0, 0.01) and bias 0.  (The authors' code leaves the projection-shortcut conv at PyTorch's
    default init because of a name filter; here it is Kaiming like every other convolution.)

    Args:
        layers (list[int]): units per stage.
        elastic (bool): Elastic units where allowed.
        se (bool): squeeze-and-excitation in every unit.
        cardinality (int), base_width (int): 32 and 4 for 32x4d.
        num_classes (int): classifier outputs; 0 = features only (no head).
        out_indices, frozen_stages, norm_eval: see :class:`backbones.base.DynamicBackbone`.
        output_stride (int): 32, 16 or 8.
        multi_grid (tuple[int] | None): per-unit dilation multipliers of the last stage, used when
            ``output_stride < 32`` (default (1, 2, 4)); its length must equal ``layers[3]``.
        norm_layer (callable | None): ``C -> nn.Module`` (default ``nn.BatchNorm2d``), e.g.
            ``functools.partial(nn.GroupNorm, 32)`` or a SyncBN factory.
        with_cp (bool): activation checkpointing of every unit while training.
        channels_last (bool): store the convolution weights in ``torch.channels_last`` memory format, so
            every feature map (whatever the input layout) is channels-last.  Same values; on CPU the
            pooling, bilinear upsampling and training-mode BatchNorm of the Elastic branches are several
            times faster in this layout.  Equivalent to calling
            ``model.to(memory_format=torch.channels_last)``.
        zero_init_residual (bool): zero-initialise every ``bn3`` weight (the reference does).
        variant (str | None): registered name, stored as ``self.variant``.

    Shapes:
        ``forward``: ``[N, 3, H, W] -> [N, num_classes]`` (or the features dict when ``num_classes=0``);
        ``forward_stages``: ``'stage{i}' -> [N, C_i, ceil(H / s_i), ceil(W / s_i)]``.

    Raises:
        ValueError: output stride not in {8, 16, 32}; ``layers`` not 4 positive ints; ``multi_grid``
            length != ``layers[3]``; ``norm_layer`` not callable; bad ``out_indices``/``frozen_stages``.
    """

    family = 'elastic'
    cpu_layout = 'channels_last'  # DynamicBackbone.cpu_layout: Elastic's pooling/upsampling are slow in NCHW on CPU

    def __init__(self, layers, elastic=False, se=False, cardinality=32, base_width=4, num_classes=1000,
                 out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False, output_stride=32,
                 multi_grid=(1, 2, 4), norm_layer=None, with_cp=False, channels_last=False,
                 zero_init_residual=True, variant=None):
        super().__init__()
        layers = list(layers)
        if len(layers) != 4 or any(int(n) != n or n < 1 for n in layers):
            raise ValueError(f'layers must be 4 positive ints (units per stage), got {layers}')
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        if not callable(norm_layer):
            raise ValueError(f'norm_layer must be a callable C -> nn.Module (e.g. nn.BatchNorm2d or '
                             f'functools.partial(nn.GroupNorm, 32)), got {norm_layer!r}')
        if output_stride == 32 or multi_grid is None:
            grid_mult = (1,) * layers[3]
        else:
            grid_mult = tuple(multi_grid)
            if len(grid_mult) != layers[3]:
                raise ValueError(f'multi_grid needs one multiplier per unit of the last stage '
                                 f'({layers[3]}), got {multi_grid}')
        strides, dilations, grid = output_stride_dilations(output_stride, grid_mult)
        self.variant = variant
        self.layers = tuple(layers)
        self.output_stride = output_stride
        self.multi_grid = tuple(multi_grid) if multi_grid is not None else None
        self.is_elastic = bool(elastic)

        self.stem = nn.Sequential()
        self.stem.add_module('conv', nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False))
        self.stem.add_module('bn', norm_layer(64))
        self.stem.add_module('relu', nn.ReLU(inplace=True))
        self.stem.add_module('pool', nn.MaxPool2d(3, stride=2, padding=1))

        inplanes, stages = 64, []
        for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                # the OS-32 layout decides which units are Elastic (checkpoints stay loadable)
                cls_stride = 2 if (i > 0 and j == 0) else 1
                stride = strides[i] if j == 0 else 1
                dilation = grid[j] if i == 3 else dilations[i]
                blocks.append(ElasticBottleneck(
                    inplanes, planes, stride=stride, dilation=dilation,
                    elastic=elastic and cls_stride == 1 and i < 3, se=se, cardinality=cardinality,
                    base_width=base_width, norm_layer=norm_layer, with_cp=with_cp))
                inplanes = planes * ElasticBottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = classifier_head(inplanes, num_classes)
        self._stage_channels = [p * ElasticBottleneck.expansion for p in (64, 128, 256, 512)]
        s, self._stage_strides = 4, []
        for st in strides:
            s *= st
            self._stage_strides.append(s)
        self._init_weights(zero_init_residual)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self._init_dense(out_indices, frozen_stages, norm_eval)

    def _init_weights(self, zero_init_residual):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_in', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
            elif getattr(m, 'weight', None) is not None and isinstance(
                    m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ElasticBottleneck) and getattr(m.bn3, 'weight', None) is not None:
                    nn.init.zeros_(m.bn3.weight)

    def elastic_units(self):
        """Per stage, the list of booleans "unit j runs Elastic" (e.g. stage 2 of ResNeXt50+Elastic:
        ``[False] + [True] * 7``)."""
        return [[blk.elastic for blk in stage] for stage in self.stages]

    def extra_repr(self):
        return (f'variant={self.variant}, layers={self.layers}, elastic={self.is_elastic}, '
                f'output_stride={self.output_stride}, ' + super().extra_repr())


def _create(variant, layers, elastic, se, **kwargs):
    return ElasticResNeXt(layers, elastic=elastic, se=se, variant=variant, **kwargs)


@register_model('elastic')
def resnext50_32x4d(**kwargs):
    """ResNeXt-50 32x4d baseline (Xie et al. 2017; Elastic off everywhere), [3, 4, 6, 3] units,
    25.03M parameters / 4.23 GMACs at 224.  kwargs: see :class:`ElasticResNeXt`."""
    return _create('resnext50_32x4d', [3, 4, 6, 3], False, False, **kwargs)


@register_model('elastic')
def resnext101_32x4d(**kwargs):
    """ResNeXt-101 32x4d baseline, [3, 4, 23, 3] units, 44.18M / 7.97 GMACs."""
    return _create('resnext101_32x4d', [3, 4, 23, 3], False, False, **kwargs)


@register_model('elastic')
def resnext50_elastic(**kwargs):
    """ResNeXt50+Elastic, [6, 8, 5, 3] units (Elastic supplementary Table 2), 25.25M / 4.18 GMACs."""
    return _create('resnext50_elastic', [6, 8, 5, 3], True, False, **kwargs)


@register_model('elastic')
def resnext101_elastic(**kwargs):
    """ResNeXt101+Elastic, [12, 14, 20, 3] units (Elastic supplementary Sec. B), 44.27M / 7.89 GMACs."""
    return _create('resnext101_elastic', [12, 14, 20, 3], True, False, **kwargs)


@register_model('elastic')
def selastic_resnext50(**kwargs):
    """ResNeXt50+sElastic: ResNeXt50's [3, 4, 6, 3] with Elastic units (supplementary Sec. A),
    25.03M / 3.35 GMACs."""
    return _create('selastic_resnext50', [3, 4, 6, 3], True, False, **kwargs)


@register_model('elastic')
def se_resnext50(**kwargs):
    """SE-ResNeXt50 32x4d (Hu et al. 2018; SE after ``bn3``), [3, 4, 6, 3], 27.56M / 4.23 GMACs."""
    return _create('se_resnext50', [3, 4, 6, 3], False, True, **kwargs)


@register_model('elastic')
def se_resnext50_elastic(**kwargs):
    """SE-ResNeXt50+Elastic, [6, 8, 5, 3], 27.80M / 4.18 GMACs."""
    return _create('se_resnext50_elastic', [6, 8, 5, 3], True, True, **kwargs)
