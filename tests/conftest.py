import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
SHARED = os.environ.get('DYNSCALE_SHARED', os.path.join(os.path.dirname(ROOT), 'shared'))


@pytest.fixture(scope='session')
def shared_dir():
    """Path of ../shared (datasets, papers); tests that need it skip when it is absent."""
    if not os.path.isdir(os.path.join(SHARED, 'datasets')):
        pytest.skip(f'the shared datasets folder is missing: expected {SHARED}/datasets beside the repo')
    return SHARED


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
