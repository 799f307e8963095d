"""US-Nets / MutualNet training step: the sandwich rule over widths (and input sizes) with inplace distillation.

Yu & Huang 2019 (US-Nets), Sec. 3.2-3.3: every step trains the largest width (the teacher, ground truth), the
smallest width and ``num_subnets - 2`` widths drawn uniformly from the range, all on the same batch; the
others learn from the teacher's detached predictions (inplace distillation); gradients accumulate, one
optimiser step.  Yang et al. 2020 (MutualNet), Sec. 3.2: each non-teacher sub-network also draws its input
size uniformly from a list (the largest included, the smallest width not tied to the smallest size); the
teacher always sees the largest.  Detection (MutualNet Sec. 4.3) trains every sub-network with the ground
truth instead (``distill=None, student_gt_weight=1``).
"""
import contextlib

from .policy import Subnet, TrainingPolicy

__all__ = ['SandwichPolicy']


class SandwichPolicy(TrainingPolicy):
    """Sandwich rule (US-Nets) with optional per-sub-network input sizes (MutualNet).

    Args:
        width_range (tuple[float, float]): ``(w_min, w_max)``.
        num_subnets (int): sub-networks per step, >= 2 (4 in both papers).
        input_sizes (Sequence[int] | None): sizes the students draw from (MutualNet); None: every sub-network
            sees the batch as loaded (US-Nets).
        max_input_size (int | None): the teacher's size (default ``max(input_sizes)``); a student drawing it
            runs on the batch as loaded.
        distill (str | None): ``'inplace'`` (students learn from the teacher) or None.
        student_gt_weight (float): weight of the students' ground-truth loss (0 with pure inplace
            distillation; 1 = every sub-network trained with the ground truth, as in detection).
        seed (int | None): seed of the draws (agreed over ranks when None).

    Raises:
        ValueError: bad width range, ``num_subnets < 2``, non-positive sizes, unknown ``distill``.
    """

    capability = 'width'
    find_unused_parameters = False
    needs_calibration = True

    def __init__(self, width_range, num_subnets=4, input_sizes=None, max_input_size=None, distill='inplace',
                 student_gt_weight=0.0, seed=None):
        from ..slimmable.ops import normalize_width

        super().__init__(seed)
        lo, hi = (normalize_width(w) for w in width_range)
        if not 0 < lo <= hi:
            raise ValueError(f'width_range must satisfy 0 < w_min <= w_max, got {tuple(width_range)}')
        if int(num_subnets) != num_subnets or num_subnets < 2:
            raise ValueError(f'num_subnets must be an int >= 2 (largest and smallest width), got {num_subnets}')
        if distill not in ('inplace', None):
            raise ValueError(f"distill must be 'inplace' or None, got {distill!r}")
        if input_sizes is not None:
            input_sizes = tuple(int(s) for s in input_sizes)
            if not input_sizes or min(input_sizes) <= 0:
                raise ValueError(f'input_sizes must be positive ints (pixels), got {input_sizes!r}')
            max_input_size = max_input_size or max(input_sizes)
        if max_input_size is not None and max_input_size <= 0:
            raise ValueError(f'max_input_size must be positive, got {max_input_size!r}')
        self.width_range = (lo, hi)
        self.num_subnets = int(num_subnets)
        self.input_sizes = input_sizes
        self.max_input_size = max_input_size
        self.distill = distill
        self.student_gt_weight = float(student_gt_weight)
        self.method = 'mutualnet' if input_sizes else 'usnet'

    @classmethod
    def trains(cls, model):
        """Slimmable models (a width range and width switching)."""
        return hasattr(model, 'width_range') and hasattr(model, 'width_context')

    @classmethod
    def from_model(cls, model, method=None, ignore_index=None, **options):
        """Sandwich rule over ``model.width_range`` (unless ``width_range`` is given); ``method='mutualnet'``
        needs ``input_sizes``, ``'usnet'`` refuses them.

        Raises:
            ValueError: a model without widths, the method / input sizes mismatch, or an unknown option.
        """
        if not cls.trains(model):
            raise ValueError(f'the sandwich rule trains slimmable models; {type(model).__name__} has no width '
                             f'multiplier (use a us_* backbone)')
        options.setdefault('width_range', tuple(model.width_range))
        sizes = options.get('input_sizes')
        if method == 'mutualnet' and not sizes:
            raise ValueError('MutualNet draws input sizes: give input_sizes (e.g. (224, 192, 160, 128))')
        if method == 'usnet' and sizes:
            raise ValueError('US-Nets train every width at the input as loaded; input_sizes is MutualNet '
                             "(method 'mutualnet')")
        return super().from_model(model, method, ignore_index, **options)

    @property
    def varies_width(self):
        return True

    def subnets(self, step):
        """``[max (teacher), min, rand1, ...]``: widths ``w_max``, ``w_min`` then uniform draws; students' input
        sizes uniform over ``input_sizes`` (None when equal to the teacher's, i.e. the batch as loaded)."""
        from ..slimmable.ops import normalize_width

        rng = self.rng(step)
        lo, hi = self.width_range
        widths = [lo] + [normalize_width(rng.uniform(lo, hi)) for _ in range(self.num_subnets - 2)]
        distill = 1.0 if self.distill == 'inplace' else 0.0
        out = [Subnet('max', width=hi, teacher=True)]
        for k, w in enumerate(widths):
            size = rng.choice(self.input_sizes) if self.input_sizes else None
            out.append(Subnet('min' if k == 0 else f'rand{k}', width=w,
                              input_size=None if size == self.max_input_size else size,
                              gt_weight=self.student_gt_weight, distill_weight=distill))
        return out

    def context(self, backbone, subnet):
        """Width ``subnet.width`` with its width-only statistics (batch statistics while training)."""
        if subnet.width is None:
            return contextlib.nullcontext()
        return backbone.width_context(subnet.width)

    def eval_context(self, backbone, width=None, bn_resolution=None):
        """Evaluation at ``(width, bn_resolution)`` (None: the largest width): the statistics calibrated for that
        pair when they exist, else the width-only ones (a width without any statistics raises, naming
        calibration)."""
        from ..slimmable.ops import normalize_width

        width = backbone.width_range[1] if width is None else width
        key = None
        if bn_resolution is not None and (normalize_width(width), bn_resolution) in backbone.bn_configs:
            key = bn_resolution
        return backbone.width_context(width, key)

    def calibration_context(self, backbone, width=None, bn_resolution=None):
        """The statistics of ``(width, bn_resolution)`` (None: the largest width; the width-only statistics),
        created if missing: ``backbone.width_context`` (US-Nets Sec. 3.3; MutualNet per-(width, resolution))."""
        return backbone.width_context(backbone.width_range[1] if width is None else width, bn_resolution)

    def __repr__(self):
        return (f'SandwichPolicy(width_range={self.width_range}, num_subnets={self.num_subnets}, '
                f'input_sizes={self.input_sizes}, distill={self.distill}, seed={self.seed})')
