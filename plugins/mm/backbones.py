"""MMEngine adapters for every dynscale backbone family (MMSegmentation 1.x and MMDetection 3.x).

One adapter class, :class:`DynscaleBackbone` (``type='DynscaleBackbone', arch='<registry name>'``), wraps
any backbone of :mod:`backbones` (``backbones.list_models()``) as an ``mmengine.model.BaseModule`` whose
``forward`` returns the tuple of stage features that decode heads and necks expect.  Four family
aliases are registered as well; they are the same adapter but reject an ``arch`` of another family, so a
config documents which method it uses:

============================  =========================================================================
``type``                      ``arch`` values (``backbones`` registry)
============================  =========================================================================
``DynscaleBackbone``          any registered name
``ElasticBackbone``           the Elastic family and its baselines: resnext50/101_32x4d, resnext50/101_elastic,
                              selastic_resnext50, se_resnext50(_elastic), densenet201(_elastic),
                              dla60x(_elastic), dla102x(_elastic, _selastic)
``SlimmableNet``              us_mobilenet_v1, us_mobilenet_v2, us_vgg16_bn, us_resnet50
``SACTResNet``                sact_resnet50/101, act_resnet50/101, preact_resnet50/101
``RSNetBackbone``             rs_resnet18, rs_resnet50, rs_resnet101, rs_mobilenet_v2
============================  =========================================================================

The former names ``ElasticResNeXt`` and ``RSNet`` (which were also the names of model classes in
:mod:`backbones`) raise, naming ``ElasticBackbone`` / ``RSNetBackbone``.

Every class is registered in ``mmseg.registry.MODELS`` and ``mmdet.registry.MODELS`` (whichever is
installed), so a config only needs::

    custom_imports = dict(imports=['plugins.mm'], allow_failed_imports=False)
    model = dict(backbone=dict(_delete_=True, type='ElasticBackbone', arch='resnext50_elastic',
                               out_indices=(0, 1, 2, 3), strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2),
                               multi_grid=(1, 2, 4), norm_cfg=dict(type='SyncBN', requires_grad=True)))

The arguments follow MMSeg/MMDet's ``ResNet`` (``out_indices``, ``frozen_stages``, ``norm_cfg``,
``norm_eval``, ``with_cp``, ``strides``/``dilations``, ``pretrained``, ``init_cfg``); see
:class:`DynscaleBackbone`.  Convention sources: MMSeg ``mmseg/models/backbones/resnet.py`` (1.2.2) and
``frameworks_and_users.md`` Sec. 2.2.
"""
import os
import warnings

from mmengine.logging import MMLogger, print_log
from mmengine.model import BaseModule
from torch import nn

import backbones as dyn
from backbones.base import output_stride_dilations
from backbones.checkpoint import CheckpointMismatchError
from backbones.pretrained import InputNormalization, load_pretrained, missing_file_message, read_checkpoint, read_source

from .registry import register_mm_module, register_renamed

__all__ = ['DynscaleBackbone', 'ElasticBackbone', 'SlimmableNet', 'SACTResNet', 'RSNetBackbone', 'norm_layer_from_cfg',
           'strides_dilations_to_output_stride', 'apply_bn_options']


# ----------------------------------------------------------------------------------------------- norm
_BN_TYPES = ('BN', 'BN2d')


def norm_layer_from_cfg(norm_cfg):
    """Translate an MMCV ``norm_cfg`` into the ``norm_layer`` factory the backbones take.

    Plain BN (``type='BN'``) is *not* turned into a factory: the family builds its own BatchNorms
    (private per-width/per-resolution BNs included) and the BN options (``momentum``, ``eps``,
    ``requires_grad``) are applied afterwards by :func:`apply_bn_options`, which works for every family.
    Any other type (``SyncBN``, ``GN``, ``IN``, ...) becomes
    ``lambda C: mmcv.cnn.build_norm_layer(cfg, C)[1]``.

    Args:
        norm_cfg (dict | None): e.g. ``dict(type='SyncBN', requires_grad=True)``,
            ``dict(type='GN', num_groups=32)``, ``dict(type='BN', momentum=0.05)``.

    Returns:
        tuple: ``(norm_layer or None, bn_options dict)``.

    Raises:
        ValueError: ``norm_cfg`` is not a dict with a ``type``, or GN without ``num_groups``.
    """
    if norm_cfg is None:
        return None, {}
    if not isinstance(norm_cfg, dict) or 'type' not in norm_cfg:
        raise ValueError(f"norm_cfg must be a dict with a 'type' (BN, SyncBN, GN, ...), got {norm_cfg!r}")
    cfg = dict(norm_cfg)
    typ = cfg['type']
    if typ in _BN_TYPES:
        unknown = set(cfg) - {'type', 'momentum', 'eps', 'requires_grad'}
        if unknown:
            raise ValueError(f'BN norm_cfg accepts momentum, eps, requires_grad; got unknown keys '
                             f'{sorted(unknown)}')
        return None, {k: cfg[k] for k in ('momentum', 'eps', 'requires_grad') if k in cfg}
    if typ == 'GN' and 'num_groups' not in cfg:
        raise ValueError("GN norm_cfg needs num_groups, e.g. dict(type='GN', num_groups=32)")
    from mmcv.cnn import build_norm_layer

    def norm_layer(num_features):
        return build_norm_layer(cfg, num_features)[1]
    norm_layer.norm_cfg = cfg
    return norm_layer, {}


def apply_bn_options(module, momentum=None, eps=None, requires_grad=None, **_):
    """Set ``momentum``/``eps`` of every ``_BatchNorm`` in ``module`` and freeze its affine parameters
    when ``requires_grad`` is False (MMCV ``norm_cfg`` semantics).  Returns the number of BNs changed."""
    n = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if momentum is not None:
                m.momentum = momentum
            if eps is not None:
                m.eps = eps
            if requires_grad is False:
                for p in m.parameters(recurse=False):
                    p.requires_grad = False
            n += 1
    return n


def strides_dilations_to_output_stride(strides, dilations):
    """Map MMSeg-style per-stage ``strides``/``dilations`` to an output stride.

    The backbones place the atrous layout themselves (DeepLabV3, Chen et al. 2017 Sec. 3), so only the
    three layouts of :func:`backbones.base.output_stride_dilations` are accepted:
    OS 32 ``(1,2,2,2)/(1,1,1,1)``, OS 16 ``(1,2,2,1)/(1,1,1,2)``, OS 8 ``(1,2,1,1)/(1,1,2,4)``.

    Raises:
        ValueError: any other combination (the message lists the three allowed ones).
    """
    strides, dilations = tuple(strides), tuple(dilations)
    table = {os_: output_stride_dilations(os_)[:2] for os_ in (32, 16, 8)}
    for os_, (s, d) in table.items():
        if (strides, dilations) == (tuple(s), tuple(d)):
            return os_
    allowed = '; '.join(f'OS {k}: strides={tuple(s)}, dilations={tuple(d)}' for k, (s, d) in table.items())
    raise ValueError(f'strides={strides}, dilations={dilations} is not a supported layout. '
                     f'Allowed: {allowed} '
                     f'(or pass output_stride=32|16|8)')


# ------------------------------------------------------------------------------------------- adapter
@register_mm_module
class DynscaleBackbone(BaseModule):
    """MMEngine ``BaseModule`` wrapping one :mod:`backbones` model for MMSeg/MMDet.

    The wrapped network lives in ``self.model`` (state-dict prefix ``backbone.model.`` inside a
    segmentor/detector; :func:`backbones.load_pretrained` strips it).  It is built with
    ``num_classes=0`` (no classifier, so DDP sees no unused head parameters).

    Args:
        arch (str): registered backbone name (``backbones.list_models()``).
        out_indices (Sequence[int]): stages 0..3 to return. Default (0, 1, 2, 3).
        frozen_stages (int): -1 none; 0 the stem; k the stem and stages 0..k-1 (``eval()`` and
            ``requires_grad=False``, re-applied by :meth:`train`).
        norm_cfg (dict | None): MMCV norm config.  ``BN`` keeps the family's own BatchNorms and applies
            ``momentum``/``eps``/``requires_grad``; ``SyncBN``/``GN``/... are passed as ``norm_layer``
            (families with private or slimmable BN reject them with ValueError).
        norm_eval (bool): keep normalisation layers in eval mode while training (MMSeg default False,
            MMDet default True; the config decides).
        with_cp (bool): activation checkpointing, passed to families that implement it.
        strides, dilations (Sequence[int] | None): MMSeg-style per-stage layout; mapped by
            :func:`strides_dilations_to_output_stride`.  Give either these or ``output_stride``.
        output_stride (int | None): 32, 16 or 8 (default 32).
        multi_grid (Sequence[int] | None): per-unit dilation multipliers of the last stage (DeepLabV3
            multi-grid, e.g. (1, 2, 4)); families without it raise.
        width (float | None): slimmable families: width multiplier to set after building (ValueError
            outside ``width_range``).
        resolution (int | None): RS-Net: the resolution whose private BN is used initially (ValueError
            if not one of ``resolutions``).
        pretrained (str | None): deprecated alias of ``init_cfg=dict(type='Pretrained', checkpoint=...)``
            (``EncoderDecoder(pretrained=...)`` sets it).
        init_cfg (dict | None): ``dict(type='Pretrained', checkpoint=<path|url>, prefix='backbone.',
            strict=True, source=None, private_bn_map=None)``; loaded by :meth:`init_weights` through
            :func:`backbones.load_pretrained`: a dynscale checkpoint, an official release (allenai/elastic,
            slimmable_networks, MutualNet, RS-Nets) or a torchvision / timm state dict, strict both ways (the
            error lists every unmatched key).  A missing local file prints the convert command of its
            MODEL_ZOO.md row.  The weights' input normalisation is kept in :attr:`input_normalization` and
            checked against the ``data_preprocessor`` by :class:`plugins.mm.hooks.InputNormalizationHook`.
        **arch_kwargs: family options passed to the factory (``resolutions``, ``resolution_rule``,
            ``width_list``, ``tau``, ...).

    Shapes:
        ``forward``: ``[N, 3, H, W] -> tuple`` of ``[N, C_i, H / s_i, W / s_i]`` for ``i`` in
        ``out_indices`` (stage order); ``C_i`` from :attr:`out_channels`, ``s_i`` from :attr:`strides`.

    Raises:
        ValueError: unknown ``arch`` (with close matches), an arch of another family for a family alias,
            an option the family does not accept, a width/resolution the model was not built for, both
            ``pretrained`` and ``init_cfg``, or an unsupported strides/dilations layout.
    """

    #: family accepted by this class (None = any); the aliases below set it
    family = None

    def __init__(self, arch, out_indices=(0, 1, 2, 3), frozen_stages=-1,
                 norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False, with_cp=False,
                 strides=None, dilations=None, output_stride=None, multi_grid=None, width=None,
                 resolution=None, pretrained=None, init_cfg=None, **arch_kwargs):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('set either pretrained or init_cfg on the backbone, not both')
            warnings.warn('DynscaleBackbone(pretrained=...) is deprecated; use '
                          "init_cfg=dict(type='Pretrained', checkpoint=...)", DeprecationWarning)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg)
        fam = dyn.model_family(arch)  # ValueError with close matches for unknown names
        if self.family is not None and fam != self.family:
            choices = ', '.join(dyn.list_models(family=self.family)) or 'none registered'
            alias = _ALIAS_OF_FAMILY.get(fam, 'DynscaleBackbone')
            raise ValueError(f'{type(self).__name__} wraps the {self.family!r} family ({choices}); '
                             f'{arch!r} is a {fam!r} backbone: use type={alias!r}')
        if (strides is None) != (dilations is None):
            raise ValueError('give strides and dilations together (or output_stride)')
        if strides is not None:
            os_ = strides_dilations_to_output_stride(strides, dilations)
            if output_stride is not None and output_stride != os_:
                raise ValueError(f'strides/dilations mean output stride {os_}, '
                                 f'but output_stride={output_stride}')
            output_stride = os_
        norm_layer, bn_options = norm_layer_from_cfg(norm_cfg)
        kwargs = dict(num_classes=0, out_indices=tuple(out_indices), frozen_stages=frozen_stages,
                      norm_eval=norm_eval, output_stride=32 if output_stride is None else output_stride)
        if multi_grid is not None:
            kwargs['multi_grid'] = tuple(multi_grid)
        if norm_layer is not None:
            kwargs['norm_layer'] = norm_layer
        if with_cp:
            kwargs['with_cp'] = True
        kwargs.update(arch_kwargs)
        try:
            model = dyn.create(arch, **kwargs)
        except TypeError as e:
            common = ('num_classes', 'out_indices', 'frozen_stages', 'norm_eval', 'output_stride')
            given = sorted(k for k in kwargs if k not in common)
            raise ValueError(f'backbone {arch!r} ({fam} family) does not accept one of the options {given} '
                             f'({e}); remove it from the backbone config (with_cp, multi_grid and norm '
                             f'types other than BN are family-specific)') from e
        except ValueError as e:
            raise ValueError(f'building backbone {arch!r} ({fam} family) failed: {e}') from e
        apply_bn_options(model, **bn_options)
        self.arch = arch
        self.norm_cfg = norm_cfg
        self.with_cp = with_cp
        self.model = model
        if width is not None:
            self.set_width(width)
        if resolution is not None:
            self.set_resolution(resolution)
        # re-apply requires_grad=False of frozen stages after apply_bn_options / set_width
        model.train(model.training)

    # ------------------------------------------------------------------------------ metadata
    @property
    def out_indices(self):
        """Stage indices returned by :meth:`forward`."""
        return self.model.out_indices

    @property
    def frozen_stages(self):
        return self.model.frozen_stages

    @property
    def norm_eval(self):
        return self.model.norm_eval

    @property
    def out_channels(self):
        """Channels of each returned feature at the current width (list of int, ``out_indices`` order)."""
        ch = self.model.stage_channels()
        return [ch[i] for i in sorted(self.model.out_indices)]

    @property
    def strides(self):
        """Stride (input pixels) of each returned feature (list of int)."""
        return [self.model._stage_strides[i] for i in sorted(self.model.out_indices)]

    @property
    def backbone_family(self):
        """The wrapped model's family ('elastic', 'slimmable', 'sact', 'rsnet')."""
        return self.model.family

    def _require(self, attr, capability):
        if not hasattr(self.model, attr):
            from backbones.capabilities import CAPABILITIES, families_with, models_with
            names = ', '.join(models_with(capability)) or 'none registered'
            raise ValueError(f'{self.arch} ({self.model.family} family) does not have {CAPABILITIES[capability]}; '
                             f'only the {" / ".join(families_with(capability))} family has it ({names})')
        return getattr(self.model, attr)

    # ------------------------------------------------------------------------------ switching
    def set_width(self, width):
        """Slimmable families: set the width multiplier (ValueError outside ``width_range``); the model's one width
        switch (:meth:`backbones.base.DynamicBackbone.set_width`: 1.0 on another family is a no-op)."""
        self.model.set_width(width)

    def width_context(self, width):
        """Context manager running at ``width`` (slimmable families)."""
        return self._require('width_context', 'width')(width)

    def set_resolution(self, resolution):
        """RS-Net: select the private BN of ``resolution`` (ValueError if it is not trained)."""
        self._require('set_resolution', 'private_bn')(resolution)

    def resolution_context(self, resolution):
        """Context manager selecting the private BN of ``resolution`` (RS-Net)."""
        return self._require('resolution_context', 'private_bn')(resolution)

    @property
    def ponder_costs(self):
        """SACT/ACT: per-stage ponder-cost maps of the last forward (``[N, h, w]`` or ``[N]``)."""
        return self._require('ponder_costs', 'ponder_cost')

    @property
    def input_normalization(self):
        """The input normalisation the loaded weights expect (:class:`backbones.pretrained.InputNormalization`),
        or None when no pretrained weights were loaded."""
        meta = getattr(self.model, 'pretrained_meta', None)
        return None if meta is None else InputNormalization.from_meta(meta)

    # ------------------------------------------------------------------------------ forward
    def forward(self, x):
        """``[N, 3, H, W]`` normalised images -> tuple of stage features (see class docstring)."""
        feats = self.model.forward_stages(x)
        return tuple(feats.values())

    def train(self, mode=True):
        """Set train mode and re-apply ``frozen_stages`` and ``norm_eval`` (MMSeg/MMDet ResNet
        semantics; the wrapped model's ``train`` does both)."""
        super().train(mode)
        self.model.train(mode)
        return self

    # ------------------------------------------------------------------------------ weights
    def init_weights(self):
        """Load ``init_cfg=dict(type='Pretrained', ...)`` with a loud key report, or keep the family's
        own initialisation (paper init, applied at construction) when ``init_cfg`` is None.

        Raises:
            CheckpointMismatchError: ``strict`` (default True) and any missing / unexpected /
                shape-mismatched key, or a prefix that selects no key; the message lists the keys.
        """
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            self._load_pretrained(cfg)
            self._is_init = True
            return
        if cfg:
            super().init_weights()
        self._is_init = True

    def _load_pretrained(self, cfg):
        from mmengine.runner.checkpoint import CheckpointLoader
        unknown = set(cfg) - {'type', 'checkpoint', 'prefix', 'strict', 'map_location', 'source', 'private_bn_map'}
        if unknown:
            raise ValueError(f'Pretrained init_cfg accepts checkpoint, prefix, strict, map_location, source, '
                             f'private_bn_map; got {sorted(unknown)}')
        ckpt = cfg.get('checkpoint')
        if not ckpt:
            raise ValueError("init_cfg=dict(type='Pretrained') needs checkpoint=<path or url>")
        if '://' not in str(ckpt) and not os.path.exists(ckpt):
            raise FileNotFoundError(missing_file_message(str(ckpt)) + '\n(or set init_cfg=None to train from '
                                                                      'the paper initialisation)')
        strict = cfg.get('strict', True)
        logger = MMLogger.get_current_instance()
        if '://' in str(ckpt):
            obj = CheckpointLoader.load_checkpoint(ckpt, map_location=cfg.get('map_location', 'cpu'), logger=logger)
        else:
            obj = read_source(ckpt)  # any origin: dynscale, official releases, torchvision / timm
        prefix = cfg.get('prefix')
        if prefix:
            sd, meta = read_checkpoint(obj if isinstance(obj, dict) else {'state_dict': obj.state_dict,
                                                                          'meta': obj.meta})
            sel = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            if not sel:
                raise CheckpointMismatchError(
                    f'no key of {ckpt} starts with prefix {prefix!r} (first keys: {list(sd)[:8]}); fix '
                    f'init_cfg.prefix (e.g. "backbone." for a segmentor/detector checkpoint, none for a '
                    f'dynscale backbone checkpoint)')
            obj = {'state_dict': sel, 'meta': meta}
        report = load_pretrained(self.model, obj, source=cfg.get('source'), strict=strict,
                                 private_bn_map=cfg.get('private_bn_map'), logger=logger)
        fam = (report.meta or {}).get('family')
        if fam and fam != self.model.family:
            raise CheckpointMismatchError(f'{ckpt} is a {fam!r} backbone ({report.meta.get("variant")}), the model is '
                                          f'{self.model.family!r}: pick the checkpoint exported for this variant')
        print_log(f'{type(self).__name__}({self.arch}): {ckpt}: {report.summary()}', logger='current')
        self.pretrained_report = report
        self._register_loaded_modules(ckpt)

    def _register_loaded_modules(self, ckpt):
        """Loading may create modules (a slimmable release's stored per-width BN statistics); inside MMEngine's
        top-level ``init_weights`` every module shares one ``_params_init_info`` table, which it reads for every
        parameter and then deletes from every module: give the new modules and parameters their entry, or the
        runner stops with ``AttributeError: ... no attribute '_params_init_info'``."""
        shared = getattr(self, '_params_init_info', None)
        if shared is None:  # not called from a top-level BaseModule.init_weights
            return
        for m in self.modules():
            if not hasattr(m, '_params_init_info'):
                m._params_init_info = shared
        for p in self.parameters():
            if 'init_info' not in shared[p]:
                shared[p]['init_info'] = f'created while loading {ckpt}'
                shared[p]['tmp_mean_value'] = p.data.mean().cpu()

    def extra_repr(self):
        return f'arch={self.arch!r}'


@register_mm_module
class ElasticBackbone(DynscaleBackbone):
    """:class:`DynscaleBackbone` restricted to the Elastic family (Wang et al., CVPR 2019) and its baselines:
    ``arch`` in ``backbones.list_models(family='elastic')`` (ResNeXt, SE-ResNeXt, DenseNet-201, DLA-X, each plain
    and Elastic).  Accepts ``norm_cfg`` BN/SyncBN/GN, ``with_cp`` and ``multi_grid`` (ResNeXt: default (1, 2, 4)
    at output stride 16/8).  Default arch ``resnext50_elastic``.  Former name ``ElasticResNeXt``."""
    family = 'elastic'

    def __init__(self, arch='resnext50_elastic', **kwargs):
        super().__init__(arch, **kwargs)


@register_mm_module
class SlimmableNet(DynscaleBackbone):
    """:class:`DynscaleBackbone` restricted to the US-Net/MutualNet slimmable family (Yu & Huang 2019;
    Yang et al. 2020): us_mobilenet_v1, us_mobilenet_v2, us_vgg16_bn, us_resnet50.  ``width`` sets the
    width multiplier; stage channels (:attr:`out_channels`) follow it, so the neck/head first conv must
    slice its input channels (``backbones.slimmable.InputSlicedConv2d``).  Default arch us_mobilenet_v2."""
    family = 'slimmable'

    def __init__(self, arch='us_mobilenet_v2', **kwargs):
        super().__init__(arch, **kwargs)


@register_mm_module
class SACTResNet(DynscaleBackbone):
    """:class:`DynscaleBackbone` restricted to the SACT/ACT family (Figurnov et al., CVPR 2017):
    sact_resnet50/101, act_resnet50/101, preact_resnet50/101.  After each forward,
    :attr:`ponder_costs` holds the per-stage ponder-cost maps used by the segmentor/detector ponder loss.
    Default arch sact_resnet101."""
    family = 'sact'

    def __init__(self, arch='sact_resnet101', **kwargs):
        super().__init__(arch, **kwargs)


@register_mm_module
class RSNetBackbone(DynscaleBackbone):
    """:class:`DynscaleBackbone` restricted to the RS-Net family (Wang et al., ECCV 2020): rs_resnet18,
    rs_resnet50, rs_resnet101, rs_mobilenet_v2.  Pass ``resolutions=(...)`` (descending) and
    ``resolution_rule`` ('nearest' or 'explicit') through to the factory; ``resolution`` selects the
    private BN used initially.  Default arch rs_resnet50.  Former name ``RSNet``."""
    family = 'rsnet'

    def __init__(self, arch='rs_resnet50', **kwargs):
        super().__init__(arch, **kwargs)


_ALIAS_OF_FAMILY = {'elastic': 'ElasticBackbone', 'slimmable': 'SlimmableNet', 'sact': 'SACTResNet',
                    'rsnet': 'RSNetBackbone'}

# former config names (they were also model class names in backbones: backbones.elastic.ElasticResNeXt,
# backbones.rsnet.RSNet)
register_renamed('ElasticResNeXt', 'ElasticBackbone', BaseModule, hint='it wraps every Elastic backbone')
register_renamed('RSNet', 'RSNetBackbone', BaseModule)

_RENAMED = {'ElasticResNeXt': 'ElasticBackbone', 'RSNet': 'RSNetBackbone'}


def __getattr__(name):
    if name in _RENAMED:
        raise AttributeError(f'plugins.mm.backbones.{name} was renamed {_RENAMED[name]} (config type '
                             f'{_RENAMED[name]!r})')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
