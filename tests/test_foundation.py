"""Packaging and environment behaviour (issue 2)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, **env):
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=e, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a new Python process
def test_import_backbones_needs_only_torch():
    # block every framework: backbones must still import and build a model
    code = ("import sys\n"
            "for m in ('mmcv', 'mmengine', 'mmseg', 'mmdet', 'detectron2'):\n"
            "    sys.modules[m] = None\n"
            "import backbones\n"
            "m = backbones.create('resnext50_elastic', num_classes=0)\n"
            "print(len(backbones.list_models()), 'torchvision' in sys.modules)\n")
    r = _run(code)
    assert r.returncode == 0, r.stderr
    n, tv = r.stdout.split()
    assert int(n) >= 20
    # nor torchvision until a model needs it: its import (torch._dynamo through torchvision.ops) costs every
    # process that builds a backbone about a second
    assert tv == 'False', 'import backbones / create() imported torchvision'


@pytest.mark.parametrize('error, expected', [
    # mmcv-lite, or full mmcv built with MMCV_WITH_OPS=0
    ("ModuleNotFoundError(\"No module named 'mmcv._ext'\")", 'no compiled ops'),
    # ops compiled against another torch: the dynamic loader cannot resolve torch symbols
    ("ImportError('mmcv/_ext.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')", 'compiled against another torch'),
])
@pytest.mark.slow  # a new Python process
def test_broken_mmcv_gives_a_message_that_names_the_fix(error, expected):
    """A broken mmcv is reported with the fix, not with a stack trace deep inside mmseg."""
    pytest.importorskip('mmcv', reason='mmcv not installed: run bash tools/setup_env.sh')
    code = ("import mmcv.utils.ext_loader as el\n"
            "def boom(*a, **k):\n"
            f"    raise {error}\n"
            "el.load_ext = boom\n"
            "from plugins._compat import check_mm_environment, MMEnvironmentError\n"
            "try:\n"
            "    check_mm_environment()\n"
            "except MMEnvironmentError as e:\n"
            "    print('MSG', e)\n")
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert expected in r.stdout and 'setup_env.sh' in r.stdout, r.stdout


def test_mm_environment_check_passes():
    pytest.importorskip('mmcv', reason='mmcv not installed: run bash tools/setup_env.sh')
    from plugins._compat import check_mm_environment
    summary = check_mm_environment()
    assert 'mmcv 2.1' in summary and 'ops ok' in summary


@pytest.mark.slow  # a new Python process
def test_check_env_script_reports_ok():
    r = subprocess.run([sys.executable, 'tools/check_env.py', '--no-mm'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and '[ok] torch' in r.stdout


def test_setup_cfg_declares_extras():
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, 'setup.cfg'))
    assert cfg['metadata']['name'] == 'dynscale'
    extras = cfg['options.extras_require']
    assert 'mmsegmentation==1.2.2' in extras['mm'] and 'mmdet==3.3.0' in extras['mm']
    assert 'pytest' in extras['dev']


@pytest.mark.parametrize('tool', [['flake8'], ['isort', '--check-only', '--diff']])
def test_code_passes_the_linters_configured_in_setup_cfg(tool):
    """flake8 and isort (settings in setup.cfg, installed by the dev extra) report nothing on the code."""
    pytest.importorskip(tool[0], reason=f'{tool[0]} not installed: pip install -e .[dev]')
    res = subprocess.run([sys.executable, '-m', *tool, 'backbones', 'plugins', 'tools', 'tests'], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
