"""Static export: :func:`export_static` turns a slimmable backbone into plain ``nn`` layers at one width.

The copy is output-identical at that ``(width, resolution)`` in eval mode and traceable (deployment of one
sub-network of US-Nets / MutualNet).
"""
import copy

import torch
from torch import nn

from .model import SlimmableBackbone
from .ops import SlimmableBatchNorm2d, SlimmableConv2d, SlimmableLinear


@torch.no_grad()
def export_static(model, width, resolution=None):
    """A plain-module copy of a slimmable backbone at one width (and BN configuration).

    Every :class:`SlimmableConv2d` / :class:`SlimmableLinear` / :class:`SlimmableBatchNorm2d` is replaced by
    an ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` holding the sliced weights and a copy of the private
    statistics of ``(width, resolution)``; the block structure (residuals, pooling, heads) is kept, so
    ``forward``/``forward_stages``/``feature_info`` behave as before.  The result is output-identical to
    ``model`` at that configuration in eval mode, traceable with ``torch.jit.trace`` at a fixed input size,
    and returned in eval mode.  Its ``set_width`` accepts only the exported width.

    Args:
        model (SlimmableBackbone): the slimmable model (left unchanged).
        width (float): width multiplier in ``model.width_range``.
        resolution (int | None): BN statistics of ``(width, resolution)`` (``None``: width-only statistics).

    Returns:
        SlimmableBackbone: a static copy (only plain ``nn`` layers inside).

    Raises:
        ValueError: not a slimmable backbone; width outside the range; no private statistics for that
            configuration (run :func:`calibrate_bn` first; the message says so).
    """
    if not isinstance(model, SlimmableBackbone):
        raise ValueError(f'export_static needs a SlimmableBackbone, got {type(model).__name__}')
    if model._static_config is not None:
        raise ValueError('this model is already static (exported)')
    w = model._check_width(width)
    r = model._check_resolution(resolution)
    net = copy.deepcopy(model)
    net.set_width(w, r)
    for bn in net.slimmable_bns():
        bn.static_bn()  # raises the calibrate_bn ValueError before any work when statistics are missing
    net.eval()
    # record the input channels each sliced layer sees at this width (one probe forward, every stage + head)
    in_ch, hooks = {}, []
    for name, m in net.named_modules():
        if isinstance(m, (SlimmableConv2d, SlimmableLinear)):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, inp, name=name: in_ch.__setitem__(name, inp[0].shape)))
    saved_idx = net.out_indices
    net.out_indices = (0, 1, 2, 3)
    p = next(net.parameters())
    try:
        net(torch.zeros(1, 3, 64, 64, device=p.device, dtype=p.dtype))
    finally:
        net.out_indices = saved_idx
        for h in hooks:
            h.remove()

    def take(t):
        return None if t is None else nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)

    for name, m in list(net.named_modules()):
        if isinstance(m, SlimmableConv2d):
            ci = in_ch[name][1]
            co = ci if m.depthwise else m.active_out
            # built on the meta device (no init work), then given the sliced weights
            new = nn.Conv2d(ci, co, m.kernel_size, m.stride, m.padding, m.dilation, ci if m.depthwise else 1,
                            bias=m.bias is not None, device='meta')
            new.weight = take(m.weight[:co] if m.depthwise else m.weight[:co, :ci])
            new.bias = take(None if m.bias is None else m.bias[:co])
        elif isinstance(m, SlimmableLinear):
            fi = in_ch[name][-1]
            new = nn.Linear(fi, m.out_features, bias=m.bias is not None, device='meta')
            new.weight = take(m.weight[:, :fi])
            new.bias = take(m.bias)
        elif isinstance(m, SlimmableBatchNorm2d):
            new = m.static_bn()
        else:
            continue
        parent_name, _, child = name.rpartition('.')
        setattr(net.get_submodule(parent_name) if parent_name else net, child, new)
    net._static_config = (w, r)
    net.width_range = (w, w)
    return net.eval()
