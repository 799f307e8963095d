"""Training and evaluation of detectors with dynamic-scale backbones (detectron2 ``DefaultTrainer`` subclass).

What :class:`DynscaleTrainer` adds to detectron2's default training loop:

* **SACT ponder cost** (Figurnov et al. 2017, eq. 8): ``loss_ponder = TAU * sum_blocks mean(rho)`` over
  the backbone's blocks and, for the C4 model, the res5 box head; it is part of the loss dict (so it is
  logged and back-propagated), and the raw ponder cost ``sum_blocks mean(rho)`` is logged as
  ``ponder_cost``.
* **Sandwich rule over widths and input scales** (US-Net, Yu & Huang 2019, Sec. 3.2; MutualNet, Yang et
  al. 2020, Sec. 4.3): every iteration trains the max width at the largest scale, the min width and
  ``NUM_SUBNETS - 2`` random widths, the non-teacher sub-networks on the same images resized to a
  shorter side drawn from ``SANDWICH.TRAIN_SCALES`` (longer side <= ``SANDWICH.MAX_SIZE``). Each
  sub-network is supervised by the ground truth (no inplace distillation for detection, as in the
  MutualNet detection experiments); FPN and heads are shared; the gradients of all sub-networks
  accumulate before one optimizer step.
* **RS-Net scale buckets**: each iteration trains every bucket (``RSNET_TRAIN_MODE "all"``: the batch
  resized to each bucket's scale, that bucket's private BN, ground-truth loss) or one random bucket.
* **DDP with dynamic graphs**: ``find_unused_parameters=True`` where parameters can go unused in a step
  (SACT; RS-Net private BNs that are trained), CPU DDP (gloo) supported.
* **Evaluation at (width, scale) points** (``MODEL.DYNSCALE.EVAL_POINTS``), with post-statistics BN
  calibration of slimmable backbones on training images at that scale first (``CALIBRATION``), COCO AP by
  detectron2's ``COCOEvaluator``.
* **Loud checkpoint loading**: unmatched backbone keys raise (or warn, ``STRICT_BACKBONE_LOAD False``).
"""

import contextlib
import logging
import math
import os
import time
import weakref
from collections import OrderedDict

import detectron2.utils.comm as comm
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_train_loader
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger

from backbones.training.nonfinite import BNSnapshot, NonFiniteStepError, describe_nonfinite, nonfinite_bn_statistics

from .backbone import _unwrap, find_dynscale_backbone

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- resizing
def _resize_instances(inst, new_hw, sx, sy):
    out = Instances(new_hw)
    for name, val in inst.get_fields().items():
        if isinstance(val, Boxes):
            b = Boxes(val.tensor.clone())
            b.scale(sx, sy)
            b.clip(new_hw)
            val = b
        elif isinstance(val, PolygonMasks):
            val = PolygonMasks(
                [[p * np.array([sx, sy] * (len(p) // 2), dtype=p.dtype) for p in obj] for obj in val.polygons]
            )
        elif isinstance(val, BitMasks):
            t = val.tensor
            t = (
                F.interpolate(t[:, None].float(), size=new_hw, mode='nearest')[:, 0]
                if len(t)
                else t.new_zeros((0,) + tuple(new_hw))
            )
            val = BitMasks(t > 0.5)
        elif isinstance(val, Keypoints):
            k = val.tensor.clone()
            k[..., 0] *= sx
            k[..., 1] *= sy
            val = Keypoints(k)
        elif name not in ('gt_classes',) and torch.is_tensor(val) and val.dim() > 1:
            raise ValueError(
                f'cannot rescale instance field {name!r} ({type(val).__name__}); supported: '
                f'Boxes, PolygonMasks, BitMasks, Keypoints and per-instance scalars'
            )
        out.set(name, val)
    return out


def rescale_batch(batched_inputs, short, max_size):
    """Resize a detectron2 training batch so each image's shorter side is ``short`` (longer <= ``max_size``).

    Images are resized bilinearly (antialiased when shrinking), boxes / polygons / keypoints scaled by
    the same factors, bit masks resized nearest. Images already at the target size are returned as is.

    Args:
        batched_inputs (list[dict]): detectron2 dicts with ``image`` ``[3, H, W]`` (uint8 or float) and
            optionally ``instances``.
        short (int): target shorter side in pixels.
        max_size (int): cap of the longer side.

    Returns:
        list[dict]: new dicts (inputs are not modified); images become float32.
    """
    out = []
    for d in batched_inputs:
        img = d['image']
        h, w = img.shape[-2:]
        nh, nw = ResizeShortestEdge.get_output_shape(h, w, short, max_size)
        if (nh, nw) == (h, w):
            out.append(d)
            continue
        nd = dict(d)
        nd['image'] = F.interpolate(
            img[None].float(), size=(nh, nw), mode='bilinear', align_corners=False, antialias=nh < h
        )[0]
        if 'instances' in d:
            nd['instances'] = _resize_instances(d['instances'], (nh, nw), nw / w, nh / h)
        out.append(nd)
    return out


# ------------------------------------------------------------------------------------------- policy
def build_policy(cfg, backbone):
    """The training policy (:mod:`backbones.training`) of one iteration, from ``cfg.MODEL.DYNSCALE``.

    ``MODEL.DYNSCALE.POLICY.NAME`` names the method; empty, it follows the keys and the backbone:

    * slimmable + ``SANDWICH.ENABLED``: :class:`~backbones.training.SandwichPolicy` (max width at the largest
      scale, min width, random widths; students' shorter sides from ``SANDWICH.TRAIN_SCALES``; every
      sub-network trained with the ground truth, MutualNet Sec. 4.3);
    * RS-Net: :class:`~backbones.training.ResolutionPolicy` over the scale buckets (``RSNET_TRAIN_MODE``
      "all": every bucket; "random": one per iteration), each with the ground truth;
    * SACT / ACT: :class:`~backbones.training.PonderPolicy` (``TAU``);
    * otherwise one pass (slimmable backbones at ``WIDTH``), or the backbone's default method
      (:func:`backbones.training.policy_for`).

    The other keys of ``MODEL.DYNSCALE.POLICY`` override the policy's options (lower-cased).

    Raises:
        ValueError: the sandwich rule on a non-slimmable backbone, or with frozen BN / parameters; a policy that
            combines the sub-networks' logits (no detection form); an unknown method or option.
    """
    from backbones import training

    D = cfg.MODEL.DYNSCALE
    seed = None if D.SANDWICH.SEED < 0 else D.SANDWICH.SEED
    method = D.POLICY.NAME or None
    options = {}
    if D.SANDWICH.ENABLED or method in ('usnet', 'mutualnet'):
        if not backbone.is_slimmable:
            raise ValueError(
                f'MODEL.DYNSCALE.SANDWICH.ENABLED needs a slimmable backbone; {backbone.name} is '
                f'{backbone.family!r}'
            )
        frozen = [n for n, p in backbone.net.named_parameters() if not p.requires_grad]
        if frozen or cfg.MODEL.DYNSCALE.NORM == 'FrozenBN':
            raise ValueError(
                'the sandwich rule trains random widths, which have no frozen BN statistics: set '
                'MODEL.BACKBONE.FREEZE_AT 0 and MODEL.DYNSCALE.NORM "BN" or "SyncBN" (post-statistics '
                'BN calibrates each evaluated width afterwards)'
            )
        scales = tuple(int(s) for s in D.SANDWICH.TRAIN_SCALES) or None
        method = method or ('mutualnet' if scales else 'usnet')
        options = dict(width_range=backbone.width_range, num_subnets=D.SANDWICH.NUM_SUBNETS, input_sizes=scales,
                       max_input_size=max(scales) if scales else None, distill=None, student_gt_weight=1.0)
    elif method is None and backbone.is_slimmable:
        method = 'standard'  # one pass at MODEL.DYNSCALE.WIDTH
    elif backbone.is_resolution_switchable and method in (None, 'rsnet'):
        method = 'rsnet'
        options = dict(bn_resolutions=backbone.net.resolutions, input_sizes=backbone.scales, mode=D.RSNET_TRAIN_MODE,
                       mred=False)
    elif backbone.has_ponder_cost and method in (None, 'sact'):
        method = 'sact' if method or getattr(backbone.net, 'act', 'none') != 'none' else 'standard'
        options = dict(tau=D.TAU) if method == 'sact' else {}
    options.update({k.lower(): v for k, v in D.POLICY.items() if k != 'NAME'})
    options.setdefault('seed', seed)
    policy = training.policy_for(backbone.net, method, **options)
    if policy.combines:
        raise ValueError(f'{policy!r} combines the logits of its sub-networks, which has no detection form: set '
                         f'MODEL.DYNSCALE.POLICY.MRED False (each scale trained with the ground truth)')
    return policy


def _input_size(policy, subnet):
    """Shorter side a sub-network trains at: its own, else the policy's largest (the loader's scale)."""
    if subnet.input_size is not None:
        return subnet.input_size
    if getattr(policy, 'max_input_size', None):
        return policy.max_input_size
    sizes = getattr(policy, 'input_sizes', None)
    return sizes[0] if sizes else None


# ------------------------------------------------------------------------------------------- loop
class DynscaleSimpleTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose step runs the sub-networks of a training policy (:mod:`backbones.training`).

    Each sub-network: the batch rescaled to its shorter side (longer side <= ``max_size``), the policy's
    context (width), the RS-Net scale bucket, the detector's losses weighted by the policy plus its extra losses
    (the SACT ponder cost); one backward per sub-network, one optimizer step per iteration.

    Args:
        model, data_loader, optimizer: as ``SimpleTrainer``.
        policy (backbones.training.TrainingPolicy): sub-networks per iteration (a pure function of the iteration).
        backbone (DynscaleD2Backbone): the detector's dynscale backbone.
        max_size (int): longer-side cap of the rescaled batches.
        amp (bool): mixed precision (``torch.autocast`` + ``GradScaler``) as detectron2's ``AMPTrainer``.
        skip_nonfinite (bool): skip an iteration whose loss or BN running statistics are non-finite (BN statistics
            restored, no optimizer step, logged with the batch's files); False (default) raises
            :class:`backbones.training.nonfinite.NonFiniteStepError` naming them, before any hook of that iteration
            (the periodic checkpointer) runs.
    """

    def __init__(self, model, data_loader, optimizer, policy, backbone, max_size=1333, amp=False,
                 skip_nonfinite=False):
        super().__init__(model, data_loader, optimizer)
        self.skip_nonfinite = skip_nonfinite
        self.nonfinite_skipped = 0
        self.policy = policy
        self.backbone = backbone
        self.max_size = max_size
        self.amp = amp
        dev = next(_unwrap(model).parameters()).device
        self._device_type = dev.type
        self.grad_scaler = torch.amp.GradScaler(dev.type) if amp else None
        self.last_subnets = []

    def _forward(self, batch, subnet, size):
        bb = self.backbone
        ctx = contextlib.ExitStack()
        ctx.enter_context(self.policy.context(bb.net, subnet))
        ctx.enter_context(bb.scale_context(size if bb.is_resolution_switchable else None))
        if self.amp:
            ctx.enter_context(
                torch.autocast(
                    self._device_type, dtype=torch.float16 if self._device_type == 'cuda' else torch.bfloat16
                )
            )
        with ctx:
            loss_dict = self.model(batch)
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {'total_loss': loss_dict}
            loss_dict = self.policy.subnet_losses(subnet, loss_dict)
            extra = self.policy.extra_losses(_unwrap(self.model))
        logged = {k: v for k, v in extra.items() if not k.startswith('loss')}
        loss_dict.update({k: v for k, v in extra.items() if k.startswith('loss')})
        return loss_dict, logged

    def run_step(self):
        """One iteration: every sub-network forward + backward on the (rescaled) batch, one optimizer step."""
        assert self.model.training, '[DynscaleSimpleTrainer] model was changed to eval mode!'
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        self.optimizer.zero_grad()
        snapshot = BNSnapshot(_unwrap(self.model)) if self.skip_nonfinite else None
        subnets = self.policy.subnets(self.iter)
        summed, logged, per_subnet = {}, {}, {}
        for sub in subnets:
            size = _input_size(self.policy, sub)
            batch = data if size is None else rescale_batch(data, size, self.max_size)
            try:
                loss_dict, extra = self._forward(batch, sub, size)
            except FloatingPointError as e:  # detectron2's own checks (RPN proposals): name the batch too
                if comm.get_world_size() > 1:  # the other ranks cannot be told to skip: stop every rank
                    raise NonFiniteStepError(describe_nonfinite(self.iter, files=[d.get('file_name', '?')
                                                                                  for d in data],
                                                                where=f'Detectron2 training ({e})')) from e
                summed = {'total_loss': torch.tensor(float('nan'))}
                break
            losses = sum(loss_dict.values())
            if self.grad_scaler is not None:
                self.grad_scaler.scale(losses).backward()
            else:
                losses.backward()
            for k, v in loss_dict.items():
                summed[k] = summed[k] + v.detach() if k in summed else v.detach()
            for k, v in extra.items():
                logged.setdefault(k, []).append(float(v))
            if len(subnets) > 1:
                per_subnet[sub.tag] = losses.detach()
        self.after_backward()
        if self._nonfinite(summed, data, snapshot):
            return
        self._write_metrics(summed, data_time)
        if comm.is_main_process():
            storage = get_event_storage()
            for k, vals in logged.items():
                storage.put_scalar(k, float(np.mean(vals)), smoothing_hint=True)
            if per_subnet:
                storage.put_scalar('num_subnets', float(len(subnets)), smoothing_hint=False)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self.last_subnets = list(subnets)
        self.last_subnet_losses = {k: float(v) for k, v in per_subnet.items()}

    def _nonfinite(self, summed, data, snapshot):
        """Check the iteration's losses and every BN running statistic (all ranks agree).

        Returns:
            bool: True when the iteration is skipped (``skip_nonfinite``).

        Raises:
            NonFiniteStepError: the iteration, what was non-finite and this rank's image files.
        """
        total = sum(float(v) for v in summed.values())
        bad_bn = nonfinite_bn_statistics(_unwrap(self.model))
        bad = not math.isfinite(total) or bool(bad_bn)
        if comm.get_world_size() > 1:
            bad = any(comm.all_gather(bad))
        if not bad:
            return False
        files = [d.get('file_name', '?') for d in data]
        msg = describe_nonfinite(self.iter, total if not math.isfinite(total) else None, bad_bn, files,
                                 where='Detectron2 training')
        if not self.skip_nonfinite:
            raise NonFiniteStepError(msg)
        snapshot.restore()
        self.optimizer.zero_grad()
        self.nonfinite_skipped += 1
        logging.getLogger(__name__).warning(f'MODEL.DYNSCALE.SKIP_NONFINITE: iteration skipped '
                                            f'({self.nonfinite_skipped} so far): {msg.split(". Check")[0]}')
        return True

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret['grad_scaler'] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and 'grad_scaler' in state_dict:
            self.grad_scaler.load_state_dict(state_dict['grad_scaler'])


# ------------------------------------------------------------------------------------------- checkpoints
class DynscaleCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that reports unmatched *backbone* keys loudly.

    FPN and heads are expected to be missing from an ImageNet backbone checkpoint; backbone keys are not.
    Missing or shape-mismatched keys of the dynscale backbone (and of the C4 res5 head) raise
    ValueError when ``strict`` (``MODEL.DYNSCALE.STRICT_BACKBONE_LOAD``), else are logged as errors.

    Evaluating or resuming needs the *whole* detector: with ``whole_model`` (``--eval-only``) or
    ``resume_whole_model`` (a resume from the output folder's last checkpoint; ``MODEL.DYNSCALE.NON_STRICT`` turns
    both off) any missing, unexpected or
    shape-mismatched key of any module raises :class:`backbones.checkpoint.CheckpointMismatchError`, listing the
    keys in the detector's and the backbone's naming.
    """

    def __init__(self, model, save_dir='', *, strict=True, whole_model=False, resume_whole_model=False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self.whole_model = whole_model
        self.resume_whole_model = resume_whole_model

    def save(self, name, **kwargs):
        """detectron2's ``save`` (model, checkpointables, ``kwargs`` into ``save_dir/name.pth``, then tagged as the
        last checkpoint), written atomically with per-tensor digests of the model
        (:func:`backbones.checkpoint.atomic_save`, :mod:`backbones.integrity`).

        Raises:
            backbones.checkpoint.CheckpointWriteError: no space left: the path and the space needed are named, no
                partial file is left and ``last_checkpoint`` still names the previous checkpoint.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        from backbones.checkpoint import atomic_save
        data = {'model': self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f'{name}.pth'
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f'Saving checkpoint to {path}')
        atomic_save(data, path)
        self.tag_last_checkpoint(basename)

    def _load_file(self, filename):
        """detectron2's reader (``.pkl`` model-zoo files, torch files, URLs); a local file it cannot read is
        described by :func:`backbones.pretrained.files.load_file` (what it is, and the fix) instead of a bare
        unpickling or zip error.

        Raises:
            backbones.pretrained.files.CheckpointFileError: an unreadable local file.
        """
        try:
            return super()._load_file(filename)
        except Exception:
            local = self.path_manager.get_local_path(filename) if '://' in filename else filename
            if not os.path.isfile(local):
                raise
            from backbones.pretrained.files import load_file
            load_file(local, remedy='resume from an earlier model_*.pth of OUTPUT_DIR (edit '
                                    'OUTPUT_DIR/last_checkpoint) or set MODEL.WEIGHTS to another file')
            raise

    def load(self, path, *args, **kwargs):
        """detectron2's ``load`` (``path`` is named in mismatch errors)."""
        self._loading = path
        return super().load(path, *args, **kwargs)

    def resume_or_load(self, path, *, resume=True):
        """detectron2's ``resume_or_load``; with ``resume_whole_model`` a resume (the output folder has a checkpoint)
        checks the whole model (``whole_model`` stays as set for other loads)."""
        saved = self.whole_model
        if resume and self.resume_whole_model and self.has_checkpoint():
            self.whole_model = True
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self.whole_model = saved

    def _backbone_prefixes(self):
        model = _unwrap(self.model)
        try:
            bb = find_dynscale_backbone(model)
        except ValueError:
            return ()
        names = [n for n, m in model.named_modules() if m is bb]
        pre = [names[0] + '.net.'] if names else []
        if any(n == 'roi_heads.res5' for n, _ in model.named_modules()):
            pre.append('roi_heads.res5.')
        return tuple(pre)

    def _load_model(self, checkpoint):
        from backbones.integrity import DIGEST_KEY, verify_digests

        from .checkpoint import sync_slimmable_configs
        digests = checkpoint.get(DIGEST_KEY) or (checkpoint.get('dynscale_meta') or {}).get(DIGEST_KEY)
        verify_digests(checkpoint.get('model', {}), digests, getattr(self, '_loading', 'checkpoint'))
        if self.whole_model:
            from backbones.checkpoint import check_state_fits
            check_state_fits(_unwrap(self.model), checkpoint.get('model', {}), getattr(self, '_loading', 'checkpoint'),
                             fix='MODEL.DYNSCALE.NON_STRICT True')
        removed = sync_slimmable_configs(_unwrap(self.model), checkpoint.get('model', {}))
        if removed:
            logging.getLogger(__name__).info(f'slimmable BN configs without statistics in the checkpoint '
                                             f'(uncalibrated, calibrated before evaluation): {removed}')
        incompatible = super()._load_model(checkpoint)
        prefixes = self._backbone_prefixes()
        if incompatible is None or not prefixes:
            return incompatible
        missing = [k for k in incompatible.missing_keys if k.startswith(prefixes)]
        mismatch = [k for k, *_ in incompatible.incorrect_shapes if k.startswith(prefixes)]
        if missing or mismatch:
            msg = (
                f'backbone weights do not match the model: {len(missing)} missing {missing[:10]}, '
                f'{len(mismatch)} shape-mismatched {mismatch[:10]}. Convert dynscale backbone checkpoints '
                'with '
                f'`python tools/convert_weights.py <weights> <out.pkl> --to detectron2 --config-file <this config>` '
                f'and '
                f'check that MODEL.DYNSCALE.NAME / WIDTH_RANGE / RESOLUTIONS match the checkpoint.'
            )
            if self.strict:
                raise ValueError(msg)
            logging.getLogger(__name__).error(msg)
        return incompatible


# ------------------------------------------------------------------------------------------- evaluation
def calibration_batches(cfg, model, scale, num_batches):
    """``num_batches`` normalised, padded training batches ``[N, 3, H, W]`` at shorter side ``scale``.

    The images come from ``DATASETS.TRAIN`` through detectron2's train loader (train augmentation,
    ``INPUT.MIN_SIZE_TRAIN = (scale,)``, longer side <= ``INPUT.MAX_SIZE_TEST``), then the detector's
    own ``preprocess_image`` (pixel mean/std, padding to ``size_divisibility``).
    """
    c = cfg.clone()
    c.defrost()
    c.INPUT.MIN_SIZE_TRAIN = (int(scale),)
    c.INPUT.MIN_SIZE_TRAIN_SAMPLING = 'choice'
    c.INPUT.MAX_SIZE_TRAIN = cfg.INPUT.MAX_SIZE_TEST
    c.DATALOADER.NUM_WORKERS = 0
    loader = build_detection_train_loader(c)
    model = _unwrap(model)
    out = []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i >= num_batches:
                break
            out.append(model.preprocess_image(batch).tensor)
    return out


def calibrate(cfg, model, width, scale):
    """Post-statistics BN of the slimmable backbone at ``(width, scale)`` (:func:`backbones.training.calibrate`:
    statistics averaged over the processes, so every rank evaluates the same network).

    The statistics are stored as the backbone's private statistics of the configuration ``(width, scale)``
    (MutualNet calibrates per width-resolution pair) and selected with
    ``backbone.net.width_context(width, scale)``.

    Returns:
        bool: whether a calibration ran (only slimmable backbones with trainable BN statistics calibrate).
    """
    from backbones import training

    D = cfg.MODEL.DYNSCALE
    bb = find_dynscale_backbone(model)
    if not (D.CALIBRATION.ENABLED and bb.is_slimmable and D.NORM != 'FrozenBN'):
        return False
    batches = calibration_batches(cfg, model, scale, D.CALIBRATION.NUM_BATCHES)
    n = training.calibrate(bb.net, batches, backbone=bb.net, width=width, bn_resolution=int(scale))
    logger.info(f'calibrated BN statistics at width {width} scale {scale} on {n} batches')
    return True


class _PonderMeter:
    """Forward hook averaging the ponder cost of a SACT detector over an evaluation run and, with ``save_dir``
    (``MODEL.DYNSCALE.SAVE_PONDER_MAPS``), saving each image's backbone ponder-cost map: ``<image_id>.npy``
    (``[h, w]`` float32 at the network input's size, the stages' maps resized nearest-neighbour and summed) and
    ``<image_id>.png`` (drawn over the input image with a colour bar, :func:`backbones.sact.drawing.draw_ponder_map`
    with the per-stage maps)."""

    def __init__(self, model, save_dir=None, input_format='BGR'):
        self.model = model
        self.values = []
        self.save_dir, self.input_format, self.saved = save_dir, input_format, 0
        if save_dir:
            os.makedirs(save_dir, exist_ok=True)
        self.handle = _unwrap(model).register_forward_hook(self)

    def __call__(self, module, args, output):
        from backbones.training import ponder_costs_of

        costs = ponder_costs_of(module)
        if costs:
            n = costs[0].shape[0]
            per_img = sum(c.detach().float().reshape(c.shape[0], -1).mean(1).mean() for c in costs)
            self.values.extend([float(per_img)] * max(1, n))
        if self.save_dir and args and isinstance(args[0], (list, tuple)):
            self._save(find_dynscale_backbone(module).net.ponder_costs, args[0])

    def _save(self, costs, inputs):
        """Maps of the padded batch (stage 1 is at stride 4), cropped to each input image."""
        from backbones.sact.drawing import draw_ponder_map, stage_ponder_maps
        if not costs:
            return
        padded = (costs[0].shape[-2] * 4, costs[0].shape[-1] * 4)
        stages = stage_ponder_maps(costs, padded).cpu().numpy()
        for i, inp in enumerate(inputs):
            img = inp['image'].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
            if self.input_format == 'BGR':
                img = img[..., ::-1]
            h, w = img.shape[:2]
            per_stage = stages[i][:, :h, :w]
            stem = os.path.splitext(os.path.basename(inp.get('file_name', str(self.saved))))[0]
            name = str(inp.get('image_id', stem))
            np.save(os.path.join(self.save_dir, f'{name}.npy'), per_stage.sum(0).astype(np.float32))
            draw_ponder_map(img, per_stage.sum(0), os.path.join(self.save_dir, f'{name}.png'), stage_maps=per_stage,
                            title=inp.get('file_name'))
            self.saved += 1

    def close(self):
        self.handle.remove()
        return float(np.mean(self.values)) if self.values else None


# ------------------------------------------------------------------------------------------- trainer
class DynscaleTrainer(DefaultTrainer):
    """``DefaultTrainer`` for dynscale backbones (see the module docstring for what it adds).

    Use it exactly like detectron2's: ``trainer = DynscaleTrainer(cfg); trainer.resume_or_load(resume);
    trainer.train()``; ``DynscaleTrainer.test(cfg, model)`` evaluates every ``MODEL.DYNSCALE.EVAL_POINTS``.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        d2_logger = logging.getLogger('detectron2')
        if not d2_logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        backbone = find_dynscale_backbone(model)
        self.policy = build_policy(cfg, backbone)
        self.policy.check_agreement()  # every rank draws the same sub-networks (raises otherwise)
        model = self.wrap_ddp(cfg, model, self.policy)
        D = cfg.MODEL.DYNSCALE
        max_size = D.SANDWICH.MAX_SIZE if D.SANDWICH.ENABLED else cfg.INPUT.MAX_SIZE_TRAIN
        self._trainer = DynscaleSimpleTrainer(
            model, data_loader, optimizer, self.policy, backbone, max_size=max_size, amp=cfg.SOLVER.AMP.ENABLED,
            skip_nonfinite=cfg.MODEL.DYNSCALE.SKIP_NONFINITE,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DynscaleCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), strict=cfg.MODEL.DYNSCALE.STRICT_BACKBONE_LOAD,
            resume_whole_model=not cfg.MODEL.DYNSCALE.NON_STRICT,
        )
        if cfg.MODEL.DYNSCALE.NON_STRICT:
            logging.getLogger(__name__).warning('MODEL.DYNSCALE.NON_STRICT: a resumed checkpoint is loaded without '
                                                'checking that it fits the whole model')
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @staticmethod
    def needs_find_unused_parameters(cfg, model, policy=None):
        """True when some parameters can receive no gradient in a step (DDP must then search for them): the
        training policy says so (SACT/ACT halted units; RS-Net private BNs of the other buckets, when they are
        trainable), or ``MODEL.DYNSCALE.FIND_UNUSED_PARAMETERS``.
        """
        if cfg.MODEL.DYNSCALE.FIND_UNUSED_PARAMETERS:
            return True
        bb = find_dynscale_backbone(model)
        policy = policy or build_policy(cfg, bb)
        if not policy.find_unused_parameters:
            return False
        if bb.is_resolution_switchable:
            return len(bb.scales) > 1 and any(p.requires_grad for n, p in bb.net.named_parameters() if '.bns.' in n)
        return True

    @classmethod
    def wrap_ddp(cls, cfg, model, policy=None):
        """``create_ddp_model`` with ``broadcast_buffers=False`` (as detectron2), ``find_unused_parameters``
        where needed, and ``device_ids=None`` for CPU models (gloo)."""
        if comm.get_world_size() == 1:
            return model
        fu = cls.needs_find_unused_parameters(cfg, model, policy)
        dev = next(model.parameters()).device
        kw = {'device_ids': None} if dev.type == 'cpu' else {}
        logger.info(f'DDP: find_unused_parameters={fu}')
        return create_ddp_model(model, broadcast_buffers=False, find_unused_parameters=fu, **kw)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """detectron2's ``COCOEvaluator`` (bbox, and segm when the model predicts masks)."""
        import os

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, 'inference', dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    @staticmethod
    def eval_points(cfg):
        """``[(width, scale)]`` from ``MODEL.DYNSCALE.EVAL_POINTS`` or ``[(WIDTH, INPUT.MIN_SIZE_TEST)]``."""
        D = cfg.MODEL.DYNSCALE
        if D.EVAL_POINTS:
            return [(float(w), int(s)) for w, s in D.EVAL_POINTS]
        return [(float(D.WIDTH), int(cfg.INPUT.MIN_SIZE_TEST))]

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate at every (width, scale) point, calibrating slimmable BN first.

        Returns:
            dict: detectron2's result dict for a single point; otherwise ``{'w{width}_s{scale}': result}``.
            SACT models also report ``{'ponder': {'cost': mean ponder cost per image}}``.
        """
        from backbones.training import SandwichPolicy

        bb = find_dynscale_backbone(model)
        # evaluation switch of the width (a fixed seed: nothing is drawn, no rank agreement needed)
        policy = SandwichPolicy(bb.width_range, seed=0) if bb.is_slimmable else None
        results = OrderedDict()
        points = cls.eval_points(cfg)
        for width, scale in points:
            if not bb.is_slimmable:
                width = None
            key = f'w{width if width is not None else 1.0:g}_s{scale}'
            c = cfg.clone()
            c.defrost()
            c.INPUT.MIN_SIZE_TEST = scale
            c.freeze()
            with contextlib.ExitStack() as stack:
                stack.enter_context(bb.scale_context(scale if bb.is_resolution_switchable else None))
                if bb.is_slimmable:
                    calibrated = calibrate(cfg, model, width, scale)
                    # the statistics calibrated for (width, scale), else the width's trained ones
                    stack.enter_context(policy.eval_context(bb.net, width, int(scale) if calibrated else None))
                save = cfg.MODEL.DYNSCALE.SAVE_PONDER_MAPS
                if save:
                    save = os.path.join(cfg.OUTPUT_DIR, save, key if len(points) > 1 else '')
                meter = _PonderMeter(model, save, cfg.INPUT.FORMAT) if bb.has_ponder_cost else None
                try:
                    res = super(DynscaleTrainer, cls).test(c, model, evaluators)
                finally:
                    ponder = meter.close() if meter else None
            if ponder is not None and isinstance(res, dict):
                res = OrderedDict(res)
                res['ponder'] = {'cost': ponder}
                logger.info(f'mean ponder cost per image at scale {scale}: {ponder:.4f}'
                            + (f'; {meter.saved} ponder-cost maps saved to {meter.save_dir}' if meter.save_dir else ''))
            results[key] = res
        if len(results) == 1:
            return next(iter(results.values()))
        return results
