"""Calibration batches that do not depend on the number of processes (post-statistics BN under DDP).

US-Nets (Yu & Huang 2019, Sec. 3.3) and MutualNet (Yang et al. 2020, Sec. 3.3) re-estimate the BN statistics of
an evaluated configuration on training batches.  For a one-process and an N-process evaluation of the same
checkpoint to report the same metric, every process must see a fixed share of one global, seeded set of batches
(:class:`CalibrationSampler`) and each image must be augmented the same way whichever process reads it
(:class:`SeededSamples`); the frontends then average the statistics over the processes weighted by their batch
counts (:func:`backbones.training.average_bn_statistics`).
"""
import random

import numpy as np
import torch

__all__ = ['CalibrationSampler', 'SeededSamples', 'sample_seed']


def sample_seed(seed, index):
    """The seed of sample ``index``'s augmentation (a 31-bit integer, a function of ``(seed, index)`` only)."""
    return (int(seed) * 1_000_003 + int(index) * 7919 + 17) % (2 ** 31 - 1)


class CalibrationSampler(torch.utils.data.Sampler):
    """The same calibration batches whatever the number of processes.

    A seeded permutation of the ``n`` training samples is cut into global batches of ``batch_size`` (the last,
    incomplete one dropped); process ``rank`` of ``num_replicas`` yields the sample indices of global batches
    ``rank, rank + num_replicas, ...`` (whole batches, in order).  Use it with ``batch_size`` and
    ``drop_last=True`` in the DataLoader.

    Args:
        n (int): training samples.
        batch_size (int): samples per batch (the DataLoader's).
        num_replicas (int), rank (int): the process group.
        seed (int): seed of the permutation.
        num_batches (int | None): only the first ``num_batches`` global batches.

    Raises:
        ValueError: ``batch_size < 1``, ``rank`` outside the group.  (``n < batch_size`` yields nothing.)
    """

    def __init__(self, n, batch_size, num_replicas=1, rank=0, seed=0, num_batches=None):
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        if not 0 <= rank < num_replicas:
            raise ValueError(f'rank {rank} is outside a group of {num_replicas} processes')
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
        batches = [perm[k:k + batch_size] for k in range(0, n - batch_size + 1, batch_size)][:num_batches]
        #: global batches in total (over every process)
        self.num_global_batches = len(batches)
        #: the sample indices this process reads, in order
        self.indices = [i for b in batches[rank::num_replicas] for i in b]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class SeededSamples(torch.utils.data.Dataset):
    """``dataset[i]`` with the global random generators (Python ``random``, NumPy, torch CPU) seeded by
    :func:`sample_seed` ``(seed, i)`` and restored afterwards: a random augmentation pipeline (random scale,
    crop, flip drawn from the global generators, as MMCV / MMSeg transforms draw them) gives the same sample
    wherever and in whichever worker it is read.

    Args:
        dataset (Sequence): indexed by int.
        seed (int): the calibration seed.
    """

    def __init__(self, dataset, seed=0):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        s = sample_seed(self.seed, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
