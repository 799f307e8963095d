"""Detectron2 norms for dynscale backbones (``MODEL.DYNSCALE.NORM``, as ``MODEL.RESNETS.NORM``).

The backbone is built with its own BN layers, then converted by ``isinstance`` exactly as detectron2 and PyTorch do
it (``FrozenBatchNorm2d.convert_frozen_batchnorm``, ``nn.SyncBatchNorm.convert_sync_batchnorm``). Private
per-resolution BNs (RS-Net) and slimmable BNs hold plain norm modules in ``ModuleList`` s, so the conversions replace
the entries and keep the per-resolution / per-width behaviour. ``"GN"`` is passed to the family as ``norm_layer``
(families with private/slimmable BN reject it with ValueError).
"""
from detectron2.layers import FrozenBatchNorm2d
from detectron2.layers.batch_norm import NaiveSyncBatchNorm
from torch import nn

__all__ = ['convert_norm', 'to_frozen_bn']


def _replace_bn(module, make):
    """Replace every ``nn.BatchNorm2d``/``nn.SyncBatchNorm`` in ``module`` (by isinstance, recursively)."""
    bn_types = (nn.BatchNorm2d, nn.SyncBatchNorm)
    if isinstance(module, bn_types):
        return make(module)
    for name, child in module.named_children():
        new = _replace_bn(child, make)
        if new is not child:
            module.add_module(name, new)
    return module


def _frozen_bn(bn):
    new = FrozenBatchNorm2d.convert_frozen_batchnorm(bn)
    if not bn.affine:
        # an affine-free BN (slimmable private statistics) has no weight/bias in its state dict; keep the
        # FrozenBatchNorm2d identity affine out of it too, so BN checkpoints load without missing keys
        new._non_persistent_buffers_set.update(('weight', 'bias'))
    return new


def to_frozen_bn(module):
    """``FrozenBatchNorm2d.convert_frozen_batchnorm`` that keeps the state-dict keys of affine-free BNs."""
    return _replace_bn(module, _frozen_bn)


def _to_naive_sync(bn):
    new = NaiveSyncBatchNorm(
        bn.num_features,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
    )
    new.load_state_dict(bn.state_dict())
    return new


def convert_norm(module, norm):
    """Convert the BN layers of ``module`` to detectron2's norm ``norm`` (in place where possible).

    Args:
        module (nn.Module): a backbone built with plain BNs (private/slimmable BNs included).
        norm (str): ``"BN"`` (unchanged), ``"FrozenBN"``, ``"SyncBN"``/``"nnSyncBN"``
            (``nn.SyncBatchNorm``) or ``"naiveSyncBN"`` (detectron2's ``NaiveSyncBatchNorm``).

    Returns:
        nn.Module: the converted module (a new object only when ``module`` itself is a BN).

    Raises:
        ValueError: another norm string.
    """
    if norm in ('BN', '', 'GN'):
        return module
    if norm == 'FrozenBN':
        return to_frozen_bn(module)
    if norm in ('SyncBN', 'nnSyncBN'):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if norm == 'naiveSyncBN':
        return _replace_bn(module, _to_naive_sync)
    raise ValueError(f'norm {norm!r} is not supported; use FrozenBN, BN, SyncBN, nnSyncBN, naiveSyncBN or GN')
