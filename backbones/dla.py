"""DLA-X60 / DLA-X102 and their Elastic versions (Wang et al., "ELASTIC", CVPR 2019, Sec. 3.3, supplementary
Table 4; Deep Layer Aggregation, Yu et al., CVPR 2018).

Layout of the authors' ``models/dla.py`` (``official_implementations.md`` Sec. 1.4): channels (16, 32, 128,
256, 512, 1024); ``base_layer`` is a 7x7 stride-1 convolution 3 -> 16 at full resolution, level 0 a 3x3
convolution 16 -> 16, level 1 a 3x3 stride-2 convolution 16 -> 32, and levels 2-5 are hierarchical
aggregation trees (:class:`DLATree`) of depth ``levels[2..5]`` with stride 2, whose leaves are ResNeXt-style
bottlenecks (:class:`DLABottleneck`, "Split32": ``planes * cardinality / 32`` bottleneck channels in
``cardinality`` groups, output ``planes``) and whose aggregation nodes are 1x1 convolutions over the
concatenated children (:class:`DLARoot`).

=====================  ==================  ===========  ========================  ==================
model                  levels              cardinality  Elastic                   residual root
=====================  ==================  ===========  ========================  ==================
``dla60x``             1, 1, 1, 2, 3, 1    32           -                         no
``dla60x_elastic``     1, 1, 1, 2, 3, 1    32           levels 2-4, stride-1      no
``dla102x``            1, 1, 1, 3, 4, 1    32           -                         yes
``dla102x_selastic``   1, 1, 1, 3, 4, 1    32           levels 2-4, stride-1      yes
``dla102x_elastic``    1, 1, 3, 3, 3, 1    50           levels 2-4, stride-1      yes
=====================  ==================  ===========  ========================  ==================

(DLA-X102+sElastic is the paper's supplementary Table 1/4 model: DLA-X102 with Elastic bottlenecks; the
authors' code has no factory for it.  DLA-X60+sElastic equals DLA-X60+Elastic, so it has no name of its own.)

**Elastic bottleneck**: two branches of half the bottleneck width with ``cardinality / 2`` groups each, one
at full resolution (``conv1 bn1 conv2 bn2 conv3``), one at half resolution (``conv1_d bn1_d conv2_d bn2_d
conv3_d`` between :func:`~backbones.elastic.elastic_downsample` and
:func:`~backbones.elastic.elastic_upsample`), summed before the shared ``bn3``, then the residual is added
and a ReLU applied.  Elastic is on in every bottleneck of levels 2-4 except the first (stride-2) one of each
level, and off in level 5: the authors' rule "stride == 1 and planes < 1024", fixed here by the
classification layout so that it does not change with the output stride.  A bottleneck with Elastic off runs
its two halves as one ``cardinality``-group bottleneck, i.e. exactly the baseline's block (outputs equal up
to float rounding; see :mod:`backbones.elastic`).  ``cardinality`` is an argument of every module here, never
a class attribute (the authors' ``dla102x_elastic()`` changes ``BottleneckX.cardinality`` for every later
model of the process).

**Unused projections**: the authors' ``Tree`` builds a 1x1-conv + BN ``project`` of the downsampled input at
every tree node with ``in_channels != out_channels``, but a node of depth > 1 passes that projection to its
first child, which is itself a tree and recomputes its own: the projection of every depth > 1 node is
computed and thrown away (timm's DLA drops it too).  dynscale builds only the used projections (depth-1
nodes), so the models have fewer parameters and MACs than the authors' count (``official_implementations.md``
Sec. 1.8): DLA-X60(+Elastic) -297,472 parameters / -77.1M MACs at 224, DLA-X102(+sElastic) -462,848 /
-128.5M, DLA-X102+Elastic -339,456 / -128.5M.  Replacing them by random values leaves the authors' logits
bit-identical and they never receive a gradient (under DDP they would be "unused parameters").  The converter
drops these tensors from the authors' files, naming them.

Grouping into the four dynscale stages: **stem** = ``base_layer``, level 0 and level 1 (output stride 2,
32 channels); **stages 1-4** = levels 2, 3, 4, 5 (strides 4, 8, 16, 32; 128, 256, 512, 1024 channels);
**head** = global average pooling + Linear (the authors' 1x1-conv classifier after ``AvgPool2d(7)``: the same
map on pooled features, without the 224x224-only pool).  The trees' max-pooling uses ``ceil_mode=True``
(as the authors' segmentation models), which equals the classification models' pooling at even sizes and
matches the stride-2 convolutions' ``ceil(H / 2)`` at odd sizes.
"""
import functools
from collections import OrderedDict

import torch
from torch import nn

from ._registry import register_model
from .base import DynamicBackbone, classifier_head, output_stride_dilations
from .elastic import elastic_downsample, elastic_upsample

__all__ = ['DLABottleneck', 'DLARoot', 'DLATree', 'DLA', 'dla60x', 'dla60x_elastic', 'dla102x', 'dla102x_selastic',
           'dla102x_elastic']

CHANNELS = (16, 32, 128, 256, 512, 1024)


class DLABottleneck(nn.Module):
    """DLA-X bottleneck ("Split32"), optionally Elastic (reference ``BottleneckX`` / ``BottleneckXElastic``).

    ``conv1`` 1x1 (inplanes -> w) -> norm -> ReLU -> ``conv2`` 3x3 (w -> w, ``cardinality`` groups, stride,
    dilation) -> norm -> ReLU -> ``conv3`` 1x1 (w -> planes) -> ``bn3`` -> + residual -> ReLU, with
    ``w = planes * cardinality // 32``.  With ``elastic`` the bottleneck is two branches of ``w / 2`` channels
    and ``cardinality / 2`` groups, the ``_d`` one at half resolution, summed before ``bn3``.

    Args:
        inplanes (int): input channels.
        planes (int): output channels.
        stride (int): stride of the 3x3 convolution (1 or 2).
        dilation (int): dilation (and padding) of the 3x3 convolutions.
        cardinality (int): groups of the whole bottleneck.
        elastic (bool): half-resolution second branch; requires ``stride == 1`` and an even ``cardinality``.
        norm_layer (callable): ``C -> nn.Module``.

    Shapes:
        ``forward(x, residual=None)``: ``x`` ``[N, inplanes, H, W]``, ``residual`` ``[N, planes, H', W']``
        (default ``x``, which then needs ``inplanes == planes`` and stride 1) ``-> [N, planes, H', W']`` with
        ``H' = ceil(H / stride)``.

    Raises:
        ValueError: ``elastic`` with ``stride != 1`` or an odd ``cardinality``; a bottleneck (or branch) width
            not divisible by its groups.
    """

    def __init__(self, inplanes, planes, stride=1, dilation=1, cardinality=32, elastic=False,
                 norm_layer=nn.BatchNorm2d):
        super().__init__()
        width = planes * cardinality // 32
        if elastic and stride != 1:
            raise ValueError(f'Elastic is only defined for stride-1 bottlenecks, got stride={stride}')
        if elastic and cardinality % 2:
            raise ValueError(f'an Elastic bottleneck has two branches of cardinality/2 groups: cardinality must '
                             f'be even, got {cardinality}')
        branch, groups = (width // 2, cardinality // 2) if elastic else (width, cardinality)
        if branch % groups:
            raise ValueError(f'bottleneck width {branch} (planes {planes} x cardinality {cardinality} / 32'
                             f'{" / 2" if elastic else ""}) is not divisible by its {groups} groups')
        self.elastic = bool(elastic)
        self.stride = stride
        self.dilation = dilation
        conv3x3 = functools.partial(nn.Conv2d, kernel_size=3, padding=dilation, dilation=dilation, groups=groups,
                                    bias=False)
        self.conv1 = nn.Conv2d(inplanes, branch, 1, bias=False)
        self.bn1 = norm_layer(branch)
        self.conv2 = conv3x3(branch, branch, stride=stride)
        self.bn2 = norm_layer(branch)
        self.conv3 = nn.Conv2d(branch, planes, 1, bias=False)
        if self.elastic:
            self.conv1_d = nn.Conv2d(inplanes, branch, 1, bias=False)
            self.bn1_d = norm_layer(branch)
            self.conv2_d = conv3x3(branch, branch)
            self.bn2_d = norm_layer(branch)
            self.conv3_d = nn.Conv2d(branch, planes, 1, bias=False)
        self.bn3 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)

    def _branch(self, x, conv1, bn1, conv2, bn2, conv3):
        x = self.relu(bn1(conv1(x)))
        x = self.relu(bn2(conv2(x)))
        return conv3(x)

    def forward(self, x, residual=None):
        """``[N, inplanes, H, W] -> [N, planes, ceil(H / stride), ceil(W / stride)]`` (class docstring)."""
        if residual is None:
            residual = x
        out = self._branch(x, self.conv1, self.bn1, self.conv2, self.bn2, self.conv3)
        if self.elastic:
            low = self._branch(elastic_downsample(x), self.conv1_d, self.bn1_d, self.conv2_d, self.bn2_d,
                               self.conv3_d)
            out += elastic_upsample(low, out.shape[-2:])  # in place: conv backward does not need its output
        out = self.bn3(out)
        out += residual  # in place: bn3's output is not saved for backward
        return self.relu(out)

    def extra_repr(self):
        return f'elastic={self.elastic}, stride={self.stride}, dilation={self.dilation}'


class DLARoot(nn.Module):
    """Aggregation node: 1x1 conv over the concatenated children -> norm [-> + first child] -> ReLU.

    Args:
        in_channels (int): channels of the concatenation.
        out_channels (int): output channels (== channels of the first child when ``residual``).
        residual (bool): add the first child (DLA-X102's "residual root").
        norm_layer (callable): ``C -> nn.Module``.

    Shapes:
        ``forward(*children)``: maps ``[N, C_i, H, W]`` with ``sum(C_i) == in_channels`` ``-> [N, out_channels,
        H, W]``.
    """

    def __init__(self, in_channels, out_channels, residual=False, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual

    def forward(self, *children):
        """``children -> [N, out_channels, H, W]`` (class docstring)."""
        x = self.bn(self.conv(torch.cat(children, 1)))
        if self.residual:
            x += children[0]
        return self.relu(x)


class DLATree(nn.Module):
    """Hierarchical deep aggregation tree of depth ``levels`` (reference ``Tree``; DLA paper Sec. 3, Fig. 2).

    Depth 1: two bottlenecks (``tree1`` strided, ``tree2``) and a :class:`DLARoot` over ``(tree2 output,
    tree1 output, *children)``; ``project`` (1x1 conv + norm of the max-pooled input, when the channels change)
    is the first bottleneck's residual.  Depth d > 1: ``tree1`` is a depth d - 1 tree (strided), ``tree2`` a
    depth d - 1 tree that receives the aggregation children (the pooled input when ``level_root``, then
    ``tree1``'s output).  The reference also builds ``project`` at depth > 1 nodes but never uses it (module
    docstring): it is not built here.

    Args:
        levels (int): depth >= 1.
        in_channels (int), out_channels (int): channels.
        stride (int): stride of the first bottleneck and of the max-pooling of the input (1 or 2).
        dilation (int): dilation of every bottleneck's 3x3 convolutions.
        cls_stride (int): the stride in the classification (output stride 32) layout; it decides which
            bottlenecks are Elastic, so the same weights fit every output stride.
        level_root (bool): the pooled input joins the aggregation of the tree's last root.
        root_dim (int): channels of that aggregation (0: ``2 * out_channels``).
        root_residual (bool): residual roots.
        cardinality (int), elastic (bool), norm_layer (callable): bottleneck options; with ``elastic`` every
            bottleneck with ``cls_stride == 1`` is Elastic.

    Shapes:
        ``forward(x, children=None)``: ``[N, in_channels, H, W] -> [N, out_channels, ceil(H / stride),
        ceil(W / stride)]``.
    """

    def __init__(self, levels, in_channels, out_channels, stride=1, dilation=1, cls_stride=None, level_root=False,
                 root_dim=0, root_residual=False, cardinality=32, elastic=False, norm_layer=nn.BatchNorm2d):
        super().__init__()
        cls_stride = stride if cls_stride is None else cls_stride
        if root_dim == 0:
            root_dim = 2 * out_channels
        if level_root:
            root_dim += in_channels
        blk = functools.partial(DLABottleneck, dilation=dilation, cardinality=cardinality, norm_layer=norm_layer)
        sub = functools.partial(DLATree, levels - 1, dilation=dilation, root_residual=root_residual,
                                cardinality=cardinality, elastic=elastic, norm_layer=norm_layer)
        if levels == 1:
            self.tree1 = blk(in_channels, out_channels, stride, elastic=elastic and cls_stride == 1)
            self.tree2 = blk(out_channels, out_channels, 1, elastic=elastic)
            self.root = DLARoot(root_dim, out_channels, root_residual, norm_layer)
        else:
            self.tree1 = sub(in_channels, out_channels, stride, cls_stride=cls_stride, root_dim=0)
            self.tree2 = sub(out_channels, out_channels, 1, root_dim=root_dim + out_channels)
        self.project = None
        if levels == 1 and in_channels != out_channels:
            self.project = nn.Sequential(OrderedDict([('0', nn.Conv2d(in_channels, out_channels, 1, bias=False)),
                                                      ('1', norm_layer(out_channels))]))
        # ceil_mode: ceil(H / 2) like the strided 3x3 convolution at odd sizes (equal to floor at even sizes)
        self.downsample = nn.MaxPool2d(stride, stride=stride, ceil_mode=True) if stride > 1 else None
        self.levels = levels
        self.level_root = level_root

    def forward(self, x, children=None):
        """``[N, in_channels, H, W] -> [N, out_channels, ceil(H / stride), ceil(W / stride)]``."""
        children = list(children or ())
        bottom = None
        if self.levels == 1 or self.level_root:  # the residual of the first bottleneck / an aggregation child
            bottom = self.downsample(x) if self.downsample is not None else x
        if self.level_root:
            children.append(bottom)
        if self.levels == 1:
            residual = self.project(bottom) if self.project is not None else bottom
            x1 = self.tree1(x, residual)
            x2 = self.tree2(x1)
            return self.root(x2, x1, *children)
        x1 = self.tree1(x)
        children.append(x1)
        return self.tree2(x1, children)


class DLA(DynamicBackbone):
    """DLA-X (Deep Layer Aggregation with ResNeXt bottlenecks) with optional Elastic bottlenecks.

    Module docstring: layout, model table, stage grouping, and the unused projections of the reference.

    Dense prediction (DeepLabV3 style): ``output_stride`` 16 removes the stride of level 5 (stage 4) and
    dilates it by 2; 8 also removes the stride of level 4 and dilates it by 2 (level 5 by 4).  Elastic
    bottlenecks keep their half-resolution branch; the parameters do not depend on the output stride.

    Initialisation (reference ``DLA.__init__``, ``official_implementations.md`` Sec. 1.4): every convolution
    normal(0, sqrt(2 / (k * k * out_channels))), norm weights 1 and biases 0 (no zero-init of ``bn3``); the
    classifier weight normal(0, sqrt(2 / num_classes)) - the reference's 1x1 classifier convolution - and its
    bias at PyTorch's default.

    Args:
        levels (tuple[int]): 6 ints: convolutions of levels 0 and 1, tree depths of levels 2-5.
        channels (tuple[int]): 6 channel counts (default (16, 32, 128, 256, 512, 1024)).
        cardinality (int): groups of every bottleneck (32; DLA-X102+Elastic 50).
        elastic (bool): Elastic bottlenecks in levels 2-4 (stride-1 ones).
        residual_root (bool): residual aggregation nodes (DLA-X102 variants).
        num_classes (int): classifier outputs; 0 = features only (no head).
        out_indices, frozen_stages, norm_eval: see :class:`backbones.base.DynamicBackbone`.
        output_stride (int): 32, 16 or 8.
        norm_layer (callable | None): ``C -> nn.Module`` (default ``nn.BatchNorm2d``).
        channels_last (bool): store the weights channels-last (faster Elastic pooling / upsampling on CPU).
        variant (str | None): registered name, stored as ``self.variant``.

    Shapes:
        ``forward``: ``[N, 3, H, W] -> [N, num_classes]`` (or the features dict when ``num_classes=0``);
        ``forward_stages``: ``'stage{i}' -> [N, channels[i + 2], ceil(H / s_i), ceil(W / s_i)]``.

    Raises:
        ValueError: ``levels`` / ``channels`` not 6 positive ints; output stride not in {8, 16, 32};
            ``norm_layer`` not callable; a cardinality that does not divide the bottleneck widths (or is odd
            in an Elastic model); bad ``out_indices`` / ``frozen_stages``.
    """

    family = 'elastic'
    cpu_layout = 'channels_last'  # DynamicBackbone.cpu_layout: Elastic's pooling/upsampling are slow in NCHW on CPU

    def __init__(self, levels, channels=CHANNELS, cardinality=32, elastic=False, residual_root=False, num_classes=1000,
                 out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False, output_stride=32, norm_layer=None,
                 channels_last=False, variant=None):
        super().__init__()
        levels, channels = list(levels), list(channels)
        for what, v in (('levels', levels), ('channels', channels)):
            if len(v) != 6 or any(int(n) != n or n < 1 for n in v):
                raise ValueError(f'{what} must be 6 positive ints (levels 0..5), got {v}')
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        if not callable(norm_layer):
            raise ValueError(f'norm_layer must be a callable C -> nn.Module (e.g. nn.BatchNorm2d or '
                             f'functools.partial(nn.GroupNorm, 32)), got {norm_layer!r}')
        if elastic and cardinality % 2:
            raise ValueError(f'an Elastic DLA needs an even cardinality (two branches of cardinality/2 groups), '
                             f'got {cardinality}')
        strides, dilations, _ = output_stride_dilations(output_stride)
        self.variant = variant
        self.levels = tuple(levels)
        self.cardinality = cardinality
        self.output_stride = output_stride
        self.is_elastic = bool(elastic)

        def conv_level(cin, cout, convs, stride):
            mods = []
            for i in range(convs):
                mods += [nn.Conv2d(cin, cout, 3, stride=stride if i == 0 else 1, padding=1, bias=False),
                         norm_layer(cout), nn.ReLU(inplace=True)]
                cin = cout
            return nn.Sequential(*mods)

        self.stem = nn.Sequential(OrderedDict([
            ('base_layer', nn.Sequential(nn.Conv2d(3, channels[0], 7, padding=3, bias=False), norm_layer(channels[0]),
                                         nn.ReLU(inplace=True))),
            ('level0', conv_level(channels[0], channels[0], levels[0], 1)),
            ('level1', conv_level(channels[0], channels[1], levels[1], 2)),
        ]))
        stage_strides = (2,) + tuple(strides[1:])  # level 2 always halves the stem's stride-2 map
        self.stages = nn.ModuleList(
            DLATree(levels[i + 2], channels[i + 1], channels[i + 2], stride=stage_strides[i], dilation=dilations[i],
                    cls_stride=2, level_root=i > 0, root_residual=residual_root, cardinality=cardinality,
                    elastic=elastic and i < 3, norm_layer=norm_layer)
            for i in range(4))
        self.head = classifier_head(channels[5], num_classes)
        self._stage_channels = channels[2:]
        s, self._stage_strides = 2, []
        for st in stage_strides:
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
            elif isinstance(m, nn.Linear):  # the reference's 1x1 conv classifier: same fan-out rule, default bias
                nn.init.normal_(m.weight, 0.0, (2.0 / m.out_features) ** 0.5)
            elif getattr(m, 'weight', None) is not None and isinstance(
                    m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def elastic_units(self):
        """Per stage, "bottleneck j runs Elastic" in execution order (DLA-X60+Elastic stage 1: ``[False, True]``)."""
        return [[m.elastic for m in stage.modules() if isinstance(m, DLABottleneck)] for stage in self.stages]

    def extra_repr(self):
        return (f'variant={self.variant}, levels={self.levels}, cardinality={self.cardinality}, '
                f'elastic={self.is_elastic}, output_stride={self.output_stride}, ' + super().extra_repr())


@register_model('elastic')
def dla60x(**kwargs):
    """DLA-X60 (Yu et al. 2018; the Elastic paper's "DLA-X60*"), levels (1, 1, 1, 2, 3, 1), cardinality 32,
    17.35M parameters / 3.52 GMACs at 224 (the reference's 17.65M / 3.59G include unused projections, see the
    module docstring).  kwargs: see :class:`DLA`."""
    return DLA((1, 1, 1, 2, 3, 1), variant='dla60x', **kwargs)


@register_model('elastic')
def dla60x_elastic(**kwargs):
    """DLA-X60+Elastic (Elastic paper Table 2, supplementary Table 4), 17.35M / 3.03 GMACs at 224
    (reference 17.65M / 3.11G with the unused projections).  kwargs: see :class:`DLA`."""
    return DLA((1, 1, 1, 2, 3, 1), elastic=True, variant='dla60x_elastic', **kwargs)


@register_model('elastic')
def dla102x(**kwargs):
    """DLA-X102, levels (1, 1, 1, 3, 4, 1), residual roots, cardinality 32, 26.31M / 5.85 GMACs at 224
    (reference 26.77M / 5.98G with the unused projections).  kwargs: see :class:`DLA`."""
    return DLA((1, 1, 1, 3, 4, 1), residual_root=True, variant='dla102x', **kwargs)


@register_model('elastic')
def dla102x_selastic(**kwargs):
    """DLA-X102+sElastic (Elastic supplementary Tables 1 and 4: DLA-X102 with Elastic bottlenecks, paper
    26.8M / 5.0B; no factory in the authors' code), 26.31M / 4.84 GMACs at 224.  kwargs: see :class:`DLA`."""
    return DLA((1, 1, 1, 3, 4, 1), elastic=True, residual_root=True, variant='dla102x_selastic', **kwargs)


@register_model('elastic')
def dla102x_elastic(**kwargs):
    """DLA-X102+Elastic, levels (1, 1, 3, 3, 3, 1), residual roots, **cardinality 50** ("Split50", 25 groups
    per branch; supplementary Table 4), 24.58M / 5.82 GMACs at 224 (reference 24.92M / 5.95G with the unused
    projections).  No ImageNet weights were released.  kwargs: see :class:`DLA`."""
    kwargs.setdefault('cardinality', 50)
    return DLA((1, 1, 3, 3, 3, 1), elastic=True, residual_root=True, variant='dla102x_elastic', **kwargs)
