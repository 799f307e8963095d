"""Training loss of the slimmable networks: :func:`inplace_distillation_loss` (US-Nets Sec. 3.3; MutualNet
eq. 3), the max-width network's logits teaching every sub-network.
"""
import torch.nn.functional as F


def inplace_distillation_loss(student_logits, teacher_logits):
    """Inplace distillation (US-Nets Sec. 3.3; MutualNet eq. 3): ``KL(p_teacher || p_student)``.

    The teacher is detached (no gradient reaches it), temperature 1, ``batchmean`` reduction (sum over
    classes, mean over the batch; for dense logits ``[N, C, H, W]`` the mean runs over every position).

    Args:
        student_logits (Tensor): ``[N, C]`` or ``[N, C, ...]``.
        teacher_logits (Tensor): same shape (the max-width network's logits).

    Returns:
        Tensor: scalar loss.

    Raises:
        ValueError: shapes differ or fewer than 2 dimensions.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 2:
        raise ValueError(f'student and teacher logits must have the same shape [N, C, ...], got '
                         f'{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}')
    s, t = student_logits, teacher_logits.detach()
    if s.dim() > 2:
        c = s.shape[1]
        s = s.movedim(1, -1).reshape(-1, c)
        t = t.movedim(1, -1).reshape(-1, c)
    return F.kl_div(F.log_softmax(s, dim=1), F.softmax(t, dim=1), reduction='batchmean')
