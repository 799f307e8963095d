"""The one capability table: which run-time switches each backbone family has.

Every tool and config system asks this table (not its own list) whether an option applies to the chosen
model, and does so before it builds a model or reads a file, so that an option a family does not have is an
error instead of a silently ignored setting that changes nothing (a "width 0.5" evaluation of an Elastic model
that scores the full network).

=================  ======================================================  ===================================
capability         what it switches                                        source
=================  ======================================================  ===================================
``width``          the width multiplier (sub-network of shared weights)    US-Nets (Yu & Huang 2019), Sec. 3
``resolution``     the input resolution a configuration is evaluated at    MutualNet Sec. 3; RS-Nets Sec. 3.1
                   (with its calibrated or private BN statistics)
``private_bn``     one private BN per trained resolution; MRED             RS-Nets (Wang et al. 2020), Sec. 3
``ponder_cost``    per-position halting, the ponder-cost loss weight tau   SACT (Figurnov et al. 2017), eq. 8
                   and ponder-cost maps
``calibration``    post-statistics BN re-estimated per configuration       US-Nets Sec. 3.3
=================  ======================================================  ===================================

Elastic models (ResNeXt, SE-ResNeXt, DenseNet-201, DLA-X) have none: their scale policy is learned inside the
network and needs no switch.  A model outside the dynscale registry (a framework's own ResNet) has none either.
"""
from . import _registry

__all__ = ['CAPABILITIES', 'FAMILY_CAPABILITIES', 'capabilities', 'families_with', 'models_with', 'check_options',
           'OptionNotApplicable']

#: capability -> what it means (used in messages)
CAPABILITIES = {
    'width': 'a width multiplier',
    'resolution': 'a resolution switch (input resolution with its own BN statistics)',
    'private_bn': 'private BN per resolution (RS-Net)',
    'ponder_cost': 'a ponder cost (SACT / ACT halting)',
    'calibration': 'post-statistics BN calibration',
}

#: family (``backbones.model_family``) -> its capabilities
FAMILY_CAPABILITIES = {
    'slimmable': frozenset({'width', 'resolution', 'calibration'}),
    'rsnet': frozenset({'resolution', 'private_bn'}),
    'sact': frozenset({'ponder_cost'}),
    'elastic': frozenset(),
}


class OptionNotApplicable(ValueError):
    """An option was given for a model whose family does not have the capability it switches."""


def _family(model):
    if model is None:
        return None
    if isinstance(model, str):
        return _registry.model_family(model)
    return getattr(model, 'family', None)


def capabilities(model):
    """Capabilities of ``model``.

    Args:
        model (str | nn.Module | None): a registered name (nothing is built), a dynscale backbone (its
            ``family``), or None (a model outside the dynscale registry).

    Returns:
        frozenset[str]: a subset of :data:`CAPABILITIES`.

    Raises:
        ValueError: an unregistered name (with close matches).
    """
    return FAMILY_CAPABILITIES.get(_family(model), frozenset())


def families_with(capability):
    """Families having ``capability`` (sorted list of str).

    Raises:
        KeyError: unknown capability.
    """
    if capability not in CAPABILITIES:
        raise KeyError(f'unknown capability {capability!r}; known: {sorted(CAPABILITIES)}')
    return sorted(f for f, caps in FAMILY_CAPABILITIES.items() if capability in caps)


def models_with(capability):
    """Registered model names whose family has ``capability`` (sorted list of str), for messages that name the
    models an option or a tool applies to.

    Raises:
        KeyError: unknown capability.
    """
    fams = set(families_with(capability))
    return sorted(n for n in _registry.list_models() if _registry.model_family(n) in fams)


def check_options(model, options, where='', label=None):
    """Raise unless every given option applies to ``model``.

    Args:
        model (str | nn.Module | None): as in :func:`capabilities`; ``label`` names it in the message (default:
            the registered name, or "this model").
        options (dict): ``option name as the user wrote it -> capability``; only options the user actually gave
            (set, not at their default) belong here.
        where (str): where the options come from (``'tools/test_seg.py'``, ``'MODEL.DYNSCALE'`` ...).
        label (str | None): how to name the model in the message.

    Returns:
        frozenset[str]: the model's capabilities.

    Raises:
        OptionNotApplicable: the first option whose capability the model lacks; the message names the option, the
            model and its family, and the families (with an example registered name) that have it.
    """
    caps = capabilities(model)
    family = _family(model)
    name = label or (model if isinstance(model, str) else (getattr(model, 'arch', None) or 'this model'))
    for opt, cap in options.items():
        if cap not in CAPABILITIES:
            raise KeyError(f'unknown capability {cap!r}; known: {sorted(CAPABILITIES)}')
        if cap in caps:
            continue
        fams = families_with(cap)
        examples = [f'{f} (e.g. {_registry.list_models(family=f)[0]})' for f in fams if _registry.list_models(family=f)]
        of = f'{family} family' if family else 'not a dynscale backbone'
        src = f' in {where}' if where else ''
        raise OptionNotApplicable(
            f'{opt}{src} does not apply to {name} ({of}): it sets {CAPABILITIES[cap]}, which only the '
            f'{", ".join(examples)} families have; remove {opt}, or choose a model of those families')
    return caps
