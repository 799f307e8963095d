"""Decode-head pieces shared by the dynscale segmentation configs.

* :func:`slice_input_convs` swaps the convolutions that read backbone features for
  ``backbones.slimmable.InputSlicedConv2d`` so that one set of head weights serves every backbone width
  (US-Net/MutualNet: a slimmed backbone emits the first ``C_w`` channels of each stage).
* :class:`DeepLabV3Head`: MMSeg's ``ASPPHead`` with the DeepLabV3 projection after the ASPP
  concatenation as a 1x1 convolution (Chen et al. 2017, "Rethinking Atrous Convolution", Sec. 3.3:
  "concatenated and pass through another 1x1 convolution with 256 filters"; MMSeg uses a 3x3 there), and
  the slicing option.
"""
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.aspp_head import ASPPHead
from torch import nn

from .registry import register_mm_module

__all__ = ['slice_input_convs', 'DeepLabV3Head']


def slice_input_convs(modules):
    """Replace the ``nn.Conv2d`` of each given module by ``InputSlicedConv2d.from_conv`` (same weights).

    Args:
        modules (Iterable[nn.Module]): ``mmcv.cnn.ConvModule`` (its ``.conv`` is replaced) or ``nn.Conv2d``
            children of a parent are not supported directly: pass the ConvModules.

    Returns:
        int: number of convolutions replaced.

    Raises:
        ValueError: a module without a ``conv`` attribute holding an ``nn.Conv2d`` with ``groups == 1``.
    """
    from backbones.slimmable import InputSlicedConv2d
    n = 0
    for m in modules:
        conv = getattr(m, 'conv', None)
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            raise ValueError(f'slice_input_convs expects ConvModules with a groups=1 nn.Conv2d in .conv, got '
                             f'{type(m).__name__} with conv={type(conv).__name__}')
        if not isinstance(conv, InputSlicedConv2d):
            m.conv = InputSlicedConv2d.from_conv(conv)
            n += 1
    return n


@register_mm_module(frameworks=('mmseg',))
class DeepLabV3Head(ASPPHead):
    """DeepLabV3 ASPP head (Chen et al. 2017, Sec. 3.3) as configured in the Elastic paper (Sec. 4.3):
    image pooling + 1x1 + three 3x3 atrous convolutions (``dilations=(1, 6, 12, 18)`` at output
    stride 16), each ``channels`` wide with norm + ReLU, concatenated, projected by a
    ``bottleneck_kernel_size`` convolution (1 in the paper, 3 in MMSeg's ``ASPPHead``), then
    (dropout) and the 1x1 classifier.

    Args:
        bottleneck_kernel_size (int): 1 (paper) or 3 (MMSeg).
        input_sliced (bool): the image-pooling and ASPP convolutions accept any number of input
            channels up to ``in_channels`` (slimmable backbones; see :func:`slice_input_convs`).
        **kwargs: ``ASPPHead`` / ``BaseDecodeHead`` arguments.

    Shapes:
        ``forward``: backbone features (``in_index`` selects ``[N, C, h, w]``, ``C <= in_channels`` when
        ``input_sliced``) -> logits ``[N, num_classes, h, w]``.

    Raises:
        ValueError: ``bottleneck_kernel_size`` not 1 or 3.
    """

    def __init__(self, bottleneck_kernel_size=1, input_sliced=False, **kwargs):
        super().__init__(**kwargs)
        if bottleneck_kernel_size not in (1, 3):
            raise ValueError(f'bottleneck_kernel_size must be 1 (DeepLabV3 paper) or 3 (MMSeg), '
                             f'got {bottleneck_kernel_size}')
        if bottleneck_kernel_size == 1:
            self.bottleneck = ConvModule((len(self.dilations) + 1) * self.channels, self.channels, 1,
                                         conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.input_sliced = input_sliced
        if input_sliced:
            slice_input_convs([self.image_pool[1], *self.aspp_modules])
