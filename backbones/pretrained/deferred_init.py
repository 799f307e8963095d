"""Random initialisation deferred while a model is built, so that no tensor is drawn twice (issue 27).

A build draws most tensors twice: PyTorch's default ``reset_parameters`` of every convolution and linear layer
(uniform draws), then the family's own initialisation of the same tensors (normal draws); and
``backbones.create(name, pretrained=...)`` then overwrites most of them with the file's.  For a ResNeXt50 the first
draws are about half of a 0.22 s build, all of them nearly all of a pretrained one; for VGG16-BN over a second.
:class:`DeferredInit` records the calls of ``torch.nn.init`` made during the build instead of running them;
:meth:`DeferredInit.replay` then runs, in their original order, the last call on each tensor (the earlier ones are
overwritten by it: no writer of ``torch.nn.init`` reads what the tensor held) and none on the tensors a checkpoint
wrote (a classifier left at its initialisation and a SACT halting branch added to a plain ResNet are drawn).  Every
tensor then holds what the build would have left in it, drawn from the same distribution, from the generator's
state at the replay instead of at the build (a seeded build draws other numbers than without deferral).

Only ``torch.nn.init`` functions looked up at call time (``init.kaiming_uniform_`` in ``torch.nn.modules``,
``nn.init.normal_`` in every family of this package) are deferred; direct tensor methods (``zero_``, ``fill_``
of BatchNorm's running statistics) run at once.  None of this package's families writes a tensor by a direct
method after an ``nn.init`` call on the same tensor during its build, so the replay leaves what the build would
have left (``tests/test_backbones.py`` checks it for every registered model, each writer stamping its call).  A
family registered outside this package may (``m.weight.data.normal_()`` after ``nn.Linear``'s own draw), so its
builds are not deferred (:func:`backbones._registry.is_builtin`).
"""
import contextlib
import threading

import torch
from torch.nn import init

from .. import _registry

__all__ = ['DeferredInit', 'build_deferred']

#: the functions of torch.nn.init that write a tensor in place
_WRITERS = ('uniform_', 'normal_', 'trunc_normal_', 'constant_', 'ones_', 'zeros_', 'eye_', 'dirac_',
            'xavier_uniform_', 'xavier_normal_', 'kaiming_uniform_', 'kaiming_normal_', 'orthogonal_', 'sparse_')


def _key(t):
    """Storage position and shape of a tensor: the same for a parameter, its ``.data`` and an in-place copy."""
    return t.data_ptr(), tuple(t.shape), tuple(t.stride())


class DeferredInit:
    """Records the ``torch.nn.init`` calls of a build and replays those of the tensors a checkpoint did not write.

    Example (``backbones.pretrained.loader.create_pretrained``; ``backbones.create`` without weights replays
    with nothing written)::

        deferred = DeferredInit()
        with deferred.recording():
            model = build(...)     # tensors allocated, not drawn: their memory is uninitialised
        report = load_pretrained(model, file)
        own = model.state_dict(keep_vars=True)
        deferred.replay(own[k] for k in report.loaded_keys)   # the rest gets its initialisation now

    ``torch.nn.init`` is patched process-wide while recording; calls from other threads run as usual.
    """

    def __init__(self):
        self.calls = []  # (function, tensor, args, kwargs) in call order

    @contextlib.contextmanager
    def recording(self):
        """Within the block, ``torch.nn.init``'s writers record their call and return the tensor unchanged."""
        saved = {name: getattr(init, name) for name in _WRITERS if hasattr(init, name)}
        owner = threading.get_ident()

        def recorder(fn):
            def record(tensor, *args, **kwargs):
                if threading.get_ident() != owner:  # another thread's build draws as usual
                    return fn(tensor, *args, **kwargs)
                self.calls.append((fn, tensor, args, kwargs))
                return tensor
            return record

        for name, fn in saved.items():
            setattr(init, name, recorder(fn))
        try:
            yield self
        finally:
            for name, fn in saved.items():
                setattr(init, name, fn)

    def replay(self, written=()):
        """Run, in recording order, the last recorded call on each tensor not in ``written``.

        A view (another shape, stride or offset) is a tensor of its own: a call on a slice after one on the whole
        tensor is kept, as is the order between them.  A tensor that is no longer contiguous (weights converted to
        channels-last after their initialisation) is drawn contiguous and copied, so that the same seed gives the
        same values in either layout.

        Args:
            written (Iterable[Tensor]): the tensors a load overwrote completely (``load_state_dict`` copies in place,
                so they are the model's own tensors); none after a build without weights.
        """
        done = {_key(t) for t in written}
        last = {}
        for i, (_, tensor, _, _) in enumerate(self.calls):
            last[_key(tensor)] = i
        keep = sorted(i for k, i in last.items() if k not in done)
        for i in keep:
            fn, tensor, args, kwargs = self.calls[i]
            if tensor.is_contiguous():
                fn(tensor, *args, **kwargs)
            else:  # converted after the call (channels-last weights): draw in the layout the call drew in
                with torch.no_grad():
                    tensor.copy_(fn(torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device),
                                    *args, **kwargs))
        self.calls = []


def build_deferred(name, **kwargs):
    """``backbones._registry.build(name, **kwargs)`` with the build's ``torch.nn.init`` calls recorded, for this
    package's families only (:func:`backbones._registry.is_builtin`; a user's family draws as it builds).

    Returns:
        tuple: ``(model, deferred)``; call ``deferred.replay(written)`` once the tensors a file writes are loaded
        (``replay()`` without weights): until then the recorded tensors hold uninitialised memory.

    Raises:
        as :func:`backbones._registry.build`.
    """
    deferred = DeferredInit()
    with deferred.recording() if _registry.is_builtin(name) else contextlib.nullcontext():
        model = _registry.build(name, **kwargs)
    return model, deferred
