"""MMEngine hooks for dynscale models: slimmable BN calibration before evaluation, SACT ponder-map saving,
the check that the data preprocessor normalises inputs as the pretrained weights expect."""
import os
import os.path as osp

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from torch import nn

from .backbones import register_mm_module

__all__ = ['SlimmableBNCalibrationHook', 'PonderMapSaveHook', 'InputNormalizationHook', 'calibrate_head_bn']


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


@torch.no_grad()
def calibrate_head_bn(model, batches):
    """Recompute the running statistics of every ``_BatchNorm`` outside the backbone (decode/auxiliary heads,
    necks) as exact averages over ``batches`` (post-statistics BN, US-Nets Sec. 3.3), with the backbone at its
    current width/statistics in eval mode.

    Args:
        model (nn.Module): an MMSeg segmentor (called as ``model(inputs)``, ``mode='tensor'``).
        batches (list[Tensor]): preprocessed image batches ``[N, 3, H, W]`` (already at the evaluation scale).

    Returns:
        int: number of BN layers recalibrated.
    """
    backbone_mods = set(model.backbone.modules())
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m not in backbone_mods and m.track_running_stats]
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        for x in batches:
            model(x)
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
        for m, mode in modes.items():
            m.training = mode
    return len(bns)


@register_mm_module(registry='HOOKS')
class SlimmableBNCalibrationHook(Hook):
    """Post-statistics BN before every validation/test epoch of a slimmable segmentor.

    Takes ``num_batches`` batches of the training dataloader (train-time augmentation, as US-Nets/MutualNet
    calibrate), calls ``backbones.slimmable.calibrate_bn`` for the ``(width, resolution)`` that the model's
    ``test_cfg`` evaluates (``SlimmableEncoderDecoder.calibration_config``), and with ``calibrate_head``
    also recomputes the heads' BN statistics at that configuration (:func:`calibrate_head_bn`).

    Args:
        num_batches (int): batches to average over (MutualNet: 9 x 1024 images; US-Nets: ~2000 images).
        calibrate_head (bool): also recalibrate the BNs shared by all widths in the decode head.

    Raises:
        ValueError: the model has no ``calibration_config`` (not a :class:`SlimmableEncoderDecoder`) or no
            training dataloader is configured.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, num_batches=5, calibrate_head=True):
        if num_batches < 1:
            raise ValueError(f'num_batches must be >= 1, got {num_batches}')
        self.num_batches = num_batches
        self.calibrate_head = calibrate_head

    def _loader(self, runner):
        from mmengine.runner import BaseLoop
        loop = getattr(runner, '_train_loop', None)
        if isinstance(loop, BaseLoop):
            return loop.dataloader
        if getattr(self, '_built_loader', None) is None:
            cfg = runner.cfg.get('train_dataloader') if getattr(runner, 'cfg', None) is not None else None
            if not cfg:
                raise ValueError('SlimmableBNCalibrationHook needs train_dataloader in the config: BN '
                                 'statistics are calibrated on training batches')
            self._built_loader = runner.build_dataloader(cfg, seed=runner.seed)
        return self._built_loader

    def _batches(self, runner, model):
        out = []
        for data in self._loader(runner):
            out.append(model.data_preprocessor(data, True)['inputs'])
            if len(out) >= self.num_batches:
                break
        return out

    def calibrate(self, runner):
        """Calibrate ``runner.model`` for its test configuration; returns ``(width, resolution)``."""
        from backbones.slimmable import calibrate_bn
        model = _unwrap(runner.model)
        if not hasattr(model, 'calibration_config'):
            raise ValueError(f'SlimmableBNCalibrationHook needs a SlimmableEncoderDecoder, '
                             f'got {type(model).__name__}')
        width, res = model.calibration_config()
        batches = self._batches(runner, model)
        calibrate_bn(model, batches, width=width, resolution=res)
        n_head = 0
        if self.calibrate_head:
            scaled = [model._scale(x, res) for x in batches]
            with model.backbone.model.width_context(width, res):
                n_head = calibrate_head_bn(model, scaled)
        print_log(f'calibrated BN statistics for width {width}, resolution {res} on {len(batches)} batches '
                  f'({n_head} head BN layers)', logger='current')
        return width, res

    def before_val_epoch(self, runner):
        self.calibrate(runner)

    def before_test_epoch(self, runner):
        self.calibrate(runner)


@register_mm_module(registry='HOOKS')
class PonderMapSaveHook(Hook):
    """Save the SACT ponder-cost maps of test predictions and log the mean ponder cost.

    Every ``SegDataSample`` with ``ponder_map`` (set by :class:`plugins.mm.segmentors.SACTEncoderDecoder`) is
    written to ``<out_dir>/<image name>.npy`` (float32 ``[H, W]``, original image size) and, with
    ``save_png``, to ``<image name>.png`` (grey levels: ponder cost / ``png_max`` x 255, clipped).

    Args:
        out_dir (str | None): folder; default ``<work_dir>/ponder_maps``.
        save_png (bool): also write an 8-bit visualisation.
        png_max (float | None): ponder cost mapped to white; None = the per-image maximum.
        max_images (int | None): stop saving after this many images (the mean is over all).
    """

    def __init__(self, out_dir=None, save_png=True, png_max=None, max_images=None):
        self.out_dir = out_dir
        self.save_png = save_png
        self.png_max = png_max
        self.max_images = max_images
        self._sum = 0.0
        self._count = 0
        self._saved = 0

    def before_test_epoch(self, runner):
        self._sum, self._count, self._saved = 0.0, 0, 0
        self._dir = self.out_dir or osp.join(runner.work_dir, 'ponder_maps')
        os.makedirs(self._dir, exist_ok=True)

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        from PIL import Image
        for ds in outputs or []:
            if 'ponder_map' not in ds:
                continue
            m = ds.ponder_map.data[0].float().cpu().numpy()
            self._sum += float(m.mean())
            self._count += 1
            if self.max_images is not None and self._saved >= self.max_images:
                continue
            name = osp.splitext(osp.basename(ds.metainfo.get('img_path', f'{batch_idx:06d}')))[0]
            np.save(osp.join(self._dir, name + '.npy'), m.astype(np.float32))
            if self.save_png:
                hi = self.png_max or max(float(m.max()), 1e-6)
                grey = np.clip(m / hi * 255.0, 0, 255).astype(np.uint8)
                Image.fromarray(grey).save(osp.join(self._dir, name + '.png'))
            self._saved += 1

    def after_test_epoch(self, runner, metrics=None):
        if self._count:
            mean = self._sum / self._count
            runner.message_hub.update_scalar('test/ponder_cost', mean)
            print_log(f'mean ponder cost {mean:.3f} over {self._count} images; {self._saved} maps saved to '
                      f'{self._dir}', logger='current')


def _preprocessor_normalization(pre):
    """``(mean, std, channel_order)`` a MMEngine data preprocessor feeds the model (None if it does not
    normalise)."""
    if not getattr(pre, '_enable_normalize', False):
        return None
    conv = getattr(pre, '_channel_conversion', getattr(pre, 'channel_conversion', False))
    mean = [float(v) for v in pre.mean.flatten()]
    std = [float(v) for v in pre.std.flatten()]
    return mean, std, 'RGB' if conv else 'BGR'


@register_mm_module(registry='HOOKS')
class InputNormalizationHook(Hook):
    """Make the ``data_preprocessor`` normalise inputs the way the loaded backbone weights expect.

    After the weights are initialised (``before_train``), and before evaluation, every dynscale backbone that
    loaded pretrained weights (:attr:`plugins.mm.backbones.DynscaleBackbone.input_normalization`: pixel
    mean/std and channel order from the checkpoint metadata; RS-Nets' released files, for instance, expect
    unnormalised [0, 1] RGB, i.e. mean 0 / std 255) is compared with the model's ``data_preprocessor``
    (``mean``, ``std``, ``bgr_to_rgb``).

    Args:
        mode (str): ``'check'`` raises on a disagreement; ``'from_checkpoint'`` sets the preprocessor's mean,
            std and channel conversion from the weights (the config opts into the checkpoint's values).

    Raises:
        ValueError: (``'check'``) the preprocessor disagrees with the weights; the message gives both and the
            ``data_preprocessor`` lines to use.
    """

    priority = 'VERY_HIGH'

    def __init__(self, mode='check'):
        if mode not in ('check', 'from_checkpoint'):
            raise ValueError(f"InputNormalizationHook mode must be 'check' or 'from_checkpoint', got {mode!r}")
        self.mode = mode

    def apply(self, runner):
        """Check (or set) the preprocessor against every dynscale backbone with loaded weights."""
        from .backbones import DynscaleBackbone

        model = _unwrap(runner.model)
        pre = getattr(model, 'data_preprocessor', None)
        for m in model.modules():
            if not isinstance(m, DynscaleBackbone) or m.input_normalization is None or pre is None:
                continue
            norm = m.input_normalization
            have = _preprocessor_normalization(pre)
            if self.mode == 'from_checkpoint':
                for name, val in (('mean', norm.mean), ('std', norm.std)):
                    old = pre._buffers.get(name)
                    t = torch.tensor(val, dtype=torch.float32).view(-1, 1, 1)
                    if old is not None:
                        pre._buffers[name] = t.to(old.device)
                    else:
                        pre.register_buffer(name, t, False)
                pre._enable_normalize = True
                flag = norm.channel_order == 'RGB'
                for attr in ('_channel_conversion', 'channel_conversion'):
                    if hasattr(pre, attr):
                        setattr(pre, attr, flag)
                print_log(f'data_preprocessor normalisation set from the {m.arch} weights: {norm}', logger='current')
                continue
            if have is None or not norm.matches(*have):
                got = 'no normalisation' if have is None else f'{have[2]} mean {have[0]} std {have[1]}'
                raise ValueError(
                    f'the {m.arch} weights expect inputs {norm}, but the data_preprocessor gives {got}. Set '
                    f'data_preprocessor=dict(mean={list(norm.mean)}, std={list(norm.std)}, '
                    f'bgr_to_rgb={norm.channel_order == "RGB"}) or '
                    f"default_hooks.input_normalization=dict(type='InputNormalizationHook', mode='from_checkpoint')")

    def before_train(self, runner):
        self.apply(runner)

    def before_val(self, runner):
        self.apply(runner)

    def before_test(self, runner):
        self.apply(runner)
