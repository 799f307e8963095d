"""The model a pretraining run trains: the registered backbone with the run's options and initial weights."""
from torch import nn

import backbones
from backbones.capabilities import capabilities
from backbones.pretrained import load_backbone_state

from .logs import LOG


def build_model(args, num_classes):
    """``backbones.create(args.model, num_classes=..., **model_kwargs)`` (+ optional initial weights)."""
    kw = dict(args.model_kwargs or {})
    caps = capabilities(args.model)
    if 'width' in caps and args.widths:
        kw.setdefault('width_range', tuple(args.widths))
    if 'private_bn' in caps and args.bn_resolutions:
        kw.setdefault('resolutions', tuple(sorted(args.bn_resolutions, reverse=True)))
    if args.pretrained:
        from .pretrained import pretrained_info
        _, file_classes, _, _ = pretrained_info(args.pretrained, args.pretrained_source)
        if not file_classes and getattr(args, 'evaluate', False):
            raise ValueError(f'--evaluate: {args.pretrained} has no classifier (a backbone checkpoint saved without '
                             f'it), so top-1 would measure random weights; evaluate a file with its trained '
                             f'classifier (tools/pretrain.py\'s backbone.pth or last.pth, an official release) or '
                             f'fine-tune it first (--pretrained FILE --num-classes K)')
        drop = bool(file_classes) and file_classes != num_classes
        model = backbones.create(args.model, pretrained=args.pretrained, source=args.pretrained_source,
                                 num_classes=num_classes, drop_head=drop, **kw)
        LOG.info(f'loaded --pretrained {args.pretrained} ({model.pretrained_meta.get("origin", "dynscale")}): '
                 + ('new classifier for %d classes (the file has %d)' % (num_classes, file_classes) if drop else
                    f'new classifier for {num_classes} classes (the file has none)' if not file_classes else
                    f'classifier of {num_classes} classes kept') + f'; inputs {model.pixel_mean} / {model.pixel_std}')
    else:
        model = backbones.create(args.model, num_classes=num_classes, **kw)
    model.build_kwargs = kw  # recorded in the exported checkpoint's metadata (rebuild the same variant)
    if args.init_checkpoint:
        rep = load_backbone_state(model, args.init_checkpoint, strict=False, logger=LOG)
        LOG.info(f'initialised from {args.init_checkpoint}: {len(rep["missing"])} missing '
                 f'(newly initialised, e.g. {rep["missing"][:4]}), {len(rep["unexpected"])} unexpected keys')
    return model


def check_sync_bn(model):
    """Raise unless ``--sync-bn`` can convert every BN of ``model`` (plain ``nn.BatchNorm2d`` only)."""
    plain = (nn.BatchNorm2d, nn.SyncBatchNorm)
    bad = sorted({type(m).__name__ for m in model.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m) not in plain})
    if bad:
        raise ValueError(f'--sync-bn converts plain nn.BatchNorm2d only; this model uses {bad} (width-sliced or '
                         f'private BN). Run without --sync-bn.')
