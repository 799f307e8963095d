"""Universally slimmable backbones: US-Nets (Yu & Huang, ICCV 2019) and MutualNet (Yang et al., ECCV 2020).

One set of weights runs at any width multiplier ``w`` in ``width_range``: every layer uses the first
``make_divisible(C * w / ratio, 8) * ratio`` channels (:mod:`backbones.slimmable.ops`).  BN affine parameters
are shared; running statistics are private per *BN configuration* ``(width, resolution)``.

Models (registered in the ``'slimmable'`` family; all :class:`backbones.base.DynamicBackbone`):

* ``us_mobilenet_v1`` (US-Nets / MutualNet MobileNet v1, default range [0.25, 1]),
* ``us_mobilenet_v2`` (default range [0.35, 1]; the last 1x1 conv keeps 1280 channels, classifier a plain
  Linear),
* ``us_vgg16_bn`` (VGG-16 with BN, MutualNet Sec. 4.3 / App. A.2 detection backbone, range [0.25, 1]),
* ``us_resnet50`` (MutualNet ResNet-50, v1.5 (stride on the 3x3), range [0.25, 1]).

BN configurations (design).  ``model.set_width(w)`` selects width ``w`` and its width-only statistics
(US-Nets: one set per width).  ``model.set_width(w, resolution=r)`` selects the same weights with the
statistics calibrated for the pair ``(w, r)`` (MutualNet's ``ComputePostBN`` calibrates per width-resolution
pair).  The two are never mixed silently: evaluating a configuration without statistics raises ``ValueError``
naming :func:`backbones.training.calibrate_bn`.  ``width_list`` lists the widths with width-only statistics,
``bn_configs`` every stored ``(width, resolution)`` pair (``resolution=None`` for width-only).  Training at any
width of the range works: a configuration without statistics uses batch statistics (US-Nets trains only the
listed widths' statistics).

Post-statistics BN in one call is the training core's :func:`backbones.training.calibrate_bn` (this package
imports nothing of ``backbones.training``, which sits above it).  Also here: :func:`export_static` (plain
``nn.Module`` at one width), :func:`inplace_distillation_loss`, and the ops of :mod:`backbones.slimmable.ops`
(:func:`make_divisible`, :class:`InputSlicedConv2d`, ...).  The sandwich rule and MutualNet's width-resolution
sampling are the training core's :class:`backbones.training.SandwichPolicy`.

Files: ``ops`` (slimmable conv / linear / BN operators), ``model`` (:class:`SlimmableBackbone`, width and
BN-configuration API), ``architectures`` (the four networks and their factories), ``export``
(:func:`export_static`), ``losses`` (:func:`inplace_distillation_loss`).
"""
from .architectures import (  # noqa: F401  (registration side effects; blocks kept importable from here)
    USVGG16BN,
    Bottleneck,
    DepthwiseSeparable,
    InvertedResidual,
    USMobileNetV1,
    USMobileNetV2,
    USResNet50,
    us_mobilenet_v1,
    us_mobilenet_v2,
    us_resnet50,
    us_vgg16_bn,
)
from .export import export_static
from .losses import inplace_distillation_loss
from .model import SlimmableBackbone
from .ops import (  # noqa: F401  (normalize_width, parse_config_key, WidthAware: used as backbones.slimmable.*)
    InputSlicedConv2d,
    SlimmableBatchNorm2d,
    SlimmableConv2d,
    SlimmableLinear,
    WidthAware,
    active_channels,
    config_key,
    make_divisible,
    normalize_width,
    parse_config_key,
)

__all__ = ['SlimmableBackbone', 'USMobileNetV1', 'USMobileNetV2', 'USVGG16BN', 'USResNet50',
           'us_mobilenet_v1', 'us_mobilenet_v2', 'us_vgg16_bn', 'us_resnet50',
           'export_static', 'inplace_distillation_loss',
           'make_divisible', 'active_channels', 'config_key', 'InputSlicedConv2d', 'SlimmableConv2d',
           'SlimmableLinear', 'SlimmableBatchNorm2d']

#: names that moved out of this package (it sits below ``backbones.training``): importing them names the new place
_MOVED = {'calibrate_bn': 'backbones.training.calibrate_bn'}


def __getattr__(name):
    if name in _MOVED:
        raise ImportError(f'backbones.slimmable.{name} moved to {_MOVED[name]}: import it from backbones.training')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
