"""Checkpoint helper of RS-Nets: :func:`expand_private_bn_state_dict` maps a state dict with fewer private BNs
(a plain network or a single-resolution RS-Net) onto a model with one private BN per training resolution.
"""


def expand_private_bn_state_dict(state_dict, model):
    """Map a checkpoint with fewer private BNs (e.g. a plain ``resolutions=(r,)`` RS-Net) onto ``model``.

    Every key ``P.bns.{i}.S`` of ``model`` missing from ``state_dict`` is filled from ``P.bns.0.S`` (the
    single private BN of the source) or from ``P.S`` (a plain BN layout), so each private BN starts from
    the same statistics and affine.  Other keys are copied unchanged.

    Returns:
        dict: a new state dict for ``model.load_state_dict``.
    """
    out = dict(state_dict)
    for key in model.state_dict():
        if key in out or '.bns.' not in key:
            continue
        prefix, rest = key.split('.bns.', 1)
        suffix = rest.split('.', 1)[1] if '.' in rest else ''
        for src in (f'{prefix}.bns.0.{suffix}', f'{prefix}.{suffix}'):
            if src in state_dict:
                out[key] = state_dict[src].clone()
                break
    return out
