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
``DetPonderMapSaveHook``           saves the SACT ponder-cost map of each test image as ``.npy``.
``CheckedCocoDataset``             ``CocoDataset`` that names the missing path and the expected layout.
=================================  ==================================================================

All detectors subclass :class:`mmdet.models.detectors.TwoStageDetector`, so the same class is a Faster
R-CNN (``roi_head`` without a mask branch) or a Mask R-CNN (with ``mask_head``); the configs in
``det_configs/mmdet/`` build both.  The framework-free pieces (sandwich sampling, BN calibration,
ponder loss, input-sliced convs) come from :mod:`backbones`: what a training step runs is the training core's
policy (:mod:`backbones.training`, shared with the MMSeg, Detectron2 and pretraining frontends), BN calibration
is :class:`plugins.mm.hooks.BNCalibrationHook`; this module only adapts them to MMDet's data structures.

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
from mmengine.model import is_model_wrapper
from mmengine.structures import InstanceData

from backbones import sact as _sact
from backbones import slimmable as _slim
from backbones import training

from .backbones import DynscaleBackbone
from .hooks import _RenamedHook
from .segmentors import current_step

__all__ = ['SlimmableTwoStageDetector', 'SACTTwoStageDetector', 'RSNetTwoStageDetector', 'SlicedFPN',
           'DetPonderMapSaveHook', 'CheckedCocoDataset', 'rescale_batch', 'rescaled_size', 'check_coco_layout']


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

    ``loss`` runs every sub-network of the step of the training policy (:attr:`policy`, set by the subclass) on
    the same batch (rescaled by :func:`rescale_batch` to the sub-network's shorter side when it differs from the
    pipeline's) through the *shared* backbone,
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
        self.policy = training.StandardPolicy()

    def subnet_context(self, width, resolution):
        """Evaluation context of the backbone at (``width``, ``resolution``); overridden."""
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
        for k, sub in enumerate(self.policy.subnets(current_step(self))):
            tag = '' if k == 0 else sub.tag  # the first (largest) sub-network's keys stay MMDet's own
            inputs, samples = self._at_scale(batch_inputs, batch_data_samples, sub.input_size, with_gt=True)
            with self.policy.context(self.backbone.model, sub):
                raw = super().loss(inputs, samples)
            self._last_subnets.append((tag, sub.width, sub.input_size, tuple(inputs.shape[-2:])))
            losses.update(_prefixed(self.policy.subnet_losses(sub, raw), tag))
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

    Each training step runs the sub-networks of :class:`backbones.training.SandwichPolicy`
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
        # every sub-network trained with the ground truth (MutualNet's detection setting, Sec. 4.3)
        self.policy = training.SandwichPolicy(bb.model.width_range, num_subnets=cfg['num_subnets'], input_sizes=res,
                                              max_input_size=self.max_resolution, distill=None,
                                              student_gt_weight=1.0, seed=cfg['seed'])
        lo, hi = bb.model.width_range
        if self.test_width is not None and not lo <= self.test_width <= hi:
            raise ValueError(f'test_width={self.test_width} is outside the width range [{lo}, {hi}] '
                             f'of {bb.arch}')

    @property
    def last_subnets(self):
        """``[(tag, width, shorter side or None, (H, W) of the batch)]`` of the last training step."""
        return list(self._last_subnets)

    def subnet_context(self, width, resolution):
        """Backbone at ``width`` (None = largest width) for evaluation: the statistics calibrated for the pair
        (``width``, ``resolution``) when they exist, else the width-only ones
        (:meth:`backbones.training.SandwichPolicy.eval_context`); a width without any statistics makes the
        backbone raise ``ValueError`` naming ``calibrate_bn``."""
        return training.SandwichPolicy.eval_context(self.backbone.model, width, resolution)

    # ---------------------------------------------------------------- BN calibration (BNCalibrationHook)
    #: BNs outside the backbone that calibration forwards (the neck); the RoI heads are not run
    calibration_head_scope = property(lambda self: self.neck)

    def calibration_config(self):
        """``(width, shorter side)`` evaluation uses: ``test_width`` (largest by default), ``test_resolution``."""
        net = self.backbone.model
        return (net.width_range[1] if self.test_width is None else self.test_width), self.test_resolution

    def set_calibration_config(self, width=None, resolution=None):
        """Evaluate (and calibrate) at ``width`` / shorter side ``resolution`` from now on; None keeps."""
        if width is not None:
            self.test_width = width
        if resolution is not None:
            self.test_resolution = resolution

    def calibration_inputs(self, data):
        """A dataloader batch preprocessed and rescaled to the evaluated shorter side: ``[N, 3, H, W]``."""
        with torch.no_grad():
            d = self.data_preprocessor(data, False)
            x, _ = self._at_scale(d['inputs'], d['data_samples'], self.calibration_config()[1], with_gt=False)
        return x

    def calibration_forward(self, x):
        """Backbone + neck on a calibration batch."""
        return self.extract_feat(x)

    def calibrate_bn(self, data_batches, width=None, resolution=None):
        """Post-statistics BN (US-Nets, Yu & Huang 2019, Sec. 3.3) of one (width, scale), outside a runner.

        Args:
            data_batches (Iterable[dict]): dataloader batches (``inputs``/``data_samples``).
            width (float | None), resolution (int | None): the configuration (None: the evaluation one).

        Returns:
            int: number of batches forwarded (:func:`backbones.training.calibrate`).
        """
        self.set_calibration_config(width, resolution)
        w, r = self.calibration_config()
        batches = (self.calibration_inputs(d) for d in data_batches)
        return training.calibrate(self, batches, backbone=self.backbone.model, width=w, bn_resolution=r,
                                  heads=self.neck, forward=lambda m, x: m.calibration_forward(x))


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
        # every scale trained with the ground truth: the paper's MRED is defined for classification logits
        self.policy = training.ResolutionPolicy(res, mred=False)

    def subnet_context(self, width, resolution):
        """Private BN of ``resolution`` for evaluation (None: the backbone's resolution rule)."""
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
        self.policy = training.PonderPolicy(float(tau))
        self.ponder_tau = self.policy.tau
        self.save_ponder_maps = save_ponder_maps

    def loss(self, batch_inputs, batch_data_samples):
        """Detector losses plus the policy's ``loss_ponder`` (tau-weighted) and the logged ``ponder_cost``."""
        losses = super().loss(batch_inputs, batch_data_samples)
        losses.update(self.policy.extra_losses(self.backbone.model))
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
class SlimmableDetBNCalibrationHook(_RenamedHook):
    """Former name of :class:`plugins.mm.hooks.BNCalibrationHook` (raises, naming it)."""


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
