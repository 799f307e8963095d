#!/usr/bin/env python
"""Convert a dynscale backbone checkpoint (``backbones/checkpoint.py`` format) to a detectron2 checkpoint.

The detector of ``--config-file`` is built (on CPU) to learn where its backbone lives
(``backbone.bottom_up.net.`` for FPN, ``backbone.net.`` for C4, plus ``roi_heads.res5.`` for the SACT C4
head, which receives block 4 and the final norm), every backbone key is renamed accordingly, and the
result is written as a detectron2 ``.pkl`` (``{"model", "__author__", "matching_heuristics": False}``;
exact names, no suffix guessing) or ``.pth``. The file is then loaded back through detectron2's
``DetectionCheckpointer`` into the freshly built detector, and the tool fails unless **zero** backbone
keys are missing, unexpected or shape-mismatched. Finally it prints the ``MODEL.PIXEL_MEAN``,
``MODEL.PIXEL_STD`` and ``INPUT.FORMAT`` lines that match the checkpoint's metadata.

Usage::

    python tools/convert_to_d2.py \\
        --config-file det_configs/detectron2/mask_rcnn_resnext50_elastic_FPN_1x.yaml \\
        work_dirs/pretrain/resnext50_elastic/backbone.pth resnext50_elastic_d2.pkl

Exit status: 0 on a clean conversion, 1 when backbone keys do not match (the report lists them).
"""

import argparse
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def map_backbone_state(state_dict, model):
    """Rename a backbone state dict onto the keys of a detectron2 detector built from a dynscale config.

    Args:
        state_dict (dict[str, Tensor]): backbone keys (``stem.*``, ``stages.*``, ``norm.*`` ...); wrapper
            prefixes (``module.``, ``backbone.`` ...) are stripped.
        model (nn.Module): the detector (``GeneralizedRCNN``) built from the target config.

    Returns:
        tuple: ``(mapped, report)``; ``mapped`` maps detector keys to tensors; ``report`` has lists
        ``missing`` (backbone keys of the detector not provided), ``unexpected`` (checkpoint keys with no
        place in the detector) and ``shape_mismatch``.
    """
    from backbones.checkpoint import strip_prefix
    from plugins.detectron2 import find_dynscale_backbone

    bb = find_dynscale_backbone(model)
    bb_name = next(n for n, m in model.named_modules() if m is bb)
    target = model.state_dict()
    net_prefix = f'{bb_name}.net.'
    head = dict(model.named_modules()).get('roi_heads.res5')

    def tail(k, prefix):
        return k[len(prefix):] if k.startswith(prefix) else None

    own = {tail(k, net_prefix) for k in target if k.startswith(net_prefix)}
    if head is not None:
        own |= {'stages.3.' + tail(k, 'roi_heads.res5.stage.') for k in target
                if k.startswith('roi_heads.res5.stage.')}
        own |= {tail(k, 'roi_heads.res5.') for k in target if k.startswith('roi_heads.res5.norm.')}
    sd = strip_prefix(dict(state_dict), own)
    sd = {k: v for k, v in sd.items() if not k.startswith('head.')}
    if bb.is_resolution_switchable:
        from backbones.rsnet import expand_private_bn_state_dict

        sd = expand_private_bn_state_dict(sd, bb.net)
    mapped, unexpected = {}, []
    for k, v in sd.items():
        if net_prefix + k in target:
            mapped[net_prefix + k] = v
        elif head is not None and k.startswith('stages.3.') and 'roi_heads.res5.stage.' + k[9:] in target:
            mapped['roi_heads.res5.stage.' + k[9:]] = v
        elif head is not None and k.startswith('norm.') and 'roi_heads.res5.' + k in target:
            mapped['roi_heads.res5.' + k] = v
        elif head is not None and k.startswith('stages.3.units.0.norm1.'):
            continue  # the first res5 unit's pre-activation norm lives in the backbone (already mapped above)
        else:
            unexpected.append(k)
    prefixes = (net_prefix,) + (('roi_heads.res5.',) if head is not None else ())
    missing = [k for k in target if k.startswith(prefixes) and k not in mapped]
    shape_mismatch = [k for k, v in mapped.items() if tuple(v.shape) != tuple(target[k].shape)]
    return mapped, {'missing': missing, 'unexpected': unexpected, 'shape_mismatch': shape_mismatch}


def save_d2(mapped, path, author='dynscale'):
    """Write ``mapped`` as a detectron2 checkpoint (``.pkl``: numpy arrays; else ``torch.save``)."""
    if path.endswith('.pkl'):
        obj = {
            'model': {k: v.detach().cpu().numpy() for k, v in mapped.items()},
            '__author__': author,
            'matching_heuristics': False,
        }
        with open(path, 'wb') as f:
            pickle.dump(obj, f)
    else:
        torch.save({'model': {k: v.detach().cpu() for k, v in mapped.items()}, '__author__': author}, path)
    return path


def verify_load(cfg, path):
    """Load ``path`` with detectron2's ``DetectionCheckpointer`` into a new detector; unmatched backbone keys.

    Returns:
        list[str]: backbone/res5-head keys detectron2 reports missing or shape-mismatched (empty = clean).
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from plugins.detectron2 import find_dynscale_backbone

    model = build_model(cfg)
    bb = find_dynscale_backbone(model)
    prefixes = (next(n for n, m in model.named_modules() if m is bb) + '.net.', 'roi_heads.res5.')
    seen = {}

    class _Probe(DetectionCheckpointer):
        def _load_model(self, checkpoint):
            inc = super()._load_model(checkpoint)
            seen['missing'] = [k for k in inc.missing_keys if k.startswith(prefixes)]
            seen['shape'] = [k for k, *_ in inc.incorrect_shapes if k.startswith(prefixes)]
            seen['unexpected'] = list(inc.unexpected_keys)
            return inc

    _Probe(model).load(path)
    return seen['missing'] + seen['shape'] + seen['unexpected']


def main(argv=None):
    """CLI entry point; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config-file', required=True, help='detectron2 yaml of the target detector')
    p.add_argument('input', help='dynscale backbone checkpoint (.pth from the pretraining tool)')
    p.add_argument('output', help='detectron2 checkpoint to write (.pkl or .pth)')
    p.add_argument(
        '--allow-unmatched', action='store_true', help='write the file even if backbone keys do not match'
    )
    p.add_argument('opts', nargs=argparse.REMAINDER, help='config overrides KEY VALUE ...')
    args = p.parse_args(argv)

    from detectron2.modeling import build_model

    from backbones.checkpoint import read_checkpoint
    from plugins.detectron2 import get_dynscale_cfg

    cfg = get_dynscale_cfg(args.config_file, list(args.opts) + ['MODEL.DEVICE', 'cpu', 'MODEL.WEIGHTS', ''])
    state, meta = read_checkpoint(args.input)
    fam = meta.get('family')
    if fam and not cfg.MODEL.BACKBONE.NAME.startswith(f'build_{fam}_'):
        print(
            f'error: the checkpoint holds a {fam!r} backbone ({meta.get("variant")}) but the config builds '
            f'{cfg.MODEL.BACKBONE.NAME} with MODEL.DYNSCALE.NAME {cfg.MODEL.DYNSCALE.NAME!r}',
            file=sys.stderr,
        )
        return 1
    if meta.get('variant') and meta['variant'] != cfg.MODEL.DYNSCALE.NAME:
        print(
            f'warning: checkpoint variant {meta["variant"]!r} != MODEL.DYNSCALE.NAME '
            f'{cfg.MODEL.DYNSCALE.NAME!r}',
            file=sys.stderr,
        )
    model = build_model(cfg)
    mapped, report = map_backbone_state(state, model)
    n_bad = sum(len(v) for v in report.values())
    print(
        f'mapped {len(mapped)} tensors; missing {len(report["missing"])}, '
        f'unexpected {len(report["unexpected"])}, '
        f'shape-mismatched {len(report["shape_mismatch"])}'
    )
    for kind, keys in report.items():
        for k in keys[:50]:
            print(f'  {kind}: {k}')
    if n_bad and not args.allow_unmatched:
        print(
            'error: the checkpoint does not fit this config (see the keys above); check MODEL.DYNSCALE.NAME, '
            'WIDTH_RANGE / RESOLUTIONS against the checkpoint meta '
            f'{ {k: meta.get(k) for k in ("variant", "widths", "resolutions")} }',
            file=sys.stderr,
        )
        return 1
    save_d2(mapped, args.output)
    bad = verify_load(cfg, args.output)
    print(f'wrote {args.output}; detectron2 DetectionCheckpointer load: {len(bad)} unmatched backbone keys')
    for k in bad[:50]:
        print(f'  unmatched: {k}')
    mean = meta.get('pixel_mean', [123.675, 116.28, 103.53])
    std = meta.get('pixel_std', [58.395, 57.12, 57.375])
    fmt = meta.get('input_format', 'RGB')
    print('\n# put these lines in the yaml that uses this checkpoint:')
    print(
        f'MODEL:\n  WEIGHTS: "{os.path.abspath(args.output)}"\n  PIXEL_MEAN: {list(mean)}\n'
        f'  PIXEL_STD: {list(std)}'
    )
    print(f'INPUT:\n  FORMAT: "{fmt}"')
    return 0 if (not bad or args.allow_unmatched) else 1


if __name__ == '__main__':
    sys.exit(main())
