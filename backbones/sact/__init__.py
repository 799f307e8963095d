"""Pre-activation ResNet-v2 with Adaptive Computation Time (ACT) and Spatially Adaptive Computation Time (SACT).

Figurnov et al., "Spatially Adaptive Computation Time for Residual Networks", CVPR 2017 (the paper's
Sec. 2 gives ACT for one block of residual units, Sec. 3 its per-position version SACT); architecture and
conventions follow ``../shared/reference/official_implementations.md`` Sec. 5 (facts of ``mfigurnov/sact``).

Network (Sec. 5.5 of the reference): conv1 7x7/2 (no BN/ReLU), max-pool 3x3/2, four stages ("blocks") of
pre-activation bottleneck units (BN+ReLU -> 1x1 -> BN+ReLU -> 3x3 (stride) -> BN+ReLU -> 1x1; the shortcut
is the identity or a 1x1 conv on the pre-activation), down-sampling in the *first* unit of stages 2-4 on
the 3x3 conv, a final post-norm BN+ReLU, global average pooling and a linear classifier.  Units per
stage: [3, 4, 6, 3] (ResNet-50), [3, 4, 23, 3] (ResNet-101); output depths 256/512/1024/2048.
Convolutions have no bias (TF-Slim gives the un-normalised convs a bias; we drop it so that the layout is
the one of timm's ``resnetv2_50`` and the counted MACs are unaffected).

Each stage is one ACT module over its L units (reference Sec. 5.1-5.3):

* the first unit always runs; a halting score h_t in (0, 1) follows every unit t < L; h_L = 1;
* ACT: h_t = sigmoid(W . BN(GAP(x_t)) + b) per image; SACT: h_t(i, j) = sigmoid(conv3x3(BN(x_t))(i, j) + b
  + W_g . BN(GAP(x_t))) per position (SAME padding, bias b only on the local conv); b is initialised to
  -3 (h ~ 0.047) and the halting weights to zero (our choice; the reference gives only the bias);
* with eps = 0.01: N = min{n : sum_{t<=n} h_t >= 1 - eps} (or L), remainder R = 1 - sum_{t<N} h_t,
  halting distribution p_t = h_t (t < N), p_N = R, 0 after;
* stage output = sum_t p_t * x_t (per position for SACT), ponder cost rho = N + R where N carries no
  gradient (paper eq. 7-8; only R is differentiable);
* SACT: a unit t > 1 updates only the positions that have not halted yet (x_t = x_{t-1} + m_t * F_t(x_{t-1})
  with m_t the mask of still-running positions); halted positions keep their state.

Execution (:attr:`PreActResNet.execution`):

* training mode: a dense masked computation (every unit on every position, residuals multiplied by the
  mask; BN sees all positions, as in the authors' code); a stage still stops early once *every* position
  of the batch has halted (this changes nothing in outputs or gradients);
* eval mode actually skips work: ``'image'`` runs a unit only on the images that still have running
  positions (ACT always runs this way: a stage ends when every image has halted); ``'gather'`` (SACT)
  computes the unit only at the running positions: the first 1x1 conv on the running mask dilated by the
  3x3 footprint of the second conv, the 3x3 conv as a matrix product over gathered 3x3 neighbourhoods and
  the last 1x1 conv at the running positions, results scattered back into the (channels-last) state;
  ``'auto'`` (default) picks ``'image'`` while more than :attr:`gather_threshold` of the positions run and
  ``'gather'`` below; ``'dense'`` is the dense masked reference.  All of them give the output of the dense
  masked computation within float tolerance (tests/test_sact.py).  ``'gather'`` needs normalisation
  layers that are per-channel affine maps in eval mode (BatchNorm, SyncBatchNorm, FrozenBatchNorm2d);
  other norms fall back to ``'image'``.

Dense-prediction features: the stage output of a pre-activation network is an un-normalised residual
stream, so :meth:`PreActResNet.forward_stages` returns each stage output passed through the BN+ReLU
that follows it in the network: for stages 1-3 the pre-activation of the next stage's first unit (the same
tensor that unit consumes, computed once), for stage 4 the final post-norm BN+ReLU (timm's ResNetV2 feature
extraction does the same).  ``feature_preact=False`` returns the raw ACT-weighted stage outputs for stages
1-3 instead (stage 4 keeps the post-norm).

MACs (:meth:`PreActResNet.data_dependent_macs`) follow the authors' ``flopsometer`` (reference Sec. 5.4,
5.7): multiply-accumulates of convolutions and the classifier, counted at the running positions only
(conv2 and conv3 on the running mask, conv1 on that mask dilated by a 3x3 max-pool, halting convs at the
positions they are evaluated for); the paper reports FLOPs = 2 x MACs.

Files: ``model`` (:class:`PreActBottleneck`, :class:`PreActResNet`, the registered variants), ``halting``
(:class:`ACTHalting`, :class:`SACTHalting`, :func:`halting_distribution`, :class:`ACTStage`), ``sparse``
(the gather / sparse execution helpers), ``macs`` (data-dependent MAC accounting), ``ponder``
(:func:`ponder_loss`, :func:`ponder_cost_map`, :func:`set_halting_bias`).
"""
from .halting import EXECUTION_MODES, ACTHalting, ACTStage, SACTHalting, halting_distribution
from .macs import MAC_CONVENTION, data_dependent_macs  # noqa: F401
from .model import (  # noqa: F401  (registration side effects)
    PreActBottleneck,
    PreActResNet,
    act_resnet50,
    act_resnet101,
    preact_resnet50,
    preact_resnet101,
    sact_resnet50,
    sact_resnet101,
)
from .ponder import ponder_cost_map, ponder_loss, set_halting_bias

__all__ = ['PreActBottleneck', 'ACTHalting', 'SACTHalting', 'ACTStage', 'PreActResNet', 'ponder_loss',
           'ponder_cost_map', 'set_halting_bias', 'halting_distribution', 'EXECUTION_MODES']
