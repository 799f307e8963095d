"""A training method for the command-line tests of tests/test_new_method.py, in a module of its own as a user would
write it: ``--custom-imports cli_method`` (tests/ on PYTHONPATH) imports it, and importing registers it."""
from test_new_method import RecalibratedPolicy

from backbones import training

NAME = 'test_cli_calibrated'


class CLIRecalibratedPolicy(RecalibratedPolicy):
    """:class:`test_new_method.RecalibratedPolicy` under its own name."""

    method = NAME


training.register_policy(NAME, CLIRecalibratedPolicy)
