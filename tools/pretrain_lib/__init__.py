"""Helpers of ``tools/pretrain.py`` (ImageNet pretraining for every dynscale family).

* :mod:`.recipes` -- the papers' ImageNet settings as presets (``--recipe``).
* :mod:`.data` -- ImageFolder pipelines (shared crop for multi-resolution methods, unreadable-image
  policy, resumable sampler with per-sample deterministic augmentation).
* :mod:`.methods` -- one training step and one evaluation protocol per method (standard, usnet,
  mutualnet, rsnet, sact); the method maths lives in :mod:`backbones`.
* :mod:`.engine` -- optimizer, schedules, checkpoints/resume, logging, the training loop.
* :mod:`.dist` -- ``torchrun`` / DDP helpers.
* :mod:`.multilabel` -- ``--task multilabel``: COCO 80-label targets, loss, metrics and the scale stress test.
"""
