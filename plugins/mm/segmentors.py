"""MMSegmentation segmentors driven by the training core: one generic class, three method presets.

:class:`DynscaleEncoderDecoder` keeps MMSeg's ``EncoderDecoder`` data flow (``data_preprocessor`` ->
``extract_feat`` -> ``decode_head``); what a training step runs comes from the backbone's training policy
(:mod:`backbones.training`, shared with the MMDet, Detectron2 and pretraining frontends).  This module only
resizes batches and logits, calls the decode head and names the logged values, so a new method needs no code
here: ``model=dict(type='DynscaleEncoderDecoder', policy=dict(type='<method>', ...))``.

The presets keep their papers' argument names and add what is not training:

* :class:`SACTEncoderDecoder`: :class:`backbones.training.PonderPolicy` (Figurnov et al. 2017), ponder maps at
  test time;
* :class:`RSNetEncoderDecoder`: :class:`backbones.training.ResolutionPolicy` with MRED (Wang et al. 2020,
  RS-Nets supplementary Sec. 3), test at one resolution with its private BN;
* :class:`SlimmableEncoderDecoder`: :class:`backbones.training.SandwichPolicy` (Yu & Huang 2019 Sec. 3.2-3.3;
  Yang et al. 2020 Sec. 3.2), BN calibration by :class:`plugins.mm.hooks.BNCalibrationHook`.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.losses import accuracy
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.utils import resize
from mmseg.utils import add_prefix

from backbones import training
from backbones.capabilities import check_options

from .backbones import DynscaleBackbone
from .options import refuse_renamed
from .registry import register_mm_module
from .runtime import current_step

__all__ = ['DynscaleEncoderDecoder', 'SACTEncoderDecoder', 'RSNetEncoderDecoder', 'SlimmableEncoderDecoder',
           'scaled_size']


def scaled_size(size, input_size, max_input_size):
    """Size of an input of ``size`` (H, W) rescaled by ``input_size / max_input_size``.

    A square crop of side ``max_input_size`` becomes ``input_size x input_size``; other sizes keep their
    aspect ratio.  Returns ``(h, w)`` ints >= 1.
    """
    s = input_size / max_input_size
    return max(1, round(size[0] * s)), max(1, round(size[1] * s))


def _stack_gt(data_samples):
    return torch.stack([ds.gt_sem_seg.data for ds in data_samples], 0).squeeze(1).long()


@register_mm_module(frameworks=('mmseg',))
class DynscaleEncoderDecoder(EncoderDecoder):
    """``EncoderDecoder`` whose training step is the training policy of its dynscale backbone.

    Training (:meth:`loss`): for each sub-network of the step (:meth:`backbones.training.TrainingPolicy.subnets`)
    the batch is rescaled by ``input_size / max_input_size`` (bilinear), run in the policy's context (width,
    private BN) through the backbone, decode head and auxiliary heads; its logits are resized to the labels.
    Policies that train each sub-network with its own loss get the decode head's loss (``decode.*``, MMSeg's
    keys; weighted, plus inplace distillation ``loss_distill`` from the teacher's logits,
    :meth:`~backbones.training.TrainingPolicy.subnet_losses`); a
    policy that ``combines`` gets one loss over all logits (RS-Nets MRED; per-sub-network pixel accuracy
    logged).  :meth:`~backbones.training.TrainingPolicy.extra_losses` (ponder cost) is added per forward.  With
    several sub-networks, every key is prefixed ``<tag>.`` (``max.decode.loss_ce``, ``r224.acc_seg``).  Sub-networks
    with their own losses are back-propagated one at a time in :meth:`train_step` (one graph in memory), the
    gradients accumulate, then one optimiser step; under ``MMDistributedDataParallel`` the wrapper calls
    :meth:`loss`, which sums them in one graph (same gradients, more memory).

    Evaluation: ``test_cfg.width`` / ``test_cfg.resolution`` select a configuration through
    :meth:`~backbones.training.TrainingPolicy.eval_context`; with a resolution the input is rescaled first
    (:attr:`test_resize`).  Policies with ``needs_calibration`` get their BN statistics from
    :class:`plugins.mm.hooks.BNCalibrationHook` (the ``calibration_*`` methods below).

    Args:
        policy (dict | None): ``type`` (a method of ``backbones.training.POLICIES``; None = the backbone's
            default) and the policy's options (e.g. ``num_subnets``, ``input_sizes``, ``tau``, ``mred``).
        combine_weight (float): weight of a combining policy's loss (``loss_mred``).
        input_align_corners (bool | None): ``align_corners`` of the bilinear input rescaling (None: the class
            default; the decode head's for this class, True for the MutualNet preset as in its reference).
        **kwargs: ``EncoderDecoder`` arguments; the backbone must be a dynscale backbone.

    Raises:
        ValueError: a backbone that is not a dynscale one, a policy that cannot train it or bad options, an
            auxiliary head or a decode head that cannot take every width when the policy varies the width.
    """

    #: ``align_corners`` of the input rescaling (None: the decode head's)
    input_align_corners = None
    #: test-time rescaling to ``test_cfg.resolution``: ``'relative'`` (by resolution / max_input_size) or
    #: ``'absolute'`` (to ``resolution x resolution``; shorter side with ``test_cfg.keep_ratio``)
    test_resize = 'relative'

    def __init__(self, *args, policy=None, combine_weight=1.0, input_align_corners=None, **kwargs):
        super().__init__(*args, **kwargs)
        if input_align_corners is not None:
            self.input_align_corners = input_align_corners
        if not isinstance(self.backbone, DynscaleBackbone):
            raise ValueError(f'{type(self).__name__} needs a dynscale backbone (type=DynscaleBackbone or a family '
                             f'alias), got {type(self.backbone).__name__}')
        tc = self.test_cfg or {}
        check_options(self.backbone.model, {f'test_cfg.{k}': c for k, c in (('width', 'width'),
                                                                            ('resolution', 'resolution'),
                                                                            ('untrained_resolution', 'private_bn'))
                                            if tc.get(k) is not None}, where='the segmentor config',
                      label=self.backbone.arch)
        opts = dict(policy or {})
        method = opts.pop('type', None)
        if tc.get('untrained_resolution') is not None:
            opts['untrained_resolution'] = tc['untrained_resolution']
        self.policy = training.policy_for(self.backbone.model, method, ignore_index=self.decode_head.ignore_index,
                                          **opts)
        self.combine_weight = combine_weight
        if self.policy.combines:
            self.mred = self.policy.mred  # a module of the segmentor: alpha is trained and checkpointed
        if self.policy.varies_width:
            if self.with_auxiliary_head:
                raise ValueError(f'{type(self).__name__} with {self.policy.method}: auxiliary heads are not '
                                 f'supported (their input width changes with the backbone width); remove '
                                 f'auxiliary_head from the config')
            if not getattr(self.decode_head, 'input_sliced', False):
                raise ValueError('the decode head must accept every backbone width: use DeepLabV3Head or '
                                 'RefineNetHead with input_sliced=True')

    # ------------------------------------------------------------------------------------------ training
    def _align(self):
        return self.align_corners if self.input_align_corners is None else self.input_align_corners

    def _scale(self, inputs, input_size):
        """``inputs`` rescaled by ``input_size / policy.max_input_size`` (unchanged when either is None)."""
        top = self.policy.max_input_size
        if input_size is None or top is None:
            return inputs
        hw = scaled_size(inputs.shape[-2:], input_size, top)
        if hw == tuple(inputs.shape[-2:]):
            return inputs
        return resize(inputs, size=hw, mode='bilinear', align_corners=self._align())

    def _subnet_losses(self, inputs, data_samples, sub, teacher):
        """Losses of one sub-network and its logits at the label size."""
        x = self._scale(inputs, sub.input_size)
        with self.policy.context(self.backbone.model, sub):
            feats = self.extract_feat(x)
            z = self.decode_head.forward(feats)
            aux = self._auxiliary_head_forward_train(feats, data_samples) if self.with_auxiliary_head else {}
            extra = self.policy.extra_losses(self.backbone.model)
        gt = _stack_gt(data_samples)
        z_full = resize(z, size=gt.shape[-2:], mode='bilinear', align_corners=self.align_corners)
        if self.policy.combines:
            parts = {'acc_seg': accuracy(z_full.detach(), gt, ignore_index=self.decode_head.ignore_index)}
        else:
            task = add_prefix(self.decode_head.loss_by_feat(z, data_samples), 'decode') if sub.gt_weight else {}
            parts = self.policy.subnet_losses(sub, task, z_full, teacher)
        parts.update(aux)
        parts.update(extra)
        return parts, z_full

    def loss(self, inputs, data_samples):
        """Losses of every sub-network of the step (see the class docstring)."""
        subs = self.policy.subnets(current_step(self))
        losses, logits, teacher = {}, [], None
        for sub in subs:
            parts, z = self._subnet_losses(inputs, data_samples, sub, teacher)
            if sub.teacher:
                teacher = z.detach()
            logits.append(z)
            losses.update(add_prefix(parts, sub.tag) if len(subs) > 1 else parts)
        if self.policy.combines:
            for k, v in self.policy.combine(logits, _stack_gt(data_samples)).items():
                losses[k] = self.combine_weight * v if k.startswith('loss') else v.to(inputs.device)
        return losses

    def train_step(self, data, optim_wrapper):
        """One optimiser step.  Several sub-networks with their own losses: forward/backward each in turn, then one
        update (log variables ``loss`` and the parts prefixed ``<tag>.``); otherwise MMSeg's step over
        :meth:`loss`."""
        subs = self.policy.subnets(current_step(self))
        if self.policy.combines or len(subs) < 2:
            return super().train_step(data, optim_wrapper)
        with optim_wrapper.optim_context(self):
            data = self.data_preprocessor(data, True)
        inputs, data_samples = data['inputs'], data['data_samples']
        count0 = optim_wrapper._inner_count  # one optimiser "iteration" for the whole step
        log_vars, total, teacher = OrderedDict(), 0.0, None
        for sub in subs:
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

    # ------------------------------------------------------------------------------------------ evaluation
    def _test_input(self, inputs, resolution):
        if resolution is None:
            return inputs
        if self.test_resize == 'relative':
            if self.policy.max_input_size is None:
                raise ValueError('test_cfg.resolution needs train_cfg.max_input_size (the train crop side) to '
                                 'scale the test images by resolution / max_input_size')
            return self._scale(inputs, resolution)
        h, w = inputs.shape[-2:]
        if (self.test_cfg or {}).get('keep_ratio', False):
            s = resolution / min(h, w)
            hw = (max(1, round(h * s)), max(1, round(w * s)))
        else:
            hw = (resolution, resolution)
        return resize(inputs, size=hw, mode='bilinear', align_corners=self._align())

    def encode_decode(self, inputs, batch_img_metas):
        """Logits at the input size, computed at ``test_cfg.width`` / ``test_cfg.resolution`` (the policy's
        :meth:`~backbones.training.TrainingPolicy.eval_context`: calibrated or private BN statistics)."""
        tc = self.test_cfg or {}
        width, r = tc.get('width'), tc.get('resolution')
        ctx = self.policy.eval_context(self.backbone.model, width, r)
        if width is None and r is None and not self.policy.varies_width:
            with ctx:
                return super().encode_decode(inputs, batch_img_metas)
        x = self._test_input(inputs, r)
        with ctx:
            z = self.decode_head.forward(self.extract_feat(x))
        return resize(z, size=inputs.shape[-2:], mode='bilinear', align_corners=self.align_corners)

    # ---------------------------------------------------------------- BN calibration (BNCalibrationHook)
    #: BNs outside the backbone re-estimated with it (the decode head is shared by every width)
    calibration_head_scope = property(lambda self: self)

    def calibration_config(self):
        """``(width, resolution)`` that evaluation will use (from ``test_cfg``; width None = the largest)."""
        tc = self.test_cfg or {}
        net = self.backbone.model
        return tc.get('width', getattr(net, 'width_range', (None, None))[1]), tc.get('resolution')

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


# ------------------------------------------------------------------------------------------------ SACT
@register_mm_module(frameworks=('mmseg',))
class SACTEncoderDecoder(DynscaleEncoderDecoder):
    """SACT/ACT preset (Figurnov et al. 2017, eq. 8): ``loss_ponder = tau * sum over stages of mean(rho)`` joins
    the losses and ``ponder_cost`` (the unweighted sum) is logged.  At test time each returned ``SegDataSample``
    carries ``ponder_map`` (``PixelData`` ``[1, H, W]`` at the original image size: per-stage maps resized
    nearest-neighbour and summed, ``backbones.sact.ponder_cost_map``) and ``ponder_stage_maps`` (``[S, H, W]``, the
    stages' maps); :class:`plugins.mm.hooks.PonderMapSaveHook`
    writes them.

    Args:
        tau (float | None): ponder cost weight; None takes the backbone's ``tau`` attribute.
        **kwargs: ``EncoderDecoder`` arguments; the backbone must be a SACT-family dynscale backbone.

    Raises:
        ValueError: non-SACT backbone or negative tau.
    """

    def __init__(self, *args, tau=None, **kwargs):
        super().__init__(*args, policy=dict(type='sact', tau=tau), **kwargs)
        self.tau = self.policy.tau

    def predict(self, inputs, data_samples=None):
        """``EncoderDecoder.predict`` plus ``ponder_map`` on every sample (whole-image inference)."""
        from backbones.sact.drawing import stage_ponder_maps
        results = super().predict(inputs, data_samples)
        costs = list(self.backbone.ponder_costs)
        if not costs or (self.test_cfg or {}).get('mode', 'whole') != 'whole':
            return results
        stages = stage_ponder_maps(costs, tuple(inputs.shape[-2:]))  # [N, S, H, W] at the padded input size
        for i, ds in enumerate(results):
            meta = ds.metainfo
            left, right, top, bottom = meta.get('padding_size', [0, 0, 0, 0]) if meta else [0, 0, 0, 0]
            m = stages[i:i + 1, :, top:stages.shape[2] - bottom, left:stages.shape[3] - right]
            if meta.get('flip'):
                m = m.flip(dims=(3,) if meta.get('flip_direction') == 'horizontal' else (2,))
            if 'ori_shape' in meta:
                m = F.interpolate(m, size=tuple(meta['ori_shape'][:2]), mode='nearest')
            ds.set_data({'ponder_map': PixelData(data=m[0].sum(0, keepdim=True)),
                         'ponder_stage_maps': PixelData(data=m[0])})
        return results


# ------------------------------------------------------------------------------------------------ RS-Net
@register_mm_module(frameworks=('mmseg',))
class RSNetEncoderDecoder(DynscaleEncoderDecoder):
    """RS-Net preset (Wang et al. 2020, supplementary Sec. 3, Fig. 2): trains on the same batch at several
    resolutions and tests at any chosen one.

    Training: the batch (a crop of side ``resolutions[0]``) is resized bilinearly to every resolution
    ``S = train_cfg.bn_resolutions`` (default the backbone's, e.g. (352, 224, 96)); each copy runs the shared
    weights with its private BN; every resolution's logits are resized to the labels; the MRED loss
    (``backbones.rsnet.MREDLoss``: per-resolution CE, learned-ensemble CE, ensemble/top-down distillation)
    is ``loss_mred``; its parts are logged as ``mred_*`` and per-resolution pixel accuracies as
    ``r<res>.acc_seg``.  The decode head's own ``loss_decode`` is not used (MRED carries the CE; ignore index
    from the head).  Auxiliary heads, if configured, add their loss at every resolution.

    Testing (``test_cfg.resolution``): the input is resized to ``resolution x resolution``
    (``test_cfg.keep_ratio=True``: shorter side to ``resolution``), runs with that resolution's private BN
    (a resolution that was not trained raises ValueError unless ``test_cfg.untrained_resolution='nearest'``, which
    uses the nearest trained resolution's private BN and logs it once), and the
    logits are resized back to the image, then to its original size.  Without ``test_cfg.resolution`` the
    backbone's resolution rule picks the BN for the input as it comes.

    Args:
        kd (str | None): MRED distillation: 'ens_topdown' (full MRED, default), 'ens' or None.
        mred_weight (float): weight of the MRED loss.
        **kwargs: ``EncoderDecoder`` arguments; the backbone must be an RS-Net dynscale backbone.
            ``train_cfg`` may hold ``bn_resolutions`` (a subset of the backbone's ``resolutions``, descending;
            the old key ``resolutions`` raises).

    Raises:
        ValueError: non-RS-Net backbone, or ``train_cfg.bn_resolutions`` not trained resolutions of the backbone in
            descending order.
    """

    test_resize = 'absolute'

    def __init__(self, *args, kd='ens_topdown', mred_weight=1.0, **kwargs):
        tc = kwargs.get('train_cfg') or {}
        refuse_renamed(tc, 'train_cfg', {'resolutions': ('bn_resolutions', 'the private-BN resolutions trained per '
                                                                           'step')})
        res = tc.get('bn_resolutions')
        policy = dict(type='rsnet', mred=kd, bn_resolutions=tuple(res) if res else None)
        super().__init__(*args, policy=policy, combine_weight=mred_weight, **kwargs)
        self.bn_resolutions = self.policy.bn_resolutions
        self.mred_weight = mred_weight


# ----------------------------------------------------------------------------------------- US-Net / MutualNet
@register_mm_module(frameworks=('mmseg',))
class SlimmableEncoderDecoder(DynscaleEncoderDecoder):
    """Sandwich-rule preset for US-Nets / MutualNet backbones (Yu & Huang 2019 Sec. 3.2-3.3; Yang et al. 2020
    Sec. 3.2).

    One training step (``train_step``) runs the ``num_subnets`` sub-networks of
    :class:`backbones.training.SandwichPolicy` (the same on every rank): the max width at the full crop
    (teacher), the min width and random widths, each at an input size drawn from ``train_cfg.input_sizes``
    (MutualNet; crop resized bilinearly, ``align_corners=True``, to ``r x r`` for a square crop of side
    ``max_input_size``) or at the crop as loaded (US-Nets, no ``input_sizes``).  The teacher is trained with the
    ground truth; each student with inplace distillation from the teacher's detached logits
    (``distill='inplace'``) and/or the ground truth (``student_gt_weight``).  The decode head is shared by all
    widths: its first convolutions must slice their input channels (``DeepLabV3Head(input_sliced=True)`` or
    ``RefineNetHead(input_sliced=True)``).

    Evaluation runs at ``test_cfg.width`` (default max) and ``test_cfg.resolution`` (default: the input as
    it comes; otherwise scaled by ``resolution / max_input_size``) with the BN statistics calibrated for
    that pair (:class:`plugins.mm.hooks.BNCalibrationHook`).

    Args:
        num_subnets (int): sub-networks per step (4 in both papers).
        distill (str | None): 'inplace' (KL to the teacher, US-Nets/MutualNet) or None.
        student_gt_weight (float): weight of the students' ground-truth loss (0 with inplace distillation,
            1 = "every sub-network trained with the ground truth").
        seed (int | None): seed of the sub-network draws (None: drawn from torch's generator, agreed over ranks).
        **kwargs: ``EncoderDecoder`` arguments; ``train_cfg`` may hold ``input_sizes`` (ints, pixels) and
            ``max_input_size`` (default max of ``input_sizes``, the train crop side); the old keys
            ``resolutions`` / ``max_resolution`` raise naming these.

    Raises:
        ValueError: non-slimmable backbone, an auxiliary head (its input width would change), a decode head
            whose input convolutions do not slice, or unknown ``distill``.
    """

    input_align_corners = True

    def __init__(self, *args, num_subnets=4, distill='inplace', student_gt_weight=0.0, seed=None, **kwargs):
        tc = dict(kwargs.get('train_cfg') or {})
        refuse_renamed(tc, 'train_cfg', {'resolutions': ('input_sizes', 'the crop sides sub-networks train at'),
                                         'max_resolution': ('max_input_size', 'the train crop side')})
        res = tuple(tc['input_sizes']) if tc.get('input_sizes') else None
        top = tc.get('max_input_size') or (max(res) if res else None)
        policy = dict(type='mutualnet' if res else 'usnet', num_subnets=num_subnets, input_sizes=res,
                      max_input_size=top, distill=distill, student_gt_weight=student_gt_weight, seed=seed)
        super().__init__(*args, policy=policy, **kwargs)
        self.input_sizes, self.max_input_size = res, top
