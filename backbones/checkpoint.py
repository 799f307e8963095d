"""Backbone checkpoints that carry their metadata, written atomically, loaded with a loud key report.

Format (``torch.save``)::

    {'state_dict': {...},            # backbone.state_dict(), classifier head removed
     'meta': {'format': 'dynscale-backbone-v1', 'family': ..., 'variant': ..., 'widths': ...,
              'resolutions': ..., 'channel_divisor': ..., 'input_format': 'RGB',
              'pixel_mean': [...], 'pixel_std': [...],   # on the 0-255 scale
              ...anything the producer adds (epoch, top-1, recipe)}}

Writing, metadata and the key report live here; reading a file of any origin and loading it into a model sit one
layer up, in :mod:`backbones.pretrained` (:func:`~backbones.pretrained.read_checkpoint`,
:func:`~backbones.pretrained.load_backbone_state`, through which every framework adapter loads), which imports
this module and never the reverse.
"""
import io
import os
import tempfile

import torch

FORMAT = 'dynscale-backbone-v1'
_PREFIXES = ('module.', 'backbone.bottom_up.model.', 'backbone.bottom_up.', 'backbone.model.', 'backbone.',
             'model.', 'body.')


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model; the message lists the keys and the fix."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed for lack of space (disk full, quota, file size limit); the message names the
    path, the space needed and free, and says that the previous file at that path is intact."""


def _no_space_error(e, size, path, existed):
    """The :class:`CheckpointWriteError` for an ``OSError`` ``e`` raised while writing ``size`` bytes to ``path``
    (None if ``e`` is not about space)."""
    import errno
    import shutil
    codes = {errno.ENOSPC, errno.EFBIG, getattr(errno, 'EDQUOT', errno.ENOSPC)}
    if getattr(e, 'errno', None) not in codes:
        return None
    d = os.path.dirname(os.path.abspath(path))
    need = size / 2 ** 20
    free = shutil.disk_usage(d).free / 2 ** 20
    if e.errno == errno.EFBIG:
        why = f'a file size limit (ulimit -f) stopped the write of about {need:.1f} MiB'
        fix = 'raise the limit (ulimit -f unlimited)'
    else:
        why = f'the device is full: about {need:.1f} MiB needed, {free:.0f} MiB free in {d}'
        fix = 'free some space or write the run elsewhere (--output-dir / --work-dir / OUTPUT_DIR)'
    kept = 'the previous checkpoint at this path is intact' if existed else 'no partial file was left'
    return CheckpointWriteError(e.errno, f'cannot write checkpoint {path}: {why}; {fix} ({kept})')


def with_digests(obj):
    """``obj`` with per-tensor digests added (:mod:`backbones.integrity`): ``meta['tensor_digests']`` for
    ``{'state_dict', 'meta'}`` checkpoints, a top-level ``'tensor_digests'`` for training states holding
    ``'model'``; anything else unchanged.  The input is not modified."""
    from .integrity import DIGEST_KEY, tensor_digests
    if not isinstance(obj, dict):
        return obj
    if isinstance(obj.get('state_dict'), dict) and isinstance(obj.get('meta', {}), dict):
        return dict(obj, meta=dict(obj.get('meta') or {}, **{DIGEST_KEY: tensor_digests(obj['state_dict'])}))
    if isinstance(obj.get('model'), dict):
        return dict(obj, **{DIGEST_KEY: tensor_digests(obj['model'])})
    return obj


def atomic_save(obj, path):
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``
    (:func:`atomic_write_bytes`).

    A crash mid-write leaves the previous file intact (never a truncated checkpoint).  Checkpoint dicts get
    per-tensor digests (:func:`with_digests`) that every dynscale loader verifies.

    Raises:
        CheckpointWriteError: no space left (disk full, quota, file size limit): names the path, the space needed
            and free; the temporary file is removed and the previous file at ``path`` is unchanged.
    """
    buf = io.BytesIO()  # serialised first: torch's zip writer hides the errno of a failed write
    torch.save(with_digests(obj), buf)
    return atomic_write_bytes(buf.getbuffer(), path)


def atomic_write_bytes(data, path):
    """Write ``data`` (bytes-like) to ``path`` through a temporary file in the same folder, fsync, then
    ``os.replace``; returns ``path``.  Also the writer of the OpenMMLab checkpoints
    (:mod:`plugins.mm.file_backend`).

    Raises:
        CheckpointWriteError: no space left (disk full, quota, file size limit), as :func:`atomic_save`.
        OSError: any other failed write (the temporary file is removed).
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    existed = os.path.exists(path)
    fd, tmp = tempfile.mkstemp(dir=d, prefix='.' + os.path.basename(path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        err = _no_space_error(e, len(memoryview(data)), path, existed) if isinstance(e, OSError) else None
        if err is not None:
            raise err from e
        raise
    return path


def atomic_link(src, path):
    """Make ``path`` a second name of the finished file ``src`` (a hard link, else a copy), atomically; returns
    ``path``.

    For a checkpoint that has the same bytes as one just written (``best.pth`` = ``last.pth`` of the best epoch): no
    second serialisation, no second copy on disk.  Safe with :func:`atomic_save`: it *replaces* ``src`` by a new file
    later, so ``path`` keeps the old bytes.  Falls back to a copy (through :func:`atomic_write_bytes`) where the file
    system has no hard links.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        CheckpointWriteError: the copy fallback ran out of space, as :func:`atomic_write_bytes`.
    """
    path, src = os.fspath(path), os.fspath(src)
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f'.{os.path.basename(path)}.{os.getpid()}.link')
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.link(src, tmp)
    except FileNotFoundError:
        raise
    except OSError:  # no hard links here (another file system, FAT, some network mounts): copy the bytes
        with open(src, 'rb') as f:
            return atomic_write_bytes(f.read(), path)
    os.replace(tmp, path)
    return path


def backbone_meta(model, **extra):
    """Metadata dict describing ``model`` (a :class:`backbones.base.DynamicBackbone`)."""
    meta = {
        'format': FORMAT,
        'family': getattr(model, 'family', None),
        'variant': getattr(model, 'variant', type(model).__name__),
        'widths': list(getattr(model, 'width_range', ()) or ()) or None,
        'width_list': list(getattr(model, 'width_list', ()) or ()) or None,
        'resolutions': list(getattr(model, 'resolutions', ()) or ()) or None,
        'channel_divisor': getattr(model, 'channel_divisor', None),
        'stage_channels': list(model.stage_channels()) if hasattr(model, 'stage_channels') else None,
        'input_format': getattr(model, 'input_format', 'RGB'),
        'pixel_mean': [round(255 * m, 3) for m in getattr(model, 'pixel_mean', (0.485, 0.456, 0.406))],
        'pixel_std': [round(255 * s, 3) for s in getattr(model, 'pixel_std', (0.229, 0.224, 0.225))],
    }
    meta.update(extra)
    return meta


def save_backbone_checkpoint(model, path, drop_head=True, **extra_meta):
    """Write ``{'state_dict', 'meta'}`` for ``model`` atomically; returns ``path``.

    Args:
        drop_head (bool): remove ``head.*`` keys (dense-prediction users build without a head).
    """
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items() if not (drop_head and k.startswith('head.'))}
    return atomic_save({'state_dict': sd, 'meta': backbone_meta(model, **extra_meta)}, path)


def _both_namings(key):
    """``key`` followed by its dynscale backbone name when it carries a framework wrapper prefix."""
    for p in _PREFIXES:
        if key.startswith(p) and p != 'module.':
            return f'{key} (backbone: {key[len(p):]})'
    return key


def state_mismatch(own, sd, expected_missing=()):
    """``(missing, unexpected, shape_mismatched)`` key lists of ``sd`` against the model state ``own``.

    Args:
        own (dict[str, Tensor]): ``model.state_dict()``.
        sd (dict[str, Tensor]): the checkpoint's tensors in the same naming.
        expected_missing (Collection[str]): model keys allowed to be absent (not reported).
    """
    missing = [k for k in own if k not in sd and k not in expected_missing]
    unexpected = [k for k in sd if k not in own]
    shape = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shape


def check_state_fits(model, state_dict, path, fix=None):
    """Raise unless ``state_dict`` fits ``model`` exactly: every key present, none extra, every shape equal.

    The strict default of every test, evaluation and resume path (MMEngine's ``load_from`` and Detectron2's
    checkpointer load what fits and warn; a checkpoint of another model would score random weights).

    Args:
        model (nn.Module): the whole model that will receive the weights (detector, segmentor, classifier).
        state_dict (dict[str, Tensor]): the checkpoint's tensors in the model's naming (``module.`` allowed).
        path (str): the checkpoint, named in the message.
        fix (str | None): the explicit opt-out to name (e.g. ``'--non-strict'``).

    Returns:
        int: the number of tensors that match.

    Raises:
        CheckpointMismatchError: missing, unexpected or shape-mismatched keys, listed in the model's naming and,
            for backbone keys, in the dynscale backbone naming too.
    """
    own = model.state_dict()
    sd = {k[len('module.'):] if k.startswith('module.') and k not in own else k: v for k, v in state_dict.items()}
    missing, unexpected, shape = state_mismatch(own, sd)
    if missing or unexpected or shape:
        def show(keys):
            return '[' + ', '.join(_both_namings(k) for k in keys[:6]) + (', ...' if len(keys) > 6 else '') + ']'
        shapes = ', '.join(f'{_both_namings(k)} file {tuple(sd[k].shape)} model {tuple(own[k].shape)}'
                           for k in shape[:4])
        opt = f'; {fix} loads what fits anyway' if fix else ''
        raise CheckpointMismatchError(
            f'{path} does not fit this {type(model).__name__}: {len(missing)} missing {show(missing)}, '
            f'{len(unexpected)} unexpected {show(unexpected)}, {len(shape)} shape-mismatched [{shapes}]. '
            f'Check that the checkpoint was written for this config (same backbone, widths, resolutions, '
            f'number of classes){opt}')
    return len(own)


def strip_prefix(state_dict, model_keys):
    """Remove the first known wrapper prefix that makes keys match ``model_keys``."""
    model_keys = set(model_keys)
    best, best_hits = state_dict, len(model_keys & set(state_dict))
    for p in _PREFIXES:
        cand = {k[len(p):] if k.startswith(p) else k: v for k, v in state_dict.items()}
        hits = len(model_keys & set(cand))
        if hits > best_hits:
            best, best_hits = cand, hits
    return best


#: functions that moved up into :mod:`backbones.pretrained` (reading files of every origin sits above this module,
#: so that the dependency graph runs one way): importing them from here names their new place
_MOVED = {'read_checkpoint': 'backbones.pretrained.read_checkpoint',
          'load_backbone_state': 'backbones.pretrained.load_backbone_state'}


def __getattr__(name):
    if name in _MOVED:
        raise ImportError(f'backbones.checkpoint.{name} moved to {_MOVED[name]}: import it from backbones.pretrained')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
