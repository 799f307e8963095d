"""Evaluation of the pretraining tool: top-1 / top-5 (and MACs, SACT's ponder statistics) at every evaluation point
of a :class:`~pretrain_lib.methods.Method`, post-statistics BN per point for a policy that needs calibration
(``backbones.training.calibrate``), the final table and the query table by MACs budget.

Split from :mod:`pretrain_lib.methods` (one training step per method there, evaluation here); the engine calls
:func:`evaluate` per epoch and :func:`final_evaluation` at the end.
"""
import copy
import math

import torch

from backbones import training

from . import dist as pdist
from .methods import RSNetMethod, SACTMethod, _correct, resize_to

__all__ = ['evaluate', 'calibration_batches', 'final_evaluation', 'format_table', 'budget_table', 'to_device']


def to_device(images, device, channels_last):
    """``images`` (``[N, 3, H, W]``, or a list of them, one per resolution) on ``device``, channels-last when
    ``channels_last`` (the layout the model was converted to)."""
    mf = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(images, (list, tuple)):
        return [x.to(device, non_blocking=True, memory_format=mf) for x in images]
    return images.to(device, non_blocking=True, memory_format=mf)


@torch.no_grad()
def evaluate(method, model, loader, info, points, autocast, channels_last=False, sact_macs=False, calibrated=False,
             ensemble=None):
    """Top-1/top-5 (%) of ``model`` at every ``(width, resolution)`` of ``points`` in ONE pass over
    ``loader`` (no BN calibration: the caller calibrates first when needed).

    Args:
        ensemble (list[float] | None): one weight per point: also score ``sum_j ensemble[j] * logits_j`` (RS-Nets'
            multi-resolution ensemble, Sec. 3.2), in the same pass.

    Returns:
        list[dict]: per point ``width``, ``resolution``, ``top1``, ``top5``, ``n`` and, for SACT with
        ``sact_macs``, ``macs``/``macs_std``/``ponder_cost`` (data-dependent, per image, over the set); with
        ``ensemble`` a last row ``resolution='ensemble'`` carrying the ``weights``.
    """
    was = model.training
    model.eval()
    scored = len(points) + (ensemble is not None)
    acc = [[0.0, 0.0] for _ in range(scored)]
    n = 0.0
    mstat = [0.0, 0.0, 0.0]  # sum of per-image macs, sum of squares, sum of ponder cost * images
    try:
        for batch in loader:
            if batch is None:
                continue
            images, target = batch
            images = to_device(images, info.device, channels_last)
            target = target.to(info.device, non_blocking=True)
            ens = 0.0
            for j, (w, r) in enumerate(points):
                with method.point_context(model, w, r, calibrated), autocast():
                    logits = method.logits_at(model, images, w, r).float()
                acc[j][0] += _correct(logits, target, 1)
                acc[j][1] += _correct(logits, target, 5)
                if ensemble is not None:
                    ens = ens + ensemble[j] * logits
            if ensemble is not None:
                acc[-1][0] += _correct(ens, target, 1)
                acc[-1][1] += _correct(ens, target, 5)
            if sact_macs:
                b = target.shape[0]
                d = model.data_dependent_macs(images)
                m, s = float(d['macs']), float(d.get('macs_std', 0.0))
                mstat[0] += m * b
                mstat[1] += (s * s + m * m) * b
                pc = d.get('ponder_cost')
                mstat[2] += (float('nan') if pc is None else float(pc)) * b
            n += target.shape[0]
    finally:
        model.train(was)
    flat = [v for a in acc for v in a] + [n] + mstat
    flat = pdist.all_reduce_sum(flat, info)
    n = flat[2 * scored]
    res = []
    if ensemble is not None:
        points = list(points) + [(None, 'ensemble')]
    for j, (w, r) in enumerate(points):
        row = {'width': w, 'resolution': r, 'top1': 100.0 * flat[2 * j] / max(n, 1),
               'top5': 100.0 * flat[2 * j + 1] / max(n, 1), 'n': int(n)}
        if sact_macs and n:
            s0, s1, s2 = flat[-3:]
            mean = s0 / n
            row.update(macs=mean, macs_std=math.sqrt(max(s1 / n - mean * mean, 0.0)), ponder_cost=s2 / n)
        if r == 'ensemble':
            row['weights'] = [round(x, 4) for x in ensemble]
        res.append(row)
    return res


def calibration_batches(loader, num_batches, info, channels_last=False):
    """Iterator over the images of the first ``num_batches`` readable training batches (train augmentation), on
    the device.  A fresh iterator re-reads the same images (the calibration sampler's epoch is fixed and the
    augmentation is a function of (seed, epoch, index)), so nothing is kept in memory between points."""
    seen = 0
    for batch in loader:
        if batch is None:
            continue
        yield to_device(batch[0], info.device, channels_last)
        seen += 1
        if seen >= num_batches:
            break


def final_evaluation(method, model, val_loader, calib_loader, info, autocast, args, log):
    """Full grid evaluation (on a copy of ``model``: calibration must not touch the exported weights).

    A policy with ``needs_calibration`` (slimmable, or any method registered with one): per point,
    ``backbones.training.calibrate`` through the policy on ``args.calib_batches`` training batches (post-statistics
    BN, Yu & Huang 2019 Sec. 3.2; the same crop resized per resolution as in MutualNet's ``ComputePostBN``;
    statistics averaged over ranks), then one val pass; ``args.bn_calibration`` ``'auto'`` / ``'never'`` uses the
    statistics stored for the point instead (US-Nets' released per-width statistics). Others: one val pass for all
    points.

    RS-Net: a last row ``resolution='ensemble'`` when MRED scores exist (:meth:`RSNetMethod.ensemble_weights`):
    the softmax(alpha)-weighted sum of every resolution's logits, MACs summed.

    Returns:
        list[dict]: rows with ``width``, ``resolution``, ``macs``, ``top1``, ``top5`` (+ SACT statistics).
    """
    points = method.eval_points(final=True)
    is_sact = isinstance(method, SACTMethod)
    rows = []
    if method.policy.needs_calibration:
        m = copy.deepcopy(model)
        policy = getattr(args, 'bn_calibration', 'always')
        for (w, r) in points:
            stored = (w, None) in getattr(m, 'bn_configs', ()) and r in (None, args.val_crop_size)
            if policy == 'never' or (policy == 'auto' and stored):
                # the statistics stored with the weights (US-Nets' released per-width post-statistics)
                row = evaluate(method, m, val_loader, info, [(w, r)], autocast, args.channels_last)[0]
                row['calibrated'] = False
            else:
                batches = (resize_to(x, r) for x in calibration_batches(calib_loader, args.calib_batches, info,
                                                                        args.channels_last))
                # statistics averaged over the ranks inside calibrate: every rank evaluates the same network
                training.calibrate(m, batches, backbone=m, width=w, bn_resolution=r, num_batches=args.calib_batches,
                                   policy=method.policy)
                row = evaluate(method, m, val_loader, info, [(w, r)], autocast, args.channels_last, calibrated=True)[0]
                row['calibrated'] = True
            rows.append(row)
            kind = 'calibrated' if row['calibrated'] else 'stored'
            at = f'width {w} @ ' if w is not None else ''
            log(f'  evaluated {at}{r or args.val_crop_size}px ({kind} BN statistics): top-1 {row["top1"]:.2f}')
    else:
        weights = method.ensemble_weights(model) if isinstance(method, RSNetMethod) else None
        rows = evaluate(method, model, val_loader, info, points, autocast, args.channels_last, sact_macs=is_sact,
                        ensemble=weights)
        if weights is not None:
            rows[-1]['macs'] = sum(method.macs(model, w, r) for w, r in points)
            log(f'  multi-resolution ensemble (softmax(alpha) {rows[-1]["weights"]}): top-1 {rows[-1]["top1"]:.2f}')
    for row in rows:
        if 'macs' not in row:
            row['macs'] = method.macs(model, row['width'], row['resolution'])
        if row['resolution'] is None:
            row['resolution'] = args.val_crop_size
    return rows


def format_table(rows, title):
    """Plain-text table of evaluation rows (width, resolution, MMACs, top-1, top-5, SACT extras)."""
    has_w = any(r.get('width') is not None for r in rows)
    has_sact = any('ponder_cost' in r for r in rows)
    head = (['width'] if has_w else []) + ['resolution', 'MMACs'] + (['MMACs std', 'ponder cost'] if has_sact else []) \
        + ['top-1', 'top-5']
    lines = []
    for r in rows:
        cells = ([f'{r["width"]:.3g}'] if has_w else []) + [str(r['resolution']), f'{r["macs"] / 1e6:.1f}']
        if has_sact:
            cells += [f'{r.get("macs_std", float("nan")) / 1e6:.1f}', f'{r.get("ponder_cost", float("nan")):.3f}']
        cells += [f'{r["top1"]:.2f}', f'{r["top5"]:.2f}']
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = '  '.join('{:>%d}' % w for w in widths)
    out = [title, fmt.format(*head), fmt.format(*('-' * w for w in widths))]
    out += [fmt.format(*c) for c in lines]
    return '\n'.join(out)


def budget_table(rows, budgets=None):
    """MutualNet's query "best configuration under a MACs budget" (the query table tool's code:
    :func:`query_table.budget_lines`).

    Args:
        rows: evaluation rows with ``width``, ``resolution``, ``macs``, ``top1``.
        budgets (list[float] | None): budgets in MMACs; default: every point's MACs.

    Returns:
        str: one line per budget with the best (width, resolution), its MACs and top-1.
    """
    from query_table import budget_lines
    bs = [float(b) * 1e6 for b in budgets] if budgets else sorted({r['macs'] for r in rows})
    return '\n'.join(budget_lines(rows, bs))
