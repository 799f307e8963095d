"""allenai/elastic ImageNet files -> dynscale Elastic ResNeXt, DenseNet-201 and DLA-X models.

Facts (``../shared/reference/official_checkpoints/README.md``, allenai/elastic section; manifests
``resnext*.json``, ``se_resnext50*.json``, ``densenet201*.json``, ``dla*.json``): container ``{'epoch', 'arch',
'state_dict', 'best_err1', 'optimizer'}``, every key prefixed ``module.``.

**Two-branch units.**  An Elastic unit stores a full-resolution branch and a ``_d`` twin (registered first).
Where the dynscale unit is Elastic both are kept one-to-one under the same names.  Where it is not, both
branches ran at full resolution and form one wider unit: dynscale stores them merged - the layers before the
sum concatenated along the output channels, the last convolution of each branch (whose outputs are summed)
along the input channels, full branch first, ``_d`` second - which equals the sum up to float rounding.

* ResNeXt: **every** bottleneck (baselines included) has two 16-group branches ``conv1 bn1 conv2 bn2 conv3``
  (+ ``_d``), summed before ``bn3``; ``conv3`` merges along the input channels.  SE ``selayer.conv1/2`` ->
  ``se.fc1/fc2``; stem ``conv1``/``bn1`` -> ``stem.conv``/``stem.bn``; ``layerN`` -> ``stages.N-1``; ``fc`` ->
  ``head.2``.
* DenseNet (``features.{conv0,norm0,denseblockB.denselayerL.*,transitionT.{norm,conv},norm_final}``,
  ``classifier``): an Elastic dense layer has ``conv1_d, norm2_d, conv2_d`` besides the shared ``norm1`` and
  ``conv1, norm2, conv2``; ``conv2`` merges along the input channels.  ``conv0``/``norm0`` -> ``stem.conv``/
  ``stem.bn``; ``denseblockB.denselayerL`` -> ``stages.B-1.block.denselayerL``; ``transitionT`` ->
  ``stages.T.transition``; ``norm_final`` -> ``stages.3.norm_final``; ``classifier`` -> ``head.2``.  The
  baseline's layers have one branch and map one-to-one.
* DLA-X (``base_layer``, ``level0..5``, ``fc``): the baseline ``BottleneckX`` has one branch; an Elastic
  model's bottlenecks have two (``conv3`` merges along the input channels).  ``base_layer``/``level0``/
  ``level1`` -> ``stem.base_layer``/``stem.level0``/``stem.level1``; ``levelN.<path>`` -> ``stages.N-2.<path>``;
  the 1x1-conv classifier ``fc`` ``[C, 1024, 1, 1]`` -> ``head.2`` (Linear, reshaped).  The ``project`` of
  every tree node of depth > 1 (a node without its own ``root``) is never used by the authors' forward
  (:mod:`backbones.dla`): those tensors are dropped and listed in the conversion record.
"""
import re

from .release import Release, UnsupportedCheckpointError, count_blocks, strip_module

ORIGIN = 'allenai/elastic'
#: official ResNeXt architecture -> (dynscale model, units per stage, SE)
ARCHS = {
    'resnext50': ('resnext50_32x4d', [3, 4, 6, 3], False),
    'resnext101': ('resnext101_32x4d', [3, 4, 23, 3], False),
    'se_resnext50': ('se_resnext50', [3, 4, 6, 3], True),
    'resnext50_elastic': ('resnext50_elastic', [6, 8, 5, 3], False),
    'resnext101_elastic': ('resnext101_elastic', [12, 14, 20, 3], False),
    'se_resnext50_elastic': ('se_resnext50_elastic', [6, 8, 5, 3], True),
}
#: official DenseNet architecture -> (dynscale model, dense layers per block, Elastic)
DENSENET_ARCHS = {
    'densenet201': ('densenet201', [6, 12, 48, 32], False),
    'densenet201_elastic': ('densenet201_elastic', [10, 20, 40, 30], True),
}
#: official DLA architecture -> (dynscale model, tree depths of levels 2-5, Elastic, cardinality)
DLA_ARCHS = {
    'dla60x': ('dla60x', [1, 2, 3, 1], False, 32),
    'dla60x_elastic': ('dla60x_elastic', [1, 2, 3, 1], True, 32),
    'dla102x': ('dla102x', [1, 3, 4, 1], False, 32),
    'dla102x_elastic': ('dla102x_elastic', [3, 3, 3, 1], True, 50),
    # the paper's DLA-X102+sElastic: no factory (and no release) in the authors' code, but a file trained with
    # their classes (DLA([1, 1, 1, 3, 4, 1], block=BottleneckXElastic, residual_root=True)) has this layout
    'dla102x_selastic': ('dla102x_selastic', [1, 3, 4, 1], True, 32),
}
_BRANCH = ('conv1', 'bn1', 'conv2', 'bn2', 'conv3')
_DENSE_BRANCH = ('conv1', 'norm2', 'conv2')
_UNUSED_PROJECTION = ("allenai/elastic DLA Tree.project of a depth > 1 node: computed by the authors' forward but "
                      "never used (the first child recomputes its own), so dynscale has no such tensor")


def _release(src, arch, model, num_classes):
    return Release(origin=ORIGIN, name=arch, models=(model,), num_classes=num_classes, convert=convert,
                   meta={'official_arch': arch, 'official_epoch': src.container.get('epoch'),
                         'official_best_err1': src.container.get('best_err1')})


def _identify_densenet(src, p):
    sd = src.state_dict
    pat = re.compile('^' + re.escape(p) + r'features\.denseblock(\d+)\.denselayer(\d+)\.')
    seen = {}
    for k in sd:
        m = pat.match(k)
        if m:
            seen[int(m.group(1))] = max(seen.get(int(m.group(1)), 0), int(m.group(2)))
    blocks = [seen[b] for b in sorted(seen)]
    elastic = any('.conv1_d.' in k for k in sd)
    arch = src.container.get('arch')
    if arch not in DENSENET_ARCHS:
        matches = [a for a, (_, n, e) in DENSENET_ARCHS.items() if n == blocks and e == elastic]
        if not matches:
            raise UnsupportedCheckpointError(
                f'{src.path or "this file"} is an allenai/elastic DenseNet file with dense layers {blocks} per '
                f'block, Elastic={elastic} (arch {arch!r}) that matches none of {sorted(DENSENET_ARCHS)}')
        arch = matches[0]
    cls = sd.get(p + 'classifier.weight')
    return _release(src, arch, DENSENET_ARCHS[arch][0], 0 if cls is None else cls.shape[0])


def _dla_layout(sd, p):
    """(tree depths of levels 2-5, Elastic, cardinality) of an allenai/elastic DLA state dict."""
    depth = {}
    pat = re.compile('^' + re.escape(p) + r'level([2-5])((?:\.tree[12])+)\.conv1(_d)?\.weight$')
    for k in sd:
        m = pat.match(k)
        if m:
            n = int(m.group(1))
            depth[n] = max(depth.get(n, 0), m.group(2).count('.tree'))
    elastic = any('.conv1_d.' in k for k in sd)
    card = None
    for k, t in sd.items():
        if k.startswith(p + 'level2.') and k.endswith('.conv2.weight') and t.dim() == 4 and t.shape[1]:
            card = t.shape[0] // t.shape[1] * (2 if elastic else 1)  # groups = out / (in per group)
            break
    return [depth.get(n, 0) for n in range(2, 6)], elastic, card


def _identify_dla(src, p):
    sd = src.state_dict
    levels, elastic, card = _dla_layout(sd, p)
    arch = src.container.get('arch')
    if arch not in DLA_ARCHS:
        matches = [a for a, (_, lv, e, c) in DLA_ARCHS.items() if lv == levels and e == elastic and c == card]
        if not matches:
            raise UnsupportedCheckpointError(
                f'{src.path or "this file"} is an allenai/elastic DLA file with tree depths {levels} (levels 2-5), '
                f'Elastic={elastic}, cardinality {card} (arch {arch!r}) that matches none of {sorted(DLA_ARCHS)}')
        arch = matches[0]
    fc = sd.get(p + 'fc.weight')
    return _release(src, arch, DLA_ARCHS[arch][0], 0 if fc is None else fc.shape[0])


def identify(src):
    """A :class:`Release` for an allenai/elastic file (ResNeXt, DenseNet or DLA-X), None for anything else.

    The architecture is the container's ``arch`` when it is a known one, else inferred from the keys (units per
    stage and SE; dense layers per block; tree depths, two-branch bottlenecks and cardinality).

    Raises:
        UnsupportedCheckpointError: an allenai/elastic file whose layout matches no official architecture.
    """
    sd = src.state_dict
    p = strip_module(sd)
    if any(k.startswith(p + 'features.denseblock') for k in sd):
        return _identify_densenet(src, p)
    if any(k.startswith(p + 'base_layer.') for k in sd) and any(k.startswith(p + 'level2.') for k in sd):
        return _identify_dla(src, p)
    if p + 'layer1.0.conv1_d.weight' not in sd:
        return None
    layers = count_blocks(sd, p)
    se = any('.selayer.' in k for k in sd)
    arch = src.container.get('arch')
    if arch not in ARCHS:  # no (known) arch name: infer it from the units per stage and SE
        matches = [a for a, (_, n, s) in ARCHS.items() if n == layers and s == se]
        # units [3, 4, 6, 3] without an arch name: the baseline (sElastic has no released file)
        if not matches:
            raise UnsupportedCheckpointError(
                f'{src.path or "this file"} is an allenai/elastic ResNeXt file with units {layers}, SE={se} '
                f'(arch {src.container.get("arch")!r}) that matches none of {sorted(ARCHS)}')
        arch = matches[0]
    fc = sd.get(p + 'fc.weight')
    return _release(src, arch, ARCHS[arch][0], 0 if fc is None else fc.shape[0])


# ------------------------------------------------------------------------------------------ renaming
def _split_branch(unit, rest, branch_names, elastic_targets):
    """``(target_prefix, role)`` of layer ``rest`` of a two-branch unit: one-to-one (role None) in an Elastic
    target unit, else ``'full'`` / ``'low'`` for the merged target layer."""
    base = rest[:-2] if rest.endswith('_d') else rest
    if base in branch_names and unit not in elastic_targets:
        return f'{unit}.{base}', ('low' if rest.endswith('_d') else 'full')
    return f'{unit}.{rest}', None


def _resnext_target(src_prefix, elastic_targets):
    fixed = {'conv1': 'stem.conv', 'bn1': 'stem.bn', 'fc': 'head.2'}
    if src_prefix in fixed:
        return fixed[src_prefix], None
    m = re.match(r'^layer(\d+)\.(\d+)\.(.+)$', src_prefix)
    if not m:
        return None, None
    unit = f'stages.{int(m.group(1)) - 1}.{m.group(2)}'
    rest = m.group(3)
    if rest in ('selayer.conv1', 'selayer.conv2'):
        return f'{unit}.se.fc{rest[-1]}', None
    return _split_branch(unit, rest, _BRANCH, elastic_targets)


def _densenet_target(src_prefix, elastic_targets):
    fixed = {'features.conv0': 'stem.conv', 'features.norm0': 'stem.bn', 'features.norm_final': 'stages.3.norm_final',
             'classifier': 'head.2'}
    if src_prefix in fixed:
        return fixed[src_prefix], None
    m = re.match(r'^features\.transition(\d+)\.(norm|conv)$', src_prefix)
    if m:
        return f'stages.{m.group(1)}.transition.{m.group(2)}', None
    m = re.match(r'^features\.denseblock(\d+)\.(denselayer\d+)\.(.+)$', src_prefix)
    if not m:
        return None, None
    return _split_branch(f'stages.{int(m.group(1)) - 1}.block.{m.group(2)}', m.group(3), _DENSE_BRANCH,
                         elastic_targets)


def _dla_target(src_prefix, elastic_targets):
    if src_prefix == 'fc':
        return 'head.2', None
    m = re.match(r'^(base_layer|level0|level1)\.(\d+)$', src_prefix)
    if m:
        return f'stem.{m.group(1)}.{m.group(2)}', None
    m = re.match(r'^level([2-5])\.(.+)$', src_prefix)
    if not m:
        return None, None
    path = f'stages.{int(m.group(1)) - 2}.{m.group(2)}'
    unit, _, rest = path.rpartition('.')
    if re.fullmatch(r'(conv[123]|bn[12])(_d)?', rest):
        return _split_branch(unit, rest, _BRANCH, elastic_targets)
    return path, None


# ------------------------------------------------------------------------------------------ conversion
def convert(src, template, transfer, model_name):
    """Fill ``transfer`` from an allenai/elastic state dict (see the module docstring for the rules)."""
    from .mapping import model_layers, parse_layers

    p = strip_module(src.state_dict)
    layers, loose = parse_layers(src.state_dict, p)
    targets = {t.prefix: t for t in model_layers(template)}
    prefixes = {layer.prefix for layer in layers}
    if 'features.conv0' in prefixes:
        rename, merge_in, single_ok = _densenet_target, 'conv2', True
    elif 'base_layer.0' in prefixes:
        rename, merge_in, single_ok = _dla_target, 'conv3', True
    else:
        rename, merge_in, single_ok = _resnext_target, 'conv3', False
    elastic_units = {t.rsplit('.', 1)[0] for t in targets if t.endswith('.conv1_d')}
    plan = {}
    for layer in layers:
        if rename is _dla_target and re.search(r'\.project\.[01]$', layer.prefix):
            node = layer.prefix.rsplit('.project.', 1)[0]
            if node + '.root.conv' not in prefixes:  # a depth > 1 tree node: the projection is never used
                for key in layer.keys:
                    transfer.drop(key, _UNUSED_PROJECTION)
                continue
        tp, role = rename(layer.prefix, elastic_units)
        if tp is None or tp not in targets:
            transfer.errors.append(f'{ORIGIN} layer {layer.describe()} has no place in {model_name}'
                                   + (f' (expected {tp})' if tp else ''))
            continue
        plan.setdefault(tp, {})[role] = layer
    for tp, tgt in targets.items():
        roles = plan.get(tp)
        if roles is None:
            continue  # reported as unfilled by Transfer.finish
        if None in roles:
            transfer.layer(roles[None], tgt)
        elif set(roles) == {'full', 'low'}:
            transfer.merged([roles['full'], roles['low']], tgt, dim=1 if tp.endswith('.' + merge_in) else 0)
        elif set(roles) == {'full'} and single_ok:  # a single-branch baseline (DenseNet, DLA-X)
            transfer.layer(roles['full'], tgt)
        else:
            transfer.errors.append(f'{tp}: needs both branches and their _d twins, got {sorted(roles)}')
    for k in loose:
        transfer.errors.append(f'{k} is not a layer tensor')


def cause_hint(release):
    """Likely cause of a mapping failure, for the error message."""
    return (f'the file is {ORIGIN} {release.name!r}; load it into dynscale {release.models[0]!r} '
            f'(a different unit layout, cardinality or SE setting cannot take these tensors)')
