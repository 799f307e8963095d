"""RS-Nets (backbones/rsnet/): private BN selection, resolution rules, MRED, counts, BN conversions."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backbones
from backbones import complexity, count_macs, count_params
from backbones.rsnet import (
    DEFAULT_RESOLUTIONS,
    MREDLoss,
    PrivateBatchNorm,
    expand_private_bn_state_dict,
    mred_kd_weight,
    mred_loss,
    resize_logits,
)

SMALL = (64, 56, 48, 40, 32)  # five small training resolutions keep the tests fast


def _build(name='rs_resnet18', seed=0, **kw):
    torch.manual_seed(seed)
    return backbones.create(name, **kw)


def _private_bns(model):
    return [m for m in model.modules() if isinstance(m, PrivateBatchNorm)]


def _randomise_bn_stats(model, seed=1):
    """Give every private BN distinct statistics and affine so that a wrong selection shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pbn in _private_bns(model):
            for bn in pbn.bns:
                c = bn.num_features
                bn.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
                if getattr(bn, 'weight', None) is not None:
                    bn.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
                    bn.bias.copy_(0.1 * torch.randn(c, generator=g))
    return model


# ----------------------------------------------------------------------------------------------- counts
# (name, shared + 1 BN params [M], with 5 private BNs [M], MACs [G] at 224/192/160/128/96, MACs at 64)
# from ../shared/reference/official_implementations.md Sec. 4.4 (conv + fc MACs, batch 1)
REF = [
    ('rs_resnet18', 11.690, 11.728, (1.814, 1.333, 0.926, 0.593, 0.334), 0.149),
    ('rs_resnet50', 25.557, 25.770, (4.089, 3.005, 2.087, 1.337, 0.753), 0.336),
    ('rs_mobilenet_v2', 3.505, 3.641, (0.301, 0.221, 0.154, 0.099, 0.056), 0.026),
]


@pytest.mark.parametrize('name,p1,p5,macs,macs64', REF)
def test_params_and_macs_match_reference(name, p1, p5, macs, macs64):
    single = _build(name, resolutions=(224,))
    model = _build(name)
    assert model.resolutions == DEFAULT_RESOLUTIONS
    n1, n5 = count_params(single), count_params(model)
    # reference figures are rounded to 3 decimals: allow half a unit of the last digit
    assert n1 / 1e6 == pytest.approx(p1, abs=5e-4)
    # the reference's "+5 alpha" live in MREDLoss here; 5 parameters do not change the rounded figure
    assert n5 / 1e6 == pytest.approx(p5, abs=5e-4)
    bn_params = sum(sum(p.numel() for p in pbn.bns[0].parameters()) for pbn in _private_bns(single))
    assert n5 - n1 == 4 * bn_params  # exactly four more private BN sets, nothing else duplicated
    # the public entry point at one resolution (real tensors) ...
    got = complexity(model, resolution=128)
    assert got['params'] == n5 and got['macs'] / 1e9 == pytest.approx(macs[3], abs=5e-4)
    # ... and every resolution on the meta device (shapes only, instant)
    model.eval().to('meta')
    for r, ref in zip(model.resolutions, macs):
        with model.resolution_context(r):
            got = count_macs(model, torch.zeros(1, 3, r, r, device='meta')) / 1e9
        assert got == pytest.approx(ref, abs=5e-4), (name, r)
    # 64 is not a trained resolution: the nearest rule uses the 96 BN, the MACs are those of a 64 input
    got64 = count_macs(model, torch.zeros(1, 3, 64, 64, device='meta')) / 1e9
    assert got64 == pytest.approx(macs64, abs=5e-4)
    assert model.resolution == 96


@pytest.mark.parametrize('name,tv', [('rs_resnet18', 'resnet18'), ('rs_resnet50', 'resnet50'),
                                     ('rs_resnet101', 'resnet101')])
def test_resnet_weights_have_torchvision_shapes(name, tv):
    """Shared conv/fc tensors are exactly torchvision's ResNet v1.5 (stride on the 3x3)."""
    import torchvision
    with torch.device('meta'):  # shapes only: skips the weight initialisation cost
        ours = _build(name, resolutions=(224,))
        ref = getattr(torchvision.models, tv)()
    shapes = sorted(tuple(p.shape) for n, p in ours.named_parameters() if p.dim() > 1)
    ref_shapes = sorted(tuple(p.shape) for n, p in ref.named_parameters() if p.dim() > 1)
    assert shapes == ref_shapes
    assert count_params(ours) == sum(p.numel() for p in ref.parameters())
    strided = [m for m in ours.stages.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert all(m.kernel_size in ((3, 3), (1, 1)) for m in strided)
    if name != 'rs_resnet18':  # v1.5: the 1x1 reduction never strides
        assert all(b.conv1.stride == (1, 1) and b.conv2.stride in ((1, 1), (2, 2))
                   for st in ours.stages for b in st)


def test_initialisation():
    res = _build('rs_resnet50', resolutions=(224, 96))
    w = res.stem.conv1.weight
    assert w.std().item() == pytest.approx((2.0 / (64 * 49)) ** 0.5, rel=0.1)  # Kaiming normal, fan_out
    for pbn in _private_bns(res):
        for bn in pbn.bns:
            assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    mb = _build('rs_mobilenet_v2', resolutions=(224, 96))
    conv = mb.stages[3][0].conv[0]  # 1x1 expand 160 -> 960
    n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    assert conv.weight.std().item() == pytest.approx((2.0 / n) ** 0.5, rel=0.1)
    fc = mb.head[-1]
    assert isinstance(fc, nn.Linear) and fc.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.all(fc.bias == 0) and mb.head[0].out_channels == 1280


# ----------------------------------------------------------------------------------------------- private BN
def test_private_bn_selected_per_resolution():
    model = _randomise_bn_stats(_build(resolutions=SMALL, num_classes=10)).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        outs = {}
        for i, r in enumerate(SMALL):
            model.set_resolution(r)
            assert model.resolution == r and model.explicit_resolution == r
            assert all(m.index == i for m in _private_bns(model))
            outs[r] = model(x)
        # distinct private BNs give distinct outputs on the same input
        assert not torch.allclose(outs[64], outs[32])
        # perturb only the 40 BN of the stem: only the 40 output changes
        model.stem.bn1.bns[SMALL.index(40)].running_mean.add_(1.0)
        for r in SMALL:
            model.set_resolution(r)
            changed = not torch.allclose(model(x), outs[r])
            assert changed == (r == 40), r
        model.set_resolution_index(1)
        assert model.resolution == 56 and all(m.index == 1 for m in _private_bns(model))


def test_resolution_context_restores_previous_choice():
    model = _build(resolutions=SMALL, num_classes=0).eval()
    assert model.explicit_resolution is None
    with model.resolution_context(40):
        assert model.resolution == 40 and model.explicit_resolution == 40
        with model.resolution_context(56):
            assert model.resolution == 56
        assert model.resolution == 40 and all(m.index == 3 for m in _private_bns(model))
    assert model.explicit_resolution is None
    model.set_resolution(48)
    model.set_resolution(None)  # back to the rule
    assert model.explicit_resolution is None and model.resolution_for_input((64, 64)) == 64


def test_nearest_rule():
    model = _randomise_bn_stats(_build(num_classes=10)).eval()
    assert model.resolution_rule == 'nearest'
    cases = {(224, 224): 224, (225, 301): 224, (200, 300): 192, (208, 208): 224,  # tie -> larger
             (150, 400): 160, (64, 64): 96, (512, 1024): 224, (110, 111): 96, (113, 200): 128}
    for size, expected in cases.items():
        assert model.resolution_for_input(size) == expected, size
    x = torch.randn(1, 3, 110, 150)  # shorter side 110 -> 96
    with torch.no_grad():
        got = model(x)
        assert model.resolution == 96 and model.explicit_resolution is None
        with model.resolution_context(96):
            ref = model(x)
        with model.resolution_context(128):
            other = model(x)
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(got, other)
    # an explicit choice overrides the rule
    model.set_resolution(224)
    assert model.resolution_for_input((64, 64)) == 224


def test_explicit_rule():
    model = _build(num_classes=0, resolution_rule='explicit').eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r'\(224, 192, 160, 128, 96\)'):
            model.forward_stages(torch.randn(1, 3, 100, 100))
        model.forward_stages(torch.randn(1, 3, 128, 128))
        assert model.resolution == 128
        model.forward_stages(torch.randn(1, 3, 96, 140))  # shorter side is a trained resolution
        assert model.resolution == 96
        model.set_resolution(160)
        model.forward_stages(torch.randn(1, 3, 100, 100))
        assert model.resolution == 160
    model.resolution_rule = 'nearest'
    model.set_resolution(None)
    assert model.resolution_for_input((100, 100)) == 96


def test_errors_name_allowed_values():
    model = _build(resolutions=SMALL, num_classes=0)
    with pytest.raises(ValueError, match=r'\(64, 56, 48, 40, 32\)'):
        model.set_resolution(100)
    with pytest.raises(ValueError, match=r'0\.\.4'):
        model.set_resolution_index(5)
    with pytest.raises(ValueError, match=r'0\.\.4'):
        model.set_resolution_index(-1)
    with pytest.raises(ValueError, match='nearest'):
        model.resolution_rule = 'closest'
    with pytest.raises(ValueError, match='descending'):
        _build(resolutions=(96, 224))
    with pytest.raises(ValueError, match='integers'):
        _build(resolutions=(224.5,))
    with pytest.raises(ValueError, match='one per training resolution'):
        model.forward_parallel([torch.randn(1, 3, 64, 64)])
    with pytest.raises(ValueError, match='descending'):
        model.forward_parallel([torch.randn(1, 3, s, s) for s in reversed(SMALL)])
    with pytest.raises(ValueError, match='callable'):
        _build(norm_layer=dict(type='SyncBN'))
    with pytest.raises(ValueError, match='one entry per unit'):
        _build('rs_resnet50', multi_grid=(1, 2))
    with pytest.raises(ValueError, match='32, 16 or 8'):
        _build(output_stride=4)
    with pytest.raises(ValueError, match='multi_grid'):
        _build('rs_mobilenet_v2', multi_grid=(1, 2, 4))
    with pytest.raises(ValueError, match=r'\[N, 3, H, W\]'):
        model.forward_stages(torch.randn(1, 1, 64, 64))


def test_single_resolution_is_a_plain_network():
    model = _build('rs_resnet18', resolutions=(224,), num_classes=0).eval()
    assert all(len(m.bns) == 1 for m in _private_bns(model))
    with torch.no_grad():
        out = model.forward_stages(torch.randn(1, 3, 100, 130))  # nearest rule: the only BN
    assert model.resolution == 224 and out['stage4'].shape == (1, 512, 4, 5)


# ----------------------------------------------------------------------------------------------- forward
@pytest.mark.parametrize('name', ['rs_resnet18', 'rs_mobilenet_v2'])
def test_forward_parallel_train_step(name):
    model = _build(name, resolutions=SMALL, num_classes=7).train()
    crit = MREDLoss(len(SMALL))
    images = [torch.rand(2, 3, s, s) for s in SMALL]
    logits = model.forward_parallel(images)
    assert [tuple(z.shape) for z in logits] == [(2, 7)] * 5
    assert model.explicit_resolution is None  # forward_parallel restores the previous choice
    loss, parts = crit(logits, torch.tensor([1, 4]))
    loss.backward()
    assert torch.isfinite(loss) and {'ce_0', 'ce_4', 'ce_ens', 'kd', 'kd_4', 'w_0'} <= set(parts)
    # every private BN of every resolution received a gradient, from its own branch
    for pbn in _private_bns(model):
        for bn in pbn.bns:
            assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    assert crit.alpha.grad is not None and crit.alpha.grad.abs().sum() > 0
    # one branch touches only its own BN
    model.zero_grad()
    with model.resolution_context(48):
        model(images[2]).sum().backward()
    bn = model.stem[1]
    assert bn.bns[2].weight.grad.abs().sum() > 0
    assert all(bn.bns[i].weight.grad is None or bn.bns[i].weight.grad.abs().sum() == 0 for i in (0, 1, 3, 4))


def test_forward_parallel_features_when_headless():
    model = _build('rs_resnet18', resolutions=(64, 32), num_classes=0, out_indices=(1, 3)).eval()
    with torch.no_grad():
        feats = model.forward_parallel([torch.randn(1, 3, 64, 64), torch.randn(1, 3, 32, 32)])
    assert [list(f) for f in feats] == [['stage2', 'stage4']] * 2
    assert feats[0]['stage4'].shape[-1] == 2 and feats[1]['stage4'].shape[-1] == 1


@pytest.mark.parametrize('name', ['rs_resnet18', 'rs_mobilenet_v2'])
@pytest.mark.parametrize('size', [(224, 224), (225, 301)])
def test_forward_backward_with_head(name, size):
    model = _build(name, num_classes=5).train()
    out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 5) and model.resolution == 224
    out.square().mean().backward()
    assert model.stem[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize('name', ['rs_resnet50', 'rs_mobilenet_v2'])
@pytest.mark.parametrize('os_', [16, 8])
def test_output_stride_by_dilation(name, os_):
    model = _build(name, num_classes=0, output_stride=os_, resolutions=(96,)).eval()
    with torch.no_grad():
        feats = model.forward_stages(torch.randn(1, 3, 65, 97))
    strides = [s.stride for s in model.feature_info]
    assert strides == ([4, 8, 16, 16] if os_ == 16 else [4, 8, 8, 8])
    for s, f in zip(model.feature_info, feats.values()):
        assert f.shape[1] == s.channels
        assert f.shape[-2:] == (-(-65 // s.stride), -(-97 // s.stride))
    dil = {m.dilation[0] for m in model.stages[3].modules()
           if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
    assert dil == ({2} if os_ == 16 else {4})


def test_multi_grid_dilations():
    model = _build('rs_resnet50', num_classes=0, output_stride=16, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in model.stages[3]] == [2, 4, 8]


def test_with_cp_recomputes_each_branch_with_its_own_bn():
    """Gradient checkpointing recomputes in backward; each branch must still use its private BN."""
    ref = _randomise_bn_stats(_build(resolutions=(48, 32), num_classes=3)).train()
    ckpt = copy.deepcopy(ref)
    for m in ckpt.modules():
        if hasattr(m, 'with_cp'):
            m.with_cp = True
    images = [torch.randn(2, 3, 48, 48), torch.randn(2, 3, 32, 32)]
    grads = []
    for model in (ref, ckpt):
        z = model.forward_parallel(images)
        (z[0].square().sum() + 3 * z[1].sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-5, msg=n)


def test_expand_private_bn_state_dict_from_plain_model():
    plain = _randomise_bn_stats(_build(resolutions=(64,), num_classes=4)).eval()
    multi = _build(resolutions=SMALL, num_classes=4, seed=5).eval()
    sd = expand_private_bn_state_dict(plain.state_dict(), multi)
    multi.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        with plain.resolution_context(64):
            ref = plain(x)
        for r in SMALL:
            with multi.resolution_context(r):
                torch.testing.assert_close(multi(x), ref)


# ----------------------------------------------------------------------------------------------- MRED
def _naive_mred(logits, y, alpha, kd):
    """Direct transcription of the reference Sec. 4.2 with nn.KLDivLoss(batchmean) (classification)."""
    n = len(logits)
    ce = nn.CrossEntropyLoss()
    kl = nn.KLDivLoss(reduction='batchmean')
    w = torch.softmax(alpha, 0)
    ens = sum(w[j] * logits[j].detach() for j in range(n))
    loss = sum(ce(z, y) for z in logits) + ce(ens, y)
    if kd is None:
        return loss
    terms = []
    for j in range(n):
        terms.append(kl(F.log_softmax(logits[j], 1), F.softmax(ens.detach(), 1)))
        if kd == 'ens_topdown':
            terms += [kl(F.log_softmax(logits[j], 1), F.softmax(logits[k].detach(), 1)) for k in range(j)]
    lam = 2.0 / (n + 1) if kd == 'ens_topdown' else 1.0
    return loss + lam * sum(terms)


def _logits(n=5, b=4, c=6, seed=0, spatial=()):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, *spatial, generator=g).requires_grad_() for _ in range(n)]


def test_kd_weight():
    assert mred_kd_weight(5) == pytest.approx(1 / 3)
    assert mred_kd_weight(3, 'ens_topdown') == pytest.approx(0.5)
    assert mred_kd_weight(5, 'ens') == 1.0 and mred_kd_weight(5, None) == 0.0
    assert MREDLoss(5).kd_weight == pytest.approx(1 / 3)
    assert torch.equal(MREDLoss(4).alpha.data, torch.ones(4))
    with pytest.raises(ValueError, match='ens_topdown'):
        MREDLoss(5, kd='topdown')


@pytest.mark.parametrize('kd', ['ens_topdown', 'ens', None])
def test_mred_matches_reference_formula(kd):
    logits = _logits()
    alpha = torch.tensor([0.5, 0.3, 0.0, -0.2, -1.0], requires_grad=True)
    y = torch.tensor([0, 5, 2, 3])
    loss, parts = mred_loss(logits, y, alpha, kd=kd)
    ref = _naive_mred(logits, y, alpha, kd)
    torch.testing.assert_close(loss, ref)
    assert parts['kd_weight'].item() == pytest.approx(mred_kd_weight(5, kd))
    recomposed = sum(parts[f'ce_{j}'] for j in range(5)) + parts['ce_ens'] + parts['kd_weight'] * parts['kd']
    torch.testing.assert_close(recomposed, loss.detach())
    if kd is not None:
        torch.testing.assert_close(sum(parts[f'kd_{j}'] for j in range(5)), parts['kd'])
    torch.testing.assert_close(sum(parts[f'w_{j}'] for j in range(5)), torch.tensor(1.0))
    assert not any('loss' in k for k in parts)


def test_ensemble_ce_trains_only_alpha_and_teachers_are_detached():
    y = torch.tensor([0, 5, 2, 3])
    # kd=None: the gradient reaching each z_j is that of its own CE only (ensemble built on z_j.detach())
    logits = _logits()
    alpha = torch.ones(5, requires_grad=True)
    mred_loss(logits, y, alpha, kd=None)[0].backward()
    for z in logits:
        own = torch.autograd.grad(F.cross_entropy(z, y), z)[0]
        torch.testing.assert_close(z.grad, own)
    g_alpha_ce = alpha.grad.clone()
    assert g_alpha_ce.abs().sum() > 0
    # full MRED: alpha's gradient is unchanged (the ensemble teacher is detached) ...
    logits = _logits()
    alpha = torch.ones(5, requires_grad=True)
    mred_loss(logits, y, alpha, kd='ens_topdown')[0].backward()
    torch.testing.assert_close(alpha.grad, g_alpha_ce)
    # ... and z_0 (the largest resolution, teacher of all others) is only a student of the ensemble
    z0 = logits[0]
    ens = sum(torch.softmax(torch.ones(5), 0)[j] * logits[j].detach() for j in range(5))
    kd0 = F.kl_div(F.log_softmax(z0, 1), F.softmax(ens, 1), reduction='batchmean')
    own = F.cross_entropy(z0, y) + (1 / 3) * kd0
    torch.testing.assert_close(z0.grad, torch.autograd.grad(own, z0)[0])
    # the smallest resolution is taught by everyone: its KD gradient is non-zero
    assert logits[-1].grad.abs().sum() > 0


def test_mred_segmentation_ignore_index():
    n, b, c, h, w = 3, 2, 5, 6, 7
    logits = _logits(n=n, b=b, c=c, spatial=(h, w), seed=3)
    alpha = torch.tensor([0.2, 0.1, -0.3], requires_grad=True)
    g = torch.Generator().manual_seed(4)
    y = torch.randint(0, c, (b, h, w), generator=g)
    ignored = torch.rand(b, h, w, generator=g) < 0.3
    y[ignored] = 255
    loss, parts = mred_loss(logits, y, alpha)  # dense logits: ignore_index defaults to 255
    # same as classification over the valid pixels only
    flat = [z.permute(0, 2, 3, 1)[~ignored] for z in logits]
    ref, _ = mred_loss(flat, y[~ignored], alpha)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    for z in logits:  # ignored pixels get no gradient from CE or KD
        assert z.grad.permute(0, 2, 3, 1)[ignored].abs().max() == 0
        assert z.grad.permute(0, 2, 3, 1)[~ignored].abs().sum() > 0
    # logits at ignored pixels do not change the loss
    moved = [z.detach().clone() for z in logits]
    for z in moved:
        z.permute(0, 2, 3, 1)[ignored] += 10.0
    torch.testing.assert_close(mred_loss(moved, y, alpha)[0], loss.detach())
    # all pixels ignored: a finite zero, not NaN
    zero, _ = mred_loss(logits, torch.full_like(y, 255), alpha)
    assert zero.item() == 0.0


def test_mred_classification_keeps_class_255():
    logits = _logits(n=2, b=2, c=300)
    y = torch.tensor([255, 3])
    loss, parts = mred_loss(logits, y, torch.ones(2))
    torch.testing.assert_close(parts['ce_0'], F.cross_entropy(logits[0], y).detach())


def test_resize_logits_and_shape_errors():
    small = [torch.randn(1, 4, 22, 22), torch.randn(1, 4, 14, 14), torch.randn(1, 4, 6, 6)]
    resized = resize_logits(small, 22)
    assert [tuple(z.shape) for z in resized] == [(1, 4, 22, 22)] * 3 and resized[0] is small[0]
    with pytest.raises(ValueError, match='resize_logits'):
        mred_loss(small, torch.zeros(1, 22, 22, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match=r'alpha must have shape \[3\]'):
        mred_loss(resized, torch.zeros(1, 22, 22, dtype=torch.long), torch.ones(2))
    with pytest.raises(ValueError, match='target must have shape'):
        mred_loss(resized, torch.zeros(1, 21, 22, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match='built for 5'):
        MREDLoss(5)(resized, torch.zeros(1, 22, 22, dtype=torch.long))


# ----------------------------------------------------------------------------------------------- conversions
def _outputs_per_resolution(model, x):
    outs = []
    with torch.no_grad():
        for r in model.resolutions:
            with model.resolution_context(r):
                outs.append(model.forward_stages(x)['stage4'])
    return outs


def _check_conversion(model, convert, cls, x):
    model = _randomise_bn_stats(model).eval()
    ref = _outputs_per_resolution(model, x)
    conv = convert(model).eval()
    for pbn in _private_bns(conv):
        assert all(type(bn) is cls for bn in pbn.bns), [type(bn) for bn in pbn.bns]
    got = _outputs_per_resolution(conv, x)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b)
    # the selector indexes the converted list: perturbing converted BN 1 changes only resolution 1
    with torch.no_grad():
        conv.stem[1].bns[1].running_mean.add_(1.0)
    after = _outputs_per_resolution(conv, x)
    assert [not torch.allclose(a, b) for a, b in zip(got, after)] == [False, True, False]
    return conv


@pytest.mark.parametrize('name', ['rs_resnet18', 'rs_mobilenet_v2'])
def test_sync_batchnorm_round_trip(name):
    model = _build(name, resolutions=(64, 48, 32), num_classes=0)
    x = torch.randn(1, 3, 48, 48)
    conv = _check_conversion(model, nn.SyncBatchNorm.convert_sync_batchnorm, nn.SyncBatchNorm, x)
    # converting back by hand (torch has no revert) must also select per resolution
    for pbn in _private_bns(conv):
        for i, s in enumerate(pbn.bns):
            bn = nn.BatchNorm2d(s.num_features, s.eps, s.momentum)
            bn.load_state_dict(s.state_dict())
            pbn.bns[i] = bn
    ref = _outputs_per_resolution(conv, x)
    assert len(ref) == 3 and not torch.allclose(ref[0], ref[1])


def test_mmengine_revert_sync_batchnorm():
    mm_model = pytest.importorskip('mmengine.model', reason='mmengine not installed (pip install -e .[mm])')
    model = nn.SyncBatchNorm.convert_sync_batchnorm(_build(resolutions=(64, 48, 32), num_classes=0))
    reverted = _check_conversion(model, mm_model.revert_sync_batchnorm, type(mm_model.revert_sync_batchnorm(
        nn.SyncBatchNorm(4))), torch.randn(1, 3, 48, 48))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in reverted.modules())


def test_detectron2_frozen_batchnorm():
    layers = pytest.importorskip('detectron2.layers', reason='detectron2 not installed (see setup.cfg [det])')
    model = _build('rs_resnet50', resolutions=(64, 48, 32), num_classes=0)
    frozen_bn = layers.FrozenBatchNorm2d
    x = torch.randn(1, 3, 48, 48)
    frozen = _check_conversion(model, frozen_bn.convert_frozen_batchnorm, frozen_bn, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())


def test_norm_layer_builds_every_private_bn():
    model = _build(resolutions=(64, 32), num_classes=0, norm_layer=lambda c: nn.GroupNorm(8, c))
    norms = [bn for pbn in _private_bns(model) for bn in pbn.bns]
    assert norms and all(isinstance(m, nn.GroupNorm) for m in norms)
    with torch.no_grad():
        model.forward_stages(torch.randn(1, 3, 64, 64))


def test_copies_keep_one_shared_selection():
    import pickle
    model = _build(resolutions=SMALL, num_classes=0)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        clone.set_resolution(40)
        assert all(m.index == 3 for m in _private_bns(clone))
        assert all(m.index == 0 for m in _private_bns(model))
    # a neck built from the backbone switches with it
    neck_bn = model.private_bn(16)
    model.set_resolution(32)
    assert neck_bn.index == 4 and len(neck_bn.bns) == 5
