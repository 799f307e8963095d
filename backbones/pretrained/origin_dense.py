"""torchvision and timm ImageNet state dicts -> the dynscale models that start from dense weights.

Where starting a dynamic model from dense ImageNet weights is the established way (and where the
architectures are the same function), the file is mapped layer by layer:

==========================  ================================================================================
source architecture         dynscale models
==========================  ================================================================================
resnext50_32x4d             resnext50_32x4d (ResNeXt baseline of the Elastic family)
resnext101_32x4d (timm)     resnext101_32x4d
seresnext50_32x4d (timm)    se_resnext50 (SE ``se.fc1/fc2`` after ``bn3``, reduction 16, as torchvision's
                            ``SqueezeExcitation``)
resnet18 / 50 / 101         rs_resnet18 / 50 / 101: every private BN starts from the single BN
resnet50                    us_resnet50 at width 1.0 (MutualNet's ResNet-50 is torchvision's v1.5 layout)
vgg16_bn                    us_vgg16_bn at width 1.0
mobilenet_v2                us_mobilenet_v2 at width 1.0; rs_mobilenet_v2 (every private BN from the single BN)
resnetv2_50 / 101 (timm)    preact_resnet50/101, act_* and sact_*: the pre-activation ResNet the SACT paper
                            fine-tunes from (Figurnov et al. 2017, Sec. 4: "initialised from a pretrained
                            ResNet"); the halting branches keep their initialisation (bias -3)
==========================  ================================================================================

Inputs and evaluation follow the origin: torchvision files use the ImageNet mean/std and Resize 256 (bilinear) ->
CenterCrop 224; the timm files of the model zoo follow their ``pretrained_cfg`` (timm 1.0): bicubic, ``crop_pct``
0.875 (``seresnext50_32x4d.racm_in1k``, ``resnext101_32x4d.gluon_in1k``) or 0.95 with mean = std = 0.5
(``resnetv2_50/101.a1h_in1k``) -- :data:`_TIMM_EVAL`.

Slimmable targets receive statistics for width 1.0 only; the other widths are *uncalibrated* (no stored
statistics: evaluating them raises the ``calibrate_bn`` error until they are calibrated).  A dense file
offered to another architecture (e.g. torchvision ResNeXt-50 into ``resnext50_elastic``) is refused with
the model it fits (:meth:`backbones.pretrained.release.Release.check_target`).
"""
import re

from ..slimmable.ops import config_key
from .normalization import IMAGENET, INCEPTION
from .release import Release, count_blocks, strip_module

TARGETS = {
    'resnext50_32x4d': ('resnext50_32x4d',),
    'resnext101_32x4d': ('resnext101_32x4d',),
    'seresnext50_32x4d': ('se_resnext50',),
    'resnet18': ('rs_resnet18',),
    'resnet50': ('rs_resnet50', 'us_resnet50'),
    'resnet101': ('rs_resnet101',),
    'vgg16_bn': ('us_vgg16_bn',),
    'mobilenet_v2': ('us_mobilenet_v2', 'rs_mobilenet_v2'),
    'resnetv2_50': ('preact_resnet50', 'sact_resnet50', 'act_resnet50'),
    'resnetv2_101': ('preact_resnet101', 'sact_resnet101', 'act_resnet101'),
}
_TIMM_ONLY = ('seresnext50_32x4d', 'resnext101_32x4d', 'resnetv2_50', 'resnetv2_101')
_SLIMMABLE = ('us_resnet50', 'us_vgg16_bn', 'us_mobilenet_v2')
#: (evaluation protocol, input normalisation) of the timm-only architectures, from the pretrained_cfg of the model
#: zoo's tags (timm 1.0 ``get_pretrained_cfg``); torchvision files keep resize256-crop224 and IMAGENET
_TIMM_EVAL = {
    'seresnext50_32x4d': ('timm-bicubic-crop0.875', IMAGENET),
    'resnext101_32x4d': ('timm-bicubic-crop0.875', IMAGENET),
    'resnetv2_50': ('timm-bicubic-crop0.95', INCEPTION),
    'resnetv2_101': ('timm-bicubic-crop0.95', INCEPTION),
}


def _resnet_name(sd, p):
    bottleneck = p + 'layer1.0.conv3.weight' in sd
    blocks = count_blocks(sd, p)
    depth = 2 + (3 if bottleneck else 2) * sum(blocks)
    se = p + 'layer1.0.se.fc1.weight' in sd
    conv2 = sd.get(p + 'layer1.0.conv2.weight')
    width, per_group = conv2.shape[0], conv2.shape[1]
    groups = width // per_group
    if groups > 1:
        return f'{"se" if se else ""}resnext{depth}_{groups}x{per_group}d'
    base = 64 if bottleneck else width
    if width != base:
        return f'wide_resnet{depth}_{width // 64}'
    return f'{"se" if se else ""}resnet{depth}'


def architecture(src):
    """Name of the torchvision / timm architecture of a dense state dict, or None."""
    sd = src.state_dict
    p = strip_module(sd)
    if p + 'layer1.0.conv1.weight' in sd and p + 'conv1.weight' in sd and p + 'layer1.0.conv1_d.weight' not in sd:
        return _resnet_name(sd, p)
    if p + 'stem.conv.weight' in sd and p + 'stages.0.blocks.0.norm1.weight' in sd:
        blocks = count_blocks(sd, p, r'stages\.(\d+)\.blocks\.(\d+)\.')
        names = {(3, 4, 6, 3): 'resnetv2_50', (3, 4, 23, 3): 'resnetv2_101'}
        return names.get(tuple(blocks), f'resnetv2 {blocks}')
    w = sd.get(p + 'classifier.0.weight')
    if w is not None and w.dim() == 2 and w.shape[1] == 512 * 7 * 7:
        convs = sum(1 for k, v in sd.items()
                    if k.startswith(p + 'features.') and k.endswith('.weight') and v.dim() == 4)
        bn = any(k.startswith(p + 'features.') and k.endswith('running_mean') for k in sd)
        return f'vgg{convs + 3}{"_bn" if bn else ""}'
    last = sd.get(p + 'features.18.0.weight')
    if last is not None and tuple(last.shape) == (1280, 320, 1, 1) and p + 'classifier.1.weight' in sd:
        return 'mobilenet_v2'
    return None


def identify(src, origin=None):
    """A :class:`Release` for a torchvision / timm state dict, None for anything else.

    Args:
        src (SourceFile): the file.
        origin (str | None): ``'torchvision'`` or ``'timm'`` when known (the keys of their ResNets are equal).

    Raises:
        UnsupportedCheckpointError: a dense architecture no dynscale model takes (the message lists those
            that are supported).
    """
    from .release import UnsupportedCheckpointError

    arch = architecture(src)
    if arch is None:
        return None
    if arch not in TARGETS:
        raise UnsupportedCheckpointError(
            f'{src.path or "this file"} holds dense {arch} weights; dynscale maps only '
            + ', '.join(f'{a} -> {"/".join(m)}' for a, m in TARGETS.items()))
    sd = src.state_dict
    p = strip_module(sd)
    cls = [k for k in sd if k.startswith((p + 'fc.', p + 'classifier.', p + 'head.fc.')) and k.endswith('weight')]
    num_classes = sd[cls[-1]].shape[0] if cls else 0
    org = origin or ('timm' if arch in _TIMM_ONLY else 'torchvision')
    per_model = {m: {'width_list': (1.0,)} for m in _SLIMMABLE}
    protocol, normalization = _TIMM_EVAL.get(arch, ('resize256-crop224', IMAGENET))
    return Release(origin=org, name=arch, models=TARGETS[arch], num_classes=num_classes,
                   convert=convert_resnetv2 if arch.startswith('resnetv2') else convert,
                   per_model_kwargs=per_model, protocol=protocol, normalization=normalization,
                   meta={'dense_source': arch,
                         'stored_bn_configs_note': 'width 1.0 only (dense weights)' if arch in
                         ('resnet50', 'vgg16_bn', 'mobilenet_v2') else None})


def _natural(prefix):
    """Sort key giving the registration order of torchvision's VGG / MobileNet v2 (``features`` before
    ``classifier``, ``features.2.conv.10`` after ``features.2.conv.9``), whatever order the file stores the tensors
    in (safetensors files are sorted by name)."""
    parts = prefix.split('.')
    return [0 if parts[0] == 'features' else 1] + [(int(p), '') if p.isdigit() else (-1, p) for p in parts]


def _resnet_target(prefix, stem_conv, stem_bn):
    """dynscale layer prefix of a torchvision / timm ResNe(X)t layer (the block names are shared)."""
    fixed = {'conv1': stem_conv, 'bn1': stem_bn, 'fc': 'head.2'}
    if prefix in fixed:
        return fixed[prefix]
    m = re.match(r'^layer(\d+)\.(\d+)\.(.+)$', prefix)
    return f'stages.{int(m.group(1)) - 1}.{m.group(2)}.{m.group(3)}' if m else None


def convert(src, template, transfer, model_name):
    """ResNe(X)t by name (block names are the same in torchvision, timm and dynscale); VGG-16-BN and MobileNet v2
    (``features.N`` / ``classifier.N``) by the numeric order of their layer names.  Slimmable targets receive the
    statistics as those of width 1.0."""
    from .mapping import model_layers, parse_layers

    layers, loose = parse_layers(src.state_dict, strip_module(src.state_dict))
    targets = model_layers(template)
    w1 = [config_key(1.0)]
    if any(s.prefix.startswith('layer1.') for s in layers):
        by_prefix = {t.prefix: t for t in targets}
        stem_conv = next(t.prefix for t in targets if t.kind == 'conv')
        stem_bn = next(t.prefix for t in targets if t.kind in ('bn', 'slim_bn', 'private_bn'))
        pairs = []
        for s in layers:
            tp = _resnet_target(s.prefix, stem_conv, stem_bn)
            if tp not in by_prefix:
                transfer.errors.append(f'{src.path or "file"} layer {s.describe()} has no place in {model_name} '
                                       f'(expected {tp})')
                continue
            pairs.append((s, by_prefix[tp]))
    else:
        layers = sorted(layers, key=lambda s: _natural(s.prefix))
        if len(layers) != len(targets):
            transfer.errors.append(f'{len(layers)} layers in the file, {len(targets)} in {model_name}')
        pairs = list(zip(layers, targets))
    for s, t in pairs:
        transfer.layer(s, t, stats_to=w1 if t.kind == 'slim_bn' else None)
    for k in loose:
        transfer.errors.append(f'{k} is not a layer tensor')


def _resnetv2_target(prefix):
    fixed = {'stem.conv': 'stem.conv', 'norm': 'norm', 'head.fc': 'head.2', 'fc': 'head.2'}
    if prefix in fixed:
        return fixed[prefix]
    m = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.(.+)$', prefix)
    if not m:
        return None
    rest = 'downsample' if m.group(3) == 'downsample.conv' else m.group(3)
    return f'stages.{m.group(1)}.units.{m.group(2)}.{rest}'


def convert_resnetv2(src, template, transfer, model_name):
    """timm ResNetV2 (pre-activation) -> dynscale pre-activation ResNet by name; halting branches stay new."""
    from .mapping import model_layers, parse_layers

    layers, loose = parse_layers(src.state_dict, strip_module(src.state_dict))
    targets = {t.prefix: t for t in model_layers(template)}
    for s in layers:
        tp = _resnetv2_target(s.prefix)
        if tp not in targets:
            transfer.errors.append(f'timm layer {s.describe()} has no place in {model_name} (expected {tp})')
            continue
        transfer.layer(s, targets[tp])
    for t in targets.values():
        if '.halting.' in f'.{t.prefix}.':
            for k in t.keys:
                transfer.allow_new(k, 'SACT/ACT halting branch: not in the dense network, initialised as in the '
                                      'paper (bias -3)')
    for k in loose:
        transfer.errors.append(f'{k} is not a layer tensor')


def cause_hint(release):
    """Likely cause of a mapping failure, for the error message."""
    return f'{release.origin} {release.name} fits dynscale {", ".join(release.models)}'
