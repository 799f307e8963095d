#!/usr/bin/env python
"""Side by side: the COCO multi-label scale stress tests of several runs (Elastic paper Sec. 4.2).

Each run of ``tools/pretrain.py --task multilabel`` writes ``stress_test.json`` (metrics per input size); this tool
prints them as one table and draws one PNG with a line per model::

    python tools/pretrain.py --recipe coco-multilabel-elastic-resnext50 --data-path /data/coco \\
        --pretrained checkpoints/resnext50_elastic_elastic_in1k.pth --output-dir runs/ml_elastic
    python tools/pretrain.py --recipe coco-multilabel-resnext50 --data-path /data/coco \\
        --pretrained checkpoints/resnext50_32x4d_elastic_in1k.pth --output-dir runs/ml_dense
    python tools/stress_test.py runs/ml_elastic runs/ml_dense --out runs/stress_test
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pretrain_lib.multilabel import plot_stress_test, stress_test_table, write_metric_table  # noqa: E402


def main(argv=None):
    """Print the merged table, write ``OUT.csv`` / ``OUT.json`` / ``OUT.png``; returns the rows.

    Raises:
        FileNotFoundError: a run folder without ``stress_test.json`` (not a ``--task multilabel`` run).
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs', nargs='+', help='output folders of tools/pretrain.py --task multilabel')
    p.add_argument('--out', default='stress_test', help='output path without extension (.csv, .json, .png)')
    args = p.parse_args(argv)
    rows = []
    for run in args.runs:
        path = os.path.join(run, 'stress_test.json')
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{path} not found: pass output folders of tools/pretrain.py --task multilabel '
                                    f'(their final evaluation writes it)')
        with open(path) as f:
            rows += json.load(f)
    print(stress_test_table(rows, f'COCO multi-label scale stress test (%): {", ".join(args.runs)}'))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_metric_table(rows, args.out + '.csv')
    print(f'wrote {plot_stress_test(rows, args.out + ".png")}, {args.out}.csv, {args.out}.json')
    return rows


if __name__ == '__main__':
    from backbones.errors import run_main
    run_main(main)
