"""One registry for every backbone variant (timm style: thin entrypoints, one place to look).

``register_model`` decorates a zero-argument-capable factory ``fn(**kwargs) -> nn.Module``;
``create(name, **kwargs)`` builds it; ``list_models(pattern)`` lists names.
"""
import difflib
import fnmatch

_MODELS = {}
_FAMILY = {}


def register_model(family):
    """Decorator registering a factory under its function name.

    Args:
        family (str): one of ``'elastic'``, ``'slimmable'``, ``'sact'``, ``'rsnet'``, ``'baseline'``.

    Raises:
        ValueError: if the name is already registered (two files defining the same variant).
    """
    def deco(fn):
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f'backbone {name!r} registered twice')
        _MODELS[name] = fn
        _FAMILY[name] = family
        return fn
    return deco


def list_models(pattern='*', family=None):
    """Sorted registered names matching a glob ``pattern`` (and ``family`` if given)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern) and (family is None or _FAMILY[n] == family))


def model_family(name):
    """Family of a registered name. Raises ValueError (with close matches) for unknown names."""
    _check(name)
    return _FAMILY[name]


def _check(name):
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.4)
        hint = f' Did you mean: {", ".join(close)}?' if close else ''
        raise ValueError(f'unknown backbone {name!r}.{hint} Registered: {", ".join(list_models())}')


def create(name, pretrained=None, source=None, **kwargs):
    """Build a registered backbone, optionally with pretrained weights.

    Args:
        name (str): a name from :func:`list_models`.
        pretrained (str | os.PathLike | dict | None): weights to load strictly
            (:func:`backbones.pretrained.load_pretrained`): a dynscale checkpoint, an official release of
            allenai/elastic, slimmable_networks, MutualNet or RS-Nets, or a torchvision / timm state dict.
            The factory then gets the arguments the weights need (width range and list, resolutions, the
            file's ``num_classes``) unless ``kwargs`` set them; ``strict``, ``drop_head`` and
            ``private_bn_map`` are passed to the loader.
        source (str | None): the origin of ``pretrained`` when detection should be bypassed.
        **kwargs: passed to the factory (``num_classes``, ``out_indices``, ``frozen_stages``,
            ``norm_eval``, ``output_stride``, family-specific options).

    Returns:
        nn.Module: a :class:`backbones.base.DynamicBackbone`.

    Raises:
        ValueError: unknown name; the message lists the closest registered names.
        backbones.checkpoint.CheckpointMismatchError: ``pretrained`` does not fit ``name`` (the message names
            the model it fits or the unmatched keys).
    """
    _check(name)
    if pretrained is not None:
        from .pretrained import create_pretrained
        return create_pretrained(name, pretrained, source=source, **kwargs)
    if source is not None:
        raise ValueError('source= only applies together with pretrained=')
    try:
        return _MODELS[name](**kwargs)
    except TypeError as e:
        bad = _unexpected_kwarg(e)
        if bad is None:
            raise
        accepted = _accepted_kwargs(name)
        raise UnknownArgumentError(f'{name} has no argument {bad!r}{_close(bad, accepted)}; its arguments: '
                                   f'{", ".join(accepted)}') from None


class UnknownArgumentError(TypeError, ValueError):
    """A keyword argument the model's factory does not take (a ``TypeError`` as Python raises it, and a
    ``ValueError`` like every other bad build option); the message lists close matches and the accepted ones."""


def _unexpected_kwarg(err):
    import re
    m = re.search(r"unexpected keyword argument '([^']+)'", str(err))
    return m.group(1) if m else None


def _accepted_kwargs(name):
    """Keyword arguments the model class of ``name`` accepts (its ``__init__`` signature)."""
    import inspect

    import torch
    try:
        with torch.device('meta'):  # only the class is needed: allocate nothing
            model = _MODELS[name]()
    except Exception:
        return []
    params = inspect.signature(type(model).__init__).parameters
    return [p for p in params if p not in ('self', 'args', 'kwargs', 'variant')]


def _close(word, names):
    import difflib
    near = difflib.get_close_matches(word, names, n=3, cutoff=0.6)
    return f' (did you mean {", ".join(near)}?)' if near else ''
