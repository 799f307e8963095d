"""A detectron2 ``FPN`` shared by every width of a slimmable backbone.

Stage outputs have fewer channels at lower widths. :func:`slice_fpn_laterals` replaces every FPN lateral conv by an
input-sliced conv (``backbones.slimmable.InputSlicedConv2d``), so one set of FPN and head weights serves every width
(MutualNet, Yang et al. 2020, Sec. 4.3: "the FPN neck and detection head are shared among different sub-networks").
"""
import backbones

__all__ = ['SlicedD2Conv2d', 'slice_fpn_laterals']


class SlicedD2Conv2d(backbones.slimmable.InputSlicedConv2d):
    """``InputSlicedConv2d`` with detectron2 ``Conv2d`` 's optional ``norm`` and ``activation``.

    Uses ``weight[:, :C_in]`` for an input with ``C_in`` channels, then ``norm`` and ``activation``, so a
    neck lateral built for the maximum backbone width serves every width (MutualNet Sec. 4.3). State-dict
    keys are those of the converted ``Conv2d`` (``weight``, ``bias``, ``norm.*``).
    """

    def forward(self, x):
        """``[N, C_in <= in_channels, H, W] -> [N, out_channels, H', W']``."""
        x = super().forward(x)
        if getattr(self, 'norm', None) is not None:
            x = self.norm(x)
        if getattr(self, 'activation', None) is not None:
            x = self.activation(x)
        return x


def slice_fpn_laterals(fpn):
    """Make every lateral conv of a detectron2 ``FPN`` accept fewer input channels (slimmable widths).

    Args:
        fpn (FPN): built for the maximum width of its ``bottom_up``.

    Returns:
        FPN: the same object, laterals replaced (``fpn_lateral{k}`` and ``fpn.lateral_convs``).
    """
    new_list = []
    for conv in fpn.lateral_convs:
        name = next(n for n, m in fpn.named_children() if m is conv)
        sliced = SlicedD2Conv2d.from_conv(conv)
        sliced.norm = conv.norm
        sliced.activation = conv.activation
        setattr(fpn, name, sliced)
        new_list.append(sliced)
    fpn.lateral_convs = new_list
    return fpn
