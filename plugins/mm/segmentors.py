"""Method-specific segmentors for MMSegmentation: SACT ponder cost, RS-Net multi-resolution training,
US-Net/MutualNet sandwich-rule training.

All three subclass MMSeg's ``EncoderDecoder`` and keep its data flow (``data_preprocessor`` ->
``extract_feat`` -> ``decode_head``); what a training step runs comes from the training core
:mod:`backbones.training` (one policy per method, shared with the MMDet, Detectron2 and pretraining
frontends); this module only resizes batches and logits, calls the decode head and names the logged values:

* :class:`SACTEncoderDecoder`: :class:`backbones.training.PonderPolicy` (Figurnov et al. 2017), ponder maps;
* :class:`RSNetEncoderDecoder`: :class:`backbones.training.ResolutionPolicy` with MRED (Wang et al. 2020,
  RS-Nets supplementary Sec. 3);
* :class:`SlimmableEncoderDecoder`: :class:`backbones.training.SandwichPolicy` (Yu & Huang 2019 Sec.
  3.2-3.3; Yang et al. 2020 Sec. 3.2), BN calibration by :class:`plugins.mm.hooks.BNCalibrationHook`.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from mmengine.logging import MessageHub
from mmengine.structures import PixelData
from mmseg.models.losses import accuracy
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.utils import resize
from mmseg.utils import add_prefix

from backbones import training

from .backbones import DynscaleBackbone, register_mm_module

__all__ = ['SACTEncoderDecoder', 'RSNetEncoderDecoder', 'SlimmableEncoderDecoder', 'scaled_size', 'current_step']


def current_step(module):
    """Index of the training iteration: MMEngine's ``iter`` (``RuntimeInfoHook``) when a runner drives training,
    else a counter kept on ``module`` (advanced by each call).  The first call also checks that every DDP rank
    draws the same sub-networks from ``module.policy``."""
    policy = getattr(module, 'policy', None)
    if policy is not None and not getattr(module, '_dynscale_agreement', False):
        policy.check_agreement()
        module._dynscale_agreement = True
    hub = MessageHub.get_current_instance()
    it = hub.get_info('iter') if hub is not None else None
    if it is not None:
        return int(it)
    module._dynscale_step = getattr(module, '_dynscale_step', -1) + 1
    return module._dynscale_step


def scaled_size(size, resolution, max_resolution):
    """Size of an input of ``size`` (H, W) rescaled by ``resolution / max_resolution``.

    A square crop of side ``max_resolution`` becomes ``resolution x resolution``; other sizes keep their
    aspect ratio.  Returns ``(h, w)`` ints >= 1.
    """
    s = resolution / max_resolution
    return max(1, round(size[0] * s)), max(1, round(size[1] * s))


def _stack_gt(data_samples):
    return torch.stack([ds.gt_sem_seg.data for ds in data_samples], 0).squeeze(1).long()


def _check_backbone(seg, family, name):
    if not isinstance(seg.backbone, DynscaleBackbone) or seg.backbone.backbone_family != family:
        bb = seg.backbone
        got = bb.backbone_family if isinstance(bb, DynscaleBackbone) else type(bb).__name__
        raise ValueError(f'{name} needs a {family!r} backbone (type=DynscaleBackbone with a {family} arch), '
                         f'got {got}')


# ------------------------------------------------------------------------------------------------ SACT
@register_mm_module(frameworks=('mmseg',))
class SACTEncoderDecoder(EncoderDecoder):
    """``EncoderDecoder`` with the SACT/ACT ponder cost (Figurnov et al. 2017, eq. 8) added to the losses.

    Training adds ``loss_ponder = tau * sum over stages of mean(rho)`` and logs ``ponder_cost`` (the
    unweighted sum).  At test time each returned ``SegDataSample`` carries ``ponder_map``
    (``PixelData`` ``[1, H, W]`` at the original image size: per-stage maps resized nearest-neighbour and
    summed, ``backbones.sact.ponder_cost_map``); :class:`plugins.mm.hooks.PonderMapSaveHook` writes them.

    Args:
        tau (float | None): ponder cost weight; None takes the backbone's ``tau`` attribute.
        **kwargs: ``EncoderDecoder`` arguments; the backbone must be a SACT-family dynscale backbone.

    Raises:
        ValueError: non-SACT backbone or negative tau.
    """

    def __init__(self, *args, tau=None, **kwargs):
        super().__init__(*args, **kwargs)
        _check_backbone(self, 'sact', 'SACTEncoderDecoder')
        self.policy = training.PonderPolicy(float(self.backbone.model.tau if tau is None else tau))
        self.tau = self.policy.tau

    def loss(self, inputs, data_samples):
        """Decode (+ auxiliary) losses plus the policy's ``loss_ponder``; ``ponder_cost`` is logged only."""
        x = self.extract_feat(inputs)
        losses = dict()
        losses.update(self._decode_head_forward_train(x, data_samples))
        if self.with_auxiliary_head:
            losses.update(self._auxiliary_head_forward_train(x, data_samples))
        losses.update(self.policy.extra_losses(self.backbone.model))
        return losses

    def predict(self, inputs, data_samples=None):
        """``EncoderDecoder.predict`` plus ``ponder_map`` on every sample (whole-image inference)."""
        from backbones.sact import ponder_cost_map
        results = super().predict(inputs, data_samples)
        costs = list(self.backbone.ponder_costs)
        if not costs or (self.test_cfg or {}).get('mode', 'whole') != 'whole':
            return results
        pmap = ponder_cost_map(costs, tuple(inputs.shape[-2:]))  # [N, H, W] at the padded input size
        for i, ds in enumerate(results):
            meta = ds.metainfo
            left, right, top, bottom = meta.get('padding_size', [0, 0, 0, 0]) if meta else [0, 0, 0, 0]
            m = pmap[i:i + 1, None, top:pmap.shape[1] - bottom, left:pmap.shape[2] - right]
            if meta.get('flip'):
                m = m.flip(dims=(3,) if meta.get('flip_direction') == 'horizontal' else (2,))
            if 'ori_shape' in meta:
                m = F.interpolate(m, size=tuple(meta['ori_shape'][:2]), mode='nearest')
            ds.set_data({'ponder_map': PixelData(data=m[0])})
        return results


# ------------------------------------------------------------------------------------------------ RS-Net
@register_mm_module(frameworks=('mmseg',))
class RSNetEncoderDecoder(EncoderDecoder):
    """RS-Net segmentor (Wang et al. 2020, supplementary Sec. 3, Fig. 2): trains on the same batch at
    several resolutions and tests at any chosen one.

    Training: the batch (a crop of side ``resolutions[0]``) is resized bilinearly to every resolution
    ``S = train_cfg.resolutions`` (default the backbone's, e.g. (352, 224, 96)); each copy runs the shared
    weights with its private BN; every resolution's logits are resized to the largest input; the MRED loss
    (``backbones.rsnet.MREDLoss``: per-resolution CE, learned-ensemble CE, ensemble/top-down distillation)
    is ``loss_mred``; its parts are logged as ``mred_*`` and per-resolution pixel accuracies as
    ``acc_seg_r{r}``.  The decode head's own ``loss_decode`` is not used (MRED carries the CE; ignore index
    from the head).  Auxiliary heads, if configured, add their loss at every resolution.

    Testing (``test_cfg.resolution``): the input is resized to ``resolution x resolution``
    (``test_cfg.keep_ratio=True``: shorter side to ``resolution``), runs with that resolution's private BN
    (``set_resolution``; a resolution that was not trained raises ValueError unless the backbone's rule is
    'nearest'), and the logits are resized back to the image, then to its original size.  Without
    ``test_cfg.resolution`` the backbone's resolution rule picks the BN for the input as it comes.

    Args:
        kd (str | None): MRED distillation: 'ens_topdown' (full MRED, default), 'ens' or None.
        mred_weight (float): weight of the MRED loss.
        **kwargs: ``EncoderDecoder`` arguments; the backbone must be an RS-Net dynscale backbone.
            ``train_cfg`` may hold ``resolutions`` (a subset of the backbone's, descending).

    Raises:
        ValueError: non-RS-Net backbone, or ``train_cfg.resolutions`` not trained resolutions of the backbone.
    """

    def __init__(self, *args, kd='ens_topdown', mred_weight=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        _check_backbone(self, 'rsnet', 'RSNetEncoderDecoder')
        trained = tuple(self.backbone.model.resolutions)
        res = tuple((self.train_cfg or {}).get('resolutions', trained))
        bad = [r for r in res if r not in trained]
        if bad or list(res) != sorted(res, reverse=True):
            raise ValueError(f'train_cfg.resolutions must be trained resolutions of the backbone {trained} '
                             f'in descending order, got {res}')
        self.resolutions = res
        self.policy = training.ResolutionPolicy(res, mred=kd, ignore_index=self.decode_head.ignore_index)
        self.mred = self.policy.mred  # a module of the segmentor: alpha is trained and checkpointed
        self.mred_weight = mred_weight

    def loss(self, inputs, data_samples):
        """Multi-resolution forward and MRED loss (see the class docstring)."""
        size = tuple(inputs.shape[-2:])
        gt = _stack_gt(data_samples)
        logits_list, losses = [], dict()
        for sub in self.policy.subnets(current_step(self)):
            r = sub.bn_resolution
            hw = scaled_size(size, r, self.resolutions[0])  # the crop side scaled by r / largest resolution
            x = inputs if hw == size else resize(inputs, size=hw, mode='bilinear',
                                                 align_corners=self.align_corners)
            with self.policy.context(self.backbone.model, sub):
                feats = self.extract_feat(x)
                z = self.decode_head.forward(feats)
                if self.with_auxiliary_head:
                    aux = self._auxiliary_head_forward_train(feats, data_samples)
                    losses.update(add_prefix(aux, sub.tag))
            z = resize(z, size=gt.shape[-2:], mode='bilinear', align_corners=self.align_corners)
            logits_list.append(z)
            losses[f'acc_seg_{sub.tag}'] = accuracy(z.detach(), gt, ignore_index=self.decode_head.ignore_index)
        for k, v in self.policy.combine(logits_list, gt).items():
            losses[k] = self.mred_weight * v if k == 'loss_mred' else v.to(inputs.device)
        return losses

    def encode_decode(self, inputs, batch_img_metas):
        """Logits at the input size, computed at ``test_cfg.resolution`` with its private BN."""
        r = (self.test_cfg or {}).get('resolution')
        if r is None:
            return super().encode_decode(inputs, batch_img_metas)
        h, w = inputs.shape[-2:]
        if self.test_cfg.get('keep_ratio', False):
            s = r / min(h, w)
            hw = (max(1, round(h * s)), max(1, round(w * s)))
        else:
            hw = (r, r)
        x = resize(inputs, size=hw, mode='bilinear', align_corners=self.align_corners)
        trained = self.backbone.model.resolutions
        ctx = self.backbone.resolution_context(r) if r in trained else self.backbone.maybe_resolution(None)
        if r not in trained and self.backbone.model.resolution_rule == 'explicit':
            raise ValueError(f'test_cfg.resolution={r} is not a trained resolution {tuple(trained)} and the '
                             f"backbone rule is 'explicit'; choose one of {tuple(trained)} or build it with "
                             f"resolution_rule='nearest'")
        with ctx:
            z = self.decode_head.forward(self.extract_feat(x))
        return resize(z, size=(h, w), mode='bilinear', align_corners=self.align_corners)


# ----------------------------------------------------------------------------------------- US-Net / MutualNet
@register_mm_module(frameworks=('mmseg',))
class SlimmableEncoderDecoder(EncoderDecoder):
    """Sandwich-rule segmentor for US-Nets / MutualNet backbones (Yu & Huang 2019 Sec. 3.2-3.3; Yang et al.
    2020 Sec. 3.2).

    One training step (``train_step``) runs the ``num_subnets`` sub-networks of
    :class:`backbones.training.SandwichPolicy` (the same on every rank): the max width at the full crop (teacher),
    the min width and
    random widths, each at a resolution drawn from ``train_cfg.resolutions`` (MutualNet; crop resized
    bilinearly to ``r x r`` for a square crop of side ``max_resolution``) or at the crop as loaded
    (US-Nets, no ``resolutions``).  The teacher is trained with the ground truth; each student with
    inplace distillation from the teacher's detached logits (``distill='inplace'``) and/or the ground
    truth (``student_gt_weight``).  Each sub-network's loss is back-propagated right away (one graph in
    memory at a time), gradients accumulate, then one optimiser step.  Under distributed training
    (``MMDistributedDataParallel``) mmengine calls the wrapper's ``train_step``, which runs :meth:`loss`
    through DDP's forward: the same sandwich sample and losses summed in one graph (same gradients, more
    memory; DDP's gradient hooks need its forward).  The decode head is shared by all
    widths: its first convolutions must slice their input channels (``DeepLabV3Head(input_sliced=True)``
    or ``RefineNetHead(input_sliced=True)``).

    Evaluation runs at ``test_cfg.width`` (default max) and ``test_cfg.resolution`` (default: the input as
    it comes; otherwise scaled by ``resolution / max_resolution``) with the BN statistics calibrated for
    that pair (:class:`plugins.mm.hooks.BNCalibrationHook`).

    Args:
        num_subnets (int): sub-networks per step (4 in both papers).
        distill (str | None): 'inplace' (KL to the teacher, US-Nets/MutualNet) or None.
        student_gt_weight (float): weight of the students' ground-truth loss (0 with inplace distillation,
            1 = "every sub-network trained with the ground truth").
        seed (int | None): seed of the sub-network draws (None: drawn from torch's generator, agreed over ranks).
        **kwargs: ``EncoderDecoder`` arguments; ``train_cfg`` may hold ``resolutions`` (ints, pixels) and
            ``max_resolution`` (default max of ``resolutions``, the train crop side).

    Raises:
        ValueError: non-slimmable backbone, an auxiliary head (its input width would change), a decode head
            whose input convolutions do not slice, or unknown ``distill``.
    """

    def __init__(self, *args, num_subnets=4, distill='inplace', student_gt_weight=0.0, seed=None, **kwargs):
        super().__init__(*args, **kwargs)
        _check_backbone(self, 'slimmable', 'SlimmableEncoderDecoder')
        if self.with_auxiliary_head:
            raise ValueError('SlimmableEncoderDecoder does not support auxiliary heads (their input width '
                             'changes with the backbone width); remove auxiliary_head from the config')
        if not getattr(self.decode_head, 'input_sliced', False):
            raise ValueError('the decode head must accept every backbone width: use DeepLabV3Head or '
                             'RefineNetHead with input_sliced=True')
        tc = dict(self.train_cfg or {})
        self.train_resolutions = tuple(tc['resolutions']) if tc.get('resolutions') else None
        default_max = max(self.train_resolutions) if self.train_resolutions else None
        self.max_resolution = tc.get('max_resolution') or default_max
        self.policy = training.SandwichPolicy(self.backbone.model.width_range, num_subnets, self.train_resolutions,
                                              self.max_resolution, distill, student_gt_weight, seed)

    def _scale(self, inputs, resolution):
        if resolution is None or self.max_resolution is None or resolution == self.max_resolution:
            return inputs
        hw = scaled_size(inputs.shape[-2:], resolution, self.max_resolution)
        return resize(inputs, size=hw, mode='bilinear', align_corners=True)

    def _subnet_losses(self, inputs, data_samples, sub, teacher):
        x = self._scale(inputs, sub.input_size)
        with self.policy.context(self.backbone.model, sub):
            z = self.decode_head.forward(self.extract_feat(x))
        gt_size = data_samples[0].gt_sem_seg.data.shape[-2:]
        z_full = resize(z, size=gt_size, mode='bilinear', align_corners=self.align_corners)
        task = self.decode_head.loss_by_feat(z, data_samples) if sub.gt_weight else {}
        return self.policy.subnet_losses(sub, task, z_full, teacher), z_full

    def train_step(self, data, optim_wrapper):
        """Sandwich-rule step: forward/backward every sub-network, then one optimiser update.

        Returns:
            dict: log variables ``loss`` (sum over sub-networks) and per-sub-network parts prefixed
            ``max.``, ``min.``, ``rand{k}.``.
        """
        with optim_wrapper.optim_context(self):
            data = self.data_preprocessor(data, True)
        inputs, data_samples = data['inputs'], data['data_samples']
        count0 = optim_wrapper._inner_count  # one optimiser "iteration" for the whole step
        log_vars, total, teacher = OrderedDict(), 0.0, None
        for sub in self.policy.subnets(current_step(self)):
            with optim_wrapper.optim_context(self):
                losses, z = self._subnet_losses(inputs, data_samples, sub, teacher)
            loss, parts = self.parse_losses(losses)
            optim_wrapper._inner_count = count0
            optim_wrapper.backward(optim_wrapper.scale_loss(loss))
            if sub.teacher:
                teacher = z.detach()
            total += float(parts.pop('loss').detach())
            for key, v in parts.items():
                log_vars[f'{sub.tag}.{key}'] = v.detach()
        optim_wrapper._inner_count = count0 + 1
        if optim_wrapper.should_update():
            optim_wrapper.step()
            optim_wrapper.zero_grad()
        log_vars['loss'] = torch.tensor(total)
        log_vars.move_to_end('loss', last=False)
        return log_vars

    def loss(self, inputs, data_samples):
        """Losses of one sandwich sample without the optimiser (for ``mode='loss'`` callers; training uses
        :meth:`train_step`, which back-propagates sub-network by sub-network)."""
        losses, teacher = {}, None
        for sub in self.policy.subnets(current_step(self)):
            parts, z = self._subnet_losses(inputs, data_samples, sub, teacher)
            if sub.teacher:
                teacher = z.detach()
            losses.update(add_prefix(parts, sub.tag))
        return losses

    def encode_decode(self, inputs, batch_img_metas):
        """Logits at the input size for ``test_cfg.width`` / ``test_cfg.resolution`` (their BN statistics)."""
        tc = self.test_cfg or {}
        width = tc.get('width', self.backbone.model.width_range[1])
        r = tc.get('resolution')
        if r is not None and self.max_resolution is None:
            raise ValueError('test_cfg.resolution needs train_cfg.max_resolution (the train crop side) to '
                             'scale the test images by resolution / max_resolution')
        x = self._scale(inputs, r)
        with self.backbone.model.width_context(width, r):
            z = self.decode_head.forward(self.extract_feat(x))
        return resize(z, size=inputs.shape[-2:], mode='bilinear', align_corners=self.align_corners)

    # ---------------------------------------------------------------- BN calibration (BNCalibrationHook)
    #: BNs outside the backbone re-estimated with it (the decode head is shared by every width)
    calibration_head_scope = property(lambda self: self)

    def calibration_config(self):
        """``(width, resolution)`` that evaluation will use (from ``test_cfg``)."""
        tc = self.test_cfg or {}
        return tc.get('width', self.backbone.model.width_range[1]), tc.get('resolution')

    def set_calibration_config(self, width=None, resolution=None):
        """Evaluate (and calibrate) at ``width`` / ``resolution`` from now on (``test_cfg``); None keeps."""
        self.test_cfg = dict(self.test_cfg or {})
        if width is not None:
            self.test_cfg['width'] = width
        if resolution is not None:
            self.test_cfg['resolution'] = resolution

    def calibration_inputs(self, data):
        """A dataloader batch preprocessed (training augmentation) and scaled to the evaluated resolution:
        ``[N, 3, h, w]``."""
        with torch.no_grad():
            x = self.data_preprocessor(data, True)['inputs']
        return self._scale(x, self.calibration_config()[1])

    def calibration_forward(self, x):
        """Backbone + decode head on a calibration batch (every BN of the evaluated network sees it)."""
        return self.decode_head.forward(self.extract_feat(x))
