"""tests/temp_budget.py, the disk budget of each test process's temporary folder, on a suite of its own (pytester,
one subprocess): what it lets through and what it stops, and setup.cfg's retention policy it relies on."""
import configparser
import os

HERE = os.path.dirname(os.path.abspath(__file__))

MB3 = 'bytes(3 * 2 ** 20)'
REMOVING = f"""
import shutil
import pytest

@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp('removed')
    (d / 'big.bin').write_bytes({MB3})
    yield d
    shutil.rmtree(d)
"""
KEEPING = f"""
import pytest

@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp('kept')
    (d / 'big.bin').write_bytes({MB3})
    return d  # stays to the end of the session
"""
TEST = f"""
def test_it(folder, tmp_path):
    (tmp_path / 'own.bin').write_bytes({MB3})
"""


def test_budget_fails_after_a_fixture_that_keeps_big_files_and_names_it(pytester, monkeypatch):
    """Budget 4 MB, every file 3 MB: a passed test's tmp_path and a removing fixture's folder go; the second module
    whose fixture keeps its folder takes the process over budget, and the message names both kept folders."""
    monkeypatch.setenv('DYNSCALE_TEMP_BUDGET_GB', str(4 / 1024))
    monkeypatch.setenv('PYTHONPATH', HERE + os.pathsep + os.environ.get('PYTHONPATH', ''))
    monkeypatch.delenv('DYNSCALE_TEMP_LOG', raising=False)
    pytester.makeini('[pytest]\ntmp_path_retention_policy = failed\n')
    pytester.makepyfile(test_a=REMOVING + TEST, test_b=REMOVING + TEST, test_c=KEEPING + TEST, test_d=KEEPING + TEST)
    r = pytester.runpytest_subprocess('-p', 'temp_budget', '-p', 'no:xdist', '-p', 'no:cacheprovider', '-v')
    out = r.stdout.str()
    r.assert_outcomes(passed=4, errors=1)
    assert 'test_d.py::test_it ERROR' in out, out
    assert 'holds 6 MB after this test (budget' in out and 'kept0 3 MB' in out and 'kept1 3 MB' in out, out
    assert 'Remove big files at the teardown of the fixture' in out


def test_setup_cfg_removes_a_passed_tests_tmp_path():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(os.path.dirname(HERE), 'setup.cfg'))
    assert cfg['tool:pytest']['tmp_path_retention_policy'] == 'failed'
