"""The file backend the OpenMMLab tools write checkpoints with: MMEngine's local backend, except that a checkpoint
is written atomically (temporary file, fsync, rename: :func:`backbones.checkpoint.atomic_write_bytes`) and a full
disk raises :class:`backbones.checkpoint.CheckpointWriteError` naming the path and the space needed, instead of
leaving a truncated ``iter_N.pth`` that ``--resume`` would then pick.

:func:`plugins.mm.cli.load_config` sets ``default_hooks.checkpoint.backend_args = dict(backend='dynscale_local')``
unless the config chooses a backend itself.
"""
from mmengine.fileio import LocalBackend, register_backend

from backbones.checkpoint import atomic_write_bytes

__all__ = ['AtomicLocalBackend', 'BACKEND']

#: the name the backend is registered under in MMEngine's file backends
BACKEND = 'dynscale_local'


class AtomicLocalBackend(LocalBackend):
    """:class:`mmengine.fileio.LocalBackend` whose ``put`` (the checkpoint writer) is atomic.

    Raises (from ``put``):
        backbones.checkpoint.CheckpointWriteError: no space left; nothing partial is left at ``filepath``.
    """

    def put(self, obj, filepath):
        """Write the bytes ``obj`` to ``filepath`` atomically (creating its folder)."""
        atomic_write_bytes(obj, filepath)


register_backend(BACKEND, AtomicLocalBackend, force=True)
