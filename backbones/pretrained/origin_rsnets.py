"""yikaiw/RS-Nets files -> dynscale RS-Net models.

Facts (``../shared/reference/official_checkpoints/README.md``, RS-Nets section; manifests
``parallel_*.json``):

* container ``{'epoch', 'arch', 'state_dict', 'best_acc0', 'best_acc', 'optimizer'}``; keys prefixed ``module.``;
* the first key is ``module.alpha`` ``[N]``, the MRED ensemble scores: kept in the converted checkpoint's
  metadata (``rsnet_alpha``), not a model tensor (single-resolution inference does not use it);
* every conv / fc is wrapped in ``ModuleParallel`` (``<p>.module.weight``); ``BatchNorm2dParallel`` stores a
  private affine and private statistics per resolution at ``<p>.bn_<i>.*``, i following ``--sizes``
  (descending: 224, 192, 160, 128, 96) -> dynscale ``<p'>.bns.<i>.*``;
* inputs are **not normalised** (RGB in [0, 1]): the converted checkpoint says so and the plugins apply it;
* layers are paired by order (identical after dropping ``alpha``), shapes checked.
"""
from .normalization import UNIT_RANGE
from .release import Release, UnsupportedCheckpointError, count_blocks, strip_module

ORIGIN = 'yikaiw/RS-Nets'
SIZES = (224, 192, 160, 128, 96)
ARCHS = {'parallel_resnet18': 'rs_resnet18', 'parallel_resnet50': 'rs_resnet50',
         'parallel_resnet101': 'rs_resnet101', 'parallel_mobilenetv2': 'rs_mobilenet_v2'}


def identify(src, resolutions=None):
    """A :class:`Release` for an RS-Nets file, None for anything else.

    Args:
        src (SourceFile): the file.
        resolutions (tuple[int] | None): the training ``--sizes`` (descending) when the file has another
            number of private BNs than the released 5.

    Raises:
        UnsupportedCheckpointError: an RS-Nets architecture without dynscale model.
        CheckpointMismatchError: the number of private BNs does not match ``resolutions``.
    """
    sd = src.state_dict
    p = strip_module(sd)
    if not any('.bn_0.' in k for k in sd):
        return None
    arch = src.container.get('arch')
    if arch not in ARCHS:
        fc = sd.get(p + 'fc.module.weight')
        blocks = count_blocks(sd, p)
        if p + 'classifier.module.weight' in sd:
            arch = 'parallel_mobilenetv2'
        elif fc is not None and fc.shape[1] == 512 and blocks == [2, 2, 2, 2]:
            arch = 'parallel_resnet18'
        elif fc is not None and fc.shape[1] == 2048 and blocks == [3, 4, 6, 3]:
            arch = 'parallel_resnet50'
        elif fc is not None and fc.shape[1] == 2048 and blocks == [3, 4, 23, 3]:
            arch = 'parallel_resnet101'
        else:
            raise UnsupportedCheckpointError(
                f'{src.path or "this file"} is an RS-Nets file (arch {arch!r}, units {blocks}) with no dynscale model; '
                f'supported: {sorted(ARCHS)}')
    n = 1 + max(int(k.split('.bn_')[1].split('.')[0]) for k in sd if '.bn_' in k)
    res = tuple(resolutions) if resolutions else (SIZES if n == len(SIZES) else None)
    if res is None or len(res) != n:
        from ..checkpoint import CheckpointMismatchError
        raise CheckpointMismatchError(
            f'{src.path or "this file"} has {n} private BNs per layer; the released files have {len(SIZES)} for '
            f'{SIZES}. Pass resolutions=(...) (the training --sizes, descending, one per private BN)')
    cls = sd.get(p + 'fc.module.weight', sd.get(p + 'classifier.module.weight'))
    alpha = sd.get(p + 'alpha')
    return Release(
        origin=ORIGIN, name=arch, models=(ARCHS[arch],), num_classes=0 if cls is None else cls.shape[0],
        convert=convert, build_kwargs={'resolutions': tuple(int(r) for r in res)}, normalization=UNIT_RANGE,
        protocol='rsnet-multires',
        meta={'rsnet_alpha': None if alpha is None else [float(a) for a in alpha],
              'official_arch': arch, 'official_epoch': src.container.get('epoch'),
              'official_best_acc': src.container.get('best_acc')})


def convert(src, template, transfer, model_name):
    """Pair layers by order; ``alpha`` goes to the metadata (module docstring)."""
    from .mapping import model_layers, parse_layers

    p = strip_module(src.state_dict)
    layers, loose = parse_layers(src.state_dict, p)
    targets = model_layers(template)
    if len(layers) != len(targets):
        transfer.errors.append(f'{len(layers)} layers in the file, {len(targets)} in {model_name}')
    for s, t in zip(layers, targets):
        transfer.layer(s, t)
    for k in loose:
        if k == p + 'alpha':
            transfer.drop(k, 'MRED ensemble scores: kept in the metadata as rsnet_alpha')
        else:
            transfer.errors.append(f'{k} is not a layer tensor')


def cause_hint(release):
    """Likely cause of a mapping failure, for the error message."""
    return (f'{release.name} has one private BN per resolution {release.build_kwargs["resolutions"]}; the dynscale '
            f'model must be {release.models[0]!r} with as many resolutions')
