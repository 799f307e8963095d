"""The RS-Nets base class: resolution switching of a backbone with private BNs (RS-Nets Sec. 3.1, 4.1).

:class:`RSNet` holds the training resolutions and the private-BN selection (``set_resolution``,
``resolution_context``, the ``'nearest'`` / ``'explicit'`` rules of :meth:`RSNet.resolution_for_input`),
selects the private BN at each forward and runs every resolution for training (:meth:`RSNet.forward_parallel`).
The concrete networks are in :mod:`backbones.rsnet.architectures`.
"""
import contextlib
import numbers
import warnings

import torch
from torch import nn

from ..base import DynamicBackbone
from .private_bn import PrivateBatchNorm, ResolutionState

#: training resolutions of the paper (descending; Sec. 4.1)
DEFAULT_RESOLUTIONS = (224, 192, 160, 128, 96)
#: how the private BN is chosen when ``set_resolution`` was not called (see the :mod:`backbones.rsnet` docstring)
RESOLUTION_RULES = ('nearest', 'explicit')


def nearest_resolution(resolutions, size):
    """The trained resolution nearest to ``size`` (the one implementation of the ``'nearest'`` rule).

    Args:
        resolutions (Sequence[int]): trained resolutions (or detection scale buckets), pixels, any order.
        size (int): the input's shorter side (or the requested resolution), pixels.

    Returns:
        int: the element of ``resolutions`` with the smallest ``|r - size|``; ties go to the larger one.

    Raises:
        ValueError: ``resolutions`` is empty.

    Source: RS-Nets (Wang et al. 2020) test at trained resolutions only; the rule is dynscale's for inputs
    between them.
    """
    if not resolutions:
        raise ValueError('no trained resolutions to choose from')
    return min(resolutions, key=lambda r: (abs(int(r) - int(size)), -int(r)))


def _check_norm_layer(norm_layer):
    if norm_layer is None:
        return nn.BatchNorm2d
    if isinstance(norm_layer, dict) or not callable(norm_layer):
        raise ValueError('norm_layer must be a callable C -> norm module (e.g. nn.BatchNorm2d, '
                         f'nn.SyncBatchNorm, lambda c: nn.GroupNorm(32, c)); got {norm_layer!r}. Framework '
                         "configs such as dict(type='SyncBN') are translated by the plugins/ adapters")
    return norm_layer


def _check_resolutions(resolutions):
    try:
        res = tuple(resolutions)
    except TypeError:
        res = (resolutions,)
    if not res or any(isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 32 for r in res):
        raise ValueError('resolutions must be a non-empty sequence of integers >= 32, e.g. '
                         f'{DEFAULT_RESOLUTIONS}; got {resolutions!r}')
    res = tuple(int(r) for r in res)
    if any(a <= b for a, b in zip(res, res[1:])):
        raise ValueError('resolutions must be distinct and in descending order (the MRED teacher order), '
                         f'e.g. {DEFAULT_RESOLUTIONS}; got {res}; use '
                         f'{tuple(sorted(set(res), reverse=True))}')
    return res


# --------------------------------------------------------------------------------------------- base class
class RSNet(DynamicBackbone):
    """Resolution switching for a :class:`~backbones.base.DynamicBackbone` with private BNs.

    Subclasses build their layers with :class:`PrivateBatchNorm` (via :meth:`private_bn`) after calling
    :meth:`_init_resolutions`.

    Attributes:
        resolutions (tuple[int]): training resolutions, descending; ``resolutions[i]`` owns private BN i.
        resolution (int): the resolution whose private BN is selected now (updated by
            :meth:`set_resolution` and by the resolution rule at every forward).
        explicit_resolution (int | None): the explicit choice, or None when the rule decides.
        resolution_rule (str): ``'nearest'`` or ``'explicit'`` (:mod:`backbones.rsnet` docstring).
    """

    family = 'rsnet'

    def _init_resolutions(self, resolutions, resolution_rule, norm_layer):
        self.resolutions = _check_resolutions(resolutions)
        self.resolution_rule = resolution_rule
        self._norm_layer = _check_norm_layer(norm_layer)
        self._explicit = None
        self._res_state = ResolutionState(0)

    def private_bn(self, channels):
        """A :class:`PrivateBatchNorm` of ``channels`` sharing this network's resolution selection (for
        necks/heads that should switch with the backbone)."""
        return PrivateBatchNorm(channels, len(self.resolutions), self._norm_layer, self._res_state)

    # ------------------------------------------------------------------ resolution API
    @property
    def resolution_rule(self):
        """``'nearest'`` or ``'explicit'``; setting another value raises ValueError."""
        return self._resolution_rule

    @resolution_rule.setter
    def resolution_rule(self, rule):
        if rule not in RESOLUTION_RULES:
            raise ValueError(f'resolution_rule must be one of {RESOLUTION_RULES}, got {rule!r}')
        self._resolution_rule = rule

    @property
    def resolution(self):
        """Training resolution whose private BN is currently selected (int)."""
        return self.resolutions[self._res_state.index]

    @property
    def explicit_resolution(self):
        """The resolution chosen by :meth:`set_resolution`, or None when the rule decides per input."""
        return self._explicit

    def _apply_index(self, index):
        self._res_state.index = index

    def set_resolution(self, resolution):
        """Select the private BN of training resolution ``resolution`` for every later forward.

        Args:
            resolution (int | None): one of :attr:`resolutions`; ``None`` returns to the resolution rule.

        Raises:
            ValueError: ``resolution`` is not a trained resolution (the message lists them).
        """
        if resolution is None:
            self._explicit = None
            return self
        if isinstance(resolution, bool) or resolution not in self.resolutions:
            raise ValueError(f'resolution {resolution!r} is not a trained resolution of this RS-Net; '
                             f'choose one of {self.resolutions} (or set_resolution(None) to use the '
                             f'{self.resolution_rule!r} rule)')
        index = self.resolutions.index(resolution)
        self._explicit = self.resolutions[index]
        self._apply_index(index)
        return self

    def set_resolution_index(self, index):
        """Select private BN ``index`` (0 = largest resolution), i.e. ``set_resolution(resolutions[index])``.

        Raises:
            ValueError: ``index`` not an integer in ``0..len(resolutions)-1`` (the message lists them).
        """
        n = len(self.resolutions)
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < n:
            raise ValueError(f'resolution index {index!r} out of range: valid indices are 0..{n - 1} for '
                             f'resolutions {self.resolutions}')
        return self.set_resolution(self.resolutions[int(index)])

    @contextlib.contextmanager
    def resolution_context(self, resolution):
        """``with model.resolution_context(r):`` selects BN ``r`` and restores the previous choice after.

        Raises:
            ValueError: as :meth:`set_resolution`.
        """
        saved = (self._explicit, self._res_state.index)
        self.set_resolution(resolution)
        try:
            yield self
        finally:
            self._explicit = saved[0]
            self._apply_index(saved[1])

    def resolution_for_input(self, size):
        """Training resolution whose private BN a forward on an input of ``size`` would use.

        Args:
            size (tuple[int, int] | torch.Size): ``(H, W)`` of the input, or a full ``[N, C, H, W]`` shape.

        Returns:
            int: the explicit choice if :meth:`set_resolution` was called, otherwise the resolution given by
            :attr:`resolution_rule` for the shorter side ``min(H, W)``.

        Raises:
            ValueError: rule ``'explicit'``, no explicit choice and ``min(H, W)`` not in :attr:`resolutions`.
        """
        if self._explicit is not None:
            return self._explicit
        h, w = tuple(size)[-2:]
        short = min(int(h), int(w))
        if short in self.resolutions:
            return short
        if self._resolution_rule == 'explicit':
            raise ValueError(f'input {int(h)}x{int(w)} (shorter side {short}) is not a trained resolution '
                             f'{self.resolutions} and resolution_rule is "explicit": call '
                             f'model.set_resolution(r) with r in {self.resolutions}, resize the input, or '
                             f'build the model with resolution_rule="nearest"')
        return nearest_resolution(self.resolutions, short)

    # ------------------------------------------------------------------ forward
    def forward_stages(self, x):
        """Stage outputs with the private BN chosen by :meth:`resolution_for_input`.

        Args:
            x (Tensor): ``[N, 3, H, W]``.

        Returns:
            OrderedDict[str, Tensor]: ``'stage{i+1}' -> [N, C_i, ceil(H/s_i), ceil(W/s_i)]``.

        Raises:
            ValueError: wrong channel count, or (rule ``'explicit'``) an input size that is not a trained
            resolution without :meth:`set_resolution`.
        """
        return self._forward_stages(x)[0]

    def _forward_stages(self, x, all_stages=False):
        """Select the private BN of :meth:`resolution_for_input`, then run the stages (``forward`` and
        ``forward_stages`` both come here); returns ``(features, last stage output)``."""
        self.check_input(x)
        if torch.jit.is_tracing():
            # the traced graph bakes in the private BN chosen for this input size (trace once per resolution)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', torch.jit.TracerWarning)
                resolution = self.resolution_for_input(x.shape)
        else:
            resolution = self.resolution_for_input(x.shape)
        self._apply_index(self.resolutions.index(resolution))
        return super()._forward_stages(x, all_stages=all_stages)

    def forward_parallel(self, images):
        """Run every training resolution: image i goes through the shared weights with private BN i.

        This is the training forward of RS-Nets (reference Sec. 4.1 ``ModuleParallel``): the branches are
        computed one after the other, which gives the same outputs and gradients as the authors' list
        forward (BN statistics are per branch either way).

        Args:
            images (list[Tensor]): ``len(resolutions)`` tensors ``[N, 3, H_i, W_i]``, ordered like
                :attr:`resolutions` (descending size; usually one shared crop resized to each resolution).

        Returns:
            list: per resolution, logits ``[N, num_classes]``, or the ``forward_stages`` dict when the
            model was built with ``num_classes=0``.

        Raises:
            ValueError: wrong number of images, or images not in descending order of size.
        """
        images = list(images)
        if len(images) != len(self.resolutions):
            raise ValueError(f'forward_parallel expects {len(self.resolutions)} images, one per training '
                             f'resolution {self.resolutions} in that order; got {len(images)}')
        shorter = [min(x.shape[-2:]) for x in images]
        if any(a < b for a, b in zip(shorter, shorter[1:])):
            raise ValueError(f'forward_parallel images must be ordered like resolutions {self.resolutions} '
                             f'(descending size); got shorter sides {shorter}')
        outs = []
        for res, x in zip(self.resolutions, images):
            with self.resolution_context(res):
                outs.append(self(x))
        return outs

    def extra_repr(self):
        return (f'resolutions={self.resolutions}, resolution_rule={self._resolution_rule!r}, '
                + super().extra_repr())
