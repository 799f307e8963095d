"""Options of an OpenMMLab config checked against the backbone's capabilities before anything is built.

The four OpenMMLab tools (``tools/train_seg.py``, ``tools/test_seg.py``, ``tools/train_det_mm.py``,
``tools/test_det_mm.py``) call :func:`check_config_options` on the merged config (command-line flags and
``--cfg-options`` applied) before the runner, the model or the checkpoint is touched.  Which option applies to
which backbone is decided by the one table :mod:`backbones.capabilities`; this module only says where each
option lives in an MMSeg / MMDet config.
"""
import backbones as dyn
from backbones.capabilities import check_options

__all__ = ['backbone_arch', 'config_options', 'check_config_options']

#: MM backbone type -> its default ``arch`` (``plugins.mm.backbones``)
_ADAPTERS = {'DynscaleBackbone': None, 'ElasticBackbone': 'resnext50_elastic', 'SlimmableNet': 'us_mobilenet_v2',
             'SACTResNet': 'sact_resnet101', 'RSNetBackbone': 'rs_resnet50'}
#: training method -> the capability it needs (``backbones.training.POLICIES``)
_POLICY_CAPABILITY = {'usnet': 'width', 'mutualnet': 'width', 'rsnet': 'private_bn', 'sact': 'ponder_cost'}
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
    if policy in _POLICY_CAPABILITY:
        add(f"model.policy.type='{policy}'", _POLICY_CAPABILITY[policy])
    mtype = _type(model)
    if mtype in _PRESET_CAPABILITY:
        add(f"model.type='{mtype}'", _PRESET_CAPABILITY[mtype])
    for h in cfg.get('custom_hooks') or []:
        if _type(h) in _HOOK_CAPABILITY:
            add(f"custom_hooks type='{_type(h)}'", _HOOK_CAPABILITY[_type(h)])
    return out


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
        backbones.capabilities.OptionNotApplicable: an option the backbone's family does not have (the message
            names the option, the backbone and the families that have it).
    """
    arch = backbone_arch(cfg)
    label = arch or f"backbone type={_type((cfg.get('model') or {}).get('backbone'))!r}"
    return check_options(arch, config_options(cfg, flags), where=where or '', label=label)
