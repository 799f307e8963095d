import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
SHARED = os.environ.get('DYNSCALE_SHARED', os.path.join(os.path.dirname(ROOT), 'shared'))
pytest_plugins = ['temp_budget', 'pytester']  # tests/temp_budget.py: the disk budget of the temporary folders

# What ``import plugins.detectron2`` does in every tool process, done before any test imports detectron2.data (which
# registers its builtin datasets under $DETECTRON2_DATASETS once per process): tools run in-process (run_tool) and a
# test that imported detectron2 first then see the same datasets root as a tool started on the command line.
from plugins._compat import export_detectron2_datasets  # noqa: E402

export_detectron2_datasets()


def _memoize(fn, cached_errors=()):
    """``fn`` (a pure function of hashable positional arguments and of installed files) with its results kept for
    this process: a call with the same arguments returns a deep copy of the first result, or raises the same
    ``cached_errors`` type with the same message."""
    import copy
    import functools
    cache = {}

    @functools.wraps(fn)
    def memoized(*args, **kwargs):
        key = (args, repr(sorted(kwargs.items())))
        if key not in cache:
            try:
                cache[key] = (True, fn(*args, **kwargs))
            except cached_errors as e:
                cache[key] = (False, (type(e), str(e)))
        ok, value = cache[key]
        if not ok:
            raise value[0](value[1])
        return copy.deepcopy(value)
    memoized.__wrapped_by_dynscale_tests__ = True
    return memoized


def _lighten_mmengine_config_helpers():
    """Issue 27: two pure helpers of MMEngine's config system took ~100 s of the suite's CPU, recomputed on every
    config a test reads or a runner logs.  In the test processes:

    * ``mmengine.config.utils._get_cfg_metainfo(package_path, cfg_path)``: to resolve a ``mmdet::`` / ``mmseg::``
      base, MMEngine first parses every metafile of the installed package (~100 YAML files, ~0.2 s) and only then
      falls back to the ``_base_`` path, with a ValueError (cached too): every ``Config.fromfile`` of our configs
      paid this twice or three times (55 s in 148 reads).
    * ``mmengine.config.config.FormatCode`` (yapf) behind ``Config.pretty_text``: a runner formats its config when it
      starts, when it logs it and in every checkpoint's meta, ~0.3-1 s each (60 s in 136 calls).  Memoising it helped
      little (every runner's text holds its own temporary work_dir), so the tests keep only the part that can fail:
      the text must parse as Python (yapf raises, and MMEngine turns that into a SyntaxError, exactly when it does
      not, e.g. an object's repr in a config); it is returned as MMEngine wrote it, one key per line, not re-wrapped.

    New processes (the command-line tests) run MMEngine unchanged."""
    try:
        import mmengine.config.config as config_module
        import mmengine.config.utils as utils_module
    except ImportError:
        return
    if not getattr(utils_module._get_cfg_metainfo, '__wrapped_by_dynscale_tests__', False):
        utils_module._get_cfg_metainfo = _memoize(utils_module._get_cfg_metainfo, cached_errors=ValueError)
    if not getattr(config_module.FormatCode, '__wrapped_by_dynscale_tests__', False):
        config_module.FormatCode = _parse_only_format_code


def _parse_only_format_code(text, style_config=None, **kwargs):
    """yapf's ``FormatCode(text) -> (text, changed)`` less the re-wrapping: raises SyntaxError where yapf raises
    (text that is not Python), returns ``text`` unchanged."""
    import ast
    ast.parse(text)
    return text, False


_parse_only_format_code.__wrapped_by_dynscale_tests__ = True


_lighten_mmengine_config_helpers()


@pytest.fixture(scope='session')
def shared_dir():
    """Path of ../shared (datasets, papers); tests that need it skip when it is absent."""
    if not os.path.isdir(os.path.join(SHARED, 'datasets')):
        pytest.skip(f'the shared datasets folder is missing: expected {SHARED}/datasets beside the repo')
    return SHARED


#: under pytest-xdist (``-n auto``) every worker is one process per core: one intra-op thread each, or the workers'
#: OpenMP threads spin against each other (a training step gets several times slower)
XDIST_WORKER = os.environ.get('PYTEST_XDIST_WORKER')


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch
    torch.set_num_threads(1 if XDIST_WORKER else min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(autouse=True)
def _forget_mmengine_instances():
    """Forget the named MMEngine instances (visualizers, message hubs, loggers) a test created, as a new process
    would not have them: a test that runs a tool's ``main()`` in-process otherwise leaves e.g. MMSeg's
    ``SegLocalVisualizer`` named 'visualizer', whose backend writes into that test's work dir, for every later runner
    of the process to reuse (``ManagerMixin.get_instance`` returns an existing name), after the folder is gone."""
    managers = _logging_state()[1]
    yield
    _forget_new_instances(managers)


def fast_subset(values, fast, ids=None):
    """``pytest.mark.parametrize`` values of which only those whose id is in ``fast`` run in ``make test-fast``: the
    others carry the ``slow`` mark (``make test`` runs them all).  For tests parametrised over every framework config
    or release, where a few representatives (one per family) keep the edit-test loop honest.

    Args:
        values: the parameter values (a tuple is one value per argname); ids: a function value -> id
            (default ``str``).
    Raises:
        ValueError: a name in ``fast`` is not one of the ids (a renamed config would silently leave the fast set).
    """
    ids = ids or str
    names = [ids(v) for v in values]
    unknown = set(fast) - set(names)
    if unknown:
        raise ValueError(f'fast_subset: {sorted(unknown)} are not among the parameters {names}')
    return [pytest.param(*(v if isinstance(v, tuple) else (v,)), id=n, marks=() if n in fast else pytest.mark.slow)
            for v, n in zip(values, names)]


class ToolResult:
    """What a tool run left: ``returncode``, ``stdout``, ``stderr`` (the fields of ``subprocess.CompletedProcess``)."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _loggers():
    """The root logger and every logger created so far."""
    import logging
    return [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                    if isinstance(lg, logging.Logger)]


def _logging_state():
    """Handlers of every logger and the named MMEngine instances (loggers, message hubs, visualizers) that exist now."""
    loggers = _loggers()
    managers = {}
    if 'mmengine' in sys.modules:
        from mmengine.utils import ManagerMixin
        managers = {cls: dict(cls._instance_dict) for cls in _subclasses(ManagerMixin)}
    return {id(lg): (lg, list(lg.handlers)) for lg in loggers}, managers


def _subclasses(cls):
    out = [cls]
    for sub in cls.__subclasses__():
        out += _subclasses(sub)
    return out


def _forget_new_instances(managers):
    """Forget the named MMEngine instances created since ``managers`` (``_logging_state()[1]``) was taken."""
    if 'mmengine' in sys.modules:
        from mmengine.utils import ManagerMixin
        for cls in _subclasses(ManagerMixin):
            old = managers.get(cls, {})
            for name in [n for n in cls._instance_dict if n not in old]:
                del cls._instance_dict[name]


def _restore_logging(state):
    """Undo what a tool run in-process did to process-wide logging: handlers it added (they write to its captured
    output, closed now) are closed and removed, MMEngine instances it created by name are forgotten, and
    detectron2's cached ``setup_logger`` is reset, so that the next run sets up its logging as a new process does."""
    before, managers = state
    for lg in _loggers():
        keep = before.get(id(lg), (lg, []))[1]
        for h in list(lg.handlers):
            if h not in keep:
                lg.removeHandler(h)
                h.close()
    _forget_new_instances(managers)
    d2_logger = sys.modules.get('detectron2.utils.logger')
    if d2_logger is not None and hasattr(d2_logger.setup_logger, 'cache_clear'):
        d2_logger.setup_logger.cache_clear()


def run_tool(argv, cwd=ROOT, env=None, timeout=300, subprocess_run=False, program=False):
    """Run ``python SCRIPT ARGS...`` (``argv = [SCRIPT, *ARGS]``, SCRIPT relative to ``cwd``) and return a
    :class:`ToolResult`.

    By default the script runs in this process through ``runpy.run_path(..., run_name='__main__')``, so its own
    ``if __name__ == '__main__'`` block (the error reporting under test) runs exactly as on the command line, with
    ``sys.argv``, the working directory and the environment of the command and stdout / stderr captured at the file
    descriptors (log handlers created earlier write there too); it saves the 3-6 s a new interpreter spends
    importing torch and the frameworks.  ``subprocess_run=True`` (or a first argument that is not a ``.py`` script,
    e.g. ``-m torch.distributed.run``) starts a real ``python`` process: keep one such test per tool for the command
    line itself.  ``program=True``: ``argv`` is a whole command line, run as a process (``['bash', '-c', ...]``).
    ``env`` entries are added to the environment (``None`` values remove a variable).
    """
    import runpy
    import subprocess
    import tempfile
    import traceback

    full_env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    full_env.pop('DYNSCALE_TRACEBACK', None)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    if program or subprocess_run or not argv[0].endswith('.py'):
        cmd = list(argv) if program else [sys.executable, *argv]
        r = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                           timeout=timeout)
        return ToolResult(r.returncode, r.stdout, r.stderr)

    import logging
    import warnings
    logging_state = _logging_state()
    root_logger = logging.getLogger()
    saved = dict(argv=sys.argv, path=list(sys.path), cwd=os.getcwd(), env=dict(os.environ), stdout=sys.stdout,
                 stderr=sys.stderr)
    files = [tempfile.TemporaryFile(mode='w+b') for _ in range(2)]
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = [os.dup(1), os.dup(2)]
    code = 0
    try:
        os.dup2(files[0].fileno(), 1)
        os.dup2(files[1].fileno(), 2)
        sys.stdout, sys.stderr = (open(fd, 'w', closefd=False, buffering=1, errors='replace') for fd in (1, 2))
        os.environ.clear()
        os.environ.update(full_env)
        os.chdir(cwd)
        sys.argv = list(argv)
        for h in logging_state[0][id(root_logger)][1]:  # pytest's capture: a new process's root has no handler
            root_logger.removeHandler(h)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            try:
                runpy.run_path(os.path.join(cwd, argv[0]), run_name='__main__')
            except SystemExit as e:  # as the interpreter: None -> 0, an int as it is
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:  # sys.exit('message'): printed, status 1
                    print(e.code, file=sys.stderr)
                    code = 1
            except BaseException:  # noqa: B902  what the interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if sys.stdout is not saved['stdout']:
            sys.stdout.close()
            sys.stderr.close()
        sys.stdout, sys.stderr = saved['stdout'], saved['stderr']
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        os.chdir(saved['cwd'])
        os.environ.clear()
        os.environ.update(saved['env'])
        sys.argv = saved['argv']
        sys.path[:] = saved['path']
        _restore_logging(logging_state)
        for h in logging_state[0][id(root_logger)][1]:
            if h not in root_logger.handlers:
                root_logger.addHandler(h)
    out = []
    for f in files:
        f.seek(0)
        out.append(f.read().decode('utf-8', 'replace'))
        f.close()
    return ToolResult(code, *out)
