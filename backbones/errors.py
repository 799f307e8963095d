"""How a dynscale command reports a bad input: one line ``prog: error: <cause and fix>`` and exit status 2
(argparse's convention), instead of a traceback whose last frame is deep inside a framework.

The errors counted as bad input are the ones dynscale raises with a message that names the cause and the fix
(missing or unreadable files, checkpoints that do not fit, options a family does not have, misspelt names,
values out of range) plus ``ValueError``/``TypeError`` raised while checking arguments.  Set
``DYNSCALE_TRACEBACK=1`` to get the full traceback instead (for bug reports).
"""
import os
import sys

__all__ = ['ConfigError', 'bad_input_errors', 'run_main']


class ConfigError(ValueError):
    """A config names something that does not exist (a misspelt registered ``type``, a missing dataset folder);
    the message lists the close matches or the expected layout."""


def bad_input_errors():
    """The exception classes a command reports as a bad input (tuple of classes)."""
    from .checkpoint import CheckpointWriteError
    from .training.nonfinite import NonFiniteStepError
    return (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, TypeError, NonFiniteStepError,
            CheckpointWriteError)


def run_main(main, prog=None, argv=None):
    """Call ``main(argv)`` (``main()`` when ``argv`` is None); a bad input (:func:`bad_input_errors`) prints
    ``prog: error: message`` to stderr and exits with status 2; other exceptions propagate with their traceback.

    Args:
        main (callable): the command's entry point.
        prog (str | None): the name printed (default: the script's file name).

    Returns:
        whatever ``main`` returns.

    Raises:
        SystemExit: status 2 on a bad input (unless ``DYNSCALE_TRACEBACK=1``, which re-raises it).
    """
    prog = prog or os.path.basename(sys.argv[0])
    try:
        return main() if argv is None else main(argv)
    except bad_input_errors() as e:
        if os.environ.get('DYNSCALE_TRACEBACK', '') not in ('', '0'):
            raise
        kind = '' if type(e).__module__ == 'builtins' else f'{type(e).__name__}: '  # dynscale's own classes
        print(f'{prog}: error: {kind}{e}\n(set DYNSCALE_TRACEBACK=1 to see where it was raised)', file=sys.stderr)
        sys.exit(2)
