"""Datasets of the dynscale configs, each registered in the framework that reads it: ``NYUDv2Dataset`` and
``VOCSegDataset`` (:mod:`.seg`, MMSegmentation), ``CheckedCocoDataset`` (:mod:`.coco`, MMDetection).  A module whose
framework is not installed is not imported."""
from ..registry import installed

__all__ = []
if installed('mmseg'):
    from .seg import NYU40_CLASSES, NYUDv2Dataset, VOCSegDataset, make_synthetic_voc  # noqa: F401
    __all__ += ['NYU40_CLASSES', 'NYUDv2Dataset', 'VOCSegDataset', 'make_synthetic_voc']
if installed('mmdet'):
    from .coco import CheckedCocoDataset, check_coco_layout  # noqa: F401
    __all__ += ['CheckedCocoDataset', 'check_coco_layout']
