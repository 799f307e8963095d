"""Random initialisation deferred while a model is built to receive a checkpoint (issue 27).

``backbones.create(name, pretrained=...)`` builds a model and then overwrites its tensors with the file's.  The
random draws of the build -- PyTorch's default ``reset_parameters`` of every convolution and linear layer (uniform
draws) and the family's own initialisation (normal draws) -- were thrown away: for a ResNeXt50 about 0.2 s of a
0.25 s build, for VGG16-BN over a second.  :class:`DeferredInit` records the calls of ``torch.nn.init`` made during
the build instead of running them; after the load, :meth:`DeferredInit.replay` runs, in their original order, only
the calls on tensors the file did not write (a classifier left at its initialisation, a SACT halting branch added to
a plain ResNet).  Every such tensor then holds what the same calls would have drawn, from the generator's state at
the replay instead of at the build: initial values of tensors that are loaded do not exist any more, the others are
drawn from the same distributions.

Only ``torch.nn.init`` functions looked up at call time (``init.kaiming_uniform_`` in ``torch.nn.modules``,
``nn.init.normal_`` in every family of this package) are deferred; direct tensor methods (``zero_``, ``fill_``
of BatchNorm's running statistics) run at once.  None of this package's families writes a tensor by a direct
method after an ``nn.init`` call on the same tensor during its build, so the replay order is the build order.
"""
import contextlib
import threading

from torch.nn import init

__all__ = ['DeferredInit']

#: the functions of torch.nn.init that write a tensor in place
_WRITERS = ('uniform_', 'normal_', 'trunc_normal_', 'constant_', 'ones_', 'zeros_', 'eye_', 'dirac_',
            'xavier_uniform_', 'xavier_normal_', 'kaiming_uniform_', 'kaiming_normal_', 'orthogonal_', 'sparse_')


def _key(t):
    """Storage position and shape of a tensor: the same for a parameter, its ``.data`` and an in-place copy."""
    return t.data_ptr(), tuple(t.shape), tuple(t.stride())


class DeferredInit:
    """Records the ``torch.nn.init`` calls of a build and replays those of the tensors a checkpoint did not write.

    Example (``backbones.pretrained.loader.create_pretrained``)::

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

    def replay(self, written):
        """Run the recorded calls, in order, on every tensor not in ``written``.

        Args:
            written (Iterable[Tensor]): the tensors a load overwrote completely (``load_state_dict`` copies in place,
                so they are the model's own tensors).
        """
        done = {_key(t) for t in written}
        for fn, tensor, args, kwargs in self.calls:
            if _key(tensor) not in done:
                fn(tensor, *args, **kwargs)
        self.calls = []
