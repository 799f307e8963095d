"""Data-dependent MAC accounting of (S)ACT networks (Figurnov et al. 2017, Sec. 4; reference Sec. 5.4, 5.7).

:func:`data_dependent_macs` counts the multiply-accumulates of an eval forward at the positions that actually
ran, as the authors' ``flopsometer`` (the paper reports FLOPs = 2 x MACs).
"""
import torch

from .sparse import _dilate_mask

MAC_CONVENTION = 'MACs (FLOPs = 2 x MACs in the SACT paper)'


@torch.no_grad()
def data_dependent_macs(model, batch):
    """MACs of an eval forward of ``batch`` counted at the running positions (reference Sec. 5.4/5.7).

    conv1 7x7 and the classifier dense; the first unit of every stage dense; a later unit t: conv1
    (1x1) on its running mask dilated by the 3x3 footprint of conv2, conv2 and conv3 on the mask;
    halting branches after unit t < L at the positions that ran unit t (SACT: 9C per position plus
    C per image for the global term; ACT: C per image).  BN, ReLU, pooling, additions and biases are
    not counted.

    Args:
        model (PreActResNet): a plain, ACT or SACT pre-activation ResNet (its training mode is restored).
        batch (Tensor): ``[N, 3, H, W]`` images.

    Returns:
        dict: ``macs`` (mean per image, float), ``macs_std`` (std over images), ``macs_per_image``
        (list), ``ponder_cost`` (mean over images of the sum over stages of the mean ponder cost; None
        for the plain network), ``units_per_stage`` (mean N per stage, averaged over positions and
        images), ``convention``.
    """
    was_training = model.training
    model.eval()
    try:
        model.forward(batch)
    finally:
        model.train(was_training)
    n = batch.shape[0]
    dev = batch.device
    macs = torch.zeros(n, dtype=torch.float64, device=dev)
    conv = model.stem.conv
    h0, w0 = (batch.shape[2] + 2 * 3 - 7) // 2 + 1, (batch.shape[3] + 2 * 3 - 7) // 2 + 1
    macs += conv.in_channels * conv.out_channels * 49 * h0 * w0
    units_per_stage = []
    last = max(model.out_indices) if (model.out_indices and model.head is None) else 3
    for i, stage in enumerate(model.stages[:last + 1]):
        u0 = stage.units[0]
        hi, wi = stage.input_hw
        s = u0.stride
        ho, wo = (hi - 1) // s + 1, (wi - 1) // s + 1
        dense = u0.in_channels * u0.mid * hi * wi + 9 * u0.mid * u0.mid * ho * wo + u0.mid * u0.depth * ho * wo
        if u0.downsample is not None:
            dense += u0.in_channels * u0.depth * ho * wo
        macs += dense
        c = u0.depth
        if stage.act == 'none':
            for u in stage.units[1:]:
                macs += (u.in_channels * u.mid + 9 * u.mid * u.mid + u.mid * u.depth) * ho * wo
            units_per_stage.append(float(len(stage.units)))
            continue
        full = torch.ones(n, ho, wo, dtype=torch.bool, device=dev)
        halt_masks = [full] + list(stage.unit_masks)
        for t, m in enumerate(stage.unit_masks, start=1):
            u = stage.units[t]
            if stage.act == 'act':
                cnt = m.reshape(n).to(torch.float64) * (ho * wo)
                macs += cnt * (u.in_channels * u.mid + 9 * u.mid * u.mid + u.mid * u.depth)
            else:
                cnt = m.reshape(n, -1).sum(1).to(torch.float64)
                wide = _dilate_mask(m, u.dilation).reshape(n, -1).sum(1).to(torch.float64)
                macs += wide * u.in_channels * u.mid + cnt * (9 * u.mid * u.mid + u.mid * u.depth)
        for t, m in enumerate(halt_masks):
            if t >= len(stage.units) - 1:
                break
            if stage.act == 'act':
                macs += m.reshape(n, -1).any(1).to(torch.float64) * c
            else:
                m = m.expand(n, ho, wo)
                macs += m.reshape(n, -1).sum(1).to(torch.float64) * 9 * c
                macs += m.reshape(n, -1).any(1).to(torch.float64) * c
        units_per_stage.append(stage.n_units.float().mean().item())
    if model.head is not None:
        lin = model.head[-1]
        macs += lin.in_features * lin.out_features
    ponder = None
    if model.ponder_costs:
        ponder = sum(r.reshape(n, -1).mean(1) for r in model.ponder_costs).mean().item()
    return {'macs': macs.mean().item(), 'macs_std': macs.std(unbiased=False).item(),
            'macs_per_image': macs.tolist(), 'ponder_cost': ponder, 'units_per_stage': units_per_stage,
            'convention': MAC_CONVENTION}
