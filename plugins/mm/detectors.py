"""MMDetection 3.x detectors driven by the training core: one generic two-stage detector, three method presets.

Registered in ``mmdet.registry.MODELS`` (import ``plugins.mm`` through ``custom_imports``):

=================================  ==================================================================
``type``                           what it does
=================================  ==================================================================
``DynscaleTwoStageDetector``       any method: the sub-networks, losses and evaluation switch of the
                                   backbone's training policy (``policy=dict(type=..., ...)``)
``SlimmableTwoStageDetector``      US-Net / MutualNet preset: the sandwich rule over widths and
                                   random input scales, every sub-network trained with the ground
                                   truth, one shared neck and head; evaluation at any (width, scale).
``SACTTwoStageDetector``           SACT preset: the ponder cost ``tau * sum_stages mean(rho)`` joins
                                   the detector losses and is logged; ponder maps at test time.
``RSNetTwoStageDetector``          RS-Net preset: the same batch at several input scales, each with its
                                   own private BN, every scale trained with the ground truth; tests at
                                   any trained scale with that scale's BN.
=================================  ==================================================================

All subclass :class:`mmdet.models.detectors.TwoStageDetector`, so the same class is a Faster R-CNN (``roi_head``
without a mask branch) or a Mask R-CNN (with ``mask_head``); the configs in ``det_configs/mmdet/`` build both.
What a training step runs is the training core's policy (:mod:`backbones.training`, shared with the MMSeg,
Detectron2 and pretraining frontends); BN calibration is :class:`plugins.mm.hooks.BNCalibrationHook`, the width-
sliced neck :class:`plugins.mm.necks.SlicedFPN`; this module only adapts them to MMDet's data structures.

Scales follow MMDet's ``Resize(scale=(max_size, short_side), keep_ratio=True)`` rule: an image of
original size (h, w) is resized by ``min(max_size / max(h, w), short_side / min(h, w))``.  The
training pipeline resizes to the largest scale; the detector rescales each image of the batch to the
other scales itself (:func:`rescale_batch`), ground-truth boxes and masks included.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.models.detectors import TwoStageDetector
from mmdet.registry import MODELS
from mmdet.structures.bbox import BaseBoxes
from mmengine.structures import InstanceData

from backbones import training
from backbones.capabilities import check_options

from .backbones import DynscaleBackbone
from .options import refuse_renamed
from .runtime import current_step

__all__ = ['DynscaleTwoStageDetector', 'SlimmableTwoStageDetector', 'SACTTwoStageDetector', 'RSNetTwoStageDetector',
           'rescale_batch', 'rescaled_size']


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


# ------------------------------------------------------------------------------------ detectors
@MODELS.register_module()
class DynscaleTwoStageDetector(TwoStageDetector):
    """Two-stage detector whose training step is the training policy of its dynscale backbone.

    ``loss`` runs every sub-network of the policy's step (:meth:`backbones.training.TrainingPolicy.subnets`) on
    the same batch (rescaled by :func:`rescale_batch` to the sub-network's shorter side when it differs from the
    pipeline's) through the *shared* backbone, neck and heads, in the policy's context (width, private BN), and
    returns the union of their losses (weighted by the policy, plus its extra losses such as the ponder cost; the
    first sub-network's keys unprefixed, the others prefixed by their tag and ``_``).  ``BaseModel.parse_losses``
    sums every ``loss*`` key, so one backward pass accumulates the gradients of all sub-networks before one
    optimizer step, the same update as US-Net's per-width backward passes; it keeps every sub-network's graph alive
    until the backward (about 2x the memory of one forward at 4 sub-networks) and works unchanged with
    ``MMDistributedDataParallel`` and AMP.  ``predict`` runs at (``test_width``, ``test_resolution``) through the
    policy's :meth:`~backbones.training.TrainingPolicy.eval_context`.

    Args:
        policy (dict | None): ``type`` (a method of ``backbones.training.POLICIES``; None = the backbone's
            default) and the policy's options (``input_sizes`` are shorter sides here).
        max_size (int | None): longer-side cap of the scale rule (1000 in MutualNet's detection
            setting ``1000 x {600, 480, 360, 240}``).
        test_width (float | None): width multiplier for ``predict`` (None = the largest).
        test_resolution (int | None): shorter side for ``predict`` (None = the test pipeline's scale).
        **kwargs: :class:`TwoStageDetector` arguments.

    Raises:
        ValueError: a backbone that is not a dynscale one; a policy that cannot train it or bad options; a policy
            that combines the sub-networks' logits (MRED has no detection form).
    """

    def __init__(self, *args, policy=None, max_size=None, test_width=None, test_resolution=None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.backbone, DynscaleBackbone):
            raise ValueError(f'{type(self).__name__} needs a dynscale backbone (type=DynscaleBackbone or a family '
                             f'alias), got {type(self.backbone).__name__}')
        given = (('test_width', 'width', test_width), ('test_resolution', 'resolution', test_resolution))
        check_options(self.backbone.model, {k: c for k, c, v in given if v is not None}, where='the detector config',
                      label=self.backbone.arch)
        self.max_size = max_size
        self.test_width = test_width
        self.test_resolution = test_resolution
        self._last_subnets = []
        opts = dict(policy or {})
        method = opts.pop('type', None)
        self.policy = training.policy_for(self.backbone.model, method, **opts)
        if self.policy.combines:
            raise ValueError(f'{self.policy!r} combines the logits of its sub-networks (MRED), which has no '
                             f'detection form: set mred=False (each scale trained with the ground truth)')

    @property
    def last_subnets(self):
        """``[(tag, width, shorter side or None, (H, W) of the batch)]`` of the last training step."""
        return list(self._last_subnets)

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
                extra = self.policy.extra_losses(self.backbone.model)
            self._last_subnets.append((tag, sub.width, sub.input_size, tuple(inputs.shape[-2:])))
            parts = self.policy.subnet_losses(sub, raw)
            parts.update(extra)
            losses.update(_prefixed(parts, tag))
        return losses

    def eval_context(self):
        """The backbone switched to (``test_width``, ``test_resolution``) for evaluation (calibrated or private BN
        statistics; :meth:`backbones.training.TrainingPolicy.eval_context`)."""
        return self.policy.eval_context(self.backbone.model, self.test_width, self.test_resolution)

    def predict(self, batch_inputs, batch_data_samples, rescale=True):
        """Predict at (``test_width``, ``test_resolution``); results are in original-image coordinates
        when ``rescale`` (boxes divided by the updated ``scale_factor``).  See
        :meth:`TwoStageDetector.predict` for shapes."""
        inputs, samples = self._at_scale(batch_inputs, batch_data_samples, self.test_resolution,
                                         with_gt=False)
        with self.eval_context():
            return super().predict(inputs, samples, rescale=rescale)

    def _forward(self, batch_inputs, batch_data_samples=None):
        inputs, samples = batch_inputs, batch_data_samples
        if samples is not None:
            inputs, samples = self._at_scale(batch_inputs, batch_data_samples, self.test_resolution,
                                             with_gt=False)
        with self.eval_context():
            return super()._forward(inputs, samples)

    # ---------------------------------------------------------------- BN calibration (BNCalibrationHook)
    #: BNs outside the backbone that calibration forwards (the neck); the RoI heads are not run
    calibration_head_scope = property(lambda self: self.neck)

    def calibration_config(self):
        """``(width, shorter side)`` evaluation uses: ``test_width`` (largest by default), ``test_resolution``."""
        net = self.backbone.model
        width = getattr(net, 'width_range', (None, None))[1] if self.test_width is None else self.test_width
        return width, self.test_resolution

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

        Raises:
            ValueError: the policy does not calibrate (``needs_calibration`` False: e.g. not slimmable).
        """
        if not self.policy.needs_calibration:
            raise ValueError(f'{self.policy!r} needs no BN calibration (its needs_calibration is False)')
        self.set_calibration_config(width, resolution)
        w, r = self.calibration_config()
        batches = (self.calibration_inputs(d) for d in data_batches)
        return training.calibrate(self, batches, backbone=self.backbone.model, width=w, bn_resolution=r,
                                  heads=self.neck, forward=lambda m, x: m.calibration_forward(x), policy=self.policy)


@MODELS.register_module()
class SlimmableTwoStageDetector(DynscaleTwoStageDetector):
    """US-Net / MutualNet preset: sandwich-rule training over widths and input scales.

    Each training step runs the sub-networks of :class:`backbones.training.SandwichPolicy`
    (US-Nets, Yu & Huang 2019, Sec. 3.2; MutualNet, Yang et al. 2020, Sec. 3.2): the largest width at
    the largest scale, the smallest width and ``num_subnets - 2`` random widths, each at a scale drawn
    uniformly from ``input_sizes`` (MutualNet) or all at the pipeline's scale (US-Net,
    ``input_sizes=None``).  As in MutualNet's COCO experiment (Sec. 4.3) the FPN neck and the heads
    are shared and every sub-network is trained with the ground truth (no inplace distillation).  The
    neck must accept every width: use :class:`plugins.mm.necks.SlicedFPN`.

    Loss keys: the largest sub-network's keys unprefixed (``loss_cls``, ...), then ``min_*`` and
    ``rand1_*``, ``rand2_*``, ....  Sub-networks of the last step: :attr:`last_subnets`.

    Args:
        sandwich (dict): ``num_subnets`` (>= 2, default 4), ``input_sizes`` (shorter sides, e.g.
            ``(600, 480, 360, 240)``, or None; the old key ``resolutions`` raises), ``seed`` (None: drawn from
            torch's generator at construction, so mmengine's ``randomness.seed`` makes the sampling reproducible).  The
            width range is the backbone's ``width_range``; the largest input size must equal the
            training pipeline's shorter side.
        max_size (int): longer-side cap (1000 in the paper).
        test_width (float | None): width for evaluation (None = the largest width).
        test_resolution (int | None): shorter side for evaluation (None = the test pipeline's).
        **kwargs: :class:`TwoStageDetector` arguments (backbone must be a slimmable dynscale backbone).

    Raises:
        ValueError: backbone not slimmable, ``num_subnets < 2``, ``test_width`` outside the width range.
    """

    def __init__(self, *args, sandwich=None, max_size=1000, **kwargs):
        renamed = {'resolutions': ('input_sizes', 'the shorter sides sub-networks train at')}
        refuse_renamed(sandwich, 'model.sandwich', renamed)
        cfg = dict(num_subnets=4, input_sizes=None, seed=None)
        unknown = set(sandwich or {}) - set(cfg)
        if unknown:
            raise ValueError(f'sandwich accepts {sorted(cfg)}; got unknown keys {sorted(unknown)}')
        cfg.update(sandwich or {})
        if cfg['num_subnets'] < 2:
            raise ValueError('sandwich.num_subnets must be >= 2 (largest + smallest width), '
                             f"got {cfg['num_subnets']}")
        res = tuple(cfg['input_sizes']) if cfg['input_sizes'] else None
        # every sub-network trained with the ground truth (MutualNet's detection setting, Sec. 4.3)
        policy = dict(type='mutualnet' if res else 'usnet', num_subnets=cfg['num_subnets'], input_sizes=res,
                      max_input_size=max(res) if res else None, distill=None, student_gt_weight=1.0,
                      seed=cfg['seed'])
        super().__init__(*args, policy=policy, max_size=max_size, **kwargs)
        self.input_sizes = res
        self.max_input_size = max(res) if res else None
        lo, hi = self.backbone.model.width_range
        if self.test_width is not None and not lo <= self.test_width <= hi:
            raise ValueError(f'test_width={self.test_width} is outside the width range [{lo}, {hi}] '
                             f'of {self.backbone.arch}')


@MODELS.register_module()
class RSNetTwoStageDetector(DynscaleTwoStageDetector):
    """RS-Net preset (Wang et al., ECCV 2020, Sec. 3): the same batch at several input scales, each
    through the shared weights with the private BN of its scale.

    Every training step runs all ``bn_resolutions`` (shorter sides; each must be one of the
    backbone's ``resolutions``, whose private BNs it selects explicitly) and trains each with the
    ground truth; there is no detection analogue of the MRED distillation in the paper, so none is
    added.  The pipeline must resize to the largest resolution.  Loss keys: the largest resolution
    unprefixed, the others prefixed ``r<short side>_``.  At test time ``test_resolution`` rescales
    the input to that scale and selects its BN; None leaves the pipeline's scale and the backbone's
    ``resolution_rule`` ('nearest': BN of the trained resolution nearest to the input's shorter side).

    Args:
        bn_resolutions (Sequence[int] | None): scales trained per step, each with its private BN (None = all
            of the backbone's ``resolutions``); the old name ``train_resolutions`` raises.
        max_size (int | None): longer-side cap of the scale rule.
        test_resolution (int | None): see above.

    Raises:
        ValueError: backbone not RS-Net, or a train/test resolution that is not one of the backbone's
            ``resolutions`` (the message lists them).
    """

    def __init__(self, *args, bn_resolutions=None, max_size=1000, **kwargs):
        renamed = {'train_resolutions': ('bn_resolutions', 'the private-BN resolutions trained per step')}
        refuse_renamed(kwargs, 'model', renamed)
        res = tuple(sorted(bn_resolutions, reverse=True)) if bn_resolutions else None
        # every scale trained with the ground truth: the paper's MRED is defined for classification logits
        super().__init__(*args, policy=dict(type='rsnet', bn_resolutions=res, mred=False), max_size=max_size,
                         **kwargs)
        trained = tuple(self.backbone.model.resolutions)
        if self.test_resolution is not None and self.test_resolution not in trained:
            raise ValueError(f'resolution {self.test_resolution} has no private BN in {self.backbone.arch}; its '
                             f'resolutions are {trained} (set backbone.resolutions to include it)')
        self.bn_resolutions = self.policy.bn_resolutions


@MODELS.register_module()
class SACTTwoStageDetector(DynscaleTwoStageDetector):
    """SACT preset (Figurnov et al., CVPR 2017, Sec. 3, eq. 8).

    ``loss`` adds ``loss_ponder = tau * sum over stages of mean(rho)`` (:func:`backbones.sact.ponder_loss`,
    gradient through the remainder R) to the detector losses and logs ``ponder_cost`` (the same sum
    without ``tau``, detached).  With ``save_ponder_maps`` (set by :class:`plugins.mm.hooks.PonderMapSaveHook`),
    ``predict`` attaches to each result ``ponder_stage_maps`` (``[S, h, w]``) and ``ponder_map``: ``[h, w]`` float
    tensor, the sum over stages
    of the per-position ponder cost, each stage map resized nearest-neighbour to the network input
    and cropped to ``img_shape`` (the reference's visualisation).

    Args:
        tau (float | None): ponder cost weight tau (the paper's word, as in the SACT segmentor and Detectron2's
            ``MODEL.DYNSCALE.TAU``; None = the backbone's ``tau``, 0.01 by default).
        save_ponder_maps (bool): attach ponder maps to predictions.
        **kwargs: :class:`TwoStageDetector` arguments (backbone must be an SACT/ACT dynscale backbone).

    Raises:
        ValueError: backbone not of the SACT family, a negative ``tau``, or the former name ``ponder_tau`` (the
            message names ``tau``).
    """

    def __init__(self, *args, tau=None, save_ponder_maps=False, **kwargs):
        refuse_renamed(kwargs, 'model', {'ponder_tau': ('tau', 'the ponder-cost weight, one name with the SACT '
                                                               'segmentor and MODEL.DYNSCALE.TAU')})
        super().__init__(*args, policy=dict(type='sact', tau=tau), **kwargs)
        self.tau = self.policy.tau
        self.save_ponder_maps = save_ponder_maps

    def predict(self, batch_inputs, batch_data_samples, rescale=True):
        """:meth:`DynscaleTwoStageDetector.predict`, plus ``ponder_map`` per result when ``save_ponder_maps``."""
        from backbones.sact.drawing import stage_ponder_maps
        results = super().predict(batch_inputs, batch_data_samples, rescale=rescale)
        if self.save_ponder_maps:
            costs = [c.detach().float() for c in self.backbone.ponder_costs]
            stages = stage_ponder_maps(costs, tuple(batch_inputs.shape[-2:]))  # [N, S, H, W]
            for i, ds in enumerate(results):
                h, w = ds.img_shape[:2]
                ds.set_field(stages[i, :, :h, :w].sum(0).cpu(), 'ponder_map')
                ds.set_field(stages[i, :, :h, :w].cpu(), 'ponder_stage_maps')
        return results
