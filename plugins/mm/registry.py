"""Registration of the dynscale OpenMMLab pieces in MMSegmentation's and MMDetection's registries.

Each piece is registered in the registry of every framework it serves that is installed: backbones and hooks in
both, segmentors / decode heads / segmentation datasets in ``mmseg`` only, detectors / necks / the COCO dataset in
``mmdet`` only.  Names that were renamed stay registered as stubs that raise, naming the new one.
"""
import importlib.util

__all__ = ['installed', 'register_mm_module', 'register_renamed']


def installed(framework):
    """Whether ``framework`` (``'mmseg'`` or ``'mmdet'``) can be imported (found on the path; not imported)."""
    return importlib.util.find_spec(framework) is not None


def register_mm_module(cls=None, registry='MODELS', frameworks=('mmseg', 'mmdet'), name=None):
    """Register ``cls`` in ``<framework>.registry.<registry>`` for each of ``frameworks`` that is installed.

    Usable as ``@register_mm_module``, ``@register_mm_module(registry='HOOKS')`` or
    ``register_mm_module(cls, 'DATASETS', ('mmseg',))``; returns ``cls``.  ``name`` registers it under another
    name than its class name.  A framework that is not installed is skipped (an MMSeg-only user needs no MMDet);
    one that is installed but broken raises (``plugins._compat.check_mm_environment`` has already run when
    ``plugins.mm`` is imported).
    """
    if cls is None:
        return lambda c: register_mm_module(c, registry, frameworks, name)
    for fw in frameworks:
        if not installed(fw):
            continue
        reg = getattr(importlib.import_module(f'{fw}.registry'), registry)
        reg.register_module(name=name, module=cls, force=False)
    return cls


def register_renamed(old, new, base, registry='MODELS', frameworks=('mmseg', 'mmdet'), hint=''):
    """Register ``old`` as a stub whose construction raises ``ValueError`` naming ``new`` (a former config name).

    Args:
        old (str): the former ``type`` name.
        new (str): the name to use now.
        base (type): base class of the stub (the registry checks nothing, but ``mmengine`` builds subclasses
            of ``nn.Module`` / ``Hook`` in their registries).
        registry (str), frameworks (tuple): as :func:`register_mm_module`.
        hint (str): what else changed (appended to the message).

    Returns:
        type: the stub class.
    """
    def __init__(self, *args, **kwargs):
        raise ValueError(f'{old!r} was renamed: use type={new!r}' + (f' ({hint})' if hint else ''))

    stub = type(old, (base,), {'__init__': __init__, '__doc__': f'Former name of ``{new}``: raises, naming it.'})
    return register_mm_module(stub, registry, frameworks)
