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
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import COCOEvaluator
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger

from backbones.training.nonfinite import BNSnapshot, NonFiniteStepError, describe_nonfinite, nonfinite_bn_statistics

from .backbone import _unwrap, find_dynscale_backbone
from .checkpointer import DynscaleCheckpointer
from .evaluation import _PonderMeter, calibrate
from .policy import _input_size, build_policy, policy_options
from .rescale import rescale_batch

logger = logging.getLogger(__name__)


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
        from backbones import training

        bb = find_dynscale_backbone(model)
        # the evaluation switch is the policy's: MODEL.DYNSCALE.POLICY's method, else the model's own (a fixed
        # seed: nothing is drawn, no rank agreement)
        name = cfg.MODEL.DYNSCALE.POLICY.NAME or None
        policy = training.policy_for(bb.net, name, seed=0, **(policy_options(cfg) if name else {}))
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
                if policy.needs_calibration:  # post-statistics BN of this (width, scale) first
                    calibrated = calibrate(cfg, model, width, scale, policy)
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
