"""SACT / ACT pre-activation ResNets (backbones/sact/): counts, halting math, real skipping, dense equivalence."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backbones
from backbones.complexity import count_macs
from backbones.sact import (
    ACTHalting,
    ACTStage,
    PreActBottleneck,
    SACTHalting,
    halting_distribution,
    ponder_cost_map,
    ponder_loss,
    set_halting_bias,
)

SIG_M3 = 1 / (1 + math.exp(3))  # sigma(-3), the initial halting score


def _build(name, seed=0, **kw):
    torch.manual_seed(seed)
    return backbones.create(name, **kw)


def _randomize(model, seed=0, halting_std=0.05, bias=None, calib=None):
    """Non-trivial BN statistics and spatially varying halting scores (so that masks are partial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            if isinstance(m, SACTHalting):
                m.conv_local.weight.copy_(torch.randn(m.conv_local.weight.shape, generator=g) * halting_std)
                m.conv_global.weight.copy_(torch.randn(m.conv_global.weight.shape, generator=g) * halting_std)
            if isinstance(m, ACTHalting):
                m.fc.weight.copy_(torch.randn(m.fc.weight.shape, generator=g) * halting_std)
        if calib is not None:
            # post-statistics BN on ``calib`` with nothing halting, so that normalised activations (and halting
            # logits) are O(1): random running statistics make the logits ill-conditioned (float cancellation)
            set_halting_bias(model, -20.0)
            was = model.training
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None
            model.train()
            model(calib)
            model.train(was)
            for m in model.modules():  # a few images give no usable statistics of pooled features
                if isinstance(m, (SACTHalting, ACTHalting)):
                    norm = m.norm_global if isinstance(m, SACTHalting) else m.norm
                    if isinstance(norm, nn.BatchNorm2d):
                        norm.reset_running_stats()
    if bias is not None:
        set_halting_bias(model, bias)
    return model


def _partial(model):
    """True if some unit ran on a strict subset of the positions of an image that still runs."""
    for s in model.stages:
        for m in s.unit_masks:
            frac = m.float().mean().item()
            if 0 < frac < 1:
                return True
    return False


def _assert_features_close(ref, got):
    assert list(ref) == list(got)
    for k in ref:
        scale = ref[k].abs().max().item()
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4 * scale)


# ----------------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize('name,ref', [('preact_resnet50', 4.089e9), ('preact_resnet101', 7.801e9)])
def test_plain_macs_match_reference(name, ref):
    """reference Sec. 5.7: R-50 4.089 G MACs (8.18 GFLOPs), R-101 7.801 G (15.60 GFLOPs) at 224."""
    model = _build(name)
    res = backbones.complexity(model, 224)
    assert abs(res['macs'] - ref) / ref < 0.005, res['macs']
    assert res['convention'].startswith('MACs')
    # the analytic active-position counter agrees with torch.utils.flop_counter on the dense network
    assert res['macs'] == count_macs(model.eval(), torch.zeros(1, 3, 224, 224))


def test_halting_overhead_resnet101():
    """Halting after every unit but the last: 3x3 conv C->1 at every position plus a C->1 global term."""
    model = _build('sact_resnet101', num_classes=1000)
    set_halting_bias(model, -20.0)  # nothing halts: every unit and halting branch on every position
    got = model.data_dependent_macs(torch.zeros(1, 3, 224, 224))
    plain = _build('preact_resnet101').data_dependent_macs(torch.zeros(1, 3, 224, 224))
    expect = sum((n - 1) * (9 * c * s * s + c) for n, c, s in zip((3, 4, 23, 3), (256, 512, 1024, 2048),
                                                                  (56, 28, 14, 7)))
    assert got['macs'] - plain['macs'] == expect
    assert expect < 0.07e9  # ~0.067 G MACs = 0.134 GFLOPs (reference: <= 0.13 GFLOPs)
    assert got['units_per_stage'] == [3.0, 4.0, 23.0, 3.0]


@pytest.mark.parametrize('name', ['preact_resnet50', 'sact_resnet50', 'act_resnet50'])
def test_analytic_macs_equal_flop_counter_dense(name):
    """Freshly initialised: nothing halts early in R-50, so the active-position count is the dense count."""
    model = _build(name, num_classes=10).eval()
    x = torch.randn(2, 3, 65, 97)
    if name != 'preact_resnet50':
        model.execution = 'dense'
    got = model.data_dependent_macs(x)
    assert got['macs'] == count_macs(model, x) / 2
    assert got['macs_std'] == 0
    if name == 'preact_resnet50':
        assert got['ponder_cost'] is None
    else:
        # every stage runs all L units: N = L, R = 1 - (L-1) sigma(-3)
        expect = sum(n + 1 - (n - 1) * SIG_M3 for n in (3, 4, 6, 3))
        assert got['ponder_cost'] == pytest.approx(expect, rel=1e-5)
        assert got['units_per_stage'] == [3.0, 4.0, 6.0, 3.0]


@pytest.mark.parametrize('name', ['sact_resnet50', 'act_resnet50'])
def test_forced_halting_drops_macs_and_matches_flop_counter(name):
    """Partial halting: the active-position count equals what the sparse execution actually computes."""
    x = torch.randn(3, 3, 64, 80)
    model = _randomize(_build(name, num_classes=0).eval(), seed=1, halting_std=0.1, bias=-1.0)
    model.execution = 'gather' if name.startswith('sact') else 'image'
    dd = model.data_dependent_macs(x)
    assert _partial(model) or name.startswith('act')
    assert dd['macs'] == pytest.approx(count_macs(model, x) / 3, rel=1e-12)
    dense = _build('preact_resnet50', num_classes=0)
    d0 = dense.data_dependent_macs(x)['macs']
    assert dd['macs'] < d0
    # constant h = sigmoid(5) = 0.9933 >= 0.99: all halted after the first unit of every stage
    _randomize(model, seed=1, halting_std=0.0, bias=5.0)
    forced = model.data_dependent_macs(x)
    assert forced['units_per_stage'] == [1.0, 1.0, 1.0, 1.0]
    assert forced['ponder_cost'] == pytest.approx(8.0)  # N = 1, R = 1 per stage
    assert forced['macs'] < 0.5 * d0
    assert forced['macs'] == pytest.approx(count_macs(model, x) / 3, rel=1e-12)


# ----------------------------------------------------------------------------------------------- halting math
def test_halting_distribution_constructed_case():
    # position 0: 0.3 + 0.5 + 0.25 >= 0.99 at unit 3 -> N=3, R=1-0.8; position 1: never -> N=L=4;
    # position 2: 0.995 >= 0.99 at unit 1 -> N=1, R=1
    h = [torch.tensor([0.3, 0.1, 0.995]), torch.tensor([0.5, 0.2, 0.4]), torch.tensor([0.25, 0.1, 0.4]),
         torch.tensor([0.7, 0.7, 0.7])]
    h = [t.clone().requires_grad_(True) for t in h]
    p, n, r, rho = halting_distribution(h, eps=0.01)
    torch.testing.assert_close(n, torch.tensor([3., 4., 1.]))
    torch.testing.assert_close(r, torch.tensor([0.2, 0.6, 1.0]))
    torch.testing.assert_close(p[:, 0], torch.tensor([0.3, 0.5, 0.2, 0.0]))
    torch.testing.assert_close(p[:, 1], torch.tensor([0.1, 0.2, 0.1, 0.6]))
    torch.testing.assert_close(p[:, 2], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(p.sum(0), torch.ones(3))
    torch.testing.assert_close(rho, n + r)
    assert not n.requires_grad and rho.requires_grad
    rho.sum().backward()
    # d rho / d h_t = -1 for t < N (through R only), 0 otherwise; the last score is never used
    assert h[-1].grad is None
    torch.testing.assert_close(torch.stack([t.grad for t in h[:-1]]),
                               torch.tensor([[-1., -1., 0.], [-1., -1., 0.], [0., -1., 0.]]))


def test_halting_distribution_eps_boundary():
    p, n, r, rho = halting_distribution([torch.tensor([0.5]), torch.tensor([0.489]), torch.tensor([0.3])], eps=0.01)
    assert n.item() == 3 and r.item() == pytest.approx(0.011, abs=1e-6)  # 0.989 < 0.99: continue
    p, n, r, rho = halting_distribution([torch.tensor([0.5]), torch.tensor([0.49]), torch.tensor([0.3])], eps=0.01)
    assert n.item() == 2 and r.item() == pytest.approx(0.5)  # 0.99 >= 1 - eps: halt
    with pytest.raises(ValueError, match='at least one'):
        halting_distribution([])


def _toy_stage(act, seed=0):
    torch.manual_seed(seed)
    units = [PreActBottleneck(16, 32)] + [PreActBottleneck(32, 32) for _ in range(3)]
    stage = ACTStage(units, act, eps=0.01, halting_bias=-1.0)
    with torch.no_grad():
        for m in stage.halting:
            for p in m.parameters():
                if p.dim() == 4:
                    p.normal_(0, 0.3)
    return stage


@pytest.mark.parametrize('act', ['sact', 'act'])
@pytest.mark.parametrize('training', [True, False])
def test_toy_stage_composition_and_ponder_gradient(act, training):
    """Stage output = sum_t p_t x_t with p from the halting rule; masked updates; rho = N + R; grad via R."""
    stage = _toy_stage(act).train(training)
    stage.execution = 'dense'
    states, hs, res = [], [], {}
    for t, m in enumerate(stage.halting):
        m.register_forward_hook(lambda mod, inp, out: states.append(inp[0]) or hs.append(out))
    for t, u in enumerate(stage.units):
        u.conv3.register_forward_hook(lambda mod, inp, out, t=t: res.__setitem__(t, out))
    torch.manual_seed(1)
    x = torch.randn(4, 16, 10, 12) + 2 * torch.randn(4, 16, 1, 1)  # images differ in their pooled features
    out = stage(x)
    L = len(stage.units)
    assert len(hs) == L - 1 and len(stage.unit_masks) == L - 1, 'the constructed case must run every unit'
    last = states[-1] + stage.unit_masks[-1].unsqueeze(1).float() * res[L - 1]
    xs = states + [last]
    p, n, r, rho = halting_distribution(hs + [torch.ones_like(hs[0])], eps=0.01)
    torch.testing.assert_close(p.sum(0), torch.ones_like(p[0]))
    ref = sum(p[t].unsqueeze(1) * xs[t] for t in range(L))
    torch.testing.assert_close(out, ref)
    # units t >= 2 update exactly the positions with N >= t (halted positions keep their state)
    for t in range(1, L):
        mask = stage.unit_masks[t - 1]
        torch.testing.assert_close(mask, n >= t + 1)
        if t < L - 1:
            torch.testing.assert_close(xs[t], xs[t - 1] + mask.unsqueeze(1).float() * res[t])
    nshape = n[:, 0, 0] if act == 'act' else n
    torch.testing.assert_close(stage.n_units, nshape)
    torch.testing.assert_close(stage.ponder_cost, nshape + (r[:, 0, 0] if act == 'act' else r))
    n_values = set(n.unique().tolist())
    assert len(n_values) > 1, f'constructed case should have several halting units, got {n_values}'
    # gradient of the ponder cost reaches the halting biases only through R: d rho / d b_t = -h_t (1 - h_t)
    # summed over the positions with N > t + 1
    stage.zero_grad()
    stage.ponder_cost.sum().backward()
    for t, m in enumerate(stage.halting):
        bias = m.conv_local.bias if act == 'sact' else m.fc.bias
        h = hs[t].detach()
        expect = -(h * (1 - h) * (n > t + 1).float()).sum()
        torch.testing.assert_close(bias.grad[0], expect)


def test_ponder_loss_and_forward_with_ponder():
    model = _build('sact_resnet50', num_classes=5)
    x = torch.randn(2, 3, 64, 96)
    logits, costs = model.forward_with_ponder(x)
    assert logits.shape == (2, 5)
    assert [tuple(c.shape) for c in costs] == [(2, 16, 24), (2, 8, 12), (2, 4, 6), (2, 2, 3)]
    loss = ponder_loss(costs, 0.01)
    torch.testing.assert_close(loss, 0.01 * sum(c.mean() for c in costs))
    assert ponder_cost_map(costs, (64, 96)).shape == (2, 64, 96)
    act = _build('act_resnet50', num_classes=0)
    feats, costs = act.forward_with_ponder(x)
    assert list(feats) == ['stage1', 'stage2', 'stage3', 'stage4']
    assert [tuple(c.shape) for c in costs] == [(2,)] * 4
    plain = _build('preact_resnet50', num_classes=0)
    assert plain.forward_with_ponder(x)[1] == []
    assert ponder_loss([], 0.01).item() == 0
    with pytest.raises(ValueError, match='tau'):
        ponder_loss(costs, -1)
    with pytest.raises(ValueError, match='act_'):
        set_halting_bias(plain, 1.0)


# ----------------------------------------------------------------------------------------------- skipping
def _count_unit_calls(model):
    """Hook conv1 of every unit; returns dict (stage, unit) -> list of batch sizes seen."""
    calls = {}
    for i, s in enumerate(model.stages):
        for j, u in enumerate(s.units):
            u.conv1.register_forward_hook(
                lambda mod, inp, out, k=(i, j): calls.setdefault(k, []).append(inp[0].shape[0]))
    return calls


@pytest.mark.parametrize('training', [False, True])
def test_act_stops_stage_when_every_image_halted(training):
    model = _build('act_resnet50', num_classes=0)
    set_halting_bias(model, 5.0)  # h = 0.9933 >= 0.99 after the first unit
    calls = _count_unit_calls(model)
    model.train(training)
    x = torch.randn(2, 3, 64, 64)
    model(x)
    assert sorted(calls) == [(i, 0) for i in range(4)]
    assert all(torch.equal(c, torch.full((2,), 2.0)) for c in model.ponder_costs)  # N = 1, R = 1


def test_act_skips_halted_images():
    model = _build('act_resnet50', num_classes=0).eval()
    stage = model.stages[0]
    # force image 0 to halt after the first unit of stage 1, image 1 to continue
    stage.halting[0].register_forward_hook(lambda mod, inp, out: torch.tensor([0.995, 0.01]).view(2, 1, 1))
    calls = _count_unit_calls(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = model(x)
        ponder = model.ponder_costs[0].clone()
        model.execution = 'dense'
        calls.clear()
        ref = model(x)
    _assert_features_close(ref, got)
    torch.testing.assert_close(model.ponder_costs[0], ponder)
    assert ponder[0].item() == pytest.approx(2.0)  # N=1, R=1
    assert ponder[1].item() > 3.0  # N=3, R = 1 - 0.01 - h_2
    assert calls[(0, 1)] == [2]  # the dense reference ran both images


def test_act_skips_halted_images_sparse_batch_sizes():
    model = _build('act_resnet50', num_classes=0).eval()
    model.stages[0].halting[0].register_forward_hook(
        lambda mod, inp, out: torch.tensor([0.995, 0.01]).view(2, 1, 1))
    calls = _count_unit_calls(model)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert calls[(0, 0)] == [2]
    assert calls[(0, 1)] == [1] and calls[(0, 2)] == [1]  # only the running image
    assert calls[(1, 1)] == [2]


def _partially_halting_sact(seed=2, **kw):
    """sact_resnet50 (no head) with calibrated BN and halting scores that vary over positions in every stage."""
    torch.manual_seed(seed)
    x = torch.randn(2, 3, 80, 112)
    model = _randomize(_build('sact_resnet50', num_classes=0, **kw).eval(), seed=seed, halting_std=0.03,
                       bias=0.0, calib=x)
    for s in model.stages[2:]:
        set_halting_bias(s, -2.0)
    return model, x


@pytest.mark.parametrize('output_stride', [32, 16, 8])
@pytest.mark.parametrize('execution', ['gather', 'image', 'auto'])
def test_sact_sparse_equals_dense_masked(execution, output_stride):
    model, x = _partially_halting_sact(output_stride=output_stride)
    with torch.no_grad():
        model.execution = 'dense'
        ref = model(x)
        ref_costs = [c.clone() for c in model.ponder_costs]
        ref_masks = [[m.clone() for m in s.unit_masks] for s in model.stages]
        # the case is meaningful only if units ran on strict subsets, also in the dilated stages
        fracs = [[m.float().mean().item() for m in s.unit_masks] for s in model.stages]
        dilated = [i for i, s in enumerate(model.stages) if s.units[-1].dilation > 1]
        assert all(any(0 < f < 1 for f in fracs[i]) for i in dilated + [0, 1]), fracs
        model.execution = execution
        got = model(x)
    _assert_features_close(ref, got)
    for a, b in zip(ref_costs, model.ponder_costs):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    for s, masks in zip(model.stages, ref_masks):
        assert len(s.unit_masks) == len(masks)
        for a, b in zip(masks, s.unit_masks):
            assert torch.equal(a, b)


def test_sact_sparse_with_autograd_enabled_and_group_norm():
    """Eval with grad enabled uses out-of-place scatter; GroupNorm (not an affine map) falls back to images."""
    model, x = _partially_halting_sact(seed=3)
    model.execution = 'dense'
    ref = model(x)
    model.execution = 'gather'
    got = model(x)
    assert _partial(model)
    _assert_features_close({k: v.detach() for k, v in ref.items()}, {k: v.detach() for k, v in got.items()})
    got['stage4'].sum().backward()
    assert model.stages[1].units[1].conv2.weight.grad is not None

    gn = _build('sact_resnet50', num_classes=0, norm_layer=lambda c: nn.GroupNorm(32, c))
    _randomize(gn, seed=3, halting_std=0.03, bias=-1.0).eval()
    with torch.no_grad():
        gn.execution = 'dense'
        ref = gn(x)
        assert _partial(gn)
        gn.execution = 'gather'
        got = gn(x)
    _assert_features_close(ref, got)


# ----------------------------------------------------------------------------------------------- network
@pytest.mark.parametrize('size', [(224, 224), (225, 301)])
def test_sact_forward_backward_with_partial_halting(size):
    model = _randomize(_build('sact_resnet50', num_classes=10), seed=4, halting_std=0.03, bias=0.0)
    model.train()
    x = torch.randn(2, 3, *size)
    logits, costs = model.forward_with_ponder(x)
    assert logits.shape == (2, 10)
    expect_hw = [math.ceil(size[0] / s) for s in (4, 8, 16, 32)], [math.ceil(size[1] / s) for s in (4, 8, 16, 32)]
    assert [tuple(c.shape[1:]) for c in costs] == list(zip(*expect_hw))
    assert _partial(model)
    loss = F.cross_entropy(logits, torch.tensor([1, 2])) + ponder_loss(costs, 0.01)
    loss.backward()
    for s in model.stages:
        for m in s.halting:
            assert m.conv_local.bias.grad is not None and torch.isfinite(m.conv_local.bias.grad).all()
    assert any(m.conv_local.bias.grad.abs().item() > 0 for s in model.stages for m in s.halting)


def test_batch_of_one_trains():
    model = _build('act_resnet50', num_classes=3).train()
    out = model(torch.randn(1, 3, 64, 64))
    out.sum().backward()


@pytest.mark.parametrize('output_stride', [16, 8])
def test_output_stride(output_stride):
    model = _build('sact_resnet50', num_classes=0, output_stride=output_stride, multi_grid=(1, 2, 4))
    assert [s.stride for s in model.feature_info] == ([4, 8, 16, 16] if output_stride == 16 else [4, 8, 8, 8])
    d = 2 if output_stride == 16 else 4
    assert [u.conv2.dilation[0] for u in model.stages[3].units] == [d, 2 * d, 4 * d]
    feats = model.eval()(torch.randn(1, 3, 64, 64))
    assert feats['stage4'].shape[-2:] == (64 // model.feature_info[3].stride,) * 2


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match='32, 16 or 8'):
        backbones.create('sact_resnet50', output_stride=12)
    with pytest.raises(ValueError, match='multi_grid'):
        backbones.create('sact_resnet50', output_stride=16, multi_grid=(1, 2))
    with pytest.raises(ValueError, match='gather'):
        backbones.create('sact_resnet50', execution='sparse')
    with pytest.raises(ValueError, match="'sact'"):
        ACTStage([PreActBottleneck(32, 32)], act='spatial')
    with pytest.raises(ValueError, match=r'\[N, 3, H, W\]'):
        backbones.create('act_resnet50')(torch.randn(1, 1, 64, 64))


def test_features_are_preactivated_stage_outputs():
    x = torch.randn(2, 3, 64, 64)
    a = _randomize(_build('sact_resnet50', num_classes=0), seed=5).eval()
    b = _randomize(_build('sact_resnet50', num_classes=0, feature_preact=False), seed=5).eval()
    with torch.no_grad():
        fa, fb = a(x), b(x)
        for i in range(3):
            torch.testing.assert_close(fa[f'stage{i + 1}'], a.stages[i + 1].units[0].preact(fb[f'stage{i + 1}']))
    torch.testing.assert_close(fa['stage4'], fb['stage4'])
    assert (fa['stage4'] >= 0).all()  # post-norm BN+ReLU
    # out_indices: only the requested stages, later stages not run without a head
    c = _build('sact_resnet50', num_classes=0, out_indices=(1,)).eval()
    with torch.no_grad():
        out = c(x)
    assert list(out) == ['stage2'] and len(c.ponder_costs) == 2


def test_plain_weights_load_into_act_and_sact():
    """Fine-tuning recipe (reference Sec. 5.6): everything but the halting branches comes from the plain net."""
    sd = _build('preact_resnet101').state_dict()
    for name in ('act_resnet101', 'sact_resnet101'):
        res = _build(name).load_state_dict(sd, strict=False)
        assert not res.unexpected_keys
        assert res.missing_keys and all('.halting.' in k for k in res.missing_keys)
