"""One registry for every backbone variant (timm style: thin entrypoints, one place to look).

``register_model`` decorates a zero-argument-capable factory ``fn(**kwargs) -> nn.Module``;
``build(name, **kwargs)`` builds it with random weights; ``list_models(pattern)`` lists names.  The public
``backbones.create`` (weights included) sits one layer up, in :mod:`backbones._factory`.
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


def is_builtin(name):
    """Whether ``name`` is registered by this package (its factory is defined under ``backbones``), not by a user's
    module: only those builds defer their random draws (:mod:`backbones.pretrained.deferred_init`)."""
    return _MODELS[name].__module__.split('.')[0] == __name__.split('.')[0]


def list_models(pattern='*', family=None):
    """Sorted registered names matching a glob ``pattern`` (and ``family`` if given)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern) and (family is None or _FAMILY[n] == family))


def model_family(name):
    """Family of a registered name. Raises ValueError (with close matches) for unknown names."""
    _check(name)
    return _FAMILY[name]


def _check(name):
    if not isinstance(name, str):
        raise TypeError(f'a backbone is created by its registered name (a str), got {type(name).__name__} {name!r}; '
                        f'see backbones.list_models()')
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.4)
        hint = f' Did you mean: {", ".join(close)}?' if close else ''
        raise ValueError(f'unknown backbone {name!r}.{hint} Registered: {", ".join(list_models())}')


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_kwargs(kwargs):
    """Types of the arguments every factory shares, checked before anything is built (a string class count or a
    single out_index would otherwise fail deep inside a layer constructor).

    Raises:
        TypeError: ``num_classes`` / ``frozen_stages`` that are not integers; ``out_indices`` that is not a
            sequence of integers.
        ValueError: a negative ``num_classes``.
    """
    if 'num_classes' in kwargs:
        n = kwargs['num_classes']
        if not _is_int(n):
            raise TypeError(f'num_classes is an int (0: no classifier head), got {type(n).__name__} {n!r}'
                            + (f'; pass num_classes={int(n)}' if isinstance(n, str) and n.isdigit() else ''))
        if n < 0:
            raise ValueError(f'num_classes must be >= 0 (0: no classifier head, features only), got {n}')
    if 'out_indices' in kwargs:
        oi = kwargs['out_indices']
        if _is_int(oi):
            raise TypeError(f'out_indices is a sequence of stage indices, got the int {oi}; pass out_indices=({oi},)')
        try:
            ok = all(_is_int(i) for i in oi)
        except TypeError:
            ok = False
        if not ok:
            raise TypeError(f'out_indices is a sequence of stage indices in 0..3 (e.g. (0, 1, 2, 3)), got {oi!r}')
    if 'frozen_stages' in kwargs and not _is_int(kwargs['frozen_stages']):
        raise TypeError(f"frozen_stages is an int in -1..4 (-1: nothing frozen), got "
                        f"{type(kwargs['frozen_stages']).__name__} {kwargs['frozen_stages']!r}")


def build(name, **kwargs):
    """Build a registered backbone with random weights: ``fn(**kwargs)`` of the factory registered as ``name``.
    Weights are loaded one layer up (:func:`backbones.create` with ``pretrained=``, in :mod:`backbones._factory`),
    so the registry imports nothing of the package.

    Args:
        name (str): a name from :func:`list_models`.
        **kwargs: passed to the factory (``num_classes``, ``out_indices``, ``frozen_stages``, ``norm_eval``,
            ``output_stride``, family-specific options).

    Returns:
        nn.Module: a :class:`backbones.base.DynamicBackbone`.

    Raises:
        ValueError: unknown name (the message lists the closest registered names); a negative ``num_classes``.
        TypeError: a name that is not a string; arguments of the wrong type (a string ``num_classes``, an int
            ``out_indices``).
        UnknownArgumentError: a misspelt argument (with close matches).
    """
    _check(name)
    check_kwargs(kwargs)
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
