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

from .data import RobustImageFolder

__all__ = ['CocoMultiLabel', 'multilabel_loss', 'multilabel_metrics', 'evaluate_multilabel', 'stress_test_table',
           'plot_stress_test', 'square_val_transform', 'write_metric_table', 'METRIC_NAMES']

#: the metric keys :func:`multilabel_metrics` returns, in table order
METRIC_NAMES = ('mAP', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1')


class CocoMultiLabel(RobustImageFolder):
    """COCO images with 80-dim multi-hot targets from the instance annotations (pycocotools), with the
    :class:`pretrain_lib.data.RobustImageFolder` interface the pretraining engine uses (``(index, epoch)`` keys
    seeding the augmentation, ``select``, the unreadable-image policy).

    Args:
        root (str): the COCO folder (``annotations/``, ``train2017/``, ``val2017/``).
        split (str): ``'train2017'`` or ``'val2017'`` (annotation file ``annotations/instances_<split>.json``).
        transform (callable | None): PIL image -> tensor ``[3, H, W]``.
        bad_images (str): ``'skip'`` or ``'fail'`` (see ``RobustImageFolder``).
        seed (int): augmentation seed.
        skip_empty (bool): leave out images without any annotation (default: keep them, all-zero targets).

    Items: ``(image, target)``, ``target`` a float tensor ``[num_classes]`` of 0/1; ``samples`` lists
    ``(path, target)`` and ``classes`` the category names in index order.

    Raises:
        FileNotFoundError: the annotation file or the image folder is missing (the message shows the layout).
    """

    def __init__(self, root, split='train2017', transform=None, bad_images='skip', seed=0, skip_empty=False):
        from pycocotools.coco import COCO
        ann = os.path.join(root, 'annotations', f'instances_{split}.json')
        img_dir = os.path.join(root, split)
        for path in (ann, img_dir):
            if not os.path.exists(path):
                raise FileNotFoundError(f'{path} not found: --task multilabel expects the COCO 2017 layout '
                                        f'{root}/annotations/instances_{{train,val}}2017.json and '
                                        f'{root}/{{train,val}}2017/*.jpg')
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(ann)
        cat_ids = sorted(coco.getCatIds())
        index = {c: i for i, c in enumerate(cat_ids)}
        self.root = img_dir
        self.classes = [coco.loadCats(c)[0]['name'] for c in cat_ids]
        self.samples = []
        for img_id in sorted(coco.getImgIds()):
            labels = sorted({index[a['category_id']] for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))})
            if skip_empty and not labels:
                continue
            target = torch.zeros(len(cat_ids))
            target[labels] = 1
            self.samples.append((os.path.join(img_dir, coco.loadImgs(img_id)[0]['file_name']), target))
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.bad_images = bad_images
        self.seed = seed

    @property
    def num_classes(self):
        """Number of classes (80 for COCO)."""
        return len(self.classes)

    def target_matrix(self):
        """``[N, num_classes]`` float tensor of every image's multi-hot target."""
        return torch.stack([t for _, t in self.samples]) if self.samples else torch.zeros(0, self.num_classes)

    def remap_targets(self, index_map):
        """Not applicable: the 80 COCO classes have no ImageNet index (raises ValueError)."""
        raise ValueError('COCO multi-label targets cannot be remapped to ImageNet indices')


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


@torch.no_grad()
def evaluate_multilabel(model, loader, info, autocast, channels_last=False):
    """:func:`multilabel_metrics` of ``model`` over ``loader`` (every rank's shard gathered: mAP needs all scores).

    Args:
        model (nn.Module): ``[N, 3, H, W] -> [N, C]`` logits.
        loader (DataLoader): ``(images, targets)`` batches (``None`` for a batch of unreadable images).
        info: the process info of :mod:`pretrain_lib.dist` (``device``, ``distributed``).
        autocast (callable): context manager factory of the run's mixed precision.

    Returns:
        dict: the metrics (percent), ``classes_scored`` and ``images``.
    """
    from . import dist as pdist
    was = model.training
    model.eval()
    scores, targets = [], []
    mf = torch.channels_last if channels_last else torch.contiguous_format
    try:
        for batch in loader:
            if batch is None:
                continue
            images, target = batch
            with autocast():
                logits = model(images.to(info.device, non_blocking=True, memory_format=mf))
            scores.append(torch.sigmoid(logits.float()).cpu())
            targets.append(target.cpu())
    finally:
        model.train(was)
    parts = pdist.all_gather_object((torch.cat(scores) if scores else None, torch.cat(targets) if targets else None),
                                    info)
    s = torch.cat([p[0] for p in parts if p[0] is not None])
    t = torch.cat([p[1] for p in parts if p[1] is not None])
    return multilabel_metrics(s, t)


def stress_test_table(rows, title):
    """Text table of the scale stress test: one line per (model, input size) with :data:`METRIC_NAMES`."""
    head = f"{'model':28s} {'size':>5s} " + ' '.join(f'{k:>6s}' for k in METRIC_NAMES)
    lines = [title, head, '-' * len(head)]
    for r in rows:
        lines.append(f"{r.get('model', ''):28s} {r['size']:5d} " + ' '.join(f'{r[k]:6.2f}' for k in METRIC_NAMES))
    return '\n'.join(lines)


def plot_stress_test(rows, path, metrics=('mAP', 'CF1', 'OF1')):
    """PNG of ``metrics`` against the input size, one line per model (the Elastic paper's scale stress test);
    returns ``path``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r.get('model', '') for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, key in zip(axes[0], metrics):
        for m in models:
            pts = sorted((r['size'], r[key]) for r in rows if r.get('model', '') == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='o', label=m or None)
        ax.set_xlabel('input size (px)')
        ax.set_ylabel(f'{key} (%)')
        ax.grid(alpha=0.3)
    if any(models):
        axes[0][0].legend(fontsize=8)
    fig.suptitle('COCO multi-label: scale stress test')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def square_val_transform(size, interpolation, mean, std):
    """The authors' multi-label validation transform: resize to ``size x size`` (no crop: a crop would cut labelled
    objects out), to tensor, normalise."""
    from torchvision import transforms

    from .data import _interp
    return transforms.Compose([transforms.Resize((size, size), interpolation=_interp(interpolation), antialias=True),
                               transforms.ToTensor(), transforms.Normalize(mean, std)])
