"""OpenMMLab plugins: dynscale backbones, heads, segmentors, detectors, necks, datasets and hooks for MMSeg/MMDet.

Importing this package registers everything (a config only needs
``custom_imports = dict(imports=['plugins.mm'], allow_failed_imports=False)``), one module per registry kind:

* ``plugins.mm.backbones``: ``DynscaleBackbone`` and the family aliases ``ElasticBackbone``, ``SlimmableNet``,
  ``SACTResNet``, ``RSNetBackbone`` -> ``mmseg.registry.MODELS`` and ``mmdet.registry.MODELS``;
* ``plugins.mm.segmentors`` (MMSeg): ``DynscaleEncoderDecoder`` (any training policy) and the presets
  ``SACTEncoderDecoder``, ``RSNetEncoderDecoder``, ``SlimmableEncoderDecoder``;
* ``plugins.mm.heads``, ``plugins.mm.refinenet_head`` (MMSeg): ``DeepLabV3Head``, ``RefineNetHead``;
* ``plugins.mm.detectors`` (MMDet): ``DynscaleTwoStageDetector`` and the presets ``SlimmableTwoStageDetector``,
  ``SACTTwoStageDetector``, ``RSNetTwoStageDetector``;
* ``plugins.mm.necks`` (MMDet): ``SlicedFPN``;
* ``plugins.mm.datasets``: ``NYUDv2Dataset``, ``VOCSegDataset`` (MMSeg), ``CheckedCocoDataset`` (MMDet);
* ``plugins.mm.hooks`` (both): ``BNCalibrationHook``, ``PonderMapSaveHook``, ``InputNormalizationHook``;
* ``plugins.mm.cli``: the plumbing of ``tools/train_seg.py``, ``tools/test_seg.py``, ``tools/train_det_mm.py`` and
  ``tools/test_det_mm.py``.

MMDet is imported only when it is installed, MMSeg likewise: an MMSeg-only user does not need MMDet.  The
environment is checked first (:func:`plugins._compat.check_mm_environment`), so a missing or mismatched
mmcv/mmseg/mmdet fails here with the fix named, not deep inside a registry lookup; a former datasets-root variable
(``DYNSCALE_DATA``) fails naming ``DYNSCALE_DATASETS``.
"""
from .._compat import check_datasets_variable, check_mm_environment

MM_VERSIONS = check_mm_environment()
check_datasets_variable()

# registration side effects, one module per registry kind; the framework-specific ones only when installed
from . import backbones, datasets, hooks  # noqa: E402,F401
from .backbones import DynscaleBackbone, ElasticBackbone, RSNetBackbone, SACTResNet, SlimmableNet  # noqa: E402,F401
from .hooks import BNCalibrationHook, InputNormalizationHook, PonderMapSaveHook  # noqa: E402,F401
from .registry import installed  # noqa: E402

if installed('mmseg'):
    from . import heads, refinenet_head, segmentors  # noqa: F401
    from .heads import DeepLabV3Head  # noqa: F401
    from .refinenet_head import RefineNetHead  # noqa: F401
    from .segmentors import (  # noqa: F401
        DynscaleEncoderDecoder,
        RSNetEncoderDecoder,
        SACTEncoderDecoder,
        SlimmableEncoderDecoder,
    )
if installed('mmdet'):
    from . import detectors, necks  # noqa: F401
    from .detectors import (  # noqa: F401
        DynscaleTwoStageDetector,
        RSNetTwoStageDetector,
        SACTTwoStageDetector,
        SlimmableTwoStageDetector,
    )
    from .necks import SlicedFPN  # noqa: F401
