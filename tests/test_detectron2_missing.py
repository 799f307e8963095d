"""Without detectron2, ``import plugins.detectron2`` fails with an ImportError that says how to install it,
and the rest of the project still imports (issue 5 acceptance). Runs whether or not detectron2 is installed:
the child process blocks it with ``sys.modules['detectron2'] = None``."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code):
    return subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # a new Python process
def test_import_without_detectron2_names_the_install():
    proc = _run("""
        import sys
        sys.modules['detectron2'] = None  # as if detectron2 were not installed
        try:
            import plugins.detectron2
        except ImportError as e:
            print('MESSAGE:', e)
            print('TYPE:', type(e).__name__)
        else:
            print('NO ERROR')
        import backbones  # the rest of the project still works
        m = backbones.create('resnext50_32x4d', num_classes=0)
        print('BACKBONES OK', type(m).__name__)
    """)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert 'NO ERROR' not in out
    msg = out.split('MESSAGE:', 1)[1].split('\n', 1)[0]
    assert 'detectron2' in msg
    assert 'detectron2.readthedocs.io/en/latest/tutorials/install.html' in msg
    assert 'pip install' in msg
    assert 'BACKBONES OK ElasticResNeXt' in out


def test_failed_import_leaves_no_partial_registration():
    """A second import attempt raises again (no half-initialised package left in sys.modules)."""
    proc = _run("""
        import sys
        sys.modules['detectron2'] = None
        for _ in range(2):
            try:
                import plugins.detectron2
                print('IMPORTED')
            except ImportError:
                print('RAISED')
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['RAISED', 'RAISED']
