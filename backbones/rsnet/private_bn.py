"""Private batch normalisation of RS-Nets (Wang et al., ECCV 2020, Sec. 3.1 "Private BNs").

:class:`PrivateBatchNorm` keeps one norm layer (private affine and statistics) per training resolution and
normalises with the one selected by a :class:`ResolutionState` shared by the whole network, so switching
resolution is O(1) and survives the frameworks' BN conversions (they replace entries of ``bns``).
"""
from torch import nn


class ResolutionState:
    """Index of the selected private BN, shared by every :class:`PrivateBatchNorm` of one network.

    One plain Python object (not a module, not in the state dict): switching resolution is O(1) whatever
    the depth, and ``copy.deepcopy`` / ``nn.DataParallel`` replicas keep the sharing.
    """

    __slots__ = ('index',)

    def __init__(self, index=0):
        self.index = index


class PrivateBatchNorm(nn.Module):
    """Private BN: one norm layer per training resolution, selected by ``index`` (RS-Nets Sec. 3.1).

    Args:
        num_features (int): channels C.
        num_resolutions (int): number of private BNs (one per training resolution).
        norm_layer (callable): ``C -> nn.Module``; default ``nn.BatchNorm2d``.
        state (ResolutionState | None): the selection shared with the rest of the network (a private
            one when None).

    Shapes: ``[N, C, H, W] -> [N, C, H, W]`` through ``bns[index]``.

    ``index`` reads the shared :class:`ResolutionState` set by :meth:`RSNet.set_resolution` / the
    resolution rule; the module survives the framework conversions, which only replace entries of ``bns``.
    """

    def __init__(self, num_features, num_resolutions, norm_layer=nn.BatchNorm2d, state=None):
        super().__init__()
        self.num_features = num_features
        self.bns = nn.ModuleList(norm_layer(num_features) for _ in range(num_resolutions))
        self.state = state if state is not None else ResolutionState()

    @property
    def index(self):
        """Index into ``bns`` of the selected resolution (int)."""
        return self.state.index

    def forward(self, x):
        """Normalise ``x`` ``[N, C, H, W]`` with the private BN of the selected resolution."""
        return self.bns[self.state.index](x)

    def extra_repr(self):
        return f'num_features={self.num_features}, num_resolutions={len(self.bns)}'
