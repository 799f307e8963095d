"""RS-Nets: Resolution Switchable Networks (Wang, Sun, Li & Yao, ECCV 2020).

One network serves several input resolutions: every convolution and the classifier are **shared**,
every normalisation layer is replaced by a **private BN** per training resolution (private affine
gamma/beta *and* private running statistics, paper Sec. 3.1 "Private BNs"; reference
``official_implementations.md`` Sec. 4.1).  Training feeds the same image at every resolution
(:meth:`RSNet.forward_parallel`) and combines the logits with the multi-resolution ensemble
distillation loss MRED (paper Sec. 3.2, eq. 3-6; :class:`MREDLoss`, :func:`mred_loss`).

Variants (registered in the ``'rsnet'`` family): ``rs_resnet18``, ``rs_resnet50``, ``rs_resnet101``
(torchvision ResNet v1.5: stride on the 3x3 conv, Kaiming-normal fan_out init, BN 1/0, default fc init)
and ``rs_mobilenet_v2`` (standard MobileNet v2, last 1x1 conv 1280, conv init normal(0, sqrt(2/n)) with
n = k*k*out_channels, Linear normal(0, 0.01)).  ``resolutions=(r,)`` gives a plain network (the
"individual model" / plain ResNet-101 baselines).

Which private BN is used
------------------------
``model.set_resolution(r)`` (or ``with model.resolution_context(r):``) selects the BN of training
resolution ``r`` explicitly; this choice always wins.  Without an explicit choice the
``resolution_rule`` decides from the input of each forward:

* ``'nearest'`` (default; what dense prediction needs, where inputs are rarely a trained size): the
  trained resolution nearest to the input's **shorter side** ``min(H, W)`` in absolute pixels; a tie
  goes to the larger resolution.  A 512x1024 crop with the default resolutions uses the 224 BN; a
  64x64 image uses the 96 BN.
* ``'explicit'``: the input's shorter side must equal a trained resolution, otherwise the forward
  raises ValueError naming the trained resolutions (never silently the wrong BN).

Framework BN conversions
------------------------
The private BNs of one layer are a ``nn.ModuleList`` (``PrivateBatchNorm.bns``) of plain norm modules
(``nn.BatchNorm2d`` by default, or whatever ``norm_layer(C)`` builds).  detectron2's
``FrozenBatchNorm2d.convert_frozen_batchnorm``, ``nn.SyncBatchNorm.convert_sync_batchnorm`` and
mmengine's ``revert_sync_batchnorm`` replace modules by ``isinstance`` inside that list, and the
selector indexes into the (converted) list, so every conversion keeps the private statistics.

``torch.jit.trace`` / ``torch.export`` record the private BN selected for the example input as a
constant: trace once per resolution.

Input normalisation: the authors' PyTorch recipe feeds un-normalised [0, 1] images (reference Sec.
4.3); the ``pixel_mean``/``pixel_std`` attributes keep the torchvision convention of the base class and
describe whatever checkpoint is loaded (see ``backbones.checkpoint`` metadata).
"""
import contextlib
import math
import numbers
import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from ._registry import register_model
from .base import DynamicBackbone, classifier_head, output_stride_dilations

__all__ = ['DEFAULT_RESOLUTIONS', 'RESOLUTION_RULES', 'KD_TYPES', 'ResolutionState', 'PrivateBatchNorm',
           'RSNet', 'RSResNet',
           'RSMobileNetV2', 'MREDLoss', 'mred_loss', 'mred_kd_weight', 'resize_logits',
           'expand_private_bn_state_dict', 'rs_resnet18', 'rs_resnet50', 'rs_resnet101', 'rs_mobilenet_v2']

#: training resolutions of the paper (descending; Sec. 4.1)
DEFAULT_RESOLUTIONS = (224, 192, 160, 128, 96)
#: how the private BN is chosen when ``set_resolution`` was not called (see module docstring)
RESOLUTION_RULES = ('nearest', 'explicit')
#: MRED distillation variants: full MRED (top-down), vanilla MRED (ensemble only), no distillation
KD_TYPES = ('ens_topdown', 'ens', None)


# --------------------------------------------------------------------------------------------- private BN
class ResolutionState:
    """Index of the selected private BN, shared by every :class:`PrivateBatchNorm` of one network.

    One plain Python object (not a module, not in the state dict): switching resolution is O(1) whatever
    the depth, and ``copy.deepcopy`` / ``nn.DataParallel`` replicas keep the sharing.
    """

    __slots__ = ('index',)

    def __init__(self, index=0):
        self.index = index


class PrivateBatchNorm(nn.Module):
    """Private BN: one norm layer per training resolution, selected by ``index`` (RS-Nets Sec. 3.1).

    Args:
        num_features (int): channels C.
        num_resolutions (int): number of private BNs (one per training resolution).
        norm_layer (callable): ``C -> nn.Module``; default ``nn.BatchNorm2d``.
        state (ResolutionState | None): the selection shared with the rest of the network (a private
            one when None).

    Shapes: ``[N, C, H, W] -> [N, C, H, W]`` through ``bns[index]``.

    ``index`` reads the shared :class:`ResolutionState` set by :meth:`RSNet.set_resolution` / the
    resolution rule; the module survives the framework conversions, which only replace entries of ``bns``.
    """

    def __init__(self, num_features, num_resolutions, norm_layer=nn.BatchNorm2d, state=None):
        super().__init__()
        self.num_features = num_features
        self.bns = nn.ModuleList(norm_layer(num_features) for _ in range(num_resolutions))
        self.state = state if state is not None else ResolutionState()

    @property
    def index(self):
        """Index into ``bns`` of the selected resolution (int)."""
        return self.state.index

    def forward(self, x):
        """Normalise ``x`` ``[N, C, H, W]`` with the private BN of the selected resolution."""
        return self.bns[self.state.index](x)

    def extra_repr(self):
        return f'num_features={self.num_features}, num_resolutions={len(self.bns)}'


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

    Subclasses build their layers with :class:`PrivateBatchNorm` (via :meth:`_bn`) after calling
    :meth:`_init_resolutions`.

    Attributes:
        resolutions (tuple[int]): training resolutions, descending; ``resolutions[i]`` owns private BN i.
        resolution (int): the resolution whose private BN is selected now (updated by
            :meth:`set_resolution` and by the resolution rule at every forward).
        explicit_resolution (int | None): the explicit choice, or None when the rule decides.
        resolution_rule (str): ``'nearest'`` or ``'explicit'`` (module docstring).
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

    _bn = private_bn

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
        # nearest in absolute pixels; ties go to the larger resolution (resolutions are descending)
        return min(self.resolutions, key=lambda r: abs(r - short))

    # ------------------------------------------------------------------ forward
    def forward_features(self, x):
        """Stage outputs with the private BN chosen by :meth:`resolution_for_input`.

        Args:
            x (Tensor): ``[N, 3, H, W]``.

        Returns:
            OrderedDict[str, Tensor]: ``'stage{i+1}' -> [N, C_i, ceil(H/s_i), ceil(W/s_i)]``.

        Raises:
            ValueError: wrong channel count, or (rule ``'explicit'``) an input size that is not a trained
            resolution without :meth:`set_resolution`.
        """
        self.check_input(x)
        if torch.jit.is_tracing():
            # the traced graph bakes in the private BN chosen for this input size (trace once per resolution)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', torch.jit.TracerWarning)
                resolution = self.resolution_for_input(x.shape)
        else:
            resolution = self.resolution_for_input(x.shape)
        self._apply_index(self.resolutions.index(resolution))
        return super().forward_features(x)

    def forward_parallel(self, images):
        """Run every training resolution: image i goes through the shared weights with private BN i.

        This is the training forward of RS-Nets (reference Sec. 4.1 ``ModuleParallel``): the branches are
        computed one after the other, which gives the same outputs and gradients as the authors' list
        forward (BN statistics are per branch either way).

        Args:
            images (list[Tensor]): ``len(resolutions)`` tensors ``[N, 3, H_i, W_i]``, ordered like
                :attr:`resolutions` (descending size; usually one shared crop resized to each resolution).

        Returns:
            list: per resolution, logits ``[N, num_classes]``, or the ``forward_features`` dict when the
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


def _forward_block(block, x):
    """Run ``block._inner_forward`` with gradient checkpointing when ``block.with_cp`` and training.

    The private BN index is captured now and re-applied during the backward recomputation (then
    restored), so :meth:`RSNet.forward_parallel` (several resolutions before one backward) recomputes
    each branch with its own BN.  As in mmcv's ``with_cp``, BN running statistics are updated again by
    the recomputation.
    """
    if block.with_cp and block.training and torch.is_grad_enabled():
        state = block.res_state
        index = state.index

        def run(inp):
            saved, state.index = state.index, index
            try:
                return block._inner_forward(inp)
            finally:
                state.index = saved

        return cp.checkpoint(run, x, use_reentrant=False)
    return block._inner_forward(x)


# --------------------------------------------------------------------------------------------- ResNet
def _conv3x3(cin, cout, stride=1, dilation=1, groups=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups,
                     bias=False)


def _conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class RSBasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with private BNs; ``[N, inplanes, H, W] -> [N, planes, H/s, W/s]``.

    Both 3x3 convs use ``dilation`` (atrous conversion of a stage, DeepLabV3 Sec. 3.1).
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride, dilation, downsample, bn, with_cp=False):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = bn(planes)
        self.downsample = downsample
        self.with_cp = with_cp

    @property
    def res_state(self):
        """The :class:`ResolutionState` of this unit's private BNs."""
        return self.bn1.state

    def _inner_forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def forward(self, x):
        """``[N, inplanes, H, W] -> [N, planes, ceil(H/stride), ceil(W/stride)]``."""
        return _forward_block(self, x)


class RSBottleneck(nn.Module):
    """ResNet v1.5 bottleneck (1x1, 3x3 with the stride, 1x1 x4) with private BNs."""

    expansion = 4

    def __init__(self, inplanes, planes, stride, dilation, downsample, bn, with_cp=False):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = bn(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = bn(planes)
        self.conv3 = _conv1x1(planes, planes * 4)
        self.bn3 = bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_cp = with_cp

    @property
    def res_state(self):
        """The :class:`ResolutionState` of this unit's private BNs."""
        return self.bn1.state

    def _inner_forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def forward(self, x):
        """``[N, inplanes, H, W] -> [N, 4*planes, ceil(H/stride), ceil(W/stride)]``."""
        return _forward_block(self, x)


class RSResNet(RSNet):
    """RS-ResNet: torchvision ResNet v1.5 with shared convs/fc and a private BN per resolution.

    Source: RS-Nets (Wang et al. 2020) Sec. 3.1; reference ``official_implementations.md`` Sec. 4.1
    (``ParallelResNet``).  Stem: 7x7/2 conv, private BN, ReLU, 3x3/2 max-pool (stride 4); stages
    ``layer1..layer4`` at strides 4, 8, 16, 32 (output stride 32).

    Args:
        block (type): :class:`RSBasicBlock` or :class:`RSBottleneck`.
        layers (tuple[int]): units per stage.
        num_classes (int): classifier outputs; 0 drops the head (features only).
        resolutions (tuple[int]): training resolutions, descending (one private BN each).
        resolution_rule (str): ``'nearest'`` (default) or ``'explicit'``; see the module docstring.
        out_indices, frozen_stages, norm_eval: see :class:`~backbones.base.DynamicBackbone`.
        output_stride (int): 32, 16 or 8 (stride of stages 4 / 3-4 replaced by dilation 2 / 2, 4).
        multi_grid (tuple[int] | None): per-unit dilation multipliers of stage 4 (DeepLabV3), one per unit.
        norm_layer (callable | None): ``C -> norm module`` used for every private BN (default BatchNorm2d).
        with_cp (bool): gradient checkpointing of every residual unit while training.
        zero_init_residual (bool): zero-initialise the last BN gamma of each unit (torchvision option).

    Raises:
        ValueError: bad resolutions / rule / output stride / multi_grid length / norm_layer.
    """

    def __init__(self, block, layers, num_classes=1000, resolutions=DEFAULT_RESOLUTIONS,
                 resolution_rule='nearest', out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False,
                 output_stride=32, multi_grid=None, norm_layer=None, with_cp=False, zero_init_residual=False):
        super().__init__()
        self._init_resolutions(resolutions, resolution_rule, norm_layer)
        if multi_grid is not None and len(tuple(multi_grid)) != layers[3]:
            raise ValueError(f'multi_grid must have one entry per unit of the last stage ({layers[3]}), '
                             f'e.g. {(1, 2, 4)[:layers[3]] if layers[3] <= 3 else (1,) * layers[3]}; '
                             f'got {multi_grid}')
        multi_grid = tuple(multi_grid or (1,) * layers[3])
        strides, dilations, grid = output_stride_dilations(output_stride, multi_grid)
        self.output_stride = output_stride
        self.with_cp = with_cp
        self.stem = nn.Sequential(OrderedDict([
            ('conv1', nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)),
            ('bn1', self._bn(64)),
            ('relu', nn.ReLU(inplace=True)),
            ('maxpool', nn.MaxPool2d(3, stride=2, padding=1)),
        ]))
        self.inplanes = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            unit_dil = grid if i == 3 else (dilations[i],) * n
            stages.append(self._make_stage(block, planes, n, strides[i], unit_dil, with_cp))
        self.stages = nn.ModuleList(stages)
        del self.inplanes
        self._stage_channels = [p * block.expansion for p in (64, 128, 256, 512)]
        s, self._stage_strides = 4, []
        for st in strides:
            s *= st
            self._stage_strides.append(s)
        self.head = classifier_head(512 * block.expansion, num_classes)
        self.num_classes = num_classes
        self._init_weights(zero_init_residual)
        self._apply_index(0)
        self._init_dense(out_indices, frozen_stages, norm_eval)

    def _make_stage(self, block, planes, n, stride, unit_dilations, with_cp):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       self._bn(planes * block.expansion))
        units = [block(self.inplanes, planes, stride, unit_dilations[0], downsample, self._bn, with_cp)]
        self.inplanes = planes * block.expansion
        units += [block(self.inplanes, planes, 1, unit_dilations[j], None, self._bn, with_cp)
                  for j in range(1, n)]
        return nn.Sequential(*units)

    def _init_weights(self, zero_init_residual):
        # torchvision ResNet init (reference Sec. 4.1): Kaiming-normal fan_out for convs, norm 1/0, fc default
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, PrivateBatchNorm):
                for bn in m.bns:
                    if getattr(bn, 'weight', None) is not None:
                        nn.init.ones_(bn.weight)
                        nn.init.zeros_(bn.bias)
        if zero_init_residual:
            for m in self.modules():
                last = getattr(m, 'bn3', None) if isinstance(m, RSBottleneck) else (
                    getattr(m, 'bn2', None) if isinstance(m, RSBasicBlock) else None)
                if last is not None:
                    for bn in last.bns:
                        if getattr(bn, 'weight', None) is not None:
                            nn.init.zeros_(bn.weight)


# --------------------------------------------------------------------------------------------- MobileNet v2
class RSInvertedResidual(nn.Module):
    """MobileNet v2 inverted residual (expand 1x1, depthwise 3x3, project 1x1) with private BNs.

    ``[N, cin, H, W] -> [N, cout, ceil(H/stride), ceil(W/stride)]``; identity shortcut when stride 1 and
    ``cin == cout`` (Sandler et al. 2018, Table 1/2).
    """

    def __init__(self, cin, cout, stride, expand_ratio, dilation, bn, with_cp=False):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), bn(hidden), nn.ReLU6(inplace=True)]
        layers += [_conv3x3(hidden, hidden, stride, dilation, groups=hidden), bn(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), bn(cout)]
        self.conv = nn.Sequential(*layers)
        self.with_cp = with_cp

    @property
    def res_state(self):
        """The :class:`ResolutionState` of this unit's private BNs."""
        return self.conv[1].state

    def _inner_forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res_connect else out

    def forward(self, x):
        """``[N, cin, H, W] -> [N, cout, H', W']``."""
        return _forward_block(self, x)


class RSMobileNetV2(RSNet):
    """RS-MobileNet v2: MobileNet v2 (width 1.0) with shared convs/fc and a private BN per resolution.

    Source: RS-Nets Sec. 3.1/4.1; reference Sec. 4.1 (``ParallelMobileNetV2``, the standard config
    t,c,n,s = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1), last conv
    1280).  Grouped into the four output strides of the base class: stem = 3x3/2 conv + the 16- and
    first 24-channel units (stride 4); stage1 = the second 24-channel unit (24 ch, stride 4); stage2 =
    32-channel units (stride 8); stage3 = 64- and 96-channel units (stride 16); stage4 = 160- and
    320-channel units (stride 32).  The 1x1 conv to 1280 belongs to the classification head (dropped with
    ``num_classes=0``, as in MMSeg's MobileNetV2 whose last feature has 320 channels).

    Args:
        num_classes, resolutions, resolution_rule, out_indices, frozen_stages, norm_eval, norm_layer,
        with_cp: as :class:`RSResNet`.
        output_stride (int): 32, 16 or 8 (the stride-2 depthwise convs of stage 4 / stages 3-4 become
            dilated).
        multi_grid: not defined for MobileNet v2; must be None.

    Raises:
        ValueError: bad resolutions / rule / output stride / norm_layer, or ``multi_grid`` given.
    """

    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))
    LAST_CHANNEL = 1280

    def __init__(self, num_classes=1000, resolutions=DEFAULT_RESOLUTIONS, resolution_rule='nearest',
                 out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False, output_stride=32,
                 multi_grid=None, norm_layer=None, with_cp=False):
        super().__init__()
        self._init_resolutions(resolutions, resolution_rule, norm_layer)
        if multi_grid is not None:
            raise ValueError('multi_grid is defined for the ResNet variants only; use multi_grid=None for '
                             'rs_mobilenet_v2')
        strides, dilations, _ = output_stride_dilations(output_stride)
        self.output_stride = output_stride
        self.with_cp = with_cp
        # flatten the config into units with (cin, cout, stride, t), then group by output stride
        units, cin = [], 32
        for t, c, n, s in self.CONFIG:
            for j in range(n):
                units.append((cin, c, s if j == 0 else 1, t))
                cin = c
        # unit indices: 0 (16), 1-2 (24), 3-5 (32), 6-9 (64), 10-12 (96), 13-15 (160), 16 (320)
        groups = {'stem': units[0:2], 0: units[2:3], 1: units[3:6], 2: units[6:13], 3: units[13:17]}
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), self._bn(32), nn.ReLU6(inplace=True),
            *[RSInvertedResidual(a, b, s, t, 1, self._bn, with_cp) for a, b, s, t in groups['stem']])
        stages = []
        for i in range(4):
            blocks = []
            for j, (a, b, s, t) in enumerate(groups[i]):
                if j == 0 and s == 2:
                    s = strides[i]  # 1 when this stage is dilated (output stride 16/8)
                # every unit of a dilated stage uses its dilation (as MMSeg's MobileNetV2 and ResNet)
                blocks.append(RSInvertedResidual(a, b, s, t, dilations[i], self._bn, with_cp))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self._stage_channels = [24, 32, 96, 320]
        s, self._stage_strides = 4, []
        for st in strides:
            s *= st
            self._stage_strides.append(s)
        if num_classes:
            self.head = nn.Sequential(
                nn.Conv2d(320, self.LAST_CHANNEL, 1, bias=False), self._bn(self.LAST_CHANNEL),
                nn.ReLU6(inplace=True),
                *classifier_head(self.LAST_CHANNEL, num_classes))
        else:
            self.head = None
        self.num_classes = num_classes
        self._init_weights()
        self._apply_index(0)
        self._init_dense(out_indices, frozen_stages, norm_eval)

    def _init_weights(self):
        # tonylins MobileNet v2 init (reference Sec. 4.1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, PrivateBatchNorm):
                for bn in m.bns:
                    if getattr(bn, 'weight', None) is not None:
                        nn.init.ones_(bn.weight)
                        nn.init.zeros_(bn.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------- factories
def _build(cls, variant, *args, **kwargs):
    model = cls(*args, **kwargs)
    model.variant = variant
    return model


@register_model('rsnet')
def rs_resnet18(**kwargs):
    """RS-ResNet-18 (BasicBlock, [2, 2, 2, 2]); 11.69M shared params + 9.6k per extra private BN set,
    1.814 GMACs at 224 (reference Sec. 4.4).  kwargs: see :class:`RSResNet`."""
    return _build(RSResNet, 'rs_resnet18', RSBasicBlock, (2, 2, 2, 2), **kwargs)


@register_model('rsnet')
def rs_resnet50(**kwargs):
    """RS-ResNet-50 (Bottleneck v1.5, [3, 4, 6, 3]); 25.56M shared params, 4.089 GMACs at 224 (paper
    4.14G incl. element-wise ops, reference Sec. 4.4).  kwargs: see :class:`RSResNet`."""
    return _build(RSResNet, 'rs_resnet50', RSBottleneck, (3, 4, 6, 3), **kwargs)


@register_model('rsnet')
def rs_resnet101(**kwargs):
    """RS-ResNet-101 (Bottleneck v1.5, [3, 4, 23, 3]); the RefineNet NYUDv2 backbone of the supplementary
    material (resolutions (352, 224, 96)); ``resolutions=(r,)`` is the plain ResNet-101.  kwargs: see
    :class:`RSResNet`."""
    return _build(RSResNet, 'rs_resnet101', RSBottleneck, (3, 4, 23, 3), **kwargs)


@register_model('rsnet')
def rs_mobilenet_v2(**kwargs):
    """RS-MobileNet v2 (width 1.0, last conv 1280); 3.505M shared params, 0.301 GMACs at 224 (reference
    Sec. 4.4).  kwargs: see :class:`RSMobileNetV2`."""
    return _build(RSMobileNetV2, 'rs_mobilenet_v2', **kwargs)


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


def expand_private_bn_state_dict(state_dict, model):
    """Map a checkpoint with fewer private BNs (e.g. a plain ``resolutions=(r,)`` RS-Net) onto ``model``.

    Every key ``P.bns.{i}.S`` of ``model`` missing from ``state_dict`` is filled from ``P.bns.0.S`` (the
    single private BN of the source) or from ``P.S`` (a plain BN layout), so each private BN starts from
    the same statistics and affine.  Other keys are copied unchanged.

    Returns:
        dict: a new state dict for ``model.load_state_dict``.
    """
    out = dict(state_dict)
    for key in model.state_dict():
        if key in out or '.bns.' not in key:
            continue
        prefix, rest = key.split('.bns.', 1)
        suffix = rest.split('.', 1)[1] if '.' in rest else ''
        for src in (f'{prefix}.bns.0.{suffix}', f'{prefix}.{suffix}'):
            if src in state_dict:
                out[key] = state_dict[src].clone()
                break
    return out
