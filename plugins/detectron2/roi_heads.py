"""C4 box head for the SACT paper's Faster R-CNN (Figurnov et al. 2017, supplementary Sec. A.2).

The SACT detector follows Faster R-CNN with a ResNet "C4" split: conv1..conv4 (with SACT) are the
feature extractor at stride 16, and the fourth block ("res5") is run on each proposal's crop as the box
classifier. :class:`DynscaleRes5ROIHeads` is detectron2's ``Res5ROIHeads`` whose ``res5`` is stage 4 of
the dynscale SACT network named by ``MODEL.DYNSCALE.NAME`` (``MODEL.DYNSCALE.HEAD_NAME`` may name the
plain ``preact_resnet*`` instead), followed by that network's final BN+ReLU (the pre-activation
network's post-norm).

Crops: the paper crops 28x28 and pools to 7x7 (TensorFlow ``crop_and_resize``); the configs use
``ROIAlignV2`` at 14x14 with 2x2 samples per bin (28x28 bilinear samples) and the stride-2 first unit of
res5, giving 7x7 maps like detectron2's C4 models.

The backbone (``build_sact_backbone`` with ``OUT_FEATURES: ["res4"]``) returns the pre-activation
``ReLU(BN(x))`` of the first res5 unit (see ``backbones.sact``); that unit has a projection shortcut on the
pre-activation, so the head consumes the crop of the pre-activation directly and the first unit's own
``norm1`` stays in the backbone (key ``backbone.net.stages.3.units.0.norm1``).
"""

import torch.nn.functional as F
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn

import backbones

from .norms import convert_norm


class SACTRes5Head(nn.Module):
    """Stage 4 (``ACTStage``) of a pre-activation (S)ACT ResNet plus its post-norm, applied to ROI crops.

    Args:
        stage (nn.Module): ``backbones.sact.ACTStage`` whose first unit has a projection shortcut.
        norm (nn.Module): the network's final norm (2048 channels).

    Shapes: ``[R, 1024, 14, 14]`` (pre-activated crops) -> ``[R, 2048, 7, 7]``.

    Attributes:
        ponder_costs (list[Tensor]): after a forward, ``[stage.ponder_cost]`` (``[R, 7, 7]`` SACT,
            ``[R]`` ACT) or ``[]`` for a plain stage.
    """

    def __init__(self, stage, norm):
        super().__init__()
        if stage.units[0].downsample is None:
            raise ValueError(
                'the res5 head needs a first unit with a projection shortcut (stride 2 / depth change)'
            )
        # the first unit's pre-activation is computed by the backbone (its res4 output); drop the copy here
        stage.units[0].norm1 = nn.Identity()
        self.stage = stage
        self.norm = norm
        self.ponder_costs = []

    def forward(self, x):
        """Run res5 on pre-activated crops ``x`` and return ``ReLU(norm(res5(x)))``."""
        out = self.stage(x, x)
        self.ponder_costs = [self.stage.ponder_cost] if self.stage.ponder_cost is not None else []
        return F.relu(self.norm(out))


def build_sact_res5_head(cfg):
    """Build :class:`SACTRes5Head` from ``MODEL.DYNSCALE`` (``HEAD_NAME`` or ``NAME``, ``NORM``).

    Returns:
        tuple: ``(head, out_channels)``.

    Raises:
        ValueError: the network has no ponder cost (not a SACT / ACT ResNet).
    """
    from backbones.capabilities import capabilities, models_with
    D = cfg.MODEL.DYNSCALE
    name = D.HEAD_NAME or D.NAME
    if 'ponder_cost' not in capabilities(name):
        raise ValueError(
            f'DynscaleRes5ROIHeads (C4) runs stage 4 of a pre-activation SACT/ACT ResNet; '
            f'MODEL.DYNSCALE.HEAD_NAME/NAME={name!r} is a {backbones.model_family(name)!r} backbone. '
            f'Use one of {models_with("ponder_cost")} or an FPN config'
        )
    norm_layer = {}
    if D.NORM == 'GN':
        from detectron2.layers import get_norm

        norm_layer = {'norm_layer': lambda c: get_norm('GN', c)}
    net = backbones.create(name, num_classes=0, **norm_layer)
    head = SACTRes5Head(net.stages[3], net.norm)
    head = convert_norm(head, D.NORM)
    return head, net.stage_channels()[3]


@ROI_HEADS_REGISTRY.register()
class DynscaleRes5ROIHeads(Res5ROIHeads):
    """``Res5ROIHeads`` whose per-region res5 is stage 4 of a dynscale SACT/ACT network (C4 detector).

    Everything else (pooler, box predictor, optional mask head, sampling) is detectron2's
    ``Res5ROIHeads``; see the module docstring for the crop geometry. After a forward,
    ``self.res5.ponder_costs`` holds the head's ponder-cost maps, which the trainer adds to the loss.
    """

    @classmethod
    def _build_res5_block(cls, cfg):
        return build_sact_res5_head(cfg)
