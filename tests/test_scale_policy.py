"""The Elastic scale-policy score (backbones/scale_policy.py) and tools/scale_policy.py on a checkpoint trained by
tools/pretrain.py on the shared Imagenette subset (issue 25)."""
import csv
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

import backbones
from backbones.elastic import elastic_downsample
from backbones.scale_policy import ScalePolicyRecorder, elastic_units, scale_policy_scores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

#: model -> Elastic units (ResNeXt50+Elastic: the paper's 17)
UNITS = {'resnext50_elastic': 17, 'densenet201_elastic': 70, 'dla60x_elastic': 11}


@pytest.mark.parametrize('name', list(UNITS))
def test_hooks_leave_the_outputs_unchanged_and_score_every_unit(name):
    torch.manual_seed(0)
    model = backbones.create(name, num_classes=5).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
    logits, scores = scale_policy_scores(model, x)
    assert torch.equal(logits, plain)
    assert scores.shape == (3, UNITS[name]) and torch.isfinite(scores).all()
    assert not elastic_units(model)[0][1] is elastic_units(model)[0][2]
    # eval-mode ("fixed") BN: an image's scores do not depend on its batch
    _, one = scale_policy_scores(model, x[1:2])
    torch.testing.assert_close(one[0], scores[1], rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the hooks are gone after the context
        assert all(not m._forward_hooks for m in model.modules())


def test_score_is_the_difference_of_the_branch_means_computed_by_hand():
    """Eq. 4 for the first unit of ResNeXt50+Elastic, recomputed from its modules: relu(bn2(conv2(relu(bn1(conv1
    (x)))))) of each branch, the low one on the 2x2-average-pooled input, mean over channels and positions."""
    torch.manual_seed(0)
    model = backbones.create('resnext50_elastic', num_classes=5).eval()
    unit = model.stages[0][0]
    seen = {}
    handle = unit.register_forward_pre_hook(lambda m, inp: seen.setdefault('x', inp[0].clone()))
    x = torch.randn(2, 3, 64, 64)
    _, scores = scale_policy_scores(model, x)
    handle.remove()
    u, xin = unit, seen['x']
    with torch.no_grad():
        high = torch.relu(u.bn2(u.conv2(torch.relu(u.bn1(u.conv1(xin))))))
        low = torch.relu(u.bn2_d(u.conv2_d(torch.relu(u.bn1_d(u.conv1_d(elastic_downsample(xin)))))))
    assert high.shape[-1] == 2 * low.shape[-1]
    expect = high.mean(dim=(1, 2, 3)) - low.mean(dim=(1, 2, 3))
    torch.testing.assert_close(scores[:, 0], expect, rtol=1e-5, atol=1e-6)


def test_silencing_a_branch_sets_the_sign():
    """A unit whose low-resolution branch outputs nothing (its BN shifted far below zero before the ReLU) scores
    > 0; silencing the high-resolution branch instead gives < 0; the other units keep their scores."""
    torch.manual_seed(0)
    model = backbones.create('dla60x_elastic', num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    _, base = scale_policy_scores(model, x)
    _, hi, lo = elastic_units(model)[3]
    with torch.no_grad():
        lo.bias.fill_(-1e4)
    _, low_off = scale_policy_scores(model, x)
    assert (low_off[:, 3] > 0).all()
    torch.testing.assert_close(low_off[:, :3], base[:, :3])
    with torch.no_grad():
        lo.bias.zero_()
        hi.bias.fill_(-1e4)
    _, high_off = scale_policy_scores(model, x)
    assert (high_off[:, 3] < 0).all()


def test_a_model_without_elastic_units_is_refused_naming_the_elastic_models():
    with pytest.raises(ValueError, match='resnext50_elastic'):
        ScalePolicyRecorder(backbones.create('resnext50_32x4d', num_classes=5))
    rec = ScalePolicyRecorder(backbones.create('dla60x_elastic', num_classes=5))
    with rec, pytest.raises(RuntimeError, match='inside the ScalePolicyRecorder'):
        rec.scores()  # no forward ran


@pytest.fixture(scope='module')
def imagenette_elastic(tmp_path_factory, shared_dir):
    """``last.pth`` of tools/pretrain.py (with its 10-class classifier): ResNeXt50+Elastic, one epoch on 16
    Imagenette images at 64 px."""
    import pretrain
    root = os.path.join(shared_dir, 'datasets', 'imagenette')
    if not os.path.isfile(os.path.join(root, 'classes.txt')):
        pytest.skip(f'Imagenette missing: expected {root}/classes.txt')
    out = tmp_path_factory.mktemp('elastic_run')
    pretrain.main(['--data-path', root, '--output-dir', str(out), '--model', 'resnext50_elastic', '--method',
                   'standard', '--epochs', '1', '--batch-size', '8', '--max-train-samples', '16',
                   '--max-val-samples', '8', '--train-crop-size', '64', '--val-resize-size', '72',
                   '--val-crop-size', '64', '--workers', '0', '--lr', '0.05', '--clip-grad-norm', '1.0',
                   '--no-tensorboard', '--no-final-eval'])
    yield root, str(out / 'last.pth')
    shutil.rmtree(out, ignore_errors=True)  # module-scoped: pytest would keep it to the end of the session


@pytest.mark.slow  # a pretrain.py run on the real data, then the tool
def test_tool_writes_scores_class_means_and_plots(imagenette_elastic, tmp_path):
    import scale_policy
    from PIL import Image
    root, ckpt = imagenette_elastic
    out = tmp_path / 'policy'
    rows = scale_policy.main([ckpt, '--model', 'resnext50_elastic', '--data-path', root, '--per-class', '3',
                              '--resize-size', '72', '--crop-size', '64', '--out-dir', str(out)])
    assert len(rows) == 30 and sorted({r['label'] for r in rows}) == list(range(10))
    # scores.csv: one row per image, 17 unit columns, the same numbers as the returned rows
    with open(out / 'scores.csv') as f:
        table = list(csv.DictReader(f))
    assert len(table) == 30
    units = [k for k in table[0] if k.startswith('unit')]
    assert units == [f'unit{j}' for j in range(1, 18)]
    np.testing.assert_allclose([[float(t[u]) for u in units] for t in table], [r['scores'] for r in rows],
                               rtol=1e-5)
    assert table[0]['class'] == 'tench' and {t['correct'] for t in table} <= {'0', '1'}
    # the same scores as the model gives one image through the library
    model = backbones.create('resnext50_elastic', pretrained=ckpt, num_classes=10)
    from torchvision import transforms
    img = transforms.CenterCrop(64)(transforms.Resize(72)(Image.open(rows[0]['path']).convert('RGB')))
    x = transforms.Normalize(model.pixel_mean, model.pixel_std)(transforms.ToTensor()(img))[None]
    logits, s = scale_policy_scores(model, x)
    np.testing.assert_allclose(s[0].numpy(), rows[0]['scores'], rtol=1e-4, atol=1e-6)
    assert int(logits.argmax()) == rows[0]['pred']
    # class means: sorted, highest first, each the mean of its images' mean scores
    with open(out / 'class_means.csv') as f:
        means = list(csv.DictReader(f))
    assert len(means) == 10 and all(int(m['images']) == 3 for m in means)
    vals = [float(m['mean_score']) for m in means]
    assert vals == sorted(vals, reverse=True)
    tench = [np.mean(r['scores']) for r in rows if r['label'] == 0]
    tench_row = next(m for m in means if m['class'] == 'tench')
    assert float(tench_row['mean_score']) == pytest.approx(np.mean(tench), rel=1e-4)
    data = json.loads((out / 'scores.json').read_text())
    assert len(data['units']) == 17 and data['classes'][0] == 'tench' and len(data['images']) == 30
    assert np.isfinite([r['tsne'] for r in data['images']]).all()
    sizes = {p: Image.open(out / p).size for p in ('class_means.png', 'tsne.png', 'block_distributions.png')}
    assert sizes['tsne.png'] == (800, 800)
    assert sizes['class_means.png'][1] > 200 and sizes['block_distributions.png'][0] >= 600


def test_tool_refuses_a_dense_model_a_backbone_export_and_a_folder_without_the_split(tmp_path, shared_dir):
    import scale_policy

    from backbones.checkpoint import save_backbone_checkpoint
    root = os.path.join(shared_dir, 'datasets', 'imagenette')
    save_backbone_checkpoint(backbones.create('resnext50_elastic', num_classes=0), tmp_path / 'backbone.pth')
    with pytest.raises(ValueError, match='holds no classifier.*last.pth'):
        scale_policy.main([str(tmp_path / 'backbone.pth'), '--model', 'resnext50_elastic', '--data-path', root,
                           '--out-dir', str(tmp_path)])
    with pytest.raises(ValueError, match='Elastic model'):
        scale_policy.main(['--random-init', '--model', 'resnext50_32x4d', '--data-path', root,
                           '--out-dir', str(tmp_path)])
    with pytest.raises(SystemExit):
        scale_policy.main(['--random-init', '--model', 'resnext50_elastic', '--data-path', str(tmp_path),
                           '--out-dir', str(tmp_path)])


# ------------------------------------------------------------------ the explorer in a real browser
CHROMIUM, CHROMEDRIVER = shutil.which('chromium'), shutil.which('chromedriver')
#: ``make test`` sets it: there a missing browser fails the test instead of skipping it (tools/setup_env.sh
#: installs Debian's chromium and chromium-driver when they are missing)
REQUIRE_BROWSER = os.environ.get('DYNSCALE_REQUIRE_BROWSER') == '1'


@pytest.fixture
def browser():
    """Headless Debian chromium driven by selenium through chromium-driver, with the console log kept."""
    missing = [n for n, p in (('chromium', CHROMIUM), ('chromedriver (Debian chromium-driver)', CHROMEDRIVER))
               if p is None]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append('selenium (the dev extra: tools/setup_env.sh installs it)')
    if missing:
        msg = f'{", ".join(missing)} not installed: apt-get update && apt-get install -y chromium chromium-driver'
        if REQUIRE_BROWSER:
            pytest.fail(msg + ' (make test requires the browser)')
        pytest.skip(msg)
    opts = webdriver.ChromeOptions()
    for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1280,1600'):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.mark.slow  # a real browser
def test_explorer_page_searches_sorts_and_draws_the_tsne_map_in_chromium(imagenette_elastic, tmp_path, browser):
    import scale_policy
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    root, ckpt = imagenette_elastic
    out = tmp_path / 'policy'
    rows = scale_policy.main([ckpt, '--model', 'resnext50_elastic', '--data-path', root, '--per-class', '3',
                              '--resize-size', '72', '--crop-size', '64', '--out-dir', str(out)])
    page = out / 'explorer.html'
    assert 'src="http' not in page.read_text()  # self-contained: nothing fetched from a server
    browser.get(page.as_uri())
    errors = [e for e in browser.get_log('browser') if e['level'] == 'SEVERE']
    assert not errors, errors
    cards = browser.find_elements(By.CSS_SELECTOR, '#grid .card')
    assert len(cards) == 30
    assert browser.execute_script("return document.querySelectorAll('#tsne .point').length") == 30
    assert len(browser.execute_script("return document.getElementById('tsne').layout.images")) == 30

    def visible():
        return [c for c in browser.find_elements(By.CSS_SELECTOR, '#grid .card') if c.is_displayed()]

    browser.find_element(By.ID, 'search').send_keys('golf')
    shown = visible()
    assert [c.get_attribute('data-cls') for c in shown] == ['golf_ball'] * 3
    assert browser.find_element(By.ID, 'count').text == '3 of 30 images'
    browser.find_element(By.ID, 'search').clear()
    browser.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")
    assert len(visible()) == 30
    # sorting by a unit puts the images in decreasing order of that unit's score, as the CSV has them
    for unit in (1, 9, 17):
        Select(browser.find_element(By.ID, 'sort')).select_by_value(f'unit{unit}')
        order = [int(c.get_attribute('data-index')) for c in visible()]
        expect = sorted(range(30), key=lambda i: (-round(rows[i]['scores'][unit - 1], 6), i))
        assert order == expect, unit
    assert order != list(range(30))
    Select(browser.find_element(By.ID, 'sort')).select_by_value('class')
    assert [c.get_attribute('data-cls') for c in visible()][:3] == ['English_springer'] * 3
    shot = tmp_path / 'explorer.png'
    assert browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] >= 1000
