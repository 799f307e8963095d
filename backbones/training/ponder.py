"""SACT / ACT training step: the task loss plus ``tau`` times the ponder cost (Figurnov et al. 2017, eq. 8).

Every module of the model that exposes ``ponder_costs`` (the dynscale pre-activation ResNet and a
Detectron2 C4 res5 head running SACT units) contributes its per-stage ponder-cost maps of the last forward;
the loss is ``tau * sum over stages of mean(rho)`` (:func:`backbones.sact.ponder_loss`, gradient through the
remainder R) and the unweighted sum is logged as ``ponder_cost``.
"""
import torch

from .policy import TrainingPolicy

__all__ = ['PonderPolicy', 'ponder_costs_of']


def ponder_costs_of(model):
    """Ponder-cost maps of the last forward of every SACT module in ``model``, each tensor once.

    Returns:
        list[Tensor]: ``[N, h, w]`` (SACT) or ``[N]`` (ACT) maps.
    """
    seen, out = set(), []
    for m in model.modules():
        costs = getattr(m, 'ponder_costs', None)
        if isinstance(costs, (list, tuple)):
            for c in costs:
                if torch.is_tensor(c) and id(c) not in seen:
                    seen.add(id(c))
                    out.append(c)
    return out


class PonderPolicy(TrainingPolicy):
    """One pass; ``loss_ponder = tau * sum_stages mean(rho)`` and the logged ``ponder_cost``.

    Args:
        tau (float): ponder cost weight (the authors' ImageNet release 0.005, CIFAR 0.01), >= 0.
        seed (int | None): unused (no random choice), kept for the common interface.

    Raises:
        ValueError: negative ``tau``.
    """

    method = 'sact'
    capability = 'ponder_cost'
    find_unused_parameters = True  # halting branches of units that never run in a step get no gradient

    def __init__(self, tau=0.01, seed=None):
        super().__init__(seed)
        if tau is None or tau < 0:
            raise ValueError(f'tau must be >= 0, got {tau}')
        self.tau = float(tau)

    @classmethod
    def trains(cls, model):
        """SACT / ACT models (a halting stage: ``act`` other than ``'none'``)."""
        return hasattr(model, 'ponder_costs') and getattr(model, 'act', 'none') != 'none'

    @classmethod
    def from_model(cls, model, method=None, ignore_index=None, **options):
        """``tau`` defaults to the model's (``model.tau``, else 0.01).

        Raises:
            ValueError: a model without halting stages, negative ``tau`` or an unknown option.
        """
        if not hasattr(model, 'ponder_costs'):
            raise ValueError(f'the ponder cost trains SACT / ACT models; {type(model).__name__} has no halting stage '
                             f'(use an sact_* / act_* backbone)')
        if options.get('tau') is None:
            options['tau'] = float(getattr(model, 'tau', 0.01))
        return super().from_model(model, method, ignore_index, **options)

    def extra_losses(self, model):
        """``{'loss_ponder': tau * cost, 'ponder_cost': cost.detach()}`` from the last forward of ``model``
        (``{}`` when it has no SACT stage)."""
        from ..sact import ponder_loss

        costs = ponder_costs_of(model)
        if not costs:
            return {}
        cost = sum(c.float().mean() for c in costs)
        return {'loss_ponder': ponder_loss(costs, self.tau), 'ponder_cost': cost.detach()}

    def __repr__(self):
        return f'PonderPolicy(tau={self.tau})'
