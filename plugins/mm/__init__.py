"""OpenMMLab plugins: dynscale backbones, heads, segmentors, datasets and hooks for MMSeg/MMDet.

Importing this package registers everything (a config only needs
``custom_imports = dict(imports=['plugins.mm'], allow_failed_imports=False)``):

* backbones (``plugins.mm.backbones``): ``DynscaleBackbone`` and the family aliases ``ElasticResNeXt``,
  ``SlimmableNet``, ``SACTResNet``, ``RSNet`` -> ``mmseg.registry.MODELS`` and ``mmdet.registry.MODELS``;
* decode heads (``plugins.mm.refinenet_head``, ``plugins.mm.heads``): ``RefineNetHead``, ``DeepLabV3Head``;
* segmentors (``plugins.mm.segmentors``): ``SACTEncoderDecoder``, ``RSNetEncoderDecoder``,
  ``SlimmableEncoderDecoder``;
* datasets (``plugins.mm.datasets``): ``NYUDv2Dataset``, ``VOCSegDataset``;
* hooks (``plugins.mm.hooks``): ``BNCalibrationHook`` (segmentors and detectors), ``PonderMapSaveHook``,
  ``InputNormalizationHook``;
* ``plugins.mm.cli``: argument/config plumbing of ``tools/train_seg.py`` and ``tools/test_seg.py``.

The environment is checked first (:func:`plugins._compat.check_mm_environment`), so a missing or
mismatched mmcv/mmseg/mmdet fails here with the fix named, not deep inside a registry lookup.
"""
from .._compat import check_mm_environment

MM_VERSIONS = check_mm_environment()

# registration side effects (order: backbones first, the others import register_mm_module from it)
from . import detectors  # noqa: E402,F401  (MMDetection detectors, SlicedFPN, hooks, CheckedCocoDataset)
from . import backbones, datasets, heads, hooks, refinenet_head, segmentors  # noqa: E402,F401
from .backbones import (  # noqa: E402,F401
    DynscaleBackbone,
    ElasticResNeXt,
    RSNet,
    SACTResNet,
    SlimmableNet,
    unwrap_backbone,
)
from .datasets import NYUDv2Dataset, VOCSegDataset, make_synthetic_voc  # noqa: E402,F401
from .heads import DeepLabV3Head  # noqa: E402,F401
from .hooks import BNCalibrationHook, InputNormalizationHook, PonderMapSaveHook  # noqa: E402,F401
from .refinenet_head import RefineNetHead  # noqa: E402,F401
from .segmentors import RSNetEncoderDecoder, SACTEncoderDecoder, SlimmableEncoderDecoder  # noqa: E402,F401
