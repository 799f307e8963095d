"""Evaluation pieces of the Detectron2 trainer: post-statistics BN calibration batches at a (width, scale) point
and the ponder-cost meter of SACT backbones."""
import logging
import os

import numpy as np
import torch
from detectron2.data import build_detection_train_loader

from .backbone import _unwrap, find_dynscale_backbone

logger = logging.getLogger(__name__)


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


def calibrate(cfg, model, width, scale, policy=None):
    """Post-statistics BN of the backbone at ``(width, scale)`` (:func:`backbones.training.calibrate`: statistics
    averaged over the processes, so every rank evaluates the same network).

    The statistics are stored as the configuration ``(width, scale)``'s (MutualNet calibrates per
    width-resolution pair: the slimmable backbone's private statistics) inside the policy's
    ``calibration_context`` and selected by its ``eval_context(backbone, width, scale)``.

    Args:
        policy (TrainingPolicy | None): the model's evaluation policy (None: the backbone's default one).

    Returns:
        bool: whether a calibration ran (a policy with ``needs_calibration`` and trainable BN statistics).
    """
    from backbones import training

    D = cfg.MODEL.DYNSCALE
    bb = find_dynscale_backbone(model)
    policy = policy or training.policy_for(bb.net, seed=0)
    if not (D.CALIBRATION.ENABLED and policy.needs_calibration and D.NORM != 'FrozenBN'):
        return False
    batches = calibration_batches(cfg, model, scale, D.CALIBRATION.NUM_BATCHES)
    n = training.calibrate(bb.net, batches, backbone=bb.net, width=width, bn_resolution=int(scale), policy=policy)
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
