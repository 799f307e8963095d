"""MMEngine hooks for dynscale segmentors and detectors (registered in MMSeg's and MMDet's ``HOOKS``): BN
calibration before evaluation, SACT ponder-map saving, the check that the data preprocessor normalises inputs as
the pretrained weights expect.  Former names (``SlimmableBNCalibrationHook``, ``SlimmableDetBNCalibrationHook``,
``DetPonderMapSaveHook``) raise, naming the hook that replaced them."""
import functools
import itertools
import os
import os.path as osp

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmengine.structures import PixelData

from backbones.sact.drawing import draw_ponder_map

from .registry import register_mm_module, register_renamed
from .runtime import unwrap_model as _unwrap

__all__ = ['BNCalibrationHook', 'calibration_loader', 'PonderMapSaveHook', 'InputNormalizationHook']


@register_mm_module(registry='HOOKS')
class BNCalibrationHook(Hook):
    """Post-statistics BN before every validation / test epoch, for slimmable segmentors and detectors.

    US-Nets (Yu & Huang 2019, Sec. 3.3) and MutualNet (Yang et al. 2020, Sec. 3.3) re-estimate the BN statistics
    of each evaluated (width, resolution) after training.  The hook takes ``num_batches`` batches of the training
    dataloader (training augmentation, as both papers calibrate), has the model preprocess and scale them to the
    evaluated resolution (``model.calibration_inputs``), and calls :func:`backbones.training.calibrate` for the
    model's evaluation configuration (``model.calibration_config()``): the backbone's statistics of that
    configuration and the BNs of ``model.calibration_head_scope`` (a segmentor's decode head; a detector's neck)
    are re-estimated.  The batches are the first ``num_batches`` of a seeded permutation of the training set, each
    image augmented from a seed of its own (:func:`calibration_loader`); under DDP each rank forwards its share of
    those batches and the statistics are averaged over the ranks weighted by their batch counts, so that every rank
    evaluates, rank 0 checkpoints, and one process or several report, the same network.

    Args:
        num_batches (int): batches to average over (MutualNet: 9 x 1024 images; US-Nets: ~2000 images).
        heads (bool): also re-estimate the BNs of the model's ``calibration_head_scope``.
        width (float | None), resolution (int | None): evaluate and calibrate this configuration instead of the
            model's (``model.set_calibration_config``).
        dataloader (dict | Iterable | None): dataloader config (None: the config's ``train_dataloader``; its
            dataset, ``batch_size``, ``num_workers`` and ``collate_fn`` are used, its sampler is not), or the
            data batches themselves.
        on_val (bool), on_test (bool): calibrate before validation / testing.
        seed (int): seed of the calibration batches and of their augmentation (not the runner's seed: the same
            checkpoint calibrates the same way in every run).

    Raises:
        ValueError: ``num_batches < 1``; a model whose policy does not calibrate (not a slimmable segmentor /
            detector of plugins.mm); no training data.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, num_batches=5, heads=True, width=None, resolution=None, dataloader=None, on_val=True,
                 on_test=True, seed=0):
        if num_batches < 1:
            raise ValueError(f'num_batches must be >= 1, got {num_batches}')
        self.num_batches, self.heads, self.seed = num_batches, heads, seed
        self.width, self.resolution = width, resolution
        self.dataloader_cfg, self.on_val, self.on_test = dataloader, on_val, on_test
        self._built_loader = None

    def _loader(self, runner):
        cfg = self.dataloader_cfg
        if cfg is None and getattr(runner, 'cfg', None) is not None:
            cfg = runner.cfg.get('train_dataloader')
        if not cfg:
            raise ValueError('BNCalibrationHook needs training data: give dataloader=... or a train_dataloader '
                             'in the config (BN statistics are calibrated on training batches)')
        if not isinstance(cfg, dict):
            return cfg  # batches given directly (an iterable of data dicts)
        if self._built_loader is None:
            self._built_loader = calibration_loader(cfg, self.num_batches, self.seed)
        return self._built_loader

    def calibrate(self, runner):
        """Calibrate ``runner.model`` for its evaluation configuration; returns ``(width, resolution)``."""
        from backbones.training import calibrate, world_size
        model = _unwrap(runner.model)
        need = ('calibration_config', 'calibration_inputs', 'calibration_forward')
        policy = getattr(model, 'policy', None)
        if not all(hasattr(model, n) for n in need) or policy is None or not policy.needs_calibration:
            raise ValueError(f'BNCalibrationHook re-estimates the BN statistics of segmentors and detectors whose '
                             f'policy needs_calibration (e.g. SlimmableEncoderDecoder, '
                             f'SlimmableTwoStageDetector); {type(model).__name__} with {policy!r} needs none: remove '
                             f'the hook from the config')
        if self.width is not None or self.resolution is not None:
            model.set_calibration_config(self.width, self.resolution)
        width, res = model.calibration_config()
        batches = (model.calibration_inputs(d) for d in itertools.islice(self._loader(runner), self.num_batches))
        heads = model.calibration_head_scope if self.heads else False
        n = calibrate(model, batches, backbone=model.backbone.model, width=width, bn_resolution=res,
                      heads=heads if heads is not None else False, forward=lambda m, x: m.calibration_forward(x),
                      policy=policy)
        print_log(f'calibrated BN statistics for width {width}, resolution {res or "as loaded"} on {n} batches'
                  + (' (averaged over ranks, weighted by their batches)' if world_size() > 1 else ''),
                  logger='current')
        return width, res

    def before_val_epoch(self, runner):
        if self.on_val:
            self.calibrate(runner)

    def before_test_epoch(self, runner):
        if self.on_test:
            self.calibrate(runner)


def calibration_loader(dataloader_cfg, num_batches, seed=0):
    """The calibration DataLoader of ``dataloader_cfg``: this process's share of ``num_batches`` global batches.

    The dataset of ``dataloader_cfg`` is read through :class:`backbones.training.SeededSamples` (its random
    augmentation seeded per image) in the order of :class:`backbones.training.CalibrationSampler` (a seeded
    permutation cut into batches of ``batch_size``, global batch ``k`` read by rank ``k % world_size``), so the
    batches do not depend on the number of processes (US-Nets Sec. 3.3, post-statistics BN).

    Args:
        dataloader_cfg (dict): an MMEngine dataloader config (``dataset``, ``batch_size``, optional
            ``num_workers``, ``collate_fn``); its ``sampler`` is replaced.
        num_batches (int): global batches.
        seed (int): calibration seed.

    Returns:
        torch.utils.data.DataLoader: yields collated data dicts.

    Raises:
        ValueError: a dataset smaller than one batch.
    """
    import copy

    import torch.distributed as dist
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS, FUNCTIONS

    from backbones.training import CalibrationSampler, SeededSamples, world_size
    cfg = copy.deepcopy(dict(dataloader_cfg))
    dataset = cfg['dataset']
    if isinstance(dataset, dict):
        dataset = DATASETS.build(dataset)
    batch_size = int(cfg.get('batch_size', 1))
    world = world_size()
    rank = dist.get_rank() if world > 1 else 0
    sampler = CalibrationSampler(len(dataset), batch_size, world, rank, seed=seed, num_batches=num_batches)
    if sampler.num_global_batches == 0:
        raise ValueError(f'BN calibration needs one batch of {batch_size} training images, the dataset has '
                         f'{len(dataset)}: lower train_dataloader.batch_size or give more training data')
    collate = cfg.get('collate_fn') or dict(type='pseudo_collate')
    if isinstance(collate, dict):
        collate = dict(collate)
        fn = collate.pop('type')
        fn = FUNCTIONS.get(fn) if isinstance(fn, str) else fn
        collate = functools.partial(fn, **collate) if collate else fn
    return torch.utils.data.DataLoader(SeededSamples(dataset, seed), batch_size=batch_size, sampler=sampler,
                                       num_workers=int(cfg.get('num_workers', 0)), collate_fn=collate or pseudo_collate,
                                       drop_last=True)


_CALIBRATION_ARGS = 'one hook for segmentors and detectors; arguments num_batches, heads, width, resolution, dataloader'
register_renamed('SlimmableBNCalibrationHook', 'BNCalibrationHook', Hook, 'HOOKS', hint=_CALIBRATION_ARGS)
register_renamed('SlimmableDetBNCalibrationHook', 'BNCalibrationHook', Hook, 'HOOKS', hint=_CALIBRATION_ARGS)


@register_mm_module(registry='HOOKS')
class PonderMapSaveHook(Hook):
    """Save the SACT ponder-cost map of every test image and log the mean ponder cost (segmentors and detectors).

    Before testing, a model with ``save_ponder_maps`` (:class:`plugins.mm.detectors.SACTTwoStageDetector`) is
    switched to attach its maps; segmentors (:class:`plugins.mm.segmentors.SACTEncoderDecoder`) always do.
    Every test sample with ``ponder_map`` (``PixelData`` ``[1, H, W]`` at the original image size for
    segmentation, a ``[h, w]`` tensor at the network input's size for detection; Figurnov et al. 2017, Fig. 1)
    is written to ``<out_dir>/<name>.npy`` (float32 ``[H, W]``; ``name`` the COCO ``img_id`` when the sample
    has one, else the image file's stem) and, with ``save_png``, to ``<name>.png``: the map over the image (read
    from ``img_path``, resized to the map) with a colour bar topped at ``png_max``
    (:func:`backbones.sact.drawing.draw_ponder_map`, the drawing of every dynscale tool).  The mean over images
    is logged as ``test/ponder_cost``.

    Args:
        out_dir (str | None): folder; None = ``<work_dir>/ponder_maps``, a relative path is under the work dir.
        save_png (bool): also draw the map over the image (PNG with a colour bar).
        png_max (float | None): top of the colour scale; None = the per-image maximum.
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

    def before_test(self, runner):
        """Have a detector attach ponder maps (``save_ponder_maps``); create the folder."""
        model = _unwrap(runner.model)
        if hasattr(model, 'save_ponder_maps'):
            model.save_ponder_maps = True
        out = self.out_dir or 'ponder_maps'
        self._dir = out if osp.isabs(out) else osp.join(runner.work_dir, out)
        os.makedirs(self._dir, exist_ok=True)

    def before_test_epoch(self, runner):
        self._sum, self._count, self._saved = 0.0, 0, 0

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        from PIL import Image
        for ds in outputs or []:
            if 'ponder_map' not in ds:
                continue
            m = ds.ponder_map
            m = (m.data[0] if isinstance(m, PixelData) else m).float().cpu().numpy()
            self._sum += float(m.mean())
            self._count += 1
            if self.max_images is not None and self._saved >= self.max_images:
                continue
            name = ds.metainfo.get('img_id')
            if name is None:
                name = osp.splitext(osp.basename(ds.metainfo.get('img_path', f'{batch_idx:06d}')))[0]
            np.save(osp.join(self._dir, f'{name}.npy'), m.astype(np.float32))
            if self.save_png:
                img_path = ds.metainfo.get('img_path')
                if img_path and osp.isfile(img_path):  # the image at the map's size (the network input's)
                    img = np.asarray(Image.open(img_path).convert('RGB').resize((m.shape[1], m.shape[0])))
                else:
                    img = np.full((*m.shape, 3), 128, np.uint8)
                stages = ds.get('ponder_stage_maps')
                if stages is not None:
                    stages = (stages.data if isinstance(stages, PixelData) else stages).float().cpu().numpy()
                draw_ponder_map(img, m, osp.join(self._dir, f'{name}.png'), stage_maps=stages, title=img_path,
                                vmax=self.png_max)
            self._saved += 1

    def after_test_epoch(self, runner, metrics=None):
        if self._count:
            mean = self._sum / self._count
            runner.message_hub.update_scalar('test/ponder_cost', mean)
            print_log(f'mean ponder cost {mean:.3f} over {self._count} images; {self._saved} maps saved to '
                      f'{self._dir}', logger='current')


register_renamed('DetPonderMapSaveHook', 'PonderMapSaveHook', Hook, 'HOOKS',
                 hint='one hook for segmentors and detectors; arguments out_dir, save_png, png_max, max_images')


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


@register_mm_module(registry='HOOKS')
class TensorDigestHook(Hook):
    """Record a digest per tensor in every checkpoint MMEngine writes (``meta['tensor_digests']``,
    :mod:`backbones.integrity`), so that a damaged file is refused by :func:`plugins.mm.cli.check_checkpoint`
    (``corrupted: tensor NAME in PATH``) instead of being scored with one garbage tensor.

    The OpenMMLab tools of this project add it to every config (:func:`plugins.mm.cli.load_config`); add
    ``dict(type='TensorDigestHook')`` to ``custom_hooks`` when training with MMSeg's / MMDet's own tools.
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint):
        """Add ``checkpoint['meta']['tensor_digests']`` over ``checkpoint['state_dict']``."""
        from backbones.integrity import DIGEST_KEY, tensor_digests
        meta = checkpoint.setdefault('meta', {})
        meta[DIGEST_KEY] = tensor_digests(checkpoint.get('state_dict', {}))


@register_mm_module(registry='HOOKS')
class NonFiniteCheckHook(Hook):
    """Stop training on a non-finite loss or BN running statistic, naming the iteration and the batch's files
    (:mod:`backbones.training.nonfinite`); runs before the checkpoint hook, so the last good checkpoint stays.

    With ``skip_nonfinite=True`` the step is skipped instead: the optimiser wrapper
    (:class:`NonFiniteSkipOptimWrapper`, set by ``--skip-nonfinite``; ``AmpOptimWrapper`` skips non-finite
    gradients itself) did not update the weights, and this hook restores the BN statistics saved before the step
    and logs the skip.  The OpenMMLab tools of this project add the hook to every config
    (:func:`plugins.mm.cli.load_config`).

    Args:
        skip_nonfinite (bool): skip such steps instead of stopping.
    """

    priority = 'ABOVE_NORMAL'  # before LoggerHook and CheckpointHook

    def __init__(self, skip_nonfinite=False):
        self.skip_nonfinite = skip_nonfinite
        self.skipped = 0
        self._snapshot = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        """Save the BN statistics (skip mode only)."""
        if self.skip_nonfinite:
            from backbones.training.nonfinite import BNSnapshot
            self._snapshot = BNSnapshot(_unwrap(runner.model))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        """Check the step's ``loss`` (``outputs``) and every BN running statistic.

        Raises:
            backbones.training.nonfinite.NonFiniteStepError: (default) with the iteration and the image paths.
        """
        from backbones.training.nonfinite import (
            NonFiniteStepError,
            describe_nonfinite,
            is_finite_number,
            nonfinite_bn_statistics,
        )
        loss = (outputs or {}).get('loss')
        bad_loss = loss is not None and not is_finite_number(loss)
        bad_bn = nonfinite_bn_statistics(_unwrap(runner.model))
        if not bad_loss and not bad_bn:
            return
        files = [getattr(s, 'img_path', None) or s.metainfo.get('img_path', '?')
                 for s in (data_batch or {}).get('data_samples', [])]
        msg = describe_nonfinite(runner.iter, float(loss) if bad_loss else None, bad_bn, files,
                                 where='MMEngine training')
        if not self.skip_nonfinite:
            raise NonFiniteStepError(msg)
        if self._snapshot is not None:
            self._snapshot.restore()
        self.skipped += 1
        print_log(f'skip_nonfinite: step skipped ({self.skipped} so far): {msg.split(". Check")[0]}',
                  logger='current', level=30)


def _nonfinite_grads(params):
    return any(p.grad is not None and not torch.isfinite(p.grad).all() for p in params)


@register_mm_module(registry='OPTIM_WRAPPERS')
class NonFiniteSkipOptimWrapper(OptimWrapper):
    """``OptimWrapper`` that does not update the weights when a gradient is non-finite (``--skip-nonfinite``):
    the gradients are dropped and :class:`NonFiniteCheckHook` restores the BN statistics and logs the skip."""

    def step(self, **kwargs):
        """``optimizer.step()`` unless a gradient is NaN / inf (then the gradients are zeroed)."""
        params = [p for g in self.optimizer.param_groups for p in g['params']]
        if _nonfinite_grads(params):
            self.optimizer.zero_grad()
            return
        super().step(**kwargs)
