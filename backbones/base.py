"""Common interface of every dynscale backbone.

A backbone is ``stem`` followed by four ``stages`` (ResNet's res2..res5 / C2..C5; MobileNet and VGG
are grouped into the same four output strides 4, 8, 16, 32) and an optional classification head.
This mirrors timm's ``feature_info`` and MMSeg's ResNet (``out_indices``, ``frozen_stages``,
``norm_eval``) so that the adapters in ``plugins/`` are thin.
"""
from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn


class StageSpec(NamedTuple):
    """Metadata of one stage output: ``name`` ('stage1'..'stage4'), ``channels`` at the
    *current* width, ``stride`` in input pixels (4, 8, 16, 32 at output stride 32)."""
    name: str
    channels: int
    stride: int


def output_stride_dilations(output_stride, multi_grid=(1, 1, 1)):
    """Strides/dilations of stages 1..4 for an output stride (DeepLabV3, Chen et al. 2017, Sec. 3).

    Args:
        output_stride (int): 32, 16 or 8.
        multi_grid (tuple[int]): per-unit dilation multipliers of the last stage (e.g. (1, 2, 4)).

    Returns:
        tuple: ``(strides, dilations, last_stage_unit_dilations)``; ``strides`` and ``dilations`` are
        4-tuples for stages 1..4; the last element is a tuple of per-unit dilation rates of stage 4
        (its length follows ``multi_grid``).

    Raises:
        ValueError: output stride not in {8, 16, 32}.
    """
    if output_stride == 32:
        strides, dilations = (1, 2, 2, 2), (1, 1, 1, 1)
    elif output_stride == 16:
        strides, dilations = (1, 2, 2, 1), (1, 1, 1, 2)
    elif output_stride == 8:
        strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
    else:
        raise ValueError(f'output_stride must be 32, 16 or 8, got {output_stride!r}')
    grid = tuple(dilations[3] * m for m in multi_grid)
    return strides, dilations, grid


class DynamicBackbone(nn.Module):
    """Base class: ``stem`` + ``stages`` (4) + optional ``head`` with dense-prediction options.

    Subclasses build ``self.stem`` (``[N,3,H,W] -> [N,C0,H/4,W/4]`` at output stride 32) and
    ``self.stages`` (``nn.ModuleList`` of 4) and ``self.head`` (``[N,C4,h,w] -> [N,num_classes]``
    logits, or ``None`` when ``num_classes == 0``), set ``self._stage_channels`` (full-width channels)
    and ``self._stage_strides``, then call :meth:`_init_dense`.

    Args:
        out_indices (tuple[int]): which stages (0..3) ``forward_stages`` returns.
        frozen_stages (int): -1 freezes nothing; 0 freezes the stem; k freezes stem and stages 0..k-1
            (``eval()`` + ``requires_grad=False``), re-applied by :meth:`train`.
        norm_eval (bool): keep every normalisation layer in eval mode while training (fine-tuning with
            small batches), re-applied by :meth:`train`.

    Raises:
        ValueError: an ``out_indices`` entry outside 0..3 or ``frozen_stages`` outside -1..4.
    """

    family = 'base'
    #: input format of pretrained weights: RGB in [0, 1] scaled by mean/std (torchvision convention)
    input_format = 'RGB'
    pixel_mean = (0.485, 0.456, 0.406)
    pixel_std = (0.229, 0.224, 0.225)
    #: memory format the stages compute in on CPU, whatever the input's: ``'channels_last'`` (families whose
    #: pooling / bilinear upsampling / BN are several times faster there: converted once at the input, the
    #: ``forward_stages`` maps handed back in the input's layout) or None (the input's layout)
    cpu_layout = None

    def _init_dense(self, out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False):
        out_indices = tuple(out_indices)
        if any(i not in range(4) for i in out_indices):
            raise ValueError(f'out_indices must be within 0..3, got {out_indices}')
        if frozen_stages not in range(-1, 5):
            raise ValueError(f'frozen_stages must be in -1..4, got {frozen_stages}')
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze_stages()

    # ----------------------------------------------------------------- metadata
    def stage_channels(self):
        """Channels of the 4 stage outputs at the current configuration (width) as a list of int."""
        return list(self._stage_channels)

    @property
    def capabilities(self):
        """Run-time switches of this model's family (frozenset of ``'width'``, ``'resolution'``, ``'private_bn'``,
        ``'ponder_cost'``, ``'calibration'``), read from the one table :mod:`backbones.capabilities`."""
        from .capabilities import capabilities
        return capabilities(self)

    @property
    def feature_info(self):
        """``[StageSpec]`` for the stages in ``out_indices`` (channels at the current width)."""
        ch = self.stage_channels()
        return [StageSpec(f'stage{i + 1}', ch[i], self._stage_strides[i]) for i in self.out_indices]

    def check_input(self, x):
        """Raise unless ``x`` is a ``[N, 3, H, W]`` floating tensor of the weights' dtype (skipped while tracing:
        shapes are symbolic).

        Raises:
            TypeError: not a tensor; integer images (normalise first); a dtype other than the weights'.
            ValueError: not ``[N, 3, H, W]``; H or W below the total stride (the largest of ``_stage_strides``).
        """
        if torch.jit.is_tracing():
            return
        if not torch.is_tensor(x):
            fix = ('convert it with torch.from_numpy(x) (an HWC image: torch.from_numpy(x).permute(2, 0, 1)[None])'
                   if type(x).__module__ == 'numpy' else 'stack the images with torch.stack')
            raise TypeError(f'{type(self).__name__} takes a [N, 3, H, W] tensor, got {type(x).__name__}; {fix}')
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'{type(self).__name__} expects input of shape [N, 3, H, W] (RGB), got '
                             f'{tuple(x.shape)}; convert grayscale/RGBA images to 3 channels')
        if not x.is_floating_point():
            raise TypeError(f'{type(self).__name__} takes normalised float images, got {x.dtype}: convert with '
                            f'x.float() / 255 and normalise with the model\'s pixel_mean / pixel_std')
        stride = max(getattr(self, '_stage_strides', None) or (1,))
        if min(x.shape[-2:]) < stride:
            raise ValueError(f'input of {tuple(x.shape[-2:])} pixels is smaller than the total stride {stride} of '
                             f'{type(self).__name__}: its last stage would see less than one pixel; resize the images '
                             f'to at least {stride}x{stride} (the weights were trained at 224x224)')
        p = next(self.parameters(), None)
        if p is not None and p.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f'input dtype {x.dtype} does not match the weights\' {p.dtype}: pass x.to({p.dtype}) or '
                            f'convert the model with model.to({x.dtype})')

    # ----------------------------------------------------------------- forward
    def forward_stem(self, x):
        """``[N,3,H,W] -> [N,C0,H/4,W/4]``; override for families whose stem needs state."""
        return self.stem(x)

    def forward_stages(self, x):
        """Stage outputs.

        Args:
            x (Tensor): ``[N, 3, H, W]`` normalised image batch (any H, W >= 32).

        Returns:
            OrderedDict[str, Tensor]: ``'stage{i+1}' -> [N, C_i, ceil(H/s_i), ceil(W/s_i)]`` for i in
            ``out_indices`` (stride ``s_i`` from :attr:`feature_info`).

        Raises:
            ValueError: wrong channel count.
        """
        return self._stages_in_layout(x)[0]

    def forward_features(self, x):
        """timm's ``forward_features``: the unpooled input of :meth:`forward_head`, whatever ``out_indices`` says.

        Args:
            x (Tensor): ``[N, 3, H, W]`` normalised image batch.

        Returns:
            Tensor: ``[N, C4, h, w]``, the last stage's output (stride 32, or the output stride; SACT: its post-norm
            BN+ReLU), so that ``forward_head(forward_features(x))`` equals ``forward(x)``.  The per-stage maps
            that detection and segmentation necks take come from :meth:`forward_stages`.

        Raises:
            ValueError: wrong channel count.
        """
        return self._stages_in_layout(x, all_stages=True)[1]

    def _stages_in_layout(self, x, all_stages=False):
        """:meth:`_forward_stages` in :attr:`cpu_layout` on CPU: a contiguous (NCHW) input is converted to
        channels-last once and the feature maps are handed back NCHW-contiguous (the layout frameworks feed and
        expect); the logits path converts nothing back.  A model whose weights are channels-last (``channels_last``
        flag, ``model.to(memory_format=torch.channels_last)``) already computes, and returns, channels-last maps
        and is left alone.  Same values up to float rounding (the convolution kernels differ per layout)."""
        if not torch.is_tensor(x):
            self.check_input(x)  # raises, naming the fix
        back = False
        if (self.cpu_layout == 'channels_last' and x.dim() == 4 and x.device.type == 'cpu'
                and not x.is_contiguous(memory_format=torch.channels_last) and not self._channels_last_weights()):
            back = x.is_contiguous()
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            feats, last = self._forward_stages(x, all_stages=all_stages)
        except ValueError as e:
            if 'Expected more than 1 value per channel when training' not in str(e):
                raise
            raise ValueError(f'{type(self).__name__} in training mode got a batch of {x.shape[0]} image(s) of '
                             f'{tuple(x.shape[-2:])} pixels: a normalisation layer sees a single value per channel '
                             f'({e}); train with a batch of >= 2 images or larger inputs, call model.eval() to '
                             f'evaluate, or keep BN statistics fixed (norm_eval=True)') from None
        if back:
            feats = OrderedDict((k, v.contiguous()) for k, v in feats.items())
            if all_stages:  # forward_features hands its map back too (the logits path converts nothing)
                last = last.contiguous()
        return feats, last

    def set_width(self, width, *args, **kwargs):
        """Only slimmable families switch width: on any other model ``width`` None or 1.0 (the model as built) is
        accepted and changes nothing, any other width raises.  The one width switch: the MMSeg / MMDet and
        Detectron2 adapters call it.

        Returns:
            self

        Raises:
            backbones.capabilities.OptionNotApplicable: a width other than 1.0 (the message names the slimmable
                models).
        """
        if width is None or (not isinstance(width, bool) and isinstance(width, (int, float)) and width == 1.0):
            return self
        from .capabilities import check_options
        check_options(self, {f'set_width({width})': 'width'}, label=getattr(self, 'variant', None))

    def set_resolution(self, resolution, *args, **kwargs):
        """Only RS-Net switches its private BN by resolution; on any other model this raises.

        Raises:
            backbones.capabilities.OptionNotApplicable: always here (the message names the RS-Net models).
        """
        from .capabilities import check_options
        check_options(self, {f'set_resolution({resolution})': 'private_bn'}, label=getattr(self, 'variant', None))

    def _channels_last_weights(self):
        conv = next((m for m in self.modules() if isinstance(m, nn.Conv2d)), None)
        return conv is not None and conv.weight.dim() == 4 and not conv.weight.is_contiguous() and \
            conv.weight.is_contiguous(memory_format=torch.channels_last)

    def _forward_stages(self, x, all_stages=False):
        """Stem and stages, run once for :meth:`forward_stages` and :meth:`forward` (timm-style).

        Families that change what the stages compute (private-BN selection, ACT stages) override this
        method, so that both public entry points follow.  Nothing is stored on the module.

        Returns:
            tuple: ``(features, last)``: the :meth:`forward_stages` dict and the output of the last stage
            run, the input of :meth:`forward_head` (stage 4 whenever a head exists or ``all_stages``; otherwise
            the stages stop at the last of ``out_indices``).
        """
        self.check_input(x)
        x = self.forward_stem(x)
        out = OrderedDict()
        last = max(self.out_indices) if (self.out_indices and not all_stages) else 3
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                out[f'stage{i + 1}'] = x
            if i >= last and self.head is None and not all_stages:
                break
        return out, x

    def forward_head(self, x):
        """``[N, C4, h, w] -> [N, num_classes]`` logits."""
        if self.head is None:
            raise RuntimeError('this backbone was built with num_classes=0 (features only); '
                               'call forward_stages or rebuild with num_classes > 0')
        return self.head(x)

    def forward(self, x):
        """Logits ``[N, num_classes]`` when a head exists, else the ``forward_stages`` dict."""
        feats, last = self._stages_in_layout(x)
        if self.head is None:
            return feats
        return self.forward_head(last)

    # ----------------------------------------------------------------- train-time policy
    def _freeze_stages(self):
        if self.frozen_stages >= 0:
            mods = [self.stem] + [self.stages[i] for i in range(self.frozen_stages)]
            for m in mods:
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False

    def train(self, mode=True):
        """Set train mode, then re-apply ``frozen_stages`` and ``norm_eval`` (MMSeg ResNet semantics)."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) or getattr(m, 'is_norm', False):
                    m.eval()
        return self

    def extra_repr(self):
        return f'out_indices={self.out_indices}, frozen_stages={self.frozen_stages}, norm_eval={self.norm_eval}'


def classifier_head(in_channels, num_classes, dropout=0.0):
    """Global average pooling + (dropout) + linear: ``[N, C, h, w] -> [N, num_classes]``; ``None`` if 0."""
    if num_classes == 0:
        return None
    layers = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(in_channels, num_classes))
    return nn.Sequential(*layers)
