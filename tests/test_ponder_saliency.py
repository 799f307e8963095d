"""SACT ponder-cost maps drawn over the image, their saliency post-processing (supplementary A.3) and the saliency
metrics on hand-computed cases; tools/ponder_maps.py on a checkpoint trained by tools/pretrain.py on Imagenette
(issue 25)."""
import csv
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import backbones
from backbones.sact import ponder_cost_map
from backbones.sact.drawing import draw_ponder_map, stage_ponder_maps
from backbones.sact.saliency import auc_judd, cc, center_baseline, normalize_map, nss, ponder_saliency

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

RAMP = np.array([[0.0, 1.0], [2.0, 3.0]])


@pytest.mark.parametrize('fixated, expect', [((1, 1), 1.0), ((0, 0), 0.5), ((0, 1), 2 / 3)])
def test_auc_judd_by_hand(fixated, expect):
    """One fixation on a 2x2 ramp: threshold = its saliency; TPR 1, FPR = (pixels >= it - 1) / 3; the curve
    (0,0) -> (FPR, 1) -> (1,1) has area 1 - FPR / 2 ... e.g. value 1: FPR 2/3, area 2/3."""
    fix = np.zeros((2, 2))
    fix[fixated] = 1
    assert auc_judd(RAMP, fix) == pytest.approx(expect)


def test_auc_judd_two_fixations_by_hand():
    # fixations on 3 and 1: thresholds 3 (TPR 1/2, FPR 0), 1 (TPR 1, FPR (3 - 2) / 2 = 1/2); area 0.5*1 + 0.5*1
    # ... trapezoids: (0,0)-(0,.5): 0; (0,.5)-(.5,1): .375; (.5,1)-(1,1): .5 -> 0.875
    fix = np.array([[0, 1], [0, 1]])
    assert auc_judd(RAMP, fix) == pytest.approx(0.875)


def test_nss_and_cc_by_hand():
    fix = np.array([[0, 0], [0, 1]])
    # mean 1.5, sample std sqrt(5/3): (3 - 1.5) / 1.29099 = 1.16190
    assert nss(RAMP, fix) == pytest.approx(1.5 / np.sqrt(5 / 3))
    assert cc(RAMP, RAMP * 2 + 1) == pytest.approx(1.0)
    assert cc(RAMP, -RAMP) == pytest.approx(-1.0)
    # centred a = [-1.5, -.5, .5, 1.5], b = [1, 0, 0, 1] - .5 = [.5, -.5, -.5, .5]: sum ab = -.75 -.25 -.25 + .75 = 0
    assert cc(RAMP, np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match='no fixation'):
        nss(RAMP, np.zeros((2, 2)))
    with pytest.raises(ValueError, match='differ in size'):
        auc_judd(RAMP, np.ones((3, 3)))


def test_ponder_saliency_is_eq_1_to_4():
    rng = np.random.default_rng(0)
    rho = rng.uniform(4, 12, size=(40, 60))
    # no blur, no baseline: the normalised map (eq. 1-2)
    np.testing.assert_allclose(ponder_saliency(rho, s=0, gamma=0), (rho - rho.min()) / np.ptp(rho))
    # constant map: only gamma * B is left, B peaking (1) at the centre
    flat = ponder_saliency(np.full((41, 61), 7.0), s=10, gamma=0.005)
    assert flat.max() == pytest.approx(0.005) and np.unravel_index(flat.argmax(), flat.shape) == (20, 30)
    np.testing.assert_allclose(flat, 0.005 * center_baseline((41, 61)))
    # blur (eq. 3) spreads a single peak symmetrically and keeps it where it was
    delta = np.zeros((41, 41))
    delta[10, 30] = 1.0
    out = ponder_saliency(delta, s=3, gamma=0)
    assert np.unravel_index(out.argmax(), out.shape) == (10, 30)
    assert out[10, 27] == pytest.approx(out[10, 33]) and out[10, 30] < 0.1
    # a given baseline (e.g. the MIT benchmark's center.mat) is resized to the map
    np.testing.assert_allclose(ponder_saliency(np.ones((8, 8)), s=0, gamma=1.0, baseline=np.ones((4, 4))), 1.0)
    with pytest.raises(ValueError, match=r'\[H, W\]'):
        ponder_saliency(np.ones((2, 8, 8)))
    assert normalize_map(np.ones((3, 3))).max() == 0


def test_stage_maps_sum_to_the_ponder_cost_map_and_are_drawn(tmp_path):
    torch.manual_seed(0)
    model = backbones.create('sact_resnet50', num_classes=5).eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 96))
    stages = stage_ponder_maps(model.ponder_costs, (64, 96))
    assert stages.shape == (2, 4, 64, 96)
    torch.testing.assert_close(stages.sum(1), ponder_cost_map(model.ponder_costs, (64, 96)))
    assert (stages >= 1).all()  # each stage runs at least its first unit everywhere: rho = N + R >= 1
    img = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    path = draw_ponder_map(img, stages[0].sum(0), str(tmp_path / 'p.png'), stage_maps=stages[0], title='x')
    w, h = Image.open(path).size
    assert (w, h) == (int(3.2 * 6 * 80), int(3.4 * 80))  # image + sum + 4 stages, 80 dpi
    with pytest.raises(ValueError, match='differ in size'):
        draw_ponder_map(img, np.ones((32, 32)), str(tmp_path / 'bad.png'))


@pytest.fixture(scope='module')
def imagenette_sact(tmp_path_factory, shared_dir):
    """``backbone.pth`` of tools/pretrain.py: SACT-ResNet50, one epoch on 16 Imagenette images at 64 px, and a
    folder of 3 val images (of 3 classes) with a fixation map each (fixations in the upper-left quarter)."""
    import pretrain
    root = os.path.join(shared_dir, 'datasets', 'imagenette')
    if not os.path.isfile(os.path.join(root, 'classes.txt')):
        pytest.skip(f'Imagenette missing: expected {root}/classes.txt')
    out = tmp_path_factory.mktemp('sact_run')
    pretrain.main(['--data-path', root, '--output-dir', str(out), '--model', 'sact_resnet50', '--method', 'sact',
                   '--tau', '0.01', '--epochs', '1', '--batch-size', '8', '--max-train-samples', '16',
                   '--max-val-samples', '8', '--train-crop-size', '64', '--val-resize-size', '72',
                   '--val-crop-size', '64', '--workers', '0', '--lr', '0.05', '--clip-grad-norm', '1.0',
                   '--no-tensorboard', '--no-final-eval'])
    images, fixations = out / 'images', out / 'fixations'
    for wnid in sorted(os.listdir(os.path.join(root, 'val')))[:3]:
        first = sorted(os.listdir(os.path.join(root, 'val', wnid)))[0]
        (images / wnid).mkdir(parents=True)
        shutil.copy(os.path.join(root, 'val', wnid, first), images / wnid / first)
        w, h = Image.open(images / wnid / first).size
        fix = np.zeros((h, w), np.uint8)
        fix[h // 8: h // 4, w // 8: w // 4: 3] = 255
        (fixations / wnid).mkdir(parents=True)
        Image.fromarray(fix).save(fixations / wnid / (os.path.splitext(first)[0] + '.png'))
    yield str(out / 'backbone.pth'), str(images), str(fixations)
    shutil.rmtree(out, ignore_errors=True)  # module-scoped: pytest would keep it to the end of the session


@pytest.mark.slow  # a pretrain.py run on the real data, then the tool
def test_tool_draws_ponder_and_saliency_maps_and_scores_them(imagenette_sact, tmp_path):
    import ponder_maps
    ckpt, images, fixations = imagenette_sact
    out = tmp_path / 'maps'
    rows = ponder_maps.main([ckpt, '--model', 'sact_resnet50', '--images', images, '--fixations', fixations,
                             '--size', '96', '--out-dir', str(out)])
    assert len(rows) == 3
    model = backbones.create('sact_resnet50', pretrained=ckpt).eval()
    for r in rows:
        name = os.path.splitext(r['image'])[0].replace(os.sep, '__')
        rho = np.load(out / f'{name}_ponder.npy')
        assert rho.shape == (r['height'], r['width']) == (96, 96)
        assert r['ponder_cost'] == pytest.approx(float(rho.mean()), rel=1e-5)
        assert 4.0 <= rho.min() and rho.max() <= 3 + 4 + 6 + 3 + 4  # N + R per stage in [1, units + 1]
        # the map is the model's on that image (resized to 96, normalised as the checkpoint says)
        from torchvision import transforms
        x = transforms.ToTensor()(transforms.Resize(96)(Image.open(os.path.join(images, r['image'])).convert('RGB')))
        with torch.no_grad():
            model(transforms.Normalize(model.pixel_mean, model.pixel_std)(x)[None])
        np.testing.assert_allclose(rho, ponder_cost_map(model.ponder_costs, (96, 96))[0].numpy(), rtol=1e-4)
        sal = np.load(out / f'{name}_saliency.npy')
        np.testing.assert_allclose(sal, ponder_saliency(rho), rtol=1e-5, atol=1e-6)
        assert Image.open(out / f'{name}.png').size == (int(3.2 * 6 * 80), int(3.4 * 80))
        assert Image.open(out / f'{name}_saliency.png').size == (96, 96)
        fix = np.asarray(Image.open(os.path.join(fixations, name.split('__')[0], name.split('__')[1] + '.png'))) > 0
        from scipy.ndimage import zoom
        big = zoom(sal, (fix.shape[0] / 96, fix.shape[1] / 96), order=1)
        assert r['auc_judd'] == pytest.approx(auc_judd(big, fix)) and 0 <= r['auc_judd'] <= 1
        assert r['nss'] == pytest.approx(nss(big, fix))
        assert -1 <= r['cc'] <= 1
    with open(out / 'saliency_metrics.csv') as f:
        table = list(csv.reader(f))
    assert table[0] == ['image', 'auc_judd', 'nss', 'cc'] and table[-1][0] == 'mean' and len(table) == 5
    assert float(table[-1][1]) == pytest.approx(np.mean([r['auc_judd'] for r in rows]), abs=1e-4)


def test_tool_refuses_a_model_without_ponder_costs_and_an_empty_folder(tmp_path):
    import ponder_maps
    with pytest.raises(SystemExit):
        ponder_maps.main(['--random-init', '--model', 'resnext50_elastic', '--images', str(tmp_path)])
    with pytest.raises(ValueError, match='holds no'):
        ponder_maps.main(['--random-init', '--model', 'sact_resnet50', '--images', str(tmp_path),
                          '--out-dir', str(tmp_path / 'o')])


@pytest.mark.slow  # pretrain.py runs on the real data
def test_pretrain_evaluate_saves_ponder_maps(imagenette_sact, tmp_path, shared_dir):
    """``tools/pretrain.py --evaluate --pretrained CKPT --save-ponder-maps 3``: the first three validation images
    drawn with the same function, the summed maps saved, equal to the model's on the evaluated crop."""
    import pretrain
    ckpt = imagenette_sact[0]
    root = os.path.join(shared_dir, 'datasets', 'imagenette')
    out = tmp_path / 'eval'
    pretrain.main(['--evaluate', '--pretrained', ckpt, '--data-path', root, '--output-dir', str(out), '--model',
                   'sact_resnet50', '--method', 'sact', '--max-val-samples', '4', '--val-resize-size', '72',
                   '--val-crop-size', '64', '--batch-size', '4', '--workers', '0', '--no-tensorboard',
                   '--save-ponder-maps', '3'])
    maps = sorted((out / 'ponder_maps').glob('*.npy'))
    assert len(maps) == 3 and len(list((out / 'ponder_maps').glob('*.png'))) == 3
    rho = np.load(maps[0])
    assert rho.shape == (64, 64) and 4.0 <= rho.min() and rho.max() <= 20.0
    png = maps[0].with_suffix('.png')
    assert Image.open(png).size == (int(3.2 * 6 * 80), int(3.4 * 80))


def test_save_ponder_maps_is_refused_for_a_model_without_ponder_cost(tmp_path):
    import pretrain

    from backbones.capabilities import OptionNotApplicable
    with pytest.raises(OptionNotApplicable, match='--save-ponder-maps'):
        pretrain.main(['--evaluate', '--data-path', str(tmp_path), '--output-dir', str(tmp_path / 'o'), '--model',
                       'resnext50_elastic', '--save-ponder-maps', '3'])
