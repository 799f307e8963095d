"""COCO 2017 for MMDetection with an error that names a missing path and the expected layout."""
import os.path as osp

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS

__all__ = ['CheckedCocoDataset', 'check_coco_layout', 'COCO_LAYOUT']

COCO_LAYOUT = """expected COCO 2017 layout under data_root:
  <data_root>/annotations/instances_train2017.json
  <data_root>/annotations/instances_val2017.json
  <data_root>/train2017/<image files>
  <data_root>/val2017/<image files>
(the configs read the datasets root from $DYNSCALE_DATASETS, default ../shared/datasets beside the
repository; or tools/train_det_mm.py --data-root DIR, or --cfg-options train_dataloader.dataset.data_root=...
val_dataloader.dataset.data_root=... val_evaluator.ann_file=...)"""


def check_coco_layout(ann_file, img_dir):
    """Raise :class:`FileNotFoundError` naming the missing path and the expected COCO layout.

    Args:
        ann_file (str): annotation json path (already joined with ``data_root``).
        img_dir (str): image folder.
    """
    for path, kind in ((ann_file, 'annotation file'), (img_dir, 'image folder')):
        ok = osp.isfile(path) if kind == 'annotation file' else osp.isdir(path)
        if not ok:
            raise FileNotFoundError(f'COCO {kind} not found: {osp.abspath(path)}\n{COCO_LAYOUT}')


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """:class:`mmdet.datasets.CocoDataset` that checks the local layout first and raises
    :class:`FileNotFoundError` naming the missing path and the expected layout (instead of a deep
    pycocotools error).  Remote backends (``backend_args``) are not checked."""

    def load_data_list(self):
        """Check the paths, then :meth:`CocoDataset.load_data_list`."""
        if not self.backend_args:
            check_coco_layout(self.ann_file, self.data_prefix.get('img', self.data_root or ''))
        return super().load_data_list()
