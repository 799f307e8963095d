"""The fine-tune-from-a-release path of an OpenMMLab config, shared by tests/test_mm_seg.py and tests/test_mm_det.py
(issue 22): the config's model-zoo file written in its origin's container and converted as MODEL_ZOO.md documents,
then a few iterations in MMEngine's Runner with the load and the loss checked."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def convert_release_for(cfg, folder):
    """Write ``cfg``'s model-zoo file (named by ``model.backbone.init_cfg.checkpoint``) in its origin's container with
    random weights, convert it with ``tools/convert_weights.py <download> <checkpoint> --model M`` and point the
    config at the result.

    Raises:
        pytest.skip.Exception: the official checkpoint manifests are missing.
        AssertionError: the config names no zoo file, or the conversion fails.
    """
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import convert_weights
    from official_files import MANIFEST_DIR, write_zoo_source

    from backbones.pretrained import ZOO, entry_for_file
    if not os.path.isdir(MANIFEST_DIR):
        pytest.skip(f'the official checkpoint manifests are missing: {MANIFEST_DIR}')
    entry = entry_for_file(cfg.model.backbone.init_cfg.checkpoint)
    assert entry is not None, 'the config names no model-zoo file'
    src = write_zoo_source(ZOO[entry.key], str(folder))
    converted = os.path.join(str(folder), os.path.basename(cfg.model.backbone.init_cfg.checkpoint))
    assert convert_weights.main([src, converted, '--model', entry.model]) == 0
    cfg.model.backbone.init_cfg.checkpoint = converted


def train_and_check(cfg, work_dir, visualization, iters=4):
    """Train ``cfg`` (its ``train_dataloader`` already set) for ``iters`` iterations in MMEngine's Runner without
    validation, scheduler, checkpoints or BN calibration; assert the backbone loaded its file with zero unmatched
    keys and the loss is finite and falls.

    Args:
        visualization (str): the framework's visualisation hook type (drawing off).
    """
    from mmengine.runner import Runner
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=0)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=100)
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.param_scheduler = []
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks', []) if h['type'] != 'BNCalibrationHook']
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1, save_last=False)
    cfg.default_hooks.visualization = dict(type=visualization, draw=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    runner = Runner.from_cfg(cfg)
    runner.train()
    report = runner.model.backbone.pretrained_report
    assert report is not None and report.loaded > 0, 'the converted file was not loaded'
    assert not (report.missing or report.unexpected or report.shape_mismatch), report.summary()
    losses = [float(v) for v in runner.message_hub.get_scalar('train/loss').data[0]]
    assert len(losses) == iters and np.isfinite(losses).all(), losses
    assert losses[-1] < losses[0], losses
