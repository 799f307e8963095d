"""Sub-network sampling for training: the sandwich rule (US-Nets Sec. 3.2) and MutualNet's width-resolution
sampling (MutualNet Sec. 3.2): :class:`SandwichRule` yields :class:`SubnetConfig` tuples.
"""
import random
from typing import NamedTuple, Optional

from .ops import normalize_width


class SubnetConfig(NamedTuple):
    """One sub-network of a sandwich-rule step.

    Attributes:
        width (float): width multiplier.
        resolution (int | None): input resolution (``None``: the batch as loaded, US-Nets).
        is_teacher (bool): the max-width network (trained with labels; its logits teach the others).
    """
    width: float
    resolution: Optional[int]
    is_teacher: bool


class SandwichRule:
    """Sub-network sampler of US-Nets (sandwich rule, Sec. 3.2) and MutualNet (width-resolution, Sec. 3.2).

    Each :meth:`sample` returns ``num_subnets`` configurations: ``[max width at max resolution (teacher),
    min width, num_subnets - 2 widths ~ U(w_min, w_max)]``.  With ``resolutions`` (MutualNet) every
    non-teacher sub-network draws its resolution independently and uniformly from ``resolutions`` (the max
    included, and the min width is not tied to the min resolution, as MutualNet's code); the teacher always
    uses ``max_resolution``.  Without ``resolutions`` (US-Nets) every resolution is ``max_resolution``
    (default ``None``: the batch as is).

    Args:
        width_range (tuple[float, float]): ``(w_min, w_max)`` (e.g. ``model.width_range``).
        num_subnets (int): >= 2 (4 in both papers).
        resolutions (Iterable[int] | None): MutualNet resolution list, e.g. (224, 192, 160, 128).
        max_resolution (int | None): teacher resolution; default ``max(resolutions)``.
        seed (int | None): seed of the private ``random.Random`` (reproducible sampling).

    Raises:
        ValueError: ``num_subnets < 2``, a bad width range, or non-positive resolutions.
    """

    def __init__(self, width_range, num_subnets=4, resolutions=None, max_resolution=None, seed=None):
        lo, hi = (normalize_width(w) for w in width_range)
        if not 0 < lo <= hi:
            raise ValueError(f'width_range must satisfy 0 < w_min <= w_max, got {width_range!r}')
        if int(num_subnets) != num_subnets or num_subnets < 2:
            raise ValueError(f'num_subnets must be an int >= 2 (max and min width), got {num_subnets}')
        if resolutions is not None:
            resolutions = tuple(int(r) for r in resolutions)
            if not resolutions or min(resolutions) <= 0:
                raise ValueError(f'resolutions must be positive ints, got {resolutions!r}')
            if max_resolution is None:
                max_resolution = max(resolutions)
        if max_resolution is not None and max_resolution <= 0:
            raise ValueError(f'max_resolution must be a positive int, got {max_resolution!r}')
        self.width_range = (lo, hi)
        self.num_subnets = int(num_subnets)
        self.resolutions = resolutions
        self.max_resolution = max_resolution
        self._rng = random.Random(seed)

    def sample(self):
        """One step's sub-networks: ``list[SubnetConfig]`` (teacher, min width, then random widths)."""
        lo, hi = self.width_range
        widths = [lo] + [normalize_width(self._rng.uniform(lo, hi)) for _ in range(self.num_subnets - 2)]
        out = [SubnetConfig(hi, self.max_resolution, True)]
        for w in widths:
            r = self._rng.choice(self.resolutions) if self.resolutions else self.max_resolution
            out.append(SubnetConfig(w, r, False))
        return out

    __call__ = sample

    def __repr__(self):
        return (f'SandwichRule(width_range={self.width_range}, num_subnets={self.num_subnets}, '
                f'resolutions={self.resolutions}, max_resolution={self.max_resolution})')
