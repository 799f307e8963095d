"""The Elastic scale-policy score (Wang et al., "ELASTIC", CVPR 2019, Sec. 4.1.1, Eq. 4), read through forward hooks.

An Elastic unit (ResNeXt bottleneck, DenseNet layer, DLA bottleneck) runs two branches of equal width, one at full
and one at half resolution, and sums them.  The paper's score of a unit for one image is the difference of the
mean activations of the two branches, "after convolutions, fixed batch normalizations and ReLU": the last
normalised, rectified activation of each branch (``relu(bn2(conv2(.)))`` of a bottleneck's branch, ``relu(norm2
(conv1(.)))`` of a dense layer's), averaged over its channels and positions::

    S = mean_{c,h,w} A_high - mean_{c,h',w'} A_low

(the paper writes one sum over the low-resolution grid ``H x W x C``; both are equal when the high-resolution map
is 2x2 average-pooled onto that grid first, as the branch's own downsampling does, for even sides).  ``S > 0``: the
unit processed the image mostly in its high-resolution branch; ``S < 0``: mostly at low resolution.  With BN in
eval mode ("fixed") the score of an image does not depend on the rest of its batch.

The hooks only read: the model's outputs are the same with and without them (``tests/test_scale_policy.py``).

    with ScalePolicyRecorder(model) as rec:
        logits = model(images)          # [N, num_classes]
        scores = rec.scores()           # [N, num_units], e.g. 17 units for resnext50_elastic
"""
import torch
import torch.nn.functional as F

__all__ = ['BRANCH_NORMS', 'elastic_units', 'ScalePolicyRecorder', 'scale_policy_scores']

#: (high-resolution, low-resolution) names of the last normalisation of each branch inside an Elastic unit:
#: ``bn2``/``bn2_d`` (ResNeXt and DLA bottlenecks), ``norm2``/``norm2_d`` (DenseNet layers)
BRANCH_NORMS = (('bn2', 'bn2_d'), ('norm2', 'norm2_d'))


def elastic_units(model):
    """The Elastic units of ``model`` in forward order: ``[(name, high_norm, low_norm), ...]``.

    A unit is a module with ``elastic=True`` holding both normalisations of one of :data:`BRANCH_NORMS`
    (17 units in ``resnext50_elastic``, 70 in ``densenet201_elastic``, 11 in ``dla60x_elastic``).

    Raises:
        ValueError: ``model`` has no Elastic unit (a dense twin such as ``resnext50_32x4d``, or another family);
            the message names the Elastic models to use.
    """
    units = []
    for name, module in model.named_modules():
        if getattr(module, 'elastic', False) is not True:
            continue
        for high, low in BRANCH_NORMS:
            if hasattr(module, high) and hasattr(module, low):
                units.append((name, getattr(module, high), getattr(module, low)))
                break
    if not units:
        raise ValueError(f'{type(model).__name__} has no Elastic unit (no module with elastic=True and a '
                         'half-resolution branch): the scale-policy score needs an Elastic model, e.g. '
                         'resnext50_elastic, densenet201_elastic or dla60x_elastic '
                         '(backbones.list_models("*elastic*"))')
    return units


class ScalePolicyRecorder:
    """Context manager recording the scale-policy score of every Elastic unit during the forward passes it wraps.

    Forward hooks on each unit's two branch normalisations (:data:`BRANCH_NORMS`) average ``relu(output)`` per
    image; the hooks return ``None``, so the outputs are untouched.  Each forward pass overwrites the previous
    one's values.

    Args:
        model (nn.Module): an Elastic backbone (:func:`elastic_units`); put it in eval mode for fixed BN.

    Attributes:
        names (list[str]): the unit names, the columns of :meth:`scores`.

    Raises:
        ValueError: ``model`` has no Elastic unit.
    """

    def __init__(self, model):
        self.model = model
        units = elastic_units(model)
        self.names = [n for n, _, _ in units]
        self._norms = [(hi, lo) for _, hi, lo in units]
        self._handles = []
        self._high = [None] * len(units)
        self._low = [None] * len(units)

    def _hook(self, store, index):
        def hook(module, inputs, output):
            # mean of relu(output) per image over channels and positions: [N]; computed beside, not in place
            store[index] = F.relu(output.detach()).float().mean(dim=(1, 2, 3))
        return hook

    def __enter__(self):
        for i, (hi, lo) in enumerate(self._norms):
            self._handles.append(hi.register_forward_hook(self._hook(self._high, i)))
            self._handles.append(lo.register_forward_hook(self._hook(self._low, i)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

    def reset(self):
        """Forget the recorded activations."""
        self._high = [None] * len(self._norms)
        self._low = [None] * len(self._norms)

    def scores(self):
        """Scale-policy scores of the last forward pass: ``[N, num_units]`` float32, column ``j`` for
        ``names[j]`` (Eq. 4: mean high-resolution minus mean low-resolution branch activation).

        Raises:
            RuntimeError: no forward pass ran inside the context, or some unit did not run (e.g. the model was
                called through ``forward_stages`` with ``out_indices`` stopping early).
        """
        missing = [n for n, h, lo in zip(self.names, self._high, self._low) if h is None or lo is None]
        if missing:
            raise RuntimeError(f'no scale-policy activations recorded for {len(missing)} Elastic unit(s) '
                               f'({missing[:3]}...): run the model forward inside the ScalePolicyRecorder context, '
                               'through every stage')
        return torch.stack([h - lo for h, lo in zip(self._high, self._low)], dim=1)


@torch.no_grad()
def scale_policy_scores(model, images):
    """Logits and scale-policy scores of a batch in one forward pass of the eval-mode model.

    Args:
        model (nn.Module): an Elastic classifier (put in eval mode here: fixed BN, as Sec. 4.1.1 specifies).
        images (Tensor): ``[N, 3, H, W]`` normalised as the model expects (``model.pixel_mean`` / ``pixel_std``).

    Returns:
        tuple[Tensor, Tensor]: ``(logits [N, num_classes], scores [N, num_units])``.

    Raises:
        ValueError: ``model`` has no Elastic unit.
    """
    model.eval()
    with ScalePolicyRecorder(model) as rec:
        logits = model(images)
        return logits, rec.scores()
