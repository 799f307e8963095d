"""Config keys of the dynscale Detectron2 plugin (``cfg.MODEL.DYNSCALE``) and the one ``setup()``.

Every new key lives under ``MODEL.DYNSCALE`` (TridentNet's ``MODEL.TRIDENT`` pattern). Call
:func:`add_dynscale_config` before ``merge_from_file``, or simply use :func:`setup` /
:func:`get_dynscale_cfg`, which every entry point of this project uses (train, eval, converter, tests),
so no script can forget it (detectron2 issues #3187, #5111: ``KeyError: Non-existent config key``).
"""

import contextlib
import os

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from backbones.training import POLICIES, capability_of, supplied_capabilities

NORMS = ('FrozenBN', 'BN', 'SyncBN', 'nnSyncBN', 'naiveSyncBN', 'GN')
OUT_FEATURE_NAMES = ('res2', 'res3', 'res4', 'res5')
RESOLUTION_RULES = ('nearest', 'explicit')
RSNET_TRAIN_MODES = ('all', 'random')


def add_dynscale_config(cfg):
    """Declare every ``MODEL.DYNSCALE`` key (with its default) on a detectron2 ``CfgNode``.

    Args:
        cfg (CfgNode): usually ``detectron2.config.get_cfg()``; modified in place.

    Returns:
        CfgNode: ``cfg`` (for chaining).
    """
    _C = cfg
    _C.MODEL.DYNSCALE = CN()
    D = _C.MODEL.DYNSCALE
    # Name in the dynscale backbone registry (``backbones.list_models()``), e.g. "resnext50_elastic",
    # "us_vgg16_bn", "sact_resnet50", "rs_resnet50". Its family must match MODEL.BACKBONE.NAME's builder.
    D.NAME = 'resnext50_elastic'
    # Normalisation of the backbone, as MODEL.RESNETS.NORM: "FrozenBN" (ImageNet statistics and affine
    # fixed), "BN", "SyncBN" (multi-GPU statistics) or "GN" where the family accepts a norm_layer.
    # Private (RS-Net) and slimmable BNs keep their per-resolution / per-width behaviour under all of them.
    D.NORM = 'FrozenBN'
    # Feature maps returned, as MODEL.RESNETS.OUT_FEATURES: any of res2..res5 (strides 4, 8, 16, 32).
    D.OUT_FEATURES = ['res2', 'res3', 'res4', 'res5']
    # 32, 16 or 8 (dilated last stages, DeepLab style); FPN needs 32.
    D.OUTPUT_STRIDE = 32

    # ---- slimmable (US-Net / MutualNet) -------------------------------------------------------------
    # Width multiplier used for evaluation and for training when the sandwich rule is off.
    D.WIDTH = 1.0
    # (w_min, w_max) of the width multiplier; [] keeps the backbone's default range.
    D.WIDTH_RANGE = []
    # Widths that keep private BN statistics (evaluated widths); [] keeps the backbone's default list.
    D.WIDTH_LIST = []

    D.SANDWICH = CN()
    # Sandwich rule (Yu & Huang 2019): every iteration trains the max width, the min width and
    # NUM_SUBNETS-2 random widths on the same images, gradients accumulated, one optimizer step.
    D.SANDWICH.ENABLED = False
    D.SANDWICH.NUM_SUBNETS = 4
    # MutualNet (Yang et al. 2020, Sec. 4.3): non-teacher sub-networks get a shorter side drawn from
    # TRAIN_SCALES (longer side capped at MAX_SIZE); the teacher (max width) sees max(TRAIN_SCALES).
    # [] = US-Net: every sub-network sees the loader's images.
    D.SANDWICH.TRAIN_SCALES = []
    D.SANDWICH.MAX_SIZE = 1000
    # Seed of the width/scale sampler; -1 draws it from the global RNG (which SEED controls).
    D.SANDWICH.SEED = -1

    # ---- RS-Net private BN per scale bucket ----------------------------------------------------------
    # Backbone resolutions = private BN sets, descending ([] = backbone default 224, 192, 160, 128, 96).
    D.RESOLUTIONS = []
    # Detection shorter sides paired with RESOLUTIONS (same length, descending). Bucket i (private BN i)
    # serves images whose shorter side is nearest to SCALES[i]. [] derives them as
    # round(max(INPUT.MIN_SIZE_TRAIN) * r / max(RESOLUTIONS)).
    D.SCALES = []
    # "nearest": bucket of the scale nearest to the input's shorter side (trainer and evaluator set it
    # explicitly from the unpadded image size; otherwise the padded tensor's shorter side is used);
    # "explicit": raise unless a scale was set with DynscaleD2Backbone.scale_context().
    D.RESOLUTION_RULE = 'nearest'
    # "all": every iteration trains each bucket on the batch resized to its scale (RS-Net parallel
    # training, ground-truth loss per bucket); "random": one bucket per iteration.
    D.RSNET_TRAIN_MODE = 'all'

    # ---- SACT ponder cost ----------------------------------------------------------------------------
    # Loss weight of the ponder cost (Figurnov et al. 2017, eq. 8): loss_ponder = TAU * sum over
    # blocks of the mean ponder cost (backbone blocks and, in the C4 model, the res5 box head).
    D.TAU = 0.01
    # Evaluation: save each test image's backbone ponder-cost map (.npy) and its drawing over the image (.png) to
    # this folder under OUTPUT_DIR ("" = off); tools/train_det.py --save-ponder-maps [DIR] sets it.
    D.SAVE_PONDER_MAPS = ''
    # C4 box head (DynscaleRes5ROIHeads): network whose stage 4 runs on the proposals; "" = NAME.
    # e.g. "preact_resnet101" for a plain res5 head on a SACT feature extractor.
    D.HEAD_NAME = ''

    # ---- training policy (backbones.training) --------------------------------------------------------
    # NAME: a method of backbones.training.POLICIES; "" derives it from the keys above and the backbone
    # (SANDWICH.ENABLED: "usnet" / "mutualnet"; RS-Net: "rsnet"; SACT / ACT: "sact"; otherwise "standard").
    # Any other key of this node (in a yaml file) is passed to the policy lower-cased, e.g. NUM_SUBNETS: 3, so a
    # method registered with backbones.training.register_policy needs no new config keys.
    D.POLICY = CN(new_allowed=True)
    D.POLICY.NAME = ''

    # ---- evaluation ----------------------------------------------------------------------------------
    # (width, shorter side) points to evaluate, e.g. [[1.0, 600], [0.5, 480]]; [] = one point
    # (WIDTH, INPUT.MIN_SIZE_TEST). A width other than 1.0 on a non-slimmable family is an error.
    D.EVAL_POINTS = []
    D.CALIBRATION = CN()
    # Post-statistics BN (Yu & Huang 2019, Sec. 3.3): before evaluating a slimmable backbone with
    # trainable BN at a (width, scale) point, re-estimate its BN statistics on NUM_BATCHES training
    # batches resized to that scale.
    D.CALIBRATION.ENABLED = True
    D.CALIBRATION.NUM_BATCHES = 8

    # ---- DDP -----------------------------------------------------------------------------------------
    # Force find_unused_parameters=True. It is switched on automatically where the graph is dynamic
    # (SACT; RS-Net with trainable private BNs); slimmable widths slice shared tensors (all used).
    D.FIND_UNUSED_PARAMETERS = False
    # Missing or shape-mismatched backbone keys when loading MODEL.WEIGHTS raise ValueError (False: log an
    # error and go on). FPN/head keys may be missing (ImageNet backbone checkpoints).
    D.STRICT_BACKBONE_LOAD = True
    # --eval-only and resuming need the whole detector: any missing / unexpected / shape-mismatched key raises.
    # True loads what fits (logged); fine-tuning from MODEL.WEIGHTS checks only the backbone (above).
    D.NON_STRICT = False
    # A non-finite loss or BN running statistic stops training naming the iteration and the batch's files (the last
    # checkpoint is kept); True skips such iterations instead (BN statistics restored, no update), logging each.
    D.SKIP_NONFINITE = False
    # MODEL.PIXEL_MEAN / PIXEL_STD / INPUT.FORMAT must match the input normalisation recorded in a converted
    # MODEL.WEIGHTS file (setup() raises otherwise); True takes them from the file instead.
    D.PIXEL_NORM_FROM_WEIGHTS = False
    return cfg


def validate_dynscale_config(cfg):
    """Check the ``MODEL.DYNSCALE`` values that do not depend on the backbone built.

    Raises:
        ValueError: naming the key, the bad value and the allowed values.
    """
    D = cfg.MODEL.DYNSCALE
    if D.NORM not in NORMS:
        raise ValueError(f'MODEL.DYNSCALE.NORM={D.NORM!r}; allowed: {", ".join(NORMS)}')
    bad = [f for f in D.OUT_FEATURES if f not in OUT_FEATURE_NAMES]
    if bad or not D.OUT_FEATURES:
        raise ValueError(
            f'MODEL.DYNSCALE.OUT_FEATURES={list(D.OUT_FEATURES)}; allowed: non-empty subset of '
            f'{list(OUT_FEATURE_NAMES)}'
        )
    if D.OUTPUT_STRIDE not in (8, 16, 32):
        raise ValueError(f'MODEL.DYNSCALE.OUTPUT_STRIDE={D.OUTPUT_STRIDE}; allowed: 8, 16, 32')
    if D.RESOLUTION_RULE not in RESOLUTION_RULES:
        raise ValueError(f'MODEL.DYNSCALE.RESOLUTION_RULE={D.RESOLUTION_RULE!r}; allowed: {RESOLUTION_RULES}')
    if D.RSNET_TRAIN_MODE not in RSNET_TRAIN_MODES:
        raise ValueError(
            f'MODEL.DYNSCALE.RSNET_TRAIN_MODE={D.RSNET_TRAIN_MODE!r}; allowed: {RSNET_TRAIN_MODES}'
        )
    if len(D.WIDTH_RANGE) not in (0, 2):
        raise ValueError(f'MODEL.DYNSCALE.WIDTH_RANGE={list(D.WIDTH_RANGE)}; give [] or [w_min, w_max]')
    if D.RESOLUTIONS and D.SCALES and len(D.RESOLUTIONS) != len(D.SCALES):
        raise ValueError(
            f'MODEL.DYNSCALE.SCALES {list(D.SCALES)} must pair one-to-one with RESOLUTIONS '
            f'{list(D.RESOLUTIONS)} (one private BN per scale bucket)'
        )
    if any(s <= 0 for s in list(D.SCALES) + list(D.SANDWICH.TRAIN_SCALES)):
        raise ValueError(
            'MODEL.DYNSCALE.SCALES and SANDWICH.TRAIN_SCALES must be positive shorter sides in pixels'
        )
    if D.SANDWICH.ENABLED and D.SANDWICH.NUM_SUBNETS < 2:
        raise ValueError(
            f'MODEL.DYNSCALE.SANDWICH.NUM_SUBNETS={D.SANDWICH.NUM_SUBNETS}; the sandwich rule '
            f'needs at least 2 (max and min width)'
        )
    for p in D.EVAL_POINTS:
        if len(p) != 2 or p[1] <= 0:
            raise ValueError(f'MODEL.DYNSCALE.EVAL_POINTS entry {p!r}; each must be [width, shorter_side]')
    if D.TAU < 0:
        raise ValueError(f'MODEL.DYNSCALE.TAU={D.TAU}; the ponder-cost weight must be >= 0')
    if D.CALIBRATION.NUM_BATCHES < 1:
        raise ValueError('MODEL.DYNSCALE.CALIBRATION.NUM_BATCHES must be >= 1')
    return cfg


def dynscale_options(cfg):
    """The ``MODEL.DYNSCALE`` keys set away from their defaults that only some backbone families have.

    Args:
        cfg (CfgNode): with the dynscale keys.

    Returns:
        dict: ``'MODEL.DYNSCALE.KEY value' -> capability`` (:mod:`backbones.capabilities`).
    """
    D = cfg.MODEL.DYNSCALE
    ref = add_dynscale_config(get_cfg()).MODEL.DYNSCALE
    out = {}

    def changed(*keys):
        a, b = D, ref
        for k in keys:
            a, b = a[k], b[k]
        return a != b, a
    for keys, cap in ((('WIDTH',), 'width'), (('WIDTH_RANGE',), 'width'), (('WIDTH_LIST',), 'width'),
                      (('SANDWICH', 'ENABLED'), 'width'), (('SANDWICH', 'TRAIN_SCALES'), 'width'),
                      (('RESOLUTIONS',), 'private_bn'), (('SCALES',), 'private_bn'),
                      (('RESOLUTION_RULE',), 'private_bn'), (('RSNET_TRAIN_MODE',), 'private_bn'),
                      (('TAU',), 'ponder_cost'), (('SAVE_PONDER_MAPS',), 'ponder_cost'),
                      (('CALIBRATION', 'NUM_BATCHES'), 'calibration')):
        diff, value = changed(*keys)
        if diff:
            out[f'MODEL.DYNSCALE.{".".join(keys)} {value!r}'] = cap
    widths = sorted({float(p[0]) for p in D.EVAL_POINTS if float(p[0]) != 1.0})
    if widths:
        out[f'MODEL.DYNSCALE.EVAL_POINTS widths {widths}'] = 'width'
    name = str(D.POLICY.get('NAME', '') or '')
    if name in POLICIES and capability_of(name):  # the method's own policy says what it needs
        out[f'MODEL.DYNSCALE.POLICY.NAME {name!r}'] = capability_of(name)
    supplied = supplied_capabilities(name)  # e.g. a method with its own calibration: its keys apply to any model
    return {k: c for k, c in out.items() if c not in supplied}


def check_dynscale_options(cfg):
    """Raise unless every ``MODEL.DYNSCALE`` option set applies to the family of ``MODEL.DYNSCALE.NAME`` (the one
    table :mod:`backbones.capabilities`); called by :func:`get_dynscale_cfg`, before any model is built or
    ``MODEL.WEIGHTS`` is read.

    Raises:
        backbones.capabilities.OptionNotApplicable: e.g. ``MODEL.DYNSCALE.WIDTH 0.5`` on an Elastic backbone (the
            message names the families with a width multiplier).
        ValueError: ``MODEL.DYNSCALE.NAME`` is not a registered backbone (with close matches);
            ``MODEL.DYNSCALE.POLICY.NAME`` is not a registered method.
    """
    import backbones
    from backbones.capabilities import check_options
    name = str(cfg.MODEL.DYNSCALE.POLICY.get('NAME', '') or '')
    if name and name not in POLICIES:
        raise ValueError(f'MODEL.DYNSCALE.POLICY.NAME: unknown training method {name!r}; choose one of '
                         f'{sorted(POLICIES)}, or import the module that registers it (tools/train_det.py '
                         f'--custom-imports MODULE)')
    families = {backbones.model_family(n) for n in backbones.list_models()} | {'dynscale'}
    builders = {f'build_{f}{fpn}_backbone' for f in families for fpn in ('', '_fpn')}
    if cfg.MODEL.BACKBONE.NAME not in builders:
        # detectron2's own backbone (build_resnet_backbone ...): MODEL.DYNSCALE does not apply
        return check_options(None, dynscale_options(cfg), where='the config',
                             label=f'MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME!r}')
    return check_options(cfg.MODEL.DYNSCALE.NAME, dynscale_options(cfg), where='the config')


def _config_keys(node, prefix=''):
    """Every leaf key of a CfgNode as a dotted path (``MODEL.DYNSCALE.WIDTH``)."""
    out = []
    for k, v in node.items():
        out.extend(_config_keys(v, f'{prefix}{k}.') if isinstance(v, dict) else [f'{prefix}{k}'])
    return out


@contextlib.contextmanager
def _named_keys(cfg, where):
    """Turn yacs' ``AssertionError('Non-existent key: X')`` into a :class:`backbones.errors.ConfigError` listing
    the closest existing keys (a misspelt key on the command line or in a yaml)."""
    try:
        yield
    except AssertionError as e:
        if 'Non-existent key' not in str(e):
            raise
        import difflib

        from backbones.errors import ConfigError
        key = str(e).split('Non-existent key:', 1)[1].strip()
        close = difflib.get_close_matches(key.upper(), _config_keys(cfg), n=4, cutoff=0.6)
        raise ConfigError(f'config key {key} (from {where}) does not exist'
                          + (f"; did you mean {', '.join(close)}?" if close else '')
                          + ' (dynscale keys live under MODEL.DYNSCALE, see plugins/detectron2/config.py)') from None


def check_backbone_name(cfg):
    """Raise unless ``MODEL.BACKBONE.NAME`` is registered in detectron2's ``BACKBONE_REGISTRY`` (detectron2 would
    raise a ``KeyError`` from inside ``build_model``).

    Raises:
        backbones.errors.ConfigError: the name is not registered; the message lists the closest names.
    """
    import difflib

    from detectron2.modeling import BACKBONE_REGISTRY

    from backbones.errors import ConfigError
    name = cfg.MODEL.BACKBONE.NAME
    names = [n for n, _ in BACKBONE_REGISTRY]
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    ours = [n for n, f in BACKBONE_REGISTRY if f.__module__.startswith('plugins')]
    raise ConfigError(f'MODEL.BACKBONE.NAME {name!r} is not a registered detectron2 backbone'
                      + (f"; did you mean {', '.join(close)}?" if close else '')
                      + f" (dynscale: {', '.join(sorted(ours))})")


def get_dynscale_cfg(config_file=None, opts=()):
    """A frozen-free config with the dynscale keys, merged from ``config_file`` and ``opts``.

    Args:
        config_file (str | None): a yaml under ``det_configs/detectron2/`` (``_BASE_`` resolved).
        opts (list[str]): ``KEY VALUE`` pairs, as on the command line.

    Returns:
        CfgNode: validated, not frozen.

    Raises:
        FileNotFoundError: ``config_file`` does not exist.
        backbones.errors.ConfigError: a key that does not exist (with the closest keys), or an unregistered
            ``MODEL.BACKBONE.NAME`` (:func:`check_backbone_name`).
        ValueError: a bad ``MODEL.DYNSCALE`` value (see :func:`validate_dynscale_config`).
        backbones.capabilities.OptionNotApplicable: an option the backbone's family does not have
            (:func:`check_dynscale_options`).
    """
    cfg = get_cfg()
    add_dynscale_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f'config file not found: {config_file}')
        with _named_keys(cfg, config_file):
            cfg.merge_from_file(config_file)
    if opts:
        with _named_keys(cfg, 'the command line'):
            cfg.merge_from_list(list(opts))
    check_backbone_name(cfg)
    validate_dynscale_config(cfg)
    check_dynscale_options(cfg)
    return cfg


def setup(args):
    """The single setup of every entry point: config with dynscale keys, merge, freeze, d2 default_setup.

    Args:
        args (argparse.Namespace): from ``detectron2.engine.default_argument_parser()``
            (``config_file``, ``opts``, ``eval_only``, ...).

    Returns:
        CfgNode: frozen config.

    Raises:
        FileNotFoundError: ``MODEL.WEIGHTS`` is a missing file (the message has the convert command).
        ValueError: bad ``MODEL.DYNSCALE`` values, an unconverted weights file, or ``MODEL.PIXEL_MEAN``/``STD``
            that disagree with the weights' input normalisation.
    """
    from detectron2.engine import default_setup
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    from .checkpoint import check_weights_for_config

    cfg = get_dynscale_cfg(args.config_file, args.opts)
    # a missing / unconverted MODEL.WEIGHTS or a pixel normalisation the weights were not trained with fails here
    check_weights_for_config(cfg, args.config_file)
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup configures the 'detectron2' and 'fvcore' loggers only; the plugin's own messages
    # (BN calibration, ponder cost at evaluation, unmatched keys) go to the console and log.txt as well
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name='plugins')
    return cfg
