"""Backward-compatible alias of :mod:`backbones.slimmable.ops` (where the slimmable operators now live)."""
from .slimmable.ops import *  # noqa: F401,F403
from .slimmable.ops import __all__  # noqa: F401
