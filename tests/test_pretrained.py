"""Pretrained weights: every official release (synthetic files from the manifests), torchvision / timm
equivalence, strictness and the error messages of the loader."""
import os
import zipfile

import pytest
import torch
from conftest import fast_subset
from official_files import MANIFEST_DIR, manifest, manifest_names, write_official
from torch import nn

import backbones
from backbones.checkpoint import CheckpointMismatchError
from backbones.pretrained import (
    CheckpointFileError,
    UnsupportedCheckpointError,
    convert,
    identify,
    load_pretrained,
    read_source,
)
from backbones.slimmable import config_key

needs_manifests = pytest.mark.skipif(not os.path.isdir(MANIFEST_DIR),
                                     reason=f'the official checkpoint manifests are missing: {MANIFEST_DIR}')

#: manifest -> dynscale model
SUPPORTED = {
    'resnext50': 'resnext50_32x4d', 'resnext101': 'resnext101_32x4d', 'se_resnext50': 'se_resnext50',
    'resnext50_elastic': 'resnext50_elastic', 'resnext101_elastic': 'resnext101_elastic',
    'se_resnext50_elastic': 'se_resnext50_elastic',
    'us_mobilenet_v1': 'us_mobilenet_v1', 'us_mobilenet_v2': 'us_mobilenet_v2',
    'mutualnet_mobilenet_v1': 'us_mobilenet_v1', 'mutualnet_mobilenet_v2': 'us_mobilenet_v2',
    'mutualnet_resnet50': 'us_resnet50',
    'parallel_resnet18': 'rs_resnet18', 'parallel_resnet50': 'rs_resnet50', 'parallel_resnet101': 'rs_resnet101',
    'parallel_mobilenetv2': 'rs_mobilenet_v2',
    'densenet201': 'densenet201', 'densenet201_elastic': 'densenet201_elastic', 'dla60x': 'dla60x',
    'dla60x_elastic': 'dla60x_elastic', 'dla102x': 'dla102x', 'dla102x_elastic': 'dla102x_elastic',
}
#: manifest -> the reason the loader gives (a regex of its message): "not supported yet"
UNSUPPORTED = {
    's_mobilenet_v1': 'private affine per width', 's_mobilenet_v2': 'private affine per width',
    's_resnet50': 'private affine per width', 's_shufflenet': 'private affine per width',
    'autoslim_mobilenet_v1': 'private affine per width', 'autoslim_mobilenet_v2': 'private affine per width',
    'autoslim_mnasnet': 'private affine per width', 'autoslim_resnet50': 'private affine per width',
    'mutualnet_mobilenet_v1_w1.6': 'wider max width',
}


@needs_manifests
def test_every_manifest_is_either_supported_or_listed_with_a_reason():
    names = set(manifest_names())
    assert names == set(SUPPORTED) | set(UNSUPPORTED), (names - set(SUPPORTED) - set(UNSUPPORTED),
                                                        set(SUPPORTED) | set(UNSUPPORTED) - names)


@needs_manifests
@pytest.mark.parametrize('name', sorted(UNSUPPORTED))
def test_release_without_dynscale_model_is_refused_naming_why(name, tmp_path):
    path, _ = write_official(name, str(tmp_path / f'{name}.pth.tar'))
    with pytest.raises(UnsupportedCheckpointError, match=UNSUPPORTED[name]):
        identify(path)
    print(f'not supported yet: {name}: {UNSUPPORTED[name]}')


def _half(w):
    return w.shape[0] // 2


def _check_elastic(name, model, sd):
    p = 'module.'
    msd = model.state_dict()
    assert torch.equal(msd['stem.conv.weight'], sd[p + 'conv1.weight'])
    assert torch.equal(msd['stem.bn.running_var'], sd[p + 'bn1.running_var'])
    assert torch.equal(msd['head.2.weight'], sd[p + 'fc.weight'])
    elastic_blocks = manifest(name)['settings']['blocks_elastic_half_resolution_branch']
    merged_blocks = manifest(name)['settings']['blocks_two_full_resolution_branches']
    for blk in elastic_blocks:
        layer, unit = blk.split('.')
        t = f'stages.{int(layer[5:]) - 1}.{unit}'
        for part in ('conv1', 'conv2', 'conv3', 'bn1', 'bn2'):
            for s in ('', '_d'):
                tail = '.weight' if part.startswith('conv') else '.running_mean'
                assert torch.equal(msd[f'{t}.{part}{s}{tail}'], sd[f'{p}{blk}.{part}{s}{tail}'])
    for blk in merged_blocks:
        layer, unit = blk.split('.')
        t = f'stages.{int(layer[5:]) - 1}.{unit}'
        full, low = sd[f'{p}{blk}.conv1.weight'], sd[f'{p}{blk}.conv1_d.weight']
        w = msd[f'{t}.conv1.weight']
        assert torch.equal(w[:full.shape[0]], full) and torch.equal(w[full.shape[0]:], low)
        w2 = msd[f'{t}.conv2.weight']
        assert torch.equal(w2[:_half(w2)], sd[f'{p}{blk}.conv2.weight'])
        assert torch.equal(w2[_half(w2):], sd[f'{p}{blk}.conv2_d.weight'])
        w3 = msd[f'{t}.conv3.weight']  # merged along the input channels
        c = w3.shape[1] // 2
        assert torch.equal(w3[:, :c], sd[f'{p}{blk}.conv3.weight'])
        assert torch.equal(w3[:, c:], sd[f'{p}{blk}.conv3_d.weight'])
        bn = msd[f'{t}.bn2.bias']
        assert torch.equal(bn[:_half(bn)], sd[f'{p}{blk}.bn2.bias'])
        assert torch.equal(bn[_half(bn):], sd[f'{p}{blk}.bn2_d.bias'])
        assert torch.equal(msd[f'{t}.bn3.weight'], sd[f'{p}{blk}.bn3.weight'])
    if 'se_' in name:
        assert torch.equal(msd['stages.0.0.se.fc1.weight'], sd[p + 'layer1.0.selayer.conv1.weight'])
        assert torch.equal(msd['stages.3.2.se.fc2.bias'], sd[p + 'layer4.2.selayer.conv2.bias'])


def _check_densenet(name, model, sd):
    p = 'module.features.'
    msd = model.state_dict()
    assert torch.equal(msd['stem.conv.weight'], sd[p + 'conv0.weight'])
    assert torch.equal(msd['stem.bn.running_mean'], sd[p + 'norm0.running_mean'])
    assert torch.equal(msd['stages.1.transition.conv.weight'], sd[p + 'transition1.conv.weight'])
    assert torch.equal(msd['stages.3.transition.norm.bias'], sd[p + 'transition3.norm.bias'])
    assert torch.equal(msd['stages.3.norm_final.running_var'], sd[p + 'norm_final.running_var'])
    assert torch.equal(msd['head.2.weight'], sd['module.classifier.weight'])
    blocks = model.block_config
    for b, n in enumerate(blocks):
        for layer in (1, n):
            s, t = f'{p}denseblock{b + 1}.denselayer{layer}.', f'stages.{b}.block.denselayer{layer}.'
            assert torch.equal(msd[t + 'norm1.weight'], sd[s + 'norm1.weight'])
            if 'elastic' not in name:
                for part in ('conv1.weight', 'norm2.running_mean', 'conv2.weight'):
                    assert torch.equal(msd[t + part], sd[s + part])
            elif b < 3:  # Elastic layers: the half-resolution branch one-to-one
                for part in ('conv1', 'conv1_d', 'conv2', 'conv2_d'):
                    assert torch.equal(msd[f'{t}{part}.weight'], sd[f'{s}{part}.weight'])
                for part in ('norm2', 'norm2_d'):
                    assert torch.equal(msd[f'{t}{part}.running_var'], sd[f'{s}{part}.running_var'])
            else:  # block 4 of the Elastic model: two full-resolution halves merged, full branch first
                w1, w2, nb = msd[t + 'conv1.weight'], msd[t + 'conv2.weight'], msd[t + 'norm2.bias']
                assert torch.equal(w1, torch.cat([sd[s + 'conv1.weight'], sd[s + 'conv1_d.weight']]))
                assert torch.equal(nb, torch.cat([sd[s + 'norm2.bias'], sd[s + 'norm2_d.bias']]))
                assert torch.equal(w2, torch.cat([sd[s + 'conv2.weight'], sd[s + 'conv2_d.weight']], 1))


def _dla_target(blk):
    level, _, path = blk.partition('.')
    return f'stages.{int(level[5:]) - 2}' + (f'.{path}' if path else '')


def _check_dla(name, model, sd):
    p = 'module.'
    msd = model.state_dict()
    assert torch.equal(msd['stem.base_layer.0.weight'], sd[p + 'base_layer.0.weight'])
    assert torch.equal(msd['stem.level1.1.running_mean'], sd[p + 'level1.1.running_mean'])
    assert torch.equal(msd['head.2.weight'], sd[p + 'fc.weight'].flatten(1))  # 1x1-conv classifier -> Linear
    assert torch.equal(msd['head.2.bias'], sd[p + 'fc.bias'])
    assert torch.equal(msd['stages.3.root.conv.weight'], sd[p + 'level5.root.conv.weight'])
    assert torch.equal(msd['stages.3.project.0.weight'], sd[p + 'level5.project.0.weight'])
    settings = manifest(name)['settings']
    for blk in settings.get('blocks_elastic_half_resolution_branch', []):
        t = _dla_target(blk)
        for part in ('conv1', 'conv2', 'conv3', 'conv1_d', 'conv2_d', 'conv3_d'):
            assert torch.equal(msd[f'{t}.{part}.weight'], sd[f'{p}{blk}.{part}.weight'])
        assert torch.equal(msd[f'{t}.bn2_d.running_var'], sd[f'{p}{blk}.bn2_d.running_var'])
    for blk in settings.get('blocks_two_full_resolution_branches', []):
        t = _dla_target(blk)
        assert torch.equal(msd[f'{t}.conv1.weight'], torch.cat([sd[f'{p}{blk}.conv1.weight'],
                                                                sd[f'{p}{blk}.conv1_d.weight']]))
        assert torch.equal(msd[f'{t}.conv2.weight'], torch.cat([sd[f'{p}{blk}.conv2.weight'],
                                                                sd[f'{p}{blk}.conv2_d.weight']]))
        assert torch.equal(msd[f'{t}.conv3.weight'], torch.cat([sd[f'{p}{blk}.conv3.weight'],
                                                                sd[f'{p}{blk}.conv3_d.weight']], 1))
        assert torch.equal(msd[f'{t}.bn1.bias'], torch.cat([sd[f'{p}{blk}.bn1.bias'], sd[f'{p}{blk}.bn1_d.bias']]))
        assert torch.equal(msd[f'{t}.bn3.weight'], sd[f'{p}{blk}.bn3.weight'])
    if 'elastic' not in name:  # single-branch bottlenecks one-to-one
        assert torch.equal(msd['stages.3.tree1.conv2.weight'], sd[p + 'level5.tree1.conv2.weight'])
        assert torch.equal(msd['stages.0.tree2.bn3.running_var'], sd[p + 'level2.tree2.bn3.running_var'])
    # the projections of depth > 1 tree nodes (no root of their own) are dropped, by name and with the reason
    dead = sorted({k.rsplit('.project.', 1)[0] for k in sd if '.project.' in k
                   and k.rsplit('.project.', 1)[0] + '.root.conv.weight' not in sd})
    assert dead and all(not k.startswith(tuple(_dla_target(d[len(p):]) + '.project' for d in dead)) for k in msd)
    rows = model.pretrained_meta['conversion_dropped']
    dropped = {k for k, _ in rows}
    assert dropped == {k for k in sd if k.rsplit('.project.', 1)[0] in dead}
    assert all('never used' in why for _, why in rows)
    assert sum(sd[k].numel() for k in dropped if not k.endswith(('running_mean', 'running_var', 'tracked'))) + \
        sum(p.numel() for p in model.parameters()) == manifest(name)['parameter_count']


def _check_slimmable(name, model, sd):
    widths = manifest(name)['settings']['width_mult_list']
    assert list(model.width_list) == widths
    stem_bn = model.stem[1] if name.endswith('resnet50') else model.stem[0][1]
    assert torch.equal(stem_bn.weight, sd['module.features.0.1.weight'])
    for i, w in enumerate(widths):
        assert torch.equal(stem_bn.private[config_key(w)].running_mean, sd[f'module.features.0.1.bn.{i}.running_mean'])
    if name.endswith('mobilenet_v2'):  # one shared tail BN -> copied into every width's slot
        tail = model.head[0][1]
        for w in widths:
            assert torch.equal(tail.private[config_key(w)].running_var, sd['module.features.18.1.running_var'])
    cls = [k for k in sd if k.startswith('module.classifier') and k.endswith('weight')][-1]
    assert torch.equal(model.head[-1].weight, sd[cls])


def _check_rsnet(name, model, sd):
    assert model.resolutions == (224, 192, 160, 128, 96)
    for i in range(5):
        src = 'module.bn1' if 'resnet' in name else 'module.features.0.1'
        assert torch.equal(model.stem[1].bns[i].weight, sd[f'{src}.bn_{i}.weight'])
        assert torch.equal(model.stem[1].bns[i].running_var, sd[f'{src}.bn_{i}.running_var'])
    assert torch.equal(model.stem[0].weight, sd['module.conv1.module.weight' if 'resnet' in name
                                                else 'module.features.0.0.module.weight'])
    assert model.pretrained_meta['rsnet_alpha'] == [float(a) for a in sd['module.alpha']]
    assert model.pixel_mean == (0.0, 0.0, 0.0) and model.pixel_std == (1.0, 1.0, 1.0)


@pytest.mark.slow
@needs_manifests
@pytest.mark.parametrize('name', sorted(SUPPORTED))
def test_official_file_converts_and_loads_strictly(name, tmp_path):
    path, sd = write_official(name, str(tmp_path / f'{name}.pth.tar'))
    model = backbones.create(SUPPORTED[name], pretrained=path)
    meta = model.pretrained_meta
    assert meta['origin'] == manifest(name)['repo']
    assert meta['source_sha256'] == read_source(path).sha256
    if name.startswith(('resnext', 'se_')):
        _check_elastic(name, model, sd)
    elif name.startswith('densenet'):
        _check_densenet(name, model, sd)
    elif name.startswith('dla'):
        _check_dla(name, model, sd)
    elif name.startswith(('us_', 'mutualnet_')):
        _check_slimmable(name, model, sd)
        assert meta['eval_protocol'] == ('mutualnet-recalibrate' if name.startswith('mutualnet') else 'usnet-stored')
    else:
        _check_rsnet(name, model, sd)
    # every model tensor came from the file: a second load of the same file changes nothing
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rep = load_pretrained(model, path)
    assert rep.loaded == len(before) and not rep.missing and not rep.unexpected
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@needs_manifests
@pytest.mark.parametrize('name', ['densenet201', 'densenet201_elastic', 'dla60x', 'dla60x_elastic', 'dla102x',
                                  'dla102x_elastic'])
def test_densenet_and_dla_files_are_recognised_by_their_layout_without_arch(name, tmp_path):
    from official_files import container_of, state_dict_of

    obj = container_of(name, state_dict_of(name))
    obj['arch'] = 'my_run'
    torch.save(obj, tmp_path / 'f.pth.tar')
    rel = identify(str(tmp_path / 'f.pth.tar'))
    assert (rel.origin, rel.name, rel.models, rel.num_classes) == ('allenai/elastic', name, (SUPPORTED[name],), 1000)


@needs_manifests
def test_densenet_and_dla_files_of_other_layouts_are_refused_naming_it(tmp_path):
    from official_files import container_of, state_dict_of

    sd = state_dict_of('dla60x')
    sd = type(sd)((k, v) for k, v in sd.items() if not k.startswith('module.level5.'))
    torch.save(dict(container_of('dla60x', sd), arch='x'), tmp_path / 'd.pth.tar')
    with pytest.raises(UnsupportedCheckpointError, match=r'tree depths \[1, 2, 3, 0\]'):
        identify(str(tmp_path / 'd.pth.tar'))
    sd = state_dict_of('densenet201')
    sd = type(sd)((k, v) for k, v in sd.items() if '.denseblock4.denselayer32.' not in k)
    torch.save(dict(container_of('densenet201', sd), arch='x'), tmp_path / 'n.pth.tar')
    with pytest.raises(UnsupportedCheckpointError, match=r'\[6, 12, 48, 31\]'):
        identify(str(tmp_path / 'n.pth.tar'))
    # a known arch name with a damaged layout: strict conversion lists the keys
    torch.save(container_of('densenet201', sd), tmp_path / 'n2.pth.tar')
    with pytest.raises(CheckpointMismatchError, match='unfilled model key: stages.3.block.denselayer32'):
        backbones.create('densenet201', pretrained=str(tmp_path / 'n2.pth.tar'))


@needs_manifests
def test_dla_classifier_reshaped_and_features_only_dla_drops_it(tmp_path):
    path, sd = write_official('dla60x_elastic', str(tmp_path / 'dla60x_elastic.pth.tar'))
    model = backbones.create('dla60x_elastic', num_classes=0, output_stride=8, out_indices=(3,))
    rep = load_pretrained(model, path)
    assert {k for k, _ in rep.dropped} >= {'head.2.weight', 'head.2.bias', 'module.level3.project.0.weight'}
    assert torch.equal(model.stages[3].root.conv.weight, sd['module.level5.root.conv.weight'])


@needs_manifests
def test_features_only_model_drops_the_classifier_and_says_so(tmp_path):
    path, _ = write_official('resnext50_elastic', str(tmp_path / 'r.pth.tar'))
    model = backbones.create('resnext50_elastic', num_classes=0, out_indices=(1, 3), output_stride=16)
    rep = load_pretrained(model, path)
    assert {k for k, _ in rep.dropped} >= {'head.2.weight', 'head.2.bias'}
    assert 'no classifier' in rep.dropped[-1][1]


@needs_manifests
def test_zip_wrapped_download_fp16_and_legacy_serialisation(tmp_path):
    path, sd = write_official('us_mobilenet_v2', str(tmp_path / 'us_mobilenet_v2_calibrated.pt.zip'),
                              zip_wrap='us_mobilenet_v2_calibrated.pt', legacy=True)
    assert zipfile.is_zipfile(path)
    m = backbones.create('us_mobilenet_v2', pretrained=path)
    assert m.pretrained_meta['source_wrapped_member'] == 'us_mobilenet_v2_calibrated.pt'
    path16, sd16 = write_official('resnext50', str(tmp_path / 'r16.pth.tar'), dtype=torch.float16)
    src = read_source(path16)
    assert src.cast_keys and all(t.dtype != torch.float16 for t in src.state_dict.values())
    m16 = backbones.create('resnext50_32x4d', pretrained=path16)
    assert m16.stem.conv.weight.dtype == torch.float32
    assert torch.equal(m16.stem.conv.weight, sd16['module.conv1.weight'].float())


@needs_manifests
def test_missing_and_extra_tensors_are_listed_in_both_namings(tmp_path):
    from official_files import container_of, state_dict_of

    sd = state_dict_of('resnext50_elastic')
    del sd['module.layer1.2.conv2_d.weight']
    sd['module.layer9.0.conv1.weight'] = torch.zeros(3)
    torch.save(container_of('resnext50_elastic', sd), tmp_path / 'bad.pth.tar')
    with pytest.raises(CheckpointMismatchError) as e:
        backbones.create('resnext50_elastic', pretrained=str(tmp_path / 'bad.pth.tar'))
    msg = str(e.value)
    assert 'unfilled model key: stages.0.2.conv2_d.weight' in msg
    assert 'module.layer9.0.conv1.weight' in msg and 'Likely cause' in msg


@needs_manifests
def test_wrong_model_and_wrong_width_list_are_named(tmp_path):
    path, _ = write_official('resnext50', str(tmp_path / 'resnext50.pth.tar'))
    with pytest.raises(CheckpointMismatchError, match="fit dynscale 'resnext50_32x4d', not 'resnext50_elastic'"):
        backbones.create('resnext50_elastic', pretrained=path)
    with pytest.raises(CheckpointMismatchError, match="fit dynscale 'resnext50_32x4d'"):
        load_pretrained(backbones.create('selastic_resnext50'), path)
    # a US-Net file whose statistics follow another width list: the lengths do not fit the channel rule
    from official_files import container_of, state_dict_of
    sd = state_dict_of('us_mobilenet_v1')
    torch.save(container_of('us_mobilenet_v1', sd), tmp_path / 'us.pt')
    with pytest.raises(CheckpointMismatchError, match='width list'):
        load_pretrained(backbones.create('us_mobilenet_v1'), str(tmp_path / 'us.pt'),
                        width_list=[0.3 + 0.02 * i for i in range(31)])


def test_unreadable_files_name_what_they_are(tmp_path):
    trunc = tmp_path / 'trunc.pth'
    torch.save({'state_dict': {'a': torch.zeros(1000)}}, trunc)
    data = trunc.read_bytes()
    trunc.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointFileError, match=r'trunc\.pth'):
        read_source(str(trunc))
    html = tmp_path / 'model.pth'
    html.write_text('<!DOCTYPE html><html>Google Drive - Virus scan warning</html>')
    with pytest.raises(CheckpointFileError, match='HTML'):
        read_source(str(html))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        read_source(str(tmp_path / 'nope.pth'))


def test_unknown_origin_lists_the_known_ones():
    with pytest.raises(CheckpointMismatchError, match='allenai/elastic'):
        identify({'encoder.blocks.0.weight': torch.zeros(2, 2)})
    with pytest.raises(ValueError, match='unknown source'):
        identify({'stem.conv.weight': torch.zeros(1)}, source='caffe')


# ------------------------------------------------------------------------------------- torchvision / timm
def _randomise(model, seed=0):
    """Random BN affine, then running statistics measured on a random batch (momentum 1) and perturbed: a
    well-conditioned eval-mode network (independent random statistics make deep residual nets explode)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            if m.weight is not None:
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            m.momentum = 1.0
        model.train()
        model(torch.randn(4, 3, 128, 128, generator=g))
        for m in bns:
            m.momentum = 0.1
            m.running_mean.add_(0.05 * torch.randn(m.running_mean.shape, generator=g) * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) * 0.4 + 0.8)
    return model.eval()


TORCHVISION = [('resnext50_32x4d', 'resnext50_32x4d'), ('resnet18', 'rs_resnet18'), ('resnet50', 'rs_resnet50'),
               ('resnet50', 'us_resnet50'), ('resnet101', 'rs_resnet101'), ('vgg16_bn', 'us_vgg16_bn'),
               ('mobilenet_v2', 'us_mobilenet_v2'), ('mobilenet_v2', 'rs_mobilenet_v2')]


@pytest.mark.slow
@pytest.mark.parametrize('arch,name', TORCHVISION)
def test_torchvision_weights_give_the_same_logits(arch, name, tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = _randomise(getattr(torchvision.models, arch)(weights=None))
    path = str(tmp_path / f'{arch}.pth')
    torch.save(ref.state_dict(), path)
    model = backbones.create(name, pretrained=path).eval()
    assert model.pretrained_meta['origin'] == 'torchvision'
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        want = ref(x)
        diff = (model(x) - want).abs().max().item()
    # relative to the logits' scale: the Elastic family computes in channels-last on CPU (another summation order)
    assert diff <= 1e-4 * max(1.0, want.abs().max().item()), (arch, name, diff, want.abs().max().item())
    if name.startswith('us_'):  # only width 1.0 has statistics; the others are uncalibrated
        assert model.bn_configs == ((1.0, None),)
        model.set_width(model.width_range[0])
        with pytest.raises(ValueError, match='calibrate_bn'):
            model(x)


def test_dense_weights_into_another_architecture_are_refused(tmp_path):
    import torchvision

    path = str(tmp_path / 'x.pth')
    torch.save(torchvision.models.resnext50_32x4d(weights=None).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="fit dynscale 'resnext50_32x4d', not 'resnext50_elastic'"):
        backbones.create('resnext50_elastic', pretrained=path)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(UnsupportedCheckpointError, match='resnet34'):
        backbones.create('rs_resnet18', pretrained=path)


TIMM = [('seresnext50_32x4d', 'se_resnext50'), ('resnext101_32x4d', 'resnext101_32x4d'),
        ('resnetv2_50', 'preact_resnet50'), ('resnetv2_101', 'preact_resnet101')]


# make test-fast: SE-ResNeXt50 and ResNetV2-50 (the 101-layer twins map by the same rules)
@pytest.mark.parametrize('arch,name', fast_subset(TIMM, ['seresnext50_32x4d', 'resnetv2_50'], ids=lambda t: t[0]))
def test_timm_weights_give_the_same_logits(arch, name, tmp_path):
    timm = pytest.importorskip('timm', reason='timm (a dev dependency of dynscale) is not installed')
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = _randomise(timm.create_model(arch, pretrained=False))
    path = str(tmp_path / f'{arch}.safetensors')
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    model = backbones.create(name, pretrained=path).eval()
    assert model.pretrained_meta['origin'] == 'timm'
    # inputs and evaluation as the zoo tag's timm pretrained_cfg says (timm 1.0): bicubic, crop_pct 0.875, or for
    # resnetv2 *.a1h_in1k crop_pct 0.95 with mean = std = 0.5
    tag = {'seresnext50_32x4d': 'racm_in1k', 'resnext101_32x4d': 'gluon_in1k'}.get(arch, 'a1h_in1k')
    cfg = timm.models.get_pretrained_cfg(f'{arch}.{tag}')
    assert model.pixel_mean == pytest.approx(cfg.mean) and model.pixel_std == pytest.approx(cfg.std)
    from backbones.pretrained import PROTOCOL_TRANSFORMS
    tf = PROTOCOL_TRANSFORMS[model.pretrained_meta['eval_protocol']]
    assert (tf['interpolation'], tf['crop_pct']) == (cfg.interpolation, cfg.crop_pct)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        want = ref(x)
        diff = (model(x) - want).abs().max().item()
    # relative to the logits' scale: the Elastic family computes in channels-last on CPU (another summation order)
    assert diff <= 1e-4 * max(1.0, want.abs().max().item()), (arch, name, diff, want.abs().max().item())


def test_timm_preact_resnet_starts_a_sact_model_with_new_halting_branches(tmp_path):
    timm = pytest.importorskip('timm', reason='timm (a dev dependency of dynscale) is not installed')
    ref = timm.create_model('resnetv2_50', pretrained=False)
    path = str(tmp_path / 'rv2.pth')
    torch.save(ref.state_dict(), path)
    model = backbones.create('sact_resnet50', num_classes=0)
    rep = load_pretrained(model, path)
    assert rep.new and all('.halting.' in k for k, _ in rep.new)
    assert torch.equal(model.stages[2].units[4].conv2.weight, ref.stages[2].blocks[4].conv2.weight)
    bias = model.stages[0].halting[0].conv_local.bias
    assert torch.allclose(bias, torch.full_like(bias, -3.0))


def test_slimmable_checkpoint_defines_the_stored_configs(tmp_path):
    """A dynscale checkpoint with statistics for (0.5, 224) and 1.0 gives the model exactly those configs."""
    src = backbones.create('us_mobilenet_v1', width_list=[1.0, (0.5, 224)], num_classes=10)
    path = str(tmp_path / 's.pth')
    torch.save({'state_dict': src.state_dict(), 'meta': {'variant': 'us_mobilenet_v1'}}, path)
    dst = backbones.create('us_mobilenet_v1', num_classes=10)  # default configs: 0.25 and 1.0
    rep = load_pretrained(dst, path)
    assert dst.bn_configs == ((0.5, 224), (1.0, None))
    assert rep.uncalibrated == [(0.25, None)]


def test_rsnet_private_bn_map(tmp_path):
    src = backbones.create('rs_resnet18', num_classes=0)
    for i, bn in enumerate(src.stem.bn1.bns):
        bn.weight.data.fill_(float(i))
    path = str(tmp_path / 'rs.pth')
    meta = {'variant': 'rs_resnet18', 'resolutions': [224, 192, 160, 128, 96]}
    torch.save({'state_dict': src.state_dict(), 'meta': meta}, path)
    dst = backbones.create('rs_resnet18', num_classes=0, resolutions=(513, 321, 129))
    with pytest.raises(CheckpointMismatchError, match='private_bn_map'):
        load_pretrained(dst, path)
    rep = load_pretrained(dst, path, private_bn_map=[224, 160, 96])
    assert [bn.weight[0].item() for bn in dst.stem.bn1.bns] == [0.0, 2.0, 4.0]
    assert rep.conversion['private_bn_map'] == [0, 2, 4]


def test_convert_records_source_and_normalisation(tmp_path):
    if not os.path.isdir(MANIFEST_DIR):
        pytest.skip(f'the official checkpoint manifests are missing: {MANIFEST_DIR}')
    path, _ = write_official('parallel_resnet18', str(tmp_path / 'p18.pth.tar'))
    sd, meta, release, transfer = convert(path)
    assert meta['pixel_mean'] == [0.0, 0.0, 0.0] and meta['pixel_std'] == [255.0, 255.0, 255.0]
    assert meta['eval_protocol'] == 'rsnet-multires' and meta['resolutions'] == [224, 192, 160, 128, 96]
    assert transfer.summary()['dropped'] == 1 and meta['conversion_dropped'][0][0] == 'module.alpha'


@pytest.mark.parametrize('layout', fast_subset(['detectron2_fpn', 'detectron2_c4', 'mmengine'],
                                               ['detectron2_fpn', 'mmengine']))
def test_a_detector_or_segmentor_checkpoint_gives_its_backbone_weights(tmp_path, layout):
    """A whole-model checkpoint (Detectron2 ``{'model'}`` with ``backbone.bottom_up.net.*`` / ``backbone.net.*``, or
    MMEngine ``{'state_dict'}`` with ``backbone.model.*``) loads its backbone part; the neck and heads are dropped
    and reported (before: 'wrong model or wrong origin')."""
    src = backbones.create('resnext50_elastic', num_classes=0)
    prefix = {'detectron2_fpn': 'backbone.bottom_up.net.', 'detectron2_c4': 'backbone.net.',
              'mmengine': 'backbone.model.'}[layout]
    sd = {prefix + k: v for k, v in src.state_dict().items()}
    sd['backbone.fpn_lateral2.weight' if 'detectron2' in layout else 'decode_head.conv_seg.weight'] = torch.ones(2, 2)
    sd['roi_heads.box_predictor.cls_score.weight'] = torch.ones(3, 2)
    path = tmp_path / 'whole.pth'
    torch.save({'model': sd, '__author__': 'dynscale'} if 'detectron2' in layout else {'state_dict': sd, 'meta': {}},
               path)
    m = backbones.create('resnext50_elastic', num_classes=0, pretrained=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    from backbones.pretrained import load_pretrained
    report = load_pretrained(backbones.create('resnext50_elastic', num_classes=0), str(path))
    dropped = [k for k, _ in report.dropped]
    assert 'roi_heads.box_predictor.cls_score.weight' in dropped and len(dropped) == 2


def test_a_wider_width_range_than_the_release_is_noted_and_logged(tmp_path):
    """MutualNet's MobileNet v2 was trained on widths 0.7-1.0; the framework configs train 0.35-1.0 from it: the
    load report (which every adapter logs at start) and a warning say so; the release's own range says nothing."""
    path, _ = write_official('mutualnet_mobilenet_v2', str(tmp_path / 'mutualnet_mobilenet_v2.pt'))
    with pytest.warns(UserWarning, match='trained on widths 0.7-1, this model trains 0.35-1'):
        report = backbones.load_pretrained(backbones.create('us_mobilenet_v2', width_range=(0.35, 1.0),
                                                            num_classes=0), path, strict=False)
    assert report.notes and report.notes[0] in report.summary()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no note, so no warning
        report = backbones.load_pretrained(backbones.create('us_mobilenet_v2', width_range=(0.7, 1.0),
                                                            num_classes=0), path, strict=False)
    assert report.notes == []
    # the converted file (what the framework configs load) carries the release's range: the same note
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
    import convert_weights
    conv = str(tmp_path / 'us_mobilenet_v2_mutualnet_in1k.pth')
    assert convert_weights.main([path, conv, '--model', 'us_mobilenet_v2']) == 0
    with pytest.warns(UserWarning, match='trained on widths 0.7-1, this model trains 0.35-1'):
        report = backbones.load_pretrained(backbones.create('us_mobilenet_v2', width_range=(0.35, 1.0),
                                                            num_classes=0), conv, strict=False)
    assert report.notes


@needs_manifests
@pytest.mark.parametrize('name', fast_subset(['resnext50_elastic', 'densenet201_elastic', 'us_mobilenet_v2',
                                              'parallel_resnet18'], ['resnext50_elastic']))
def test_pretrained_build_skips_the_draws_the_file_overwrites(name, tmp_path, monkeypatch):
    """Issue 27: ``create(pretrained=...)`` records the build's ``torch.nn.init`` calls instead of drawing
    (backbones/pretrained/deferred_init.py): the model equals the one built with every draw made, tensor for
    tensor, and ``torch.nn.init`` is left as it was."""
    import contextlib

    from backbones.pretrained import deferred_init
    path, _ = write_official(name, str(tmp_path / f'{name}.pth.tar'))
    writers = {n: getattr(nn.init, n) for n in deferred_init._WRITERS}
    fast = backbones.create(SUPPORTED[name], pretrained=path)
    assert {n: getattr(nn.init, n) for n in writers} == writers
    monkeypatch.setattr(deferred_init.DeferredInit, 'recording', lambda self: contextlib.nullcontext(self))
    ref = backbones.create(SUPPORTED[name], pretrained=path)  # every draw made, then overwritten
    a, b = fast.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_backbone_checkpoint_builds_a_model_without_classifier(tmp_path):
    """A checkpoint without classifier (``save_backbone_checkpoint``: what a detector or a segmentor keeps) builds
    ``num_classes=0`` unless ``num_classes`` is given: no 1000-class head of random weights is made up, and
    ``forward`` returns the stage maps; with ``num_classes`` a classifier is added on the loaded stages."""
    from backbones.checkpoint import save_backbone_checkpoint
    torch.manual_seed(0)
    src = backbones.create('rs_resnet18', num_classes=10)
    path = save_backbone_checkpoint(src, str(tmp_path / 'backbone.pth'))
    model = backbones.create('rs_resnet18', pretrained=path).eval()
    assert model.head is None and not [k for k in model.state_dict() if k.startswith('head.')]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert isinstance(out, dict) and set(out) == {f'stage{i}' for i in range(1, 5)}
    torch.testing.assert_close(model.stem[0].weight, src.stem[0].weight)
    with_head = backbones.create('rs_resnet18', pretrained=path, num_classes=3)
    assert with_head.head[-1].out_features == 3
    torch.testing.assert_close(with_head.stem[0].weight, src.stem[0].weight)
    full = save_backbone_checkpoint(src, str(tmp_path / 'full.pth'), drop_head=False)
    kept = backbones.create('rs_resnet18', pretrained=full)
    torch.testing.assert_close(kept.head[-1].weight, src.head[-1].weight)  # a file with classifier keeps it


@needs_manifests
def test_tensors_the_file_does_not_write_are_initialised_after_the_load(tmp_path):
    """A backbone file without classifier into a model with one: the new classifier gets the family's
    initialisation at the replay (Elastic: N(0, 0.01) weight, zero bias), not the uninitialised memory of the
    deferred build; the loaded tensors are the file's."""
    torch.manual_seed(0)
    path, _ = write_official('resnext50_elastic', str(tmp_path / 'r.pth.tar'))
    headless = backbones.create('resnext50_elastic', pretrained=path, num_classes=0)
    torch.save({'state_dict': headless.state_dict(), 'meta': {'variant': 'resnext50_elastic'}}, tmp_path / 'bb.pth')
    model = backbones.create('resnext50_elastic', pretrained=str(tmp_path / 'bb.pth'), num_classes=10)
    w, b = model.head[-1].weight.detach(), model.head[-1].bias.detach()
    assert torch.isfinite(w).all() and 0.008 < float(w.std()) < 0.012 and float(b.abs().max()) == 0.0
    assert torch.equal(model.stem.conv.weight, headless.stem.conv.weight)
