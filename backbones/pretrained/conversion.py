"""Conversion of a foreign file (a release of the authors, a torchvision / timm state dict) into the state dict of a
dynscale model (:func:`convert`), through a *template* model built on the ``meta`` device."""
import warnings

import torch

from .. import _registry
from ..checkpoint import CheckpointMismatchError, backbone_meta
from . import origin_dense, origin_elastic, origin_rsnets, origin_slimmable
from .deferred_init import build_deferred
from .files import SourceFile, read_source
from .mapping import Transfer
from .origins import identify

__all__ = ['convert']

_HINTS = {'allenai/elastic': origin_elastic.cause_hint, origin_slimmable.US: origin_slimmable.cause_hint,
          origin_slimmable.MUTUALNET: origin_slimmable.cause_hint, origin_rsnets.ORIGIN: origin_rsnets.cause_hint,
          'torchvision': origin_dense.cause_hint, 'timm': origin_dense.cause_hint}


def _template(model_name, num_classes, kwargs):
    """The dynscale model ``model_name`` built on the meta device (shapes and order only)."""
    with torch.device('meta'), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return _registry.build(model_name, num_classes=num_classes, **kwargs)


def convert(src, model_name=None, source=None, template_kwargs=None, width_list=None, resolutions=None):
    """Convert a foreign weights file into a dynscale state dict and checkpoint metadata.

    Args:
        src (SourceFile | str | dict): the file.
        model_name (str | None): dynscale target; default: the first model the file fits.
        source (str | None): force the origin (:data:`SOURCES`).
        template_kwargs (dict | None): factory arguments overriding the release's (e.g. RS-Net
            ``resolutions`` of the model that will receive the weights when they come from a dense file).
        width_list, resolutions: see :func:`identify`.

    Returns:
        tuple: ``(state_dict, meta, release, transfer)``; ``state_dict`` in dynscale naming with the
        classifier, ``meta`` the checkpoint metadata (origin, sha256 of the source, widths/resolutions with
        stored statistics, normalisation, model kwargs), ``transfer`` the record of every move.

    Raises:
        CheckpointMismatchError: the file does not fit ``model_name`` (keys in both namings, likely cause),
            or is a dynscale checkpoint (nothing to convert).
    """
    if not isinstance(src, SourceFile):
        src = read_source(src)
    release = identify(src, source, width_list, resolutions)
    if release is None:
        raise CheckpointMismatchError(f'{src.path or "the state dict"} is already a dynscale checkpoint; load it with '
                                      f'backbones.load_pretrained (nothing to convert)')
    model_name = model_name or release.models[0]
    _registry.model_family(model_name)  # unknown names: ValueError with close matches
    release.check_target(model_name)
    kwargs = release.kwargs_for(model_name)
    kwargs.update(template_kwargs or {})
    template = _template(model_name, release.num_classes, kwargs)
    transfer = Transfer(src.state_dict, {k: v.shape for k, v in template.state_dict().items()},
                        model_name, f'{release.origin} {release.name}')
    release.convert(src, template, transfer, model_name)
    sd = transfer.finish(_HINTS[release.origin](release))
    if transfer.new:  # keep the template's own initialisation for allowed-new tensors: build them for real
        new = {k for k, _ in transfer.new}
        real, deferred = build_deferred(model_name, num_classes=release.num_classes, **kwargs)
        real_sd = real.state_dict(keep_vars=True)
        deferred.replay(v for k, v in real_sd.items() if k not in new)  # draw only the new tensors
        for k in new:
            sd[k] = real_sd[k].detach().clone()
        sd = type(sd)((k, sd[k]) for k in real_sd)
    release.normalization.apply_to(template)
    meta = backbone_meta(template)
    meta.update(release.normalization.to_meta())
    meta.update({k: v for k, v in release.meta.items() if v is not None})
    meta.update({
        'variant': model_name, 'origin': release.origin, 'release': release.name,
        'source_file': None if src.path is None else src.path.replace('\\', '/').rsplit('/', 1)[-1],
        'source_sha256': src.sha256, 'source_container_keys': list(src.container_keys),
        'source_wrapped_member': src.wrapped_member, 'source_cast_fp16': len(src.cast_keys),
        'eval_protocol': release.protocol, 'model_kwargs': _jsonable(kwargs),
        'num_classes': release.num_classes, 'conversion': transfer.summary(),
        'conversion_dropped': [[k, r] for k, r in transfer.dropped],
        'conversion_new': sorted({r for _, r in transfer.new}),
    })
    if 'stored_bn_configs' not in meta and hasattr(template, 'bn_configs'):
        meta['stored_bn_configs'] = [[w, r] for w, r in template.bn_configs]
    return sd, meta, release, transfer


def _jsonable(d):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
