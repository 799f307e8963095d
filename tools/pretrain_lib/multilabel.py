"""MS-COCO multi-label classification (Elastic paper, Sec. 4.2; the authors' ``multilabel_classify.py`` as described
in ``../shared/reference/official_implementations.md`` 1.6): the 80-way multi-hot targets read from the COCO
instance annotations, the loss, and the standard multi-label metrics.

* Target: class ``c`` is positive for an image when any instance of ``c`` is annotated on it (crowd regions
  included; the authors max-pool their three size buckets, which is the same thing).  Index ``c`` follows the
  sorted COCO category ids (1..90 sparse -> 0..79).
* Loss: ``BCEWithLogitsLoss`` (mean over batch x classes) x number of classes, i.e. a sum over the classes and a
  mean over the batch (the authors' scaling).
* Prediction: a class is predicted when its logit is > 0 (probability > 0.5).
* Metrics (:func:`multilabel_metrics`, scikit-learn): mAP (mean over classes of the average precision), per-class
  precision / recall averaged over classes (CP, CR) and their F1 (CF1 = 2 CP CR / (CP + CR)), and overall
  precision / recall / F1 over all (image, class) pairs (OP, OR, OF1), the numbers of the paper's Table 6.
"""
import json
import os

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ['CocoMultiLabel', 'multilabel_loss', 'multilabel_metrics', 'write_metric_table', 'METRIC_NAMES']

#: the metric keys :func:`multilabel_metrics` returns, in table order
METRIC_NAMES = ('mAP', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')


class CocoMultiLabel(Dataset):
    """COCO images with 80-dim multi-hot targets from the instance annotations (pycocotools).

    Args:
        root (str): the COCO folder (``annotations/``, ``train2017/``, ``val2017/``).
        split (str): ``'train2017'`` or ``'val2017'`` (annotation file ``annotations/instances_<split>.json``).
        transform (callable | None): PIL image -> tensor ``[3, H, W]``.
        skip_empty (bool): leave out images without any annotation (default: keep them, all-zero targets).

    Items: ``(image, target)``, ``target`` a float tensor ``[num_classes]`` of 0/1; ``samples`` lists
    ``(path, label_indices)`` and ``classes`` the category names in index order.

    Raises:
        FileNotFoundError: the annotation file or the image folder is missing (the message shows the layout).
    """

    def __init__(self, root, split='train2017', transform=None, skip_empty=False):
        from pycocotools.coco import COCO
        ann = os.path.join(root, 'annotations', f'instances_{split}.json')
        img_dir = os.path.join(root, split)
        for path in (ann, img_dir):
            if not os.path.exists(path):
                raise FileNotFoundError(f'{path} not found: expected the COCO 2017 layout {root}/annotations/'
                                        f'instances_{{train,val}}2017.json and {root}/{{train,val}}2017/*.jpg')
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(ann)
        cat_ids = sorted(coco.getCatIds())
        index = {c: i for i, c in enumerate(cat_ids)}
        self.classes = [coco.loadCats(c)[0]['name'] for c in cat_ids]
        self.samples = []
        for img_id in sorted(coco.getImgIds()):
            labels = sorted({index[a['category_id']] for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))})
            if skip_empty and not labels:
                continue
            self.samples.append((os.path.join(img_dir, coco.loadImgs(img_id)[0]['file_name']), labels))
        self.transform = transform

    @property
    def num_classes(self):
        """Number of classes (80 for COCO)."""
        return len(self.classes)

    def targets(self):
        """``[N, num_classes]`` float tensor of every image's multi-hot target."""
        t = torch.zeros(len(self.samples), self.num_classes)
        for i, (_, labels) in enumerate(self.samples):
            t[i, labels] = 1
        return t

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image
        path, labels = self.samples[i]
        with Image.open(path) as im:
            img = im.convert('RGB')
        target = torch.zeros(self.num_classes)
        target[labels] = 1
        return (self.transform(img) if self.transform is not None else img), target


def multilabel_loss(logits, targets):
    """The authors' multi-label loss: ``BCEWithLogitsLoss`` (mean) x number of classes.

    Args:
        logits (Tensor): ``[N, C]``.
        targets (Tensor): ``[N, C]`` of 0/1.

    Returns:
        Tensor: scalar, a sum over classes and a mean over images.
    """
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype)) * logits.shape[1]


def multilabel_metrics(scores, targets, threshold=0.5):
    """mAP, CP, CR, CF1, OP, OR, OF1 (in percent) of multi-label predictions, computed with scikit-learn.

    Args:
        scores (Tensor | ndarray): ``[N, C]`` probabilities (``sigmoid(logits)``).
        targets (Tensor | ndarray): ``[N, C]`` of 0/1.
        threshold (float): a class is predicted when its probability is > ``threshold`` (0.5: logit > 0).

    Returns:
        dict: :data:`METRIC_NAMES` -> float (percent), plus ``'classes_scored'`` (classes with at least one positive)
        and ``'images'``.

    Edge cases, as defined here: a class with no positive image has no average precision and no recall; it is
    left out of mAP, CP and CR (which average over the classes that have positives), and its false positives
    still count in OP.  A class with positives that is never predicted has precision 0 (scikit-learn's
    ``zero_division=0``).  An image with no label adds false positives only (nothing to recall).

    Raises:
        ValueError: shapes differ, or no class has a positive (nothing to score).
    """
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support
    s = scores.detach().cpu().numpy() if torch.is_tensor(scores) else np.asarray(scores)
    t = targets.detach().cpu().numpy() if torch.is_tensor(targets) else np.asarray(targets)
    if s.shape != t.shape or s.ndim != 2:
        raise ValueError(f'scores {s.shape} and targets {t.shape} must both be [N, C]')
    t = t.astype(int)
    present = np.flatnonzero(t.sum(0) > 0)
    if present.size == 0:
        raise ValueError('no class has a positive image: the metrics are undefined; evaluate on more images')
    pred = (s > threshold).astype(int)
    ap = average_precision_score(t[:, present], s[:, present], average=None)
    cp, cr, _, _ = precision_recall_fscore_support(t, pred, labels=present, average='macro', zero_division=0)
    op, orec, of1, _ = precision_recall_fscore_support(t, pred, average='micro', zero_division=0)
    cf1 = 2 * cp * cr / (cp + cr) if cp + cr > 0 else 0.0
    out = dict(mAP=float(np.mean(ap)), CP=cp, CR=cr, CF1=cf1, OP=op, OR=orec, OF1=of1)
    out = {k: 100.0 * float(v) for k, v in out.items()}
    out.update(classes_scored=int(present.size), images=int(t.shape[0]))
    return out


def write_metric_table(rows, path):
    """Write ``rows`` (dicts with ``'size'`` and :data:`METRIC_NAMES`, optionally ``'model'``) as CSV and JSON next to
    each other (``path`` without extension + ``.csv`` / ``.json``); returns the CSV path."""
    import csv
    base = os.path.splitext(path)[0]
    keys = [k for k in ('model', 'size') if any(k in r for r in rows)] + list(METRIC_NAMES)
    with open(base + '.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction='ignore')
        w.writeheader()
        for r in rows:
            w.writerow({k: (f'{r[k]:.2f}' if isinstance(r.get(k), float) else r.get(k)) for k in keys})
    with open(base + '.json', 'w') as f:
        json.dump(rows, f, indent=1)
    return base + '.csv'
