"""The training policy of a Detectron2 run, built from ``MODEL.DYNSCALE`` (sandwich rule, RS-Net buckets, ponder
cost; :func:`build_policy`), and the input size each sub-network trains at."""


def build_policy(cfg, backbone):
    """The training policy (:mod:`backbones.training`) of one iteration, from ``cfg.MODEL.DYNSCALE``.

    ``MODEL.DYNSCALE.POLICY.NAME`` names the method; empty, it follows the keys and the backbone:

    * slimmable + ``SANDWICH.ENABLED``: :class:`~backbones.training.SandwichPolicy` (max width at the largest
      scale, min width, random widths; students' shorter sides from ``SANDWICH.TRAIN_SCALES``; every
      sub-network trained with the ground truth, MutualNet Sec. 4.3);
    * RS-Net: :class:`~backbones.training.ResolutionPolicy` over the scale buckets (``RSNET_TRAIN_MODE``
      "all": every bucket; "random": one per iteration), each with the ground truth;
    * SACT / ACT: :class:`~backbones.training.PonderPolicy` (``TAU``);
    * otherwise one pass (slimmable backbones at ``WIDTH``), or the backbone's default method
      (:func:`backbones.training.policy_for`).

    The other keys of ``MODEL.DYNSCALE.POLICY`` override the policy's options (lower-cased).

    Raises:
        ValueError: the sandwich rule on a non-slimmable backbone, or with frozen BN / parameters; a policy that
            combines the sub-networks' logits (no detection form); an unknown method or option.
    """
    from backbones import training

    D = cfg.MODEL.DYNSCALE
    seed = None if D.SANDWICH.SEED < 0 else D.SANDWICH.SEED
    method = D.POLICY.NAME or None
    options = {}
    if D.SANDWICH.ENABLED or method in ('usnet', 'mutualnet'):
        if not backbone.is_slimmable:
            raise ValueError(
                f'MODEL.DYNSCALE.SANDWICH.ENABLED needs a slimmable backbone; {backbone.name} is '
                f'{backbone.family!r}'
            )
        frozen = [n for n, p in backbone.net.named_parameters() if not p.requires_grad]
        if frozen or cfg.MODEL.DYNSCALE.NORM == 'FrozenBN':
            raise ValueError(
                'the sandwich rule trains random widths, which have no frozen BN statistics: set '
                'MODEL.BACKBONE.FREEZE_AT 0 and MODEL.DYNSCALE.NORM "BN" or "SyncBN" (post-statistics '
                'BN calibrates each evaluated width afterwards)'
            )
        scales = tuple(int(s) for s in D.SANDWICH.TRAIN_SCALES) or None
        method = method or ('mutualnet' if scales else 'usnet')
        options = dict(width_range=backbone.width_range, num_subnets=D.SANDWICH.NUM_SUBNETS, input_sizes=scales,
                       max_input_size=max(scales) if scales else None, distill=None, student_gt_weight=1.0)
    elif method is None and backbone.is_slimmable:
        method = 'standard'  # one pass at MODEL.DYNSCALE.WIDTH
    elif backbone.is_resolution_switchable and method in (None, 'rsnet'):
        method = 'rsnet'
        options = dict(bn_resolutions=backbone.net.resolutions, input_sizes=backbone.scales, mode=D.RSNET_TRAIN_MODE,
                       mred=False)
    elif backbone.has_ponder_cost and method in (None, 'sact'):
        method = 'sact' if method or getattr(backbone.net, 'act', 'none') != 'none' else 'standard'
        options = dict(tau=D.TAU) if method == 'sact' else {}
    options.update(policy_options(cfg))
    options.setdefault('seed', seed)
    policy = training.policy_for(backbone.net, method, **options)
    if policy.combines:
        raise ValueError(f'{policy!r} combines the logits of its sub-networks, which has no detection form: set '
                         f'MODEL.DYNSCALE.POLICY.MRED False (each scale trained with the ground truth)')
    return policy


def policy_options(cfg):
    """The options of ``MODEL.DYNSCALE.POLICY`` other than ``NAME``, lower-cased: the policy class's arguments
    (e.g. ``SMALL_SIZE: 48`` -> ``small_size=48``)."""
    return {k.lower(): v for k, v in cfg.MODEL.DYNSCALE.POLICY.items() if k != 'NAME'}


def _input_size(policy, subnet):
    """Shorter side a sub-network trains at: its own, else the policy's largest (the loader's scale)."""
    if subnet.input_size is not None:
        return subnet.input_size
    if getattr(policy, 'max_input_size', None):
        return policy.max_input_size
    sizes = getattr(policy, 'input_sizes', None)
    return sizes[0] if sizes else None
