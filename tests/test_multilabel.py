"""COCO multi-label classification (issue 24, first part): targets from the instance annotations, the authors' loss,
and the standard metrics checked against values computed by hand."""
import os

import pytest
import torch

from tools.pretrain_lib.multilabel import CocoMultiLabel, multilabel_loss, multilabel_metrics

# 4 images x 3 classes: image 2 has no label, class 2 has no positive image
TARGETS = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.float32)
PROBS = torch.tensor([[0.9, 0.2, 0.6], [0.4, 0.7, 0.1], [0.8, 0.1, 0.3], [0.2, 0.6, 0.2]])


def test_metrics_equal_the_hand_computed_values():
    # predictions (> 0.5): [1,0,1], [0,1,0], [1,0,0], [0,1,0]
    # class 0: TP 1 (image 0), FP 1 (image 2, the unlabelled one), FN 1 (image 1) -> P 1/2, R 1/2
    # class 1: TP 2, FP 0, FN 0 -> P 1, R 1
    # class 2: no positive -> left out of CP / CR / mAP; its false positive (image 0) counts in OP
    # overall: TP 3, FP 2, FN 1 -> OP 3/5, OR 3/4
    # AP class 0: ranking 0.9 (+), 0.8 (-), 0.4 (+), 0.2 (-) -> 1/2 * 1 + 1/2 * 2/3 = 5/6; class 1: 1
    m = multilabel_metrics(PROBS, TARGETS)
    expect = dict(mAP=(5 / 6 + 1) / 2, CP=0.75, CR=0.75, CF1=0.75, OP=0.6, OR=0.75, OF1=2 * 0.6 * 0.75 / 1.35)
    for k, v in expect.items():
        assert m[k] == pytest.approx(100 * v, abs=1e-9), k
    assert m['classes_scored'] == 2 and m['images'] == 4


def test_metrics_refuse_what_cannot_be_scored():
    with pytest.raises(ValueError, match='no class has a positive'):
        multilabel_metrics(PROBS, torch.zeros_like(TARGETS))
    with pytest.raises(ValueError, match=r'\[N, C\]'):
        multilabel_metrics(PROBS[:, :2], TARGETS)


def test_loss_is_a_sum_over_classes_and_a_mean_over_images():
    logits = torch.logit(PROBS)
    by_hand = -(TARGETS * PROBS.log() + (1 - TARGETS) * (1 - PROBS).log()).sum(1).mean()
    assert multilabel_loss(logits, TARGETS).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_coco_targets_follow_the_instance_annotations(shared_dir):
    import json
    root = os.path.join(shared_dir, 'datasets', 'coco')
    ds = CocoMultiLabel(root, 'val2017')
    with open(os.path.join(root, 'annotations', 'instances_val2017.json')) as f:
        raw = json.load(f)
    cats = sorted(c['id'] for c in raw['categories'])
    assert ds.num_classes == 80 and len(ds) == len(raw['images'])
    img = sorted(raw['images'], key=lambda i: i['id'])[0]
    expect = sorted({cats.index(a['category_id']) for a in raw['annotations'] if a['image_id'] == img['id']})
    image, target = ds[0]
    assert ds.samples[0][0].endswith(img['file_name']) and image.size == (img['width'], img['height'])
    assert torch.nonzero(target).flatten().tolist() == expect
    assert ds.targets().sum(0).gt(0).all()  # the subset has every class in val (datasets README)


def test_missing_annotation_file_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match='instances_'):
        CocoMultiLabel(str(tmp_path), 'val2017')
