"""RS-Nets training step: the same batch at several input sizes, each with its private BN; MRED over them.

Wang et al. 2020 (RS-Nets), Sec. 3.1-3.2: shared convolutions, one private BN per training resolution; every
step runs the batch at every resolution (image ``i`` resized to resolution ``i``, private BN ``i``) and the
multi-resolution ensemble distillation loss combines their logits (per-resolution CE, the learned-ensemble
CE, ensemble / top-down KL; :func:`backbones.rsnet.mred_loss`).  Detection has no MRED in the paper: each
resolution is trained with the ground truth (``mred=False``), or one random resolution per step
(``mode='random'``).
"""
import contextlib
import logging

from .policy import Subnet, TrainingPolicy, _construct

__all__ = ['ResolutionPolicy', 'UNTRAINED_RESOLUTION_RULES']

LOG = logging.getLogger(__name__)
#: what evaluation at a resolution without a private BN does: ``'error'`` (default) refuses it, ``'nearest'`` uses
#: the private BN of the nearest trained resolution (logged once per resolution)
UNTRAINED_RESOLUTION_RULES = ('error', 'nearest')


class ResolutionPolicy(TrainingPolicy):
    """Private-BN training over resolutions (RS-Nets).

    Args:
        bn_resolutions (Sequence[int]): resolutions trained per step, descending (each has a private BN).
        input_sizes (Sequence[int] | None): the frontend's input size paired with each resolution (detection
            shorter sides, segmentation crop sides); default ``bn_resolutions``.  The first is the batch as
            loaded (``input_size=None``).
        mode (str): ``'all'`` (every resolution each step) or ``'random'`` (one, drawn per step).
        mred (str | None | bool): MRED distillation of :func:`backbones.rsnet.mred_loss` (``'ens_topdown'``,
            ``'ens'``, None = CE terms only) when the frontend calls :meth:`combine`; ``False``: no MRED, each
            resolution trained with its ground-truth loss.
        ignore_index (int | None): label ignored by MRED (segmentation).
        seed (int | None): seed of the random mode's draws.
        untrained_resolution (str): evaluation at a resolution that has no private BN: ``'error'`` (default)
            raises; ``'nearest'`` evaluates it with the private BN of the nearest trained resolution
            (:func:`backbones.rsnet.nearest_resolution`) and logs once which one serves it.  The RS-Nets paper
            evaluates at trained resolutions only.

    Raises:
        ValueError: empty or non-descending resolutions, mismatched ``input_sizes``, unknown mode or
            ``untrained_resolution``.
    """

    method = 'rsnet'
    capability = 'private_bn'
    find_unused_parameters = True  # a private BN not selected in a step gets no gradient
    needs_calibration = False

    def __init__(self, bn_resolutions, input_sizes=None, mode='all', mred='ens_topdown', ignore_index=None,
                 seed=None, untrained_resolution='error'):
        super().__init__(seed)
        if untrained_resolution not in UNTRAINED_RESOLUTION_RULES:
            raise ValueError(f'untrained_resolution must be one of {UNTRAINED_RESOLUTION_RULES}, got '
                             f'{untrained_resolution!r}')
        self.untrained_resolution = untrained_resolution
        self._served = {}
        res = tuple(int(r) for r in bn_resolutions)
        if not res or list(res) != sorted(res, reverse=True) or len(set(res)) != len(res):
            raise ValueError(f'bn_resolutions must be distinct and descending, got {tuple(bn_resolutions)}')
        sizes = tuple(int(s) for s in (input_sizes or res))
        if len(sizes) != len(res):
            raise ValueError(f'input_sizes {sizes} must pair one-to-one with bn_resolutions {res}')
        if mode not in ('all', 'random'):
            raise ValueError(f"mode must be 'all' or 'random', got {mode!r}")
        if mode == 'random' and mred is not False:
            raise ValueError("MRED combines every resolution of a step: use mode='all' with MRED, or mred=False")
        self.bn_resolutions, self.input_sizes, self.mode = res, sizes, mode
        self.mred_type = mred
        self._mred = None
        self.ignore_index = ignore_index

    @classmethod
    def trains(cls, model):
        """RS-Net models (private BN per trained resolution)."""
        return hasattr(model, 'resolutions') and hasattr(model, 'resolution_context')

    @classmethod
    def from_model(cls, model, method=None, ignore_index=None, **options):
        """Every trained resolution of ``model`` (unless ``bn_resolutions`` is given, a descending subset);
        ``ignore_index`` goes to MRED.

        Raises:
            ValueError: a model without private BNs, a resolution it was not trained for, an unknown option.
        """
        if not cls.trains(model):
            raise ValueError(f'{cls.__name__} trains RS-Net models (private BN per resolution); '
                             f'{type(model).__name__} has none (use an rs_* backbone)')
        trained = tuple(model.resolutions)
        res = tuple(options.pop('bn_resolutions', None) or trained)
        bad = [r for r in res if r not in trained]
        if bad:
            raise ValueError(f'resolutions {bad} have no private BN in the model; its resolutions are {trained} '
                             f'(build it with resolutions including them)')
        options.setdefault('ignore_index', ignore_index)
        return _construct(cls, dict(options, bn_resolutions=res))

    @property
    def combines(self):
        """MRED combines the step's logits (``mred`` not False)."""
        return self.mred_type is not False

    @property
    def max_input_size(self):
        """The largest resolution's input size (the batch as loaded)."""
        return self.input_sizes[0]

    def eval_context(self, backbone, width=None, bn_resolution=None):
        """The private BN of ``bn_resolution``; None leaves the choice to the backbone (its resolution rule on the
        input as it comes).

        Args:
            backbone (nn.Module): an RS-Net.
            width (None): RS-Nets have no width multiplier.
            bn_resolution (int | None): resolution to evaluate, pixels.  One without a private BN raises, unless
                :attr:`untrained_resolution` is ``'nearest'`` (then the nearest trained one serves it, logged once).

        Raises:
            ValueError: a width, or an untrained resolution under ``untrained_resolution='error'`` (the message
                lists the trained ones and names the opt-in).
        """
        if width is not None:
            raise ValueError(f'RS-Net models have no width multiplier; remove width={width!r} from the test '
                             f'settings')
        trained = tuple(backbone.resolutions)
        if bn_resolution is None:
            return contextlib.nullcontext()
        if bn_resolution in trained:
            return backbone.resolution_context(bn_resolution)
        if self.untrained_resolution == 'error':
            raise ValueError(f'resolution {bn_resolution} has no private BN (trained resolutions: {trained}); '
                             f'evaluate at one of them, or opt in to the private BN of the nearest one with '
                             f"untrained_resolution='nearest' (MM configs: test_cfg.untrained_resolution; "
                             f'tools/test_seg.py --untrained-resolution nearest)')
        from ..rsnet import nearest_resolution
        served = nearest_resolution(trained, bn_resolution)
        if self._served.get(bn_resolution) != served:
            self._served[bn_resolution] = served
            LOG.warning(f'RS-Net: resolution {bn_resolution} was not trained; the private BN of resolution {served} '
                        f'serves it (untrained_resolution=nearest; trained: {trained})')
        return backbone.resolution_context(served)

    @property
    def mred(self):
        """The :class:`backbones.rsnet.MREDLoss` module (holds the trainable ensemble scores ``alpha``; register it
        in the framework's model so the optimiser updates it), or None without MRED."""
        if self.mred_type is False:
            return None
        if self._mred is None:
            from ..rsnet import MREDLoss
            self._mred = MREDLoss(len(self.bn_resolutions), kd=self.mred_type, ignore_index=self.ignore_index)
        return self._mred

    def subnets(self, step):
        """``r<res>`` per resolution (descending), or one drawn per step in ``'random'`` mode."""
        pairs = list(zip(self.bn_resolutions, self.input_sizes))
        if self.mode == 'random':
            pairs = [self.rng(step).choice(pairs)]
        top = self.input_sizes[0]
        return [Subnet(f'r{r}', bn_resolution=r, input_size=None if s == top else s) for r, s in pairs]

    def context(self, backbone, subnet):
        """The private BN of ``subnet.bn_resolution`` (``backbone.resolution_context``)."""
        if subnet.bn_resolution is None:
            return contextlib.nullcontext()
        return backbone.resolution_context(subnet.bn_resolution)

    def combine(self, logits_list, target):
        """MRED over the step's logits (ordered like :meth:`subnets`, resized to one size by the frontend).

        Returns:
            dict: ``loss_mred`` and the logged parts ``mred_*`` (detached).

        Raises:
            ValueError: MRED disabled (``mred=False``) or shapes that do not fit.
        """
        if self.mred is None:
            raise ValueError('this ResolutionPolicy trains each resolution with its own loss (mred=False)')
        loss, parts = self.mred(list(logits_list), target)
        out = {'loss_mred': loss}
        out.update({f'mred_{k}': v for k, v in parts.items()})
        return out

    def __repr__(self):
        return (f'ResolutionPolicy(bn_resolutions={self.bn_resolutions}, input_sizes={self.input_sizes}, '
                f'mode={self.mode!r}, mred={self.mred_type!r})')
