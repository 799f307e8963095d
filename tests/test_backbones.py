"""One test parametrised over every registered backbone (timm's test_models pattern)."""
import copy
import functools

import pytest
import torch
from torch import nn

import backbones

ALL = backbones.list_models()
# data-dependent control flow (halting) cannot be traced into one static graph
DYNAMIC = {n for n in ALL if n.startswith(('sact_', 'act_'))}


def _build(name, seed=0, **kw):
    torch.manual_seed(seed)
    return backbones.create(name, num_classes=0, **kw)


@pytest.fixture(scope='module', params=ALL)
def built(request):
    """``(name, model)``: one build per registered name (seed 0, default arguments); pytest orders the tests by
    this module-scoped parameter, so every test of one model shares the build (see :func:`fresh`)."""
    return request.param, _build(request.param)


@pytest.fixture
def fresh(built):
    """``(name, model)``: a deep copy of :func:`built` (several times faster than a new build: no random init),
    so that the test may train, convert or modify it."""
    name, model = built
    return name, copy.deepcopy(model)


def test_registry_has_every_family():
    fams = {backbones.model_family(n) for n in ALL}
    assert {'elastic', 'slimmable', 'sact', 'rsnet'} <= fams
    assert len(ALL) >= 20


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match='resnext50_elastic'):
        backbones.create('resnext50_elastc')


def test_forward_features_is_the_last_stage_map_as_in_timm(fresh):
    """timm's meaning: ``forward_features`` is one tensor, the unpooled last-stage map (the stage dict is
    ``forward_stages``), whatever ``out_indices`` says."""
    name, model = fresh
    model.eval()
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        feat = model.forward_features(x)
        stages = model.forward_stages(x)
        assert torch.is_tensor(feat) and feat.shape[1] == model.feature_info[-1].channels, name
        torch.testing.assert_close(feat, stages[model.feature_info[-1].name])
        model.out_indices = (0,)  # the stage dict stops after stage 1; forward_features still runs every stage
        assert list(model.forward_stages(x)) == [model.feature_info[0].name]
        torch.testing.assert_close(model.forward_features(x), feat)


@pytest.mark.parametrize('name', ['resnext50_elastic', 'us_mobilenet_v2', 'sact_resnet50', 'rs_resnet50'])
def test_forward_head_of_forward_features_is_forward(name):
    torch.manual_seed(0)
    model = backbones.create(name, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))


# even and odd sides, 3-5 pixels at stride 32 (make test-fast: the odd one)
@pytest.mark.parametrize('size', [pytest.param((96, 96), marks=pytest.mark.slow), (97, 161)], ids=['96x96', '97x161'])
def test_forward_backward_strides_channels(fresh, size):
    name, model = fresh
    model.train()
    x = torch.randn(1, 3, *size)
    feats = model.forward_stages(x)
    info = model.feature_info
    assert list(feats) == [s.name for s in info]
    for s in info:
        f = feats[s.name]
        assert f.shape[1] == s.channels, (name, s)
        # 'same' padding everywhere: ceil division (within one pixel for pooling choices)
        assert abs(f.shape[2] - size[0] / s.stride) <= 1, (name, s, f.shape)
        assert abs(f.shape[3] - size[1] / s.stride) <= 1, (name, s, f.shape)
    loss = sum(f.float().mean() for f in feats.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    # EMA copies and BN conversions deep-copy a model that has just run a training forward
    clone = copy.deepcopy(model)
    for (k, a), b in zip(model.state_dict().items(), clone.state_dict().values()):
        assert torch.equal(a, b), k


def test_deterministic_under_seed(built):
    """A new build under the same seed as :func:`built` (seed 0) has equal tensors and equal features."""
    name, model = built
    x = torch.randn(2, 3, 64, 64)
    a, b = copy.deepcopy(model).eval(), _build(name, seed=0).eval()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    with torch.no_grad():
        fa, fb = a.forward_stages(x), b.forward_stages(x)
    for k in fa:
        assert torch.equal(fa[k], fb[k])


#: options that change what a build initialises (other norms, zero-initialised residual BNs, channels-last weights)
OPTION_BUILDS = [('rs_resnet50', dict(zero_init_residual=True)), ('resnext50_elastic', dict(channels_last=True)),
                 ('resnext50_elastic', dict(zero_init_residual=False)),
                 ('densenet201_elastic', dict(norm_layer=functools.partial(nn.GroupNorm, 16))),
                 ('dla60x_elastic', dict(norm_layer=functools.partial(nn.GroupNorm, 16), channels_last=True))]


@pytest.mark.parametrize('name, kwargs', [(n, {}) for n in ALL] + OPTION_BUILDS,
                         ids=ALL + [f'{n}-{"-".join(k)}' for n, k in OPTION_BUILDS])
def test_deferred_build_leaves_what_every_initialisation_call_leaves(name, kwargs, monkeypatch):
    """Issue 27: ``create`` records the build's ``torch.nn.init`` calls and replays only the last one on each
    tensor (backbones/pretrained/deferred_init.py).  Each writer here stamps its tensor with a value naming the call
    (function and arguments, no random draw), so the deferred build must equal, tensor for tensor, the build that
    runs every call in order: a family writing a tensor directly after an init call, or reading one during its
    build, would differ."""
    import contextlib
    import zlib

    from backbones.pretrained import deferred_init
    assert backbones._registry.is_builtin(name)

    def stamper(writer):
        def stamp(tensor, *args, **kwargs):
            with torch.no_grad():
                return tensor.fill_(zlib.crc32(repr((writer, args, sorted(kwargs.items()))).encode()) % 997 + 1)
        return stamp

    for writer in deferred_init._WRITERS:
        monkeypatch.setattr(nn.init, writer, stamper(writer))
    deferred = _build(name, **kwargs).state_dict()
    monkeypatch.setattr(deferred_init.DeferredInit, 'recording', lambda self: contextlib.nullcontext(self))
    every_call = _build(name, **kwargs).state_dict()
    assert deferred.keys() == every_call.keys()
    for k in deferred:
        assert torch.equal(deferred[k], every_call[k]), f'{name}: {k} differs from the build running every call'


def test_user_family_build_draws_without_deferral(monkeypatch):
    """A model registered outside this package (a user's method) is built as PyTorch builds it, every draw in
    order: its family may write a tensor directly after ``nn.Linear``'s own draw, which a replay would undo."""
    from backbones import _registry

    class Net(nn.Module):
        def __init__(self, num_classes=4):
            super().__init__()
            self.fc = nn.Linear(3, num_classes)
            self.fc.weight.data.fill_(0.5)  # a direct write after the default init call

    def user_net(**kw):
        return Net(**kw)

    user_net.__module__ = 'my_lab.models'
    monkeypatch.setitem(_registry._MODELS, 'user_net', user_net)
    monkeypatch.setitem(_registry._FAMILY, 'user_net', 'baseline')
    assert not _registry.is_builtin('user_net') and _registry.is_builtin('resnext50_elastic')
    assert torch.equal(backbones.create('user_net').fc.weight, torch.full((4, 3), 0.5))


def test_wrong_channel_count_raises(built):
    model = built[1].eval()
    with pytest.raises(ValueError, match=r'\[N, 3, H, W\]'):
        model.forward_stages(torch.randn(1, 4, 64, 64))


@pytest.mark.slow
@pytest.mark.parametrize('name', [n for n in ALL if n not in DYNAMIC])
def test_trace_static_variants(name):
    model = _build(name).eval()
    if backbones.model_family(name) == 'slimmable':
        from backbones.slimmable import export_static
        model = export_static(model, model.width_range[1])
    x = torch.randn(1, 3, 96, 96)

    class Wrap(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            out = self.m.forward_stages(x) if hasattr(self.m, 'forward_stages') else self.m(x)
            return tuple(out.values()) if isinstance(out, dict) else out

    w = Wrap(model).eval()
    with torch.no_grad():
        traced = torch.jit.trace(w, x, check_trace=False)
        ref, got = w(x), traced(torch.randn(1, 3, 96, 96) * 0 + x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = got if isinstance(got, tuple) else (got,)
    for r, g in zip(ref, got):
        torch.testing.assert_close(r, g)


def test_sync_bn_conversion_keeps_eval_output(fresh):
    """nn.SyncBatchNorm.convert_sync_batchnorm replaces BNs by isinstance: private and slimmable BNs must survive."""
    model = fresh[1].eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.forward_stages(x)
        conv = nn.SyncBatchNorm.convert_sync_batchnorm(model).eval()
        assert any(isinstance(m, nn.SyncBatchNorm) for m in conv.modules())
        got = conv.forward_stages(x)
    for k in ref:
        torch.testing.assert_close(ref[k], got[k])


@pytest.mark.parametrize('name', ALL)
def test_frozen_stages_and_norm_eval(name):
    model = _build(name, frozen_stages=1, norm_eval=True)
    model.train()
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.stages[0].parameters())
    assert any(p.requires_grad for p in model.stages[1].parameters())
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(not m.training for m in norms)
    # re-applied after every .train() call (frameworks call it each epoch)
    model.train()
    assert not any(p.requires_grad for p in model.stages[0].parameters())


@pytest.mark.parametrize('name', ['resnext50_elastic', 'us_mobilenet_v2', 'sact_resnet50', 'rs_resnet18'])
def test_copies_after_training_forward_through_the_head(name):
    """``forward`` hands the last stage output to the head without keeping it on the module: deepcopy and
    pickle work after a training forward (and backward) of the logits; only SACT's ``ponder_costs`` is
    per-forward state, and copies start with none."""
    import copy
    import pickle
    torch.manual_seed(0)
    model = backbones.create(name, num_classes=10).train()
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.logsumexp(1).mean().backward()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        for (k, a), b in zip(model.state_dict().items(), clone.state_dict().values()):
            assert torch.equal(a, b), k
        if hasattr(model, 'ponder_costs'):
            assert model.ponder_costs and clone.ponder_costs == []
        with torch.no_grad():
            torch.testing.assert_close(clone.eval()(x), model.eval()(x))
        model.train()
