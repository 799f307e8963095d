"""tools/query_table.py: the MutualNet query table of a tiny slimmable checkpoint trained by tools/pretrain.py
(grid CSV, non-dominated frontier, budget choice, plot), and its pure pieces."""
import csv
import importlib.util
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import query_table  # noqa: E402

HAS_ORT = importlib.util.find_spec('onnxruntime') is not None


def test_parse_macs_and_budget_rules():
    assert query_table.parse_macs('150M') == 150e6 and query_table.parse_macs('1.5g') == 1.5e9
    assert query_table.parse_macs('3e8') == 3e8
    with pytest.raises(ValueError, match='K/M/G'):
        query_table.parse_macs('lots')
    rows = [dict(width=w, resolution=r, macs=m, top1=t) for w, r, m, t in
            [(1.0, 224, 300, 70.0), (0.5, 224, 100, 60.0), (1.0, 128, 110, 58.0), (0.75, 192, 180, 66.0),
             (0.5, 128, 40, 50.0), (0.75, 128, 200, 55.0)]]
    front = query_table.pareto_front(rows)
    assert [(r['width'], r['resolution']) for r in front] == [(0.5, 128), (0.5, 224), (0.75, 192), (1.0, 224)]
    for r in front:  # nobody is at least as good and at most as costly, strictly better in one
        assert not any(o['top1'] >= r['top1'] and o['macs'] <= r['macs'] and o is not r
                       and (o['top1'] > r['top1'] or o['macs'] < r['macs']) for o in rows)
    assert query_table.best_under_budget(rows, 150)['top1'] == 60.0
    assert query_table.best_under_budget(rows, 39) is None
    assert query_table.default_widths((0.35, 1.0), 0.25) == [1.0, 0.75, 0.5, 0.35]


@pytest.fixture(scope='module')
def tiny_slimmable(tmp_path_factory, shared_dir):
    """A US-MobileNet v2 trained by tools/pretrain.py (MutualNet) for two steps on 8 images of the shared
    Imagenette subset."""
    import pretrain
    from test_pretrain import BASE
    data = os.path.join(shared_dir, 'datasets', 'imagenette')
    if not os.path.isfile(os.path.join(data, 'classes.txt')):
        pytest.skip(f'Imagenette missing: expected {data}/classes.txt')
    out = tmp_path_factory.mktemp('run')
    pretrain.main(['--data-path', data, '--output-dir', str(out), *BASE, '--model', 'us_mobilenet_v2',
                   '--method', 'mutualnet', '--widths', '0.35', '1.0', '--input-sizes', '40', '32',
                   '--train-crop-size', '40', '--max-train-samples', '8', '--max-val-samples', '8',
                   '--eval-widths', '1.0', '--calib-batches', '1', '--no-final-eval'])
    yield data, str(out / 'backbone.pth')
    shutil.rmtree(out, ignore_errors=True)  # module-scoped: pytest would keep it to the end of the session


def test_query_table_of_a_trained_checkpoint(tiny_slimmable, tmp_path):
    data, ckpt = tiny_slimmable
    out = tmp_path / 'qt'
    argv = [ckpt, '--model', 'us_mobilenet_v2', '--data-path', data, '--widths', '1.0', '0.5', '0.35',
            '--resolutions', '40', '32', '--batch', '2', '--repeats', '2', '--calib-batches', '1',
            '--eval-batch-size', '4', '--max-val-samples', '8', '--workers', '0', '--threads', '1',
            '--out-dir', str(out),
            '--budget-macs', '3M']
    if HAS_ORT:
        argv.append('--onnx')
    rows = query_table.main(argv)
    assert {(r['width'], r['resolution']) for r in rows} == {(w, r) for w in (1.0, 0.5, 0.35) for r in (40, 32)}
    with open(out / 'query_table.csv') as f:
        lines = f.read().splitlines()
    header = [ln for ln in lines if ln.startswith('#')]
    assert any('evaluation set' in h and 'val' in h for h in header)
    assert any('BN calibration: 1 batches' in h for h in header)
    table = list(csv.DictReader(ln for ln in lines if not ln.startswith('#')))
    assert len(table) == 6
    for col in ('width', 'resolution', 'macs', 'top1', 'torch_ms_b1', 'torch_ms_b2', 'frontier_macs'):
        assert col in table[0], col
    if HAS_ORT:
        assert float(table[0]['onnx_ms_b1']) > 0
    assert all(float(r['torch_ms_b1']) > 0 and 0 <= float(r['top1']) <= 100 for r in table)
    by = {(float(r['width']), int(r['resolution'])): float(r['macs']) for r in table}
    assert by[(1.0, 40)] > by[(0.5, 40)] > by[(0.35, 40)] and by[(1.0, 40)] > by[(1.0, 32)]
    front = [r for r in rows if r['frontier_macs']]
    assert front and all(not any(o['top1'] >= r['top1'] and o['macs'] <= r['macs'] and o is not r and
                                 (o['top1'] > r['top1'] or o['macs'] < r['macs']) for o in rows) for r in front)
    with open(out / 'frontier.csv') as f:
        assert len([ln for ln in f.read().splitlines() if ln and not ln.startswith('#')]) == len(front) + 1
    png = (out / 'accuracy_macs.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000
    best = query_table.best_under_budget(rows, 3e6)
    assert best is None or best['macs'] <= 3e6


def test_query_table_refuses_a_model_without_widths(tmp_path):
    from backbones.capabilities import OptionNotApplicable
    ckpt = tmp_path / 'x.pth'
    ckpt.write_text('x')
    with pytest.raises(OptionNotApplicable, match='slimmable'):
        query_table.parse_args([str(ckpt), '--model', 'resnext50_elastic', '--data-path', str(tmp_path)])


@pytest.mark.skipif(not HAS_ORT, reason='onnx / onnxruntime not installed (the export extra: tools/setup_env.sh)')
@pytest.mark.parametrize('fmt', ['onnx', 'torchscript'])
def test_export_of_the_trained_checkpoint_matches_pytorch(tiny_slimmable, tmp_path, fmt):
    """tools/export.py on a checkpoint trained by tools/pretrain.py: the largest width (whose BN statistics the
    sandwich rule trained) exports exactly; the parameter count is that configuration's."""
    import export
    _, ckpt = tiny_slimmable
    rep = export.main([ckpt, '--model', 'us_mobilenet_v2', '--width', '1.0', '--format', fmt, '--input-size', '32',
                       '--out', str(tmp_path / f'net.{fmt}')])
    # within the float32 rounding of the PyTorch computation itself (this 1-epoch network has tiny BN variances)
    assert rep['max_abs_diff'] <= 1e-4 * max(1.0, rep['max_abs_output']) + 4 * rep['float32_error']
    import backbones
    from backbones.complexity import complexity
    assert rep['params'] == complexity(backbones.create('us_mobilenet_v2', pretrained=ckpt), 32, width=1.0)['params']


def test_query_table_with_the_usnet_protocol(tiny_slimmable, tmp_path):
    """``--method usnet``: every (width, resolution) evaluated at its own input size with BN calibrated per point,
    without MutualNet's ``--input-sizes`` (which ``--method usnet`` refuses in the pretraining tool)."""
    data, ckpt = tiny_slimmable
    rows = query_table.main([ckpt, '--model', 'us_mobilenet_v2', '--method', 'usnet', '--data-path', data,
                             '--widths', '1.0', '0.35', '--resolutions', '40', '32', '--batch', '2', '--repeats', '1',
                             '--calib-batches', '1', '--eval-batch-size', '4', '--max-val-samples', '4',
                             '--workers', '0', '--threads', '1', '--out-dir', str(tmp_path / 'qt')])
    assert {(r['width'], r['resolution']) for r in rows} == {(w, r) for w in (1.0, 0.35) for r in (40, 32)}
    by = {(r['width'], r['resolution']): r['macs'] for r in rows}
    assert by[(1.0, 40)] > by[(0.35, 40)] and by[(1.0, 40)] > by[(1.0, 32)]
    assert all(0 <= r['top1'] <= 100 for r in rows)
