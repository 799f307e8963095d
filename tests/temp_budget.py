"""pytest plugin (loaded by conftest.py): a budget for the disk space each test process's temporary folder may hold.

A CI machine once ran out of disk in the middle of the suite: every tmp_path and module-scoped folder stayed to the
end of the session (~27 GB in one run).  setup.cfg now removes a passed test's tmp_path at its teardown
(``tmp_path_retention_policy = failed``) and module-scoped fixtures remove their folders; this plugin fails the test
after whose teardown the folder is over budget, naming the largest entries, so that a new fixture that keeps big files
is found where it was added.
"""
import os

import pytest

#: most bytes this process's temporary folder (pytest's basetemp: every tmp_path and module-scoped folder alive) may
#: hold after a test's teardown; each xdist worker has its own.  A CI machine once ran out of disk when every folder
#: stayed to the session's end (~27 GB in one run).  Set DYNSCALE_TEMP_BUDGET_GB to change it.
TEMP_BUDGET_GB = float(os.environ.get('DYNSCALE_TEMP_BUDGET_GB', '3'))


def _tree_bytes(root):
    """Bytes in the regular files under ``root`` (symbolic links not followed) and the largest direct children."""
    sizes = {}
    for child in os.scandir(root):
        total = 0
        if child.is_dir(follow_symlinks=False):
            for d, _, files in os.walk(child.path):
                for f in files:
                    try:
                        total += os.lstat(os.path.join(d, f)).st_size
                    except OSError:  # removed meanwhile (a background process of the test)
                        pass
        elif child.is_file(follow_symlinks=False):
            total = child.stat(follow_symlinks=False).st_size
        else:  # pytest's "<name>current" links, sockets
            continue
        sizes[child.name] = total
    return sum(sizes.values()), sorted(sizes.items(), key=lambda kv: -kv[1])[:5]


@pytest.fixture(autouse=True)
def _temp_disk_budget(request):
    """After the test's teardown (this fixture is set up first, so torn down last): fails when the process's
    temporary folder holds more than ``TEMP_BUDGET_GB``, naming its largest folders, so that a fixture keeping big
    files to the end of the session is found where it was added, not when a CI machine's disk is full."""
    yield
    factory = request.config._tmp_path_factory
    if factory._basetemp is None or not factory._basetemp.is_dir():
        return
    total, largest = _tree_bytes(factory._basetemp)
    log = os.environ.get('DYNSCALE_TEMP_LOG')
    if log:  # the size after every test, to measure a run's peak
        with open(log, 'a') as f:
            f.write(f'{os.environ.get("PYTEST_XDIST_WORKER", "main")} {total} {request.node.nodeid}\n')
    if total > TEMP_BUDGET_GB * 2 ** 30:
        pytest.fail(f'the temporary folder {factory._basetemp} holds {total / 2 ** 20:.0f} MB after this test '
                    f'(budget {TEMP_BUDGET_GB} GB per process); largest: '
                    + ', '.join(f'{n} {b / 2 ** 20:.0f} MB' for n, b in largest)
                    + '. Remove big files at the teardown of the fixture that wrote them (module-scoped folders '
                    'stay to the end of the session otherwise).', pytrace=False)
