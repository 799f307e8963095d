"""Importing a user's modules before a command line reads its arguments: the modules that register a new training
method (``backbones.training.register_policy``) or backbone (``backbones.register_model``), so that
``tools/pretrain.py --custom-imports my_method --method my_method`` and ``tools/train_det.py --custom-imports ...``
know them, as MMEngine configs do with ``custom_imports = dict(imports=[...])``.
"""
import importlib
import sys

__all__ = ['import_custom_modules']


def import_custom_modules(names, flag='--custom-imports'):
    """Import every module of ``names`` (dotted names, as ``import`` takes them); returns the modules.

    Args:
        names (Iterable[str] | None): module names; None or empty imports nothing.
        flag (str): how the caller names the option (in messages).

    Raises:
        ValueError: a module that cannot be found: the message names it and the fix (its folder on ``PYTHONPATH``
            or the working directory). Errors raised while the module runs propagate unchanged.
    """
    out = []
    for name in names or ():
        try:
            out.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + '.')):
                raise  # the module was found; something it imports is missing
            raise ValueError(f'{flag} {name}: no module named {e.name!r} on the import path; put its folder on '
                             f'PYTHONPATH (e.g. PYTHONPATH=path/to/folder) or run from the folder that holds it '
                             f'(searched: {", ".join(p or "." for p in sys.path[:4])}, ...)') from None
    return out
