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

    The protocol every frontend drives (a new method subclasses this and registers it in
    :data:`backbones.training.POLICIES`; no frontend changes):

    * built from the framework-free model and options: :meth:`from_model` (defaults read from the model);
      :meth:`trains` says whether a model is this policy's by default (:func:`backbones.training.policy_for`);
    * training: :meth:`subnets` (per step), :meth:`context`, :meth:`subnet_losses`, :meth:`extra_losses`, and
      :meth:`combine` when :attr:`combines` (one loss over all sub-networks of a step);
    * evaluation: :meth:`eval_context` switches the model to one configuration (width, private BN);
      :attr:`needs_calibration` says whether BN statistics must be re-estimated first, which
      :func:`backbones.training.calibrate` does inside :meth:`calibration_context`;
    * DDP: :attr:`find_unused_parameters`; :meth:`check_agreement`.

    Attributes:
        method (str): ``'standard'``, ``'usnet'``, ``'mutualnet'``, ``'rsnet'`` or ``'sact'``.
        capability (str | None): the backbone capability the method needs (a key of
            :data:`backbones.capabilities.CAPABILITIES`: ``'width'``, ``'private_bn'``, ``'ponder_cost'``), which
            the frontends check a config's method against before building anything; None: any model.
        find_unused_parameters (bool): whether DDP must allow parameters without gradient in a step.
        needs_calibration (bool): whether BN statistics must be re-estimated before evaluation (slimmable).
        combines (bool): the step's loss is :meth:`combine` over every sub-network's logits (RS-Nets MRED), not
            a sum of per-sub-network losses.
        max_input_size (int | None): the input size of the batch as loaded (``Subnet.input_size=None``) in the
            frontend's measure; sub-network sizes scale the batch by ``input_size / max_input_size``.
        seed (int): seed of the sub-network choices (identical on every rank).
    """

    method = 'standard'
    capability = None
    find_unused_parameters = False
    needs_calibration = False
    combines = False
    max_input_size = None

    def __init__(self, seed=None):
        self.seed = agree_seed(seed)

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def trains(cls, model):
        """Whether ``model`` (a :class:`backbones.base.DynamicBackbone`) is trained by this policy when no method
        is named (False for the base; :func:`backbones.training.policy_for` falls back to it)."""
        return False

    @classmethod
    def from_model(cls, model, method=None, ignore_index=None, **options):
        """The policy for ``model`` with ``options`` (the class's arguments); arguments the model fixes (width
        range, trained resolutions, tau) default to the model's.

        Args:
            model (nn.Module): the framework-free backbone the frontend trains.
            method (str | None): the registered name it was built under (``'usnet'``/``'mutualnet'`` ...).
            ignore_index (int | None): label ignored by the task loss (segmentation); used by policies whose own
                losses see labels (MRED).
            **options: the class's own arguments.

        Raises:
            ValueError: an option the class does not take (the message lists those it takes).
        """
        return _construct(cls, options)

    # ------------------------------------------------------------------------------------------ properties
    @property
    def varies_width(self):
        """Whether sub-networks run at widths below the model's (heads and necks must slice their inputs)."""
        return False

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

    def combine(self, logits_list, target):
        """One loss over the step's logits (ordered like :meth:`subnets`, resized to one size by the frontend);
        only for policies with :attr:`combines`.

        Raises:
            ValueError: the policy trains each sub-network with its own loss.
        """
        raise ValueError(f'{type(self).__name__} trains each sub-network with its own loss (combines=False)')

    def eval_context(self, backbone, width=None, bn_resolution=None):
        """Context evaluating ``backbone`` at one configuration: a width multiplier and / or the BN statistics of a
        resolution.  The base has none: both must be None.

        Raises:
            ValueError: a width or resolution for a model that has no such switch.
        """
        if width is not None or bn_resolution is not None:
            raise ValueError(f'{type(self).__name__} evaluates the model as built; width={width!r} / '
                             f'resolution={bn_resolution!r} apply only to slimmable (width) or RS-Net (resolution) '
                             f'models: remove them from the test settings')
        return contextlib.nullcontext()

    def calibration_context(self, backbone, width=None, bn_resolution=None):
        """Context in which the BN statistics of one configuration are re-estimated (post-statistics BN, US-Nets
        Sec. 3.3): inside it, ``backbone``'s BN modules hold that configuration's statistics (created if missing),
        and leaving it keeps them for :meth:`eval_context` of the same configuration.  Only policies with
        :attr:`needs_calibration` have one; :func:`backbones.training.calibrate` enters it.

        Raises:
            ValueError: the policy's models have no per-configuration statistics (this base).
        """
        raise ValueError(f'{type(self).__name__} has no post-statistics BN (needs_calibration is False): evaluate '
                         f'the model as trained, or train it with a method that calibrates')

    def __repr__(self):
        return f'{type(self).__name__}(seed={self.seed})'


def _construct(cls, options):
    """``cls(**options)`` with an error naming the arguments ``cls`` takes."""
    import inspect

    params = [n for n in inspect.signature(cls.__init__).parameters if n not in ('self', 'args', 'kwargs')]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f'{cls.__name__} does not take {unknown}; its options are {params}')
    return cls(**options)


class StandardPolicy(TrainingPolicy):
    """Cross-entropy / the detector's or segmentor's own losses (Elastic, dense baselines)."""
