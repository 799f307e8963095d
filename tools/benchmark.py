#!/usr/bin/env python
"""Throughput and peak memory of each dynscale family against its dense counterpart, in one run.

Usage::

    python tools/benchmark.py                       # every pair, markdown table with ratios
    python tools/benchmark.py --pairs elastic sact  # a subset
    python tools/benchmark.py --batch 16 --size 224 --iters 5 --threads 2 --json bench.json
    python tools/benchmark.py --repeats 3            # interleaved rounds, best round per model (shared CPUs)

Each measurement runs in a new process of its own, forked from a server that imported torch, torchvision and
``backbones`` once (a row starts in milliseconds, not seconds), so that its peak resident memory (``ru_maxrss``,
MiB) is its own: the model, its activations and the pages of the libraries it touches after the fork (about
250 MiB less than a new interpreter, which counts every page its imports touched; compare ratios within a run).
On CUDA the peak is ``torch.cuda.max_memory_allocated``.  Inference is ``model.eval()`` under
``torch.inference_mode``; a train step is forward + cross-entropy + backward + SGD step.  Throughput is
images per second over ``--iters`` timed iterations after ``--warmup`` untimed ones (median of iterations).

Targets: Elastic-ResNeXt50 / -ResNeXt101, DenseNet-201+Elastic and DLA-X60+Elastic >= 0.95x their dense twin
(torchvision's ResNeXt50, the ResNeXt101 32x4d layout, DenseNet-201, DLA-X60) in inference and in a train step,
with NCHW input and with channels-last, peak memory within 1.15x (issue 20; Elastic adds no multiply-adds); a
slimmable model at width w within 1.15x the time of its ``export_static`` counterpart; SACT inference time
falling with the ponder cost.  Ratios mean something only within one run (shared machines).
"""
import argparse
import functools
import json
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _twins(ref, ref_label, elastic, elastic_label, ref_spec=None):
    """Rows of a dense model and its Elastic twin, with NCHW input and with channels-last."""
    rows = []
    for cl, lay in ((False, 'NCHW'), (True, 'channels-last')):
        rows.append((f'{ref_label}, {lay}', dict(ref_spec or {'name': ref}, channels_last=cl)))
        rows.append((f'{elastic_label}, {lay}', {'name': elastic, 'channels_last': cl}))
    return rows


# pair name -> list of (label, spec); ratios are taken against the first entry of the pair in the same layout
# (NCHW input, or channels-last input and weights: ``channels_last``).  ``cpu_layout: None`` makes a dynscale model
# compute in its input's layout (torchvision's computation; the Elastic families otherwise compute in
# channels-last on CPU whatever they are fed).
PAIRS = {
    'elastic': [('torchvision resnext50_32x4d, channels-last', {'tv': 'resnext50_32x4d', 'channels_last': True}),
                ('Elastic-ResNeXt50, channels-last', {'name': 'resnext50_elastic', 'channels_last': True}),
                ('ResNeXt50 (dynscale, elastic off), channels-last',
                 {'name': 'resnext50_32x4d', 'channels_last': True})],
    'elastic_nchw': [('torchvision resnext50_32x4d, NCHW', {'tv': 'resnext50_32x4d'}),
                     ('Elastic-ResNeXt50, NCHW', {'name': 'resnext50_elastic'})],
    # torchvision has no ResNeXt101 32x4d: dynscale's (Elastic off, computing in the input's layout) is its
    # architecture and computation (tests/test_elastic.py checks the bottleneck against torchvision's)
    'elastic101': _twins('resnext101_32x4d', 'ResNeXt101 32x4d (torchvision layout)', 'resnext101_elastic',
                         'Elastic-ResNeXt101', {'name': 'resnext101_32x4d', 'cpu_layout': None}),
    'densenet': _twins('densenet201', 'DenseNet-201', 'densenet201_elastic', 'DenseNet-201+Elastic'),
    'dla': _twins('dla60x', 'DLA-X60', 'dla60x_elastic', 'DLA-X60+Elastic'),
    'slimmable': [('us_mobilenet_v2 export_static @0.5', {'name': 'us_mobilenet_v2', 'width': 0.5, 'static': True}),
                  ('us_mobilenet_v2 slimmable @0.5', {'name': 'us_mobilenet_v2', 'width': 0.5}),
                  ('us_mobilenet_v2 slimmable @1.0', {'name': 'us_mobilenet_v2', 'width': 1.0}),
                  ('torchvision mobilenet_v2', {'tv': 'mobilenet_v2'})],
    'slimmable_resnet': [('us_resnet50 export_static @0.75', {'name': 'us_resnet50', 'width': 0.75, 'static': True}),
                         ('us_resnet50 slimmable @0.75', {'name': 'us_resnet50', 'width': 0.75}),
                         ('torchvision resnet50', {'tv': 'resnet50'}),
                         ('us_resnet50 slimmable @1.0', {'name': 'us_resnet50', 'width': 1.0})],
    'vgg': [('torchvision vgg16_bn', {'tv': 'vgg16_bn'}),
            ('us_vgg16_bn slimmable @1.0', {'name': 'us_vgg16_bn', 'width': 1.0})],
    'rsnet': [('torchvision resnet50', {'tv': 'resnet50'}),
              ('rs_resnet50 @224 private BN', {'name': 'rs_resnet50', 'resolution': 224})],
    'sact': [('preact_resnet50 (dense)', {'name': 'preact_resnet50'})] +
            [(f'sact_resnet50 halting bias {b:+g}', {'name': 'sact_resnet50', 'halting_bias': b, 'infer_only': True})
             for b in (-3.0, -1.0, -0.5, 0.0, 5.0)],
}


def build(spec, size=224):
    """Build the model a spec describes (``size``: input side, for BN calibration); returns ``(model, info)``."""
    import torch
    torch.manual_seed(0)
    if 'tv' in spec:
        import torchvision
        return getattr(torchvision.models, spec['tv'])(num_classes=1000), {}
    import backbones
    model = backbones.create(spec['name'], num_classes=1000)
    info = {}
    if 'width' in spec:
        from backbones.training import calibrate

        # a width without stored statistics needs post-statistics BN first; random images suffice for timing
        g = torch.Generator().manual_seed(0)
        calibrate(model, [torch.randn(4, 3, size, size, generator=g) for _ in range(2)], width=spec['width'])
        model.set_width(spec['width'])
        if spec.get('static'):
            from backbones.slimmable import export_static
            model.eval()
            model = export_static(model, spec['width'])
    if 'cpu_layout' in spec:
        model.cpu_layout = spec['cpu_layout']
    if 'resolution' in spec:
        model.set_resolution(spec['resolution'])
    if 'halting_bias' in spec:
        from backbones.sact import set_halting_bias
        set_halting_bias(model, spec['halting_bias'])
    return model, info


#: --frameworks: one training iteration of a framework config with Elastic-ResNeXt50 against the same config with
#: the dense ResNeXt50 (dynscale's, computing in channels-last on CPU like every Elastic-family model, and computing
#: in the framework's NCHW as torchvision's ResNeXt does); ratios against the first row of each framework
_SEG_ELASTIC = 'seg_configs/deeplabv3_elastic-resnext50-d16-mg124_1xb8-1k_voc12subset-321x321.py'
_SEG_DENSE = 'seg_configs/deeplabv3_resnext50-d16-mg124_1xb8-1k_voc12subset-321x321.py'
_D2_QUICK = 'det_configs/detectron2/quick_schedules/mask_rcnn_resnext50_elastic_FPN_quick.yaml'
FRAMEWORK_ROWS = [
    ('MMSeg DeepLabV3, ResNeXt50 (dense twin)', {'framework': 'mmseg', 'config': _SEG_DENSE}),
    ('MMSeg DeepLabV3, Elastic-ResNeXt50', {'framework': 'mmseg', 'config': _SEG_ELASTIC}),
    ('MMSeg DeepLabV3, ResNeXt50 computing in NCHW (torchvision)',
     {'framework': 'mmseg', 'config': _SEG_DENSE, 'cpu_layout': None}),
    ('Detectron2 Mask R-CNN FPN, ResNeXt50 (dense twin)',
     {'framework': 'detectron2', 'config': _D2_QUICK, 'name': 'resnext50_32x4d'}),
    ('Detectron2 Mask R-CNN FPN, Elastic-ResNeXt50',
     {'framework': 'detectron2', 'config': _D2_QUICK, 'name': 'resnext50_elastic'}),
    ('Detectron2 Mask R-CNN FPN, ResNeXt50 computing in NCHW (torchvision)',
     {'framework': 'detectron2', 'config': _D2_QUICK, 'name': 'resnext50_32x4d', 'cpu_layout': None}),
]


def _framework_step(spec, batch, size):
    """``(model, step)``: the framework model of ``spec`` and a closure running one training iteration on a fixed
    random batch of ``batch`` images of ``size`` x ``size`` (labels / boxes / masks included)."""
    import torch
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 255, (3, size, size), dtype=torch.uint8, generator=g) for _ in range(batch)]
    if spec['framework'] == 'mmseg':
        from mmengine.config import Config
        from mmengine.optim import OptimWrapper
        from mmengine.registry import init_default_scope
        from mmengine.structures import PixelData
        from mmseg.registry import MODELS
        from mmseg.structures import SegDataSample

        import plugins.mm  # noqa: F401  (registration)
        init_default_scope('mmseg')
        cfg = Config.fromfile(os.path.join(ROOT, spec['config']))
        cfg.model.backbone.norm_cfg = cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
        cfg.model.data_preprocessor.size = (size, size)
        model = MODELS.build(cfg.model)
        samples = []
        for _ in range(batch):
            ds = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 21, (1, size, size), generator=g)))
            ds.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size)))
            samples.append(ds)
        data = dict(inputs=images, data_samples=samples)
        optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
        model.train()
        return model, lambda: model.train_step(data, optim)
    from detectron2.structures import Boxes, Instances, PolygonMasks
    from detectron2.utils.events import EventStorage

    from plugins.detectron2 import DynscaleTrainer, get_dynscale_cfg
    cfg = get_dynscale_cfg(os.path.join(ROOT, spec['config']),
                           ['MODEL.DEVICE', 'cpu', 'MODEL.WEIGHTS', '', 'MODEL.DYNSCALE.NAME', spec['name']])
    model = DynscaleTrainer.build_model(cfg)
    optim = DynscaleTrainer.build_optimizer(cfg, model)
    data = []
    for img in images:
        inst = Instances((size, size))
        boxes = [[8, 8, size // 2, size // 2], [size // 3, size // 4, size - 8, size - 8]]
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.tensor([1, 3])
        inst.gt_masks = PolygonMasks([[torch.tensor([a, b, c, b, c, d, a, d], dtype=torch.float64).numpy()]
                                      for a, b, c, d in boxes])
        data.append({'image': img, 'instances': inst, 'height': size, 'width': size})
    model.train()

    def step():
        with EventStorage(0):
            loss = sum(model(data).values())
        optim.zero_grad()
        loss.backward()
        optim.step()
    return model, step


def run_framework(spec, batch, size, iters, warmup):
    """Time one framework training iteration (median of ``iters`` after ``warmup``); returns a result dict."""
    model, step = _framework_step(spec, batch, size)
    if 'cpu_layout' in spec:
        for m in model.modules():
            if hasattr(m, 'cpu_layout') and hasattr(m, 'stages'):
                m.cpu_layout = spec['cpu_layout']
    times = []
    for i in range(warmup + iters):
        t = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {'spec': spec, 'batch': batch, 'size': size, 'train_img_s': batch / statistics.median(times),
            'peak_mem_MiB': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_one(spec, batch, size, iters, warmup, threads, device):
    """Measure one spec in this process; returns a dict of results."""
    import torch
    torch.set_num_threads(threads)
    if 'framework' in spec:
        return run_framework(spec, batch, size, iters, warmup)
    model, info = build(spec, size)
    model.to(device)
    if spec.get('channels_last'):
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device)
    if spec.get('channels_last'):
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    sync = (lambda: torch.cuda.synchronize()) if device == 'cuda' else (lambda: None)
    out = {'spec': spec, 'batch': batch, 'size': size}

    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            sync()
            t = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t)
    out['infer_img_s'] = batch / statistics.median(times)
    if hasattr(model, 'data_dependent_macs'):
        with torch.no_grad():
            dd = model.data_dependent_macs(x[:min(batch, 4)])
        out['ponder_cost'] = dd.get('ponder_cost')
        out['macs_G'] = dd['macs'] / 1e9
    if not spec.get('infer_only'):
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        times = []
        for i in range(warmup + iters):
            sync()
            t = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t)
        out['train_img_s'] = batch / statistics.median(times)
    if device == 'cuda':
        out['peak_mem_MiB'] = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        out['peak_mem_MiB'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


#: imported once by the process every measurement forks from (what a new interpreter would import for a row)
_PRELOAD = ['torch', 'torchvision', 'backbones']


@functools.lru_cache(maxsize=None)
def _measuring_context():
    """The ``forkserver`` multiprocessing context: each measurement is a new process forked from a server that has
    imported :data:`_PRELOAD` once, so a row starts in milliseconds instead of re-importing torch (seconds) and its
    ``ru_maxrss`` is still its own (the imports included, as in a new interpreter)."""
    import multiprocessing as mp
    ctx = mp.get_context('forkserver')
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _measure_in_child(conn, spec, common):
    try:
        conn.send(run_one(spec, **common))
    except BaseException as e:  # reported as the row's failure, as a crashed subprocess was
        conn.send(f'{type(e).__name__}: {e}')
    finally:
        conn.close()


def _measure(spec, common):
    """Measure one spec in a new process of its own (forked from the preloaded server, see
    :func:`_measuring_context`); returns its result dict, or the error line (str) on failure."""
    ctx = _measuring_context()
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_measure_in_child, args=(send, spec, common), daemon=True)
    p.start()
    send.close()
    try:
        r = recv.recv()
    except EOFError:
        r = None
    p.join()
    if r is None:
        return f'the measuring process ended with exit code {p.exitcode} before reporting'
    return r


def checkpoint_load_cost(name='resnext101_elastic', repeats=5):
    """Load-time cost of verifying per-tensor digests (:mod:`backbones.integrity`), measured in one process.

    A backbone checkpoint of ``name`` is written with :func:`backbones.checkpoint.save_backbone_checkpoint`; each of
    ``repeats`` interleaved rounds times the dynscale loader (:func:`backbones.load_pretrained`: read, digest check,
    strict load) with and without the digest check, the loader as it was before the check existed (it hashed the
    whole file with SHA-256 on every read for provenance; now only conversions of foreign files do), and a bare
    ``torch.load``.  Target (issue 19): loading with the check within 1.10x of loading before it (best round of
    each).

    Returns:
        dict: ``load_s`` (bare ``torch.load``), ``loader_s``, ``loader_unchecked_s``, ``loader_before_s`` (best
        rounds, seconds), ``ratio`` (checked / before), ``ratio_unchecked`` (checked / unchecked), ``verify_s`` (the
        check alone), ``tensors``, ``MiB``.
    """
    import tempfile

    import torch

    import backbones
    from backbones import integrity
    from backbones.checkpoint import save_backbone_checkpoint
    from backbones.pretrained.files import sha256_of
    model = backbones.create(name, num_classes=0)
    verify = integrity.verify_digests
    with tempfile.TemporaryDirectory() as d:
        path = save_backbone_checkpoint(model, os.path.join(d, 'ckpt.pth'))
        times = {'load': [], 'checked': [], 'unchecked': [], 'before': [], 'verify': []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            ck = torch.load(path, map_location='cpu', weights_only=False)
            times['load'].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            n = verify(ck['state_dict'], ck['meta'][integrity.DIGEST_KEY], path)
            times['verify'].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            backbones.load_pretrained(model, path)
            times['checked'].append(time.perf_counter() - t0)
            integrity.verify_digests = lambda *a, **k: 0  # the same loader without the check
            try:
                t0 = time.perf_counter()
                backbones.load_pretrained(model, path)
                times['unchecked'].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                sha256_of(path)
                backbones.load_pretrained(model, path)
                times['before'].append(time.perf_counter() - t0)
            finally:
                integrity.verify_digests = verify
        mib = os.path.getsize(path) / 2 ** 20
    best = {k: min(v) for k, v in times.items()}
    return dict(load_s=best['load'], loader_s=best['checked'], loader_unchecked_s=best['unchecked'],
                loader_before_s=best['before'], verify_s=best['verify'], ratio=best['checked'] / best['before'],
                ratio_unchecked=best['checked'] / best['unchecked'], tensors=n, MiB=mib)


def frameworks_table(common, repeats, json_path=None):
    """Print the ``--frameworks`` table (interleaved rounds, best round per row); returns 0."""
    import importlib.util
    rows = [(label, spec) for label, spec in FRAMEWORK_ROWS
            if importlib.util.find_spec(spec['framework']) is not None]
    for label, spec in FRAMEWORK_ROWS:
        if (label, spec) not in rows:
            print(f"{label}: skipped ({spec['framework']} is not installed)")
    print(f"one training iteration, batch {common['batch']}, {common['size']}x{common['size']}, {common['threads']} "
          f"threads, {common['device']}, median of {common['iters']} after {common['warmup']} warm-up, best of "
          f"{repeats} interleaved round(s)")
    print('| framework | model | train img/s | x dense twin | peak MiB |')
    print('|---|---|---|---|---|')
    best = {}
    for _ in range(repeats):
        for label, spec in rows:
            r = _measure(spec, common)
            if isinstance(r, dict) and isinstance(best.get(label), dict):
                best[label]['train_img_s'] = max(best[label]['train_img_s'], r['train_img_s'])
            elif not isinstance(best.get(label), dict):
                best[label] = r
    refs, results = {}, []
    for label, spec in rows:
        r = best[label]
        if not isinstance(r, dict):
            print(f'| {spec["framework"]} | {label} | failed: {r} |||')
            continue
        ref = refs.setdefault(spec['framework'], r)
        r.update(label=label)
        results.append(r)
        ratio = r['train_img_s'] / ref['train_img_s']
        print(f"| {spec['framework']} | {label} | {r['train_img_s']:.2f} | {ratio:.2f} | "
              f"{r['peak_mem_MiB']:.0f} ({r['peak_mem_MiB'] / ref['peak_mem_MiB']:.2f}x) |", flush=True)
    if json_path:
        with open(json_path, 'w') as f:
            json.dump(results, f, indent=1)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--checkpoint-load', action='store_true',
                    help='only measure the cost of verifying tensor digests when loading a ResNeXt-101 checkpoint')
    ap.add_argument('--pairs', nargs='*', default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--iters', type=int, default=5)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    ap.add_argument('--device', default='cuda' if os.environ.get('CUDA_VISIBLE_DEVICES') else 'cpu')
    ap.add_argument('--repeats', type=int, default=1,
                    help='interleaved rounds over the models of each pair; the best round of each is reported')
    ap.add_argument('--json', help='write all results to this file')
    ap.add_argument('--frameworks', action='store_true',
                    help='only time one training iteration of MMSeg DeepLabV3 and Detectron2 Mask R-CNN with '
                         'Elastic-ResNeXt50 against the same configs with the dense ResNeXt50')
    ap.add_argument('--fw-batch', type=int, default=2, help='--frameworks: images per iteration')
    ap.add_argument('--fw-size', type=int, default=320, help='--frameworks: image side (pixels)')
    args = ap.parse_args()
    if args.frameworks and args.fw_batch < 2:
        ap.error(f'--fw-batch {args.fw_batch}: MMSeg DeepLabV3 trains the BatchNorm of its ASPP image-pooling branch, '
                 f'one value per channel and image, which needs at least 2 images: use --fw-batch 2 or more')
    for flag in ('batch', 'size', 'iters', 'repeats', 'threads', 'fw_size'):
        if getattr(args, flag) < 1:
            ap.error(f'--{flag.replace("_", "-")} {getattr(args, flag)}: must be at least 1')
    common = dict(batch=args.batch, size=args.size, iters=args.iters, warmup=args.warmup, threads=args.threads,
                  device=args.device)
    if args.checkpoint_load:
        r = checkpoint_load_cost(repeats=max(3, args.repeats))
        print(f"resnext101_elastic checkpoint ({r['MiB']:.0f} MiB, {r['tensors']} tensors): torch.load "
              f"{r['load_s'] * 1e3:.0f} ms; digest check alone {r['verify_s'] * 1e3:.0f} ms; dynscale loader "
              f"{r['loader_s'] * 1e3:.0f} ms with the check, {r['loader_unchecked_s'] * 1e3:.0f} ms without "
              f"({r['ratio_unchecked']:.3f}x), {r['loader_before_s'] * 1e3:.0f} ms as before the check (SHA-256 of "
              f"the file on every load): {r['ratio']:.3f}x (target <= 1.10x)")
        return 0
    if args.frameworks:
        return frameworks_table(dict(common, batch=args.fw_batch, size=args.fw_size), args.repeats, args.json)
    results = []
    print(f'batch {args.batch}, {args.size}x{args.size}, {args.threads} threads, {args.device}, '
          f'median of {args.iters} iterations after {args.warmup} warm-up, best of {args.repeats} '
          f'interleaved round(s)')
    print('| pair | model | infer img/s | x ref | train img/s | x ref | peak MiB | extra |')
    print('|---|---|---|---|---|---|---|---|')
    for pair in args.pairs:
        best = {}
        # rounds interleave the models of a pair, so a burst of load from elsewhere hits them alike; the best
        # round of each model is the least disturbed one
        for _ in range(args.repeats):
            for label, spec in PAIRS[pair]:
                r = _measure(spec, common)
                if isinstance(r, str):
                    best.setdefault(label, r)
                    continue
                prev = best.get(label)
                if not isinstance(prev, dict):
                    best[label] = r
                    continue
                for key in ('infer_img_s', 'train_img_s'):
                    if key in r:
                        prev[key] = max(prev[key], r[key])
                prev['peak_mem_MiB'] = max(prev['peak_mem_MiB'], r['peak_mem_MiB'])
        refs = {}
        for label, spec in PAIRS[pair]:
            r = best.get(label)
            if not isinstance(r, dict):
                print(f'| {pair} | {label} | failed: {r} |||||')
                continue
            r.update(pair=pair, label=label)
            results.append(r)
            ref = refs.setdefault(bool(spec.get('channels_last')), r)
            ri = r['infer_img_s'] / ref['infer_img_s']
            tr = f"{r['train_img_s']:.1f}" if 'train_img_s' in r else '-'
            rt = f"{r['train_img_s'] / ref['train_img_s']:.2f}" if 'train_img_s' in r and 'train_img_s' in ref else '-'
            extra = ''
            if r.get('ponder_cost') is not None:
                extra = f"ponder {r['ponder_cost']:.2f}, {r['macs_G']:.2f} GMACs/img"
            print(f"| {pair} | {label} | {r['infer_img_s']:.1f} | {ri:.2f} | {tr} | {rt} | "
                  f"{r['peak_mem_MiB']:.0f} ({r['peak_mem_MiB'] / ref['peak_mem_MiB']:.2f}x) | {extra} |", flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
