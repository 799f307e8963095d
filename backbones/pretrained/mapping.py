"""Layer-level mapping of a foreign state dict onto a dynscale model, strict both ways.

A state dict is read as an ordered list of **layers** (:class:`Layer`): convolutions, linear layers and
normalisation layers, each with its tensors.  Normalisation layers may hold *switched* entries: the
per-width private statistics of US-Nets / MutualNet (``<p>.bn.<i>.running_*``) or the per-resolution
private BNs of RS-Nets (``<p>.bn_<i>.*``).  The dynscale template model is read the same way
(:func:`model_layers`).  An origin's converter pairs source layers with target layers (by name rules or
by order) and :class:`Transfer` moves the tensors, recording every move, so that afterwards

* every target tensor was written (or is explicitly allowed to be new, e.g. SACT halting branches), and
* every source tensor was used,

otherwise :meth:`Transfer.finish` raises :class:`~backbones.checkpoint.CheckpointMismatchError` listing
the unmatched keys in both namings.
"""
import re
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..checkpoint import CheckpointMismatchError

__all__ = ['Layer', 'parse_layers', 'model_layers', 'Transfer', 'STAT_NAMES']

STAT_NAMES = ('running_mean', 'running_var', 'num_batches_tracked')
_TENSOR_NAMES = ('weight', 'bias') + STAT_NAMES
_US_SWITCH = re.compile(r'^(.*)\.bn\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$')
_RS_SWITCH = re.compile(r'^(.*)\.bn_(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$')
_PLAIN = re.compile(r'^(.*)\.(weight|bias|running_mean|running_var|num_batches_tracked)$')


@dataclass
class Layer:
    """One layer of a state dict or model.

    Attributes:
        prefix (str): module path (``layer1.0.conv1``; RS-Nets' ``.module`` wrapper removed).
        kind (str): ``'conv'`` (4-D weight), ``'linear'`` (2-D weight), ``'bn'`` (running statistics, plain
            or switched), ``'slim_bn'`` / ``'private_bn'`` (dynscale slimmable / RS-Net BN, targets only)
            or ``'other'``.
        tensors (dict[str, str]): tensor name (``weight``...) -> full key, for unswitched entries.
        switches (OrderedDict[object, dict[str, str]]): switch id -> {tensor name -> full key}: US-Net width
            index / RS-Net resolution index (int) in a source, slimmable config key (``'w0p5'``) or private BN
            index in a target.
        shapes (dict[str, tuple]): full key -> shape.
    """

    prefix: str
    kind: str
    tensors: dict = field(default_factory=dict)
    switches: 'OrderedDict' = field(default_factory=OrderedDict)
    shapes: dict = field(default_factory=dict)

    @property
    def keys(self):
        """Every full key of the layer, in order."""
        return list(self.tensors.values()) + [k for sw in self.switches.values() for k in sw.values()]

    def shape(self, name='weight'):
        """Shape of the unswitched tensor ``name`` (or of the first switch's), or None."""
        key = self.tensors.get(name)
        if key is None:
            for sw in self.switches.values():
                if name in sw:
                    key = sw[name]
                    break
        return None if key is None else self.shapes[key]

    def describe(self):
        w = self.shape('weight')
        extra = f', {len(self.switches)} switched entries' if self.switches else ''
        return f'{self.prefix} ({self.kind}{", " + "x".join(map(str, w)) if w else ""}{extra})'


def parse_layers(state_dict, strip=''):
    """Group a state dict into :class:`Layer` s in order of first appearance.

    Args:
        state_dict (dict[str, Tensor]): keys in the source's naming.
        strip (str): a wrapper prefix removed from the layer prefixes (``'module.'``); full keys keep it.

    Returns:
        tuple: ``(layers, loose)``; ``layers`` a list of :class:`Layer`, ``loose`` the keys that are not
        a layer tensor (e.g. RS-Nets' ``module.alpha``).
    """
    layers, by_prefix, loose = [], {}, []
    for key, t in state_dict.items():
        short = key[len(strip):] if strip and key.startswith(strip) else key
        m = _RS_SWITCH.match(short) or _US_SWITCH.match(short)
        if m:
            prefix, switch, name = m.group(1), int(m.group(2)), m.group(3)
        else:
            m = _PLAIN.match(short)
            if not m:
                loose.append(key)
                continue
            prefix, switch, name = m.group(1), None, m.group(2)
        if prefix.endswith('.module'):  # RS-Nets ModuleParallel wrapper around every conv / fc
            prefix = prefix[:-len('.module')]
        layer = by_prefix.get(prefix)
        if layer is None:
            layer = by_prefix[prefix] = Layer(prefix, 'other')
            layers.append(layer)
        if switch is None:
            layer.tensors[name] = key
        else:
            layer.switches.setdefault(switch, {})[name] = key
        layer.shapes[key] = tuple(t.shape)
    for layer in layers:
        has_stats = 'running_mean' in layer.tensors or any('running_mean' in s for s in layer.switches.values())
        w = layer.shape('weight')
        if has_stats:
            layer.kind = 'bn'
        elif w is not None and len(w) == 4:
            layer.kind = 'conv'
        elif w is not None and len(w) == 2:
            layer.kind = 'linear'
    return layers, loose


def model_layers(model):
    """The :class:`Layer` s of a dynscale model in registration (= state-dict) order.

    Slimmable BNs (:class:`backbones.slimmable.SlimmableBatchNorm2d`) become one ``'slim_bn'`` layer whose
    switches are the private-statistics configs; RS-Net :class:`backbones.rsnet.PrivateBatchNorm` one
    ``'private_bn'`` layer whose switches are the private BN indices.
    """
    from ..rsnet import PrivateBatchNorm
    from ..slimmable.ops import SlimmableBatchNorm2d

    sd = model.state_dict(keep_vars=True)
    layers, skip = [], ()
    for name, m in model.named_modules():
        if skip and (name + '.').startswith(skip):
            continue
        own = [n for n, _ in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))]
        p = name + '.' if name else ''
        if isinstance(m, SlimmableBatchNorm2d):
            layer = Layer(name, 'slim_bn')
            for n in ('weight', 'bias'):
                layer.tensors[n] = p + n
            for cfg, stats in m.private.items():
                layer.switches[cfg] = {n: f'{p}private.{cfg}.{n}' for n in STAT_NAMES
                                       if f'{p}private.{cfg}.{n}' in sd}
            skip = p
        elif isinstance(m, PrivateBatchNorm):
            layer = Layer(name, 'private_bn')
            for i in range(len(m.bns)):
                layer.switches[i] = {n: f'{p}bns.{i}.{n}' for n in _TENSOR_NAMES if f'{p}bns.{i}.{n}' in sd}
            skip = p
        elif own:
            kind = ('bn' if isinstance(m, _BatchNorm) else 'conv' if isinstance(m, nn.Conv2d)
                    else 'linear' if isinstance(m, nn.Linear) else 'other')
            layer = Layer(name, kind, {n: p + n for n in own if p + n in sd})
        else:
            continue
        for k in layer.keys:
            layer.shapes[k] = tuple(sd[k].shape)
        layers.append(layer)
    return layers


class Transfer:
    """Copies tensors from a source state dict into a target state dict layout and records every move.

    Args:
        source (dict[str, Tensor]): the source weights (original keys).
        target_shapes (dict[str, torch.Size]): the template's ``state_dict()`` shapes, in order.
        model_name (str): dynscale name, for messages.
        origin (str): origin label, for messages.
    """

    def __init__(self, source, target_shapes, model_name='', origin=''):
        self.source = source
        self.target_shapes = OrderedDict((k, tuple(v)) for k, v in target_shapes.items())
        self.model_name, self.origin = model_name, origin
        self.out = OrderedDict()
        self.used = set()
        self.rows = []           # (op, [source keys], target key)
        self.dropped = []        # (source key, reason)
        self.new = []            # (target key, reason): allowed to stay at the model's own initialisation
        self.pairs = []          # (source prefix(es), target prefix) of the layer correspondence
        self.errors = []         # human-readable problems found while mapping (shape, kind, count)

    # ------------------------------------------------------------------------------------ primitives
    def put(self, target_key, value, source_keys, op='copy'):
        """Write ``value`` at ``target_key`` (checking the shape), marking ``source_keys`` as used."""
        if target_key not in self.target_shapes:
            self.errors.append(f'{self.origin} {", ".join(source_keys)} -> {target_key}: no such tensor in '
                               f'{self.model_name}')
            return
        want = self.target_shapes[target_key]
        if tuple(value.shape) != want:
            self.errors.append(f'shape mismatch: {" + ".join(source_keys)} {tuple(value.shape)} -> {target_key} '
                               f'{want}')
            return
        if target_key in self.out:
            self.errors.append(f'{target_key} written twice (from {source_keys})')
            return
        self.out[target_key] = value.detach().clone()
        self.used.update(source_keys)
        self.rows.append((op, list(source_keys), target_key))

    def drop(self, source_key, reason):
        """Record a source tensor deliberately not loaded (e.g. a classifier for a model without head)."""
        self.used.add(source_key)
        self.dropped.append((source_key, reason))

    def allow_new(self, target_key, reason):
        """Let ``target_key`` keep the model's own initialisation (no source tensor exists for it)."""
        self.new.append((target_key, reason))

    # ------------------------------------------------------------------------------------ layers
    def layer(self, src, tgt, stats_to=None, switch_map=None):
        """Transfer one source :class:`Layer` into one target :class:`Layer`.

        Args:
            src (Layer): source layer.
            tgt (Layer): target layer (kind ``conv``/``linear``/``bn``/``slim_bn``/``private_bn``).
            stats_to (list | None): for a plain source BN into a ``slim_bn``: the target configs that receive
                its statistics (default: every config of the target, i.e. one shared set copied to each).
            switch_map (dict | None): source switch id -> target switch id (US-Net width index -> config key;
                RS-Net index -> index).  Default: identity for ``private_bn``.
        """
        self.pairs.append((src.prefix, tgt.prefix))
        if src.kind == 'conv' and tgt.kind == 'linear' and src.shape('weight')[2:] == (1, 1):
            # a 1x1-conv classifier (timm ResNetV2, DLA) is the same map as a Linear on pooled features
            for name, tkey in tgt.tensors.items():
                skey = src.tensors.get(name)
                if skey is None:
                    self.errors.append(f'{self.origin} {src.prefix}.{name} missing for {tkey}')
                    continue
                v = self.source[skey]
                self.put(tkey, v.flatten(1) if v.dim() == 4 else v, [skey], 'reshape')
            return
        ok_kinds = {'conv': ('conv',), 'linear': ('linear',), 'bn': ('bn', 'slim_bn', 'private_bn')}
        if tgt.kind not in ok_kinds.get(src.kind, ()):
            self.errors.append(f'layer kinds differ: {self.origin} {src.describe()} -> {tgt.describe()}')
            return
        if tgt.kind in ('conv', 'linear', 'bn'):
            if src.switches:
                self.errors.append(f'{src.describe()} has switched entries but {tgt.describe()} is a plain layer')
                return
            for name, tkey in tgt.tensors.items():
                skey = src.tensors.get(name)
                if skey is None:
                    self.errors.append(f'{self.origin} {src.prefix}.{name} missing for {tkey}')
                    continue
                self.put(tkey, self.source[skey], [skey])
            for name, skey in src.tensors.items():
                if name not in tgt.tensors:
                    self.errors.append(f'{skey} has no counterpart in {tgt.describe()}')
            return
        # affine of a slimmable BN: shared weight / bias
        if tgt.kind == 'slim_bn':
            for name in ('weight', 'bias'):
                skey = src.tensors.get(name)
                if skey is None:
                    self.errors.append(f'{self.origin} {src.prefix}.{name} missing for {tgt.tensors[name]} '
                                       f'(a slimmable BN shares one affine over all widths; a source with a '
                                       f'private affine per width, e.g. S-Nets, does not fit)')
                    continue
                self.put(tgt.tensors[name], self.source[skey], [skey])
        if not src.switches:  # one plain set copied into several target switches
            targets = list(tgt.switches) if stats_to is None else list(stats_to)
            names = STAT_NAMES if tgt.kind == 'slim_bn' else _TENSOR_NAMES
            for sw in targets:
                if sw not in tgt.switches:
                    self.errors.append(f'{tgt.describe()} has no switch {sw!r}')
                    continue
                for name in names:
                    skey, tkey = src.tensors.get(name), tgt.switches[sw].get(name)
                    if tkey is None:
                        continue
                    if skey is None:
                        self.errors.append(f'{self.origin} {src.prefix}.{name} missing for {tkey}')
                        continue
                    self.put(tkey, self.source[skey], [skey], 'copy' if len(targets) == 1 else 'broadcast')
            for name, skey in src.tensors.items():
                if skey not in self.used:
                    self.errors.append(f'{skey} has no counterpart in {tgt.describe()}')
            return
        mapping = switch_map if switch_map is not None else {i: i for i in src.switches}
        for s_sw, entries in src.switches.items():
            t_sw = mapping.get(s_sw)
            if t_sw is None or t_sw not in tgt.switches:
                for skey in entries.values():
                    self.errors.append(f'{skey}: switch {s_sw} has no counterpart in {tgt.describe()} '
                                       f'(target switches {list(tgt.switches)})')
                continue
            for name, skey in entries.items():
                tkey = tgt.switches[t_sw].get(name)
                if tkey is None:
                    self.errors.append(f'{skey} has no counterpart in {tgt.describe()} switch {t_sw!r}')
                    continue
                self.put(tkey, self.source[skey], [skey])
        if src.tensors and tgt.kind == 'private_bn':
            self.errors.append(f'{src.describe()}: unswitched tensors {list(src.tensors)} do not fit a private BN')

    def merged(self, srcs, tgt, dim):
        """Concatenate several source layers of one kind into one target layer along ``dim``
        (0: output channels / BN channels; 1: input channels).  BN ``num_batches_tracked`` is taken from the
        first source and the others are recorded as merged.  Used for allenai/elastic's two-branch
        bottlenecks (``official_checkpoints/README.md``)."""
        self.pairs.append((' + '.join(s.prefix for s in srcs), tgt.prefix))
        if len({s.kind for s in srcs}) != 1 or srcs[0].kind != tgt.kind:
            self.errors.append(f'cannot merge {[s.describe() for s in srcs]} into {tgt.describe()}')
            return
        for name, tkey in tgt.tensors.items():
            skeys = [s.tensors.get(name) for s in srcs]
            if any(k is None for k in skeys):
                self.errors.append(f'{name} missing in one of {[s.prefix for s in srcs]} for {tkey}')
                continue
            if name == 'num_batches_tracked':
                self.put(tkey, self.source[skeys[0]], skeys, 'merge')
            else:
                d = 0 if self.source[skeys[0]].dim() == 1 else dim
                self.put(tkey, torch.cat([self.source[k] for k in skeys], d), skeys, 'merge')

    # ------------------------------------------------------------------------------------ result
    def unused(self):
        """Source keys not used, not dropped."""
        return [k for k in self.source if k not in self.used]

    def unfilled(self):
        """Target keys neither written nor allowed to be new."""
        new = {k for k, _ in self.new}
        return [k for k in self.target_shapes if k not in self.out and k not in new]

    def finish(self, cause_hint=''):
        """Raise unless every source tensor was used and every target tensor filled; returns the state dict.

        Raises:
            CheckpointMismatchError: listing mapping errors, unused source keys (source naming) and unfilled
                target keys (dynscale naming), and the likely cause.
        """
        unused, unfilled = self.unused(), self.unfilled()
        if self.errors or unused or unfilled:
            lines = [f'{self.origin} weights do not fit dynscale {self.model_name!r}: {len(self.errors)} mapping '
                     f'errors, {len(unused)} source tensors unused, {len(unfilled)} model tensors not filled.']
            lines += [f'  error: {e}' for e in self.errors[:12]]
            lines += [f'  unused source key: {k} {tuple(self.source[k].shape)}' for k in unused[:12]]
            lines += [f'  unfilled model key: {k} {self.target_shapes[k]}' for k in unfilled[:12]]
            if cause_hint:
                lines.append(f'Likely cause: {cause_hint}')
            raise CheckpointMismatchError('\n'.join(lines))
        return self.out

    def summary(self):
        """Counts per operation: ``{'copy': n, 'merge': n, 'broadcast': n, 'dropped': n, 'new': n}``."""
        counts = {}
        for op, _, _ in self.rows:
            counts[op] = counts.get(op, 0) + 1
        counts['dropped'] = len(self.dropped)
        counts['new'] = len(self.new)
        return counts
