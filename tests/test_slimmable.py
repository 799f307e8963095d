"""Tests of the universally slimmable backbones (US-Nets / MutualNet): counts, width switching,
post-statistics BN, export, sandwich rule, inplace distillation and BN conversions.  Inputs are small to keep
the file fast."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import backbones
from backbones import complexity
from backbones.slimmable import (
    InputSlicedConv2d,
    SlimmableBatchNorm2d,
    SlimmableConv2d,
    SlimmableLinear,
    export_static,
    inplace_distillation_loss,
    make_divisible,
)
from backbones.training import calibrate_bn

VARIANTS = ['us_mobilenet_v1', 'us_mobilenet_v2', 'us_vgg16_bn', 'us_resnet50']

# Reference counts: ../shared/reference/official_implementations.md §2.4 (US-Nets) and §3.5 (MutualNet);
# conv + fc MACs, batch 1.  (variant, width, input side, params or None, MACs)
REFERENCE = [
    ('us_mobilenet_v1', 1.0, 224, 4.232e6, 568.7e6),
    ('us_mobilenet_v1', 0.25, 224, None, 41.0e6),
    ('us_mobilenet_v1', 0.95, 224, None, 517.6e6),
    ('us_mobilenet_v1', 0.9, 224, None, 466.2e6),
    ('us_mobilenet_v1', 0.25, 128, None, 13.6e6),     # MutualNet 0.25-128
    ('us_mobilenet_v1', 1.0, 192, None, 418.1e6),     # MutualNet 1.0-192
    ('us_mobilenet_v2', 1.0, 224, 3.505e6, 300.8e6),
    ('us_mobilenet_v2', 0.35, 224, None, 59.3e6),
    ('us_mobilenet_v2', 0.8, 224, None, 222.5e6),     # rounding plateaus: 0.8 -> 222.5, 0.75 -> 209.1
    ('us_mobilenet_v2', 0.75, 224, None, 209.1e6),
    ('us_mobilenet_v2', 0.7, 128, None, 57.6e6),      # MutualNet 0.7-128
    ('us_resnet50', 1.0, 224, 25.557e6, 4.089e9),
    ('us_resnet50', 0.9, 224, None, 3.338e9),
    ('us_resnet50', 1.0, 128, None, 1.337e9),
]

_CACHE = {}


def cached(name):
    """One shared instance per variant for read-only tests (counts)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = backbones.create(name)
    return _CACHE[name]


def small(name, **kw):
    torch.manual_seed(0)
    kw.setdefault('num_classes', 0 if name == 'us_vgg16_bn' else 10)
    return backbones.create(name, **kw)


def private_stats(model):
    return [p for m in model.modules() if isinstance(m, SlimmableBatchNorm2d) for p in m.private.values()]


def out_of(model, x):
    y = model(x)
    return y if torch.is_tensor(y) else torch.cat([v.flatten(1) for v in y.values()], 1)


def slimmable_bn_stats(model, key):
    return {n: (m.private[key].running_mean.clone(), m.private[key].running_var.clone())
            for n, m in model.named_modules() if isinstance(m, SlimmableBatchNorm2d) and key in m.private}


# ------------------------------------------------------------------------------------------------ basics
def test_make_divisible_tf_slim_rule():
    assert make_divisible(32) == 32
    assert make_divisible(8.4) == 8
    assert make_divisible(11.9) == 16                      # rounds to 8, which keeps < 90 % of 11.9 -> +8
    assert make_divisible(10) == 16                        # 8 < 0.9 * 10 -> +8
    assert make_divisible(3) == 8                          # min_value defaults to the divisor
    assert make_divisible(3, min_value=1) == 9             # max(1, 0) = 1 < 0.9 * 3 -> +8
    assert make_divisible(230.4) == 232
    assert make_divisible(37, 1) == 37
    with pytest.raises(ValueError, match='divisor'):
        make_divisible(10, 0)


def test_registered():
    assert set(VARIANTS) <= set(backbones.list_models(family='slimmable'))
    for name in VARIANTS:
        assert backbones.model_family(name) == 'slimmable'


@pytest.mark.parametrize('name,width,size,params,macs', REFERENCE)
def test_counts_match_reference(name, width, size, params, macs):
    model = cached(name)
    c = complexity(model, input_size=size, width=width)
    if params is not None:
        assert abs(c['params'] - params) / params < 0.005, c
    assert abs(c['macs'] - macs) / macs < 0.005, (c['macs'], macs)
    assert model.width == model.width_range[1]  # the count restored the width


def test_vgg_matches_torchvision_layout():
    from torchvision.models.vgg import cfgs, make_layers
    feats = make_layers(cfgs['D'], batch_norm=True)
    model = small('us_vgg16_bn')
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in feats.parameters())
    x = torch.zeros(1, 3, 64, 64)
    ours = complexity(model, input_size=64)['macs']
    ref = backbones.count_macs(feats.eval(), x)
    assert ours == ref
    with torch.device('meta'):  # no memory, no init: only the parameter count of the 138M-parameter model
        full = backbones.create('us_vgg16_bn')  # with the torchvision classifier
    assert sum(p.numel() for p in full.parameters()) == 138_365_992  # torchvision vgg16_bn


# ------------------------------------------------------------------------------------------- width switching
@pytest.mark.parametrize('name', VARIANTS)
def test_set_width_changes_channels_and_outputs(name):
    model = small(name).eval()
    model.out_indices = (0, 1, 2, 3)
    x = torch.randn(1, 3, 64, 64)
    lo, hi = model.width_range
    outs = {}
    for w in (lo, hi):
        model.set_width(w)
        assert model.width == w
        feats = model.forward_stages(x)
        chans = [f.shape[1] for f in feats.values()]
        assert chans == model.stage_channels() == [s.channels for s in model.feature_info]
        outs[w] = out_of(model, x)
    assert model.stage_channels() == model._stage_channels  # back at max width
    with model.width_context(lo):
        assert model.stage_channels()[0] < model._stage_channels[0]
    assert model.width == hi
    # (relative comparison: untrained nets with fresh statistics give tiny activations)
    assert outs[lo].shape != outs[hi].shape or not torch.allclose(outs[lo], outs[hi], rtol=1e-3, atol=0)


@pytest.mark.parametrize('name', VARIANTS)
def test_width_outside_range_raises(name):
    model = small(name)
    lo, hi = model.width_range
    for bad in (lo - 0.05, hi + 0.1):
        with pytest.raises(ValueError, match=rf'\[{lo}, {hi}\]'):
            model.set_width(bad)
    with pytest.raises(ValueError, match='range'):
        with model.width_context(0.0):
            pass
    assert model.width == hi


def test_construction_errors():
    with pytest.raises(ValueError, match='w_min'):
        backbones.create('us_mobilenet_v1', width_range=(0.0, 1.0))
    with pytest.raises(ValueError, match='range'):
        backbones.create('us_mobilenet_v2', width_list=(0.25, 1.0))  # 0.25 < 0.35
    with pytest.raises(ValueError, match='norm_layer'):
        backbones.create('us_mobilenet_v1', norm_layer=nn.GroupNorm)
    with pytest.raises(ValueError, match='output_stride'):
        backbones.create('us_vgg16_bn', num_classes=0, output_stride=16)
    with pytest.raises(ValueError, match='output_stride'):
        backbones.create('us_mobilenet_v2', output_stride=4)
    with pytest.raises(ValueError, match='multi_grid'):
        backbones.create('us_resnet50', num_classes=0, multi_grid=(1, 2))
    with pytest.raises(ValueError, match=r'\[N, 3, H, W\]'):
        small('us_mobilenet_v1')(torch.randn(1, 1, 32, 32))


def test_eval_unlisted_width_raises_naming_calibrate_bn_but_trains():
    model = small('us_mobilenet_v2')
    assert model.width_list == (0.35, 1.0)
    x = torch.randn(2, 3, 32, 32)
    model.train().set_width(0.6)
    model(x).sum().backward()  # batch statistics for an unlisted width in training
    model.eval()
    with pytest.raises(ValueError, match='calibrate_bn'):
        model(x)
    model.set_width(0.35)
    model(x)  # listed widths evaluate


def test_output_stride_dilation():
    x = torch.randn(1, 3, 64, 64)
    for name in ('us_mobilenet_v2', 'us_resnet50'):
        for os_, strides in ((16, (4, 8, 16, 16)), (8, (4, 8, 8, 8))):
            kw = {'multi_grid': (1, 2, 4)} if name == 'us_resnet50' else {}
            model = small(name, num_classes=0, output_stride=os_, **kw).eval()
            model.set_width(model.width_range[0])
            assert [s.stride for s in model.feature_info] == list(strides)
            feats = model.forward_stages(x)
            assert [f.shape[-1] for f in feats.values()] == [math.ceil(64 / s) for s in strides]
            if name == 'us_resnet50':
                rate = 32 // os_  # last stage: 2 at OS 16, 4 at OS 8, times the multi-grid
                assert [u.conv2.dilation[0] for u in model.stages[3]] == [rate, 2 * rate, 4 * rate]
                assert model.stages[3][0].conv2.stride[0] == 1


@pytest.mark.parametrize('name', VARIANTS)
@pytest.mark.parametrize('size', [(224, 224), (225, 301)])
def test_forward_backward(name, size):
    model = small(name).train()
    # keep it cheap: MobileNets at full width at 224, everything else at the smallest width
    model.set_width(model.width_range[1] if 'mobilenet' in name and size[0] == 224 else model.width_range[0])
    model.out_indices = (0, 1, 2, 3)
    x = torch.randn(2, 3, *size)
    feats = model.forward_stages(x)
    for f, spec in zip(feats.values(), model.feature_info):
        assert f.shape[1] == spec.channels
        assert tuple(f.shape[-2:]) == tuple(math.ceil(s / spec.stride) for s in size)
    loss = sum(f.float().mean() for f in feats.values())
    if model.head is not None:
        logits = model.forward_head(feats['stage4'])
        assert logits.shape == (2, 10)
        loss = loss + logits.logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_deterministic_under_seed():
    a, b = small('us_mobilenet_v2').eval(), small('us_mobilenet_v2').eval()
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(a(x), b(x))


# --------------------------------------------------------------------------------------- post-statistics BN
def test_calibrate_bn_exact_cumulative_stats_only_bns_and_modes_restored():
    model = small('us_mobilenet_v1')
    model.train()
    model.stages[2].eval()  # a mixed pattern of modes to restore
    modes = {n: m.training for n, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(3, 3, 48, 48) + i for i in range(3)]

    calibrate_bn(model, batches, width=0.5)

    now = {n: m.training for n, m in model.named_modules()}
    assert {n: now[n] for n in modes} == modes
    created = set(now) - set(modes)  # the new statistics modules take their owner's mode
    suffix = '.private.w0p5'
    assert created and all(n.endswith(suffix) and now[n] == now[n[:-len(suffix)]] for n in created)
    assert {now[n] for n in created} == {True, False}
    assert model.width == 1.0 and model.width_list == (0.25, 0.5, 1.0)
    after = model.state_dict()
    new_keys = set(after) - set(before)
    assert new_keys and all('.private.w0p5.' in k for k in new_keys)
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # parameters and other widths' statistics untouched
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # the stem BN holds the exact average of per-batch statistics of the stem conv output at width 0.5
    conv, bn = model.stem[0][0], model.stem[0][1]
    with torch.no_grad(), model.width_context(0.5):
        ys = [conv(x) for x in batches]
    assert ys[0].shape[1] == bn.private['w0p5'].num_features == make_divisible(32 * 0.5)
    mean = torch.stack([y.mean((0, 2, 3)) for y in ys]).mean(0)
    var = torch.stack([y.transpose(0, 1).flatten(1).var(1, unbiased=True) for y in ys]).mean(0)
    torch.testing.assert_close(bn.private['w0p5'].running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.private['w0p5'].running_var, var, rtol=1e-4, atol=1e-5)
    assert int(bn.private['w0p5'].num_batches_tracked) == 3
    # now the width evaluates
    model.eval().set_width(0.5)
    assert torch.isfinite(model(batches[0])).all()


def test_calibrate_bn_recalibrates_listed_width_and_respects_num_batches():
    model = small('us_resnet50', num_classes=0).eval()
    old = slimmable_bn_stats(model, 'w0p25')
    assert all(torch.equal(m, torch.zeros_like(m)) for m, _ in old.values())
    calls = []

    def gen():
        for i in range(5):
            calls.append(i)
            yield (torch.randn(2, 3, 32, 32), torch.zeros(2))

    calibrate_bn(model, gen(), width=0.25, num_batches=2)
    assert len(calls) == 2  # no batch is drawn beyond the limit
    new = slimmable_bn_stats(model, 'w0p25')
    assert any(not torch.equal(old[k][0], new[k][0]) for k in old)
    with pytest.raises(ValueError, match='no batch'):
        calibrate_bn(model, [], width=0.25)
    with pytest.raises(ValueError, match='range'):
        calibrate_bn(model, [torch.randn(2, 3, 32, 32)], width=0.1)


def test_per_width_resolution_statistics():
    model = small('us_mobilenet_v1')
    batches = [torch.randn(2, 3, 64, 64) for _ in range(2)]
    calibrate_bn(model, batches, width=0.5, resolution=48)
    assert (0.5, 48) in model.bn_configs and 0.5 not in model.width_list
    x = torch.randn(1, 3, 48, 48)
    model.eval()
    with model.width_context(0.5, resolution=48):
        y_pair = model(x)
    with pytest.raises(ValueError, match='resolution=|calibrate_bn'):
        with model.width_context(0.5):
            model(x)
    # width-only statistics from batches resized by hand equal the pair's statistics
    resized = [F.interpolate(b, size=(48, 48), mode='bilinear', align_corners=True) for b in batches]
    calibrate_bn(model, resized, width=0.5)
    assert 0.5 in model.width_list
    a, b = slimmable_bn_stats(model, 'w0p5_r48'), slimmable_bn_stats(model, 'w0p5')
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    with model.width_context(0.5):
        torch.testing.assert_close(model(x), y_pair)
    with model.resolution_context(48):  # complexity() uses this for RS-style counting
        assert model.resolution == 48 and model.width == 1.0
    with pytest.raises(ValueError, match='resolution'):
        model.set_width(0.5, resolution=-3)


def test_state_dict_with_calibrated_widths_loads_strictly():
    model = small('us_mobilenet_v1')
    calibrate_bn(model, [torch.randn(2, 3, 32, 32)], width=0.7)
    calibrate_bn(model, [torch.randn(2, 3, 32, 32)], width=0.4, resolution=32)
    fresh = small('us_mobilenet_v1')
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert fresh.bn_configs == model.bn_configs == ((0.25, None), (0.4, 32), (0.7, None), (1.0, None))
    x = torch.randn(1, 3, 32, 32)
    with model.width_context(0.7), fresh.width_context(0.7):
        assert torch.equal(model.eval()(x), fresh.eval()(x))


def test_norm_eval_uses_private_running_stats_in_training():
    model = small('us_mobilenet_v1', norm_eval=True)
    calibrate_bn(model, [torch.randn(2, 3, 32, 32)], width=1.0)
    x = torch.randn(2, 3, 32, 32)
    ref = model.eval()(x)
    stats = slimmable_bn_stats(model, 'w1')
    model.train()
    norms = [m for m in model.modules() if isinstance(m, (SlimmableBatchNorm2d, nn.BatchNorm2d))]
    assert norms and not any(m.training for m in norms)
    torch.testing.assert_close(model(x), ref)
    for k, v in slimmable_bn_stats(model, 'w1').items():
        assert torch.equal(v[0], stats[k][0])


# ------------------------------------------------------------------------------------------------ export
@pytest.mark.parametrize('name', VARIANTS)
def test_export_static_output_identical(name):
    model = small(name)
    widths = (model.width_range[0], 0.6)  # 0.6 is not listed: calibration adds it
    for w in widths:  # calibrated statistics: activations are O(1), so the comparison is meaningful
        calibrate_bn(model, [torch.randn(2, 3, 48, 48) for _ in range(2)], width=w)
    model.eval()
    x = torch.randn(2, 3, 48, 48)
    for w in widths:
        static = export_static(model, w)
        kinds = {type(m) for m in static.modules()}
        assert not kinds & {SlimmableConv2d, SlimmableLinear, SlimmableBatchNorm2d}
        with model.width_context(w):
            ref = out_of(model, x)
            assert static.stage_channels() == model.stage_channels()
        assert ref.abs().max() > 1e-3
        assert torch.allclose(out_of(static, x), ref, atol=1e-6 * ref.abs().max().item(), rtol=1e-5)
        assert not static.training
    assert model.width == 1.0 and model.width_list == (widths[0], 0.6, 1.0)
    with pytest.raises(ValueError, match='export_static'):
        static.set_width(1.0)


def test_export_static_traceable_and_fewer_params():
    model = small('us_mobilenet_v2')
    calibrate_bn(model, [torch.randn(2, 3, 32, 32)], width=0.5)
    static = export_static(model, 0.5)
    x = torch.randn(1, 3, 32, 32)
    traced = torch.jit.trace(static, x)
    torch.testing.assert_close(traced(x), static(x))
    assert sum(p.numel() for p in static.parameters()) < sum(p.numel() for p in model.parameters())
    # a static model is calibrated like a plain network
    calibrate_bn(static, [torch.randn(2, 3, 32, 32)])
    with pytest.raises(ValueError, match='calibrate_bn'):
        export_static(model, 0.8)


# ------------------------------------------------------------------------------------------ training helpers
def test_sandwich_policy_us_net():
    from backbones.training import SandwichPolicy, Subnet
    rule = SandwichPolicy((0.25, 1.0), num_subnets=4, seed=3)
    for step in range(50):
        subs = rule.subnets(step)
        assert len(subs) == 4 and all(isinstance(c, Subnet) for c in subs)
        assert (subs[0].width, subs[0].input_size, subs[0].teacher) == (1.0, None, True)
        assert (subs[1].width, subs[1].input_size, subs[1].teacher) == (0.25, None, False)
        assert all(0.25 <= c.width <= 1.0 and c.input_size is None and not c.teacher for c in subs[2:])
    a, b = SandwichPolicy((0.25, 1.0), seed=7), SandwichPolicy((0.25, 1.0), seed=7)
    assert [a.subnets(s) for s in range(3)] == [b.subnets(s) for s in range(3)]  # seeded: reproducible
    widths = [c.width for s in range(200) for c in rule.subnets(s)[2:]]
    assert len(set(widths)) > 100 and min(widths) < 0.4 and max(widths) > 0.85  # uniform over the range
    with pytest.raises(ValueError, match='num_subnets'):
        SandwichPolicy((0.25, 1.0), num_subnets=1)


def test_sandwich_policy_mutualnet_input_sizes():
    from backbones.training import SandwichPolicy
    res = (224, 192, 160, 128)
    rule = SandwichPolicy((0.25, 1.0), num_subnets=4, input_sizes=res, seed=0)
    seen = set()
    for step in range(100):
        subs = rule.subnets(step)
        assert subs[0].teacher and subs[0].width == 1.0 and subs[0].input_size is None  # max width, max size
        assert subs[1].width == 0.25
        for c in subs[1:]:
            size = c.input_size or rule.max_input_size
            assert size in res
            seen.add(size)
    assert seen == set(res)  # independent uniform draws, 224 included
    assert SandwichPolicy((0.25, 1.0), input_sizes=res, max_input_size=256).max_input_size == 256
    with pytest.raises(ValueError, match='input_sizes'):
        SandwichPolicy((0.25, 1.0), input_sizes=(224, 0))


def test_inplace_distillation_loss_value_and_gradient():
    torch.manual_seed(0)
    student = torch.randn(4, 7, requires_grad=True)
    teacher = torch.randn(4, 7, requires_grad=True)
    loss = inplace_distillation_loss(student, teacher)
    p = teacher.softmax(1)
    manual = (p * (p.log() - student.log_softmax(1))).sum(1).mean()
    torch.testing.assert_close(loss, manual)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert inplace_distillation_loss(teacher.detach(), teacher.detach()).abs() < 1e-6
    dense = inplace_distillation_loss(torch.randn(2, 5, 3, 3), torch.randn(2, 5, 3, 3))
    assert dense.dim() == 0 and dense > 0
    with pytest.raises(ValueError, match='same shape'):
        inplace_distillation_loss(torch.randn(2, 5), torch.randn(2, 6))


def test_inplace_distillation_gradient_reaches_only_the_student_width():
    model = small('us_mobilenet_v1').train()
    x = torch.randn(2, 3, 32, 32)
    teacher = model(x)  # max width; its graph is never back-propagated by the distillation loss
    with model.width_context(0.25):
        student = model(x)
    inplace_distillation_loss(student, teacher).backward()
    stem = model.stem[0][0].weight.grad
    c = make_divisible(32 * 0.25)
    assert stem[:c].abs().sum() > 0 and torch.count_nonzero(stem[c:]) == 0
    fc = model.head[-1].weight.grad
    assert torch.count_nonzero(fc[:, make_divisible(1024 * 0.25):]) == 0


# ------------------------------------------------------------------------------------------------ ops
def test_input_sliced_conv():
    conv = nn.Conv2d(16, 8, 3, padding=1)
    sliced = InputSlicedConv2d.from_conv(conv)
    assert sliced.weight is conv.weight and isinstance(sliced, nn.Conv2d)
    x = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(sliced(x), conv(x))
    torch.testing.assert_close(sliced(x[:, :6]), F.conv2d(x[:, :6], conv.weight[:, :6], conv.bias, padding=1))
    with pytest.raises(ValueError, match='at most 16'):
        sliced(torch.randn(1, 17, 8, 8))
    with pytest.raises(ValueError, match='groups'):
        InputSlicedConv2d.from_conv(nn.Conv2d(16, 16, 3, groups=16))
    # one neck conv serves every backbone width
    model = small('us_resnet50', num_classes=0).eval()
    lateral = InputSlicedConv2d(2048, 32, 1)
    for w in model.width_range:
        with model.width_context(w):
            assert lateral(model(torch.randn(1, 3, 64, 64))['stage4']).shape[1] == 32


def test_depthwise_uses_active_channels_as_groups():
    conv = SlimmableConv2d(32, 32, 3, padding=1, depthwise=True)
    x = torch.randn(1, 12, 8, 8)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight[:12], None, 1, 1, 1, 12))


# -------------------------------------------------------------------------------------------- BN conversions
def _calibrated_mbv2():
    model = small('us_mobilenet_v2')
    # calibrated statistics: O(1) activations, so comparisons are meaningful.  16 images: with 2, the last stages
    # (1 x 1 maps) get variances from 2 values each, near zero for some channels, and a float32 rounding difference
    # (FrozenBatchNorm2d's x * scale + shift) grows to 1e-4..3e-2 depending on the seed; with 16, ~1e-5 for seeds 0-5
    for w in (0.35, 0.5):
        calibrate_bn(model, [torch.randn(16, 3, 32, 32)], width=w)
    return model.eval()


def _outputs(model, x, widths=(0.35, 0.5)):
    res = []
    for w in widths:
        with model.width_context(w):
            res.append(model(x))
    return res


def test_convert_sync_batchnorm_round_trip_cpu():
    model = _calibrated_mbv2()
    x = torch.randn(2, 3, 32, 32)
    ref = _outputs(model, x)
    assert min(r.abs().max() for r in ref) > 1e-2
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    privates = private_stats(synced)
    assert privates and all(isinstance(p, nn.SyncBatchNorm) for p in privates)
    assert sum(isinstance(m, SlimmableBatchNorm2d) for m in synced.modules()) == len(model.slimmable_bns())
    for a, b in zip(_outputs(synced.eval(), x), ref):  # SyncBatchNorm in eval mode runs on CPU
        torch.testing.assert_close(a, b)
    # the state dict keeps its keys: it loads back into an unconverted model
    back = small('us_mobilenet_v2')
    back.load_state_dict(synced.state_dict(), strict=True)
    for a, b in zip(_outputs(back.eval(), x), ref):
        torch.testing.assert_close(a, b)
    # training through SyncBatchNorm (not distributed: local statistics) matches the plain model
    synced.train()
    model.train()
    with synced.width_context(0.5), model.width_context(0.5):
        torch.testing.assert_close(synced(x), model(x), rtol=1e-4, atol=1e-5)


def test_mmengine_revert_sync_batchnorm():
    pytest.importorskip('mmengine', reason='mmengine not installed (revert_sync_batchnorm)')
    from mmengine.model import revert_sync_batchnorm
    model = _calibrated_mbv2()
    x = torch.randn(2, 3, 32, 32)
    ref = _outputs(model, x)
    reverted = revert_sync_batchnorm(nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)))
    privates = private_stats(reverted)
    assert privates and not any(isinstance(p, nn.SyncBatchNorm) for p in privates)
    for a, b in zip(_outputs(reverted.eval(), x), ref):
        torch.testing.assert_close(a, b)
    reverted.train()
    reverted(x).sum().backward()


def test_detectron2_frozen_batchnorm():
    pytest.importorskip('detectron2',
                        reason='detectron2 not installed (FrozenBatchNorm2d.convert_frozen_batchnorm)')
    from detectron2.layers import FrozenBatchNorm2d
    model = _calibrated_mbv2()
    x = torch.randn(2, 3, 32, 32)
    ref = _outputs(model, x)
    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(copy.deepcopy(model))
    privates = private_stats(frozen)
    assert privates and all(isinstance(p, FrozenBatchNorm2d) for p in privates)
    # FrozenBatchNorm2d computes x * scale + shift (not F.batch_norm): float32 rounding differs slightly
    tol = dict(rtol=1e-3, atol=1e-3)
    for a, b in zip(_outputs(frozen.eval(), x), ref):
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(_outputs(frozen.train(), x), ref):  # frozen statistics are used in train mode too
        torch.testing.assert_close(a, b, **tol)
    static = export_static(frozen, 0.5)
    with frozen.width_context(0.5):
        torch.testing.assert_close(static(x), frozen.eval()(x), **tol)
    with pytest.raises(ValueError, match='frozen'):
        calibrate_bn(frozen, [x], width=0.5)
