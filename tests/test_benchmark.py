"""tools/benchmark.py: every row of the slimmable and SACT pairs is measured (tiny inputs, one iteration)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_benchmark_rows_and_sact_ponder_cost_follows_halting_bias(tmp_path):
    out = tmp_path / 'bench.json'
    res = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), '--pairs', 'slimmable', 'sact',
                          '--batch', '2', '--size', '64', '--iters', '1', '--warmup', '0', '--threads', '1',
                          '--json', str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'failed' not in res.stdout, res.stdout
    rows = json.loads(out.read_text())
    labels = [r['label'] for r in rows]
    assert sum(r['pair'] == 'slimmable' for r in rows) == 4, labels
    sact = [r for r in rows if r['pair'] == 'sact' and r.get('ponder_cost') is not None]
    assert len(sact) == 5, labels
    # rows are ordered by increasing halting bias: units halt earlier, so ponder cost and MACs fall
    ponder = [r['ponder_cost'] for r in sact]
    macs = [r['macs_G'] for r in sact]
    assert ponder == sorted(ponder, reverse=True) and ponder[0] > ponder[-1], ponder
    assert macs == sorted(macs, reverse=True) and macs[0] > macs[-1], macs
    assert all(r['infer_img_s'] > 0 and r['peak_mem_MiB'] > 0 for r in rows)


@pytest.mark.parametrize('argv, expect', [
    (['--frameworks', '--fw-batch', '1'], '--fw-batch 1: .*at least 2 images'),
    (['--iters', '0'], '--iters 0: must be at least 1'),
])
def test_bad_options_fail_before_any_measurement(monkeypatch, capsys, argv, expect):
    """A framework iteration of one image cannot train MMSeg's ASPP BatchNorm (it failed inside every MMSeg row);
    zero iterations would measure nothing: both stop at the argument parser, naming the fix."""
    import re
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'tools'))
    import benchmark
    monkeypatch.setattr(sys, 'argv', ['benchmark.py', *argv])
    with pytest.raises(SystemExit) as e:
        benchmark.main()
    assert e.value.code == 2 and re.search(expect, capsys.readouterr().err)
