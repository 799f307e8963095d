"""Reports of the pretraining tool beyond the accuracy table: SACT's ponder-cost maps of validation images and the
multi-label scale stress test.  Functions of a :class:`.engine.Trainer`."""
import json
import os

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import data as pdata
from .logs import LOG
from .multilabel import METRIC_NAMES

__all__ = ['save_ponder_maps', 'stress_test']


def save_ponder_maps(trainer, count):
    """``--save-ponder-maps N``: the ponder-cost maps of the first ``count`` validation images (as the
    evaluation transforms them), drawn over the image with the per-stage maps
    (:func:`backbones.sact.drawing.draw_ponder_map`) as ``<out>/ponder_maps/<image>.png`` plus the summed map
    ``<image>.npy`` ``[H, W]``; main process only.  Returns the folder."""
    from backbones.sact.drawing import draw_ponder_map, stage_ponder_maps
    out = os.path.join(trainer.out, 'ponder_maps')
    if not trainer.info.is_main:
        return out
    os.makedirs(out, exist_ok=True)
    a = trainer.args
    model = trainer.ema.module if (a.export_ema and trainer.ema is not None) else trainer.model
    model = getattr(model, 'module', model)
    was = model.training
    model.eval()
    mean = torch.tensor(model.pixel_mean)[:, None, None]
    std = torch.tensor(model.pixel_std)[:, None, None]
    saved, costs = 0, []
    try:
        for i in range(min(count, len(trainer.val_set))):
            item = trainer.val_set[i]
            if item is None:  # an unreadable image skipped (--bad-images skip)
                continue
            x = item[0]
            x = x[0] if x.dim() == 4 else x  # multi-resolution evaluation: the first resolution
            with torch.no_grad():
                model(x[None].to(trainer.info.device))
            size = tuple(x.shape[-2:])
            stages = stage_ponder_maps(model.ponder_costs, size)[0].cpu().numpy()  # [S, H, W]
            total = stages.sum(0)
            name = os.path.splitext(os.path.basename(trainer.val_set.samples[i][0]))[0]
            img = (x.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
            draw_ponder_map(img, total, os.path.join(out, f'{name}.png'), stage_maps=stages,
                            title=f'{a.model}: {trainer.val_set.samples[i][0]}')
            np.save(os.path.join(out, f'{name}.npy'), total.astype(np.float32))
            costs.append(float(total.mean()))
            saved += 1
    finally:
        model.train(was)
    LOG.info(f'{saved} ponder-cost maps (mean ponder cost {np.mean(costs) if costs else float("nan"):.3f}) '
             f'saved to {out}')
    return out


def stress_test(trainer):
    """``--task multilabel`` final evaluation: the multi-label metrics at every ``--stress-sizes`` input size
    (square resize, no crop; Elastic paper Sec. 4.2), written as ``eval.txt``, ``stress_test.csv`` /
    ``.json`` and ``stress_test.png``; returns the rows (``resolution`` = size, ``top1`` = mAP)."""
    import copy

    from .multilabel import (
        evaluate_multilabel,
        plot_stress_test,
        square_val_transform,
        stress_test_table,
        write_metric_table,
    )
    a = trainer.args
    model = trainer.ema.module if (a.export_ema and trainer.ema is not None) else trainer.model
    mean, std = getattr(model, 'pixel_mean'), getattr(model, 'pixel_std')
    rows = []
    for size in a.stress_sizes or [a.val_crop_size]:
        ds = copy.copy(trainer.val_set)  # the same images (annotations parsed once), resized to this size
        ds.transform = square_val_transform(size, a.interpolation, mean, std)
        loader = DataLoader(ds, batch_size=a.val_batch_size or a.batch_size, num_workers=a.workers,
                            sampler=pdata.ShardSampler(len(ds), trainer.info.world_size, trainer.info.rank),
                            collate_fn=pdata.collate_skip_none)
        m = evaluate_multilabel(model, loader, trainer.info, trainer.autocast, a.channels_last)
        rows.append(dict(m, model=a.model, size=size, width=None, resolution=size, top1=m['mAP'], top5=m['OF1'],
                         n=m['images']))
        LOG.info(f'stress test {size}x{size}: ' + ' '.join(f'{k} {m[k]:.2f}' for k in METRIC_NAMES))
    table = stress_test_table(rows, f'{a.model} on {a.data_path}/{a.val_dir}: {rows[0]["n"]} images, COCO '
                                    f'multi-label, scale stress test (% ; a class is predicted when p > 0.5)')
    LOG.info('\n' + table)
    if trainer.info.is_main:
        with open(os.path.join(trainer.out, 'eval.txt'), 'w') as f:
            f.write(table + '\n')
        with open(os.path.join(trainer.out, 'eval.json'), 'w') as f:
            json.dump(rows, f, indent=1)
        write_metric_table(rows, os.path.join(trainer.out, 'stress_test.csv'))
        plot_stress_test(rows, os.path.join(trainer.out, 'stress_test.png'))
    return rows
