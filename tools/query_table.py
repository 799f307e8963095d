#!/usr/bin/env python
"""MutualNet's query table: accuracy, MACs and measured latency of every (width, resolution) of a slimmable
checkpoint, its Pareto frontier and the best configuration under a budget (Yang et al. 2020, Sec. 3 "Model
Inference", Fig. 4-5).

    python tools/query_table.py CKPT --model us_mobilenet_v2 --data-path /data/imagenet --budget-macs 150M
    python tools/query_table.py CKPT --model us_mobilenet_v2 --data-path DIR --widths 1.0 0.75 0.5 0.35 \\
        --resolutions 224 192 160 128 --budget-ms 20 --onnx

Accuracy comes from the pretraining tool's evaluation protocol (``tools/pretrain.py --evaluate``: BN statistics
calibrated per point through the training core, ``--calib-batches`` training batches), MACs from
:func:`backbones.complexity.complexity`, latency from timing the static network of each point
(:func:`backbones.slimmable.export_static`; with ``--onnx`` also through ONNX Runtime): median of ``--repeats``
runs at batch 1 and at ``--batch``, after a warm-up.  Writes to ``--out-dir``: ``query_table.csv`` (the grid; its
header names the checkpoint, the evaluation set and the calibration batches), ``frontier.csv`` (the points no
other point beats in accuracy at lower or equal MACs, and at lower or equal latency) and
``accuracy_macs.png`` (top-1 against MACs, coloured by resolution, frontier drawn).
"""
import argparse
import csv
import os
import statistics
import sys
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS))
sys.path.insert(0, TOOLS)

_UNITS = {'': 1.0, 'K': 1e3, 'M': 1e6, 'G': 1e9}


def parse_macs(text):
    """``'150M'`` / ``'1.2G'`` / ``'3e8'`` -> MACs (float).

    Raises:
        ValueError: not a number with an optional K / M / G suffix.
    """
    t = str(text).strip().upper()
    unit = t[-1] if t and t[-1] in 'KMG' else ''
    try:
        return float(t[:-1] if unit else t) * _UNITS[unit]
    except ValueError:
        raise ValueError(f'a MACs budget is a number with an optional K/M/G suffix (e.g. 150M), got {text!r}') \
            from None


def pareto_front(rows, cost='macs', score='top1'):
    """The rows no other row beats: no row has ``score`` >= and ``cost`` <= with one of them strict.

    Args:
        rows (list[dict]): grid rows.
        cost (str), score (str): the keys minimised / maximised.

    Returns:
        list[dict]: the frontier, by increasing cost.
    """
    front = []
    for r in rows:
        dominated = any(o[score] >= r[score] and o[cost] <= r[cost] and (o[score] > r[score] or o[cost] < r[cost])
                        for o in rows)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: (r[cost], -r[score]))


def best_under_budget(rows, budget, cost='macs', score='top1'):
    """The row of highest ``score`` whose ``cost`` is within ``budget`` (ties: the cheaper), or None."""
    ok = [r for r in rows if r[cost] <= budget * (1 + 1e-9)]
    return max(ok, key=lambda r: (r[score], -r[cost])) if ok else None


def budget_lines(rows, budgets):
    """Text lines "best configuration under each MACs budget" (``budgets`` in MACs, sorted)."""
    lines = ['best configuration under a MACs budget (MutualNet query)',
             f'{"budget MMACs":>12}  {"width":>6}  {"resolution":>10}  {"MMACs":>8}  {"top-1":>6}']
    for b in sorted(budgets):
        best = best_under_budget(rows, b)
        if best is None:
            lines.append(f'{b / 1e6:>12.1f}  {"-":>6}  {"-":>10}  {"-":>8}  {"-":>6}  (no configuration fits)')
        else:
            lines.append(f'{b / 1e6:>12.1f}  {best["width"]:>6.3g}  {best["resolution"]:>10}  '
                         f'{best["macs"] / 1e6:>8.1f}  {best["top1"]:>6.2f}')
    return lines


def default_widths(width_range, step=0.05):
    """The checkpoint's width range in steps of ``step`` (both ends included), largest first."""
    lo, hi = width_range
    ws, w = [], hi
    while w > lo + 1e-9:
        ws.append(round(w, 4))
        w -= step
    return ws + [round(lo, 4)]


def evaluate_grid(args, widths, resolutions):
    """Top-1 / top-5 / MACs of every (width, resolution) through ``tools/pretrain.py --evaluate`` (BN calibrated
    per point); returns its rows."""
    import pretrain
    crop = max(resolutions)
    argv = ['--evaluate', '--pretrained', args.checkpoint, '--data-path', args.data_path, '--model', args.model,
            '--method', args.method, '--eval-widths', *map(str, widths), '--eval-resolutions', *map(str, resolutions),
            '--train-crop-size', str(crop),
            '--val-crop-size', str(crop), '--val-resize-size', str(round(crop / 0.875)), '--calib-batches',
            str(args.calib_batches), '--batch-size', str(args.eval_batch_size), '--workers', str(args.workers),
            '--output-dir', os.path.join(args.out_dir, 'evaluation'), '--no-tensorboard', '--seed', str(args.seed)]
    from pretrain_lib.methods import METHOD_CLASSES
    if METHOD_CLASSES[args.method].input_sizes:  # MutualNet's protocol resizes the crop to each grid resolution
        argv += ['--input-sizes', *map(str, resolutions)]
    if args.max_val_samples:
        argv += ['--max-val-samples', str(args.max_val_samples)]
    return pretrain.main(argv)


def time_ms(fn, repeats, warmup=2):
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def measure_latency(model, width, resolution, batch, repeats, onnx_dir=None):
    """Latency (ms) of the static network of ``(width, resolution)`` at batch 1 and ``batch``: PyTorch eager, and
    ONNX Runtime when ``onnx_dir`` is given.  BN statistics are estimated on one random batch first (timing does
    not depend on their values); ``model`` is left unchanged."""
    import copy

    import torch

    from backbones.slimmable import export_static
    from backbones.training import calibrate
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    calibrate(m, [torch.randn(2, 3, resolution, resolution, generator=g)], width=width, bn_resolution=resolution)
    static = export_static(m, width, resolution).eval()
    out = {}
    for n in (1, batch):
        x = torch.randn(n, 3, resolution, resolution, generator=g)
        with torch.inference_mode():
            out[f'torch_ms_b{n}'] = time_ms(lambda: static(x), repeats)
    if onnx_dir is not None:
        import onnxruntime as ort
        from export import ExportWrapper, export
        path = os.path.join(onnx_dir, f'w{width:g}_r{resolution}.onnx')
        export(ExportWrapper(static).eval(), torch.randn(1, 3, resolution, resolution), path, 'onnx',
               dynamic_batch=True, names=('logits',))
        sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        for n in (1, batch):
            x = torch.randn(n, 3, resolution, resolution, generator=g).numpy()
            out[f'onnx_ms_b{n}'] = time_ms(lambda: sess.run(None, {'input': x}), repeats)
    return out


def plot(rows, frontier, path, title):
    """Top-1 against MMACs, one colour per resolution, the MACs frontier drawn; written as PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    for res in sorted({r['resolution'] for r in rows}, reverse=True):
        pts = [r for r in rows if r['resolution'] == res]
        ax.scatter([r['macs'] / 1e6 for r in pts], [r['top1'] for r in pts], label=f'{res} px', s=24)
    ax.plot([r['macs'] / 1e6 for r in frontier], [r['top1'] for r in frontier], 'k--', lw=1, label='frontier')
    ax.set_xlabel('MMACs per image')
    ax.set_ylabel('top-1 (%)')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv=None):
    """Command-line arguments.

    Raises:
        SystemExit: usage errors; backbones.capabilities.OptionNotApplicable: a model that is not slimmable.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('checkpoint', help='slimmable checkpoint (tools/pretrain.py export, converted release)')
    ap.add_argument('--model', required=True, help='registered slimmable backbone (e.g. us_mobilenet_v2)')
    ap.add_argument('--data-path', required=True, help='image folder with train/ and val/ (ImageNet layout)')
    from backbones.training import methods_needing
    ap.add_argument('--method', default='mutualnet', choices=methods_needing('width'),
                    help='evaluation protocol of the pretraining tool (a method that trains widths)')
    ap.add_argument('--widths', type=float, nargs='+', help="default: the model's width range in steps of 0.05")
    ap.add_argument('--resolutions', type=int, nargs='+', default=[224, 192, 160, 128])
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument('--budget-macs', type=parse_macs, help='e.g. 150M: best configuration within these MACs')
    budget.add_argument('--budget-ms', type=float, help='best configuration within this batch-1 latency (ms)')
    ap.add_argument('--batch', type=int, default=8, help='second latency batch size (the first is 1)')
    ap.add_argument('--repeats', type=int, default=10, help='timed runs per latency (median)')
    ap.add_argument('--onnx', action='store_true', help='also time each point through ONNX Runtime')
    ap.add_argument('--threads', type=int, default=None, help='torch threads (default: as torch sets them)')
    ap.add_argument('--calib-batches', type=int, default=5)
    ap.add_argument('--eval-batch-size', type=int, default=32)
    ap.add_argument('--max-val-samples', type=int, default=None)
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out-dir', default='query_table')
    args = ap.parse_args(argv)
    from backbones.capabilities import check_options
    check_options(args.model, {'query table (width x resolution grid)': 'width'}, where='tools/query_table.py')
    if not os.path.isfile(args.checkpoint):
        ap.error(f'checkpoint not found: {args.checkpoint}')
    for split in ('train', 'val'):
        if not os.path.isdir(os.path.join(args.data_path, split)):
            ap.error(f'{args.data_path} has no {split}/ folder (ImageNet layout: train/<class>/*, val/<class>/*)')
    return args


def main(argv=None):
    """Evaluate the grid, time it, write the CSVs and the plot, print the budget choice; returns the rows."""
    import torch
    from tqdm import tqdm

    import backbones
    from backbones.complexity import complexity
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    model = backbones.create(args.model, pretrained=args.checkpoint).eval()
    widths = args.widths or default_widths(model.width_range)
    rows = evaluate_grid(args, widths, args.resolutions)
    onnx_dir = os.path.join(args.out_dir, 'onnx') if args.onnx else None
    if onnx_dir:
        os.makedirs(onnx_dir, exist_ok=True)
    for r in tqdm(rows, desc='latency', unit='point'):
        r['macs'] = complexity(model, input_size=r['resolution'], width=r['width'])['macs']
        r.update(measure_latency(model, r['width'], r['resolution'], args.batch, args.repeats, onnx_dir))
    front_macs = pareto_front(rows, 'macs')
    front_ms = pareto_front(rows, 'torch_ms_b1')
    for r in rows:
        r['frontier_macs'] = any(r is f for f in front_macs)
        r['frontier_latency'] = any(r is f for f in front_ms)
    n_val = rows[0].get('n')
    header = [f'# checkpoint: {os.path.abspath(args.checkpoint)} ({args.model})',
              f'# evaluation set: {os.path.join(os.path.abspath(args.data_path), "val")} ({n_val} images), '
              f'method {args.method}',
              f'# BN calibration: {args.calib_batches} batches of {args.eval_batch_size} training images from '
              f'{os.path.join(os.path.abspath(args.data_path), "train")} (seed {args.seed}), per point',
              f'# latency: median of {args.repeats} runs, batch 1 and {args.batch}, {torch.get_num_threads()} threads']
    timings = [k for k in rows[0] if k.endswith(('_b1', f'_b{args.batch}'))]
    cols = ['width', 'resolution', 'macs', 'top1', 'top5'] + timings
    cols += ['frontier_macs', 'frontier_latency']
    for name, subset in (('query_table.csv', rows), ('frontier.csv', front_macs)):
        with open(os.path.join(args.out_dir, name), 'w', newline='') as f:
            f.write('\n'.join(header) + '\n')
            w = csv.DictWriter(f, fieldnames=cols, extrasaction='ignore')
            w.writeheader()
            w.writerows(subset)
    plot(rows, front_macs, os.path.join(args.out_dir, 'accuracy_macs.png'),
         f'{args.model}: {os.path.basename(args.checkpoint)}')
    print(f'{len(rows)} points -> {os.path.join(args.out_dir, "query_table.csv")}; MACs frontier: '
          + ', '.join(f'w{r["width"]:g}@{r["resolution"]}' for r in front_macs))
    budget, key = (args.budget_macs, 'macs') if args.budget_macs else (args.budget_ms, 'torch_ms_b1')
    if budget is not None:
        best = best_under_budget(rows, budget, key)
        unit = f'{budget / 1e6:.1f} MMACs' if key == 'macs' else f'{budget:g} ms (batch 1)'
        if best is None:
            print(f'no configuration fits within {unit}')
        else:
            print(f'best within {unit}: width {best["width"]:g} at {best["resolution"]} px, top-1 {best["top1"]:.2f}, '
                  f'{best["macs"] / 1e6:.1f} MMACs, {best["torch_ms_b1"]:.2f} ms (batch 1)')
    return rows


if __name__ == '__main__':
    from backbones.errors import run_main
    run_main(main)
