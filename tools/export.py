#!/usr/bin/env python
"""Export one configuration of a dynscale backbone as a static network: ONNX or TorchScript.

    python tools/export.py CKPT --model us_mobilenet_v2 --width 0.5 --format onnx [--out net.onnx]
    python tools/export.py CKPT --model rs_resnet50 --resolution 160 --format torchscript
    python tools/export.py CKPT --model resnext50_elastic --format onnx --features --dynamic-batch
    python tools/export.py --random-init --model sact_resnet50 --format onnx          # no weights (testing)

Slimmable networks cannot switch channels inside ONNX / TensorRT (JiahuiYu/slimmable_networks#54): one width
(and, for MutualNet, the BN statistics of one resolution) is cut out with
:func:`backbones.slimmable.export_static`.  RS-Net exports the private BN of one trained resolution; Elastic
(ResNeXt, DenseNet, DLA) exports as is; SACT exports its dense masked computation (every unit runs at every
position and halted positions are masked out: the outputs are exact, the data-dependent skipping that saves
time is lost).  ONNX: the exporter folds every BatchNorm that follows a convolution into it (eval mode; equal up
to float rounding); the others (pre-activation BNs of DenseNet and SACT's ResNet, an Elastic unit's ``bn3`` after
the sum of its branches) stay ``BatchNormalization`` nodes.  TorchScript: the traced module is frozen
(``torch.jit.freeze``: weights become constants and the same conv-BN folding runs); ``--no-freeze`` keeps the
modules, parameters and BN layers (a file whose ``state_dict`` can still be loaded).  The tool prints how many
BatchNorms were folded.

The file takes ``[N, 3, H, W]`` normalised images at the exported resolution (``--resolution`` or 224) and
returns the logits, or with ``--features`` the feature maps of ``out_indices`` (``stage1`` ...) that the
frameworks' deploy tools start from.  After writing, the tool runs the file (ONNX Runtime / ``torch.jit``)
against PyTorch on two random batches and prints ``max |diff|``, the parameter count and the MACs of the
configuration (:func:`backbones.complexity.complexity`).  A difference above ``--tolerance`` x max(1, max |output|)
plus 4 x the float32 rounding error of the PyTorch computation itself (measured against a float64 copy) is an
error: random-weight DenseNets reach outputs of 1e12 in eval mode, and a briefly trained network with tiny BN
variances is off by 2e-4 in float32 PyTorch already, which no exported graph can beat.

Options a family does not have (``--width`` on Elastic, ``--resolution`` on SACT) are refused before the
checkpoint is read (:mod:`backbones.capabilities`).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import backbones  # noqa: E402
from backbones.capabilities import capabilities, check_options  # noqa: E402

FORMATS = ('onnx', 'torchscript')


class ExportWrapper(nn.Module):
    """The traced graph: ``[N, 3, H, W] -> logits [N, num_classes]``, or with ``features`` a tuple of the
    ``forward_stages`` maps in ``out_indices`` order (``[N, C_i, ceil(H/s_i), ceil(W/s_i)]``)."""

    def __init__(self, model, features=False):
        super().__init__()
        self.model, self.features = model, features

    def forward(self, x):
        if self.features:
            return tuple(self.model.forward_stages(x).values())
        return self.model(x)


def parse_args(argv=None):
    """Command-line arguments, checked against the family's capabilities (nothing is read yet).

    Raises:
        SystemExit: usage errors; backbones.capabilities.OptionNotApplicable: an option the family lacks.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('checkpoint', nargs='?', help='dynscale checkpoint or converted / official release file')
    ap.add_argument('--model', required=True, help='registered backbone name (backbones.list_models())')
    ap.add_argument('--random-init', action='store_true', help='no checkpoint: random weights (for testing)')
    ap.add_argument('--width', type=float, help='slimmable: width multiplier to export')
    ap.add_argument('--resolution', type=int,
                    help='RS-Net: trained resolution whose private BN is exported; slimmable: BN statistics of '
                         '(width, resolution); also the default --input-size')
    ap.add_argument('--input-size', type=int, help='side of the exported input (default: --resolution, else 224)')
    ap.add_argument('--format', choices=FORMATS, required=True)
    ap.add_argument('--out', help='output file (default: <model>[_w<width>][_r<res>].onnx / .pt)')
    ap.add_argument('--opset', type=int, default=17, help='ONNX opset')
    ap.add_argument('--dynamic-batch', action='store_true', help='ONNX: the batch dimension is dynamic')
    ap.add_argument('--no-freeze', action='store_true',
                    help='TorchScript: keep modules, parameters and BN layers (default: torch.jit.freeze, which '
                         'folds each BN that follows a convolution into it)')
    ap.add_argument('--features', action='store_true', help='export the feature maps (out_indices) instead')
    ap.add_argument('--out-indices', type=int, nargs='+', default=[0, 1, 2, 3], help='with --features')
    ap.add_argument('--batch', type=int, default=1, help='batch of the example input')
    ap.add_argument('--tolerance', type=float, default=1e-4,
                    help='largest accepted max |diff| against PyTorch, relative to max(1, max |output|)')
    args = ap.parse_args(argv)
    if (args.checkpoint is None) == (not args.random_init):
        ap.error('give a checkpoint, or --random-init for random weights (not both)')
    options = {}
    if args.width is not None:
        options['--width'] = 'width'
    if args.resolution is not None and 'private_bn' in capabilities(args.model):
        options['--resolution'] = 'private_bn'
    check_options(args.model, options, where='tools/export.py')
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        ap.error(f'checkpoint not found: {args.checkpoint}')
    return args


def configure(args):
    """The eval-mode model of one configuration: ``(model, input_size)``.

    Raises:
        ValueError: a width outside the range, a resolution without private BN / statistics (the message names
            the fix), a checkpoint that does not fit, a checkpoint without classifier exported without
            ``--features``.
    """
    kwargs = dict(out_indices=tuple(args.out_indices)) if args.features else {}
    if args.features:
        kwargs['num_classes'] = 0
    model = backbones.create(args.model, pretrained=args.checkpoint, **kwargs)
    if not args.features and model.head is None:
        raise ValueError(f'{args.checkpoint} has no classifier (a backbone checkpoint saved without it): export its '
                         f'stage maps with --features, or export a file with its trained classifier '
                         f'(tools/pretrain.py\'s backbone.pth, an official release)')
    model.eval()
    caps = capabilities(model)
    size = args.input_size or args.resolution or 224
    if 'width' in caps:
        from backbones.slimmable import export_static
        width = args.width if args.width is not None else model.width_range[1]
        model = export_static(model, width, args.resolution)
    elif 'private_bn' in caps:
        res = args.resolution or max(model.resolutions)
        model.set_resolution(res)
        size = args.input_size or res
    elif 'ponder_cost' in caps:
        model.execution = 'dense'  # static graph: every unit everywhere, halted positions masked
    return model.eval(), size


def _default_out(args):
    stem = args.model + (f'_w{args.width:g}' if args.width is not None else '') + \
        (f'_r{args.resolution}' if args.resolution else '') + ('_features' if args.features else '')
    return stem + ('.onnx' if args.format == 'onnx' else '.pt')


def export(wrapper, x, path, fmt, opset=17, dynamic_batch=False, names=('output',), freeze=False):
    """Write ``wrapper`` traced on ``x`` to ``path`` (``fmt`` ``'onnx'`` or ``'torchscript'``); with ``freeze``
    (TorchScript) the traced module is frozen (``torch.jit.freeze``: constants, conv-BN folded)."""
    with torch.no_grad():
        if fmt == 'torchscript':
            traced = torch.jit.trace(wrapper, x, check_trace=False)
            if freeze:
                traced = torch.jit.freeze(traced.eval())
            traced.save(path)
            return
        axes = {n: {0: 'batch'} for n in ('input',) + tuple(names)} if dynamic_batch else None
        torch.onnx.export(wrapper, (x,), path, input_names=['input'], output_names=list(names),
                          opset_version=opset, dynamic_axes=axes, dynamo=False)


def run_exported(path, fmt, x):
    """Outputs of the exported file on ``x`` as a list of tensors."""
    if fmt == 'torchscript':
        with torch.no_grad():
            out = torch.jit.load(path)(x)
        return list(out) if isinstance(out, (tuple, list)) else [out]
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return [torch.from_numpy(o) for o in sess.run(None, {'input': x.numpy()})]


def batchnorms_run(wrapper, x):
    """Number of BatchNorm calls in one forward of ``wrapper`` on ``x`` (an RS-Net runs one private BN per layer,
    a SACT network in dense form every unit's)."""
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in wrapper.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        with torch.no_grad():
            wrapper(x)
    finally:
        for h in hooks:
            h.remove()
    return len(calls)


def count_batchnorms(path, fmt):
    """Number of BatchNorm operations left in an exported file (ONNX ``BatchNormalization`` nodes, TorchScript
    ``aten::batch_norm`` calls of the inlined graph)."""
    if fmt == 'torchscript':
        return sum(1 for n in torch.jit.load(path).inlined_graph.nodes() if n.kind() == 'aten::batch_norm')
    import onnx
    return sum(1 for n in onnx.load(path).graph.node if n.op_type == 'BatchNormalization')


def max_abs_diff(wrapper, path, fmt, x, wrapper64=None):
    """``(max |exported(x) - pytorch(x)|, max |pytorch(x)|, float32 error)`` over every output; the float32 error
    is ``max |pytorch(x) - pytorch_float64(x)|`` when ``wrapper64`` (a float64 copy) is given, else 0."""
    def run(w, inp):
        with torch.no_grad():
            out = w(inp)
        return list(out) if isinstance(out, (tuple, list)) else [out]
    ref = run(wrapper, x)
    got = run_exported(path, fmt, x)
    if len(got) != len(ref):
        raise RuntimeError(f'{path} returns {len(got)} outputs, PyTorch {len(ref)}')
    err32 = 0.0
    if wrapper64 is not None:
        err32 = max(float((a.double() - b).abs().max()) for a, b in zip(ref, run(wrapper64, x.double())))
    return (max(float((a - b).abs().max()) for a, b in zip(got, ref)), max(float(b.abs().max()) for b in ref),
            err32)


def main(argv=None):
    """Export, verify and report; returns the report dict (``path``, ``max_abs_diff``, ``params`` and ``macs`` of
    the configuration, ``batchnorms`` run by PyTorch and ``batchnorms_left`` in the file).

    Raises:
        RuntimeError: the exported file differs from PyTorch by more than ``--tolerance``.
    """
    args = parse_args(argv)
    model, size = configure(args)
    wrapper = ExportWrapper(model, args.features).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, size, size, generator=g)
    path = args.out or _default_out(args)
    names = tuple(f'stage{i + 1}' for i in args.out_indices) if args.features else ('logits',)
    export(wrapper, x, path, args.format, args.opset, args.dynamic_batch, names, freeze=not args.no_freeze)
    checks = [x, torch.randn(args.batch + 1 if args.dynamic_batch or args.format == 'torchscript' else args.batch,
                             3, size, size, generator=g)]
    import copy
    wrapper64 = copy.deepcopy(wrapper).double()
    diffs = [max_abs_diff(wrapper, path, args.format, c, wrapper64) for c in checks]
    diff, scale, err32 = (max(d[i] for d in diffs) for i in range(3))
    from backbones.complexity import complexity
    data_dependent = 'ponder_cost' in capabilities(args.model)  # SACT MACs depend on the image
    c = complexity(model, input_size=size, batch=x[:1] if data_dependent else None)
    n_bn = batchnorms_run(wrapper, x)
    bn_left = count_batchnorms(path, args.format)
    report = dict(path=path, max_abs_diff=diff, max_abs_output=scale, float32_error=err32, params=c['params'],
                  macs=c['macs'], input_size=size, batchnorms=n_bn, batchnorms_left=bn_left)
    print(f'wrote {path} ({args.format}, input [N, 3, {size}, {size}], outputs {", ".join(names)}): '
          f'{c["params"] / 1e6:.3f}M parameters, {c["macs"] / 1e9:.3f} GMACs per image; max |diff| against '
          f'PyTorch {diff:.2e} (outputs up to {scale:.2e}; PyTorch float32 itself is {err32:.2e} from float64) '
          f'on {len(checks)} random batches; {n_bn - bn_left} of {n_bn} BatchNorms folded into convolutions')
    if diff > args.tolerance * max(1.0, scale) + 4 * err32:
        raise RuntimeError(f'{path} differs from PyTorch by {diff:.2e} > --tolerance {args.tolerance:g} x '
                           f'max(1, max |output|) + 4 x the float32 error of PyTorch itself ({err32:.2e})')
    return report


if __name__ == '__main__':
    from backbones.errors import run_main
    run_main(main)
