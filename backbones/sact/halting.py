"""Halting of ACT and SACT (Figurnov et al., CVPR 2017, Sec. 2 ACT, Sec. 3 SACT; reference Sec. 5.1-5.3).

* the halting branches :class:`ACTHalting` (per image) and :class:`SACTHalting` (per position);
* the halting rule :func:`halting_distribution` (paper eqs. 2-5) and its step :func:`_act_step`;
* :class:`ACTStage`, one stage of residual units run as an ACT / SACT module: the dense masked computation
  (training) and the eval-mode paths that skip halted images or positions (:data:`EXECUTION_MODES`).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .sparse import _dilate_mask, _eval_affine, _Gather3x3, _index_add_images, _index_add_rows, _rows

#: execution strategies of an ACT/SACT stage in eval mode (see the :mod:`backbones.sact` docstring)
EXECUTION_MODES = ('auto', 'dense', 'image', 'gather')


def _default_norm(channels):
    return nn.BatchNorm2d(channels)


def _norm_pooled(norm, v):
    """Apply ``norm`` to globally pooled features ``v`` ``[N, C, 1, 1]``.

    A BatchNorm in training mode cannot take batch statistics of a single vector (PyTorch raises; TF's
    batch_norm would return its offset); for a batch of one image the running statistics are used instead
    (and not updated).  Every other case is ``norm(v)``.
    """
    if (v.shape[0] == 1 and norm.training and isinstance(norm, nn.modules.batchnorm._BatchNorm)
            and norm.running_mean is not None):
        return F.batch_norm(v, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
    return norm(v)


class ACTHalting(nn.Module):
    """Per-image halting score of ACT (reference Sec. 5.2): ``h = sigmoid(W . norm(GAP(x)) + b)``.

    Args:
        channels (int): channels C of the unit output.
        norm_layer (callable): ``C -> norm module`` (applied to ``[N, C, 1, 1]``; see :func:`_norm_pooled`
            for a batch of one image in training mode).
        bias_init (float): initial b (-3: h ~ 0.047).

    Shapes: ``[N, C, H, W] -> [N, 1, 1]`` in (0, 1).
    """

    spatial = False

    def __init__(self, channels, norm_layer=_default_norm, bias_init=-3.0):
        super().__init__()
        self.norm = norm_layer(channels)
        self.fc = nn.Conv2d(channels, 1, 1, bias=True)
        nn.init.zeros_(self.fc.weight)
        nn.init.constant_(self.fc.bias, bias_init)

    def set_bias(self, value):
        """Set the halting bias b (in place, no gradient)."""
        with torch.no_grad():
            self.fc.bias.fill_(value)

    def forward(self, x):
        return torch.sigmoid(self.fc(_norm_pooled(self.norm, x.mean((2, 3), keepdim=True))))[:, 0]


class SACTHalting(nn.Module):
    """Per-position halting score of SACT (reference Sec. 5.2).

    ``h(i, j) = sigmoid(conv3x3(norm_local(x))(i, j) + b + W_g . norm_global(GAP(x)))``: a 3x3 conv C -> 1
    with SAME padding and bias b, plus a bias-free 1x1 conv on the globally pooled features broadcast over
    space.

    Args:
        channels (int): channels C of the unit output.
        norm_layer (callable): ``C -> norm module``.
        bias_init (float): initial b of the local conv (-3: h ~ 0.047).

    Shapes: ``[N, C, H, W] -> [N, H, W]`` in (0, 1).
    """

    spatial = True

    def __init__(self, channels, norm_layer=_default_norm, bias_init=-3.0):
        super().__init__()
        self.norm_local = norm_layer(channels)
        self.conv_local = nn.Conv2d(channels, 1, 3, padding=1, bias=True)
        self.norm_global = norm_layer(channels)
        self.conv_global = nn.Conv2d(channels, 1, 1, bias=False)
        for m in (self.conv_local, self.conv_global):
            nn.init.zeros_(m.weight)
        nn.init.constant_(self.conv_local.bias, bias_init)

    def set_bias(self, value):
        """Set the halting bias b of the local conv (in place, no gradient)."""
        with torch.no_grad():
            self.conv_local.bias.fill_(value)

    def global_logit(self, x):
        """``W_g . norm_global(GAP(x))`` -> ``[N, 1, 1]``."""
        return self.conv_global(_norm_pooled(self.norm_global, x.mean((2, 3), keepdim=True)))[:, 0]

    def forward(self, x):
        aff = None if self.training else _eval_affine(self.norm_local)
        if aff is None:
            local = self.conv_local(self.norm_local(x))[:, 0]
        else:
            local = self._local_folded(x, *aff)
        return torch.sigmoid(local + self.global_logit(x))

    def _local_folded(self, x, scale, shift):
        """``conv_local(norm_local(x))`` for an affine norm without the normalised copy of ``x``.

        The 3x3 conv with zero padding is written as 9 per-tap 1x1 convs (one GEMM with 9 outputs, the norm
        folded into the weights) whose outputs are shifted and summed; taps falling outside the image
        contribute zero, exactly as the SAME padding of the normalised input.  ``[N, C, H, W] -> [N, H, W]``.
        """
        n, c, h, w = x.shape
        wk = self.conv_local.weight[0].permute(1, 2, 0).reshape(9, c)  # taps in (kh, kw) order
        z = F.conv2d(x, (wk * scale).view(9, c, 1, 1), wk @ shift)
        z = F.pad(z, (1, 1, 1, 1))
        out = self.conv_local.bias.view(1, 1, 1).expand(n, h, w).clone()
        for k in range(9):
            di, dj = divmod(k, 3)
            out += z[:, k, di:di + h, dj:dj + w]
        return out

    def forward_sparse(self, x_rows, mask):
        """Halting scores at ``mask`` only (eval mode, per-channel affine norms).

        Args:
            x_rows (Tensor): ``[N, C, H, W]`` channels-last unit output.
            mask (Tensor): ``[N, H, W]`` bool.

        Returns:
            tuple: ``(h, idx)`` with ``h`` ``[P]`` the scores at the flat positions ``idx`` ``[P]`` of
            ``mask``, or None when a norm is not a per-channel affine map.
        """
        aff_l, aff_g = _eval_affine(self.norm_local), _eval_affine(self.norm_global)
        if aff_l is None or aff_g is None:
            return None
        n, c, h, w = x_rows.shape
        idx_a = mask.reshape(-1).nonzero().squeeze(1)
        idx_s = _dilate_mask(mask, 1).reshape(-1).nonzero().squeeze(1)
        x = _rows(x_rows)
        xs = x.index_select(0, idx_s) * aff_l[0] + aff_l[1]
        g = _Gather3x3((n, h, w), idx_s, idx_a, 1).gather(xs).reshape(-1, 9 * c)
        wl = self.conv_local.weight.permute(0, 2, 3, 1).reshape(1, 9 * c)
        local = torch.mm(g, wl.t())[:, 0] + self.conv_local.bias
        imgs = mask.reshape(n, -1).any(1).nonzero().squeeze(1)
        pooled = x_rows.index_select(0, imgs).mean((2, 3)) * aff_g[0] + aff_g[1]  # [Ni, C]
        glob = torch.zeros(n, dtype=x.dtype, device=x.device)
        glob[imgs] = torch.mm(pooled, self.conv_global.weight.view(1, c).t())[:, 0]
        return torch.sigmoid(local + glob[idx_a // (h * w)]), idx_a


# ----------------------------------------------------------------------------------------------------
# the ACT module
def halting_distribution(h_list, eps=0.01):
    """ACT halting rule on a list of halting scores (paper eqs. 2-5; reference Sec. 5.3).

    Args:
        h_list (list[Tensor]): ``L`` tensors of equal shape (e.g. ``[N]`` or ``[N, H, W]``) with scores in
            [0, 1]; the last one is ignored (h_L = 1).
        eps (float): halting threshold margin, halting when the cumulative score reaches ``1 - eps``.

    Returns:
        tuple: ``(p, n_units, remainder, rho)``: ``p`` ``[L, *shape]`` the halting distribution (sums to 1
        over the first dim), ``n_units`` N (float, no gradient), ``remainder`` R and the ponder cost
        ``rho = N + R`` (gradient through R only).

    Raises:
        ValueError: empty ``h_list``.
    """
    if not h_list:
        raise ValueError('halting_distribution needs at least one halting score tensor')
    cum = torch.zeros_like(h_list[0])
    alive = torch.ones_like(h_list[0], dtype=torch.bool)
    n_units = torch.zeros_like(cum)
    rem = torch.zeros_like(cum)
    ps = []
    for t, h in enumerate(h_list):
        last = t == len(h_list) - 1
        p, cum, rem, halt_now = _act_step(h, cum, rem, alive, eps, last)
        n_units = n_units + alive.to(cum.dtype)
        alive = alive & ~halt_now
        ps.append(p)
    return torch.stack(ps), n_units, rem, n_units + rem


def _act_step(h, cum, rem, alive, eps, last):
    """One ACT step: returns ``(p_t, cum, remainder, halt_now)`` (``h`` ignored when ``last``)."""
    if last:
        halt_now = alive
        new_cum = cum
    else:
        new_cum = cum + h
        halt_now = alive & (new_cum >= 1.0 - eps)
    zero = torch.zeros_like(cum)
    p = torch.where(halt_now, 1.0 - cum, zero if last else torch.where(alive, h, zero))
    rem = torch.where(halt_now, 1.0 - cum, rem)
    cum = torch.where(alive, new_cum, cum)
    return p, cum, rem, halt_now


class ACTStage(nn.Module):
    """One stage ("block") of pre-activation bottleneck units run as an ACT / SACT module.

    Args:
        units (list[PreActBottleneck]): the L units; the first may stride / project.
        act (str): ``'none'`` (plain stage, every unit), ``'act'`` (per-image halting) or ``'sact'``
            (per-position halting).
        norm_layer (callable): norm of the halting branches.
        eps (float): ACT threshold margin (0.01).
        halting_bias (float): initial halting bias (-3).

    Attributes set by :meth:`forward` (None for ``'none'``):
        ponder_cost (Tensor): rho = N + R, ``[N]`` (ACT) or ``[N, h, w]`` (SACT), gradient through R.
        n_units (Tensor): N, same shape (no gradient).
        unit_masks (list[Tensor]): for each executed unit t >= 2, the bool mask of the positions/images that
            ran it (``[N, h, w]`` or ``[N, 1, 1]``); used to count MACs.
        input_hw (tuple): spatial size of the stage input.

    Shapes: ``[N, C_in, H, W] -> [N, depth, H/s, W/s]``.
    """

    def __init__(self, units, act='sact', norm_layer=_default_norm, eps=0.01, halting_bias=-3.0):
        super().__init__()
        if act not in ('none', 'act', 'sact'):
            raise ValueError(f"act must be 'none', 'act' or 'sact', got {act!r}")
        self.units = nn.ModuleList(units)
        self.act = act
        self.eps = eps
        self.execution = 'auto'
        self.gather_threshold = 0.4
        depth = units[-1].depth
        if act == 'none':
            self.halting = None
        else:
            cls = SACTHalting if act == 'sact' else ACTHalting
            self.halting = nn.ModuleList([cls(depth, norm_layer, halting_bias) for _ in range(len(units) - 1)])
        self.ponder_cost = self.n_units = None
        self.unit_masks = []
        self.input_hw = None

    # -------------------------------------------------------------------------------------------
    def __getstate__(self):
        # the last forward's ponder cost is a non-leaf tensor: not part of the module's state (deepcopy, pickle)
        state = self.__dict__.copy()
        state['ponder_cost'] = state['n_units'] = None
        return state

    def forward(self, x, pre=None):
        """Run the stage; ``pre`` is an optional precomputed ``units[0].preact(x)``."""
        self.input_hw = tuple(x.shape[-2:])
        state = self.units[0](x, pre)
        if self.act == 'none':
            for u in self.units[1:]:
                state = u(state)
            self.ponder_cost = self.n_units = None
            self.unit_masks = []
            return state
        if self.training or self.execution == 'dense':
            return self._forward_dense(state)
        return self._forward_sparse(state)

    def _halting_shape(self, state):
        n, _, h, w = state.shape
        return (n, h, w) if self.act == 'sact' else (n, 1, 1)

    def _forward_dense(self, state):
        """Dense masked computation (training; the reference for the sparse paths)."""
        shape = self._halting_shape(state)
        cum = state.new_zeros(shape)
        rem = state.new_zeros(shape)
        n_units = state.new_zeros(shape)
        alive = torch.ones(shape, dtype=torch.bool, device=state.device)
        out = None
        masks = []
        L = len(self.units)
        for t in range(L):
            if t > 0:
                # stop when every position halted; a traced graph (export) keeps every unit, masked
                if not torch.jit.is_tracing() and not bool(alive.any()):
                    break
                masks.append(alive)
                m = alive.unsqueeze(1).to(state.dtype)
                state = state + m * self.units[t].residual(self.units[t].preact(state))
            last = t == L - 1
            h = None if last else self.halting[t](state)
            p, cum, rem, halt_now = _act_step(h, cum, rem, alive, self.eps, last)
            contrib = p.unsqueeze(1) * state
            out = contrib if out is None else out + contrib
            n_units = n_units + alive.to(state.dtype)
            alive = alive & ~halt_now
        return self._finish(out, n_units, rem, masks)

    def _finish(self, out, n_units, rem, masks):
        rho = n_units + rem
        if self.act == 'act':
            rho, n_units = rho[:, 0, 0], n_units[:, 0, 0]
        self.ponder_cost, self.n_units, self.unit_masks = rho, n_units, masks
        return out

    def _choose(self, alive):
        if self.act == 'act' or self.execution == 'image':
            return 'image'
        if self.execution == 'gather':
            return 'gather'
        frac = alive.float().mean().item()
        return 'image' if frac > self.gather_threshold else 'gather'

    @torch.no_grad()
    def _alive_images(self, alive):
        imgs = alive.reshape(alive.shape[0], -1).any(1)
        return None if bool(imgs.all()) else imgs.nonzero().squeeze(1)

    def _forward_sparse(self, state):
        """Eval-mode computation that skips halted images (``'image'``) or positions (``'gather'``)."""
        inplace = not torch.is_grad_enabled()
        if self.act == 'sact':
            state = state.contiguous(memory_format=torch.channels_last)
        shape = self._halting_shape(state)
        cum = state.new_zeros(shape)
        rem = state.new_zeros(shape)
        n_units = state.new_zeros(shape)
        alive = torch.ones(shape, dtype=torch.bool, device=state.device)
        masks = []
        L = len(self.units)
        out = None
        for t in range(L):
            last = t == L - 1
            idx_pos = idx_img = None  # which rows / images were updated by this unit
            mode = 'dense'
            if t > 0:
                # stop when every position halted; a traced graph (export) keeps every unit, masked
                if not torch.jit.is_tracing() and not bool(alive.any()):
                    break
                masks.append(alive)
                unit = self.units[t]
                mode = self._choose(alive)
                new_state = None
                if mode == 'gather':
                    new_state = unit.residual_sparse(state, alive, inplace)
                    if new_state is None:
                        mode = 'image'
                    else:
                        idx_pos = alive.reshape(-1).nonzero().squeeze(1)
                if mode == 'image':
                    idx_img = self._alive_images(alive)
                    sub = state if idx_img is None else state.index_select(0, idx_img)
                    res = unit.residual(unit.preact(sub))
                    if self.act == 'sact':
                        a = (alive if idx_img is None else alive.index_select(0, idx_img)).unsqueeze(1)
                        if inplace and idx_img is None:  # fused masked update
                            new_state = state.addcmul_(res, a.to(res.dtype))
                        else:
                            res = res * a.to(res.dtype)
                    if new_state is None:
                        new_state = _index_add_images(state, idx_img, res, inplace)
                state = new_state
            h = None
            if not last:
                h = self._halting_eval(t, state, alive, mode, idx_img)
            p, cum, rem, halt_now = _act_step(h, cum, rem, alive, self.eps, last)
            # out += p * state, only where p can be non-zero (the positions / images that ran this unit)
            if out is None:
                out = p.unsqueeze(1) * state
                if self.act == 'sact':
                    out = out.contiguous(memory_format=torch.channels_last)
            elif mode == 'gather':
                x = _rows(state)
                out = _index_add_rows(out, idx_pos, p.reshape(-1, 1)[idx_pos] * x.index_select(0, idx_pos),
                                      inplace)
            elif inplace and idx_img is None:
                out.addcmul_(p.unsqueeze(1), state)
            else:
                ps = p if idx_img is None else p.index_select(0, idx_img)
                st = state if idx_img is None else state.index_select(0, idx_img)
                out = _index_add_images(out, idx_img, ps.unsqueeze(1) * st, inplace)
            n_units = n_units + alive.to(state.dtype)
            alive = alive & ~halt_now
        return self._finish(out, n_units, rem, masks)

    def _halting_eval(self, t, state, alive, mode, idx_img):
        """Halting scores after unit t (full shape; values matter only where ``alive``)."""
        halt = self.halting[t]
        if mode == 'gather':
            res = halt.forward_sparse(state, alive)
            if res is not None:
                hs, idx = res
                h = state.new_zeros(alive.shape)
                h.view(-1)[idx] = hs
                return h
            idx_img = self._alive_images(alive)
        if idx_img is None:
            return halt(state)
        h = state.new_zeros(alive.shape)
        h[idx_img] = halt(state.index_select(0, idx_img))
        return h
