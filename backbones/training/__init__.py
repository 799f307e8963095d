"""The dynamic-training core: one policy per method and one BN-calibration module, used by every frontend.

=====================  ==================================================================================
module                 what it holds
=====================  ==================================================================================
``policy``             :class:`Subnet`, :class:`TrainingPolicy` (base, one pass), seed agreement over ranks
``sandwich``           :class:`SandwichPolicy`: US-Nets sandwich rule + inplace distillation, MutualNet sizes
``resolutions``        :class:`ResolutionPolicy`: RS-Nets private BN per resolution, MRED
``ponder``             :class:`PonderPolicy`: SACT / ACT ponder cost
``calibration``        post-statistics BN: :func:`reset_and_average`, :func:`calibrate`, :func:`calibrate_bn`
``calibration_data``   the same calibration batches for any number of processes: :class:`CalibrationSampler`,
                       :class:`SeededSamples`
``distributed``        rank agreement: one seed, rank-averaged BN statistics, :func:`check_ranks_agree`
=====================  ==================================================================================

Frontends (``plugins/mm``, ``plugins/detectron2``, ``tools/pretrain_lib``) build a policy with
:func:`build_policy` and call it; the method maths (sandwich sampling, ``inplace_distillation_loss``,
``mred_loss``, ``ponder_loss``) is driven from here only.  A new method adds a policy class and one
:data:`POLICIES` entry (:func:`register_policy`); the frontends build every policy through :func:`policy_for`.
"""
from .calibration import calibrate, calibrate_bn, head_batchnorms, reset_and_average
from .calibration_data import CalibrationSampler, SeededSamples
from .distributed import agree_seed, average_bn_statistics, check_ranks_agree, digest, world_size
from .policy import StandardPolicy, Subnet, TrainingPolicy, weighted_losses
from .ponder import PonderPolicy, ponder_costs_of
from .resolutions import ResolutionPolicy
from .sandwich import SandwichPolicy

__all__ = ['Subnet', 'TrainingPolicy', 'StandardPolicy', 'SandwichPolicy', 'ResolutionPolicy', 'PonderPolicy',
           'POLICIES', 'build_policy', 'policy_for', 'default_method', 'register_policy', 'capability_of',
           'methods_needing', 'supplied_capabilities', 'agree_seed',
           'weighted_losses', 'ponder_costs_of', 'reset_and_average', 'calibrate', 'calibrate_bn', 'CalibrationSampler',
           'SeededSamples', 'average_bn_statistics', 'head_batchnorms', 'check_ranks_agree', 'digest', 'world_size']

#: method name -> policy class, in the order :func:`policy_for` tries them for a model (``trains``)
POLICIES = {'standard': StandardPolicy, 'usnet': SandwichPolicy, 'mutualnet': SandwichPolicy,
            'rsnet': ResolutionPolicy, 'sact': PonderPolicy}


def register_policy(method, cls):
    """Add a method: ``cls`` (a :class:`TrainingPolicy` subclass) under the name ``method``.

    Every frontend then trains it (``policy=dict(type=method, ...)`` in MMSeg / MMDet configs,
    ``MODEL.DYNSCALE.POLICY.NAME`` in Detectron2, ``--method`` in the pretraining tool) and picks it for the models
    its ``trains`` accepts.

    Raises:
        ValueError: the name is taken, or ``cls`` is not a :class:`TrainingPolicy`.
    """
    if not (isinstance(cls, type) and issubclass(cls, TrainingPolicy)):
        raise ValueError(f'{cls!r} is not a TrainingPolicy subclass')
    if method in POLICIES:
        raise ValueError(f'training method {method!r} is already registered ({POLICIES[method].__name__})')
    POLICIES[method] = cls
    return cls


def default_method(model):
    """The registered method that trains ``model`` by default: the first policy whose ``trains(model)`` is true
    (``'usnet'`` for slimmable, ``'rsnet'``, ``'sact'``), else ``'standard'``.

    ``model`` may also be a registered model name (nothing is built): the first policy whose ``capability`` is one
    of the model's (:func:`backbones.capabilities.capabilities`).  A frontend that has only a name (a weights file's
    metadata, a CLI flag) asks this instead of mapping family names to methods itself.  (By name, a plain
    pre-activation ResNet of the SACT family gets ``'sact'``, its family's capability; built, with ``act='none'``, it
    gets ``'standard'``.)

    Raises:
        ValueError: ``model`` is a name the registry does not know (the message lists the registered ones).
    """
    if isinstance(model, str):
        from ..capabilities import capabilities
        caps = capabilities(model)
        for name, cls in POLICIES.items():
            if cls.capability is not None and cls.capability in caps:
                return name
        return 'standard'
    for name, cls in POLICIES.items():
        if cls.trains(model):
            return name
    return 'standard'


def policy_for(model, method=None, ignore_index=None, **options):
    """The training policy of ``model`` (a framework-free backbone): ``method`` (None: :func:`default_method`;
    a slimmable model with ``input_sizes`` gets ``'mutualnet'``) built by its class's ``from_model`` with
    ``options``.

    Raises:
        ValueError: unknown method (the message lists them), a method that cannot train the model, bad options.
    """
    if method is None:
        method = default_method(model)
        if method == 'usnet' and options.get('input_sizes'):
            method = 'mutualnet'
    if method not in POLICIES:
        raise ValueError(f'unknown training method {method!r}; choose one of {sorted(POLICIES)}')
    return POLICIES[method].from_model(model, method=method, ignore_index=ignore_index, **options)


def capability_of(method):
    """The backbone capability (:data:`backbones.capabilities.CAPABILITIES` key) the training ``method`` needs:
    its policy class's ``capability`` (``'width'`` for the sandwich rule, ``'private_bn'`` for RS-Nets,
    ``'ponder_cost'`` for SACT), None for a method that trains any model.  The frontends check a config's method
    with it instead of a table of their own, so a method added with :func:`register_policy` is checked too.

    Raises:
        ValueError: unknown method (the message lists them).
    """
    if method not in POLICIES:
        raise ValueError(f'unknown training method {method!r}; choose one of {sorted(POLICIES)}')
    return POLICIES[method].capability


def supplied_capabilities(method):
    """Capabilities (:data:`backbones.capabilities.CAPABILITIES` keys) that training ``method`` itself supplies to
    any model it trains, so that options of that capability apply whatever the model's family: ``{'calibration'}``
    for a policy with ``needs_calibration`` (its ``calibration_context`` holds the statistics), else none.  The
    frontends drop such options before :func:`backbones.capabilities.check_options`.  Unknown methods supply none.
    """
    cls = POLICIES.get(method)
    return frozenset({'calibration'}) if cls is not None and cls.needs_calibration else frozenset()


def methods_needing(capability):
    """The registered methods whose policy needs ``capability`` (e.g. ``'width'`` -> ``['mutualnet', 'usnet']``),
    sorted."""
    return sorted(m for m, cls in POLICIES.items() if cls.capability == capability)


def build_policy(method, **options):
    """The policy of ``method`` built with ``options`` (the class's arguments), without a model.

    Raises:
        ValueError: unknown method (the message lists them) or bad options.
    """
    if method not in POLICIES:
        raise ValueError(f'unknown training method {method!r}; choose one of {sorted(POLICIES)}')
    try:
        return POLICIES[method](**options)
    except TypeError as e:
        raise ValueError(f'bad options for the {method} policy ({POLICIES[method].__name__}): {e}') from None
