"""The training loop of the pretraining tool (:class:`Trainer`): steps, validation, the final evaluation, export.
Logging, optimizer/schedule, random state, model construction, checkpoints and resume, and the reports beyond
the accuracy table (ponder-cost maps, the multi-label stress test) live in ``logs``, ``optim``, ``rng``,
``model``, ``checkpointing`` and ``reports``.

Checkpoint (``last.pth``/``best.pth``, written by rank 0 with ``backbones.checkpoint.atomic_save``; ``best.pth`` is
a hard link to the ``last.pth`` of its epoch)::

    {'version': 1, 'args': {...}, 'epoch': e, 'consumed': k,   # k micro-batches of epoch e are done
     'global_step': optimizer steps so far, 'model': TrainNet state (backbone 'model.*', loss params),
     'optimizer', 'lr_scheduler', 'scaler', 'model_ema', 'best_top1', 'best_epoch',
     'rng': [per-rank {'torch', 'cuda', 'numpy', 'python'}], 'world_size', 'batch_size', 'micro_per_epoch'}

A run killed at any point resumes from the newest checkpoint (``--resume auto|PATH``): the sampler
skips the ``consumed`` micro-batches of epoch ``e`` (same permutation, same per-sample augmentation),
the schedule continues at ``global_step``, so the run ends with exactly
``epochs x steps_per_epoch`` optimizer steps.
"""
import contextlib
import json
import math
import os
import time

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

import backbones
from backbones.checkpoint import save_backbone_checkpoint
from backbones.training.nonfinite import BNSnapshot, NonFiniteStepError, describe_nonfinite, nonfinite_bn_statistics

from . import checkpointing as ckpt
from . import data as pdata
from . import dist as pdist
from . import evaluation as pev
from . import methods as pm
from . import reports
from .logs import LOG, LOG_FILE, CSVLog, TBLog
from .model import build_model, check_sync_bn
from .multilabel import METRIC_NAMES
from .optim import lr_factor_fn, param_groups
from .rng import seed_all


# ---------------------------------------------------------------------- trainer
class Trainer:
    """Everything of one run; :meth:`fit` trains, :meth:`final_eval` evaluates and exports."""

    def __init__(self, args, info):
        self.args, self.info = args, info
        self.out = args.output_dir
        seed_all(args.seed)
        a = args
        train_root = os.path.join(a.data_path, a.train_dir)
        val_root = os.path.join(a.data_path, a.val_dir)
        self.multilabel = getattr(a, 'task', 'classification') == 'multilabel'
        for root in (train_root, val_root):
            if not os.path.isdir(root):
                raise FileNotFoundError(
                    f'{root} not found: ' + (f'--task multilabel expects the COCO folder as --data-path ('
                                             f'annotations/, {a.train_dir}/, {a.val_dir}/)' if self.multilabel else
                                             f'--data-path must hold {a.train_dir}/<class>/ and {a.val_dir}/<class>/ '
                                             f'(ImageFolder layout)'))
        if self.multilabel:
            from .multilabel import CocoMultiLabel
            self.train_set = CocoMultiLabel(a.data_path, a.train_dir, None, a.bad_images, a.seed)
        else:
            self.train_set = pdata.RobustImageFolder(train_root, None, a.bad_images, a.seed)
        self.classes = self.train_set.classes
        num_classes = a.num_classes or len(self.classes)
        if self.multilabel and num_classes != len(self.classes):
            raise ValueError(f'--num-classes {a.num_classes}: COCO multi-label has {len(self.classes)} classes; drop '
                             f'--num-classes')
        index_map = None
        if a.pretrained and not self.multilabel:
            from .pretrained import imagenet_index_map, pretrained_info
            file_classes = pretrained_info(a.pretrained, a.pretrained_source)[1]
            if not a.num_classes and file_classes == 1000:
                index_map = imagenet_index_map(a.data_path, self.classes)
            if index_map is not None:  # an ImageNet subset (Imagenette): keep the 1000-class classifier
                num_classes = 1000
                self.train_set.remap_targets(index_map)
                LOG.info(f'{len(self.classes)} class folders mapped to their ImageNet-1k indices (classes.txt); the '
                         f'1000-class classifier of --pretrained is kept')
            elif a.evaluate and file_classes and file_classes != num_classes:
                raise ValueError(
                    f'--evaluate --pretrained {a.pretrained}: the file classifies {file_classes} classes but '
                    f'{a.data_path} has {num_classes} class folders, so its classifier would be replaced by an '
                    f'untrained one. Evaluate on the dataset it was trained for (ImageNet val, or a subset whose '
                    f'classes.txt gives imagenet1k_index=<i> per class), or fine-tune first (drop --evaluate)')
        self.model = build_model(a, num_classes)
        self.method = pm.build_method(a, self.model)
        self.method.policy.check_agreement()  # every DDP rank draws the same sub-networks
        mean, std = getattr(self.model, 'pixel_mean'), getattr(self.model, 'pixel_std')

        # data
        self.train_set.transform = pdata.build_train_transform(a, mean, std, self.method.train_resolutions())
        self.train_set.select(pdata.subset_indices(len(self.train_set), a.max_train_samples, a.seed))
        vres = self.method.val_resolutions()
        multires_val = bool(vres) and (self.method.val_multires or a.val_resize_mode == 'crop')
        if self.multilabel:
            from .multilabel import CocoMultiLabel, square_val_transform
            self.val_set = CocoMultiLabel(a.data_path, a.val_dir, square_val_transform(
                a.val_crop_size, a.interpolation, mean, std), a.bad_images, a.seed)
        else:
            self.val_set = pdata.RobustImageFolder(
                val_root, pdata.build_val_transform(a, mean, std, vres if multires_val else None), a.bad_images,
                a.seed)
        if self.val_set.classes != self.classes:
            raise ValueError(f'{val_root} and {train_root} hold different class folders')
        if index_map is not None:
            self.val_set.remap_targets(index_map)
        self.val_set.select(pdata.subset_indices(len(self.val_set), a.max_val_samples, a.seed))
        self.sampler = pdata.ResumableSampler(self.train_set, info.world_size, info.rank, shuffle=True, seed=a.seed)
        kw = dict(num_workers=a.workers, pin_memory=a.pin_mem and info.device.type == 'cuda',
                  collate_fn=pdata.collate_skip_none, persistent_workers=False)
        self.train_loader = DataLoader(self.train_set, batch_size=a.batch_size, sampler=self.sampler, drop_last=True,
                                       **kw)
        self.val_loader = DataLoader(self.val_set, batch_size=a.val_batch_size or a.batch_size,
                                     sampler=pdata.ShardSampler(len(self.val_set), info.world_size, info.rank), **kw)
        calib_bs = a.calib_batch_size or a.batch_size
        per_process = max(1, len(self.train_set) // info.world_size)
        if calib_bs > per_process:
            LOG.warning(f'post-statistics BN: {len(self.train_set)} training images are fewer than one calibration '
                        f'batch of {calib_bs} per process; calibrating on batches of {per_process}')
            calib_bs = per_process
        self.calib_sampler = pdata.CalibrationSampler(len(self.train_set), calib_bs, info.world_size, info.rank,
                                                      seed=a.seed + 1, num_batches=a.calib_batches)
        self.calib_loader = DataLoader(self.train_set, batch_size=calib_bs, sampler=self.calib_sampler,
                                       drop_last=True, **kw)
        self.micro_per_epoch, self.steps_per_epoch = pdata.steps_in_epoch(self.sampler.num_samples, a.batch_size,
                                                                          a.accum_steps)
        self.total_steps = self.steps_per_epoch * a.epochs

        # model, optimizer, schedule, AMP, EMA, DDP
        self.net = pm.TrainNet(self.model, self.method.policy)
        if a.sync_bn and info.device.type != 'cuda':
            raise ValueError('--sync-bn needs CUDA devices (torch.nn.SyncBatchNorm has no CPU implementation); '
                             'drop --sync-bn for CPU runs')
        if a.sync_bn and not info.distributed:
            LOG.info('--sync-bn has no effect in a single process')
        if a.sync_bn and info.distributed:
            check_sync_bn(self.model)
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            self.model = self.net.model
            self.method.model = self.model
        self.mem_format = torch.channels_last if a.channels_last else torch.contiguous_format
        self.net.to(info.device, memory_format=self.mem_format)
        self.optimizer = torch.optim.SGD(param_groups(self.net, a.weight_decay, a.wd_policy), lr=a.lr,
                                         momentum=a.momentum, nesterov=a.nesterov)
        fn = lr_factor_fn(a.lr_schedule, self.total_steps, self.steps_per_epoch,
                          warmup_steps=round(a.warmup_epochs * self.steps_per_epoch), warmup_factor=a.warmup_factor,
                          step_epochs=a.lr_step_epochs, milestones=a.lr_milestones, gamma=a.lr_gamma,
                          min_factor=a.min_lr / a.lr if a.lr else 0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, fn)
        dev_type = info.device.type
        self.amp_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[a.amp_dtype] if a.amp else None
        if a.amp and dev_type == 'cpu' and self.amp_dtype == torch.float16:
            raise ValueError('--amp-dtype fp16 is for CUDA; use --amp-dtype bf16 on CPU')
        self.scaler = torch.amp.GradScaler(dev_type, enabled=bool(a.amp and self.amp_dtype == torch.float16))
        self.ema = None
        if a.model_ema:
            self.ema = AveragedModel(self.model, device=info.device, use_buffers=True,
                                     multi_avg_fn=get_ema_multi_avg_fn(a.model_ema_decay))
        self.ddp = None
        if a.find_unused_parameters is None:
            # parameters unused in one pass (SACT halting); a combining policy (RS-Nets) runs every private BN in
            # its single pass
            policy = self.method.policy
            a.find_unused_parameters = bool(policy.find_unused_parameters and not policy.combines)
        if info.distributed:
            self.ddp = DDP(self.net, device_ids=[info.local_rank] if dev_type == 'cuda' else None,
                           find_unused_parameters=a.find_unused_parameters)
        self.train_net = self.ddp if self.ddp is not None else self.net

        self.epoch, self.consumed, self.global_step = 0, 0, 0
        self.nonfinite_skipped = 0  # steps skipped by --skip-nonfinite
        self.best_top1, self.best_epoch = -1.0, -1
        self.csv = CSVLog(os.path.join(self.out, 'train_log.csv')) if info.is_main else None
        self.summary = CSVLog(os.path.join(self.out, 'summary.csv')) if info.is_main else None
        self.tb = TBLog(os.path.join(self.out, 'tb'), a.tensorboard and info.is_main)
        LOG.info(f'model {a.model} ({self.model.family}), method {a.method}, '
                 f'{backbones.count_params(self.model) / 1e6:.2f} M params, {len(self.train_set)} train / '
                 f'{len(self.val_set)} val images, {len(self.classes)} classes, '
                 f'{info.world_size} process(es) on {info.device}, batch {a.batch_size} x {info.world_size} x '
                 f'accum {a.accum_steps} = {a.batch_size * info.world_size * a.accum_steps}, '
                 f'{self.steps_per_epoch} steps/epoch, {self.total_steps} steps')

    # ------------------------------------------------------------------ helpers
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.amp_dtype)

    def to_device(self, images):
        return pev.to_device(images, self.info.device, self.args.channels_last)

    # ------------------------------------------------------------------ checkpoints
    # ------------------------------------------------------------------ checkpoints (checkpointing.py)
    def state(self):
        """The training checkpoint's dict (:func:`.checkpointing.training_state`)."""
        return ckpt.training_state(self)

    def save(self, best=False):
        """Write ``last.pth`` (and ``best.pth``) atomically from rank 0 (:func:`.checkpointing.save`)."""
        ckpt.save(self, best)

    def resume(self, path):
        """Restore everything from a training checkpoint (:func:`.checkpointing.resume`; raises as it does)."""
        ckpt.resume(self, path)

    # ------------------------------------------------------------------ training
    def _backward_fn(self, divisor):
        def backward(loss):
            self.scaler.scale(loss / divisor).backward()
        return backward

    def _optimizer_step(self):
        a = self.args
        if a.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.parameters(), a.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1
        if self.ema is not None and self.global_step % a.model_ema_steps == 0:
            self.ema.update_parameters(self.model)

    def train_epoch(self):
        a, info = self.args, self.info
        self.net.train()
        self.sampler.set_epoch(self.epoch, start=self.consumed * a.batch_size)
        meters = {}
        t_log, n_log, t_epoch, n_epoch = time.time(), 0, time.time(), 0
        i = epoch_start = self.consumed
        skip_group, stats = False, None
        bar, loader, line_log = None, self.train_loader, LOG.info
        if a.progress_bar and info.is_main:
            try:
                from tqdm import tqdm
            except ImportError:
                LOG.warning('--progress-bar needs tqdm (pip install tqdm); logging periodic lines instead')
            else:
                bar = tqdm(self.train_loader, total=self.micro_per_epoch, initial=self.consumed, dynamic_ncols=True,
                           desc=f'epoch {self.epoch + 1}/{a.epochs}')
                loader, line_log = bar, LOG_FILE.info
        for batch in loader:
            if batch is None:
                if info.distributed:
                    raise RuntimeError('every image of a training batch was unreadable; with several processes '
                                       'this cannot be skipped: fix the files or use --bad-images fail to find them')
                LOG.warning(f'epoch {self.epoch} micro-batch {i}: every image unreadable, batch skipped')
            group_start = i - i % a.accum_steps
            group = min(a.accum_steps, self.micro_per_epoch - group_start)
            last_micro = (i + 1) % a.accum_steps == 0 or i + 1 == self.micro_per_epoch
            if batch is not None:
                images, target = batch
                images = self.to_device(images)
                target = target.to(info.device, non_blocking=True)
                ctx = pm.StepContext(self.ddp, last_micro, self.autocast, self._backward_fn(group),
                                     step_index=self.global_step)
                snapshot = BNSnapshot(self.net) if a.skip_nonfinite else None
                stats = self.method.train_step(self.train_net, images, target, ctx)
                if self._nonfinite_step(stats, i, epoch_start, snapshot):
                    skip_group, stats = True, None
            if stats is not None:
                for k, v in stats.items():
                    m = meters.setdefault(k, [0.0, 0])
                    m[0] += v * (stats['n'] if k not in ('correct', 'n') else 1)
                    m[1] += stats['n']
                n_log += stats['n']
                n_epoch += stats['n']
            stats = None
            if a.iter_delay:
                time.sleep(a.iter_delay)
            i += 1
            if last_micro and skip_group:
                skip_group = False
                self.optimizer.zero_grad(set_to_none=True)
                self.consumed = i
            elif last_micro:
                self._optimizer_step()
                self.consumed = i
                if a.ckpt_interval and self.global_step % a.ckpt_interval == 0 and i < self.micro_per_epoch:
                    self.save()
            if (i % a.log_interval == 0 or i == self.micro_per_epoch) and meters:
                self._log_train(meters, n_log, time.time() - t_log, i, bar, line_log)
                meters, t_log, n_log = {}, time.time(), 0
        if bar is not None:
            bar.close()
        self.consumed = 0
        self.epoch += 1
        return n_epoch * info.world_size / max(time.time() - t_epoch, 1e-9)

    def _batch_files(self, i, epoch_start):
        """Image paths of micro-batch ``i`` of this rank's epoch (the sampler's order; ``epoch_start`` is the
        micro-batch the epoch (re)started at)."""
        bs = self.args.batch_size
        keys = list(iter(self.sampler))[(i - epoch_start) * bs:(i - epoch_start + 1) * bs]
        return [self.train_set.samples[k[0] if isinstance(k, (tuple, list)) else k][0] for k in keys]

    def _nonfinite_step(self, stats, i, epoch_start, snapshot):
        """Check a micro-batch for a non-finite loss or BN running statistic (every rank agrees).

        Returns:
            bool: True when the step is skipped (``--skip-nonfinite``: BN statistics restored from ``snapshot``,
            gradients dropped, the skip logged with the batch's files).

        Raises:
            NonFiniteStepError: without ``--skip-nonfinite``: the iteration, what was non-finite and the batch's
                files (this rank's); no checkpoint of this step is written.
        """
        bad_bn = nonfinite_bn_statistics(self.net)
        loss = stats['loss']
        bad = not math.isfinite(loss) or bool(bad_bn)
        if self.info.distributed:
            bad = pdist.all_reduce_sum([float(bad)], self.info)[0] > 0
        if not bad:
            return False
        msg = describe_nonfinite(self.global_step, loss if not math.isfinite(loss) else None, bad_bn,
                                 self._batch_files(i, epoch_start),
                                 where=f'tools/pretrain.py epoch {self.epoch + 1} micro-batch {i}')
        if not self.args.skip_nonfinite:
            raise NonFiniteStepError(msg)
        snapshot.restore()
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_skipped += 1
        LOG.warning(f'--skip-nonfinite: step skipped ({self.nonfinite_skipped} so far): {msg.split(". Check")[0]}')
        return True

    def _log_train(self, meters, n_log, dt, i, bar, line_log):
        """One progress line (log/CSV/TensorBoard/bar) with the meters averaged over every process (one
        all-reduce, so DDP curves are comparable with single-process ones)."""
        a, info = self.args, self.info
        keys = sorted(meters)
        flat = pdist.all_reduce_sum([meters[k][0] for k in keys] + [meters[k][1] for k in keys] + [n_log], info)
        if not info.is_main:
            return
        row = self._meter_row({k: (flat[j], flat[len(keys) + j]) for j, k in enumerate(keys)})
        row.update(epoch=self.epoch, iter=i, step=self.global_step, lr=self.optimizer.param_groups[0]['lr'],
                   img_s=flat[-1] / max(dt, 1e-9))
        extra = ' '.join(f'{k} {v:.4g}' for k, v in row.items()
                         if k not in ('epoch', 'iter', 'step', 'lr', 'img_s', 'loss', 'acc1'))
        line_log(f'epoch {self.epoch + 1}/{a.epochs} iter {i}/{self.micro_per_epoch} step {self.global_step} '
                 f'loss {row["loss"]:.4f} acc@1 {row["acc1"]:.2f} lr {row["lr"]:.5f} img/s {row["img_s"]:.1f} {extra}')
        if bar is not None:
            bar.set_postfix(loss=f'{row["loss"]:.3f}', acc1=f'{row["acc1"]:.1f}', lr=f'{row["lr"]:.4g}',
                            img_s=f'{row["img_s"]:.1f}')
        self.csv.write(row)
        self.tb.scalars({k: v for k, v in row.items() if k not in ('epoch', 'iter', 'step')}, self.global_step,
                        'train')

    @staticmethod
    def _meter_row(meters):
        row = {}
        for k, (s, n) in meters.items():
            if k == 'n':
                continue
            if k == 'correct':
                row['acc1'] = 100.0 * s / max(n, 1)
            else:
                row[k] = s / max(n, 1)
        return row

    def validate(self):
        """Per-epoch validation at the method's cheap points (no calibration); returns rows."""
        if self.multilabel:  # mAP stands in for top-1 (best.pth selection), OF1 for top-5
            from .multilabel import evaluate_multilabel
            m = evaluate_multilabel(self.model, self.val_loader, self.info, self.autocast, self.args.channels_last)
            return [dict(m, width=None, resolution=None, top1=m['mAP'], top5=m['OF1'], n=m['images'])]
        pts = self.method.eval_points(final=False)
        rows = pev.evaluate(self.method, self.model, self.val_loader, self.info, pts, self.autocast,
                            self.args.channels_last, sact_macs=isinstance(self.method, pm.SACTMethod))
        if self.ema is not None:
            erows = pev.evaluate(self.method, self.ema.module, self.val_loader, self.info, pts[:1], self.autocast,
                                 self.args.channels_last)
            rows[0]['ema_top1'] = erows[0]['top1']
        return rows

    def fit(self):
        a = self.args
        if self.global_step >= self.total_steps:
            LOG.info('training already complete')
            return
        while self.epoch < a.epochs:
            t0 = time.time()
            img_s = self.train_epoch()
            row = {'epoch': self.epoch, 'step': self.global_step, 'train_img_s': img_s, 'time_s': time.time() - t0}
            if self.epoch % a.eval_interval == 0 or self.epoch == a.epochs:
                rows = self.validate()
                top1 = rows[0]['top1']
                for r in rows if not self.multilabel else ():
                    tag = '_'.join(str(x) for x in (f'w{r["width"]}' if r['width'] is not None else None,
                                                    f'r{r["resolution"]}' if r['resolution'] else None) if x)
                    row[f'top1{"_" + tag if tag else ""}'] = r['top1']
                    row[f'top5{"_" + tag if tag else ""}'] = r['top5']
                for k in ('ema_top1', 'macs', 'macs_std', 'ponder_cost') + METRIC_NAMES:  # EMA; SACT MACs; multilabel
                    if k in rows[0]:
                        row[k] = rows[0][k]
                best = top1 > self.best_top1
                if best:
                    self.best_top1, self.best_epoch = top1, self.epoch
                parts = [f'{k} {v:.2f}' for k, v in row.items() if k.startswith(('top', 'ema')) or k in METRIC_NAMES]
                if 'macs' in row:
                    parts.append(f'MMACs {row["macs"] / 1e6:.1f} (std {row["macs_std"] / 1e6:.1f}) '
                                 f'ponder cost {row["ponder_cost"]:.3f}')
                LOG.info(f'epoch {self.epoch}/{a.epochs} val ' + ' '.join(parts) +
                         f' (best {self.best_top1:.2f} @ epoch {self.best_epoch}) train img/s {img_s:.1f}')
            else:
                best = False
            if self.info.is_main:
                self.summary.write(row)
                self.tb.scalars({k: v for k, v in row.items() if k not in ('epoch', 'step')}, self.global_step, 'val')
            self.save(best=best)

    # ------------------------------------------------------------------ evaluation and export
    def final_eval(self):
        """Full evaluation table (+ MutualNet budget query, SACT MACs statistics); returns the rows."""
        a = self.args
        if self.multilabel:
            return self.stress_test()
        slim = isinstance(self.method, pm.SlimmableMethod)
        LOG.info('final evaluation' + (f' (BN statistics: {a.bn_calibration})' if slim else ''))
        model = self.ema.module if (a.export_ema and self.ema is not None) else self.model
        rows = pev.final_evaluation(self.method, model, self.val_loader, self.calib_loader, self.info, self.autocast, a,
                                    LOG.info)
        table = pev.format_table(rows, f'{a.model} ({a.method}) on {self.val_set.root}: {rows[0]["n"]} images')
        LOG.info('\n' + table)
        text = table
        if self.method.budget_table or (a.macs_budgets and isinstance(self.method, pm.SlimmableMethod)):
            q = pev.budget_table(rows, a.macs_budgets)
            LOG.info('\n' + q)
            text += '\n\n' + q
        if self.info.is_main:
            with open(os.path.join(self.out, 'eval.txt'), 'w') as f:
                f.write(text + '\n')
            with open(os.path.join(self.out, 'eval.json'), 'w') as f:
                json.dump(rows, f, indent=1)
        return rows

    def save_ponder_maps(self, count):
        """``--save-ponder-maps N`` (:func:`.reports.save_ponder_maps`); returns the folder."""
        return reports.save_ponder_maps(self, count)

    def stress_test(self):
        """``--task multilabel`` final evaluation (:func:`.reports.stress_test`); returns the rows."""
        return reports.stress_test(self)

    def export(self, rows=None):
        """Write the backbone checkpoint with its metadata (rank 0).  The trained classifier stays in it:
        ``tools/export.py``, ``tools/query_table.py`` and ``--evaluate`` measure through it; the framework plugins
        build without classifier and drop it at the load (listed in the load report)."""
        if not self.info.is_main:
            return None
        a = self.args
        model = self.ema.module if (a.export_ema and self.ema is not None) else self.model
        acc = {f'w{r["width"]}_r{r["resolution"]}' if r.get('width') is not None else f'r{r["resolution"]}':
               round(r['top1'], 3) for r in (rows or [])}
        meta = dict(model_kwargs=getattr(self.model, 'build_kwargs', None) or None, recipe=a.recipe,
                    method=a.method, epochs=a.epochs, global_step=self.global_step,
                    dataset=os.path.abspath(a.data_path), num_classes_pretrain=len(self.classes),
                    top1=acc or None, best_top1=self.best_top1, trained_widths=list(self.method.width_range)
                    if hasattr(self.method, 'width_range') else None,
                    trained_resolutions=getattr(self.method, 'resolutions', None), ema=bool(a.export_ema and self.ema),
                    bn_calibrated=False)
        path = save_backbone_checkpoint(model, os.path.join(self.out, a.export_name), drop_head=False, **meta)
        LOG.info(f'exported backbone checkpoint {path}')
        return path

    def close(self):
        self.tb.close()
