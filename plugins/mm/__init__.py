"""OpenMMLab plugins: dynscale backbones, heads, segmentors, datasets and hooks for MMSeg/MMDet.

Importing this package registers everything (a config only needs
``custom_imports = dict(imports=['plugins.mm'], allow_failed_imports=False)``):

* backbones (``plugins.mm.backbones``): ``DynscaleBackbone`` and the family aliases ``ElasticResNeXt``,
  ``SlimmableNet``, ``SACTResNet``, ``RSNet`` -> ``mmseg.registry.MODELS`` and ``mmdet.registry.MODELS``;
* decode heads (``plugins.mm.refinenet_head``, ``plugins.mm.heads``): ``RefineNetHead``, ``DeepLabV3Head``;
* segmentors (``plugins.mm.segmentors``): ``SACTEncoderDecoder``, ``RSNetEncoderDecoder``,
  ``SlimmableEncoderDecoder``;
* datasets (``plugins.mm.datasets``): ``NYUDv2Dataset``, ``VOCSegDataset``;
* hooks (``plugins.mm.hooks``): ``SlimmableBNCalibrationHook``, ``PonderMapSaveHook``.

The environment is checked first (:func:`plugins._compat.check_mm_environment`), so a missing or
mismatched mmcv/mmseg/mmdet fails here with the fix named, not deep inside a registry lookup.
"""
from .._compat import check_mm_environment

MM_VERSIONS = check_mm_environment()

from . import backbones  # noqa: E402,F401  (registration side effects)
from .backbones import (DynscaleBackbone, ElasticResNeXt, RSNet, SACTResNet, SlimmableNet,  # noqa: E402,F401
                        unwrap_backbone)
