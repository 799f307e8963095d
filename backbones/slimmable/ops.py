"""Universally slimmable operators (US-Nets, Yu & Huang, ICCV 2019, Sec. 3; MutualNet, Yang et al. 2020).

A layer stores its weights at the maximum width; at width multiplier ``w`` it runs on the *first*
``active_channels(C, w, ratio) = make_divisible(C * w / ratio, 8) * ratio`` output channels and on as many
input channels as its input tensor has (the first ones).  ``ratio`` keeps expanded layers a multiple of
their expansion (MobileNet v2 hidden layers: 6; ResNet bottleneck mid layers: 0.25).

Batch normalisation (:class:`SlimmableBatchNorm2d`) shares its affine ``weight``/``bias`` (sliced like
the convolution) and keeps *private* running statistics per BN configuration ``(width, resolution)``
(US-Nets Sec. 3.3 "post-statistics"; MutualNet Sec. 3.1 calibrates them per width-resolution pair).  The
private statistics are plain ``nn.BatchNorm2d(affine=False)`` modules in a ``ModuleDict`` so that the BN
conversion helpers of the frameworks, which replace modules by ``isinstance`` (detectron2's
``FrozenBatchNorm2d.convert_frozen_batchnorm``, ``nn.SyncBatchNorm.convert_sync_batchnorm``, mmengine's
``revert_sync_batchnorm``), convert the statistics and leave a working model; the outer module is not a
``_BatchNorm`` and is never replaced.

Only torch is imported here.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['make_divisible', 'active_channels', 'config_key', 'parse_config_key', 'normalize_width',
           'SlimmableConv2d', 'SlimmableLinear', 'SlimmableBatchNorm2d', 'InputSlicedConv2d', 'WidthAware']

#: widths are quantised to this many decimals (so that 0.1 + 0.2 and 0.3 select the same statistics)
WIDTH_DECIMALS = 4


def make_divisible(v, divisor=8, min_value=None):
    """Round a channel count to a multiple of ``divisor`` (the TF-slim / MobileNet rule).

    Rounds ``v`` to the nearest multiple of ``divisor`` (not below ``min_value``) and adds one more
    ``divisor`` if that lost more than 10 % of ``v``.  Used by US-Nets and MutualNet for the active
    channels of every slimmable layer (reference §2.1, §3.1).

    Args:
        v (float): channel count before rounding (e.g. ``C * width``).
        divisor (int): the multiple (8 in US-Nets/MutualNet; MutualNet used 1 before July 2020).
        min_value (int | None): lower bound; ``None`` means ``divisor``.

    Returns:
        int: the rounded channel count.

    Raises:
        ValueError: ``divisor`` < 1.
    """
    if divisor < 1:
        raise ValueError(f'divisor must be a positive integer, got {divisor}')
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def active_channels(channels, width, ratio=1.0, divisor=8):
    """Active channels of a layer with ``channels`` (max width) at width multiplier ``width``.

    ``make_divisible(channels * width / ratio, divisor) * ratio`` (US-Nets ``USConv2d``, reference §2.1).

    Returns:
        int: number of leading channels the layer uses.
    """
    return int(round(make_divisible(channels * width / ratio, divisor) * ratio))


def normalize_width(width):
    """Width multiplier as a float rounded to :data:`WIDTH_DECIMALS` decimals.

    Raises:
        ValueError: not a real number.
    """
    try:
        return round(float(width), WIDTH_DECIMALS)
    except (TypeError, ValueError):
        raise ValueError(f'width multiplier must be a number, got {width!r}') from None


def config_key(width, resolution=None):
    """``ModuleDict`` key of the private statistics of ``(width, resolution)``.

    ``config_key(0.25) == 'w0p25'``, ``config_key(1.0, 224) == 'w1_r224'`` (no dots: ``ModuleDict`` keys
    may not contain them).
    """
    w = format(normalize_width(width), f'.{WIDTH_DECIMALS}f').rstrip('0').rstrip('.')
    key = 'w' + w.replace('.', 'p')
    if resolution is not None:
        key += f'_r{int(resolution)}'
    return key


def parse_config_key(key):
    """Inverse of :func:`config_key`: ``'w0p5_r128' -> (0.5, 128)``, ``'w1' -> (1.0, None)``.

    Raises:
        ValueError: not a key produced by :func:`config_key`.
    """
    try:
        if not key.startswith('w'):
            raise ValueError
        body, _, res = key[1:].partition('_r')
        return normalize_width(body.replace('p', '.')), (int(res) if res else None)
    except ValueError:
        raise ValueError(f'{key!r} is not a private-statistics key like "w0p5" or "w0p5_r224"') from None


class WidthAware:
    """Mixin of the modules whose behaviour depends on the model's width multiplier.

    The owning backbone calls :meth:`set_active` on every such module from ``set_width``.
    """

    def set_active(self, width, resolution=None):
        """Switch to width multiplier ``width`` (and BN statistics of ``resolution``)."""
        raise RuntimeError(f'{type(self).__name__} must override set_active')


class SlimmableConv2d(WidthAware, nn.Conv2d):
    """Universally slimmable convolution (US-Nets ``USConv2d``, Yu & Huang 2019, Sec. 3.1).

    Stores the max-width weight ``[C_out, C_in / groups, k, k]``.  At width ``w`` it uses
    ``weight[:active_channels(C_out, w, out_ratio), :x.shape[1]]``; a depthwise convolution uses
    ``weight[:x.shape[1]]`` with ``groups = x.shape[1]``.  The stem sets ``slim_out=True`` and gets a
    3-channel input, so only its output is slimmed; a layer with ``slim_out=False`` (MobileNet v2's
    1280-channel conv) slims only its input.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias: as ``nn.Conv2d``
            (max width).
        depthwise (bool): ``groups = in_channels = out_channels`` at every width.
        slim_out (bool): slim the output channels.
        out_ratio (float): ``ratio`` of the output channel rule.
        divisor (int): ``make_divisible`` divisor (8).

    Shapes:
        ``[N, c_in, H, W] -> [N, c_out(w), H', W']`` with ``c_in <= in_channels``.

    Raises:
        ValueError: a depthwise conv with ``in_channels != out_channels``; in forward, an input with more
            channels than ``in_channels``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=False,
                 depthwise=False, slim_out=True, out_ratio=1.0, divisor=8):
        if depthwise and in_channels != out_channels:
            raise ValueError(f'a depthwise slimmable conv needs in_channels == out_channels, got '
                             f'{in_channels} and {out_channels}')
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=in_channels if depthwise else 1, bias=bias)
        self.depthwise = depthwise
        self.slim_out = slim_out and not depthwise
        self.out_ratio = out_ratio
        self.divisor = divisor
        self.active_out = out_channels

    def set_active(self, width, resolution=None):
        """Cache the active output channels at ``width`` (resolution is irrelevant to a conv)."""
        self.active_out = (active_channels(self.out_channels, width, self.out_ratio, self.divisor)
                           if self.slim_out else self.out_channels)

    def forward(self, x):
        ci = x.shape[1]
        if ci > self.in_channels:
            raise ValueError(f'{type(self).__name__} built for at most {self.in_channels} input channels, '
                             f'got {ci}')
        if self.depthwise:
            w = self.weight if ci == self.out_channels else self.weight[:ci]
            b = None if self.bias is None else self.bias[:ci]
            return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, ci)
        co = self.active_out
        w = self.weight
        if co != self.out_channels or ci != self.in_channels:
            w = w[:co, :ci]
        b = None if self.bias is None else self.bias[:co]
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, 1)

    def extra_repr(self):
        return (super().extra_repr() + f', depthwise={self.depthwise}, slim_out={self.slim_out}, '
                f'out_ratio={self.out_ratio}, active_out={self.active_out}')


class SlimmableLinear(nn.Linear):
    """Linear layer slimmed at its input only (US-Nets ``USLinear`` of the classifier, Sec. 3.1).

    Uses ``weight[:, :x.shape[-1]]``; the first ``x.shape[-1]`` input features are the first channels of
    the (channel-major flattened) feature map, so it also serves VGG's ``C x 7 x 7`` flattened input.

    Shapes:
        ``[N, f_in] -> [N, out_features]`` with ``f_in <= in_features``.

    Raises:
        ValueError: more input features than ``in_features``.
    """

    def forward(self, x):
        fi = x.shape[-1]
        if fi > self.in_features:
            raise ValueError(f'SlimmableLinear built for at most {self.in_features} input features, got {fi}')
        w = self.weight if fi == self.in_features else self.weight[:, :fi]
        return F.linear(x, w, self.bias)


def _new_private_bn(num_features, eps, momentum, like):
    bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
    return bn.to(device=like.device, dtype=like.dtype)


class SlimmableBatchNorm2d(WidthAware, nn.Module):
    """Slimmable BN with shared (sliced) affine and private statistics per BN configuration.

    US-Nets (Yu & Huang 2019, Sec. 3.3) and MutualNet (Sec. 3.1): ``weight``/``bias`` of the max width are
    shared by all widths and sliced to the input's channel count; running mean/var are private per
    configuration ``(width, resolution)`` (``resolution=None``: one set per width, as US-Nets).  The
    private statistics live in ``self.private`` (a ``ModuleDict`` keyed by :func:`config_key`) as
    plain ``nn.BatchNorm2d(affine=False)`` modules, so framework BN conversions (FrozenBN, SyncBN,
    revert-SyncBN) convert them in place.

    Which statistics a forward uses:

    * the configuration has private statistics -> the private module's own mode decides, exactly like
      a BN: train mode normalises with batch statistics and updates its running statistics (momentum,
      or cumulative averaging when ``momentum=None``), eval mode uses them.  (So ``norm_eval``-style code
      that calls ``.eval()`` on every ``_BatchNorm`` works.)  A converted ``FrozenBatchNorm2d`` always
      uses its frozen statistics; a ``SyncBatchNorm`` in train mode runs its own (synchronised) forward.
    * no private statistics (an unlisted width) -> batch statistics in train mode (US-Nets); in eval mode
      a ``ValueError`` that names :func:`backbones.training.calibrate_bn`, unless a statistics-free
      probe is enabled (``probe=True``: mean 0 / var 1, only for counting MACs and shapes).

    Args:
        num_features (int): channels at max width.
        ratio (float): ``ratio`` of the channel rule (must equal that of the conv before it).
        divisor (int): ``make_divisible`` divisor.
        slim (bool): ``False`` for a layer whose channels do not change with width (statistics are still
            private per width, because its input distribution does change).
        eps, momentum: as ``nn.BatchNorm2d`` (for the private statistics).

    Shapes:
        ``[N, c, H, W] -> [N, c, H, W]``, ``c <= num_features``.

    Raises:
        ValueError: (forward) eval without statistics; channel count not matching the private statistics.
    """

    is_norm = True

    def __init__(self, num_features, ratio=1.0, divisor=8, slim=True, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = num_features
        self.ratio = ratio
        self.divisor = divisor
        self.slim = slim
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.private = nn.ModuleDict()
        self.width = 1.0
        self.resolution = None
        self.key = config_key(1.0)
        self.probe = False

    # ----------------------------------------------------------------- configuration
    def channels_at(self, width):
        """Channels of this layer at width multiplier ``width``."""
        return active_channels(self.num_features, width, self.ratio, self.divisor) if self.slim \
            else self.num_features

    def set_active(self, width, resolution=None):
        """Select the statistics of ``(width, resolution)`` for the following forwards."""
        self.width = normalize_width(width)
        self.resolution = resolution
        self.key = config_key(self.width, resolution)

    def add_config(self, width, resolution=None):
        """Create (if missing) private statistics for ``(width, resolution)``; returns the module."""
        key = config_key(width, resolution)
        if key not in self.private:
            c = self.channels_at(normalize_width(width))
            stats = _new_private_bn(c, self.eps, self.momentum, self.weight)
            self.private[key] = stats.train(self.training)  # same mode as its owner
        return self.private[key]

    def remove_config(self, width, resolution=None):
        """Drop the private statistics of ``(width, resolution)`` (no error if absent)."""
        key = config_key(width, resolution)
        if key in self.private:
            del self.private[key]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A checkpoint calibrated for more configurations than this model was built with: create their
        # private statistics so that a strict load keeps them (the shapes follow the channel rule).
        head = prefix + 'private.'
        for k in list(state_dict):
            if k.startswith(head):
                key = k[len(head):].split('.', 1)[0]
                if key not in self.private:
                    try:
                        w, r = parse_config_key(key)
                    except ValueError:
                        continue  # reported as an unexpected key by the normal loader
                    self.add_config(w, r)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ----------------------------------------------------------------- forward
    def _missing_stats_error(self):
        where = f'width {self.width}'
        if self.resolution is not None:
            where += f' at resolution {self.resolution}'
        have = ', '.join(sorted(self.private)) or 'none'
        return ValueError(
            f'no private BN statistics for {where} (stored: {have}). Evaluating a width needs its '
            f'post-statistics BN: run backbones.training.calibrate_bn(model, batches, width={self.width}'
            + ('' if self.resolution is None else f', resolution={self.resolution}')
            + ') first, or evaluate a width that has statistics (model.width_list / model.bn_configs).')

    def _uncalibrated_error(self, why):
        res = '' if self.resolution is None else f', resolution={self.resolution}'
        return ValueError(
            f'the BN statistics of width {self.width}{res} are not calibrated ({why}). Evaluating needs its '
            f'post-statistics BN: run backbones.training.calibrate_bn(model, batches, width={self.width}{res}) '
            f'(backbones.training.calibrate) first; the frameworks\' BNCalibrationHook / CALIBRATION and '
            f'tools/pretrain.py --evaluate do this')

    def mark_uncalibrated(self, why):
        """Mark every stored private statistics module as not usable for evaluation until it is re-estimated
        (:func:`backbones.training.reset_and_average` clears the mark); returns the config keys marked.

        Args:
            why (str): the reason, repeated in the error an evaluation raises.
        """
        for stats in self.private.values():
            stats.uncalibrated = why
        return sorted(self.private)

    def forward(self, x):
        c = x.shape[1]
        if c > self.num_features:
            raise ValueError(f'SlimmableBatchNorm2d built for at most {self.num_features} channels, got {c}')
        weight = self.weight if c == self.num_features else self.weight[:c]
        bias = self.bias if c == self.num_features else self.bias[:c]
        stats = self.private[self.key] if self.key in self.private else None
        if stats is not None and stats.__dict__.get('uncalibrated') and not self.probe:  # plain dict lookup
            if not self.training:
                raise self._uncalibrated_error(stats.uncalibrated)
            if stats.training and stats.track_running_stats:
                del stats.uncalibrated  # this run's training now owns the running averages
        if stats is None:
            if self.training:
                return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
            if self.probe:
                zeros = x.new_zeros(c)
                return F.batch_norm(x, zeros, zeros + 1, weight, bias, False, 0.0, self.eps)
            raise self._missing_stats_error()
        n = getattr(stats, 'num_features', c)
        if n != c:
            raise ValueError(f'private statistics {self.key!r} hold {n} channels but the input has {c}; '
                             f'the channel rule of this BN (ratio {self.ratio}) does not match the conv '
                             'before it')
        if isinstance(stats, _BatchNorm) and not (isinstance(stats, nn.SyncBatchNorm) and stats.training):
            return self._fused(x, stats, weight, bias)
        # FrozenBatchNorm2d, SyncBatchNorm in training, or any other statistics module: normalise with it,
        # then apply the shared affine.
        y = stats(x)
        return y * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)

    @staticmethod
    def _fused(x, bn, weight, bias):
        # Same semantics as nn.BatchNorm2d.forward of the private module, with the shared affine fused in.
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
        track = not bn.training or bn.track_running_stats
        return F.batch_norm(x, bn.running_mean if track else None, bn.running_var if track else None,
                            weight, bias, use_batch, factor, bn.eps)

    def static_bn(self, width=None, resolution=None):
        """A plain ``nn.BatchNorm2d`` equal (in eval mode) to this layer at ``(width, resolution)``.

        Args:
            width, resolution: the configuration; ``None`` width means the current one.

        Returns:
            nn.BatchNorm2d: sliced affine (folded with a converted FrozenBN's own affine, if any) and a copy
            of the private running statistics.

        Raises:
            ValueError: no private statistics for that configuration (names ``calibrate_bn``).
        """
        if width is None:
            width, resolution = self.width, self.resolution
        key = config_key(width, resolution)
        if key not in self.private:
            saved = (self.width, self.resolution, self.key)
            self.set_active(width, resolution)
            err = self._missing_stats_error()
            self.width, self.resolution, self.key = saved
            raise err
        stats = self.private[key]
        c = stats.num_features
        w = self.weight.detach()[:c].clone()
        b = self.bias.detach()[:c].clone()
        sw, sb = getattr(stats, 'weight', None), getattr(stats, 'bias', None)
        if sw is not None:  # FrozenBatchNorm2d keeps (1, 0) buffers after converting an affine-free BN
            b = sb.detach() * w + b
            w = sw.detach() * w
        bn = nn.BatchNorm2d(c, eps=stats.eps, momentum=getattr(stats, 'momentum', self.momentum))
        bn = bn.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            bn.weight.copy_(w)
            bn.bias.copy_(b)
            bn.running_mean.copy_(stats.running_mean)
            bn.running_var.copy_(stats.running_var)
            if getattr(stats, 'num_batches_tracked', None) is not None:
                bn.num_batches_tracked.copy_(stats.num_batches_tracked)
        return bn

    def extra_repr(self):
        return (f'{self.num_features}, ratio={self.ratio}, slim={self.slim}, eps={self.eps}, '
                f'momentum={self.momentum}, active={self.key}')


class InputSlicedConv2d(nn.Conv2d):
    """Convolution that accepts any number of leading input channels: uses ``weight[:, :x.shape[1]]``.

    For the first convolution of a neck shared across backbone widths (FPN lateral convs, ASPP / decode
    head input convs; MutualNet Sec. 4.3 shares the FPN neck among sub-networks), so one neck serves every
    width.  Only ``groups == 1``.

    Shapes:
        ``[N, c, H, W] -> [N, out_channels, H', W']``, ``c <= in_channels``.

    Raises:
        ValueError: ``groups != 1`` (construction) or an input with more than ``in_channels`` channels.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1:
            raise ValueError(f'InputSlicedConv2d supports groups=1 only, got groups={self.groups}')

    @classmethod
    def from_conv(cls, conv):
        """Wrap an existing ``nn.Conv2d`` (groups 1), sharing its weight and bias parameters.

        Raises:
            ValueError: not an ``nn.Conv2d`` with ``groups == 1``.
        """
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            raise ValueError(f'from_conv needs an nn.Conv2d with groups=1, got {conv!r}')
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new

    def forward(self, x):
        ci = x.shape[1]
        if ci == self.in_channels:
            return super().forward(x)
        if ci > self.in_channels:
            raise ValueError(f'InputSlicedConv2d built for at most {self.in_channels} input channels, '
                             f'got {ci}')
        return self._conv_forward(x, self.weight[:, :ci], self.bias)
