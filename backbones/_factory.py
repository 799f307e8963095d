"""``backbones.create``: the registry's builder plus weights (timm's ``create_model`` in ``_factory.py``, above
its registry and its pretrained loading).

This module sits above both :mod:`backbones._registry` (names -> factories, which imports nothing of the package)
and :mod:`backbones.pretrained` (reading and converting weights, which builds through the registry), so the
dependency graph runs one way: ``_factory -> pretrained -> _registry``.
"""
import os

from . import _registry
from .pretrained import create_pretrained
from .pretrained.deferred_init import build_deferred

__all__ = ['create']


def _check_pretrained(pretrained):
    """``pretrained`` is None, a non-empty path or a state dict.

    Raises:
        TypeError: timm's boolean download switch; anything but a path or a dict (an int names ``num_classes``).
        ValueError: an empty path.
    """
    if isinstance(pretrained, bool):
        raise TypeError(f'pretrained={pretrained} (timm\'s download switch) is not supported: dynscale downloads no '
                        f'weights; pass the path of a converted release (MODEL_ZOO.md lists each file and its convert '
                        f'command) or of a dynscale checkpoint, or None for random initialisation')
    if isinstance(pretrained, (str, os.PathLike)) and not os.fspath(pretrained):
        raise ValueError("pretrained='' is an empty path; pass a checkpoint path, or None for random initialisation")
    if pretrained is not None and not isinstance(pretrained, (str, os.PathLike, dict)):
        hint = f'; did you mean num_classes={pretrained}?' if isinstance(pretrained, int) else ''
        raise TypeError(f'pretrained is a checkpoint path or a state dict, got {type(pretrained).__name__} '
                        f'{pretrained!r}{hint} (the second positional argument of create() is pretrained)')


def create(name, pretrained=None, source=None, **kwargs):
    """Build a registered backbone, optionally with pretrained weights.

    Args:
        name (str): a name from :func:`backbones.list_models`.
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
        ValueError: unknown name; the message lists the closest registered names.  A negative ``num_classes``.
        TypeError: a name that is not a string; arguments of the wrong type (``pretrained`` that is not a path or
            a dict, a string ``num_classes``, an int ``out_indices``).
        UnknownArgumentError: a misspelt argument (with close matches).
        backbones.checkpoint.CheckpointMismatchError: ``pretrained`` does not fit ``name`` (the message names
            the model it fits or the unmatched keys).
    """
    _registry.model_family(name)  # an unknown or misspelt name first, with close matches
    _registry.check_kwargs(kwargs)
    _check_pretrained(pretrained)
    if pretrained is not None:
        return create_pretrained(name, pretrained, source=source, **kwargs)
    if source is not None:
        raise ValueError('source= only applies together with pretrained=')
    model, deferred = build_deferred(name, **kwargs)
    deferred.replay()  # the last initialisation of each tensor, not PyTorch's default draw before it (issue 27)
    return model
