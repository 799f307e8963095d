"""Optimizer parameter groups (weight-decay policies) and learning-rate schedules of the pretraining tool."""
import math

from torch import nn

WD_POLICIES = ('all', 'no-norm-bias', 'conv-fc')
SCHEDULES = ('step', 'cosine', 'linear', 'constant')


def param_groups(module, weight_decay, policy):
    """Parameter groups for SGD with the recipes' weight-decay policies.

    Args:
        policy (str): ``'all'`` (every parameter, BN/bias/alpha included: Elastic, RS-Nets);
            ``'no-norm-bias'`` (no decay on normalisation parameters and biases);
            ``'conv-fc'`` (decay only on the weights of non-depthwise convolutions and linear layers:
            US-Nets/MutualNet, SACT's TF-Slim L2).

    Returns:
        list[dict]: ``[{'params': decay, 'weight_decay': wd}, {'params': rest, 'weight_decay': 0}]``.

    Raises:
        ValueError: unknown policy.
    """
    if policy not in WD_POLICIES:
        raise ValueError(f'--wd-policy must be one of {WD_POLICIES}, got {policy!r}')
    decay, no_decay, seen = [], [], set()
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if policy == 'all':
                use = True
            elif policy == 'no-norm-bias':
                is_norm = isinstance(mod, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) or \
                    getattr(mod, 'is_norm', False)
                use = not is_norm and name != 'bias' and p.ndim > 1
            else:
                is_conv = isinstance(mod, nn.modules.conv._ConvNd)
                depthwise = is_conv and (getattr(mod, 'depthwise', False) or 1 < mod.groups == mod.in_channels)
                use = name == 'weight' and ((is_conv and not depthwise) or isinstance(mod, nn.Linear))
            (decay if use else no_decay).append(p)
    groups = [{'params': decay, 'weight_decay': weight_decay}]
    if no_decay:
        groups.append({'params': no_decay, 'weight_decay': 0.0})
    return groups


def lr_factor_fn(schedule, total_steps, steps_per_epoch, warmup_steps=0, warmup_factor=0.1, step_epochs=30,
                 milestones=None, gamma=0.1, min_factor=0.0):
    """Per-optimizer-step multiplier of the base lr.

    Args:
        schedule (str): ``'step'`` (x gamma every ``step_epochs`` epochs, or at ``milestones`` epochs),
            ``'cosine'`` (half cosine to ``min_factor``), ``'linear'`` (linear to ``min_factor``, US-Nets),
            ``'constant'``; all evaluated per iteration.
        warmup_steps (int): linear warmup from ``warmup_factor`` to 1 over this many steps.

    Returns:
        callable: ``step -> factor`` for ``torch.optim.lr_scheduler.LambdaLR``.

    Raises:
        ValueError: unknown schedule.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f'--lr-schedule must be one of {SCHEDULES}, got {schedule!r}')
    total = max(int(total_steps), 1)
    warm = int(warmup_steps)

    def f(step):
        if step < warm:
            return warmup_factor + (1.0 - warmup_factor) * step / warm
        if schedule == 'constant':
            return 1.0
        if schedule == 'step':
            epoch = step / max(steps_per_epoch, 1)
            if milestones:
                k = sum(epoch >= m for m in milestones)
            else:
                k = int(epoch // step_epochs)
            return gamma ** k
        t = min(max(step - warm, 0) / max(total - warm, 1), 1.0)
        if schedule == 'cosine':
            return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))
        return min_factor + (1 - min_factor) * (1 - t)
    return f
