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
