"""One loader for every weights file: detect the origin (:mod:`.origins`), convert (:mod:`.conversion`), load
strictly both ways (this module).

``load_pretrained(model, PATH_OR_STATE_DICT, source=None)`` accepts

* a dynscale checkpoint (``backbones.checkpoint`` format, a ``tools/pretrain.py`` training checkpoint, or an
  MMEngine / Detectron2 checkpoint of a dynscale detector or segmentor: wrapper prefixes are stripped);
* a released file of allenai/elastic, JiahuiYu/slimmable_networks, taoyang1122/MutualNet or yikaiw/RS-Nets
  (zip-wrapped ``.pt.zip`` downloads unwrapped, fp16 tensors cast);
* a torchvision or timm state dict of an architecture with a dynscale counterpart (:mod:`.origin_dense`).

The origin is recognised from the container and the keys (or forced with ``source=``).  Foreign files are
first converted (:func:`convert`) into a dynscale state dict of a *template* model built on the ``meta``
device (no memory, no initialisation work), then loaded like a dynscale checkpoint.  Loading is strict both
ways: every source tensor lands somewhere, every model tensor is filled and shapes match; the only
tolerated differences are documented ones, each listed in the returned :class:`LoadReport`:

* a classifier in the file for a model built without head (``num_classes=0``) is dropped; a backbone file
  without classifier leaves the model's head at its initialisation; ``drop_head=True`` re-initialises it;
* slimmable models keep exactly the BN configurations (width, resolution) whose statistics the file stores:
  configurations the model had but the file lacks are removed and listed as *uncalibrated* (evaluating them
  raises the ``calibrate_bn`` error until they are calibrated);
* SACT/ACT halting branches absent from a dense pre-activation file keep their initialisation;
* RS-Net private BNs are taken index by index (``private_bn_map`` chooses others; a file converted from
  dense weights, whose private BNs are identical, fills any number of them).

Anything else raises :class:`~backbones.checkpoint.CheckpointMismatchError` naming the keys in both namings
and the likely cause (wrong model, wrong width list, wrong origin).
"""
import re
import warnings
from dataclasses import dataclass, field

import torch

from ..checkpoint import CheckpointMismatchError, state_mismatch, strip_prefix
from .conversion import convert
from .deferred_init import build_deferred
from .files import SourceFile, read_source
from .normalization import InputNormalization
from .origins import _DETECTOR_PREFIXES, identify

__all__ = ['load_pretrained', 'load_state', 'load_backbone_state', 'LoadReport', 'create_pretrained']


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did.

    Attributes:
        origin (str): canonical origin (``'dynscale'`` for native checkpoints).
        release (str | None): official architecture name of a foreign file.
        meta (dict): the checkpoint metadata (converted files: origin, sha256, normalisation, ...).
        loaded (int): model tensors written from the file.
        loaded_keys (list[str]): their state-dict keys.
        conversion (dict): counts per operation of the conversion (copy / merge / broadcast / dropped / new).
        dropped (list[tuple[str, str]]): file keys not loaded, with the reason.
        new (list[tuple[str, str]]): model keys left at their initialisation, with the reason.
        uncalibrated (list[tuple]): slimmable (width, resolution) configs removed (no stored statistics).
        marked_uncalibrated (list[str]): stored slimmable configs kept but marked uncalibrated (MutualNet files:
            evaluation raises until :func:`backbones.training.calibrate` re-estimates them).
        missing, unexpected, shape_mismatch (list[str]): non-strict loads only: what did not match.
        normalization (InputNormalization): inputs the weights expect (applied to the model).
        notes (list[str]): differences between what the release was trained with and what the model will train
            (a wider width range, other resolutions), for the log at start.
    """

    origin: str
    release: str = None
    meta: dict = field(default_factory=dict)
    loaded: int = 0
    loaded_keys: list = field(default_factory=list)
    conversion: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)
    new: list = field(default_factory=list)
    uncalibrated: list = field(default_factory=list)
    marked_uncalibrated: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    shape_mismatch: list = field(default_factory=list)
    normalization: object = None
    notes: list = field(default_factory=list)

    def __getitem__(self, key):  # dict-style access of the older load_backbone_state report
        return getattr(self, key)

    def summary(self):
        """One line for logs."""
        parts = [f'{self.loaded} tensors loaded from {self.origin}' + (f' {self.release}' if self.release else '')]
        if self.conversion:
            parts.append('conversion ' + ', '.join(f'{k} {v}' for k, v in self.conversion.items() if v))
        if self.dropped:
            parts.append(f'{len(self.dropped)} file tensors dropped ({self.dropped[0][1]})')
        if self.new:
            parts.append(f'{len(self.new)} model tensors kept at initialisation ({self.new[0][1]})')
        if self.uncalibrated:
            parts.append(f'uncalibrated BN configs {self.uncalibrated}')
        if self.marked_uncalibrated:
            parts.append(f'stored BN statistics {self.marked_uncalibrated} marked uncalibrated (calibrate before '
                         f'evaluating)')
        for k in ('missing', 'unexpected', 'shape_mismatch'):
            if getattr(self, k):
                parts.append(f'{len(getattr(self, k))} {k}')
        if self.normalization is not None:
            parts.append(f'inputs: {self.normalization}')
        parts += self.notes
        return '; '.join(parts)


# ---------------------------------------------------------------------------------------------- loading
_CFG = re.compile(r'(^|\.)private\.(w[0-9p]+(?:_r\d+)?)\.')
_BNS = re.compile(r'(^|\.)bns\.(\d+)\.')


def _sync_slimmable_configs(model, sd, report):
    """Give the model exactly the BN configurations whose statistics ``sd`` stores (removed ones are listed
    as uncalibrated)."""
    from ..slimmable import SlimmableBackbone
    from ..slimmable.ops import parse_config_key

    if not isinstance(model, SlimmableBackbone) or model._static_config is not None:
        return
    in_file = {m.group(2) for k in sd for m in [_CFG.search(k)] if m}
    if not in_file:
        return
    have = {c for bn in model.slimmable_bns() for c in bn.private}
    for cfg in sorted(in_file - have):
        w, r = parse_config_key(cfg)
        lo, hi = model.width_range
        if not lo - 1e-9 <= w <= hi + 1e-9:
            raise CheckpointMismatchError(
                f'the checkpoint stores BN statistics for width {w}, outside the model\'s width_range '
                f'{model.width_range}; '
                f'build the model with the checkpoint\'s range {(report.meta or {}).get("widths")} '
                f'(width_range=...) or load a checkpoint trained for this range')
        model.add_bn_config(w, r)
    for cfg in sorted(have - in_file):
        w, r = parse_config_key(cfg)
        for bn in model.slimmable_bns():
            bn.remove_config(w, r)
        report.uncalibrated.append((w, r))


def _map_private_bns(model, sd, meta, private_bn_map, report):
    """Rename ``bns.<i>`` entries of ``sd`` for an RS-Net whose number of private BNs differs from the file's."""
    from ..rsnet import RSNet

    if not isinstance(model, RSNet):
        return sd
    idx = {int(m.group(2)) for k in sd for m in [_BNS.search(k)] if m}
    if not idx:
        return sd
    n_file, n_model = max(idx) + 1, len(model.resolutions)
    file_res = list(meta.get('resolutions') or [])
    if private_bn_map is None:
        if n_file == n_model:
            return sd
        if meta.get('dense_source'):  # every private BN of a dense-converted file is the same BN
            private_bn_map = [0] * n_model
        else:
            raise CheckpointMismatchError(
                f'the checkpoint has {n_file} private BNs per layer (resolutions {file_res or "?"}), the model '
                f'{n_model} ({model.resolutions}); pass private_bn_map=[...] (for each model resolution, the '
                f'checkpoint resolution or index whose BN it starts from, e.g. '
                f'{file_res[:n_model] or list(range(n_model))})')
    if len(private_bn_map) != n_model:
        raise CheckpointMismatchError(f'private_bn_map needs {n_model} entries (one per model resolution '
                                      f'{model.resolutions}), got {list(private_bn_map)}')
    src_index = []
    for v in private_bn_map:
        if v in file_res:
            v = file_res.index(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n_file:
            raise CheckpointMismatchError(f'private_bn_map entry {v!r} is neither a checkpoint resolution '
                                          f'{file_res} nor an index 0..{n_file - 1}')
        src_index.append(v)
    out = {k: t for k, t in sd.items() if not _BNS.search(k)}
    for k, t in sd.items():
        m = _BNS.search(k)
        if m:
            for ti, si in enumerate(src_index):
                if si == int(m.group(2)):
                    out[k[:m.start(2)] + str(ti) + k[m.end(2):]] = t
    report.conversion['private_bn_map'] = src_index
    return out


def load_state(model, sd, meta=None, strict=True, drop_head=False, private_bn_map=None, origin='dynscale',
               report=None, logger=None):
    """Load a state dict in dynscale naming (wrapper prefixes stripped) with the rules of the module docstring.

    Args:
        model (DynamicBackbone): the model (changed in place).
        sd (dict[str, Tensor]): dynscale-named tensors (``module.``/``backbone.``... prefixes allowed).
        meta (dict | None): checkpoint metadata (normalisation, resolutions, ...).
        strict (bool): raise on any unmatched key (else warn and load what fits).
        drop_head (bool): do not load the file's classifier (new task): the model's head keeps its init.
        private_bn_map (list | None): RS-Net: per model resolution, the checkpoint resolution (or index) whose
            private BN it starts from.

    Returns:
        LoadReport

    Raises:
        CheckpointMismatchError: (strict) unmatched keys, listed with the likely fix.
    """
    meta = dict(meta or {})
    report = report or LoadReport(origin=origin, meta=meta)
    own = model.state_dict()
    inner = next((p for p in _DETECTOR_PREFIXES if any(k.startswith(p) for k in sd)), None)
    if inner is not None:  # a whole detector / segmentor: its backbone's weights only
        for k in sd:
            if not k.startswith(inner):
                report.dropped.append((k, f'part of the detector / segmentor, not of its backbone ({inner}*)'))
        sd = {k[len(inner):]: v for k, v in sd.items() if k.startswith(inner)}
    else:
        sd = strip_prefix(dict(sd), own.keys())
    has_head = any(k.startswith('head.') for k in own)
    file_head = [k for k in sd if k.startswith('head.')]
    if file_head and (not has_head or drop_head):
        why = ('the model has no classifier (num_classes=0)' if not has_head else
               'drop_head=True: the classifier is re-initialised for the new task')
        for k in file_head:
            report.dropped.append((k, why))
        sd = {k: v for k, v in sd.items() if not k.startswith('head.')}
    elif has_head and file_head:
        bad = [k for k in file_head if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
        if bad and not strict:
            for k in file_head:
                report.dropped.append((k, 'classifier of another number of classes (strict=False)'))
            sd = {k: v for k, v in sd.items() if not k.startswith('head.')}
        elif bad:
            raise CheckpointMismatchError(
                f'the checkpoint classifier {bad[0]} {tuple(sd[bad[0]].shape)} does not fit the model\'s '
                f'{tuple(own[bad[0]].shape)}: build with num_classes={sd[bad[0]].shape[0]} (the checkpoint\'s), '
                f'num_classes=0 (features only), or pass drop_head=True to re-initialise the classifier')
    if has_head and not [k for k in sd if k.startswith('head.')]:
        for k in own:
            if k.startswith('head.'):
                report.new.append((k, 'classifier: the checkpoint has none (backbone checkpoint) or drop_head=True'))
    _sync_slimmable_configs(model, sd, report)
    sd = _map_private_bns(model, sd, meta, private_bn_map, report)
    own = model.state_dict()
    if any('.halting.' in k for k in own) and not any('.halting.' in k for k in sd):
        for k in own:
            if '.halting.' in k:
                report.new.append((k, 'SACT/ACT halting branch: the checkpoint is a plain pre-activation ResNet'))
    new = {k for k, _ in report.new}
    report.missing, report.unexpected, report.shape_mismatch = state_mismatch(own, sd, expected_missing=new)
    if report.missing or report.unexpected or report.shape_mismatch:
        hint = _likely_cause(model, sd, meta, report)
        msg = (f'checkpoint does not match {getattr(model, "variant", type(model).__name__)} '
               f'(checkpoint variant {meta.get("variant", "unknown")}, origin {report.origin}): '
               f'{len(report.missing)} missing {report.missing[:8]}, {len(report.unexpected)} unexpected '
               f'{report.unexpected[:8]}, {len(report.shape_mismatch)} shape-mismatched '
               + ', '.join(f'{k} file {tuple(sd[k].shape)} model {tuple(own[k].shape)}'
                           for k in report.shape_mismatch[:4]) + f'. {hint}')
        if strict:
            raise CheckpointMismatchError(msg)
        (logger.warning if logger else warnings.warn)(msg)
    load = {k: v for k, v in sd.items() if k in own and k not in report.shape_mismatch}
    with torch.no_grad():
        model.load_state_dict(load, strict=False)
    report.loaded = len(load)
    report.loaded_keys = sorted(load)
    norm = InputNormalization.from_meta(meta)
    if norm is not None:
        norm.apply_to(model)
    report.normalization = InputNormalization.of_model(model)
    if meta.get('calibration_required'):
        # MutualNet evaluates every (width, resolution) with re-estimated statistics; the stored ones are training-time
        # running averages (official_checkpoints/README.md): evaluation raises until they are calibrated
        from ..slimmable.ops import SlimmableBatchNorm2d
        why = (f'{report.origin} stores training-time running averages; its evaluation protocol re-estimates '
               f'every (width, resolution)')
        keys = set()
        for m in model.modules():
            if isinstance(m, SlimmableBatchNorm2d):
                keys.update(m.mark_uncalibrated(why))
        report.marked_uncalibrated = sorted(keys)
    model.pretrained_meta = meta
    return report


def _likely_cause(model, sd, meta, report):
    variant = getattr(model, 'variant', None)
    if meta.get('variant') and variant and meta['variant'] != variant:
        return (f'Likely cause: wrong model: the checkpoint is a {meta["variant"]!r} checkpoint; build '
                f'backbones.create({meta["variant"]!r}, ...).')
    if any('private.' in k for k in report.missing + report.unexpected):
        return (f'Likely cause: wrong width list: the checkpoint stores statistics for {meta.get("width_list")}, '
                f'the model {getattr(model, "width_list", None)}.')
    if any('.bns.' in k for k in report.missing + report.unexpected):
        return (f'Likely cause: wrong resolutions: checkpoint {meta.get("resolutions")}, model '
                f'{getattr(model, "resolutions", None)}.')
    fits = models_fitting(sd)
    if fits and variant not in fits:
        return (f'Likely cause: wrong model: the checkpoint\'s keys and shapes are those of {", ".join(fits)}; build '
                f'backbones.create({fits[0]!r}, ...).')
    return ('Likely cause: wrong model or wrong origin: check the variant, output stride does not matter (weights are '
            'the same), and pass source=... if the origin was misdetected.')


def models_fitting(sd, max_models=40):
    """Registered models whose parameter names and shapes are exactly those of the state dict ``sd`` (the
    classifier may differ in its number of classes); built on the ``meta`` device, so nothing is allocated.

    Returns:
        list[str]: matching registered names (empty when none or the check cannot run).
    """
    from .._registry import _MODELS
    want = {k: tuple(v.shape) for k, v in sd.items() if hasattr(v, 'shape')}
    out = []
    for name in list(_MODELS)[:max_models]:
        try:
            with torch.device('meta'):
                have = {k: tuple(v.shape) for k, v in _MODELS[name]().state_dict().items()}
        except Exception:
            continue
        if have.keys() == want.keys() and all(have[k] == want[k] for k in have if not k.startswith('head.')):
            out.append(name)
    return out


def load_pretrained(model, checkpoint, source=None, strict=True, drop_head=False, private_bn_map=None,
                    width_list=None, resolutions=None, logger=None):
    """Load a weights file of any supported origin into a dynscale ``model`` (module docstring).

    Args:
        model (DynamicBackbone): a model from ``backbones.create`` (changed in place).
        checkpoint (str | os.PathLike | dict): path, loaded object or state dict.
        source (str | None): force the origin (:data:`SOURCES`); default: detected from container and keys.
        strict (bool): raise on unmatched keys (default); False warns and loads what fits.
        drop_head (bool): re-initialise the classifier (transfer learning with another number of classes).
        private_bn_map (list | None): RS-Net private-BN mapping (see :func:`load_state`).
        width_list (list[float] | None): US-Nets / MutualNet training width list when not a released one.
        resolutions (tuple[int] | None): RS-Nets training sizes when not the released five.
        logger (logging.Logger | None): where non-strict warnings go.

    Returns:
        LoadReport: also sets ``model.pretrained_meta`` and the model's input normalisation attributes
        (``pixel_mean``, ``pixel_std``, ``input_format``).

    Raises:
        FileNotFoundError: missing path.
        CheckpointFileError: unreadable file.
        UnsupportedCheckpointError: a recognised file without dynscale model.
        CheckpointMismatchError: the file does not fit the model (names the model it fits, or the keys).
    """
    src = checkpoint if isinstance(checkpoint, SourceFile) else read_source(checkpoint)
    release = identify(src, source, width_list, resolutions)
    if release is None:  # a dynscale checkpoint: trained here, or converted from a release (meta says which)
        meta = src.meta
        trained = ((meta or {}).get('model_kwargs') or {}).get('width_range')
        report = LoadReport(origin='dynscale', meta=meta, notes=_training_range_notes(model, trained))
        report = load_state(model, src.state_dict, meta, strict, drop_head, private_bn_map, 'dynscale', report,
                            logger)
        _log_notes(report, src, logger)
        return report
    name = getattr(model, 'variant', None)
    release.check_target(name)
    tkw = {}
    if hasattr(model, 'resolutions') and release.origin in ('torchvision', 'timm'):
        tkw['resolutions'] = tuple(model.resolutions)
    sd, meta, release, transfer = convert(src, name, source, tkw, width_list, resolutions)
    report = LoadReport(origin=release.origin, release=release.name, meta=meta, conversion=transfer.summary(),
                        dropped=list(transfer.dropped), new=list(transfer.new),
                        notes=_training_range_notes(model, release.build_kwargs.get('width_range')))
    report = load_state(model, sd, meta, strict, drop_head, private_bn_map, release.origin, report, logger)
    _log_notes(report, src, logger)
    return report


def _log_notes(report, src, logger):
    for note in report.notes:
        msg = f'{getattr(src, "path", None) or "pretrained weights"}: {note}'
        (logger.warning if logger else warnings.warn)(msg)


def _training_range_notes(model, trained):
    """What the model will train beyond the range the weights were trained on (``trained``: ``(min, max)``
    width or None): a slimmable model's wider width range (e.g. MutualNet's MobileNet v2 was trained on widths
    0.7-1.0; the MMSeg / MMDet configs train 0.35-1.0)."""
    notes = []
    ours = getattr(model, 'width_range', None)
    if trained and ours and (ours[0] < trained[0] - 1e-9 or ours[1] > trained[1] + 1e-9):
        notes.append(f'the release was trained on widths {trained[0]:g}-{trained[1]:g}, this model trains '
                     f'{ours[0]:g}-{ours[1]:g}: widths outside the released range start from weights never trained '
                     f'at them')
    return notes


def create_pretrained(name, pretrained, source=None, **kwargs):
    """``backbones.create(name, pretrained=PATH, **kwargs)``: build with the factory arguments the weights need
    (width range/list, resolutions, num_classes from the file, each overridden by ``kwargs``), then load.  A
    dynscale checkpoint without classifier (``save_backbone_checkpoint(drop_head=True)``, a detector's backbone)
    builds a model without one (``num_classes=0``) unless ``num_classes`` is given: a classifier of random weights
    is not made up silently.

    Raises:
        as :func:`load_pretrained`; ValueError for an unknown name.
    """
    load_kw = {k: kwargs.pop(k) for k in ('strict', 'drop_head', 'private_bn_map') if k in kwargs}
    src = read_source(pretrained)
    release = identify(src, source)
    if release is not None:
        release.check_target(name)
        build = release.kwargs_for(name)
        if release.origin in ('torchvision', 'timm'):
            build.pop('resolutions', None)
        num_classes = release.num_classes
    else:
        meta = src.meta
        build = dict(meta.get('model_kwargs') or {})
        heads = [v for k, v in strip_prefix(src.state_dict, ['head.0.weight']).items()
                 if k.startswith('head.') and k.endswith('weight') and v.dim() == 2]
        num_classes = heads[-1].shape[0] if heads else 0  # no classifier in the file: none in the model
    build = {k: tuple(v) if isinstance(v, list) else v for k, v in build.items()}
    build.update(kwargs)
    if num_classes is not None and 'num_classes' not in kwargs:
        build['num_classes'] = num_classes
    model, deferred = build_deferred(name, **build)  # draws only what the file does not overwrite (issue 27)
    report = load_pretrained(model, src, source, **load_kw)
    own = model.state_dict(keep_vars=True)
    deferred.replay(own[k] for k in report.loaded_keys)
    return model


def load_backbone_state(model, checkpoint, strict=True, expect_family=None, logger=None):
    """Load a backbone checkpoint into ``model`` and report unmatched keys loudly.

    A thin wrapper of :func:`backbones.pretrained.load_pretrained` (which also reads released files of the
    authors and torchvision / timm state dicts) with a family check.

    Args:
        model (nn.Module): the backbone (not the detector).
        checkpoint (str | dict): path or loaded object.
        strict (bool): raise on missing/unexpected/shape-mismatched keys (else warn and load what fits).
        expect_family (str | None): raise when the checkpoint's ``meta['family']`` differs.

    Returns:
        backbones.pretrained.LoadReport: ``missing``, ``unexpected``, ``shape_mismatch``, ``meta`` ... (also
        readable as ``report['missing']``).

    Raises:
        CheckpointMismatchError: with ``strict`` and any unmatched key, or a family mismatch; the message lists
            the keys and names the likely fix.
    """
    src = read_source(checkpoint)
    fam = src.meta.get('family')
    if expect_family and fam and fam != expect_family:
        raise CheckpointMismatchError(f'checkpoint is a {fam!r} backbone ({src.meta.get("variant")}), the model is '
                                      f'{expect_family!r}: pick the checkpoint exported for this variant')
    return load_pretrained(model, src, strict=strict, logger=logger)
