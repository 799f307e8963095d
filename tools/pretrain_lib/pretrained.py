"""``--pretrained FILE``: start from (or evaluate) converted, released or dynscale weights.

The file's origin decides what ``--evaluate`` reproduces (each origin's own test protocol,
``backbones.pretrained.PROTOCOLS``) and which training rule fine-tunes it (MutualNet Sec. 4.2 transfer
learning: the method's own rule over widths and resolutions, a new classifier):

==========================  ==========  ==========================================================================
protocol                    method      evaluation
==========================  ==========  ==========================================================================
``resize256-crop224``       standard    Resize 256 -> CenterCrop 224 (allenai/elastic, torchvision)
                            (sact for SACT models, usnet for slimmable targets of dense weights)
``usnet-stored``            usnet       every stored width with its stored statistics (no calibration)
``mutualnet-recalibrate``   mutualnet   widths x {224, 192, 160, 128}, the 224 crop resized (align_corners=True),
                                        BN recalibrated on 9 training batches per point
``rsnet-multires``          rsnet       Resize s / 0.875 -> CenterCrop s per resolution, unnormalised, private BN
``timm-bicubic-crop0.875``  standard    bicubic Resize int(224 / 0.875) = 256 -> CenterCrop 224 (timm SE-ResNeXt50,
                                        ResNeXt101 32x4d)
``timm-bicubic-crop0.95``   sact /      bicubic Resize int(224 / 0.95) = 235 -> CenterCrop 224, mean = std = 0.5
                            standard    (timm ResNetV2 a1h: the SACT / pre-activation bases)
==========================  ==========  ==========================================================================

Flags given on the command line always win over these defaults.  ImageNet class indices: a 1000-class
model evaluated on a subset whose ``classes.txt`` gives ``imagenet1k_index=<i>`` per class (Imagenette)
has its labels mapped to those indices.
"""
import os
import re

from backbones import training
from backbones.capabilities import capabilities
from backbones.pretrained import PROTOCOL_TRANSFORMS, identify, read_source

__all__ = ['pretrained_info', 'apply_pretrained_defaults', 'imagenet_index_map', 'parse_eval_point']

_METHOD_OF_PROTOCOL = {'usnet-stored': 'usnet', 'mutualnet-recalibrate': 'mutualnet', 'rsnet-multires': 'rsnet'}


def pretrained_info(path, source=None):
    """``(model name, num_classes or None, protocol, meta)`` of a weights file (read once, not converted).

    Raises:
        as :func:`backbones.pretrained.identify` (unreadable, unsupported or unknown files).
    """
    src = read_source(path)
    release = identify(src, source)
    if release is None:  # dynscale checkpoint
        meta = src.meta
        heads = [v for k, v in src.state_dict.items() if re.search(r'(^|\.)head\.\d+\.weight$', k) and v.dim() == 2]
        return (meta.get('variant'), heads[-1].shape[0] if heads else meta.get('num_classes'),
                meta.get('eval_protocol', 'resize256-crop224'), meta)
    meta = dict(release.meta)
    meta.setdefault('origin', release.origin)
    bk = release.build_kwargs
    if bk.get('resolutions'):
        meta.setdefault('resolutions', list(bk['resolutions']))
    if bk.get('width_range'):
        meta.setdefault('widths', list(bk['width_range']))
    return release.models[0], release.num_classes or None, release.protocol, meta


def apply_pretrained_defaults(args, log=print):
    """Fill ``--model``, ``--method`` and the evaluation settings of ``args`` from ``args.pretrained``'s protocol
    (only those not given explicitly).  Returns the file's ``(model, num_classes, protocol, meta)``.

    Raises:
        ValueError: ``--model`` names a model the file does not fit (the message names the one it fits).
    """
    explicit = set(getattr(args, 'explicit_args', []))
    model, file_classes, protocol, meta = pretrained_info(args.pretrained, args.pretrained_source)
    if args.model is None:
        if model is None:
            raise ValueError(f'{args.pretrained} does not say which model it holds: pass --model')
        args.model = model
    caps = capabilities(args.model)
    method = _METHOD_OF_PROTOCOL.get(protocol) or training.default_method(args.model)
    if 'method' not in explicit and args.method != method:
        args.method = method
    if protocol == 'mutualnet-recalibrate':
        if 'input_sizes' not in explicit and not args.input_sizes:
            args.input_sizes = [224, 192, 160, 128]
        if 'calib_batches' not in explicit:
            args.calib_batches = 9  # ComputePostBN: batch_idx 0..8
        # evaluating the release as its authors do (not fine-tuning it): the calibration batches of their
        # ComputePostBN (1024 training images each) and the points the model zoo states accuracy for
        if getattr(args, 'evaluate', False) and 'calib_batch_size' not in explicit:
            args.calib_batch_size = 1024
        points = _zoo_points(meta, args.model)
        if (getattr(args, 'evaluate', False) and points
                and not ({'eval_points', 'eval_widths', 'eval_resolutions', 'input_sizes'} & explicit)):
            args.eval_points = points
        if 'val_resize_mode' not in explicit:
            args.val_resize_mode = 'interpolate'
    if protocol == 'usnet-stored' and 'bn_calibration' not in explicit:
        args.bn_calibration = 'auto'  # stored statistics where the file has them
    if 'width' in caps and 'eval_widths' not in explicit and not args.eval_widths:
        stored = meta.get('width_mult_list') or [c[0] for c in meta.get('stored_bn_configs') or [] if c[1] is None]
        if stored:
            args.eval_widths = sorted(set(float(w) for w in stored), reverse=True)
    if 'width' in caps and 'widths' not in explicit and not args.widths and meta.get('widths'):
        args.widths = [float(w) for w in meta['widths']]
    if 'private_bn' in caps and 'bn_resolutions' not in explicit and meta.get('resolutions'):
        args.bn_resolutions = list(meta['resolutions'])
    if protocol == 'rsnet-multires' and 'val_resize_mode' not in explicit:
        args.val_resize_mode = 'crop'
    tf = PROTOCOL_TRANSFORMS.get(protocol)
    if tf:  # timm: the file's pretrained_cfg interpolation and crop_pct
        if 'interpolation' not in explicit:
            args.interpolation = tf['interpolation']
        if 'val_resize_size' not in explicit:
            args.val_resize_size = int(args.val_crop_size / tf['crop_pct'])
    log(f'--pretrained {args.pretrained}: {meta.get("origin", "dynscale")} weights for {args.model} '
        f'({file_classes or "no"} classes), protocol {protocol}, method {args.method}')
    return model, file_classes, protocol, meta


def _zoo_points(meta, model):
    """The ``(width, resolution)`` points the model-zoo row of a file reports top-1 for (``'w0.75-r160'`` keys of
    :data:`backbones.pretrained.ZOO`), found by a converted file's ``meta['zoo']`` or, for the origin's own file, by
    its origin and ``model``; None when the file is not a zoo row."""
    from backbones.pretrained import ZOO
    entry = ZOO.get(meta.get('zoo')) if meta.get('zoo') else None
    if entry is None:  # the origin's own file: its zoo row is the one of that origin and model
        rows = [e for e in ZOO.values() if e.origin == meta.get('origin') and e.model == model]
        entry = rows[0] if len(rows) == 1 else None
    if entry is None:
        return None
    points = [parse_eval_point(k) for k in entry.top1 if k.startswith('w')]
    return [p for p in points if p[1] is not None] or None


def parse_eval_point(text):
    """``'w0.75-r160'`` -> ``(0.75, 160)`` (the model zoo's point names, ``--eval-points``); ``'w1.0'`` alone:
    ``(1.0, None)``, the val crop size.

    Raises:
        argparse.ArgumentTypeError: another spelling (the message shows the expected one).
    """
    import argparse
    m = re.fullmatch(r'w([0-9]*\.?[0-9]+)(?:-r([0-9]+))?', text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f'{text!r} is not a point: write wWIDTH-rRESOLUTION, e.g. w0.75-r160')
    return float(m.group(1)), int(m.group(2)) if m.group(2) else None


def read_classes_txt(root):
    """``<root>/classes.txt`` (else ``<root>/../classes.txt``) lines ``<k> <wnid> <name> [imagenet1k_index=<i>]``
    (Imagenette) as ``{wnid: (name, ImageNet-1k index or None)}``; ``{}`` when there is no such file."""
    for path in (os.path.join(root, 'classes.txt'), os.path.join(os.path.dirname(root.rstrip('/')), 'classes.txt')):
        if not os.path.isfile(path):
            continue
        out = {}
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[0].isdigit():
                    m = re.search(r'imagenet1k_index=(\d+)', line)
                    out[parts[1]] = (parts[2], int(m.group(1)) if m else None)
        if out:
            return out
    return {}


def imagenet_index_map(root, classes):
    """Folder index -> ImageNet-1k index from :func:`read_classes_txt` (Imagenette), or None when the file is
    missing or does not map every class folder."""
    table = read_classes_txt(root)
    if table and all(table.get(c, (None, None))[1] is not None for c in classes):
        return [table[c][1] for c in classes]
    return None
