"""RS-Nets: Resolution Switchable Networks (Wang, Sun, Li & Yao, ECCV 2020).

One network serves several input resolutions: every convolution and the classifier are **shared**,
every normalisation layer is replaced by a **private BN** per training resolution (private affine
gamma/beta *and* private running statistics, paper Sec. 3.1 "Private BNs"; reference
``official_implementations.md`` Sec. 4.1).  Training feeds the same image at every resolution
(:meth:`RSNet.forward_parallel`) and combines the logits with the multi-resolution ensemble
distillation loss MRED (paper Sec. 3.2, eq. 3-6; :class:`MREDLoss`, :func:`mred_loss`).

Variants (registered in the ``'rsnet'`` family): ``rs_resnet18``, ``rs_resnet50``, ``rs_resnet101``
(torchvision ResNet v1.5: stride on the 3x3 conv, Kaiming-normal fan_out init, BN 1/0, default fc init)
and ``rs_mobilenet_v2`` (standard MobileNet v2, last 1x1 conv 1280, conv init normal(0, sqrt(2/n)) with
n = k*k*out_channels, Linear normal(0, 0.01)).  ``resolutions=(r,)`` gives a plain network (the
"individual model" / plain ResNet-101 baselines).

Which private BN is used
------------------------
``model.set_resolution(r)`` (or ``with model.resolution_context(r):``) selects the BN of training
resolution ``r`` explicitly; this choice always wins.  Without an explicit choice the
``resolution_rule`` decides from the input of each forward:

* ``'nearest'`` (default; what dense prediction needs, where inputs are rarely a trained size): the
  trained resolution nearest to the input's **shorter side** ``min(H, W)`` in absolute pixels; a tie
  goes to the larger resolution.  A 512x1024 crop with the default resolutions uses the 224 BN; a
  64x64 image uses the 96 BN.
* ``'explicit'``: the input's shorter side must equal a trained resolution, otherwise the forward
  raises ValueError naming the trained resolutions (never silently the wrong BN).

Framework BN conversions
------------------------
The private BNs of one layer are a ``nn.ModuleList`` (``PrivateBatchNorm.bns``) of plain norm modules
(``nn.BatchNorm2d`` by default, or whatever ``norm_layer(C)`` builds).  detectron2's
``FrozenBatchNorm2d.convert_frozen_batchnorm``, ``nn.SyncBatchNorm.convert_sync_batchnorm`` and
mmengine's ``revert_sync_batchnorm`` replace modules by ``isinstance`` inside that list, and the
selector indexes into the (converted) list, so every conversion keeps the private statistics.

``torch.jit.trace`` / ``torch.export`` record the private BN selected for the example input as a
constant: trace once per resolution.

Input normalisation: the authors' PyTorch recipe feeds un-normalised [0, 1] images (reference Sec.
4.3); the ``pixel_mean``/``pixel_std`` attributes keep the torchvision convention of the base class and
describe whatever checkpoint is loaded (see ``backbones.checkpoint`` metadata).

Files: ``private_bn`` (:class:`ResolutionState`, :class:`PrivateBatchNorm`), ``model`` (:class:`RSNet`, the
resolution API), ``architectures`` (:class:`RSResNet`, :class:`RSMobileNetV2` and the factories), ``mred``
(the MRED loss), ``state_dict`` (:func:`expand_private_bn_state_dict`).
"""
from .architectures import (  # noqa: F401  (registration side effects; units kept importable from here)
    RSBasicBlock,
    RSBottleneck,
    RSInvertedResidual,
    RSMobileNetV2,
    RSResNet,
    rs_mobilenet_v2,
    rs_resnet18,
    rs_resnet50,
    rs_resnet101,
)
from .model import DEFAULT_RESOLUTIONS, RESOLUTION_RULES, RSNet, nearest_resolution
from .mred import KD_TYPES, MREDLoss, mred_kd_weight, mred_loss, resize_logits
from .private_bn import PrivateBatchNorm, ResolutionState
from .state_dict import expand_private_bn_state_dict

__all__ = ['DEFAULT_RESOLUTIONS', 'RESOLUTION_RULES', 'nearest_resolution', 'KD_TYPES', 'ResolutionState',
           'PrivateBatchNorm', 'RSNet', 'RSResNet',
           'RSMobileNetV2', 'MREDLoss', 'mred_loss', 'mred_kd_weight', 'resize_logits',
           'expand_private_bn_state_dict', 'rs_resnet18', 'rs_resnet50', 'rs_resnet101', 'rs_mobilenet_v2']
