"""MMDetection 3.x side of the dynamic-scale methods: detectors, neck, hooks and a checked COCO dataset.

Registered in ``mmdet.registry`` (import ``plugins.mm`` through ``custom_imports``):

=================================  ==================================================================
``type``                           what it does
=================================  ==================================================================
``SlimmableTwoStageDetector``      US-Net / MutualNet training step: the sandwich rule over widths and
                                   random input scales, every sub-network trained with the ground
                                   truth, one shared neck and head; evaluation at any (width, scale).
``SACTTwoStageDetector``           adds the SACT ponder cost ``tau * sum_stages mean(rho)`` to the
                                   detector losses and logs it; ponder maps can be kept at test time.
``RSNetTwoStageDetector``          RS-Net: the same batch at several input scales, each with its own
                                   private BN, every scale trained with the ground truth; tests at any
                                   trained scale with that scale's BN.
``SlicedFPN``                      FPN whose lateral convs slice their input channels
                                   (:class:`backbones.slimmable.InputSlicedConv2d`), so one set of
                                   neck/head weights serves every backbone width.
``SlimmableDetBNCalibrationHook``  post-statistics BN for a chosen (width, scale) before val/test.
``DetPonderMapSaveHook``           saves the SACT ponder-cost map of each test image as ``.npy``.
``CheckedCocoDataset``             ``CocoDataset`` that names the missing path and the expected layout.
=================================  ==================================================================

All detectors subclass :class:`mmdet.models.detectors.TwoStageDetector`, so the same class is a Faster
R-CNN (``roi_head`` without a mask branch) or a Mask R-CNN (with ``mask_head``); the configs in
``det_configs/mmdet/`` build both.  The framework-free pieces (sandwich sampling, BN calibration,
ponder loss, input-sliced convs) come from :mod:`backbones`; this module only adapts them to MMDet's
data structures.

Scales follow MMDet's ``Resize(scale=(max_size, short_side), keep_ratio=True)`` rule: an image of
original size (h, w) is resized by ``min(max_size / max(h, w), short_side / min(h, w))``.  The
training pipeline resizes to the largest scale; the detector rescales each image of the batch to the
other scales itself (:func:`rescale_batch`), ground-truth boxes and masks included.
"""
import contextlib
import math
import os
import os.path as osp

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.datasets import CocoDataset
from mmdet.models.detectors import TwoStageDetector
from mmdet.models.necks import FPN
from mmdet.registry import DATASETS, HOOKS, MODELS
from mmdet.structures.bbox import BaseBoxes
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.structures import InstanceData

from backbones import sact as _sact
from backbones import slimmable as _slim

from .backbones import DynscaleBackbone

__all__ = ['SlimmableTwoStageDetector', 'SACTTwoStageDetector', 'RSNetTwoStageDetector', 'SlicedFPN',
           'SlimmableDetBNCalibrationHook', 'DetPonderMapSaveHook', 'CheckedCocoDataset', 'rescale_batch',
           'rescaled_size', 'check_coco_layout']


# ------------------------------------------------------------------------------------ rescaling
def rescaled_size(ori_shape, short_side, max_size=None):
    """Size of an image of original shape ``ori_shape`` after MMDet's keep-ratio resize to
    ``scale=(max_size, short_side)`` (mmcv ``rescale_size``: factor ``min(max_size / long,
    short_side / short)``, sizes rounded half up).

    Args:
        ori_shape (tuple[int, int]): original ``(h, w)`` in pixels.
        short_side (int): target shorter side in pixels (e.g. 600, 480, 360, 240).
        max_size (int | None): cap of the longer side (e.g. 1000); None = no cap.

    Returns:
        tuple[int, int]: ``(new_h, new_w)``.

    Raises:
        ValueError: non-positive ``short_side`` or ``max_size``.
    """
    if short_side is None or short_side <= 0:
        raise ValueError(f'short_side must be a positive number of pixels, got {short_side!r}')
    if max_size is not None and max_size <= 0:
        raise ValueError(f'max_size must be positive or None, got {max_size!r}')
    h, w = ori_shape[:2]
    f = short_side / min(h, w)
    if max_size is not None:
        f = min(f, max_size / max(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def _rescale_instances(inst, crop_hw, new_hw, pad_hw):
    """New :class:`InstanceData` with boxes scaled from ``crop_hw`` to ``new_hw`` and masks cropped to
    ``crop_hw`` (the valid image region), resized to ``new_hw`` and padded to ``pad_hw`` when they were
    padded (``DetDataPreprocessor(pad_mask=True)``)."""
    out = InstanceData(metainfo=inst.metainfo)
    (h, w), (nh, nw) = crop_hw, new_hw
    sx, sy = nw / w, nh / h
    for key, val in inst.items():
        if key == 'bboxes':
            if isinstance(val, BaseBoxes):
                val = val.clone()
                val.rescale_((sx, sy))
            else:
                val = val * val.new_tensor([sx, sy, sx, sy])
        elif key == 'masks':
            padded = (val.height, val.width) != (h, w)
            val = val.crop(np.array([0, 0, w, h]))
            val = val.resize((nh, nw))
            if padded:
                val = val.pad(pad_hw, pad_val=0)
        out[key] = val
    return out


def rescale_batch(inputs, data_samples, short_side, max_size=None, size_divisor=32, pad_value=0.0,
                  with_gt=True):
    """Rescale a preprocessed detection batch to another input scale (MutualNet / RS-Net scales).

    Each image's valid region ``inputs[i, :, :h_i, :w_i]`` (``img_shape``) is resized bilinearly
    (antialiased when shrinking) to :func:`rescaled_size` of its ``ori_shape``; the batch is re-padded
    to a multiple of ``size_divisor`` with ``pad_value`` (0 = the normalised mean, as
    ``DetDataPreprocessor`` pads after normalisation).  ``img_shape``, ``scale_factor``, ``pad_shape``
    and ``batch_input_shape`` are updated, so ``predict(rescale=True)`` maps boxes and masks back to
    the original image.  With ``with_gt`` the ground-truth ``bboxes`` and ``masks`` of
    ``gt_instances`` / ``ignored_instances`` are rescaled too.  The inputs are not modified.

    Args:
        inputs (Tensor): ``[N, C, H, W]`` normalised, padded images.
        data_samples (list[DetDataSample]): with ``img_shape`` and ``ori_shape`` metainfo.
        short_side (int): target shorter side (pixels of the original-image resize rule).
        max_size (int | None): cap of the longer side.
        size_divisor (int): pad height/width to a multiple of it (32 for FPN).
        pad_value (float): value of padded pixels.
        with_gt (bool): also rescale ground-truth boxes/masks.

    Returns:
        tuple: ``(new_inputs [N, C, H', W'], new_data_samples)`` (new sample objects; unchanged data
        fields are shared, not copied).

    Raises:
        ValueError: ``len(inputs) != len(data_samples)``, or bad ``short_side``/``max_size``.
    """
    if inputs.shape[0] != len(data_samples):
        raise ValueError(f'{inputs.shape[0]} images but {len(data_samples)} data samples')
    sizes = [rescaled_size(ds.ori_shape, short_side, max_size) for ds in data_samples]
    H = int(math.ceil(max(s[0] for s in sizes) / size_divisor) * size_divisor)
    W = int(math.ceil(max(s[1] for s in sizes) / size_divisor) * size_divisor)
    out = inputs.new_full((inputs.shape[0], inputs.shape[1], H, W), pad_value)
    new_samples = []
    for i, (ds, (nh, nw)) in enumerate(zip(data_samples, sizes)):
        h, w = ds.img_shape[:2]
        img = inputs[i:i + 1, :, :h, :w]
        if (nh, nw) != (h, w):
            img = F.interpolate(img, size=(nh, nw), mode='bilinear', align_corners=False,
                                antialias=nh < h or nw < w)
        out[i, :, :nh, :nw] = img[0]
        oh, ow = ds.ori_shape[:2]
        new = ds.__class__(metainfo=dict(ds.metainfo))
        new.set_metainfo(dict(img_shape=(nh, nw), scale_factor=(nw / ow, nh / oh), batch_input_shape=(H, W),
                              pad_shape=(int(math.ceil(nh / size_divisor) * size_divisor),
                                         int(math.ceil(nw / size_divisor) * size_divisor))))
        for key in ds.keys():
            val = ds.get(key)
            if with_gt and key in ('gt_instances', 'ignored_instances') and isinstance(val, InstanceData):
                val = _rescale_instances(val, (h, w), (nh, nw), (H, W))
            new.set_field(val, key)
        new_samples.append(new)
    return out, new_samples


def _prefixed(losses, tag):
    """Loss dict with keys prefixed by ``tag + '_'`` (unchanged when ``tag`` is empty)."""
    return dict(losses) if not tag else {f'{tag}_{k}': v for k, v in losses.items()}


def _dyn_backbone(detector, family, cls_name):
    bb = detector.backbone
    if not isinstance(bb, DynscaleBackbone) or bb.backbone_family != family:
        got = bb.arch if isinstance(bb, DynscaleBackbone) else type(bb).__name__
        raise ValueError(f'{cls_name} needs a {family!r} dynscale backbone (type=DynscaleBackbone/'
                         f'SlimmableNet/SACTResNet/RSNet with a matching arch), got {got}')
    return bb


# ------------------------------------------------------------------------------------ detectors
class _MultiScaleTwoStageDetector(TwoStageDetector):
    """Two-stage detector that trains several sub-networks (width and/or input scale) on each batch
    and predicts at a chosen (width, scale).

    ``loss`` runs every sub-network returned by :meth:`train_subnets` on the same batch (rescaled by
    :func:`rescale_batch` when its scale differs from the pipeline's) through the *shared* backbone,
    neck and heads, and returns the union of their losses (the first sub-network's keys unprefixed,
    the others prefixed by their tag).  ``BaseModel.parse_losses`` sums every ``loss*`` key, so one
    backward pass accumulates the gradients of all sub-networks before one optimizer step, the same
    update as US-Net's per-width backward passes; it keeps every sub-network's graph alive until the
    backward (about 2x the memory of one forward at 4 sub-networks) and works unchanged with
    ``MMDistributedDataParallel`` and AMP.

    Args:
        max_size (int | None): longer-side cap of the scale rule (1000 in MutualNet's detection
            setting ``1000 x {600, 480, 360, 240}``).
        test_width (float | None): width multiplier for ``predict`` (None = the subclass default).
        test_resolution (int | None): shorter side for ``predict`` (None = the test pipeline's scale).
        **kwargs: :class:`TwoStageDetector` arguments.
    """

    def __init__(self, *args, max_size=None, test_width=None, test_resolution=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_size = max_size
        self.test_width = test_width
        self.test_resolution = test_resolution
        self._last_subnets = []

    # subclasses: [(tag, width or None, short side or None)], the first one unprefixed
    def train_subnets(self):
        """Sub-networks of one training step (overridden by subclasses)."""
        return [('', None, None)]

    def subnet_context(self, width, resolution):
        """Context that switches the backbone to (``width``, ``resolution``); overridden."""
        return contextlib.nullcontext()

    def _pad_cfg(self):
        dp = self.data_preprocessor
        return dict(size_divisor=getattr(dp, 'pad_size_divisor', 32) or 1,
                    pad_value=float(getattr(dp, 'pad_value', 0)))

    def _at_scale(self, inputs, samples, resolution, with_gt):
        if resolution is None:
            return inputs, samples
        return rescale_batch(inputs, samples, resolution, self.max_size, with_gt=with_gt, **self._pad_cfg())

    def loss(self, batch_inputs, batch_data_samples):
        """Losses of every sub-network of the step (see class docstring).

        Args:
            batch_inputs (Tensor): ``[N, 3, H, W]`` preprocessed images at the pipeline's scale.
            batch_data_samples (list[DetDataSample]): with ``gt_instances`` (boxes, labels, masks).

        Returns:
            dict[str, Tensor | list[Tensor]]: MMDet losses and accuracies, prefixed per sub-network.
        """
        losses = {}
        self._last_subnets = []
        for tag, width, res in self.train_subnets():
            inputs, samples = self._at_scale(batch_inputs, batch_data_samples, res, with_gt=True)
            with self.subnet_context(width, res):
                sub = super().loss(inputs, samples)
            self._last_subnets.append((tag, width, res, tuple(inputs.shape[-2:])))
            losses.update(_prefixed(sub, tag))
        return losses

    def predict(self, batch_inputs, batch_data_samples, rescale=True):
        """Predict at (``test_width``, ``test_resolution``); results are in original-image coordinates
        when ``rescale`` (boxes divided by the updated ``scale_factor``).  See
        :meth:`TwoStageDetector.predict` for shapes."""
        inputs, samples = self._at_scale(batch_inputs, batch_data_samples, self.test_resolution,
                                         with_gt=False)
        with self.subnet_context(self.test_width, self.test_resolution):
            return super().predict(inputs, samples, rescale=rescale)

    def _forward(self, batch_inputs, batch_data_samples=None):
        inputs, samples = batch_inputs, batch_data_samples
        if samples is not None:
            inputs, samples = self._at_scale(batch_inputs, batch_data_samples, self.test_resolution,
                                             with_gt=False)
        with self.subnet_context(self.test_width, self.test_resolution):
            return super()._forward(inputs, samples)


@MODELS.register_module()
class SlimmableTwoStageDetector(_MultiScaleTwoStageDetector):
    """US-Net / MutualNet detector: sandwich-rule training over widths and input scales.

    Each training step samples the sub-networks with :class:`backbones.slimmable.SandwichRule`
    (US-Nets, Yu & Huang 2019, Sec. 3.2; MutualNet, Yang et al. 2020, Sec. 3.2): the largest width at
    the largest scale, the smallest width and ``num_subnets - 2`` random widths, each at a scale drawn
    uniformly from ``resolutions`` (MutualNet) or all at the pipeline's scale (US-Net,
    ``resolutions=None``).  As in MutualNet's COCO experiment (Sec. 4.3) the FPN neck and the heads
    are shared and every sub-network is trained with the ground truth (no inplace distillation).  The
    neck must accept every width: use :class:`SlicedFPN`.

    Loss keys: the largest sub-network's keys unprefixed (``loss_cls``, ...), then ``min_*`` and
    ``rand1_*``, ``rand2_*``, ....  Sub-networks of the last step: :attr:`last_subnets`.

    Args:
        sandwich (dict): ``num_subnets`` (>= 2, default 4), ``resolutions`` (shorter sides, e.g.
            ``(600, 480, 360, 240)``, or None), ``seed`` (None: drawn from torch's generator at
            construction, so mmengine's ``randomness.seed`` makes the sampling reproducible).  The
            width range is the backbone's ``width_range``; the largest resolution must equal the
            training pipeline's shorter side.
        max_size (int): longer-side cap (1000 in the paper).
        test_width (float | None): width for evaluation (None = the largest width).
        test_resolution (int | None): shorter side for evaluation (None = the test pipeline's).
        **kwargs: :class:`TwoStageDetector` arguments (backbone must be a slimmable dynscale backbone).

    Raises:
        ValueError: backbone not slimmable, ``num_subnets < 2``, ``test_width`` outside the width range.
    """

    def __init__(self, *args, sandwich=None, max_size=1000, **kwargs):
        super().__init__(*args, max_size=max_size, **kwargs)
        bb = _dyn_backbone(self, 'slimmable', type(self).__name__)
        cfg = dict(num_subnets=4, resolutions=None, seed=None)
        unknown = set(sandwich or {}) - set(cfg)
        if unknown:
            raise ValueError(f'sandwich accepts {sorted(cfg)}; got unknown keys {sorted(unknown)}')
        cfg.update(sandwich or {})
        if cfg['num_subnets'] < 2:
            raise ValueError('sandwich.num_subnets must be >= 2 (largest + smallest width), '
                             f"got {cfg['num_subnets']}")
        res = tuple(cfg['resolutions']) if cfg['resolutions'] else None
        self.resolutions = res
        self.max_resolution = max(res) if res else None
        seed = cfg['seed'] if cfg['seed'] is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        self.sandwich = _slim.SandwichRule(bb.model.width_range, num_subnets=cfg['num_subnets'],
                                           resolutions=res, max_resolution=self.max_resolution, seed=seed)
        lo, hi = bb.model.width_range
        if self.test_width is not None and not lo <= self.test_width <= hi:
            raise ValueError(f'test_width={self.test_width} is outside the width range [{lo}, {hi}] '
                             f'of {bb.arch}')

    @property
    def last_subnets(self):
        """``[(tag, width, shorter side or None, (H, W) of the batch)]`` of the last training step."""
        return list(self._last_subnets)

    def train_subnets(self):
        """Tagged (width, scale) list of one step: ``'', 'min', 'rand1', ...`` (the SandwichRule order)."""
        subs = []
        for i, s in enumerate(self.sandwich.sample()):
            tag = '' if i == 0 else ('min' if i == 1 else f'rand{i - 1}')
            # the teacher runs at the pipeline's (largest) scale: no rescaling round trip
            res = None if (s.is_teacher or s.resolution == self.max_resolution) else s.resolution
            subs.append((tag, s.width, res))
        return subs

    def subnet_context(self, width, resolution):
        """Backbone at ``width`` (None = largest width).

        Training uses the width-only BN configuration (batch statistics in train mode).  In eval mode the
        statistics calibrated for the pair (``width``, ``resolution``) are used when they exist (see
        :meth:`calibrate_bn`), else the width-only ones; a width without any statistics makes the
        backbone raise ``ValueError`` naming ``calibrate_bn``.
        """
        net = self.backbone.model
        width = net.width_range[1] if width is None else width
        key = None
        if not self.training and resolution is not None:
            w = _slim.normalize_width(width)
            key = resolution if (w, resolution) in net.bn_configs else None
        return net.width_context(width, key)

    def calibrate_bn(self, data_batches, width=None, resolution=None):
        """Post-statistics BN (US-Nets, Yu & Huang 2019, Sec. 3.3) of the backbone for one (width, scale).

        Args:
            data_batches (Iterable[dict]): dataloader batches (``inputs``/``data_samples``), preprocessed
                here and rescaled to ``resolution``.
            width (float | None): width to calibrate (None = ``test_width`` or the largest).
            resolution (int | None): shorter side (None = ``test_resolution`` or the pipeline's).

        Returns:
            int: number of batches forwarded.
        """
        net = self.backbone.model
        width = self.test_width if width is None else width
        width = net.width_range[1] if width is None else width
        resolution = self.test_resolution if resolution is None else resolution
        batches = []
        with torch.no_grad():
            for data in data_batches:
                d = self.data_preprocessor(data, False)
                x, _ = self._at_scale(d['inputs'], d['data_samples'], resolution, with_gt=False)
                batches.append(x)
        # the batches are already at the detection scale: select the (width, resolution) statistics
        # here and let calibrate_bn use the model's current configuration (no square resizing)
        with net.width_context(width, resolution):
            _slim.calibrate_bn(net, batches)
        return len(batches)


@MODELS.register_module()
class RSNetTwoStageDetector(_MultiScaleTwoStageDetector):
    """RS-Net detector (Wang et al., ECCV 2020, Sec. 3): the same batch at several input scales, each
    through the shared weights with the private BN of its scale.

    Every training step runs all ``train_resolutions`` (shorter sides; each must be one of the
    backbone's ``resolutions``, whose private BNs it selects explicitly) and trains each with the
    ground truth; there is no detection analogue of the MRED distillation in the paper, so none is
    added.  The pipeline must resize to the largest resolution.  Loss keys: the largest resolution
    unprefixed, the others prefixed ``r<short side>_``.  At test time ``test_resolution`` rescales
    the input to that scale and selects its BN; None leaves the pipeline's scale and the backbone's
    ``resolution_rule`` ('nearest': BN of the trained resolution nearest to the input's shorter side).

    Args:
        train_resolutions (Sequence[int] | None): scales trained per step (None = all of the
            backbone's ``resolutions``).
        max_size (int | None): longer-side cap of the scale rule.
        test_resolution (int | None): see above.

    Raises:
        ValueError: backbone not RS-Net, or a train/test resolution that is not one of the backbone's
            ``resolutions`` (the message lists them).
    """

    def __init__(self, *args, train_resolutions=None, max_size=1000, **kwargs):
        super().__init__(*args, max_size=max_size, **kwargs)
        bb = _dyn_backbone(self, 'rsnet', type(self).__name__)
        trained = tuple(bb.model.resolutions)
        res = tuple(sorted(train_resolutions or trained, reverse=True))
        for r in res + ((self.test_resolution,) if self.test_resolution is not None else ()):
            if r not in trained:
                raise ValueError(f'resolution {r} has no private BN in {bb.arch}; its resolutions are '
                                 f'{trained} (set backbone.resolutions to include it)')
        self.train_resolutions = res

    def train_subnets(self):
        """``[('', None, None), ('r480', None, 480), ...]``: the largest scale first, unrescaled."""
        top = self.train_resolutions[0]
        return [('' if r == top else f'r{r}', None, None if r == top else r) for r in self.train_resolutions]

    def subnet_context(self, width, resolution):
        """Private BN of ``resolution`` (the largest trained one for ``None`` during training)."""
        if resolution is None and self.training:
            resolution = self.train_resolutions[0]
        return self.backbone.maybe_resolution(resolution)


@MODELS.register_module()
class SACTTwoStageDetector(TwoStageDetector):
    """Two-stage detector with an SACT/ACT backbone (Figurnov et al., CVPR 2017, Sec. 3, eq. 8).

    ``loss`` adds ``loss_ponder = tau * sum over stages of mean(rho)`` (:func:`backbones.sact.ponder_loss`,
    gradient through the remainder R) to the detector losses and logs ``ponder_cost`` (the same sum
    without ``tau``, detached).  With ``save_ponder_maps`` (set by :class:`DetPonderMapSaveHook`),
    ``predict`` attaches to each result ``ponder_map``: ``[h, w]`` float tensor, the sum over stages
    of the per-position ponder cost, each stage map resized nearest-neighbour to the network input
    and cropped to ``img_shape`` (the reference's visualisation).

    Args:
        ponder_tau (float | None): time penalty tau (None = the backbone's ``tau``, 0.01 by default).
        save_ponder_maps (bool): attach ponder maps to predictions.
        **kwargs: :class:`TwoStageDetector` arguments (backbone must be an SACT/ACT dynscale backbone).

    Raises:
        ValueError: backbone not of the SACT family, or negative ``ponder_tau``.
    """

    def __init__(self, *args, ponder_tau=None, save_ponder_maps=False, **kwargs):
        super().__init__(*args, **kwargs)
        bb = _dyn_backbone(self, 'sact', type(self).__name__)
        tau = getattr(bb.model, 'tau', 0.01) if ponder_tau is None else ponder_tau
        if tau < 0:
            raise ValueError(f'ponder_tau must be >= 0, got {tau}')
        self.ponder_tau = float(tau)
        self.save_ponder_maps = save_ponder_maps

    def loss(self, batch_inputs, batch_data_samples):
        """Detector losses plus ``loss_ponder`` (tau-weighted) and the logged ``ponder_cost``."""
        losses = super().loss(batch_inputs, batch_data_samples)
        costs = self.backbone.ponder_costs
        losses['loss_ponder'] = _sact.ponder_loss(costs, self.ponder_tau)
        losses['ponder_cost'] = sum(c.detach().float().mean() for c in costs)
        return losses

    def predict(self, batch_inputs, batch_data_samples, rescale=True):
        """:meth:`TwoStageDetector.predict`, plus ``ponder_map`` per result when ``save_ponder_maps``."""
        results = super().predict(batch_inputs, batch_data_samples, rescale=rescale)
        if self.save_ponder_maps:
            costs = [c.detach().float() for c in self.backbone.ponder_costs]
            total = _sact.ponder_cost_map(costs, tuple(batch_inputs.shape[-2:]))
            for i, ds in enumerate(results):
                h, w = ds.img_shape[:2]
                ds.set_field(total[i, :h, :w].cpu(), 'ponder_map')
        return results


# ------------------------------------------------------------------------------------ neck
@MODELS.register_module()
class SlicedFPN(FPN):
    """MMDet :class:`FPN` whose lateral 1x1 convs (and an ``add_extra_convs='on_input'`` conv) slice
    their input channels, ``weight[:, :C_in]`` (:class:`backbones.slimmable.InputSlicedConv2d`), so one
    neck built for the largest backbone width serves every width of a slimmable backbone: a width-w
    backbone emits the first channels of each stage, and the lateral conv uses the matching first
    input channels of its weight (Yu & Huang 2019, Sec. 3: slimmable layers keep the first channels).
    At the largest width it is exactly :class:`FPN`.

    Args: as :class:`FPN`; ``in_channels`` are the backbone's channels at its *largest* width.

    Raises:
        ValueError (forward): a feature with more channels than ``in_channels`` or a wrong number of
            features.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for m in self.lateral_convs:
            m.conv = _slim.InputSlicedConv2d.from_conv(m.conv)
        if self.add_extra_convs == 'on_input' and len(self.fpn_convs) > len(self.lateral_convs):
            extra = self.fpn_convs[len(self.lateral_convs)]
            extra.conv = _slim.InputSlicedConv2d.from_conv(extra.conv)

    def forward(self, inputs):
        """``tuple`` of backbone features ``[N, C_i <= in_channels[i], H_i, W_i]`` -> ``num_outs``
        features of ``out_channels``."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'SlicedFPN expects {len(self.in_channels)} features, got {len(inputs)}')
        for i, (x, c) in enumerate(zip(inputs, self.in_channels)):
            if x.shape[1] > c:
                raise ValueError(f'feature {i} has {x.shape[1]} channels, more than in_channels[{i}]={c}; '
                                 f'build the neck for the backbone\'s largest width')
        return super().forward(inputs)


# ------------------------------------------------------------------------------------ hooks
def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class SlimmableDetBNCalibrationHook(Hook):
    """Post-statistics BN before evaluation (US-Nets, Yu & Huang 2019, Sec. 3.3): before each val/test
    loop, reset the backbone's BN statistics for (``width``, ``resolution``) and re-estimate them with
    cumulative averaging over ``num_batches`` training batches
    (:meth:`SlimmableTwoStageDetector.calibrate_bn` -> :func:`backbones.slimmable.calibrate_bn`).
    It also sets the detector's ``test_width``/``test_resolution`` so evaluation runs at the
    calibrated sub-network.

    Args:
        width (float | None): width multiplier (None = the detector's ``test_width`` or the largest).
        resolution (int | None): shorter side (None = the detector's ``test_resolution`` or the
            pipeline's scale).
        num_batches (int): training batches to forward (the US-Net recipe uses 5 batches of 1024 images;
            with detection batches of 2 use more).
        dataloader (dict | None): dataloader config (None = the runner's ``train_dataloader`` config).
        on_val (bool), on_test (bool): calibrate before validation / testing.

    Raises:
        ValueError: ``num_batches < 1``, or the model is not a :class:`SlimmableTwoStageDetector`.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, width=None, resolution=None, num_batches=20, dataloader=None, on_val=True,
                 on_test=True):
        if num_batches < 1:
            raise ValueError(f'num_batches must be >= 1, got {num_batches}')
        self.width, self.resolution, self.num_batches = width, resolution, num_batches
        self.dataloader_cfg = dataloader
        self.on_val, self.on_test = on_val, on_test
        self._loader = None

    def _calibrate(self, runner):
        model = _unwrap(runner.model)
        if not isinstance(model, SlimmableTwoStageDetector):
            raise ValueError('SlimmableDetBNCalibrationHook needs a SlimmableTwoStageDetector, '
                             f'got {type(model).__name__}')
        if self.width is not None:
            model.test_width = self.width
        if self.resolution is not None:
            model.test_resolution = self.resolution
        if self._loader is None:
            cfg = self.dataloader_cfg
            if cfg is None:
                cfg = runner.cfg.get('train_dataloader')
            if cfg is None:
                raise ValueError('SlimmableDetBNCalibrationHook needs training data: give dataloader=... '
                                 'or a train_dataloader in the config')
            self._loader = runner.build_dataloader(cfg, seed=runner.seed) if isinstance(cfg, dict) else cfg

        def batches():
            for i, data in enumerate(self._loader):
                if i >= self.num_batches:
                    break
                yield data
        was_training = model.training
        n = model.calibrate_bn(batches())
        model.train(was_training)
        w = model.test_width if model.test_width is not None else model.backbone.model.width_range[1]
        print_log(f'BN calibration: width {w}, shorter side {model.test_resolution or "as pipeline"}, '
                  f'{n} batches', logger='current')

    def before_val_epoch(self, runner):
        """Calibrate before validation."""
        if self.on_val:
            self._calibrate(runner)

    def before_test_epoch(self, runner):
        """Calibrate before testing."""
        if self.on_test:
            self._calibrate(runner)


@HOOKS.register_module()
class DetPonderMapSaveHook(Hook):
    """Save the SACT ponder-cost map of every test image as ``<out_dir>/<img_id>.npy`` (float32
    ``[h, w]`` at the network input's resolution; see :class:`SACTTwoStageDetector`).

    Args:
        out_dir (str): folder; relative paths are under the runner's ``work_dir``.

    Raises:
        ValueError: the model is not a :class:`SACTTwoStageDetector`.
    """

    def __init__(self, out_dir='ponder_maps'):
        self.out_dir = out_dir
        self._dir = None

    def before_test(self, runner):
        """Switch the detector to attach ponder maps and create the folder."""
        model = _unwrap(runner.model)
        if not isinstance(model, SACTTwoStageDetector):
            raise ValueError('DetPonderMapSaveHook needs an SACTTwoStageDetector, '
                             f'got {type(model).__name__}')
        model.save_ponder_maps = True
        self._dir = self.out_dir if osp.isabs(self.out_dir) else osp.join(runner.work_dir, self.out_dir)
        os.makedirs(self._dir, exist_ok=True)

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        """Write the maps of this batch."""
        for ds in outputs or []:
            if 'ponder_map' in ds:
                stem = osp.splitext(osp.basename(ds.metainfo.get('img_path', str(batch_idx))))[0]
                name = ds.metainfo.get('img_id', stem)
                np.save(osp.join(self._dir, f'{name}.npy'), ds.ponder_map.numpy().astype(np.float32))


# ------------------------------------------------------------------------------------ dataset
COCO_LAYOUT = """expected COCO 2017 layout under data_root:
  <data_root>/annotations/instances_train2017.json
  <data_root>/annotations/instances_val2017.json
  <data_root>/train2017/<image files>
  <data_root>/val2017/<image files>
(set data_root with the DYNSCALE_DATA environment variable, e.g. DYNSCALE_DATA=../shared/datasets,
or --cfg-options train_dataloader.dataset.data_root=... val_dataloader.dataset.data_root=...
val_evaluator.ann_file=...)"""


def check_coco_layout(ann_file, img_dir):
    """Raise :class:`FileNotFoundError` naming the missing path and the expected COCO layout.

    Args:
        ann_file (str): annotation json path (already joined with ``data_root``).
        img_dir (str): image folder.
    """
    for path, kind in ((ann_file, 'annotation file'), (img_dir, 'image folder')):
        ok = osp.isfile(path) if kind == 'annotation file' else osp.isdir(path)
        if not ok:
            raise FileNotFoundError(f'COCO {kind} not found: {osp.abspath(path)}\n{COCO_LAYOUT}')


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """:class:`mmdet.datasets.CocoDataset` that checks the local layout first and raises
    :class:`FileNotFoundError` naming the missing path and the expected layout (instead of a deep
    pycocotools error).  Remote backends (``backend_args``) are not checked."""

    def load_data_list(self):
        """Check the paths, then :meth:`CocoDataset.load_data_list`."""
        if not self.backend_args:
            check_coco_layout(self.ann_file, self.data_prefix.get('img', self.data_root or ''))
        return super().load_data_list()
