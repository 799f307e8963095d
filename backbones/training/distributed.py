"""Agreement of DDP ranks: one seed, the same BN statistics, and a check that they really agree.

Every frontend calls these right where ranks could drift apart: the seed of the sub-network draws
(:func:`agree_seed`), the BN statistics after post-statistics calibration (:func:`average_bn_statistics`) and a
cheap verification of both (:func:`check_ranks_agree`: one ``all_gather_object`` of a digest).  All of them do
nothing without an initialised multi-process ``torch.distributed`` group.
"""
import hashlib

import torch

__all__ = ['world_size', 'agree_seed', 'average_bn_statistics', 'check_ranks_agree', 'digest']


def world_size():
    """Processes of the default group (1 without ``torch.distributed``)."""
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def agree_seed(seed=None):
    """A seed shared by every process: ``seed`` itself, or one drawn from torch's global generator and, under
    ``torch.distributed``, rank 0's broadcast to all ranks.

    Returns:
        int
    """
    if seed is not None:
        return int(seed)
    value = torch.randint(0, 2 ** 31 - 1, (1,), dtype=torch.int64)
    if world_size() > 1:
        import torch.distributed as dist
        t = value.cuda() if dist.get_backend() == 'nccl' else value
        dist.broadcast(t, 0)
        value = t.cpu()
    return int(value.item())


@torch.no_grad()
def average_bn_statistics(modules, weight=None):
    """Average ``running_mean`` / ``running_var`` of ``modules`` over the processes of the default group.

    Args:
        modules (Iterable[nn.Module]): BN-like modules with running statistics (others are skipped).
        weight (float | None): this rank's weight (the number of batches its statistics average, post-statistics BN
            with ``momentum=None``); the result is ``sum(w_r * stat_r) / sum(w_r)``, the average over every batch
            of every rank, so that the statistics do not depend on how the batches were split over the ranks.
            None: every rank counts the same.

    Returns:
        float: the total weight over the ranks (the number of ranks when ``weight`` is None; ``weight`` itself, or
        1, in a single process).
    """
    world = world_size()
    mods = [m for m in modules if getattr(m, 'running_mean', None) is not None]
    if world == 1 or not mods:
        return float(1 if weight is None else weight)
    import torch.distributed as dist
    w = 1.0 if weight is None else float(weight)
    flat = torch.cat([t.reshape(-1).double() for m in mods for t in (m.running_mean, m.running_var)]
                     + [torch.ones(1, dtype=torch.float64)])
    flat *= w
    if dist.get_backend() == 'nccl':
        flat = flat.cuda()
    dist.all_reduce(flat)
    total = float(flat[-1])
    if total > 0:
        flat /= total
    i = 0
    for m in mods:
        for t in (m.running_mean, m.running_var):
            n = t.numel()
            t.copy_(flat[i:i + n].view_as(t).to(device=t.device, dtype=t.dtype))
            i += n
    return total


def digest(obj):
    """SHA-1 hex digest of tensors (values and shapes, in order) or of any object's ``repr``."""
    h = hashlib.sha1()
    items = obj.items() if isinstance(obj, dict) else (obj if isinstance(obj, (list, tuple)) else [obj])
    for item in items:
        for v in (item if isinstance(item, tuple) else (item,)):
            if torch.is_tensor(v):
                t = v.detach().cpu().contiguous()
                h.update(str((tuple(t.shape), str(t.dtype))).encode())
                h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
            else:
                h.update(repr(v).encode())
    return h.hexdigest()


def check_ranks_agree(obj, what):
    """Raise unless every rank holds the same ``obj`` (compared through :func:`digest`).

    Args:
        obj: tensors (dict / list) or any object with a deterministic ``repr`` (e.g. a list of sub-networks).
        what (str): what is compared, for the message.

    Returns:
        str: the digest (identical on every rank).

    Raises:
        RuntimeError: the ranks differ (the message lists the rank digests).
    """
    d = digest(obj)
    if world_size() == 1:
        return d
    import torch.distributed as dist
    out = [None] * world_size()
    dist.all_gather_object(out, d)
    if len(set(out)) != 1:
        raise RuntimeError(f'DDP ranks disagree on {what}: digests per rank {out}; every rank must draw the same '
                           f'sub-networks (one seed, backbones.training.agree_seed) and average its calibrated BN '
                           f'statistics (backbones.training.average_bn_statistics)')
    return d
