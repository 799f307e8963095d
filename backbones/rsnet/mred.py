"""Multi-resolution ensemble distillation (MRED), the RS-Nets training loss (Sec. 3.2, eq. 3-6).

:func:`mred_loss` / :class:`MREDLoss` (with the learned ensemble importance ``alpha``), the distillation
weight :func:`mred_kd_weight` and :func:`resize_logits` for dense logits (supplementary Sec. 3).
"""
import numbers

import torch
import torch.nn.functional as F
from torch import nn

#: MRED distillation variants: full MRED (top-down), vanilla MRED (ensemble only), no distillation
KD_TYPES = ('ens_topdown', 'ens', None)


# --------------------------------------------------------------------------------------------- MRED loss
def mred_kd_weight(num_resolutions, kd='ens_topdown'):
    """Weight lambda of the distillation sum in MRED (reference Sec. 4.2).

    ``'ens_topdown'``: N + N(N-1)/2 = N(N+1)/2 KL terms weighted 2/(N+1) (the mean over terms times N);
    ``'ens'``: N terms weighted 1; ``None``: 0.

    Raises:
        ValueError: ``kd`` not in :data:`KD_TYPES` or ``num_resolutions < 1``.
    """
    if kd not in KD_TYPES:
        raise ValueError(f'kd must be one of {KD_TYPES}, got {kd!r}')
    if not isinstance(num_resolutions, numbers.Integral) or num_resolutions < 1:
        raise ValueError(f'num_resolutions must be a positive integer, got {num_resolutions!r}')
    if kd == 'ens_topdown':
        return 2.0 / (num_resolutions + 1)
    return 1.0 if kd == 'ens' else 0.0


def _kl_per_position(student_logp, teacher_logp):
    # KL(p_teacher || p_student) summed over the class dim -> [N] or [N, H, W]
    return F.kl_div(student_logp, teacher_logp, reduction='none', log_target=True).sum(1)


def mred_loss(logits_list, target, alpha, kd='ens_topdown', ignore_index=None):
    """Multi-resolution ensemble distillation loss (RS-Nets Sec. 3.2, eq. 3-6; reference Sec. 4.2).

    ``z_ens = sum_j softmax(alpha)_j * z_j.detach()`` (so the ensemble CE trains only ``alpha``);
    ``L = sum_j CE(z_j, y) + CE(z_ens, y) + lambda * L_kd`` with

    * ``kd='ens_topdown'`` (full MRED): ``L_kd = sum_j KL(softmax(z_ens) || z_j)
      + sum_j sum_{k<j} KL(softmax(z_k) || z_j)``, lambda = 2/(N+1): the ensemble teaches every
      resolution and every larger resolution teaches every smaller one;
    * ``kd='ens'`` (vanilla MRED): the ensemble term only, lambda = 1;
    * ``kd=None``: no distillation.

    Teachers are detached, T = 1, KL averaged over samples (``batchmean``) or, for dense logits, over
    the non-ignored pixels.

    Args:
        logits_list (list[Tensor]): N logits ordered by **descending** resolution, each ``[B, C]``
            (classification) or ``[B, C, H, W]`` (segmentation; resized to one common size by the caller,
            e.g. with :func:`resize_logits`).
        target (Tensor): int64 labels ``[B]`` or ``[B, H, W]``.
        alpha (Tensor): ``[N]`` ensemble importance scores (initialised to ones).
        kd (str | None): ``'ens_topdown'``, ``'ens'`` or None.
        ignore_index (int | None): label excluded from CE and KD; None means 255 for dense logits and no
            ignored label for classification (class 255 is a valid ImageNet class).

    Returns:
        tuple: ``(loss, parts)``; ``loss`` a scalar tensor; ``parts`` a dict of detached scalar tensors for
        logging: ``ce_{j}`` (resolution j), ``ce_ens``, ``kd_{j}`` (KL received by resolution j, summed
        over its teachers, unweighted), ``kd`` (sum of all KL terms), ``kd_weight`` (lambda), ``w_{j}``
        (softmax(alpha)_j).  No key contains "loss", so framework loss parsers do not add them twice.

    Raises:
        ValueError: ``kd`` unknown, fewer than one logit tensor, ``alpha`` not of shape ``[N]``, logits of
        different shapes, or a target shape that does not fit the logits.
    """
    lam = mred_kd_weight(max(len(logits_list), 1), kd)
    logits = list(logits_list)
    n = len(logits)
    if n < 1:
        raise ValueError('mred_loss needs at least one logits tensor')
    if alpha.dim() != 1 or alpha.numel() != n:
        raise ValueError(f'alpha must have shape [{n}] (one score per resolution), got {tuple(alpha.shape)}')
    shape = logits[0].shape
    if any(z.shape != shape for z in logits):
        raise ValueError('all logits must have the same shape; resize dense logits to one size first (e.g. '
                         f'resize_logits(logits, size)); got {[tuple(z.shape) for z in logits]}')
    if logits[0].dim() < 2:
        raise ValueError(f'logits must be [B, C] or [B, C, H, W], got {tuple(shape)}')
    expected = (shape[0],) + tuple(shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f'target must have shape {expected} for logits {tuple(shape)}, '
                         f'got {tuple(target.shape)}')
    dense = logits[0].dim() > 2
    if ignore_index is None:
        ignore_index = 255 if dense else None
    if ignore_index is None:
        valid = torch.ones_like(target, dtype=torch.bool)
        ce_ignore = -100
    else:
        valid = target != ignore_index
        ce_ignore = ignore_index
    n_valid = valid.sum().clamp(min=1).to(logits[0].dtype if logits[0].is_floating_point() else torch.float32)

    def ce(z):
        return F.cross_entropy(z.float(), target, ignore_index=ce_ignore, reduction='sum') / n_valid

    def kl(student_logp, teacher_logp):
        return (_kl_per_position(student_logp, teacher_logp) * valid).sum() / n_valid

    parts = {}
    weights = torch.softmax(alpha.float(), 0)
    z_ens = sum(weights[j] * logits[j].detach().float() for j in range(n))
    ce_terms = [ce(z) for z in logits]
    ce_ens = ce(z_ens)
    total = sum(ce_terms) + ce_ens
    for j, t in enumerate(ce_terms):
        parts[f'ce_{j}'] = t.detach()
    parts['ce_ens'] = ce_ens.detach()

    kd_total = torch.zeros((), device=logits[0].device)
    if kd is not None:
        logp = [F.log_softmax(z.float(), 1) for z in logits]
        ens_logp = F.log_softmax(z_ens.detach(), 1)
        for j in range(n):
            received = kl(logp[j], ens_logp)
            if kd == 'ens_topdown':
                for k in range(j):
                    received = received + kl(logp[j], logp[k].detach())
            parts[f'kd_{j}'] = received.detach()
            kd_total = kd_total + received
        total = total + lam * kd_total
    parts['kd'] = kd_total.detach()
    parts['kd_weight'] = torch.tensor(lam)
    for j in range(n):
        parts[f'w_{j}'] = weights[j].detach()
    return total, parts


class MREDLoss(nn.Module):
    """MRED loss module holding the ensemble importance scores ``alpha = ones(N)`` (reference Sec. 4.2).

    Add its parameters to the optimiser (the authors apply weight decay to ``alpha`` too).  Learned
    values reported in the supplementary material (Sec. 1) are softmax(alpha) ~ {0.32, 0.30, 0.23,
    0.13, 0.02} for ResNet-50 at 224..96.

    Args:
        num_resolutions (int): N.
        kd (str | None): ``'ens_topdown'`` (full MRED, default), ``'ens'`` (vanilla) or None.
        ignore_index (int | None): see :func:`mred_loss`.

    Raises:
        ValueError: unknown ``kd`` or ``num_resolutions < 1``.
    """

    def __init__(self, num_resolutions, kd='ens_topdown', ignore_index=None):
        super().__init__()
        self.kd_weight = mred_kd_weight(num_resolutions, kd)
        self.num_resolutions = num_resolutions
        self.kd = kd
        self.ignore_index = ignore_index
        self.alpha = nn.Parameter(torch.ones(num_resolutions))

    def forward(self, logits_list, target):
        """``(loss, parts)`` of :func:`mred_loss` for N logits ordered by descending resolution."""
        if len(logits_list) != self.num_resolutions:
            raise ValueError(f'MREDLoss was built for {self.num_resolutions} resolutions, got '
                             f'{len(logits_list)} logits tensors')
        return mred_loss(logits_list, target, self.alpha, kd=self.kd, ignore_index=self.ignore_index)

    def extra_repr(self):
        return f'num_resolutions={self.num_resolutions}, kd={self.kd!r}, kd_weight={self.kd_weight:.4f}'


def resize_logits(logits_list, size, mode='bilinear', align_corners=False):
    """Resize dense logits ``[B, C, h_i, w_i]`` to one ``size`` (H, W) before :func:`mred_loss`.

    RS-Nets supplementary Sec. 3 (RefineNet on NYUDv2) resizes every resolution's logits to the largest
    input resolution before the ensemble and the losses.

    Returns:
        list[Tensor]: ``[B, C, H, W]`` each (tensors already at ``size`` are returned unchanged).
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    return [z if tuple(z.shape[-2:]) == size
            else F.interpolate(z, size=size, mode=mode, align_corners=align_corners) for z in logits_list]
