"""What one training step runs, per method: the sub-networks, their context, their losses.

A :class:`TrainingPolicy` is framework-free.  For a step index it returns the :class:`Subnet` s to run; for
each, :meth:`TrainingPolicy.context` switches the backbone (width, private BN), the frontend resizes its batch
to ``Subnet.input_size`` (its own size measure: the crop side in classification and segmentation, the shorter
side in detection), forwards its model and hands the task losses and logits back to
:meth:`TrainingPolicy.subnet_losses`, which weights them and adds inplace distillation; methods with a loss
over all sub-networks (MRED) provide :meth:`combine`; :meth:`extra_losses` adds per-forward terms (the SACT
ponder cost).  A frontend keeps only what is specific to its framework: how to resize its batch and targets,
how to call its model, how to log.

Random choices (sandwich widths and input sizes, RS-Net random buckets) are a pure function of
``(seed, step)`` (:meth:`TrainingPolicy.rng`), so every DDP rank draws the same sub-networks at the same step
and a resumed run draws what the uninterrupted run would have drawn.  The seed is agreed over ranks once
(:func:`agree_seed`).
"""
import contextlib
import random
from dataclasses import dataclass

from .distributed import agree_seed, check_ranks_agree

__all__ = ['Subnet', 'TrainingPolicy', 'StandardPolicy', 'weighted_losses']


@dataclass(frozen=True)
class Subnet:
    """One sub-network of a training step.

    Attributes:
        tag (str): name used to prefix its logged losses (``'max'``, ``'min'``, ``'rand1'``, ``'r160'``; ``''``
            for the only sub-network of single-pass methods).
        width (float | None): width multiplier (slimmable backbones); None keeps the backbone's.
        bn_resolution (int | None): resolution whose private BN (RS-Net) is selected; None lets the backbone
            decide.
        input_size (int | None): size of the input in the frontend's measure (crop side, or shorter side in
            detection), pixels; None: the batch as loaded.
        teacher (bool): its detached logits are the inplace-distillation target of the later sub-networks.
        gt_weight (float): weight of the ground-truth (task) losses.
        distill_weight (float): weight of the inplace distillation loss (``KL(teacher || student)``).
    """

    tag: str = ''
    width: float = None
    bn_resolution: int = None
    input_size: int = None
    teacher: bool = False
    gt_weight: float = 1.0
    distill_weight: float = 0.0


def weighted_losses(losses, weight):
    """``losses`` with every ``loss*`` entry multiplied by ``weight`` (others, e.g. accuracies, unchanged); an
    empty dict for ``weight == 0`` keeps only the non-loss entries."""
    out = {}
    for k, v in losses.items():
        if k.startswith('loss'):
            if weight:
                out[k] = [x * weight for x in v] if isinstance(v, (list, tuple)) else v * weight
        else:
            out[k] = v
    return out


class TrainingPolicy:
    """Base policy: one sub-network, ground-truth loss (Elastic and the dense baselines).

    Attributes:
        method (str): ``'standard'``, ``'usnet'``, ``'mutualnet'``, ``'rsnet'`` or ``'sact'``.
        find_unused_parameters (bool): whether DDP must allow parameters without gradient in a step.
        needs_calibration (bool): whether BN statistics must be re-estimated before evaluation (slimmable).
        seed (int): seed of the sub-network choices (identical on every rank).
    """

    method = 'standard'
    find_unused_parameters = False
    needs_calibration = False

    def __init__(self, seed=None):
        self.seed = agree_seed(seed)

    def check_agreement(self, steps=4):
        """Raise unless every DDP rank draws the same sub-networks for steps ``0..steps-1`` (cheap; frontends call
        it once when training starts).  Returns the digest."""
        return check_ranks_agree([self.subnets(s) for s in range(steps)], f'the sub-networks of {type(self).__name__}')

    def rng(self, step):
        """``random.Random`` for step ``step``: the same on every rank and on resume."""
        return random.Random(f'dynscale:{self.seed}:{int(step)}')

    def subnets(self, step):
        """Sub-networks of step ``step`` (list of :class:`Subnet`), in the order they must run."""
        return [Subnet()]

    def context(self, backbone, subnet):
        """Context that switches ``backbone`` (a dynscale model) to ``subnet``'s configuration."""
        return contextlib.nullcontext()

    def subnet_losses(self, subnet, task_losses, logits=None, teacher=None):
        """Losses of one sub-network: the task losses weighted by ``subnet.gt_weight``, plus
        ``loss_distill`` when ``subnet.distill_weight`` and a teacher's logits are given.

        Args:
            subnet (Subnet): the sub-network.
            task_losses (dict): the framework's loss dict (``loss*`` keys summed by the framework).
            logits (Tensor | None): ``[N, C]`` or ``[N, C, H, W]`` logits at the teacher's size.
            teacher (Tensor | None): the teacher's logits (detached here).

        Returns:
            dict
        """
        out = weighted_losses(task_losses, subnet.gt_weight)
        if subnet.distill_weight and teacher is not None:
            if logits is None:
                raise ValueError('inplace distillation needs the sub-network logits')
            from ..slimmable import inplace_distillation_loss
            out['loss_distill'] = subnet.distill_weight * inplace_distillation_loss(logits, teacher.detach())
        return out

    def extra_losses(self, model):
        """Per-forward losses and logged values beyond the task losses (``{}``; SACT: the ponder cost)."""
        return {}

    def __repr__(self):
        return f'{type(self).__name__}(seed={self.seed})'


class StandardPolicy(TrainingPolicy):
    """Cross-entropy / the detector's or segmentor's own losses (Elastic, dense baselines)."""
