"""Elastic ResNeXt family (backbones/elastic.py): architecture facts, counts and block arithmetic.

Reference facts: ../shared/reference/official_implementations.md Sec. 1.1-1.2, 1.7, 1.8.
"""
import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import fast_subset
from torch import nn

import backbones
from backbones.complexity import complexity
from backbones.elastic import ElasticBottleneck, elastic_downsample, elastic_upsample

# (params, MACs at 224x224, 1000 classes) from official_implementations.md Sec. 1.8 (conv + fc MACs)
EXPECTED = {
    'resnext50_32x4d': (25.029e6, 4.230e9),
    'resnext50_elastic': (25.247e6, 4.177e9),
    'selastic_resnext50': (25.029e6, 3.352e9),
    'se_resnext50': (27.560e6, 4.233e9),
    'se_resnext50_elastic': (27.804e6, 4.179e9),
    'resnext101_32x4d': (44.178e6, 7.970e9),
    'resnext101_elastic': (44.265e6, 7.889e9),
}
LAYERS = {'resnext50_32x4d': [3, 4, 6, 3], 'resnext50_elastic': [6, 8, 5, 3],
          'selastic_resnext50': [3, 4, 6, 3], 'se_resnext50': [3, 4, 6, 3],
          'se_resnext50_elastic': [6, 8, 5, 3],
          'resnext101_32x4d': [3, 4, 23, 3], 'resnext101_elastic': [12, 14, 20, 3]}
ELASTIC = {'resnext50_elastic', 'selastic_resnext50', 'se_resnext50_elastic', 'resnext101_elastic'}


@functools.lru_cache(maxsize=None)
def _model(name):
    """One seeded classification model per variant for the whole module (the 101s are slow to build)."""
    torch.manual_seed(0)
    return backbones.create(name)


def _randomise_norms(module, seed=0):
    """Non-trivial affine parameters and running statistics (bn3 included, so branch outputs matter)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _bn(x, bn, sl=slice(None), training=False):
    """F.batch_norm with channels ``sl`` of module ``bn`` (copies of the statistics: nothing is updated)."""
    return F.batch_norm(x, bn.running_mean[sl].clone(), bn.running_var[sl].clone(), bn.weight[sl],
                        bn.bias[sl], training=training, momentum=0.0, eps=bn.eps)


def _reference_block(blk, x, training=False):
    """Literal two-branch Elastic bottleneck (reference Sec. 1.1-1.2), written with functional ops only.

    Branch = 1x1 -> BN -> ReLU -> 3x3 (16 groups) -> BN -> ReLU -> 1x1; the second branch (Elastic on)
    is replicate-padded right/bottom for odd sizes, 2x2 average-pooled, and after its convolutions
    upsampled x2 bilinearly (align_corners=False) and cropped; sum -> bn3 -> [SE] -> + shortcut -> ReLU.
    A non-Elastic unit is evaluated as the same two 16-group branches built from the halves of its
    stacked weights, at full resolution.
    """
    h, w = x.shape[-2:]

    def branch(inp, w1, bn1, s1, w2, bn2, s2, w3, stride, dil):
        y = F.relu(_bn(F.conv2d(inp, w1), bn1, s1, training))
        y = F.conv2d(y, w2, stride=stride, padding=dil, dilation=dil, groups=16)
        y = F.relu(_bn(y, bn2, s2, training))
        return F.conv2d(y, w3)

    if blk.elastic:
        full = branch(x, blk.conv1.weight, blk.bn1, slice(None), blk.conv2.weight, blk.bn2, slice(None),
                      blk.conv3.weight, 1, blk.dilation)
        low = F.avg_pool2d(F.pad(x, (0, w % 2, 0, h % 2), mode='replicate'), 2, 2)
        low = branch(low, blk.conv1_d.weight, blk.bn1_d, slice(None), blk.conv2_d.weight, blk.bn2_d,
                     slice(None), blk.conv3_d.weight, 1, blk.dilation)
        out = full + F.interpolate(low, scale_factor=2, mode='bilinear', align_corners=False)[..., :h, :w]
    else:
        half = blk.conv1.out_channels // 2
        a, b = slice(0, half), slice(half, 2 * half)
        out = sum(branch(x, blk.conv1.weight[s], blk.bn1, s, blk.conv2.weight[s], blk.bn2, s,
                         blk.conv3.weight[:, s], blk.stride, blk.dilation) for s in (a, b))
    out = _bn(out, blk.bn3, training=training)
    if blk.se is not None:
        s = out.mean((2, 3), keepdim=True)
        s = torch.sigmoid(F.conv2d(F.relu(F.conv2d(s, blk.se.fc1.weight, blk.se.fc1.bias)),
                                   blk.se.fc2.weight, blk.se.fc2.bias))
        out = out * s
    if blk.downsample is not None:
        conv, bn = blk.downsample
        shortcut = _bn(F.conv2d(x, conv.weight, stride=conv.stride), bn, training=training)
    else:
        shortcut = x
    return F.relu(out + shortcut)


# ----------------------------------------------------------------------------- counts and layout
@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_params_and_macs_match_reference(name):
    params, macs = EXPECTED[name]
    c = complexity(_model(name), 224)
    assert abs(c['params'] / params - 1) < 0.005, (name, c['params'])
    assert abs(c['macs'] / macs - 1) < 0.005, (name, c['macs'])


def test_registry_names_and_metadata():
    # DenseNet-201 / DLA-X (+Elastic) are in the family too: tests/test_elastic_densenet_dla.py
    others = {'densenet201', 'densenet201_elastic', 'dla60x', 'dla60x_elastic', 'dla102x', 'dla102x_selastic',
              'dla102x_elastic'}
    assert set(backbones.list_models(family='elastic')) == set(EXPECTED) | others
    for name in EXPECTED:
        assert backbones.model_family(name) == 'elastic'
    m = backbones.create('resnext50_elastic', num_classes=0)
    assert m.family == 'elastic' and m.variant == 'resnext50_elastic' and m.head is None
    assert m.stage_channels() == [256, 512, 1024, 2048]
    assert [(s.name, s.channels, s.stride) for s in m.feature_info] == [
        ('stage1', 256, 4), ('stage2', 512, 8), ('stage3', 1024, 16), ('stage4', 2048, 32)]


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_elastic_only_on_stride1_units_before_last_stage(name):
    m = _model(name)
    units = m.elastic_units()
    assert [len(u) for u in units] == LAYERS[name]
    for i, stage in enumerate(m.stages):
        for j, blk in enumerate(stage):
            stride2 = i > 0 and j == 0
            assert blk.stride == (2 if stride2 else 1)
            assert blk.conv2.stride == (blk.stride, blk.stride)          # v1.5: stride on the 3x3
            assert blk.conv1.stride == (1, 1)
            assert blk.elastic == (name in ELASTIC and not stride2 and i < 3), (name, i, j)
            assert (blk.se is not None) == name.startswith('se_')
    if name == 'resnext50_elastic':            # reference Sec. 1.2: 6/6, 7/8, 4/5, 0/3
        assert [sum(u) for u in units] == [6, 7, 4, 0]
    if name == 'resnext101_elastic':           # 12/12, 13/14, 19/20, 0/3
        assert [sum(u) for u in units] == [12, 13, 19, 0]
    if name == 'selastic_resnext50':           # 3/3, 3/4, 5/6, 0/3
        assert [sum(u) for u in units] == [3, 3, 5, 0]


def test_elastic_unit_refuses_stride2():
    with pytest.raises(ValueError, match='stride'):
        ElasticBottleneck(256, 128, stride=2, elastic=True)


def test_initialisation_follows_reference():
    m = _model('resnext50_elastic')
    for blk in (b for s in m.stages for b in s):
        assert torch.count_nonzero(blk.bn3.weight) == 0 and torch.count_nonzero(blk.bn3.bias) == 0
        assert torch.all(blk.bn1.weight == 1) and torch.all(blk.bn2.weight == 1)
    # Kaiming normal, fan_in, ReLU gain: std = sqrt(2 / fan_in); fan_in of a grouped 3x3 = 9 * C / groups
    big = m.stages[2][1].conv1.weight          # 1024 -> 256 1x1 (one branch)
    assert abs(big.std().item() / (2 / 1024) ** 0.5 - 1) < 0.05
    g = m.stages[2][1].conv2.weight            # 256 -> 256, 16 groups of 16 channels
    assert g.shape == (256, 16, 3, 3) and abs(g.std().item() / (2 / (9 * 16)) ** 0.5 - 1) < 0.05
    fc = m.head[-1]
    assert abs(fc.weight.std().item() - 0.01) < 0.001 and torch.count_nonzero(fc.bias) == 0


def test_fresh_unit_is_relu_of_shortcut():
    """bn3 is zero-initialised: a new unit computes ReLU(shortcut(x)) in train and eval mode."""
    m = _model('resnext50_elastic')
    identity_blk, proj_blk = m.stages[0][1], m.stages[0][0]
    assert identity_blk.elastic and identity_blk.downsample is None and proj_blk.downsample is not None
    x = torch.relu(torch.randn(2, 256, 15, 17))
    for mode in (True, False):
        identity_blk.train(mode)
        proj_blk.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(identity_blk(x), x, rtol=0, atol=0)
            x64 = torch.randn(2, 64, 15, 17)
            torch.testing.assert_close(proj_blk(x64), torch.relu(proj_blk.downsample(x64)))
    m.eval()


# ----------------------------------------------------------------------------- block arithmetic
@pytest.mark.parametrize('size', [(16, 16), (15, 21), (9, 8)])
@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('se', [False, True])
def test_elastic_block_matches_literal_two_branch_computation(size, training, se):
    torch.manual_seed(1)
    blk = ElasticBottleneck(128, 32, elastic=True, se=se, dilation=1)
    _randomise_norms(blk)
    blk.train(training)
    x = torch.randn(2, 128, *size)
    with torch.no_grad():
        ref = _reference_block(blk, x, training)
        got = blk(x)
    assert got.shape == (2, 128, *size)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('stride,dilation,inplanes', [(1, 1, 128), (2, 1, 64), (1, 2, 128), (1, 1, 64)])
def test_non_elastic_unit_equals_two_16_group_branches(stride, dilation, inplanes):
    """The stacked 32-group unit is exactly the reference's two 16-group branches at full resolution."""
    torch.manual_seed(2)
    blk = ElasticBottleneck(inplanes, 32, stride=stride, dilation=dilation, elastic=False)
    _randomise_norms(blk)
    x = torch.randn(2, inplanes, 13, 10)
    for training in (False, True):
        blk.train(training)
        with torch.no_grad():
            torch.testing.assert_close(blk(x), _reference_block(blk, x, training), rtol=1e-4, atol=1e-5)


def test_odd_size_pool_and_upsample_equal_replicate_pad_and_crop():
    torch.manual_seed(3)
    for h, w in [(7, 9), (8, 9), (7, 8), (8, 8), (1, 3)]:
        x = torch.randn(2, 5, h, w)
        padded = F.pad(x, (0, w % 2, 0, h % 2), mode='replicate')
        assert padded.shape[-2:] == (h + h % 2, w + w % 2)
        low = elastic_downsample(x)
        torch.testing.assert_close(low, F.avg_pool2d(padded, 2, 2), rtol=1e-6, atol=1e-6)
        up = elastic_upsample(low, (h, w))
        ref = F.interpolate(low, scale_factor=2, mode='bilinear', align_corners=False)[..., :h, :w]
        torch.testing.assert_close(up, ref, rtol=0, atol=1e-6)
    # odd sizes really take the replicate path: the last row of the pooled map equals the last input row
    x = torch.arange(3 * 5, dtype=torch.float32).view(1, 1, 3, 5)
    low = elastic_downsample(x)
    assert low.shape[-2:] == (2, 3)
    assert low[0, 0, 1, 2] == x[0, 0, 2, 4] and low[0, 0, 1, 0] == x[0, 0, 2, :2].mean()


def test_elastic_block_gradients_match_reference():
    torch.manual_seed(4)
    blk = ElasticBottleneck(64, 16, elastic=True)
    _randomise_norms(blk)
    blk.train()
    x = torch.randn(2, 64, 11, 14, requires_grad=True)
    g = torch.randn(2, 64, 11, 14)
    (blk(x) * g).sum().backward()
    gx, gw = x.grad.clone(), blk.conv2_d.weight.grad.clone()
    x.grad = None
    blk.zero_grad()
    (_reference_block(blk, x, training=True) * g).sum().backward()
    torch.testing.assert_close(gx, x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, blk.conv2_d.weight.grad, rtol=1e-4, atol=1e-5)


def test_baseline_is_torchvision_resnext50_32x4d():
    """Elastic off everywhere is exactly torchvision's resnext50_32x4d (same parameter layout)."""
    tv_models = pytest.importorskip('torchvision.models', reason='torchvision not installed')
    torch.manual_seed(5)
    tv = tv_models.resnext50_32x4d().eval()
    _randomise_norms(tv)
    ours = backbones.create('resnext50_32x4d').eval()
    renamed = {}
    for k, v in tv.state_dict().items():
        if k.startswith('layer'):
            k = f'stages.{int(k[5]) - 1}' + k[6:]
        elif k.startswith('conv1.'):
            k = 'stem.conv.' + k[6:]
        elif k.startswith('bn1.'):
            k = 'stem.bn.' + k[4:]
        elif k.startswith('fc.'):
            k = 'head.2.' + k[3:]
        renamed[k] = v
    ours.load_state_dict(renamed, strict=True)
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- whole networks
# make test-fast: the 50-layer models (the 101-layer ones differ in depth only)
@pytest.mark.parametrize('name', fast_subset(sorted(EXPECTED), [n for n in EXPECTED if '101' not in n]))
def test_forward_backward_features(name):
    m = _model(name)
    m.train()
    for size in [(224, 224), (225, 301)]:
        x = torch.randn(1, 3, *size)
        feats = m.forward_stages(x)
        assert list(feats) == ['stage1', 'stage2', 'stage3', 'stage4']
        for (k, f), c, s in zip(feats.items(), (256, 512, 1024, 2048), (4, 8, 16, 32)):
            assert f.shape == (1, c, -(-size[0] // s), -(-size[1] // s)), (k, f.shape)
            assert torch.isfinite(f).all()
        logits = m.forward_head(feats['stage4'])
        assert logits.shape == (1, 1000)
        m.zero_grad(set_to_none=True)
        (logits.sum() + sum(f.mean() for f in feats.values())).backward()
        missing = [n for n, p in m.named_parameters() if p.grad is None]
        assert not missing, missing[:5]        # every parameter is used, half-resolution branches included
        # the zero-initialised bn3 of every unit receives a gradient (units are trainable from the start)
        assert all(b.bn3.weight.grad.abs().sum() > 0 for st in m.stages for b in st)
    m.zero_grad(set_to_none=True)
    m.eval()


@pytest.mark.parametrize('os_,strides,stage4_dil', [(16, (4, 8, 16, 16), (2, 4, 8)),
                                                    (8, (4, 8, 8, 8), (4, 8, 16))])
def test_output_stride_with_multi_grid(os_, strides, stage4_dil):
    torch.manual_seed(0)
    ref = backbones.create('resnext50_elastic', num_classes=0)
    torch.manual_seed(0)
    m = backbones.create('resnext50_elastic', num_classes=0, output_stride=os_)
    assert [s.stride for s in m.feature_info] == list(strides)
    assert tuple(b.dilation for b in m.stages[3]) == stage4_dil
    for b, d in zip(m.stages[3], stage4_dil):
        assert b.conv2.dilation == (d, d) and b.conv2.padding == (d, d) and not b.elastic
    assert [b.stride for b in m.stages[3]] == [1, 1, 1]
    if os_ == 8:
        assert all(b.dilation == 2 and b.stride == 1 for b in m.stages[2])
    # same Elastic layout and parameter keys as the OS-32 network: ImageNet checkpoints load
    assert m.elastic_units() == ref.elastic_units()
    m.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 97, 129)
    m.eval()
    with torch.no_grad():
        feats = m(x)
    for f, s in zip(feats.values(), strides):
        assert f.shape[-2:] == (-(-97 // s), -(-129 // s))


def test_os32_ignores_multi_grid_and_bad_arguments_raise():
    m = backbones.create('resnext50_32x4d', num_classes=0, multi_grid=(1, 2, 4))
    assert all(b.dilation == 1 for s in m.stages for b in s)
    with pytest.raises(ValueError, match='32, 16 or 8'):
        backbones.create('resnext50_elastic', output_stride=4)
    with pytest.raises(ValueError, match='multi_grid'):
        backbones.create('resnext50_elastic', output_stride=16, multi_grid=(1, 2))
    with pytest.raises(ValueError, match='norm_layer'):
        backbones.create('resnext50_elastic', norm_layer='BN')
    with pytest.raises(ValueError, match=r'\[N, 3, H, W\]'):
        backbones.create('resnext50_elastic', num_classes=0)(torch.randn(1, 1, 64, 64))


def test_group_norm_layer():
    m = backbones.create('selastic_resnext50', num_classes=0, norm_layer=functools.partial(nn.GroupNorm, 16))
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    gn = [x for x in m.modules() if isinstance(x, nn.GroupNorm)]
    assert gn and all(torch.count_nonzero(b.bn3.weight) == 0 for s in m.stages for b in s)
    m.out_indices = (0,)
    feats = m(torch.randn(2, 3, 33, 35))
    assert feats['stage1'].shape == (2, 256, 9, 9)
    feats['stage1'].mean().backward()
    assert m.stages[0][0].bn1_d.weight.grad is not None


def test_with_cp_same_values_and_single_statistics_update():
    torch.manual_seed(6)
    plain = backbones.create('selastic_resnext50', num_classes=0, out_indices=(1,))
    torch.manual_seed(6)
    ckpt = backbones.create('selastic_resnext50', num_classes=0, out_indices=(1,), with_cp=True)
    for m in (plain, ckpt):
        _randomise_norms(m)
        m.train()
    x = torch.randn(2, 3, 64, 80)
    outs = []
    for m in (plain, ckpt):
        f = m(x)['stage2']
        f.square().mean().backward()
        outs.append(f.detach())
    torch.testing.assert_close(outs[0], outs[1])
    gp = dict(plain.named_parameters())
    for n, p in ckpt.named_parameters():
        if gp[n].grad is not None:
            torch.testing.assert_close(p.grad, gp[n].grad, rtol=1e-4, atol=1e-6)
    bp = dict(plain.named_buffers())
    for n, b in ckpt.named_buffers():          # recomputation does not update running stats twice
        torch.testing.assert_close(b, bp[n])


def test_frozen_stages_and_norm_eval():
    m = backbones.create('resnext50_elastic', num_classes=0, frozen_stages=2, norm_eval=True)
    m.train()
    for mod in (m.stem, m.stages[0], m.stages[1]):
        assert not mod.training and not any(p.requires_grad for p in mod.parameters())
    assert all(p.requires_grad for p in m.stages[2].parameters())
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert all(not b.training for b in bns)
    assert m.stages[2][1].training and m.stages[2][1].conv1_d.training
    before = m.stages[2][1].bn1_d.running_mean.clone()
    m(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, m.stages[2][1].bn1_d.running_mean)    # norm_eval: statistics frozen
    m.train()                                                         # re-applied by train()
    assert not m.stages[1].training and all(not b.training for b in bns)
    m.norm_eval = False
    m.train()
    assert m.stages[2][1].bn1_d.training and not m.stages[0][0].bn1.training  # frozen stays frozen


def test_deterministic_under_seed_and_channels_last():
    x = torch.randn(2, 3, 45, 61)
    outs = []
    for cl in (False, False, True):
        torch.manual_seed(11)
        m = backbones.create('se_resnext50_elastic', num_classes=10, channels_last=cl).eval()
        _randomise_norms(m)
        with torch.no_grad():
            for b in (b for s in m.stages for b in s):
                b.bn3.weight.fill_(0.5)
            outs.append(m(x))
        if cl:
            assert m.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(outs[0], outs[1])
    assert outs[0].abs().sum() > 0
    # same values in the other memory layout (summation order differs: tolerance relative to the scale)
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-3, atol=1e-4 * outs[0].abs().max().item())


@pytest.mark.parametrize('name', ['resnext50_elastic', 'densenet201_elastic', 'dla60x_elastic'])
def test_nchw_input_computes_channels_last_on_cpu(name):
    """Frameworks feed NCHW: the Elastic families convert once to channels-last (their pooling / upsampling are
    several times slower in NCHW on CPU) and hand the feature maps back NCHW, equal to an NCHW computation."""
    torch.manual_seed(0)
    m = backbones.create(name, num_classes=0, out_indices=(0, 3)).eval()
    seen = []
    m.stages[0].register_forward_hook(lambda mod, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(2, 3, 65, 71)
    with torch.no_grad():
        fast = m.forward_stages(x)
        m.cpu_layout = None
        ref = m.forward_stages(x)
    assert seen == [True, False]  # channels-last inside, then the input's layout when switched off
    for k in ref:
        assert fast[k].is_contiguous()  # handed back in the layout it was fed
        assert (fast[k] - ref[k]).abs().max() <= 1e-5 * ref[k].abs().max()
