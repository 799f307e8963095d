#!/usr/bin/env python
"""Convert released or dynscale weights into a dynscale checkpoint or a Detectron2 checkpoint.

Accepted inputs (origin detected from the container and the keys, or given with ``--source``): the released
ImageNet files of allenai/elastic, JiahuiYu/slimmable_networks (``*.pt.zip`` as downloaded),
taoyang1122/MutualNet and yikaiw/RS-Nets; torchvision / timm state dicts (``.pth``, ``.safetensors``) of the
architectures in MODEL_ZOO.md; dynscale checkpoints (``tools/pretrain.py`` exports).

Examples::

    # an official release -> dynscale checkpoint (what MMSeg / MMDet configs load through init_cfg)
    python tools/convert_weights.py resnext50_elastic.pth.tar checkpoints/resnext50_elastic_elastic_in1k.pth \\
        --model resnext50_elastic
    # the same (or a dynscale export) -> Detectron2 .pkl for one detector config
    python tools/convert_weights.py resnext50_elastic.pth.tar checkpoints/d2/resnext50_elastic_elastic_in1k_fpn.pkl \\
        --to detectron2 --config-file det_configs/detectron2/mask_rcnn_resnext50_elastic_FPN_1x.yaml
    python tools/convert_weights.py --zoo-markdown > MODEL_ZOO.md

The dynscale output is ``{'state_dict', 'meta'}`` (classifier kept) with the metadata: origin, sha256 of the
source file, widths / resolutions with stored BN statistics, input normalisation, evaluation protocol and
the paper's top-1 of the release.  The Detectron2 output is loaded back with ``DetectionCheckpointer``;
the tool fails unless zero backbone keys are unmatched.  A one-screen summary is printed (tensors mapped,
merged, broadcast, dropped, kept at initialisation).

Exit status: 0 on success, 1 when the weights do not fit (the message lists the keys), 2 on bad arguments.
"""
import argparse
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def get_parser():
    """The argument parser."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('src', nargs='?', help='weights file (.pth, .pth.tar, .pt, .pt.zip, .safetensors, .pkl)')
    p.add_argument('dst', nargs='?', help='output checkpoint (.pth for dynscale; .pkl or .pth for detectron2)')
    p.add_argument('--model', help='dynscale model name (default: the model the file fits; with --to detectron2: '
                                   "the config's MODEL.DYNSCALE.NAME)")
    p.add_argument('--source', help='origin when detection should be bypassed: dynscale, elastic, usnet, mutualnet, '
                                    'rsnet, torchvision, timm')
    p.add_argument('--to', choices=['dynscale', 'detectron2'], default='dynscale')
    p.add_argument('--config-file', help='detectron2 yaml of the target detector (with --to detectron2)')
    p.add_argument('--width-list', type=float, nargs='+', help='US-Nets / MutualNet training width_mult_list when '
                                                               'it is not a released one')
    p.add_argument('--bn-resolutions', type=int, nargs='+',
                   help='RS-Nets: the private-BN resolutions the release was trained at, when not 224 192 160 128 96')
    p.add_argument('--resolutions', type=int, nargs='+', help=argparse.SUPPRESS)  # refused: renamed --bn-resolutions
    p.add_argument('--private-bn-map', type=int, nargs='+',
                   help='RS-Net: per model resolution, the checkpoint resolution whose private BN it starts from')
    p.add_argument('--zoo-markdown', action='store_true', help='print MODEL_ZOO.md and exit')
    p.add_argument('--list-zoo', action='store_true', help='print the zoo rows and their convert commands, exit')
    p.add_argument('--opts', nargs='+', default=[], metavar='KEY VALUE',
                   help='detectron2 config overrides (with --to detectron2), e.g. --opts MODEL.DYNSCALE.WIDTH_RANGE '
                   '"[0.35, 1.0]"')
    return p


def _summary(meta, transfer=None, load_report=None):
    member = meta.get('source_wrapped_member')
    lines = [f'origin: {meta.get("origin", "dynscale")} {meta.get("release") or meta.get("variant", "")}',
             f'  source sha256 {meta.get("source_sha256")}' + (f' (read from zip member {member})' if member else '')]
    conv = meta.get('conversion') or {}
    if conv:
        lines.append('  tensors: ' + ', '.join(f'{k} {v}' for k, v in conv.items()))
    if meta.get('source_cast_fp16'):
        lines.append(f'  {meta["source_cast_fp16"]} half-precision tensors cast to float32')
    for k, why in (meta.get('conversion_dropped') or [])[:5]:
        lines.append(f'  dropped {k}: {why}')
    for why in meta.get('conversion_new') or []:
        lines.append(f'  kept at initialisation: {why}')
    if meta.get('stored_bn_configs'):
        cfgs = meta['stored_bn_configs']
        lines.append(f'  BN statistics stored for {len(cfgs)} (width, resolution) configs: '
                     f'{cfgs[:6]}{" ..." if len(cfgs) > 6 else ""}')
    if meta.get('resolutions'):
        lines.append(f'  private BN resolutions {meta["resolutions"]}')
    if load_report is not None:
        lines.append('  ' + load_report.summary())
    desc = meta.get('input_description')
    lines.append(f'  inputs: {meta.get("input_format", "RGB")} mean {meta.get("pixel_mean")} std '
                 f'{meta.get("pixel_std")} (0-255){": " + desc if desc else ""}')
    lines.append(f'  evaluation protocol: {meta.get("eval_protocol", "resize256-crop224")}'
                 + (f'; paper top-1 {meta["paper_top1"]}' if meta.get('paper_top1') else ''))
    return '\n'.join(lines)


def _zoo_meta(meta):
    """Zoo row of converted weights (unique per dynscale model and origin): paper top-1 and download URL."""
    from backbones.pretrained import ZOO

    rows = [e for e in ZOO.values() if e.model == meta.get('variant') and e.origin == meta.get('origin')]
    if len(rows) != 1:
        return {}
    e = rows[0]
    return {'zoo': e.key, 'paper_top1': e.top1, 'paper_top1_source': e.top1_source, 'download_url': e.url}


def to_dynscale(args):
    """Convert ``args.src`` into a dynscale checkpoint at ``args.dst``; returns the metadata."""
    from backbones.checkpoint import atomic_save
    from backbones.pretrained import convert, identify, read_source

    src = read_source(args.src)
    release = identify(src, args.source, args.width_list, args.bn_resolutions)
    if release is None:  # a dynscale checkpoint: load it strictly into its model and write it back with metadata
        import backbones
        meta = dict(src.meta)
        name = args.model or meta.get('variant')
        if not name:
            raise ValueError('the file is a dynscale state dict without metadata: pass --model NAME')
        model = backbones.create(name, pretrained=src, private_bn_map=args.private_bn_map)
        sd = model.state_dict()
        meta.update({k: v for k, v in model.pretrained_meta.items() if k not in meta})
        meta.setdefault('origin', 'dynscale')
        meta['source_sha256'] = src.sha256
        meta['variant'] = name
    else:
        sd, meta, release, _ = convert(src, args.model, args.source, None, args.width_list, args.bn_resolutions)
        meta.update(_zoo_meta(meta))
    atomic_save({'state_dict': sd, 'meta': meta}, args.dst)
    print(_summary(meta))
    print(f'wrote {args.dst} ({len(sd)} tensors, model {meta["variant"]})')
    return meta


def to_detectron2(args):
    """Convert ``args.src`` for the detector of ``args.config_file``; returns the exit status."""
    from detectron2.modeling import build_model

    from backbones.pretrained import identify, read_source
    from plugins.detectron2 import get_dynscale_cfg
    from plugins.detectron2.checkpoint import convert_for_detector, save_d2, verify_load

    if not args.config_file:
        raise ValueError('--to detectron2 needs --config-file (the detector the checkpoint is for)')
    cfg = get_dynscale_cfg(args.config_file, list(args.opts) + ['MODEL.DEVICE', 'cpu', 'MODEL.WEIGHTS', ''])
    if args.model and args.model != cfg.MODEL.DYNSCALE.NAME:
        raise ValueError(f'--model {args.model} but the config builds MODEL.DYNSCALE.NAME '
                         f'{cfg.MODEL.DYNSCALE.NAME!r}; drop --model or pick the matching config')
    src = read_source(args.src)
    release = identify(src, args.source, args.width_list, args.bn_resolutions)
    if release is not None:
        release.check_target(cfg.MODEL.DYNSCALE.NAME)
    model = build_model(cfg)
    mapped, report, load_report = convert_for_detector(
        src, model, args.source, args.private_bn_map, args.width_list, args.bn_resolutions)
    meta = dict(load_report.meta)
    meta.setdefault('origin', load_report.origin)
    meta['variant'] = cfg.MODEL.DYNSCALE.NAME
    meta['source_sha256'] = src.sha256
    meta.update(load_report.normalization.to_meta())
    meta['detectron2_config'] = os.path.relpath(args.config_file)
    meta.update(_zoo_meta(meta))
    print(_summary(meta, load_report=load_report))
    n_bad = sum(len(v) for v in report.values())
    print(f'mapped {len(mapped)} tensors; missing {len(report["missing"])}, unexpected {len(report["unexpected"])}, '
          f'shape-mismatched {len(report["shape_mismatch"])}')
    for kind, keys in report.items():
        for k in keys[:20]:
            print(f'  {kind}: {k}')
    if n_bad:
        print('error: the weights do not fit this config (keys above)', file=sys.stderr)
        return 1
    save_d2(mapped, args.dst, meta)
    bad = verify_load(cfg, args.dst)
    print(f'wrote {args.dst}; detectron2 DetectionCheckpointer load: {len(bad)} unmatched backbone keys')
    for k in bad[:20]:
        print(f'  unmatched: {k}')
    norm = load_report.normalization
    print('\n# the lines the yaml that uses this checkpoint needs:')
    print(f'MODEL:\n  WEIGHTS: "{args.dst}"\n  PIXEL_MEAN: {list(norm.mean)}\n  PIXEL_STD: {list(norm.std)}')
    print(f'INPUT:\n  FORMAT: "{norm.channel_order}"')
    return 0 if not bad else 1


def zoo_markdown():
    """MODEL_ZOO.md text (see tools/model_zoo.py for how the table is built)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from model_zoo import render

    return render()


def main(argv=None):
    """CLI entry point; returns the exit status."""
    args = get_parser().parse_args(argv)
    from backbones.checkpoint import CheckpointMismatchError

    if args.zoo_markdown:
        sys.stdout.write(zoo_markdown())
        return 0
    if args.list_zoo:
        from backbones.pretrained import ZOO, convert_command
        for e in ZOO.values():
            print(f'{e.key:45s} {e.origin:30s} {convert_command(e)}')
        return 0
    if not args.src or not args.dst:
        get_parser().print_usage(sys.stderr)
        print('convert_weights.py: error: SRC and DST are required', file=sys.stderr)
        return 2
    if args.resolutions:
        print('convert_weights.py: error: --resolutions is now --bn-resolutions (RS-Net\'s private-BN resolutions, '
              'the word of tools/pretrain.py and the configs)', file=sys.stderr)
        return 2
    args.bn_resolutions = tuple(args.bn_resolutions) if args.bn_resolutions else None
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        print('convert_weights.py: error: DST must differ from SRC', file=sys.stderr)
        return 2
    try:
        if args.to == 'detectron2':
            return to_detectron2(args)
        to_dynscale(args)
        return 0
    except FileNotFoundError as e:
        print(f'convert_weights.py: error: {e}', file=sys.stderr)
        return 2
    except CheckpointMismatchError as e:
        print(f'convert_weights.py: error: {e}', file=sys.stderr)
        return 1
    except ValueError as e:
        print(f'convert_weights.py: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
