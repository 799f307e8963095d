"""``torchrun`` / DDP helpers (environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
import datetime
import os

import torch
import torch.distributed as dist


class DistInfo:
    """Where this process stands: ``rank``, ``world_size``, ``local_rank``, ``device``, ``distributed``."""

    def __init__(self, rank=0, world_size=1, local_rank=0, device=torch.device('cpu')):
        self.rank, self.world_size, self.local_rank, self.device = rank, world_size, local_rank, device

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def init_distributed(device='auto', backend='auto', timeout_min=30):
    """Initialise the process group when launched by ``torchrun`` and pick the device.

    Args:
        device (str): ``'auto'`` (CUDA if available), ``'cpu'`` or ``'cuda'``.
        backend (str): ``'auto'`` (nccl on CUDA, gloo on CPU), ``'nccl'`` or ``'gloo'``.

    Returns:
        DistInfo

    Raises:
        ValueError: unknown device/backend, or ``'cuda'`` requested without a GPU.
    """
    if device not in ('auto', 'cpu', 'cuda'):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if backend not in ('auto', 'nccl', 'gloo'):
        raise ValueError(f"dist backend must be 'auto', 'nccl' or 'gloo', got {backend!r}")
    if device == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda requested but torch.cuda.is_available() is False; use --device cpu')
    use_cuda = device == 'cuda' or (device == 'auto' and torch.cuda.is_available())
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device('cuda', local_rank)
    else:
        dev = torch.device('cpu')
    if world > 1 and not dist.is_initialized():
        if backend == 'auto':
            backend = 'nccl' if use_cuda else 'gloo'
        kw = dict(backend=backend, init_method='env://', world_size=world, rank=rank,
                  timeout=datetime.timedelta(minutes=timeout_min))
        if use_cuda:
            kw['device_id'] = dev
        dist.init_process_group(**kw)
    return DistInfo(rank, world, local_rank, dev)


def barrier(info):
    """``dist.barrier`` when distributed."""
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values, info):
    """Sum a list of floats over processes (float64 on the process's device); returns a list."""
    t = torch.tensor(values, dtype=torch.float64, device=info.device if info.device.type == 'cuda' else 'cpu')
    if info.distributed:
        dist.all_reduce(t)
    return t.tolist()


def all_gather_object(obj, info):
    """List of ``obj`` from every rank (``[obj]`` when not distributed)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module, info, src=0):
    """Copy every floating/integer buffer of ``module`` from rank ``src`` (e.g. after BN calibration,
    so that every rank evaluates with the same statistics)."""
    if not info.distributed:
        return
    for b in module.buffers():
        dist.broadcast(b.data, src)


def cleanup(info):
    """Destroy the process group if one was created."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
