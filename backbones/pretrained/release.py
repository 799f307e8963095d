"""What a weights file is (:class:`Release`) and the helpers the origin modules share.

An origin module (``origin_*.py``) looks at a :class:`~backbones.pretrained.files.SourceFile` and, when it
recognises the file, returns a :class:`Release`: which official architecture it holds, which dynscale
models it fits, how to build the dynscale template, how inputs must be normalised, which evaluation
protocol reproduces the authors' numbers, and a ``convert`` function that maps the tensors.
"""
import re
from dataclasses import dataclass, field

from ..checkpoint import CheckpointMismatchError
from .normalization import IMAGENET

__all__ = ['Release', 'UnsupportedCheckpointError', 'strip_module', 'count_blocks', 'PROTOCOLS',
           'PROTOCOL_TRANSFORMS']

#: evaluation protocols of the origins (``tools/pretrain.py --evaluate`` runs them)
PROTOCOLS = {
    'resize256-crop224': 'Resize 256 (shorter side) -> CenterCrop 224 -> normalise (allenai/elastic, '
                         'torchvision, timm)',
    'usnet-stored': 'Resize 256 -> CenterCrop 224, every width with its stored per-width BN statistics '
                    '(JiahuiYu/slimmable_networks test_only)',
    'mutualnet-recalibrate': 'Resize 256 -> CenterCrop 224 -> bilinear (align_corners=True) to r; BN statistics '
                             'recalibrated per (width, r) on 9 training batches (MutualNet ComputePostBN)',
    'rsnet-multires': 'per resolution s: Resize int(s / 0.875) -> CenterCrop s, no normalisation, private BN of s '
                      '(yikaiw/RS-Nets validate)',
    'timm-bicubic-crop0.875': 'Resize int(224 / 0.875) = 256 bicubic -> CenterCrop 224 -> normalise (timm '
                              'pretrained_cfg of seresnext50_32x4d.racm_in1k, resnext101_32x4d.gluon_in1k)',
    'timm-bicubic-crop0.95': 'Resize int(224 / 0.95) = 235 bicubic -> CenterCrop 224 -> normalise with mean = std '
                             '= 0.5 (timm pretrained_cfg of resnetv2_50 / resnetv2_101 .a1h_in1k)',
}

#: what a protocol sets in the evaluation transform: interpolation and crop_pct (the resize side of a crop s is
#: ``int(s / crop_pct)``, as timm's ``transforms_factory`` computes it); protocols not listed keep the tool's
#: defaults (bilinear, Resize 256 -> CenterCrop 224)
PROTOCOL_TRANSFORMS = {
    'timm-bicubic-crop0.875': {'interpolation': 'bicubic', 'crop_pct': 0.875},
    'timm-bicubic-crop0.95': {'interpolation': 'bicubic', 'crop_pct': 0.95},
}


class UnsupportedCheckpointError(CheckpointMismatchError):
    """A recognised official file with no dynscale model (e.g. S-Nets, AutoSlim, MutualNet MBv1 1.6x); the message
    says what it is and why it is not supported."""


@dataclass
class Release:
    """A recognised weights file.

    Attributes:
        origin (str): ``'allenai/elastic'``, ``'JiahuiYu/slimmable_networks'``, ``'taoyang1122/MutualNet'``,
            ``'yikaiw/RS-Nets'``, ``'torchvision'``, ``'timm'`` or ``'dynscale'``.
        name (str): the official architecture (``'resnext50_elastic'``, ``'resnet50'``, ``'parallel_resnet50'``).
        models (tuple[str]): dynscale models the weights fit; the first is the default.
        num_classes (int): classifier outputs of the file.
        convert (callable): ``convert(source, template, transfer, model_name)`` filling a
            :class:`~backbones.pretrained.mapping.Transfer`.
        build_kwargs (dict): factory arguments the template (and a model built for these weights) needs,
            e.g. ``width_range``/``width_list`` (slimmable) or ``resolutions`` (RS-Nets).
        normalization (InputNormalization): how inputs must be prepared.
        protocol (str): key of :data:`PROTOCOLS`.
        meta (dict): extra metadata written into the converted checkpoint (stored BN configs, RS ``alpha``).
        per_model_kwargs (dict): model name -> extra factory arguments for that target only.
    """

    origin: str
    name: str
    models: tuple
    num_classes: int
    convert: object
    build_kwargs: dict = field(default_factory=dict)
    normalization: object = IMAGENET
    protocol: str = 'resize256-crop224'
    meta: dict = field(default_factory=dict)
    per_model_kwargs: dict = field(default_factory=dict)

    def kwargs_for(self, model_name):
        """Factory arguments of the template of ``model_name`` (``build_kwargs`` + the per-model ones)."""
        kw = dict(self.build_kwargs)
        kw.update(self.per_model_kwargs.get(model_name, {}))
        return kw

    def check_target(self, model_name):
        """Raise unless ``model_name`` is one of :attr:`models` (the message names the models it fits).

        Raises:
            CheckpointMismatchError: a checkpoint offered to another architecture.
        """
        if model_name not in self.models:
            raise CheckpointMismatchError(
                f'this file holds {self.origin} {self.name!r} weights, which fit dynscale '
                f'{" or ".join(repr(m) for m in self.models)}, not {model_name!r}: build '
                f'backbones.create({self.models[0]!r}, ...) or pick the checkpoint released for {model_name!r} '
                f'(see MODEL_ZOO.md)')

    def describe(self):
        return f'{self.origin} {self.name} ({self.num_classes} classes) -> {", ".join(self.models)}'


def strip_module(state_dict):
    """The common wrapper prefix of DataParallel / DDP files (``module.``), or ``''``."""
    keys = list(state_dict)
    return 'module.' if keys and all(k.startswith('module.') for k in keys) else ''


def count_blocks(state_dict, prefix, layer_fmt=r'layer(\d+)\.(\d+)\.'):
    """Units per stage in ResNet-style keys: ``[n_layer1, n_layer2, ...]``.

    Args:
        state_dict (dict): keys to scan.
        prefix (str): wrapper prefix to skip (``'module.'``).
        layer_fmt (str): regex with the stage number and the unit index as groups.
    """
    pat = re.compile('^' + re.escape(prefix) + layer_fmt)
    seen = {}
    for k in state_dict:
        m = pat.match(k)
        if m:
            stage, unit = int(m.group(1)), int(m.group(2))
            seen[stage] = max(seen.get(stage, -1), unit)
    return [seen[s] + 1 for s in sorted(seen)]
