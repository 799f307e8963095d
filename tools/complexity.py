#!/usr/bin/env python
"""Print parameters and MACs of every dynscale variant next to the reference and the papers.

Usage::

    python tools/complexity.py            # markdown table, every row of REFERENCE
    python tools/complexity.py --json out.json
    python tools/complexity.py --model us_mobilenet_v2 --width 0.5 --resolution 160

Counting convention: conv + linear multiply-accumulates via ``torch.utils.flop_counter`` (MACs = FLOPs / 2),
batch 1; parameters are the stored tensors (max width for slimmable models).  "reference" is the count from
the authors' code in ``../shared/reference/official_implementations.md`` (same convention); "paper" is the
figure printed in the paper or the authors' README (FLOPs there often include BN/ReLU/pool ops, see the
reference for each).

DLA-X rows: the authors' count includes the 1x1-conv projections their ``Tree`` builds at depth > 1 nodes and
never uses (``backbones/dla.py``); dynscale does not build them.  :data:`UNUSED_IN_REFERENCE` holds their
parameters and MACs (checked against the manifests in ``tests/test_complexity.py``); a row matches when dynscale's
count plus that share is within 0.5% of the reference.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (label, registered name, build kwargs, width, input size, ref params [M], ref MACs [G], paper figure)
REFERENCE = [
    ('ResNeXt-50 32x4d', 'resnext50_32x4d', {}, None, 224, 25.029, 4.230, '-'),
    ('ResNeXt50+Elastic', 'resnext50_elastic', {}, None, 224, 25.247, 4.177, '25.2M / 4.2B'),
    ('sElastic-ResNeXt50', 'selastic_resnext50', {}, None, 224, 25.029, 3.352, '25.0M / 3.4B'),
    ('SE-ResNeXt50', 'se_resnext50', {}, None, 224, 27.560, 4.233, '-'),
    ('SE-ResNeXt50+Elastic', 'se_resnext50_elastic', {}, None, 224, 27.804, 4.179, '-'),
    ('ResNeXt-101 32x4d', 'resnext101_32x4d', {}, None, 224, 44.178, 7.970, '-'),
    ('ResNeXt101+Elastic', 'resnext101_elastic', {}, None, 224, 44.265, 7.889, '44.3M / 7.9B'),
    ('DenseNet-201', 'densenet201', {}, None, 224, 20.014, 4.291, '20.0M / 4.4B'),
    ('DenseNet201+Elastic', 'densenet201_elastic', {}, None, 224, 19.483, 4.266, '19.5M / 4.3B'),
    ('DLA-X60', 'dla60x', {}, None, 224, 17.650, 3.594, '17.6M / 3.6B'),
    ('DLA-X60+Elastic', 'dla60x_elastic', {}, None, 224, 17.650, 3.110, '17.6M / 3.2B'),
    ('DLA-X102', 'dla102x', {}, None, 224, 26.772, 5.976, '26.8M / 6.0B'),
    # no row in the reference: counted the same way with the authors' classes (DLA([1, 1, 1, 3, 4, 1],
    # block=BottleneckXElastic, residual_root=True); their code has no factory for it)
    ('DLA-X102+sElastic', 'dla102x_selastic', {}, None, 224, 26.772, 4.965, '26.8M / 5.0B'),
    ('DLA-X102+Elastic', 'dla102x_elastic', {}, None, 224, 24.917, 5.946, '24.9M / 6.0B'),
    ('US-MobileNet v1 1.0-224', 'us_mobilenet_v1', {}, 1.0, 224, 4.232, 0.5687, '568 MFLOPs'),
    ('US-MobileNet v1 0.95-224', 'us_mobilenet_v1', {}, 0.95, 224, 4.232, 0.5176, '518'),
    ('US-MobileNet v1 0.9-224', 'us_mobilenet_v1', {}, 0.9, 224, 4.232, 0.4662, '466'),
    ('US-MobileNet v1 0.25-224', 'us_mobilenet_v1', {}, 0.25, 224, 4.232, 0.0410, '41'),
    ('MutualNet MBv1 1.0-192', 'us_mobilenet_v1', {}, 1.0, 192, 4.232, 0.4181, '418'),
    ('MutualNet MBv1 0.25-128', 'us_mobilenet_v1', {}, 0.25, 128, 4.232, 0.0136, '13'),
    ('US-MobileNet v2 1.0-224', 'us_mobilenet_v2', {}, 1.0, 224, 3.505, 0.3008, '300'),
    ('US-MobileNet v2 0.8-224', 'us_mobilenet_v2', {}, 0.8, 224, 3.505, 0.2225, '222'),
    ('US-MobileNet v2 0.35-224', 'us_mobilenet_v2', {}, 0.35, 224, 3.505, 0.0593, '59'),
    ('MutualNet MBv2 0.7-128', 'us_mobilenet_v2', {'width_range': (0.7, 1.0)}, 0.7, 128, 3.505, 0.0576, '57'),
    ('MutualNet ResNet-50 1.0-224', 'us_resnet50', {}, 1.0, 224, 25.557, 4.089, '-'),
    ('MutualNet ResNet-50 0.9-224', 'us_resnet50', {}, 0.9, 224, 25.557, 3.338, '-'),
    ('MutualNet ResNet-50 1.0-128', 'us_resnet50', {}, 1.0, 128, 25.557, 1.337, '-'),
    ('RS-ResNet-18 @224', 'rs_resnet18', {'resolutions': (224,)}, None, 224, 11.690, 1.814, '-'),
    ('RS-ResNet-50 @224', 'rs_resnet50', {'resolutions': (224,)}, None, 224, 25.557, 4.089, '4.14G'),
    ('RS-ResNet-50 @128', 'rs_resnet50', {'resolutions': (128,)}, None, 128, 25.557, 1.337, '1.35G'),
    ('RS-ResNet-50 @64', 'rs_resnet50', {'resolutions': (64,)}, None, 64, 25.557, 0.336, '338M'),
    ('RS-MobileNet v2 @224', 'rs_mobilenet_v2', {'resolutions': (224,)}, None, 224, 3.505, 0.301, '-'),
    ('pre-act ResNet-50 (SACT base)', 'preact_resnet50', {}, None, 224, None, 4.089, '8.18 GFLOPs (2xMAC)'),
    ('pre-act ResNet-101 (SACT base)', 'preact_resnet101', {}, None, 224, None, 7.801, '15.60 GFLOPs (2xMAC)'),
]


#: registered name -> (parameters, MACs at 224) of the DLA projections the reference builds and never uses
UNUSED_IN_REFERENCE = {
    'dla60x': (297_472, 77_070_336),             # level3, level4, level4.tree1: 128->256 at 28^2, 2x 256->512 at 14^2
    'dla60x_elastic': (297_472, 77_070_336),
    'dla102x': (462_848, 128_450_560),           # level3(.tree1): 2x 128->256 at 28^2; level4(.tree1(.tree1)): 3x
    'dla102x_selastic': (462_848, 128_450_560),
    'dla102x_elastic': (339_456, 128_450_560),   # level2(.tree1): 2x 32->128 at 56^2; level3, level4: 2x each
}


def measure(name, kwargs, width, size):
    """Build ``name`` and return ``(params, macs)`` at ``width`` and a ``size`` x ``size`` input."""
    import torch

    import backbones
    torch.manual_seed(0)
    model = backbones.create(name, **kwargs)
    res = backbones.complexity(model, input_size=size, width=width)
    return res['params'], res['macs']


def comparable(name, params, macs):
    """``(params, macs)`` as the reference counts them: dynscale's plus :data:`UNUSED_IN_REFERENCE` (MACs at 224,
    the size of every DLA row)."""
    extra_p, extra_m = UNUSED_IN_REFERENCE.get(name, (0, 0))
    return params + extra_p, macs + extra_m


def rows():
    """Yield one dict per REFERENCE row with measured and reference numbers and relative errors (errors of the
    :func:`comparable` counts)."""
    for label, name, kw, width, size, ref_p, ref_m, paper in REFERENCE:
        p, m = measure(name, kw, width, size)
        cp, cm = comparable(name, p, m)
        yield {'label': label, 'model': name, 'width': width, 'input': size,
               'params_M': p / 1e6, 'ref_params_M': ref_p,
               'params_err_pct': None if ref_p is None else 100 * (cp / 1e6 - ref_p) / ref_p,
               'macs_G': m / 1e9, 'ref_macs_G': ref_m, 'macs_err_pct': 100 * (cm / 1e9 - ref_m) / ref_m,
               'unused_in_reference': UNUSED_IN_REFERENCE.get(name), 'paper': paper}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--json', help='also write the rows to this file')
    ap.add_argument('--model', help='measure one registered model instead of the table')
    ap.add_argument('--width', type=float)
    ap.add_argument('--resolution', type=int, default=224)
    args = ap.parse_args()
    if args.model:
        p, m = measure(args.model, {}, args.width, args.resolution)
        print(f'{args.model} width={args.width} input={args.resolution}: {p / 1e6:.3f}M params, '
              f'{m / 1e9:.4f} GMACs ({2 * m / 1e9:.4f} GFLOPs)')
        return 0
    out = []
    print('| variant | params (M) | ref | MACs (G) | ref | err | paper |')
    print('|---|---|---|---|---|---|---|')
    for r in rows():
        out.append(r)
        refp = '-' if r['ref_params_M'] is None else f"{r['ref_params_M']:.3f}"
        un = r['unused_in_reference']
        note = f' (+{un[0] / 1e6:.3f} unused in ref)' if un else ''
        mnote = f' (+{un[1] / 1e9:.4f} unused in ref)' if un else ''
        print(f"| {r['label']} | {r['params_M']:.3f}{note} | {refp} | {r['macs_G']:.4f}{mnote} | "
              f"{r['ref_macs_G']:.4f} | {r['macs_err_pct']:+.2f}% | {r['paper']} |", flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
