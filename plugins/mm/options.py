"""Options of an OpenMMLab config checked against the backbone's capabilities before anything is built.

The four OpenMMLab tools (``tools/train_seg.py``, ``tools/test_seg.py``, ``tools/train_det_mm.py``,
``tools/test_det_mm.py``) call :func:`check_config_options` on the merged config (command-line flags and
``--cfg-options`` applied) before the runner, the model or the checkpoint is touched.  Which option applies to
which backbone is decided by the one table :mod:`backbones.capabilities`; this module only says where each
option lives in an MMSeg / MMDet config.
"""
import backbones as dyn
from backbones.capabilities import check_options
from backbones.training import POLICIES, capability_of, supplied_capabilities

__all__ = ['backbone_arch', 'config_options', 'check_config_options', 'check_registered_types', 'refuse_renamed']

#: MM backbone type -> its default ``arch`` (``plugins.mm.backbones``)
_ADAPTERS = {'DynscaleBackbone': None, 'ElasticBackbone': 'resnext50_elastic', 'SlimmableNet': 'us_mobilenet_v2',
             'SACTResNet': 'sact_resnet101', 'RSNetBackbone': 'rs_resnet50'}
#: preset model types -> the capability their method needs
_PRESET_CAPABILITY = {'SlimmableEncoderDecoder': 'width', 'SlimmableTwoStageDetector': 'width',
                      'RSNetEncoderDecoder': 'private_bn', 'RSNetTwoStageDetector': 'private_bn',
                      'SACTEncoderDecoder': 'ponder_cost', 'SACTTwoStageDetector': 'ponder_cost'}
#: hooks -> the capability they need
_HOOK_CAPABILITY = {'BNCalibrationHook': 'calibration', 'PonderMapSaveHook': 'ponder_cost'}


def _type(d):
    t = (d or {}).get('type')
    return t.split('.')[-1] if isinstance(t, str) else t


def backbone_arch(cfg):
    """Registry name of the config's dynscale backbone, or None for a framework's own backbone.

    Args:
        cfg (mmengine.Config | dict): a config with ``model.backbone``.

    Raises:
        ValueError: an unregistered ``arch`` (with close matches).
    """
    bb = (cfg.get('model') or {}).get('backbone') or {}
    t = _type(bb)
    if t not in _ADAPTERS:
        return None
    arch = bb.get('arch', _ADAPTERS[t])
    dyn.model_family(arch)
    return arch


def config_options(cfg, flags=None):
    """The options a config sets that only some backbone families have.

    Args:
        cfg (mmengine.Config | dict): the merged config.
        flags (dict | None): ``config key -> command-line flag`` that set it, so that messages name what the
            user typed (e.g. ``{'model.test_cfg.width': '--width'}``).

    Returns:
        dict: ``option description -> capability`` (see :mod:`backbones.capabilities`).
    """
    flags = flags or {}
    model = cfg.get('model') or {}
    out = {}

    def add(key, cap):
        out[f'{flags[key]} ({key})' if key in flags else key] = cap
    tc = model.get('test_cfg') or {}
    if tc.get('width') is not None:
        add('model.test_cfg.width', 'width')
    if tc.get('resolution') is not None:
        add('model.test_cfg.resolution', 'resolution')
    if tc.get('untrained_resolution') is not None:
        add('model.test_cfg.untrained_resolution', 'private_bn')
    if model.get('test_width') is not None:
        add('model.test_width', 'width')
    if model.get('test_resolution') is not None:
        add('model.test_resolution', 'resolution')
    bb = model.get('backbone') or {}
    if bb.get('width') is not None:
        add('model.backbone.width', 'width')
    if bb.get('resolution') is not None:
        add('model.backbone.resolution', 'private_bn')
    policy = _type(model.get('policy'))
    if policy in POLICIES and capability_of(policy):  # the method's own policy says what it needs
        add(f"model.policy.type='{policy}'", capability_of(policy))
    mtype = _type(model)
    if mtype in _PRESET_CAPABILITY:
        add(f"model.type='{mtype}'", _PRESET_CAPABILITY[mtype])
    for h in cfg.get('custom_hooks') or []:
        if _type(h) in _HOOK_CAPABILITY:
            add(f"custom_hooks type='{_type(h)}'", _HOOK_CAPABILITY[_type(h)])
    supplied = supplied_capabilities(policy)  # e.g. a method with its own calibration: its hook applies to any model
    return {k: c for k, c in out.items() if c not in supplied}


def check_config_options(cfg, flags=None, where=None):
    """Raise unless every option of ``cfg`` applies to its backbone (:func:`backbones.capabilities.check_options`).

    Call it on the merged config before building the runner: nothing is built and no file is read.

    Args:
        cfg (mmengine.Config | dict): the merged config.
        flags (dict | None): see :func:`config_options`.
        where (str | None): the config file, named in the message.

    Returns:
        frozenset[str]: the backbone's capabilities.

    Raises:
        backbones.errors.ConfigError: a component ``type`` that is not registered (:func:`check_registered_types`).
        backbones.capabilities.OptionNotApplicable: an option the backbone's family does not have (the message
            names the option, the backbone and the families that have it).
    """
    check_registered_types(cfg, where)
    arch = backbone_arch(cfg)
    label = arch or f"backbone type={_type((cfg.get('model') or {}).get('backbone'))!r}"
    return check_options(arch, config_options(cfg, flags), where=where or '', label=label)


#: the config entries whose ``type`` is a model component (``MODELS`` registry of the config's scope)
_COMPONENTS = ('backbone', 'neck', 'decode_head', 'auxiliary_head', 'rpn_head', 'roi_head', 'data_preprocessor')


def check_registered_types(cfg, where=None):
    """Raise unless the model and its components (``model.type``, ``model.backbone.type``, ``neck``, heads,
    ``data_preprocessor``) name types registered in the ``MODELS`` registry of the config's ``default_scope``
    (``mmseg`` or ``mmdet``), so that a misspelt ``type='ElasticResNext'`` fails before anything is built, with
    the registered names closest to it (MMEngine would raise a ``KeyError`` from inside the runner).

    Args:
        cfg (mmengine.Config | dict): the merged config.
        where (str | None): the config file, named in the message.

    Raises:
        backbones.errors.ConfigError: an unregistered type; the message lists close matches and the dynscale
            backbones.
    """
    import difflib
    import importlib

    from backbones.errors import ConfigError
    scope = cfg.get('default_scope')
    model = cfg.get('model') or {}
    if scope not in ('mmseg', 'mmdet') or not isinstance(model, dict):
        return
    registry = importlib.import_module(f'{scope}.registry').MODELS
    entries = [('model', model)]
    for key in _COMPONENTS:
        sub = model.get(key)
        for i, d in enumerate(sub if isinstance(sub, (list, tuple)) else [sub]):
            entries.append((f'model.{key}' + (f'[{i}]' if isinstance(sub, (list, tuple)) else ''), d))
    for key, d in entries:
        t = d.get('type') if isinstance(d, dict) else None
        if not isinstance(t, str) or registry.get(t) is not None:
            continue
        names = {n for r in (registry, registry.parent) if r is not None for n, c in r.module_dict.items()
                 if not (c.__doc__ or '').startswith('Former name')}  # renamed stubs are not suggested
        ours = sorted(n for n, c in registry.module_dict.items() if c.__module__.startswith('plugins.mm.backbones'))
        lower = {n.lower(): n for n in sorted(names)}
        word = t.split('.')[-1]
        close = [lower[n] for n in difflib.get_close_matches(word.lower(), list(lower), n=5, cutoff=0.6)]
        # a dynscale backbone whose family word the typed name contains comes first (ElasticResNext -> Elastic...)
        close.sort(key=lambda n: not (n in ours and n.lower().startswith(word.lower()[:5])))
        raise ConfigError(
            f"{key}.type={t!r}{' in ' + where if where else ''} is not registered in {scope}'s MODELS registry"
            + (f"; did you mean {', '.join(repr(c) for c in close)}?" if close else '')
            + (f" (dynscale backbones: {', '.join(ours)})" if key == 'model.backbone' else '')
            + '; fix the type in the config or with --cfg-options')


def refuse_renamed(options, where, renamed):
    """Raise when ``options`` (a config dict) uses a key that was renamed, naming the new key.

    One word per meaning (issue 26): ``input_sizes`` are the input sides sub-networks train at (MutualNet crop
    sides, detection shorter sides), ``bn_resolutions`` the resolutions whose private BNs an RS-Net step trains.

    Args:
        options (dict | None): e.g. a preset's ``train_cfg`` or ``sandwich``.
        where (str): how the user writes the dict (``'train_cfg'``, ``'model.sandwich'``).
        renamed (dict): ``old key -> (new key, what it means)``.

    Raises:
        ValueError: ``where.old`` is set; the message names ``where.new``.
    """
    for old, (new, meaning) in renamed.items():
        if old in (options or {}):
            raise ValueError(f'{where}.{old} was renamed {where}.{new} ({meaning}): rename the key in the config')
