"""DenseNet-201 and DenseNet-201+Elastic (Wang et al., "ELASTIC", CVPR 2019, Sec. 3.3 and Fig. 3-right).

DenseNet-BC (Huang et al. 2017) with the layout of the authors' ``models/densenet.py``
(``official_implementations.md`` Sec. 1.3): growth rate k = 32, bottleneck ``bn_size`` 4, compression 0.5,
64 initial features; DenseNet-201 has (6, 12, 48, 32) dense layers per block, DenseNet-201+Elastic
(10, 20, 40, 30) (supplementary Table 3: layers moved to the earlier, higher-resolution blocks so that
parameters and multiply-adds stay about equal).

A dense layer is pre-activation: ``norm1 -> ReLU`` on the concatenation of all previous feature maps, then
a 1x1 bottleneck convolution to ``bn_size * k`` channels ``-> norm2 -> ReLU ->`` a 3x3 convolution to k new
channels.  The **Elastic dense layer** keeps the shared pre-activation and splits the bottleneck into two
branches of ``bn_size * k / 2`` = 64 channels that both produce k = 32 channels and are summed:

* full resolution: ``conv1`` (1x1 to 64) ``-> norm2 -> ReLU -> conv2`` (3x3 to 32);
* half resolution: :func:`~backbones.elastic.elastic_downsample` (2x2 average pooling) ``-> conv1_d -> norm2_d
  -> ReLU -> conv2_d ->`` :func:`~backbones.elastic.elastic_upsample` (bilinear x2, ``align_corners=False``,
  cropped to the input size).

Which layers are Elastic is fixed by the architecture: every layer of dense blocks 1-3 of an Elastic model,
none of block 4.  (The authors decide per call with ``size(2) != 7``, which gives exactly this at 224x224
input but ties the model to 224; here any input size works, odd sizes through the replicate-pad semantics
of ``elastic_downsample``.)  A layer with Elastic off computes its two 64-channel halves as one standard
128-channel dense layer (the two 1x1 convolutions stacked along the output channels, the two norms stacked,
the two 3x3 convolutions - whose outputs are summed - concatenated along the input channels; full branch
first, ``_d`` second): exactly equal up to float rounding, and it is torchvision's dense layer.

Grouping into the four dynscale stages (strides 4, 8, 16, 32 at output stride 32)::

    stem     conv0 7x7/2 (3 -> 64) -> norm0 -> ReLU -> max-pool 3x3/2         stride 4
    stage 1  dense block 1                                                    stride 4
    stage 2  transition 1 (norm -> ReLU -> 1x1 conv (x0.5) -> avg-pool 2x2/2) + dense block 2   stride 8
    stage 3  transition 2 + dense block 3                                     stride 16
    stage 4  transition 3 + dense block 4 + norm_final -> ReLU               stride 32
    head     global average pool -> Linear

Stage outputs 1-3 are the raw (pre-activation) concatenated feature maps of the dense blocks, stage 4 is the
normalised and activated map the classifier pools (as timm's DenseNet ``feature_info``: ``denseblock1..3``
and ``norm5``).  The transitions' average pooling uses ``ceil_mode=True``: identical to the reference at even
sizes; at odd sizes the last row/column is kept (averaged over its in-bounds pixels), so stage i is
``ceil(H / s_i)`` pixels high like every dynscale backbone.
"""
from collections import OrderedDict

import torch
from torch import nn

from ._registry import register_model
from .base import DynamicBackbone, classifier_head, output_stride_dilations
from .elastic import elastic_downsample, elastic_upsample

__all__ = ['DenseLayer', 'DenseBlock', 'Transition', 'DenseNet', 'densenet201', 'densenet201_elastic']


class DenseLayer(nn.Module):
    """One DenseNet-BC layer, optionally Elastic (Elastic paper Fig. 3-right; reference Sec. 1.3).

    Args:
        in_channels (int): channels of the concatenated input.
        growth_rate (int): new channels k produced by the layer.
        bn_size (int): bottleneck width factor (``bn_size * k`` channels after the 1x1 convolution, split
            into two halves of ``bn_size * k / 2`` when ``elastic``).
        elastic (bool): run half of the bottleneck at half resolution (modules ``conv1_d``, ``norm2_d``,
            ``conv2_d``).
        dilation (int): dilation (and padding) of the 3x3 convolutions (output stride < 32).
        norm_layer (callable): ``C -> nn.Module`` normalisation factory.

    Shapes:
        ``forward(features)``: a list of ``[N, C_i, H, W]`` with ``sum(C_i) == in_channels`` (or one tensor)
        ``-> [N, growth_rate, H, W]``.

    Raises:
        ValueError: ``elastic=True`` with an odd ``bn_size * growth_rate``.
    """

    def __init__(self, in_channels, growth_rate=32, bn_size=4, elastic=False, dilation=1, norm_layer=nn.BatchNorm2d):
        super().__init__()
        width = bn_size * growth_rate
        if elastic and width % 2:
            raise ValueError(f'an Elastic dense layer splits its bn_size * growth_rate = {width} bottleneck '
                             f'channels into two equal halves; use an even product')
        self.elastic = bool(elastic)
        self.dilation = dilation
        branch = width // 2 if self.elastic else width
        self.norm1 = norm_layer(in_channels)
        self.conv1 = nn.Conv2d(in_channels, branch, 1, bias=False)
        self.norm2 = norm_layer(branch)
        self.conv2 = nn.Conv2d(branch, growth_rate, 3, padding=dilation, dilation=dilation, bias=False)
        if self.elastic:
            self.conv1_d = nn.Conv2d(in_channels, branch, 1, bias=False)
            self.norm2_d = norm_layer(branch)
            self.conv2_d = nn.Conv2d(branch, growth_rate, 3, padding=dilation, dilation=dilation, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, features):
        """``[N, in_channels, H, W]`` (as a list of maps to concatenate) ``-> [N, growth_rate, H, W]``."""
        x = torch.cat(features, 1) if isinstance(features, (list, tuple)) else features
        x = self.relu(self.norm1(x))
        out = self.conv2(self.relu(self.norm2(self.conv1(x))))
        if self.elastic:
            low = self.conv2_d(self.relu(self.norm2_d(self.conv1_d(elastic_downsample(x)))))
            out += elastic_upsample(low, out.shape[-2:])  # in place: conv backward does not need its output
        return out

    def extra_repr(self):
        return f'elastic={self.elastic}, dilation={self.dilation}'


class DenseBlock(nn.Module):
    """``num_layers`` :class:`DenseLayer` s (children ``denselayer1..N``), each fed the concatenation of the
    block input and all earlier layers' outputs.

    Args:
        num_layers (int): dense layers.
        in_channels (int): channels of the block input.
        growth_rate, bn_size, elastic, dilation, norm_layer: passed to every :class:`DenseLayer`.

    Shapes:
        ``[N, in_channels, H, W] -> [N, in_channels + num_layers * growth_rate, H, W]``.
    """

    def __init__(self, num_layers, in_channels, growth_rate=32, bn_size=4, elastic=False, dilation=1,
                 norm_layer=nn.BatchNorm2d):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f'denselayer{i + 1}', DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size,
                                                             elastic, dilation, norm_layer))
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x):
        """``[N, C, H, W] -> [N, C + num_layers * growth_rate, H, W]``."""
        features = [x]
        for layer in self.children():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """DenseNet transition: ``norm -> ReLU -> 1x1 conv -> 2x2 average pooling`` (stride 2, ``ceil_mode=True``).

    Args:
        in_channels (int), out_channels (int): channels before / after the 1x1 convolution.
        stride (int): 2 (pooling) or 1 (no pooling: output stride < 32, the next block is dilated instead).
        norm_layer (callable): ``C -> nn.Module``.

    Shapes:
        ``[N, in_channels, H, W] -> [N, out_channels, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(self, in_channels, out_channels, stride=2, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.add_module('norm', norm_layer(in_channels))
        self.add_module('relu', nn.ReLU(inplace=True))
        self.add_module('conv', nn.Conv2d(in_channels, out_channels, 1, bias=False))
        if stride == 2:
            self.add_module('pool', nn.AvgPool2d(2, stride=2, ceil_mode=True))


class DenseNet(DynamicBackbone):
    """DenseNet-BC with optional Elastic dense layers, as a dynscale backbone (module docstring for the layout).

    Dense prediction (DeepLabV3 style, Chen et al. 2017): ``output_stride`` 16 removes the pooling of
    transition 3 and dilates dense block 4 by 2; 8 also removes the pooling of transition 2 and dilates
    block 3 by 2 (block 4 by 4).  Elastic layers keep their half-resolution branch (dilated 3x3 on the pooled
    map).  The parameters do not depend on the output stride, so every checkpoint loads at 32, 16 and 8.

    Initialisation (reference ``models/densenet.py``, ``official_implementations.md`` Sec. 1.3): every
    convolution normal(0, sqrt(2 / (k * k * out_channels))) (He, fan-out), norm weights 1 and biases 0, the
    classifier bias 0 and its weight at PyTorch's default ``nn.Linear`` initialisation.

    Args:
        block_config (tuple[int]): dense layers per block (4 blocks).
        growth_rate (int): k (32).
        bn_size (int): bottleneck factor (4).
        compression (float): channel factor of the transitions, in (0, 1] (0.5).
        num_init_features (int): channels of the stem convolution (64).
        elastic (bool): Elastic dense layers in blocks 1-3.
        num_classes (int): classifier outputs; 0 = features only (no head).
        out_indices, frozen_stages, norm_eval: see :class:`backbones.base.DynamicBackbone`.
        output_stride (int): 32, 16 or 8.
        norm_layer (callable | None): ``C -> nn.Module`` (default ``nn.BatchNorm2d``); a GroupNorm factory
            needs every channel count (e.g. 64 + 32 j, and the transitions' outputs) divisible by its groups.
        channels_last (bool): store the weights channels-last (faster Elastic pooling / upsampling on CPU);
            same as ``model.to(memory_format=torch.channels_last)``.
        variant (str | None): registered name, stored as ``self.variant``.

    Shapes:
        ``forward``: ``[N, 3, H, W] -> [N, num_classes]`` (or the features dict when ``num_classes=0``);
        ``forward_stages``: ``'stage{i}' -> [N, C_i, ceil(H / s_i), ceil(W / s_i)]`` with C = (256, 512,
        1792, 1920) for DenseNet-201 and (384, 832, 1696, 1808) for DenseNet-201+Elastic.

    Raises:
        ValueError: ``block_config`` not 4 positive ints; ``compression`` outside (0, 1]; output stride not
            in {8, 16, 32}; ``norm_layer`` not callable; bad ``out_indices`` / ``frozen_stages``.
    """

    family = 'elastic'
    cpu_layout = 'channels_last'  # DynamicBackbone.cpu_layout: Elastic's pooling/upsampling are slow in NCHW on CPU

    def __init__(self, block_config, growth_rate=32, bn_size=4, compression=0.5, num_init_features=64, elastic=False,
                 num_classes=1000, out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False, output_stride=32,
                 norm_layer=None, channels_last=False, variant=None):
        super().__init__()
        block_config = list(block_config)
        if len(block_config) != 4 or any(int(n) != n or n < 1 for n in block_config):
            raise ValueError(f'block_config must be 4 positive ints (dense layers per block), got {block_config}')
        if not 0 < compression <= 1:
            raise ValueError(f'compression must be in (0, 1], got {compression}')
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        if not callable(norm_layer):
            raise ValueError(f'norm_layer must be a callable C -> nn.Module (e.g. nn.BatchNorm2d or '
                             f'functools.partial(nn.GroupNorm, 32)), got {norm_layer!r}')
        strides, dilations, _ = output_stride_dilations(output_stride)
        self.variant = variant
        self.block_config = tuple(block_config)
        self.output_stride = output_stride
        self.is_elastic = bool(elastic)

        self.stem = nn.Sequential(OrderedDict([
            ('conv', nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False)),
            ('bn', norm_layer(num_init_features)),
            ('relu', nn.ReLU(inplace=True)),
            ('pool', nn.MaxPool2d(3, stride=2, padding=1)),
        ]))
        channels, stages, self._stage_channels = num_init_features, [], []
        for i, n in enumerate(block_config):
            parts = OrderedDict()
            if i > 0:
                out = int(channels * compression)
                parts['transition'] = Transition(channels, out, strides[i], norm_layer)
                channels = out
            parts['block'] = DenseBlock(n, channels, growth_rate, bn_size, elastic=elastic and i < 3,
                                        dilation=dilations[i], norm_layer=norm_layer)
            channels = parts['block'].out_channels
            if i == 3:
                parts['norm_final'] = norm_layer(channels)
                parts['relu'] = nn.ReLU(inplace=True)
            stages.append(nn.Sequential(parts))
            self._stage_channels.append(channels)
        self.stages = nn.ModuleList(stages)
        self.head = classifier_head(channels, num_classes)
        s, self._stage_strides = 4, []
        for st in strides:
            s *= st
            self._stage_strides.append(s)
        self._init_weights()
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self._init_dense(out_indices, frozen_stages, norm_eval)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)  # weight: nn.Linear's default, as in the reference
            elif getattr(m, 'weight', None) is not None and isinstance(
                    m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def elastic_units(self):
        """Per stage, the list of booleans "dense layer j runs Elastic" (DenseNet-201+Elastic: 10, 20, 40 x
        True, then 30 x False)."""
        return [[layer.elastic for layer in stage.block.children()] for stage in self.stages]

    def extra_repr(self):
        return (f'variant={self.variant}, block_config={self.block_config}, elastic={self.is_elastic}, '
                f'output_stride={self.output_stride}, ' + super().extra_repr())


@register_model('elastic')
def densenet201(**kwargs):
    """DenseNet-201 (Huang et al. 2017; the Elastic paper's "DenseNet201*" baseline), blocks (6, 12, 48, 32),
    20.01M parameters / 4.29 GMACs at 224.  kwargs: see :class:`DenseNet`."""
    return DenseNet((6, 12, 48, 32), elastic=False, variant='densenet201', **kwargs)


@register_model('elastic')
def densenet201_elastic(**kwargs):
    """DenseNet-201+Elastic, blocks (10, 20, 40, 30), Elastic in blocks 1-3 (Elastic supplementary Table 3),
    19.48M parameters / 4.27 GMACs at 224.  kwargs: see :class:`DenseNet`."""
    return DenseNet((10, 20, 40, 30), elastic=True, variant='densenet201_elastic', **kwargs)
