"""The base class of the universally slimmable backbones: width switching and BN configurations.

:class:`SlimmableBackbone` (US-Nets, Yu & Huang, ICCV 2019, Sec. 3; MutualNet, Yang et al., ECCV 2020, Sec. 3)
holds the width / resolution state, the private-statistics API (``set_width``, ``add_bn_config``,
``bn_configs``, ``width_list``, the width/resolution/probe contexts) and the US-Nets / MutualNet weight
initialisation.  The concrete networks are in :mod:`backbones.slimmable.architectures`.
"""
import contextlib
import math

from torch import nn

from ..base import DynamicBackbone
from .ops import SlimmableBatchNorm2d, WidthAware, active_channels, normalize_width, parse_config_key

_TOL = 1e-9


def _init_weights(model):
    """US-Nets / MutualNet init (reference §2.2).

    Conv ``N(0, sqrt(2 / (k * k * C_out)))`` (bias 0), BN ``(1, 0)``, Linear ``N(0, 0.01)`` (bias 0).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (SlimmableBatchNorm2d, nn.BatchNorm2d)) and getattr(m, 'weight', None) is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------- base class
class SlimmableBackbone(DynamicBackbone):
    """Base class of the universally slimmable backbones (US-Nets Sec. 3; MutualNet Sec. 3).

    Attributes:
        width_range (tuple[float, float]): ``(w_min, w_max)``; any width inside runs.
        width (float): current width multiplier.
        resolution (int | None): resolution whose BN statistics are selected (``None``: width-only
            statistics).
        channel_divisor (int): ``make_divisible`` divisor (8).

    Subclasses build their layers, set ``self._stage_rules`` (4 ``(C_max, ratio)`` of the stage outputs)
    and call :meth:`_init_slimmable` then ``_init_dense``.
    """

    family = 'slimmable'
    channel_divisor = 8
    _static_config = None

    def _init_slimmable(self, width_range, width_list, divisor):
        try:
            lo, hi = (normalize_width(w) for w in width_range)
        except (TypeError, ValueError):
            raise ValueError(f'width_range must be (w_min, w_max), got {width_range!r}') from None
        if not 0 < lo <= hi:
            raise ValueError(f'width_range must satisfy 0 < w_min <= w_max, got {width_range!r}')
        if hi > 1.0:
            raise ValueError(f'width_range {width_range!r} goes above 1.0: a width multiplier slices the full '
                             f'network\'s channels, so the largest is 1.0 (e.g. (0.35, 1.0)); pass w_max <= 1.0')
        self.width_range = (lo, hi)
        self.channel_divisor = divisor
        self.width, self.resolution = hi, None
        for entry in ((lo, hi) if width_list is None else width_list):
            w, r = entry if isinstance(entry, (tuple, list)) else (entry, None)
            self.add_bn_config(w, r)
        _init_weights(self)
        self.set_width(hi)

    # ----------------------------------------------------------------- width / BN configuration
    def _check_width(self, width):
        w = normalize_width(width)
        lo, hi = self.width_range
        if not lo - _TOL <= w <= hi + _TOL:
            raise ValueError(f'width multiplier {width} is outside the trained range [{lo}, {hi}] of '
                             f'{self.variant}; choose a width in [{lo}, {hi}]')
        return w

    @staticmethod
    def _check_resolution(resolution):
        if resolution is None:
            return None
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0:
            raise ValueError('resolution must be None or a positive int (input side in pixels), got '
                             f'{resolution!r}')
        return resolution

    def slimmable_bns(self):
        """The :class:`SlimmableBatchNorm2d` layers of the model (list)."""
        return [m for m in self.modules() if isinstance(m, SlimmableBatchNorm2d)]

    def set_width(self, width, resolution=None):
        """Run at width multiplier ``width`` with the BN statistics of ``(width, resolution)``.

        Args:
            width (float): in ``width_range`` (quantised to 1e-4).
            resolution (int | None): select statistics calibrated for this input resolution (MutualNet);
                ``None`` selects the width-only statistics (US-Nets).

        Returns:
            self

        Raises:
            TypeError: ``width`` is not a number (e.g. the string ``'0.5'`` from a command line).
            ValueError: width outside ``width_range`` (the message names the range); bad resolution; a
                width other than the exported one on an :func:`export_static` model.
        """
        if isinstance(width, bool) or not isinstance(width, (int, float)):
            raise TypeError(f'width multiplier is a number, got {type(width).__name__} {width!r}; pass e.g. '
                            f'set_width(float({width!r}))' if isinstance(width, str) else
                            f'width multiplier is a number, got {type(width).__name__} {width!r}')
        if self._static_config is not None:
            sw, sr = self._static_config
            if normalize_width(width) != sw or (resolution is not None and resolution != sr):
                raise ValueError(f'this model was exported by export_static at width {sw}'
                                 + ('' if sr is None else f', resolution {sr}')
                                 + '; it cannot switch width. Export again from the slimmable model.')
            return self
        w = self._check_width(width)
        r = self._check_resolution(resolution)
        for m in self.modules():
            if isinstance(m, WidthAware):
                m.set_active(w, r)
        self.width, self.resolution = w, r
        return self

    @contextlib.contextmanager
    def width_context(self, width, resolution=None):
        """Context manager: ``set_width(width, resolution)`` inside, the previous setting restored after."""
        saved = (self.width, self.resolution)
        self.set_width(width, resolution)
        try:
            yield self
        finally:
            self.set_width(*saved)

    @contextlib.contextmanager
    def resolution_context(self, resolution):
        """Context manager: keep the width, select the BN statistics of ``resolution`` (``complexity``)."""
        with self.width_context(self.width, resolution):
            yield self

    @contextlib.contextmanager
    def probe_context(self):
        """Context manager for counting MACs / checking shapes at configurations without statistics.

        Inside, an eval-mode forward at a configuration without private statistics normalises with mean 0 /
        var 1 instead of raising.  Outputs are *not* meaningful predictions; MACs and shapes are exact.
        """
        bns = self.slimmable_bns()
        saved = [bn.probe for bn in bns]
        for bn in bns:
            bn.probe = True
        try:
            yield self
        finally:
            for bn, p in zip(bns, saved):
                bn.probe = p

    def add_bn_config(self, width, resolution=None):
        """Create private statistics for ``(width, resolution)`` in every slimmable BN (no-op if present).

        Raises:
            ValueError: width outside ``width_range`` or bad resolution.
        """
        w = self._check_width(width)
        r = self._check_resolution(resolution)
        for bn in self.slimmable_bns():
            bn.add_config(w, r)

    @property
    def bn_configs(self):
        """Sorted tuple of the ``(width, resolution)`` pairs with private statistics in every slimmable BN."""
        if self._static_config is not None:
            return (self._static_config,)
        bns = self.slimmable_bns()
        if not bns:
            return ()
        keys = set(bns[0].private)
        for bn in bns[1:]:
            keys &= set(bn.private)
        pairs = [parse_config_key(k) for k in keys]
        return tuple(sorted(pairs, key=lambda p: (p[0], -1 if p[1] is None else p[1])))

    @property
    def width_list(self):
        """Sorted tuple of the widths with width-only private statistics (evaluable by ``set_width(w)``)."""
        return tuple(w for w, r in self.bn_configs if r is None)

    # ----------------------------------------------------------------- metadata
    def stage_channels(self):
        """Channels of the 4 stage outputs at the current width (list of int)."""
        return [active_channels(c, self.width, r, self.channel_divisor) for c, r in self._stage_rules]

    def extra_repr(self):
        return (super().extra_repr() + f', width={self.width}, resolution={self.resolution}, '
                f'width_range={self.width_range}')
