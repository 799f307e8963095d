"""DenseNet-201 and DLA-X (+Elastic) (backbones/densenet.py, backbones/dla.py): layout, the Elastic units' arithmetic
at odd sizes against a literal pad / pool / upsample / crop formulation, output strides, initialisation and the
cardinality option.

Reference facts: ../shared/reference/official_implementations.md Sec. 1.3, 1.4, 1.9.  Counts: test_complexity.py;
the converter of the authors' files: test_pretrained.py.
"""
import functools
import os

import pytest
import torch
import torch.nn.functional as F
from official_files import MANIFEST_DIR, manifest
from torch import nn

import backbones
from backbones.densenet import DenseLayer
from backbones.dla import DLABottleneck, DLATree

NAMES = ['densenet201', 'densenet201_elastic', 'dla60x', 'dla60x_elastic', 'dla102x', 'dla102x_selastic',
         'dla102x_elastic']
CHANNELS = {'densenet201': [256, 512, 1792, 1920], 'densenet201_elastic': [384, 832, 1696, 1808]}
ELASTIC = {'densenet201_elastic', 'dla60x_elastic', 'dla102x_selastic', 'dla102x_elastic'}


@functools.lru_cache(maxsize=None)
def _model(name):
    torch.manual_seed(0)
    return backbones.create(name)


def _randomise_norms(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module


def _bn(x, bn, sl=slice(None), training=False):
    return F.batch_norm(x, bn.running_mean[sl].clone(), bn.running_var[sl].clone(), bn.weight[sl], bn.bias[sl],
                        training=training, momentum=0.0, eps=bn.eps)


def _literal_low(x, h, w):
    """The authors' half-resolution input: replicate-pad odd sizes right/bottom, 2x2 average pooling."""
    return F.avg_pool2d(F.pad(x, (0, w % 2, 0, h % 2), mode='replicate'), 2, 2)


def _literal_up(y, h, w):
    """The authors' upsampling: bilinear x2 (align_corners=False), cropped to the input size."""
    return F.interpolate(y, scale_factor=2, mode='bilinear', align_corners=False)[..., :h, :w]


# ----------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize('name', NAMES)
def test_registry_and_feature_info(name):
    m = _model(name)
    assert backbones.model_family(name) == 'elastic' and m.family == 'elastic' and m.variant == name
    assert [(s.name, s.channels, s.stride) for s in m.feature_info] == [
        (f'stage{i + 1}', c, 4 * 2 ** i) for i, c in enumerate(CHANNELS.get(name, [128, 256, 512, 1024]))]
    assert m.head[-1].out_features == 1000
    assert backbones.create(name, num_classes=0, out_indices=(2,)).head is None


def test_densenet_dense_layers_and_which_are_elastic():
    base, el = _model('densenet201'), _model('densenet201_elastic')
    assert [len(u) for u in base.elastic_units()] == [6, 12, 48, 32] and not any(map(any, base.elastic_units()))
    assert el.elastic_units() == [[True] * 10, [True] * 20, [True] * 40, [False] * 30]
    layer = el.stages[0].block.denselayer1
    assert (layer.conv1.out_channels, layer.conv1_d.out_channels, layer.conv2_d.out_channels) == (64, 64, 32)
    last = el.stages[3].block.denselayer30  # not Elastic: one 128-channel bottleneck (the two halves merged)
    assert last.conv1.out_channels == 128 and not hasattr(last, 'conv1_d')


def _elastic_blocks(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, DLABottleneck) and m.elastic)


@pytest.mark.parametrize('name', [n for n in NAMES if n.startswith('dla')])
def test_dla_elastic_bottlenecks_follow_the_layout(name):
    """Elastic on every stride-1 bottleneck of levels 2-4 (the reference's "stride == 1 and planes < 1024")."""
    m = _model(name)
    units = m.elastic_units()
    if name not in ELASTIC:
        assert not any(map(any, units))
        return
    for i, u in enumerate(units):
        assert u == ([False] + [True] * (len(u) - 1) if i < 3 else [False] * len(u)), (i, u)
    if name != 'dla102x_selastic' and os.path.isdir(MANIFEST_DIR):  # the same set as the authors' model
        official = manifest(name)['settings']['blocks_elastic_half_resolution_branch']
        assert _elastic_blocks(m) == sorted(
            f'stages.{int(b.split(".")[0][5:]) - 2}.{b.split(".", 1)[1]}' for b in official)


def test_dla_cardinality_is_an_argument_not_class_state():
    """The reference's dla102x_elastic() sets a class attribute that leaks into every later DLA (Sec. 1.4)."""
    torch.manual_seed(0)
    x50 = backbones.create('dla102x_elastic', num_classes=0)
    x32 = backbones.create('dla102x', num_classes=0)
    assert not hasattr(DLABottleneck, 'cardinality')
    assert x50.cardinality == 50 and x32.cardinality == 32
    assert {m.conv2.groups for m in x32.modules() if isinstance(m, DLABottleneck)} == {32}
    groups = {(m.elastic, m.conv2.groups, m.conv2.in_channels) for m in x50.stages[0].modules()
              if isinstance(m, DLABottleneck)}
    assert groups == {(True, 25, 100), (False, 50, 200)}  # Split50: 25 groups per branch, 100/branch at level 2
    assert backbones.create('dla60x_elastic', num_classes=0, cardinality=50).cardinality == 50


@pytest.mark.parametrize('name', ['dla60x', 'dla102x_elastic'])
def test_dla_projections_only_where_the_reference_uses_them(name):
    for t in _model(name).modules():
        if isinstance(t, DLATree):
            used = t.levels == 1 and t.tree1.conv1.in_channels != t.tree1.conv3.out_channels
            assert (t.project is not None) == used


# ----------------------------------------------------------------------------------------------- arithmetic
def _literal_dense_layer(layer, feats, training):
    x = torch.cat(feats, 1)
    h, w = x.shape[-2:]
    x = F.relu(_bn(x, layer.norm1, training=training))

    def branch(inp, conv1, norm2, conv2, sl, sl_in):
        y = F.relu(_bn(F.conv2d(inp, conv1.weight[sl]), norm2, sl, training))
        return F.conv2d(y, conv2.weight[:, sl_in], padding=layer.dilation, dilation=layer.dilation)

    if layer.elastic:
        full = branch(x, layer.conv1, layer.norm2, layer.conv2, slice(None), slice(None))
        low = branch(_literal_low(x, h, w), layer.conv1_d, layer.norm2_d, layer.conv2_d, slice(None), slice(None))
        return full + _literal_up(low, h, w)
    half = layer.conv1.out_channels // 2  # the merged layer as the reference's two 64-channel halves
    return sum(branch(x, layer.conv1, layer.norm2, layer.conv2, s, s)
               for s in (slice(0, half), slice(half, 2 * half)))


@pytest.mark.parametrize('size', [(16, 16), (15, 21), (9, 8)])
@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('elastic,dilation', [(True, 1), (True, 2), (False, 1)])
def test_dense_layer_matches_literal_two_branch_computation(size, training, elastic, dilation):
    torch.manual_seed(0)
    layer = _randomise_norms(DenseLayer(48, growth_rate=8, bn_size=4, elastic=elastic, dilation=dilation))
    layer.train(training)
    feats = [torch.randn(2, 32, *size), torch.randn(2, 16, *size)]
    ref = _literal_dense_layer(layer, feats, training)
    out = layer(feats)
    assert out.shape == (2, 8, *size)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _literal_dla_bottleneck(blk, x, residual, training):
    h, w = x.shape[-2:]
    groups = blk.conv2.groups

    def branch(inp, c1, b1, c2, b2, c3, s, stride):
        y = F.relu(_bn(F.conv2d(inp, c1.weight[s]), b1, s, training))
        y = F.conv2d(y, c2.weight[s], stride=stride, padding=blk.dilation, dilation=blk.dilation,
                     groups=groups if blk.elastic else groups // 2)
        return F.conv2d(F.relu(_bn(y, b2, s, training)), c3.weight[:, s])

    if blk.elastic:
        out = branch(x, blk.conv1, blk.bn1, blk.conv2, blk.bn2, blk.conv3, slice(None), 1)
        low = branch(_literal_low(x, h, w), blk.conv1_d, blk.bn1_d, blk.conv2_d, blk.bn2_d, blk.conv3_d,
                     slice(None), 1)
        out = out + _literal_up(low, h, w)
    else:  # the merged bottleneck as the reference's two branches of cardinality / 2 groups
        half = blk.conv1.out_channels // 2
        out = sum(branch(x, blk.conv1, blk.bn1, blk.conv2, blk.bn2, blk.conv3, s, blk.stride)
                  for s in (slice(0, half), slice(half, 2 * half)))
    return F.relu(_bn(out, blk.bn3, training=training) + (x if residual is None else residual))


@pytest.mark.parametrize('size', [(16, 16), (15, 21), (9, 8)])
@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('elastic,stride,dilation,cardinality', [
    (True, 1, 1, 32), (True, 1, 2, 50), (False, 2, 1, 32), (False, 1, 1, 50)])
def test_dla_bottleneck_matches_literal_two_branch_computation(size, training, elastic, stride, dilation,
                                                               cardinality):
    torch.manual_seed(0)
    inplanes = 64 if stride == 1 else 32
    blk = _randomise_norms(DLABottleneck(inplanes, 64, stride, dilation, cardinality, elastic))
    blk.train(training)
    x = torch.randn(2, inplanes, *size)
    out_size = tuple(-(-s // stride) for s in size)
    residual = None if stride == 1 else torch.randn(2, 64, *out_size)
    ref = _literal_dla_bottleneck(blk, x, residual, training)
    out = blk(x, residual)
    assert out.shape == (2, 64, *out_size)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_dla_tree_pooling_matches_the_strided_convolution_at_odd_sizes():
    """MaxPool with ceil_mode: ceil(H / 2) like the 3x3 stride-2 convolution (the reference's floor would not fit);
    at even sizes it is the reference's pooling."""
    torch.manual_seed(0)
    tree = DLATree(2, 32, 64, stride=2, level_root=True).eval()
    for size in [(15, 21), (16, 16)]:
        x = torch.randn(1, 32, *size)
        with torch.no_grad():
            assert tree(x).shape[-2:] == tuple(-(-s // 2) for s in size)
        if size[0] % 2 == 0:
            torch.testing.assert_close(tree.downsample(x), F.max_pool2d(x, 2, 2))


# ----------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('os_,strides', [(16, (4, 8, 16, 16)), (8, (4, 8, 8, 8))])
def test_output_stride_keeps_the_weights(name, os_, strides):
    torch.manual_seed(0)
    m = backbones.create(name, num_classes=0, output_stride=os_).eval()
    assert [s.stride for s in m.feature_info] == list(strides)
    ref = {k: tuple(v.shape) for k, v in _model(name).state_dict().items() if not k.startswith('head.')}
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == ref  # every checkpoint loads at any OS
    assert m.elastic_units() == _model(name).elastic_units()
    size = (45, 67)
    with torch.no_grad():
        feats = m.forward_stages(torch.randn(1, 3, *size))
    for s, f in zip(m.feature_info, feats.values()):
        assert f.shape[-2:] == tuple(-(-d // s.stride) for d in size), (s, f.shape)
    last = [c for c in m.stages[3].modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)]
    assert {c.dilation for c in last} == {(2, 2) if os_ == 16 else (4, 4)}


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match='32, 16 or 8'):
        backbones.create('densenet201', output_stride=4)
    with pytest.raises(ValueError, match='32, 16 or 8'):
        backbones.create('dla60x', output_stride=64)
    from backbones.densenet import DenseNet
    from backbones.dla import DLA
    with pytest.raises(ValueError, match='4 positive ints'):
        DenseNet((6, 12, 24))
    with pytest.raises(ValueError, match='compression'):
        DenseNet((1, 1, 1, 1), compression=0)
    with pytest.raises(ValueError, match='6 positive ints'):
        DLA((1, 1, 1, 2, 3))
    with pytest.raises(ValueError, match='even cardinality'):
        DLA((1, 1, 1, 2, 3, 1), elastic=True, cardinality=33)
    with pytest.raises(ValueError, match='stride-1'):
        DLABottleneck(64, 64, stride=2, elastic=True)
    with pytest.raises(ValueError, match='norm_layer'):
        DLA((1, 1, 1, 2, 3, 1), norm_layer='BN')


def test_initialisation_follows_reference():
    """Sec. 1.3 / 1.4: conv normal(0, sqrt(2 / (k^2 out))), norms 1 / 0, DenseNet classifier bias 0, DLA classifier
    = the 1x1 conv's rule sqrt(2 / num_classes); no zero-initialised bn3 in DLA."""
    d, x = _model('densenet201'), _model('dla60x')
    w = d.stages[2].block.denselayer10.conv2.weight  # 3x3, 32 outputs
    assert abs(w.std().item() / (2 / (9 * 32)) ** 0.5 - 1) < 0.05
    assert torch.count_nonzero(d.head[-1].bias) == 0 and d.stages[3].norm_final.weight.eq(1).all()
    w = x.stages[2].tree1.tree1.tree1.conv1.weight  # 1x1, 512 outputs
    assert abs(w.std().item() / (2 / 512) ** 0.5 - 1) < 0.05
    assert abs(x.head[-1].weight.std().item() / (2 / 1000) ** 0.5 - 1) < 0.05
    assert all(m.bn3.weight.eq(1).all() for m in x.modules() if isinstance(m, DLABottleneck))


@pytest.mark.parametrize('name', ['densenet201_elastic', 'dla60x_elastic'])
def test_group_norm_and_channels_last(name):
    torch.manual_seed(0)
    gn = backbones.create(name, num_classes=0, norm_layer=functools.partial(nn.GroupNorm, 16), out_indices=(1,))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    torch.manual_seed(0)
    a = backbones.create(name, num_classes=0, out_indices=(1,)).eval()
    torch.manual_seed(0)
    b = backbones.create(name, num_classes=0, out_indices=(1,), channels_last=True).eval()
    x = torch.randn(1, 3, 37, 51)
    with torch.no_grad():
        assert gn.forward_stages(x)['stage2'].shape[1] == gn.feature_info[0].channels
        fa, fb = a.forward_stages(x)['stage2'], b.forward_stages(x)['stage2']
    # relative: fresh eval-mode DenseNet features (BN statistics 0 / 1) grow to ~1e6
    assert fb.is_contiguous(memory_format=torch.channels_last)
    assert (fa - fb).abs().max() <= 1e-5 * fa.abs().max()
