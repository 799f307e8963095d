"""The dynamic-training core: one policy per method and one BN-calibration module, used by every frontend.

=====================  ==================================================================================
module                 what it holds
=====================  ==================================================================================
``policy``             :class:`Subnet`, :class:`TrainingPolicy` (base, one pass), seed agreement over ranks
``sandwich``           :class:`SandwichPolicy`: US-Nets sandwich rule + inplace distillation, MutualNet sizes
``resolutions``        :class:`ResolutionPolicy`: RS-Nets private BN per resolution, MRED
``ponder``             :class:`PonderPolicy`: SACT / ACT ponder cost
``calibration``        post-statistics BN: :func:`reset_and_average`, :func:`calibrate`
``distributed``        rank agreement: one seed, rank-averaged BN statistics, :func:`check_ranks_agree`
=====================  ==================================================================================

Frontends (``plugins/mm``, ``plugins/detectron2``, ``tools/pretrain_lib``) build a policy with
:func:`build_policy` and call it; the method maths (``SandwichRule`` sampling, ``inplace_distillation_loss``,
``mred_loss``, ``ponder_loss``) is driven from here only.  A new method adds a policy class and one
:data:`POLICIES` entry.
"""
from .calibration import calibrate, head_batchnorms, reset_and_average
from .distributed import agree_seed, average_bn_statistics, check_ranks_agree, digest, world_size
from .policy import StandardPolicy, Subnet, TrainingPolicy, weighted_losses
from .ponder import PonderPolicy, ponder_costs_of
from .resolutions import ResolutionPolicy
from .sandwich import SandwichPolicy

__all__ = ['Subnet', 'TrainingPolicy', 'StandardPolicy', 'SandwichPolicy', 'ResolutionPolicy', 'PonderPolicy',
           'POLICIES', 'build_policy', 'agree_seed', 'weighted_losses', 'ponder_costs_of', 'reset_and_average',
           'calibrate', 'average_bn_statistics', 'head_batchnorms', 'check_ranks_agree', 'digest', 'world_size']

#: method name -> policy class
POLICIES = {'standard': StandardPolicy, 'usnet': SandwichPolicy, 'mutualnet': SandwichPolicy,
            'rsnet': ResolutionPolicy, 'sact': PonderPolicy}


def build_policy(method, **options):
    """The policy of ``method`` built with ``options`` (the class's arguments).

    Raises:
        ValueError: unknown method (the message lists them) or bad options.
    """
    if method not in POLICIES:
        raise ValueError(f'unknown training method {method!r}; choose one of {sorted(POLICIES)}')
    try:
        return POLICIES[method](**options)
    except TypeError as e:
        raise ValueError(f'bad options for the {method} policy ({POLICIES[method].__name__}): {e}') from None
