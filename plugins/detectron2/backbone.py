"""Detectron2 ``Backbone`` adapters for every dynscale backbone family, and their registered builders.

One wrapper class, :class:`DynscaleD2Backbone` (named apart from the OpenMMLab adapter
``plugins.mm.backbones.DynscaleBackbone``), puts any ``backbones.create(...)`` model behind
detectron2's ``Backbone`` interface (feature names ``res2``..``res5``, ``output_shape()``,
``size_divisibility``), the way ``detectron2.modeling.backbone.resnet`` splits ``ResNet`` from
``build_resnet_backbone``. The registered builders map ``cfg.MODEL.DYNSCALE`` and
``cfg.MODEL.BACKBONE.FREEZE_AT`` onto it:

=====================================  ====================================================
``MODEL.BACKBONE.NAME``                 returns
=====================================  ====================================================
``build_<family>_backbone``             :class:`DynscaleD2Backbone` (C4 / plain features)
``build_<family>_fpn_backbone``         ``FPN`` over it (``LastLevelMaxPool``: p2..p6)
``build_dynscale_backbone``             the same for a backbone of any family
``build_dynscale_fpn_backbone``
=====================================  ====================================================

for every ``<family>`` of the :mod:`backbones` registry (``elastic``, ``slimmable``, ``sact``, ``rsnet``; a family
added there gets its builders here without code); ``MODEL.DYNSCALE.NAME`` picks the variant (e.g.
``resnext101_elastic``, ``us_mobilenet_v2``).

Norms (``MODEL.DYNSCALE.NORM``): :mod:`.norms`. The FPN of a slimmable backbone (one set of weights for every
width): :mod:`.fpn`.
"""

import contextlib
import logging

import torch
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn

import backbones
from backbones.capabilities import capabilities
from backbones.rsnet import nearest_resolution

from .fpn import SlicedD2Conv2d, slice_fpn_laterals  # noqa: F401  (public here before the split)
from .norms import convert_norm, to_frozen_bn  # noqa: F401

logger = logging.getLogger(__name__)

#: backbone families of the :mod:`backbones` registry (one pair of builders each)
FAMILIES = tuple(sorted({backbones.model_family(n) for n in backbones.list_models()}))
_FEATURE_INDEX = {'res2': 0, 'res3': 1, 'res4': 2, 'res5': 3}


def _unwrap(model):
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------------------------------------ wrapper
class _PreactOnly(nn.Module):
    """The ``preact`` (``ReLU(norm1(x))``) of a pre-activation unit, without the rest of the unit."""

    def __init__(self, unit):
        super().__init__()
        self.norm1 = unit.norm1

    def preact(self, x):
        """``[N, C, H, W] -> ReLU(norm1(x))``."""
        return torch.relu(self.norm1(x))


class _PreactStub(nn.Module):
    """Stands in for a removed SACT stage: holds only its first unit's ``norm1`` (same state-dict keys
    ``units.0.norm1.*``), which ``PreActResNet.forward_stages`` needs for the previous stage's feature."""

    def __init__(self, unit):
        super().__init__()
        self.units = nn.ModuleList([_PreactOnly(unit)])


class DynscaleD2Backbone(Backbone):
    """A dynscale backbone (``backbones.create(name)``) as a detectron2 ``Backbone``.

    Args:
        name (str): registered backbone name (``backbones.list_models()``).
        out_features (list[str]): subset of ``res2``..``res5`` (strides 4, 8, 16, 32 at output stride 32).
            Stages after the last requested one are removed (no unused parameters under DDP).
        norm (str): ``FrozenBN`` | ``BN`` | ``SyncBN`` | ``nnSyncBN`` | ``naiveSyncBN`` | ``GN``.
        freeze_at (int): detectron2's ``MODEL.BACKBONE.FREEZE_AT``: 0 nothing, 1 the stem, k the stem and
            stages res2..res(k) (``requires_grad=False``, their BNs converted to ``FrozenBatchNorm2d``).
        output_stride (int): 32, 16 or 8 (dilated last stages).
        family (str | None): expected family; a name from another family raises ValueError.
        width (float | None): slimmable width multiplier to start with (default: the max width).
        scales (tuple[int] | None): RS-Net: detection shorter sides paired with the backbone's
            ``resolutions`` (scale bucket i uses private BN i); None derives nothing (resolutions used as-is).
        resolution_rule (str): RS-Net bucket rule, ``'nearest'`` or ``'explicit'`` (see :meth:`bucket_for`).
        **factory_kwargs: passed to ``backbones.create`` (e.g. ``width_range``, ``resolutions``).

    Shapes:
        ``forward``: ``[N, 3, H, W]`` (normalised as the checkpoint expects) ->
        ``{'res{k}': [N, C_k, ceil(H / s_k), ceil(W / s_k)]}`` for the requested features.

    Raises:
        ValueError: unknown name, wrong family, bad feature names, a norm the family rejects.
    """

    def __init__(
        self,
        name,
        out_features=('res2', 'res3', 'res4', 'res5'),
        norm='FrozenBN',
        freeze_at=0,
        output_stride=32,
        family=None,
        width=None,
        scales=None,
        resolution_rule='nearest',
        **factory_kwargs,
    ):
        super().__init__()
        fam = backbones.model_family(name)
        if family is not None and fam != family:
            names = ', '.join(backbones.list_models(family=family))
            raise ValueError(
                f'MODEL.DYNSCALE.NAME={name!r} is a {fam!r} backbone but the builder is for the '
                f'{family!r} family; use one of: {names} (or build_{fam}_backbone / '
                f'build_{fam}_fpn_backbone)'
            )
        bad = [f for f in out_features if f not in _FEATURE_INDEX]
        if bad or not out_features:
            raise ValueError(
                f'out_features {list(out_features)} must be a non-empty subset of '
                f'{list(_FEATURE_INDEX)} (the "stem" output is not exposed)'
            )
        if not 0 <= freeze_at <= 5:
            raise ValueError(
                f'MODEL.BACKBONE.FREEZE_AT={freeze_at}; allowed 0 (none) .. 5 (stem + res2..res5)'
            )
        self.family = fam
        self.name = name
        self.norm = norm
        self.freeze_at = freeze_at
        self._out_features = sorted(out_features, key=_FEATURE_INDEX.get)
        out_indices = tuple(_FEATURE_INDEX[f] for f in self._out_features)
        if norm == 'GN':
            factory_kwargs['norm_layer'] = lambda c: get_norm('GN', c)
        # what a whole (unpruned, unconverted) network of this backbone is built with (weight conversion)
        self.factory_kwargs = dict(factory_kwargs, output_stride=output_stride)
        net = backbones.create(
            name,
            num_classes=0,
            out_indices=out_indices,
            frozen_stages=freeze_at - 1,
            output_stride=output_stride,
            **factory_kwargs,
        )
        # keep only the stages that are run (detectron2's ResNet does the same: unused layers would
        # break DDP's allreduce)
        last = max(out_indices)
        if last < 3:
            keep = list(net.stages)[: last + 1]
            if getattr(net, 'feature_preact', False):
                # SACT: feature res(k) is the pre-activation of the next stage's first unit; keep that norm
                keep.append(_PreactStub(net.stages[last + 1].units[0]))
            net.stages = nn.ModuleList(keep)
            net.frozen_stages = min(net.frozen_stages, len(keep))
            if 'ponder_cost' in capabilities(net):  # SACT / ACT
                net.norm = None  # the post-norm after block 4 (the C4 res5 head owns it)
        self.num_stages = last + 1
        net = convert_norm(net, norm)
        if norm == 'FrozenBN':
            # slimmable BNs keep a shared affine outside their (now frozen) private statistics: freeze it too
            for m in net.modules():
                if getattr(m, 'is_norm', False):
                    for p in m.parameters(recurse=False):
                        p.requires_grad = False
        if freeze_at >= 1:
            # detectron2 semantics (CNNBlockBase.freeze): frozen blocks use FrozenBatchNorm2d
            for i, mod in enumerate([net.stem] + list(net.stages)[: freeze_at - 1]):
                frozen = to_frozen_bn(mod)
                if i == 0:
                    net.stem = frozen
                for p in frozen.parameters():
                    p.requires_grad = False
        self.net = net
        if width is not None:
            self.set_width(width)
        self.resolution_rule = resolution_rule
        self._scale = None
        self.scales = None
        if self.is_resolution_switchable:
            res = tuple(net.resolutions)
            self.scales = tuple(int(s) for s in (scales or res))
            if len(self.scales) != len(res):
                raise ValueError(
                    f'scales {self.scales} must pair one-to-one with the backbone resolutions {res}'
                )
            if resolution_rule not in ('nearest', 'explicit'):
                raise ValueError(f"resolution_rule must be 'nearest' or 'explicit', got {resolution_rule!r}")
            # this wrapper decides the bucket from the detection scale, the backbone must not re-decide
            net.resolution_rule = 'nearest'
        self.ponder_costs = []

    # ------------------------------------------------------------------ capabilities
    @property
    def is_slimmable(self):
        """True when the backbone has a width multiplier (``width_context``)."""
        return hasattr(self.net, 'width_context')

    @property
    def is_resolution_switchable(self):
        """True when the backbone has private BNs per resolution (RS-Net: ``resolutions``, ``resolution_context``)."""
        return hasattr(self.net, 'resolutions') and hasattr(self.net, 'resolution_context')

    @property
    def has_ponder_cost(self):
        """True for SACT/ACT backbones (``ponder_costs`` set by every forward)."""
        return hasattr(self.net, 'ponder_costs')

    # ------------------------------------------------------------------ width (slimmable)
    @property
    def width(self):
        """Current width multiplier (1.0 for non-slimmable backbones)."""
        return self.net.width if self.is_slimmable else 1.0

    @property
    def width_range(self):
        """``(w_min, w_max)``; ``(1.0, 1.0)`` for non-slimmable backbones."""
        return tuple(self.net.width_range) if self.is_slimmable else (1.0, 1.0)

    def set_width(self, width):
        """Set the width multiplier.

        Raises:
            ValueError: ``width`` outside the range, or a width other than 1.0 on a non-slimmable backbone.
        """
        if width is not None:
            self.net.set_width(width)  # the model's one width switch (1.0 on a model without one: a no-op)
        return self

    @contextlib.contextmanager
    def width_context(self, width):
        """``with backbone.width_context(w):`` runs at width ``w`` and restores the previous width."""
        if width is None or not self.is_slimmable:
            self.set_width(width)  # None: keep the current width; non-slimmable: only 1.0 is valid
            yield self
            return
        with self.net.width_context(width):
            yield self

    # ------------------------------------------------------------------ scale bucket (RS-Net)
    @contextlib.contextmanager
    def scale_context(self, scale):
        """``with backbone.scale_context(s):`` every forward uses the private BN of scale bucket ``s``.

        Args:
            scale (int | None): the images' shorter side in pixels (before padding); None = no choice
                (the rule decides from the input tensor). Ignored by families without private BNs.
        """
        saved = self._scale
        self._scale = scale
        try:
            yield self
        finally:
            self._scale = saved

    def bucket_for(self, shorter_side, explicit):
        """Index of the private BN (scale bucket) for an image shorter side.

        Rule (``resolution_rule``): ``'nearest'`` picks the bucket whose scale (``self.scales``) is nearest
        to ``shorter_side`` (ties go to the larger scale); ``'explicit'`` requires the scale to have been
        set with :meth:`scale_context` (the trainer and evaluator do) and to be one of ``self.scales``.

        Raises:
            ValueError: rule ``'explicit'`` without an explicit scale or with a scale not in ``self.scales``.
        """
        if self.resolution_rule == 'explicit':
            if not explicit or shorter_side not in self.scales:
                raise ValueError(
                    f'resolution_rule "explicit": set the scale with backbone.scale_context(s), '
                    f's in {self.scales} (got {shorter_side if explicit else "no scale"}), or use '
                    f'MODEL.DYNSCALE.RESOLUTION_RULE "nearest"'
                )
        return self.scales.index(nearest_resolution(self.scales, shorter_side))

    # ------------------------------------------------------------------ detectron2 interface
    def forward(self, x):
        """Run the backbone.

        Args:
            x (Tensor): ``[N, 3, H, W]``, padded to :attr:`size_divisibility`.

        Returns:
            dict[str, Tensor]: ``res{k}`` feature maps (see the class docstring).
        """
        ctx = contextlib.nullcontext()
        if self.is_resolution_switchable:
            explicit = self._scale is not None
            short = self._scale if explicit else min(x.shape[-2:])
            ctx = self.net.resolution_context(self.net.resolutions[self.bucket_for(short, explicit)])
        with ctx:
            feats = self.net.forward_stages(x)
        self.ponder_costs = list(getattr(self.net, 'ponder_costs', None) or [])
        return {f'res{int(k[5:]) + 1}': v for k, v in feats.items()}

    def output_shape(self):
        """``{'res{k}': ShapeSpec(channels at the current width, stride)}`` for the returned features."""
        ch = self.net.stage_channels()
        strides = self.net._stage_strides
        return {
            f: ShapeSpec(channels=ch[_FEATURE_INDEX[f]], stride=strides[_FEATURE_INDEX[f]])
            for f in self._out_features
        }

    def max_output_shape(self):
        """As :meth:`output_shape` at the maximum width (what width-shared necks are built for)."""
        with self.width_context(self.width_range[1] if self.is_slimmable else None):
            return self.output_shape()

    @property
    def size_divisibility(self):
        """Stride of the deepest stage that runs (32 for res5, 16 for res4 at output stride 32), so that
        every feature map is exactly ``input / stride`` (Elastic's half-resolution branches and 'same'
        padding otherwise round)."""
        return int(self.net._stage_strides[self.num_stages - 1])

    @property
    def padding_constraints(self):
        return {'size_divisibility': self.size_divisibility}


# ------------------------------------------------------------------------------------------------ builders
def _resolve_scales(cfg, net_resolutions):
    D = cfg.MODEL.DYNSCALE
    if D.SCALES:
        return tuple(int(s) for s in D.SCALES)
    top = max(cfg.INPUT.MIN_SIZE_TRAIN)
    return tuple(int(round(top * r / max(net_resolutions))) for r in net_resolutions)


def build_dynscale_backbone(cfg, input_shape, family=None, out_features=None):
    """Build a :class:`DynscaleD2Backbone` from ``cfg.MODEL.DYNSCALE`` and ``MODEL.BACKBONE.FREEZE_AT``.

    Args:
        cfg (CfgNode): with :func:`~plugins.detectron2.config.add_dynscale_config` keys.
        input_shape (ShapeSpec): channels must be 3.
        family (str | None): required family (the builder's).
        out_features (list[str] | None): override ``MODEL.DYNSCALE.OUT_FEATURES``.

    Raises:
        ValueError: input channels != 3, family mismatch, bad width/resolution settings.
    """
    if input_shape.channels != 3:
        raise ValueError(
            f'dynscale backbones take 3-channel images (len(MODEL.PIXEL_MEAN) == 3), got '
            f'{input_shape.channels}'
        )
    D = cfg.MODEL.DYNSCALE
    kw = {}
    caps = capabilities(D.NAME)
    if 'width' in caps:
        if D.WIDTH_RANGE:
            kw['width_range'] = tuple(float(w) for w in D.WIDTH_RANGE)
        if D.WIDTH_LIST:
            kw['width_list'] = tuple(float(w) for w in D.WIDTH_LIST)
    if 'private_bn' in caps:
        if D.RESOLUTIONS:
            kw['resolutions'] = tuple(int(r) for r in D.RESOLUTIONS)
    bb = DynscaleD2Backbone(
        D.NAME,
        out_features=list(out_features or D.OUT_FEATURES),
        norm=D.NORM,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        output_stride=D.OUTPUT_STRIDE,
        family=family,
        width=D.WIDTH if 'width' in caps else None,
        resolution_rule=D.RESOLUTION_RULE,
        **kw,
    )
    if bb.is_resolution_switchable:
        scales = _resolve_scales(cfg, bb.net.resolutions)
        if len(scales) != len(bb.net.resolutions):
            raise ValueError(
                f'MODEL.DYNSCALE.SCALES {scales} must pair one-to-one with the backbone resolutions '
                f'{bb.net.resolutions}'
            )
        bb.scales = scales
    return bb


def build_dynscale_fpn_backbone(cfg, input_shape, family=None):
    """``FPN`` (p2..p6, ``LastLevelMaxPool``) over :func:`build_dynscale_backbone`.

    The FPN is built for the maximum width; for slimmable backbones its laterals are input-sliced
    (:func:`slice_fpn_laterals`) so the same FPN serves every width. ``MODEL.FPN.IN_FEATURES`` defaults
    (when empty) to ``MODEL.DYNSCALE.OUT_FEATURES``.

    Raises:
        ValueError: ``MODEL.FPN.IN_FEATURES`` not among the backbone's ``OUT_FEATURES``, or output
            stride != 32.
    """
    in_features = list(cfg.MODEL.FPN.IN_FEATURES) or list(cfg.MODEL.DYNSCALE.OUT_FEATURES)
    missing = [f for f in in_features if f not in cfg.MODEL.DYNSCALE.OUT_FEATURES]
    if missing:
        raise ValueError(
            f'MODEL.FPN.IN_FEATURES {in_features} needs {missing} in MODEL.DYNSCALE.OUT_FEATURES '
            f'{list(cfg.MODEL.DYNSCALE.OUT_FEATURES)}'
        )
    if cfg.MODEL.DYNSCALE.OUTPUT_STRIDE != 32:
        raise ValueError(
            'FPN needs strides 4, 8, 16, 32: set MODEL.DYNSCALE.OUTPUT_STRIDE 32 for FPN builders'
        )
    bottom_up = build_dynscale_backbone(cfg, input_shape, family=family)
    with bottom_up.width_context(bottom_up.width_range[1] if bottom_up.is_slimmable else None):
        fpn = FPN(
            bottom_up=bottom_up,
            in_features=in_features,
            out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
            norm=cfg.MODEL.FPN.NORM,
            top_block=LastLevelMaxPool(),
            fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        )
    if bottom_up.is_slimmable:
        slice_fpn_laterals(fpn)
    return fpn


def find_dynscale_backbone(model):
    """The :class:`DynscaleD2Backbone` inside a detector (``model.backbone`` or ``model.backbone.bottom_up``).

    Raises:
        ValueError: the model has no dynscale backbone.
    """
    model = _unwrap(model)
    for m in model.modules():
        if isinstance(m, DynscaleD2Backbone):
            return m
    raise ValueError(
        'the model has no DynscaleD2Backbone: set MODEL.BACKBONE.NAME to a build_<family>_backbone / '
        f'build_<family>_fpn_backbone builder ({", ".join(FAMILIES)})'
    )


def _register(family):
    def plain(cfg, input_shape: ShapeSpec):
        return build_dynscale_backbone(cfg, input_shape, family=family)

    def fpn(cfg, input_shape: ShapeSpec):
        return build_dynscale_fpn_backbone(cfg, input_shape, family=family)

    plain.__name__ = plain.__qualname__ = f'build_{family}_backbone'
    fpn.__name__ = fpn.__qualname__ = f'build_{family}_fpn_backbone'
    plain.__doc__ = (
        f'Registered builder: the {family!r}-family backbone named by MODEL.DYNSCALE.NAME as a '
        f'detectron2 Backbone (see :func:`build_dynscale_backbone`).'
    )
    fpn.__doc__ = (
        f'Registered builder: FPN over the {family!r}-family backbone (see '
        f':func:`build_dynscale_fpn_backbone`).'
    )
    return BACKBONE_REGISTRY.register(plain), BACKBONE_REGISTRY.register(fpn)


for _family in FAMILIES:
    globals()['build_%s_backbone' % _family], globals()['build_%s_fpn_backbone' % _family] = _register(_family)


# any family: MODEL.BACKBONE.NAME "build_dynscale_backbone" / "build_dynscale_fpn_backbone"
BACKBONE_REGISTRY.register(build_dynscale_backbone)
BACKBONE_REGISTRY.register(build_dynscale_fpn_backbone)


def __getattr__(name):
    if name == 'DynscaleBackbone':
        raise AttributeError('plugins.detectron2.backbone.DynscaleBackbone was renamed DynscaleD2Backbone (the '
                             'OpenMMLab adapter keeps the name DynscaleBackbone)')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
