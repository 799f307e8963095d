"""MMDetection necks for slimmable backbones (registered in ``mmdet.registry.MODELS``)."""
from mmdet.models.necks import FPN
from mmdet.registry import MODELS

from backbones.slimmable import InputSlicedConv2d

__all__ = ['SlicedFPN']


@MODELS.register_module()
class SlicedFPN(FPN):
    """MMDet :class:`FPN` whose lateral 1x1 convs (and an ``add_extra_convs='on_input'`` conv) slice
    their input channels, ``weight[:, :C_in]`` (:class:`backbones.slimmable.InputSlicedConv2d`), so one
    neck built for the largest backbone width serves every width of a slimmable backbone: a width-w
    backbone emits the first channels of each stage, and the lateral conv uses the matching first
    input channels of its weight (Yu & Huang 2019, Sec. 3: slimmable layers keep the first channels).
    At the largest width it is exactly :class:`FPN`.

    Args: as :class:`FPN`; ``in_channels`` are the backbone's channels at its *largest* width.

    Raises:
        ValueError (forward): a feature with more channels than ``in_channels`` or a wrong number of
            features.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for m in self.lateral_convs:
            m.conv = InputSlicedConv2d.from_conv(m.conv)
        if self.add_extra_convs == 'on_input' and len(self.fpn_convs) > len(self.lateral_convs):
            extra = self.fpn_convs[len(self.lateral_convs)]
            extra.conv = InputSlicedConv2d.from_conv(extra.conv)

    def forward(self, inputs):
        """``tuple`` of backbone features ``[N, C_i <= in_channels[i], H_i, W_i]`` -> ``num_outs``
        features of ``out_channels``."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'SlicedFPN expects {len(self.in_channels)} features, got {len(inputs)}')
        for i, (x, c) in enumerate(zip(inputs, self.in_channels)):
            if x.shape[1] > c:
                raise ValueError(f'feature {i} has {x.shape[1]} channels, more than in_channels[{i}]={c}; '
                                 f'build the neck for the backbone\'s largest width')
        return super().forward(inputs)
