"""RefineNet decode head for MMSegmentation (Lin et al., "RefineNet: Multi-Path Refinement Networks for
High-Resolution Semantic Segmentation", CVPR 2017).

4-cascaded RefineNet (paper Sec. 3.1, Fig. 2(a)/(c)): the deepest backbone feature (1/32) enters
RefineNet-4; the output of RefineNet-m and the next shallower backbone feature enter RefineNet-(m-1), down
to RefineNet-1 at 1/4 resolution.  Each RefineNet block (Sec. 3.2, Fig. 2(b)-(d)) has

* **adaptive convolution**: two residual convolution units (RCU: ReLU -> 3x3 conv -> ReLU -> 3x3 conv,
  plus the identity; the ResNet unit without BatchNorm) on every input path;
* **multi-resolution fusion**: a 3x3 convolution per path to the smallest channel count among the
  inputs, bilinear upsampling to the largest input resolution, summation (skipped with one input);
* **chained residual pooling**: ReLU, then a chain of pooling blocks (5x5 max-pooling with stride 1
  followed by a 3x3 convolution), each block taking the previous block's output, all summed with the
  block input through residual connections;
* **output convolution**: one more RCU.

Two extra RCUs follow RefineNet-1 before the pixel classifier (Sec. 3.2).  Path widths are 512 for
RefineNet-4 and 256 for the others (Sec. 3.2, "the filter number for each input path").  The backbone
features are first brought to those widths by a 3x3 "dimension adaptation" convolution (an implementation
choice: the paper's RCUs need equal input/output channels).  The paper removes BatchNorm from RCUs;
``norm_cfg`` (default None) can add a norm after every convolution.
"""
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.utils import resize
from torch import nn

from .heads import slice_input_convs
from .registry import register_mm_module

__all__ = ['ResidualConvUnit', 'MultiResolutionFusion', 'ChainedResidualPooling', 'RefineNetBlock',
           'RefineNetHead']


def _conv(cin, cout, k, norm_cfg, conv_cfg=None):
    return ConvModule(cin, cout, k, padding=k // 2, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=None)


class ResidualConvUnit(nn.Module):
    """RCU: ``x + conv(relu(conv(relu(x))))`` with 3x3 convolutions (RefineNet Sec. 3.2, Fig. 2(b)).

    Shapes: ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(self, channels, norm_cfg=None, conv_cfg=None):
        super().__init__()
        self.conv1 = _conv(channels, channels, 3, norm_cfg, conv_cfg)
        self.conv2 = _conv(channels, channels, 3, norm_cfg, conv_cfg)

    def forward(self, x):
        out = self.conv1(F.relu(x))
        out = self.conv2(F.relu(out))
        return out + x


class MultiResolutionFusion(nn.Module):
    """Multi-resolution fusion (RefineNet Sec. 3.2, Fig. 2(c)): per path a 3x3 conv to ``channels``
    (the smallest input width), bilinear upsampling to the largest input resolution, sum.

    With a single path the input passes unchanged.

    Args:
        in_channels (list[int]): channels of each path.
        channels (int): output channels.

    Shapes: list of ``[N, C_i, H_i, W_i]`` -> ``[N, channels, max H_i, max W_i]``.
    """

    def __init__(self, in_channels, channels, norm_cfg=None, conv_cfg=None, align_corners=False):
        super().__init__()
        self.align_corners = align_corners
        if len(in_channels) == 1:
            if in_channels[0] != channels:
                raise ValueError(f'a single-path fusion passes its input unchanged: '
                                 f'in_channels {in_channels} '
                                 f'must equal channels {channels}')
            self.convs = None
        else:
            self.convs = nn.ModuleList(_conv(c, channels, 3, norm_cfg, conv_cfg) for c in in_channels)

    def forward(self, xs):
        if self.convs is None:
            return xs[0]
        size = max((x.shape[-2:] for x in xs), key=lambda s: s[0] * s[1])
        out = 0
        for conv, x in zip(self.convs, xs):
            y = conv(x)
            if tuple(y.shape[-2:]) != tuple(size):
                y = resize(y, size=size, mode='bilinear', align_corners=self.align_corners)
            out = out + y
        return out


class ChainedResidualPooling(nn.Module):
    """Chained residual pooling (RefineNet Sec. 3.2, Fig. 2(d)): ``x = relu(x)``; then for each of
    ``num_blocks`` pooling blocks ``p = conv3x3(maxpool5x5_s1(p))`` (starting from ``p = x``) and
    ``x = x + p``.

    Shapes: ``[N, C, H, W] -> [N, C, H, W]``.
    """

    def __init__(self, channels, num_blocks=2, norm_cfg=None, conv_cfg=None):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f'chained residual pooling needs at least one pooling block, got {num_blocks}')
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.convs = nn.ModuleList(_conv(channels, channels, 3, norm_cfg, conv_cfg)
                                   for _ in range(num_blocks))

    def forward(self, x):
        x = F.relu(x)
        path = x
        for conv in self.convs:
            path = conv(self.pool(path))
            x = x + path
        return x


class RefineNetBlock(nn.Module):
    """One RefineNet-m block: adaptive conv (2 RCUs per path) -> multi-resolution fusion -> chained
    residual pooling -> output RCU (RefineNet Sec. 3.2, Fig. 2).

    Args:
        in_channels (list[int]): channels of each input path (deepest first).
        channels (int): output channels (the smallest input width in the paper).
        num_rcu (int): RCUs per input path (2).
        crp_blocks (int): pooling blocks of the chained residual pooling.

    Shapes: list of ``[N, C_i, H_i, W_i]`` -> ``[N, channels, max H_i, max W_i]``.
    """

    def __init__(self, in_channels, channels, num_rcu=2, crp_blocks=2, norm_cfg=None, conv_cfg=None,
                 align_corners=False):
        super().__init__()
        self.adaptive = nn.ModuleList(
            nn.Sequential(*[ResidualConvUnit(c, norm_cfg, conv_cfg) for _ in range(num_rcu)])
            for c in in_channels)
        self.fusion = MultiResolutionFusion(in_channels, channels, norm_cfg, conv_cfg, align_corners)
        self.crp = ChainedResidualPooling(channels, crp_blocks, norm_cfg, conv_cfg)
        self.output_rcu = ResidualConvUnit(channels, norm_cfg, conv_cfg)

    def forward(self, xs):
        xs = [rcus(x) for rcus, x in zip(self.adaptive, xs)]
        return self.output_rcu(self.crp(self.fusion(xs)))


@register_mm_module(frameworks=('mmseg',))
class RefineNetHead(BaseDecodeHead):
    """Cascaded RefineNet decode head (RefineNet-4-cascaded for four inputs; Lin et al. 2017).

    A ``BaseDecodeHead`` with ``input_transform='multiple_select'``: ``in_index`` selects the backbone
    features shallow to deep (e.g. ``(0, 1, 2, 3)`` = strides 4, 8, 16, 32 at output stride 32).  Each is
    mapped by a 3x3 conv to its path width (``top_channels`` for the deepest, ``channels`` for the others);
    RefineNet-k takes the deepest path alone, every following block takes the previous block's output and
    the next shallower path; ``num_final_rcu`` RCUs then the classifier (``conv_seg``).

    Args:
        in_channels (Sequence[int]): backbone channels per selected feature (shallow to deep).
        channels (int): path width of RefineNet-3..1 and of the classifier input (256).
        top_channels (int): path width of RefineNet-4 (512).
        num_rcu (int): RCUs per input path in the adaptive convolution (2).
        crp_blocks (int): pooling blocks in every chained residual pooling (2, as drawn in Fig. 2(d)).
        num_final_rcu (int): RCUs after RefineNet-1 (2).
        input_sliced (bool): the dimension-adaptation convs accept fewer input channels than
            ``in_channels`` (slimmable backbones at width < 1; ``backbones.slimmable.InputSlicedConv2d``).
        **kwargs: :class:`mmseg.models.decode_heads.decode_head.BaseDecodeHead` arguments (``num_classes``,
            ``in_index``, ``norm_cfg`` (default None: no norm, as in the paper), ``dropout_ratio``,
            ``align_corners``, ``loss_decode``, ...).

    Shapes:
        ``forward``: tuple of backbone features -> logits ``[N, num_classes, H_0, W_0]`` at the resolution
        of the shallowest selected feature (1/4 of the input for ``in_index=(0, 1, 2, 3)``).

    Raises:
        ValueError: ``in_channels``/``in_index`` not sequences of the same length, or
            ``input_transform`` other than ``'multiple_select'``.
    """

    def __init__(self, in_channels, channels=256, top_channels=512, num_rcu=2, crp_blocks=2, num_final_rcu=2,
                 input_sliced=False, input_transform='multiple_select', **kwargs):
        if input_transform != 'multiple_select':
            raise ValueError(f"RefineNetHead needs input_transform='multiple_select', "
                             f'got {input_transform!r}')
        in_index = kwargs.get('in_index')
        if not isinstance(in_channels, (list, tuple)) or not isinstance(in_index, (list, tuple)) \
                or len(in_channels) != len(in_index):
            raise ValueError(f'RefineNetHead needs in_channels and in_index as sequences of the same length '
                             f'(shallow to deep), got in_channels={in_channels}, in_index={in_index}')
        super().__init__(in_channels, channels, input_transform='multiple_select', **kwargs)
        k = len(in_channels)
        widths = [channels] * (k - 1) + [top_channels]
        self.path_channels = widths
        norm, conv = self.norm_cfg, self.conv_cfg
        self.adapt = nn.ModuleList(_conv(c, w, 3, norm, conv) for c, w in zip(in_channels, widths))
        # blocks[0] = RefineNet-k (deepest, single input), blocks[-1] = RefineNet-1
        ac = self.align_corners
        blocks = [RefineNetBlock([top_channels], top_channels, num_rcu, crp_blocks, norm, conv, ac)]
        prev = top_channels
        for i in range(k - 2, -1, -1):
            out = min(prev, widths[i])
            blocks.append(RefineNetBlock([prev, widths[i]], out, num_rcu, crp_blocks, norm, conv, ac))
            prev = out
        if prev != channels:
            raise ValueError(f'the last RefineNet block outputs {prev} channels, but channels={channels}')
        self.refine_blocks = nn.ModuleList(blocks)
        self.final_rcus = nn.Sequential(*[ResidualConvUnit(channels, self.norm_cfg, self.conv_cfg)
                                          for _ in range(num_final_rcu)])
        self.input_sliced = input_sliced
        if input_sliced:
            slice_input_convs(self.adapt)

    def _forward_feature(self, inputs):
        """Tuple of backbone features -> ``[N, channels, H_0, W_0]`` (before the classifier)."""
        xs = self._transform_inputs(inputs)
        paths = [adapt(x) for adapt, x in zip(self.adapt, xs)]
        out = self.refine_blocks[0]([paths[-1]])
        for block, path in zip(self.refine_blocks[1:], reversed(paths[:-1])):
            out = block([out, path])
        return self.final_rcus(out)

    def forward(self, inputs):
        """Tuple of backbone features -> logits ``[N, num_classes, H_0, W_0]``."""
        return self.cls_seg(self._forward_feature(inputs))
