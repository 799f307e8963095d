"""Reading a weights file of any supported origin into tensors, with the facts a converter needs.

What arrives on disk (``../shared/reference/official_checkpoints/README.md``, "Common to all four repos"):

* torch files in the legacy (torch 0.4/1.0) or the zip serialisation; ``torch.load`` reads both;
* GitHub attachments ``*.pt.zip``: a zip archive *wrapping* a ``.pt`` file (``torch.load`` on the archive
  fails); such an archive is recognised (it has no ``data.pkl`` record of torch's own zip format) and
  its single checkpoint member is read;
* detectron2 ``.pkl`` files (a plain pickle of numpy arrays) and ``.safetensors`` files (timm's hub);
* containers: ``{'state_dict': ...}`` (allenai/elastic, yikaiw/RS-Nets, dynscale, MMEngine),
  ``{'model': ...}`` (slimmable_networks, MutualNet, detectron2, dynscale training checkpoints) or a bare
  state dict.  The other top-level entries (optimizer state, epoch, accuracy, arch name, ...) are returned
  separately in :attr:`SourceFile.container` and never loaded into a model;
* half-precision tensors (allenai/elastic's ``--fp16`` runs): cast to float32 and listed.

Only torch is needed.
"""
import hashlib
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..checkpoint import CheckpointMismatchError
from ..integrity import DIGEST_KEY, check_finite, verify_digests

__all__ = ['CheckpointFileError', 'SourceFile', 'load_file', 'read_checkpoint', 'read_source', 'sha256_of']

#: container entries that hold the weights, in order of preference
STATE_KEYS = ('state_dict', 'model', 'state_dict_ema')


class CheckpointFileError(CheckpointMismatchError):
    """A file that cannot be read as a checkpoint (missing, truncated, not a torch/pickle file, no
    tensors); the message names the path, what the file looks like and the fix."""


@dataclass
class SourceFile:
    """A weights file as read from disk or memory.

    Attributes:
        state_dict (OrderedDict[str, Tensor]): the weights with their original keys (wrapper prefixes
            such as ``module.`` kept), float tensors in float32.
        container (dict): every other top-level entry of the file (``epoch``, ``arch``, ``optimizer``,
            ``meta`` ...), for detection and metadata; never loaded into a model.
        container_keys (tuple[str]): the top-level keys of the file in order (``()`` for a bare state dict).
        state_key (str | None): which top-level entry held the weights.
        path (str | None): the file path (None for an in-memory object).
        sha256 (str | None): SHA-256 of the file's bytes (of the archive as downloaded for a wrapped zip);
            computed on first access (conversions record it; a native dynscale load verifies its per-tensor
            digests instead and does not pay for it).
        wrapped_member (str | None): the member read from a zip-wrapped download.
        cast_keys (list[str]): keys cast from half precision to float32.
        weights_only (bool): whether ``torch.load(weights_only=True)`` sufficed.
    """

    state_dict: 'OrderedDict'
    container: dict = field(default_factory=dict)
    container_keys: tuple = ()
    state_key: str = None
    path: str = None
    sha256_: str = None
    wrapped_member: str = None
    cast_keys: list = field(default_factory=list)
    weights_only: bool = True

    @property
    def sha256(self):
        """SHA-256 of the file's bytes (None for an in-memory object), computed once on first access."""
        if self.sha256_ is None and self.path is not None and os.path.isfile(self.path):
            self.sha256_ = sha256_of(self.path)
        return self.sha256_

    @property
    def meta(self):
        """The ``meta`` dict of a dynscale / MMEngine checkpoint (``{}`` if none)."""
        m = self.container.get('meta')
        return m if isinstance(m, dict) else {}


def sha256_of(path, chunk=1 << 20):
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def _describe_bytes(path):
    """What a file that is not a checkpoint looks like (for error messages)."""
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(64)
    if size == 0:
        return 'an empty file'
    if head.startswith(b'PK'):
        return f'a zip archive of {size} bytes'
    if head[:1] == b'\x80':
        return f'a pickle / legacy torch file of {size} bytes'
    if head.startswith(b'<') or head.lstrip().startswith((b'<!DOCTYPE', b'<html')):
        return f'an HTML/XML page of {size} bytes (a download that returned a web page, e.g. a Google Drive ' \
               f'confirmation page)'
    try:
        text = head.decode('utf-8')
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in '\t\r\n' for c in text):
        return f'a text file of {size} bytes starting with {head[:40]!r}'
    return f'a binary file of {size} bytes that is not a torch checkpoint'


def _torch_load(fileobj_or_path):
    """``torch.load`` on CPU: ``weights_only=True`` first, the full unpickler for files that hold other
    objects (returns ``(obj, weights_only)``)."""
    try:
        return torch.load(fileobj_or_path, map_location='cpu', weights_only=True), True
    except pickle.UnpicklingError:
        if hasattr(fileobj_or_path, 'seek'):
            fileobj_or_path.seek(0)
        return torch.load(fileobj_or_path, map_location='cpu', weights_only=False), False


def load_file(path, remedy=None):
    """The object stored in the checkpoint file ``path`` (on CPU), for every reader of checkpoints (backbone
    loader, ``--resume`` of the tools, converters): a file that is not a checkpoint fails here with one message
    naming the path, what the file looks like (text, web page, empty, truncated, zip archive, folder) and the fix.

    Args:
        path (str | os.PathLike): a torch file (zip or legacy serialisation), a zip archive wrapping one, a
            detectron2 ``.pkl`` or a ``.safetensors`` file.
        remedy (str | None): the fix to name for an unreadable file in this context (default: download or convert
            it again), e.g. "resume from best.pth".

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointFileError: a folder, or a file that cannot be read as a checkpoint.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if os.path.isdir(path):
        raise CheckpointFileError(f'{path} is a folder; pass the checkpoint file inside it')
    return _load_path(path, remedy)[0]


def _load_path(path, remedy=None):
    """Load ``path``; returns ``(obj, wrapped_member, weights_only)``; ``remedy`` replaces the default fix named
    for an unreadable file.

    Raises:
        CheckpointFileError: unreadable (truncated, not a checkpoint, empty wrapper archive).
    """
    wrapped = None
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if not any(n.endswith('data.pkl') for n in names):  # not torch's own zip format: a wrapper
                    members = [n for n in names if n.endswith(('.pt', '.pth', '.tar', '.pkl', '.bin'))
                               and not n.startswith('__MACOSX')]
                    if len(members) != 1:
                        raise CheckpointFileError(
                            f'{path} is a zip archive holding {names[:10]}, not one checkpoint file: unzip it and '
                            f'pass the checkpoint inside')
                    wrapped = members[0]
                    data = zf.read(wrapped)
                    if wrapped.endswith('.pkl') and not zipfile.is_zipfile(io.BytesIO(data)):
                        return _unpickle(io.BytesIO(data)), wrapped, False
                    obj, wo = _torch_load(io.BytesIO(data))
                    return obj, wrapped, wo
        if path.endswith('.pkl'):
            with open(path, 'rb') as f:
                return _unpickle(f), None, False
        if path.endswith('.safetensors'):  # timm / Hugging Face hub files
            try:
                from safetensors.torch import load_file
            except ImportError as e:
                raise CheckpointFileError(f'{path} is a safetensors file: pip install safetensors') from e
            return load_file(path, device='cpu'), None, True
        obj, wo = _torch_load(path)
        return obj, None, wo
    except CheckpointFileError:
        raise
    except Exception as e:  # any failure of the unpickler / archive reader (a text file raises KeyError)
        what = _describe_bytes(path)
        text = str(e).lower()
        if isinstance(e, EOFError) or any(w in text for w in ('end of', 'truncat', 'central directory')):
            hint = ('the file looks truncated (an interrupted download or a disk-full write): '
                    + (remedy or 'download or convert it again'))
        else:
            hint = ('check that it is a checkpoint (.pth/.pth.tar/.pt/.pt.zip/.pkl); '
                    + (remedy or 'download it again if it is damaged'))
        cause = str(e).split('. ')[0].strip().rstrip('.')[:200]  # the reader's first sentence, not its advice
        raise CheckpointFileError(f'cannot read {path} ({what}): {type(e).__name__}: {cause}; {hint}') from e


def _unpickle(f):
    return pickle.load(f, encoding='latin1')


def _as_tensor(v):
    if isinstance(v, torch.Tensor):
        return v
    try:
        import numpy as np
        if isinstance(v, np.ndarray):
            return torch.from_numpy(v.copy())
    except ImportError:  # numpy is a torch dependency; stay safe anyway
        pass
    return None


def read_source(path_or_obj):
    """Read a checkpoint (path or already loaded object) into a :class:`SourceFile`.

    Args:
        path_or_obj (str | os.PathLike | dict): a file path, or the object ``torch.load`` returned.

    Returns:
        SourceFile: weights in float32 with the original keys, the other container entries, provenance.

    Raises:
        FileNotFoundError: the path does not exist.
        CheckpointFileError: the file is not a readable checkpoint, or it holds no tensors.
    """
    path = wrapped = sha = None
    weights_only = True
    obj = path_or_obj
    if isinstance(path_or_obj, (str, os.PathLike)):
        path = os.fspath(path_or_obj)
        if not os.path.exists(path):
            raise FileNotFoundError(f'checkpoint not found: {path}')
        if os.path.isdir(path):
            raise CheckpointFileError(f'{path} is a folder; pass the checkpoint file inside it')
        obj, wrapped, weights_only = _load_path(path)
    if not isinstance(obj, dict):
        raise CheckpointFileError(f'{path or "the object"} holds a {type(obj).__name__}, not a state dict or a '
                                  f'checkpoint dict: save model.state_dict(), not the module')
    state_key, sd = None, None
    for key in STATE_KEYS:
        if isinstance(obj.get(key), dict) and obj[key] and all(_as_tensor(v) is not None for v in obj[key].values()):
            state_key, sd = key, obj[key]
            break
    if sd is None:
        tensors = {k: _as_tensor(v) for k, v in obj.items()}
        if obj and all(t is not None for t in tensors.values()):
            sd = obj
        else:
            raise CheckpointFileError(
                f'{path or "the object"} holds no state dict: top-level keys {list(obj)[:10]}; expected a '
                f'"state_dict" or "model" entry of tensors, or a bare state dict')
    meta = obj.get('meta') if isinstance(obj.get('meta'), dict) else obj.get('dynscale_meta')
    digests = meta.get(DIGEST_KEY) if isinstance(meta, dict) else None
    raw = {k: _as_tensor(v) for k, v in sd.items()}
    if digests:  # written by dynscale: every tensor as written
        verify_digests(raw, digests, path or "the checkpoint")
    else:  # from elsewhere (the authors', torchvision, timm) or an older dynscale file
        check_finite(raw, path or "the checkpoint")
    out, cast = OrderedDict(), []
    for k, v in sd.items():
        t = raw[k]
        if t.is_floating_point() and t.dtype != torch.float32:
            cast.append(k)
            t = t.float()
        out[k] = t
    container = {} if sd is obj else {k: v for k, v in obj.items() if k != state_key}
    for key in ('meta', 'dynscale_meta'):  # verified above: the digests describe this file only, never re-check them
        if isinstance(container.get(key), dict) and DIGEST_KEY in container[key]:
            container[key] = {k: v for k, v in container[key].items() if k != DIGEST_KEY}
    return SourceFile(state_dict=out, container=container, container_keys=tuple(obj) if sd is not obj else (),
                      state_key=state_key, path=path, sha256_=sha, wrapped_member=wrapped, cast_keys=cast,
                      weights_only=weights_only)


def read_checkpoint(path_or_obj):
    """Return ``(state_dict, meta)`` from a path or loaded object (dynscale, mm or d2 layouts).

    Raises:
        FileNotFoundError: the path does not exist.
        CheckpointFileError: the file is not a readable checkpoint (names what it is).
        CheckpointMismatchError: the file holds no state dict.
    """
    obj = path_or_obj
    if isinstance(path_or_obj, (str, os.PathLike)):
        obj = load_file(path_or_obj)
    if not isinstance(obj, dict):
        raise CheckpointMismatchError(f'checkpoint is a {type(obj).__name__}, not a dict with a state_dict')
    meta = obj.get('meta') or {}
    where = os.fspath(path_or_obj) if isinstance(path_or_obj, (str, os.PathLike)) else "the checkpoint"
    for key in ('state_dict', 'model', 'state_dict_ema'):
        if key in obj and isinstance(obj[key], dict):
            sd = obj[key]
            break
    else:
        sd = obj
    if not all(isinstance(v, torch.Tensor) or hasattr(v, 'shape') for v in sd.values()):
        raise CheckpointMismatchError('checkpoint holds no tensor state dict (keys: %s)' % list(obj)[:10])
    sd = {k: torch.as_tensor(v) for k, v in sd.items()}
    if isinstance(meta, dict) and DIGEST_KEY in meta:
        verify_digests(sd, meta[DIGEST_KEY], where)
        meta = {k: v for k, v in meta.items() if k != DIGEST_KEY}  # they describe this file only
    return sd, meta
