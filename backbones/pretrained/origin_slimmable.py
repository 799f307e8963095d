"""JiahuiYu/slimmable_networks (US-Nets) and taoyang1122/MutualNet files -> dynscale slimmable models.

Facts (``../shared/reference/official_checkpoints/README.md``; manifests ``us_mobilenet_v*.json``,
``mutualnet_*.json``):

* containers: US-Nets ``{'model': sd}``; MutualNet ``{'model', 'optimizer', 'last_epoch'}``; keys prefixed
  ``module.``;
* ``USBatchNorm2d`` at ``<p>``: shared max-width affine ``<p>.weight/bias`` and private statistics of the
  i-th width of the training config's ``width_mult_list`` at ``<p>.bn.<i>.running_*``.  **The file does not
  store the widths**: they come from the released configs (US-MobileNet v1: 31 widths 0.25..1.0,
  v2: 27 widths 0.35..1.0; MutualNet v1 [0.25, 1.0], v2 [0.7, 0.9, 1.0], ResNet-50 [0.9, 1.0]), and
  every entry's length is checked against the channel rule at its width;
* US-MobileNet v2's ``features.18.1`` is a plain BN after the unslimmed 1280-channel conv with **one** set of
  statistics used at every width: dynscale keeps per-width statistics there, so the set is copied into
  every width's slot (outputs at the stored widths are identical);
* MutualNet's own loader is positional, so layers are paired **by order** (the layer order of the files is
  that of the dynscale models; shapes are checked layer by layer).  Its stored statistics are loaded
  (nothing is lost) but MutualNet's protocol recalibrates every (width, resolution) before evaluating
  (``protocol='mutualnet-recalibrate'``, ``calibration_required`` in the metadata);
* S-Nets / AutoSlim (``SwitchableBatchNorm2d`` with a private affine per width) and MutualNet's 1.6x
  MobileNet v1 have no dynscale model and are refused.
"""
from ..slimmable.ops import config_key
from .release import Release, UnsupportedCheckpointError, strip_module

US = 'JiahuiYu/slimmable_networks'
MUTUALNET = 'taoyang1122/MutualNet'


def _steps(lo, hi, step=0.025):
    n = int(round((hi - lo) / step))
    return [round(lo + i * step, 4) for i in range(n + 1)]


#: (dynscale model, origin) -> (width_range, width_mult_list of the released training config)
WIDTH_LISTS = {
    ('us_mobilenet_v1', US): ((0.25, 1.0), _steps(0.25, 1.0)),
    ('us_mobilenet_v2', US): ((0.35, 1.0), _steps(0.35, 1.0)),
    ('us_mobilenet_v1', MUTUALNET): ((0.25, 1.0), [0.25, 1.0]),
    ('us_mobilenet_v2', MUTUALNET): ((0.7, 1.0), [0.7, 0.9, 1.0]),
    ('us_resnet50', MUTUALNET): ((0.9, 1.0), [0.9, 1.0]),
}
#: stem conv and classifier input at max width of each dynscale model
_SIGNATURES = {'us_mobilenet_v1': ((32, 3, 3, 3), 1024), 'us_mobilenet_v2': ((32, 3, 3, 3), 1280),
               'us_resnet50': ((64, 3, 7, 7), 2048)}


def _switch_counts(sd):
    import re
    pat = re.compile(r'\.bn\.(\d+)\.running_mean$')
    per = {}
    for k in sd:
        m = pat.search(k)
        if m:
            p = k[:m.start()]
            per[p] = max(per.get(p, 0), int(m.group(1)) + 1)
    return per


def identify(src, width_list=None):
    """A :class:`Release` for a US-Nets or MutualNet file, None for anything else.

    Args:
        src (SourceFile): the file.
        width_list (list[float] | None): the training config's ``width_mult_list`` when it is not one of the
            released ones (the file does not store it).

    Raises:
        UnsupportedCheckpointError: S-Nets / AutoSlim files, MutualNet's 1.6x MobileNet v1, or a slimmable
            file of an unknown architecture.
        CheckpointMismatchError: the number of stored widths fits no released config and no ``width_list``
            was given.
    """
    sd = src.state_dict
    p = strip_module(sd)
    if any(k.endswith(('.bn.0.weight',)) for k in sd):
        raise UnsupportedCheckpointError(
            f'{src.path or "this file"} is a slimmable_networks S-Net / AutoSlim file (SwitchableBatchNorm2d: a '
            f'private affine per width); dynscale\'s slimmable models share one affine over all widths (US-Nets), '
            f'so it cannot be converted')
    counts = _switch_counts(sd)
    if not counts:
        return None
    stem = sd.get(p + 'features.0.0.weight')
    cls = [k for k in sd if k.startswith(p + 'classifier') and k.endswith('.weight')]
    model = None
    for name, (stem_shape, feat) in _SIGNATURES.items():
        if stem is not None and tuple(stem.shape) == stem_shape and cls and sd[cls[-1]].shape[1] == feat:
            model = name
    if model is None:
        shape = None if stem is None else tuple(stem.shape)
        raise UnsupportedCheckpointError(
            f'{src.path or "this file"} is a US-Net / MutualNet file whose stem {shape} and classifier do not match '
            f'any dynscale slimmable model at max width (MutualNet\'s 1.6x MobileNet v1 has a wider max width '
            f'than us_mobilenet_v1); it cannot be converted')
    n = max(counts.values())
    mutual_container = bool({'optimizer', 'last_epoch'} & set(src.container_keys))
    candidates = [MUTUALNET, US] if mutual_container else [US, MUTUALNET]
    origin, widths = None, None
    if width_list is not None:
        origin, widths = candidates[0], sorted(float(w) for w in width_list)
        wr = (widths[0], widths[-1])
    else:
        for org in candidates:
            entry = WIDTH_LISTS.get((model, org))
            if entry and len(entry[1]) == n:
                origin, (wr, widths) = org, entry
                break
    if widths is None:
        from ..checkpoint import CheckpointMismatchError
        known = {org: WIDTH_LISTS[(model, org)][1] for (m, org) in WIDTH_LISTS if m == model}
        raise CheckpointMismatchError(
            f'{src.path or "this file"} is a {model} slimmable file with private statistics for {n} widths, which '
            f'matches no released width_mult_list ({", ".join(f"{o}: {len(w)} widths" for o, w in known.items())}); '
            f'pass width_list=[...] (the training config\'s width_mult_list) to load_pretrained / '
            f'--width-list to tools/convert_weights.py')
    if len(widths) != n:
        from ..checkpoint import CheckpointMismatchError
        raise CheckpointMismatchError(f'width_list has {len(widths)} widths but the file stores statistics for {n}')
    mutual = origin == MUTUALNET
    cls_w = sd[cls[-1]]
    return Release(
        origin=origin, name='mutualnet_' + model.replace('us_', '') if mutual else model,
        models=(model,), num_classes=cls_w.shape[0], convert=convert,
        build_kwargs={'width_range': tuple(wr), 'width_list': tuple(widths)},
        protocol='mutualnet-recalibrate' if mutual else 'usnet-stored',
        meta={'stored_bn_configs': [[w, None] for w in widths], 'width_mult_list': list(widths),
              'calibration_required': mutual,
              'statistics_note': ('MutualNet recalibrates every (width, resolution) before evaluating; the stored '
                                  'statistics are training-time running averages' if mutual else
                                  'calibrated post-statistics of every listed width (US-Nets)'),
              'official_last_epoch': src.container.get('last_epoch')})


def convert(src, template, transfer, model_name):
    """Pair source and template layers by order and move the tensors (module docstring)."""
    from .mapping import model_layers, parse_layers

    layers, loose = parse_layers(src.state_dict, strip_module(src.state_dict))
    targets = model_layers(template)
    widths = list(template.width_list)
    # source width index -> dynscale config key (widths sorted ascending, as width_mult_list)
    switch_map = {i: config_key(w) for i, w in enumerate(widths)}
    if len(layers) != len(targets):
        transfer.errors.append(f'{len(layers)} layers in the file, {len(targets)} in {model_name}')
    for s, t in zip(layers, targets):
        if t.kind == 'slim_bn' and not s.switches:
            transfer.layer(s, t)  # a plain BN with one shared set (US-MobileNet v2 tail): copied to every width
        else:
            transfer.layer(s, t, switch_map=switch_map)
    for k in loose:
        transfer.errors.append(f'{k} is not a layer tensor')


def cause_hint(release):
    """Likely cause of a mapping failure, for the error message."""
    return (f'the per-width statistics follow the width list {release.build_kwargs.get("width_list")}; a length '
            f'mismatch means another width_mult_list (pass width_list=...) or another model')
