"""Which origin a weights file has (:func:`identify`): a dynscale checkpoint (also inside an MMEngine / Detectron2
checkpoint of a detector or segmentor), a release of one of the four authors' repositories, or a torchvision /
timm state dict; ``source=`` forces it (:data:`SOURCES`)."""
from ..checkpoint import _PREFIXES, FORMAT, CheckpointMismatchError
from . import origin_dense, origin_elastic, origin_rsnets, origin_slimmable
from .files import SourceFile, read_source

__all__ = ['SOURCES', 'identify']

#: accepted ``source=`` values -> canonical origin
SOURCES = {
    'dynscale': 'dynscale',
    'elastic': 'allenai/elastic', 'allenai/elastic': 'allenai/elastic',
    'usnet': origin_slimmable.US, 'us-nets': origin_slimmable.US, 'slimmable_networks': origin_slimmable.US,
    'JiahuiYu/slimmable_networks': origin_slimmable.US,
    'mutualnet': origin_slimmable.MUTUALNET, 'taoyang1122/MutualNet': origin_slimmable.MUTUALNET,
    'rsnet': origin_rsnets.ORIGIN, 'rs-nets': origin_rsnets.ORIGIN, 'yikaiw/RS-Nets': origin_rsnets.ORIGIN,
    'torchvision': 'torchvision', 'timm': 'timm',
}

#: where a Detectron2 (FPN, C4) or OpenMMLab checkpoint of a whole model keeps the dynscale backbone's weights
_DETECTOR_PREFIXES = ('backbone.bottom_up.net.', 'backbone.net.', 'backbone.bottom_up.model.', 'backbone.model.')


def _is_dynscale(src):
    meta = src.meta
    if meta.get('format') == FORMAT:
        return True
    if src.container.get('version') == 1 and src.state_key == 'model':  # tools/pretrain.py training checkpoint
        return True
    keys = list(src.state_dict)
    return any(k.startswith(('backbone.model.', 'backbone.bottom_up.net.', 'backbone.net.')) for k in keys)


def identify(src, source=None, width_list=None, resolutions=None):
    """Recognise a weights file.

    Args:
        src (SourceFile | str | dict): the file (read with :func:`~backbones.pretrained.files.read_source` if
            a path or an object).
        source (str | None): force the origin (a key of :data:`SOURCES`).
        width_list (list[float] | None): US-Nets / MutualNet: the training width list if not a released one.
        resolutions (tuple[int] | None): RS-Nets: the training sizes if not the released five.

    Returns:
        Release | None: None for a dynscale checkpoint (no conversion needed).

    Raises:
        ValueError: an unknown ``source``.
        UnsupportedCheckpointError: a recognised file without dynscale model.
        CheckpointMismatchError: a file of no known origin (the message lists the origins).
    """
    if not isinstance(src, SourceFile):
        src = read_source(src)
    forced = None
    if source is not None:
        if source not in SOURCES:
            raise ValueError(f'unknown source {source!r}; choose one of {sorted(set(SOURCES))}')
        forced = SOURCES[source]
    if forced == 'dynscale' or (forced is None and _is_dynscale(src)):
        return None
    finders = [
        (origin_rsnets.ORIGIN, lambda: origin_rsnets.identify(src, resolutions)),
        (origin_slimmable.US, lambda: origin_slimmable.identify(src, width_list)),
        (origin_elastic.ORIGIN, lambda: origin_elastic.identify(src)),
        ('dense', lambda: origin_dense.identify(src, forced if forced in ('torchvision', 'timm') else None)),
    ]
    for origin, find in finders:
        if forced is not None and forced not in (origin, 'dynscale') and not (
                origin == origin_slimmable.US and forced == origin_slimmable.MUTUALNET) and not (
                origin == 'dense' and forced in ('torchvision', 'timm')):
            continue
        rel = find()
        if rel is not None:
            if forced == origin_slimmable.MUTUALNET and rel.origin != forced:
                n = len(rel.build_kwargs['width_list'])
                raise CheckpointMismatchError(f'source={source!r} but the file stores {n} widths, a {rel.origin} '
                                              f'layout')
            return rel
    if forced is not None:
        raise CheckpointMismatchError(f'{src.path or "the state dict"} is not a {forced} file of a model dynscale '
                                      f'knows (first keys {list(src.state_dict)[:5]})')
    if any(k.split('.', 1)[0] in ('stem', 'stages', 'head') for k in _strip_all(src.state_dict)):
        return None  # dynscale naming without metadata (a bare model.state_dict())
    raise CheckpointMismatchError(
        f'{src.path or "the state dict"} is not a checkpoint of a known origin (first keys '
        f'{list(src.state_dict)[:5]}): dynscale reads dynscale checkpoints and the released files of '
        f'allenai/elastic, JiahuiYu/slimmable_networks, taoyang1122/MutualNet, yikaiw/RS-Nets, and torchvision / '
        f'timm state dicts of {", ".join(sorted(origin_dense.TARGETS))}; pass source=... if the origin is known')


def _strip_all(sd):
    """Keys without a known wrapper prefix (``module.``, ``backbone.``, ``model.`` ... of checkpoint._PREFIXES)."""
    out = []
    for k in sd:
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        out.append(k)
    return out
