"""Detectron2 checkpoints of dynscale backbones: conversion, metadata and the checks run at setup.

* :func:`convert_for_detector` loads any weights file ``backbones.load_pretrained`` accepts (dynscale
  checkpoint, official release, torchvision / timm state dict) into the whole dynscale network of a detector's
  backbone (strict, with the loader's rules: classifier dropped, slimmable BN configs synced, RS-Net private
  BNs mapped), then renames every tensor to the detector's keys
  (``backbone.bottom_up.net.`` for FPN, ``backbone.net.`` for C4, ``roi_heads.res5.`` for the SACT C4 head).
* :func:`save_d2` writes a detectron2 ``.pkl`` (``{"model", "__author__", "matching_heuristics": False}``,
  exact names) that also carries ``"dynscale_meta"``: origin, sha256 of the source, input normalisation.
* :func:`verify_load` loads the file back with detectron2's ``DetectionCheckpointer`` into a fresh detector
  and lists unmatched backbone keys (the converter fails unless there are none).
* :func:`check_weights_for_config` (called by ``setup()``): a missing ``MODEL.WEIGHTS`` file prints the
  convert command of its model-zoo row; an unconverted file (dynscale backbone checkpoint, official
  release) is refused with the command that converts it; ``MODEL.PIXEL_MEAN``/``PIXEL_STD``/``INPUT.FORMAT``
  must agree with the normalisation the weights were trained with, unless
  ``MODEL.DYNSCALE.PIXEL_NORM_FROM_WEIGHTS`` adopts the file's values.
"""
import os
import pickle

import torch

from backbones.checkpoint import FORMAT
from backbones.pretrained import InputNormalization, load_pretrained, missing_file_message, read_source

__all__ = ['convert_for_detector', 'map_backbone_state', 'save_d2', 'verify_load', 'read_d2_meta',
           'check_weights_for_config', 'sync_slimmable_configs']


def _net_and_prefixes(model):
    from .backbone import find_dynscale_backbone

    bb = find_dynscale_backbone(model)
    bb_name = next(n for n, m in model.named_modules() if m is bb)
    head = dict(model.named_modules()).get('roi_heads.res5')
    return bb, f'{bb_name}.net.', head


def map_backbone_state(state_dict, model):
    """Rename a dynscale backbone state dict onto the keys of a detectron2 detector built from a dynscale config.

    Args:
        state_dict (dict[str, Tensor]): dynscale keys (``stem.*``, ``stages.*``, ``norm.*`` ...); wrapper
            prefixes are stripped, the classifier ``head.*`` is ignored.
        model (nn.Module): the detector (``GeneralizedRCNN``).

    Returns:
        tuple: ``(mapped, report)``; ``mapped`` maps detector keys to tensors; ``report`` has lists ``missing``
        (backbone keys of the detector not provided), ``unexpected`` (keys with no place) and ``shape_mismatch``.
    """
    from backbones.checkpoint import strip_prefix

    bb, net_prefix, head = _net_and_prefixes(model)
    target = model.state_dict()

    def tail(k, prefix):
        return k[len(prefix):] if k.startswith(prefix) else None

    own = {tail(k, net_prefix) for k in target if k.startswith(net_prefix)}
    if head is not None:
        own |= {'stages.3.' + tail(k, 'roi_heads.res5.stage.') for k in target if k.startswith('roi_heads.res5.stage.')}
        own |= {tail(k, 'roi_heads.res5.') for k in target if k.startswith('roi_heads.res5.norm.')}
    sd = strip_prefix(dict(state_dict), own)
    sd = {k: v for k, v in sd.items() if not k.startswith('head.')}
    if bb.is_resolution_switchable:
        from backbones.rsnet import expand_private_bn_state_dict

        sd = expand_private_bn_state_dict(sd, bb.net)
    mapped, unexpected = {}, []
    for k, v in sd.items():
        if net_prefix + k in target:
            mapped[net_prefix + k] = v
        elif head is not None and k.startswith('stages.3.') and 'roi_heads.res5.stage.' + k[9:] in target:
            mapped['roi_heads.res5.stage.' + k[9:]] = v
        elif head is not None and k.startswith('norm.') and 'roi_heads.res5.' + k in target:
            mapped['roi_heads.res5.' + k] = v
        elif head is not None and k.startswith('stages.3.units.0.norm1.'):
            continue  # the first res5 unit's pre-activation norm lives in the backbone (mapped above)
        else:
            unexpected.append(k)
    prefixes = (net_prefix,) + (('roi_heads.res5.',) if head is not None else ())
    missing = [k for k in target if k.startswith(prefixes) and k not in mapped]
    shape_mismatch = [k for k, v in mapped.items() if tuple(v.shape) != tuple(target[k].shape)]
    return mapped, {'missing': missing, 'unexpected': unexpected, 'shape_mismatch': shape_mismatch}


def convert_for_detector(source, model, source_origin=None, private_bn_map=None, width_list=None,
                         resolutions=None):
    """Load ``source`` into the dynscale network of ``model`` (strict) and return detector-keyed tensors.

    Args:
        source (str | dict): any file :func:`backbones.load_pretrained` accepts.
        model (nn.Module): detector built from the target config (its backbone net is overwritten).
        source_origin, private_bn_map, width_list, resolutions: passed to ``load_pretrained``.

    Returns:
        tuple: ``(mapped, report, load_report)``.

    Raises:
        CheckpointMismatchError: the weights do not fit the config's backbone (keys and cause listed).
    """
    import backbones
    from backbones.pretrained.loader import _sync_slimmable_configs

    bb, _, _ = _net_and_prefixes(model)
    # the whole network (the detector's copy lacks the stages a C4 head took over): load, then rename
    full = backbones.create(bb.name, num_classes=0, **bb.factory_kwargs)
    load_report = load_pretrained(full, source, source=source_origin, private_bn_map=private_bn_map,
                                  width_list=width_list, resolutions=resolutions)
    state = full.state_dict()
    _sync_slimmable_configs(bb.net, state, load_report)  # the detector keeps the file's BN configurations
    mapped, report = map_backbone_state(state, model)
    return mapped, report, load_report


def save_d2(mapped, path, meta=None, author='dynscale'):
    """Write detector-keyed tensors as a detectron2 checkpoint (``.pkl``: numpy arrays; else ``torch.save``),
    with the dynscale metadata under ``"dynscale_meta"``. Written through a temporary file (atomic)."""
    tmp = path + '.tmp'
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    from backbones.integrity import DIGEST_KEY, tensor_digests
    meta = dict(meta or {}, **{DIGEST_KEY: tensor_digests(mapped)})
    if path.endswith('.pkl'):
        obj = {'model': {k: v.detach().cpu().numpy() for k, v in mapped.items()}, '__author__': author,
               'matching_heuristics': False, 'dynscale_meta': meta}
        with open(tmp, 'wb') as f:
            pickle.dump(obj, f)
    else:
        torch.save({'model': {k: v.detach().cpu() for k, v in mapped.items()}, '__author__': author,
                    'dynscale_meta': meta}, tmp)
    os.replace(tmp, path)
    return path


def read_d2_meta(path):
    """The ``dynscale_meta`` of a detectron2 checkpoint written by :func:`save_d2` (``{}`` if none).

    Raises:
        CheckpointFileError: unreadable file.
    """
    src = read_source(path)
    meta = src.container.get('dynscale_meta')
    return meta if isinstance(meta, dict) else {}


def sync_slimmable_configs(model, state_dict):
    """Give the slimmable network of a detector exactly the BN configs ``state_dict`` stores (others removed:
    uncalibrated, calibrated before evaluation); returns the removed ``(width, resolution)`` pairs."""
    from backbones.pretrained.loader import LoadReport, _sync_slimmable_configs

    bb, prefix, _ = _net_and_prefixes(model)
    sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    report = LoadReport('dynscale')
    _sync_slimmable_configs(bb.net, sub, report)
    return report.uncalibrated


def verify_load(cfg, path):
    """Load ``path`` with ``DetectionCheckpointer`` into a new detector; list unmatched backbone keys.

    Returns:
        list[str]: backbone / res5-head keys reported missing, shape-mismatched or unexpected (empty: clean).
    """
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    model = build_model(cfg)
    _, net_prefix, _ = _net_and_prefixes(model)
    prefixes = (net_prefix, 'roi_heads.res5.')
    seen = {}

    class _Probe(DetectionCheckpointer):
        def _load_model(self, checkpoint):
            sync_slimmable_configs(self.model, checkpoint['model'])
            inc = super()._load_model(checkpoint)
            seen['missing'] = [k for k in inc.missing_keys if k.startswith(prefixes)]
            seen['shape'] = [k for k, *_ in inc.incorrect_shapes if k.startswith(prefixes)]
            seen['unexpected'] = list(inc.unexpected_keys)
            return inc

    _Probe(model).load(path)
    return seen['missing'] + seen['shape'] + seen['unexpected']


def check_weights_for_config(cfg, config_file=None):
    """Checks of ``MODEL.WEIGHTS`` run by ``setup()`` before training or evaluation (module docstring).

    Args:
        cfg (CfgNode): merged, not yet frozen; ``MODEL.PIXEL_MEAN``/``PIXEL_STD``/``INPUT.FORMAT`` are set
            from the file when ``MODEL.DYNSCALE.PIXEL_NORM_FROM_WEIGHTS`` is true.
        config_file (str | None): for the convert command in messages.

    Returns:
        dict: the file's ``dynscale_meta`` (``{}`` when there is no file or no metadata).

    Raises:
        FileNotFoundError: ``MODEL.WEIGHTS`` names a missing local file (the message has the convert command).
        ValueError: an unconverted file, or a pixel normalisation that disagrees with the weights.
    """
    path = cfg.MODEL.WEIGHTS
    if not path or '://' in path:
        return {}
    if not os.path.exists(path):
        raise FileNotFoundError(missing_file_message(path, config_file) + '\n(or set MODEL.WEIGHTS "" to train '
                                                                          'from scratch)')
    if not path.endswith('.pkl'):
        src = read_source(path)
        keys = list(src.state_dict)
        if src.meta.get('format') == FORMAT or not any(k.startswith(('backbone.', 'roi_heads.', 'proposal_generator.'))
                                                       for k in keys):
            raise ValueError(
                f'MODEL.WEIGHTS={path} is not a detectron2 checkpoint of this detector (its keys look like '
                f'{keys[:3]}: a dynscale backbone checkpoint or a released ImageNet file). Convert it:\n  python '
                f'tools/convert_weights.py {path} {os.path.splitext(path)[0]}_d2.pkl --to detectron2 --config-file '
                f'{config_file or "<this config>"}')
        meta = src.container.get('dynscale_meta') or {}
    else:
        meta = read_d2_meta(path)
    norm = InputNormalization.from_meta(meta)
    if norm is None:
        return meta
    if cfg.MODEL.DYNSCALE.PIXEL_NORM_FROM_WEIGHTS:
        cfg.MODEL.PIXEL_MEAN = list(norm.mean)
        cfg.MODEL.PIXEL_STD = list(norm.std)
        cfg.INPUT.FORMAT = norm.channel_order
        return meta
    if not norm.matches(cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, cfg.INPUT.FORMAT):
        raise ValueError(
            f'MODEL.WEIGHTS={path} expects inputs {norm}, but the config has MODEL.PIXEL_MEAN '
            f'{list(cfg.MODEL.PIXEL_MEAN)}, MODEL.PIXEL_STD {list(cfg.MODEL.PIXEL_STD)}, INPUT.FORMAT '
            f'{cfg.INPUT.FORMAT!r}. Set MODEL.PIXEL_MEAN {list(norm.mean)} MODEL.PIXEL_STD {list(norm.std)} '
            f'INPUT.FORMAT {norm.channel_order!r}, or MODEL.DYNSCALE.PIXEL_NORM_FROM_WEIGHTS True to take them '
            f'from the weights')
    return meta
