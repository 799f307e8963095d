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
    assert ds.target_matrix().sum(0).gt(0).all()  # the subset has every class in val (datasets README)


def test_missing_annotation_file_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match='COCO 2017 layout'):
        CocoMultiLabel(str(tmp_path), 'val2017')


def _ml_run(shared_dir, out, *extra):
    from tools import pretrain
    return pretrain.main(['--task', 'multilabel', '--data-path', os.path.join(shared_dir, 'datasets', 'coco'),
                          '--model', 'resnext50_elastic', '--model-kwargs', '{"cardinality": 4, "base_width": 4}',
                          '--output-dir', str(out), '--epochs', '1', '--batch-size', '4', '--train-crop-size', '64',
                          '--val-crop-size', '64', '--max-train-samples', '16', '--max-val-samples', '16',
                          '--workers', '0', '--no-tensorboard', '--lr', '0.01', '--log-interval', '2', *extra])


def test_pretrain_multilabel_trains_on_coco_and_writes_the_stress_test(shared_dir, tmp_path):
    """A few CPU iterations of --task multilabel on the shared COCO subset (train2017 -> val2017), then the metric
    table at two input sizes (the scale stress test), side by side with a second model through tools/stress_test.py."""
    import csv
    import json
    rows = _ml_run(shared_dir, tmp_path / 'run', '--stress-sizes', '64', '96')
    assert [r['size'] for r in rows] == [64, 96]
    for r in rows:
        assert r['images'] == 16 and 0 < r['classes_scored'] <= 80
        for k in ('mAP', 'CP', 'CR', 'CF1', 'OP', 'OR', 'OF1'):
            assert 0.0 <= r[k] <= 100.0, (k, r[k])
    text = (tmp_path / 'run' / 'eval.txt').read_text()
    assert 'scale stress test' in text and 'CF1' in text and 'OF1' in text
    with open(tmp_path / 'run' / 'summary.csv') as f:
        summary = list(csv.DictReader(f))
    assert float(summary[-1]['mAP']) == pytest.approx(rows[0]['mAP'], abs=1e-6)  # per-epoch val at the val size
    assert (tmp_path / 'run' / 'stress_test.png').stat().st_size > 0
    # a second model's run (same rows, other name) beside it
    other = tmp_path / 'dense'
    other.mkdir()
    (other / 'stress_test.json').write_text(json.dumps([dict(r, model='resnext50_32x4d') for r in rows]))
    from tools import stress_test
    both = stress_test.main([str(tmp_path / 'run'), str(other), '--out', str(tmp_path / 'cmp')])
    assert {r['model'] for r in both} == {'resnext50_elastic', 'resnext50_32x4d'} and len(both) == 4
    assert (tmp_path / 'cmp.png').stat().st_size > 0 and (tmp_path / 'cmp.csv').read_text().count('\n') == 5


@pytest.mark.parametrize('flags, expect', [
    (['--task', 'multilabel', '--method', 'usnet', '--model', 'us_mobilenet_v2'], '--method standard'),
    (['--model', 'resnext50_elastic', '--stress-sizes', '224'], 'belongs to --task multilabel'),
])
def test_pretrain_refuses_multilabel_flags_that_do_not_fit(tmp_path, flags, expect):
    from tools import pretrain
    with pytest.raises(ValueError, match=expect):
        pretrain.parse_args(['--data-path', str(tmp_path), *flags])


def test_recipe_is_the_papers_multilabel_setting(tmp_path):
    from tools import pretrain
    args = pretrain.parse_args(['--recipe', 'coco-multilabel-elastic-resnext50', '--data-path', str(tmp_path)])
    assert (args.task, args.method, args.model) == ('multilabel', 'standard', 'resnext50_elastic')
    assert (args.train_dir, args.val_dir) == ('train2017', 'val2017')
    assert (args.lr, args.weight_decay, args.epochs, args.lr_milestones) == (0.001, 5e-4, 36, [24, 30])
    assert args.effective_batch_size == 96 and args.lr_schedule == 'step' and args.train_crop_size == 224
