"""allenai/elastic ImageNet files -> dynscale Elastic ResNeXt models.

Facts (``../shared/reference/official_checkpoints/README.md``, allenai/elastic section; manifests
``resnext50*.json``, ``resnext101*.json``, ``se_resnext50*.json``):

* container ``{'epoch', 'arch', 'state_dict', 'best_err1', 'optimizer'}``, every key prefixed ``module.``;
* **every** bottleneck stores two 16-group branches ``conv1_d bn1_d conv2_d bn2_d conv3_d`` (registered first)
  and ``conv1 bn1 conv2 bn2 conv3``, summed before ``bn3``.  In Elastic units the ``_d`` branch is the
  half-resolution one and dynscale keeps both under the same names.  In every other unit (all units of
  the baselines; the stride-2 first units of stages 2-4 and all of stage 4 in the Elastic models) both
  branches run at full resolution, so the pair is one 32-group bottleneck: dynscale stores it merged
  (``conv1``/``bn1``/``conv2``/``bn2`` concatenated along the output channels, ``conv3`` along the input
  channels, full branch first, ``_d`` second) - the sum of the two branches equals the merged unit up to
  float rounding;
* SE: ``selayer.conv1``/``selayer.conv2`` -> ``se.fc1``/``se.fc2``; stem ``conv1``/``bn1`` -> ``stem.conv``/
  ``stem.bn``; ``layerN`` -> ``stages.N-1``; classifier ``fc`` -> ``head.2``.

DenseNet-201 and DLA-X files are recognised and refused (no dynscale model yet).
"""
import re

from .release import Release, UnsupportedCheckpointError, count_blocks, strip_module

ORIGIN = 'allenai/elastic'
#: official architecture -> (dynscale model, units per stage, SE)
ARCHS = {
    'resnext50': ('resnext50_32x4d', [3, 4, 6, 3], False),
    'resnext101': ('resnext101_32x4d', [3, 4, 23, 3], False),
    'se_resnext50': ('se_resnext50', [3, 4, 6, 3], True),
    'resnext50_elastic': ('resnext50_elastic', [6, 8, 5, 3], False),
    'resnext101_elastic': ('resnext101_elastic', [12, 14, 20, 3], False),
    'se_resnext50_elastic': ('se_resnext50_elastic', [6, 8, 5, 3], True),
}
_BRANCH = ('conv1', 'bn1', 'conv2', 'bn2', 'conv3')


def identify(src):
    """A :class:`Release` for an allenai/elastic file, None for anything else.

    Raises:
        UnsupportedCheckpointError: an allenai/elastic DenseNet or DLA file (no dynscale model yet).
    """
    sd = src.state_dict
    p = strip_module(sd)
    if any(k.startswith((p + 'features.denseblock', p + 'base_layer.', p + 'level0.')) for k in sd):
        arch = src.container.get('arch', 'densenet/dla')
        raise UnsupportedCheckpointError(
            f'{src.path or "this file"} is a DenseNet / DLA-X file (arch {arch!r}); dynscale has no '
            f'DenseNet-201 or DLA-X model yet, so it cannot be converted')
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
    model = ARCHS[arch][0]
    fc = sd.get(p + 'fc.weight')
    return Release(origin=ORIGIN, name=arch, models=(model,), num_classes=0 if fc is None else fc.shape[0],
                   convert=convert, meta={'official_arch': arch, 'official_epoch': src.container.get('epoch'),
                                          'official_best_err1': src.container.get('best_err1')})


def _target_prefix(src_prefix, elastic_targets):
    """dynscale layer prefix (and merge role) of an allenai/elastic layer prefix.

    Returns:
        tuple: ``(target_prefix, role)`` with role ``None`` (one-to-one), ``'full'`` or ``'low'`` (two
        branches merged into one target), or ``(None, None)`` for an unknown prefix.
    """
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
    base = rest[:-2] if rest.endswith('_d') else rest
    if base in _BRANCH and unit not in elastic_targets:
        return f'{unit}.{base}', ('low' if rest.endswith('_d') else 'full')
    return f'{unit}.{rest}', None


def convert(src, template, transfer, model_name):
    """Fill ``transfer`` from an allenai/elastic state dict (see the module docstring for the rules)."""
    from .mapping import model_layers, parse_layers

    layers, loose = parse_layers(src.state_dict, strip_module(src.state_dict))
    targets = {t.prefix: t for t in model_layers(template)}
    elastic_units = {p.rsplit('.', 1)[0] for p in targets if p.endswith('.conv1_d')}
    plan = {}
    for layer in layers:
        tp, role = _target_prefix(layer.prefix, elastic_units)
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
            transfer.merged([roles['full'], roles['low']], tgt, dim=1 if tp.endswith('conv3') else 0)
        else:
            transfer.errors.append(f'{tp}: needs both branches {_BRANCH} and their _d twins, got {sorted(roles)}')
    for k in loose:
        transfer.errors.append(f'{k} is not a layer tensor')


def cause_hint(release):
    """Likely cause of a mapping failure, for the error message."""
    return (f'the file is {ORIGIN} {release.name!r}; load it into dynscale {release.models[0]!r} '
            f'(a different unit layout or SE setting cannot take these tensors)')
