"""Environment checks shared by the framework adapters.

Importing a framework adapter (``plugins.mm``, ``plugins.detectron2``) first
calls these so that a broken or partial installation fails with a message that
names the fix, instead of a stack trace deep inside mmseg or detectron2.
"""


class MMEnvironmentError(ImportError):
    """The OpenMMLab stack is missing or inconsistent; the message names the fix."""


_FIX = 'run `bash tools/setup_env.sh` (or `pip install -e .[mm]` after building mmcv 2.1 from source)'


def check_mm_environment():
    """Verify mmengine, full mmcv with compiled ops, and whichever of mmseg / mmdet is installed (at least one).

    Returns:
        str: a one-line summary of the versions found.

    Raises:
        MMEnvironmentError: mmcv missing, ``mmcv-lite`` instead of full mmcv, mmcv ops compiled against another
            torch, mmcv outside ``[2.1, 2.2)``, neither mmseg nor mmdet installed, or one of them broken.
    """
    import importlib.util
    try:
        import mmengine
    except ImportError as e:
        raise MMEnvironmentError(f'mmengine is not installed ({e}); {_FIX}') from e
    try:
        import mmcv
    except ImportError as e:
        raise MMEnvironmentError(f'mmcv is not installed ({e}); {_FIX}') from e
    from packaging.version import Version
    if not Version('2.1.0') <= Version(mmcv.__version__) < Version('2.2.0'):
        raise MMEnvironmentError(f'mmcv {mmcv.__version__} found, but mmsegmentation 1.2.2 and mmdet 3.3.0 '
                                 f'need mmcv>=2.1,<2.2; {_FIX}')
    try:
        from mmcv.utils import ext_loader
        ext_loader.load_ext('_ext', ['nms'])
    except ModuleNotFoundError as e:
        raise MMEnvironmentError(f'mmcv {mmcv.__version__} has no compiled ops (is it mmcv-lite, or was it '
                                 f'built with MMCV_WITH_OPS=0?): {e}; {_FIX}') from e
    except (ImportError, OSError) as e:
        import torch
        raise MMEnvironmentError(f'mmcv ops fail to load ({e}); they were probably compiled against another '
                                 f'torch than the installed {torch.__version__}: rebuild mmcv; {_FIX}') from e
    try:
        import torch
        from mmcv.ops import nms
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
        _, keep = nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
        assert keep.tolist() == [0]
    except Exception as e:  # noqa: BLE001
        raise MMEnvironmentError(f'mmcv.ops.nms does not run ({e!r}); {_FIX}') from e
    versions = [f'mmengine {mmengine.__version__}', f'mmcv {mmcv.__version__} (ops ok)']
    present = [m for m in ('mmseg', 'mmdet') if importlib.util.find_spec(m) is not None]
    if not present:
        raise MMEnvironmentError(f'neither mmsegmentation nor mmdet is installed; install the one you use '
                                 f'(pip install mmsegmentation==1.2.2 / mmdet==3.3.0) or {_FIX}')
    for mod in present:
        try:
            m = __import__(mod)
            versions.append(f'{mod} {m.__version__}')
        except ImportError as e:
            raise MMEnvironmentError(f'{mod} is not importable ({e}); {_FIX}') from e
        except AssertionError as e:  # mmseg/mmdet assert the mmcv version range at import
            raise MMEnvironmentError(f'{mod} rejects the installed mmcv: {e}; {_FIX}') from e
    return ', '.join(versions)


#: the one environment variable holding the datasets root (configs, tools, demo, tests)
DATASETS_VARIABLE = 'DYNSCALE_DATASETS'
_FORMER_DATASETS_VARIABLES = ('DYNSCALE_DATA',)


def check_datasets_variable(environ=None):
    """Raise when a former name of the datasets-root variable is set (it would be ignored silently).

    Args:
        environ (Mapping | None): the environment (default ``os.environ``).

    Returns:
        str | None: the datasets root from ``DYNSCALE_DATASETS``, or None when unset.

    Raises:
        ValueError: ``DYNSCALE_DATA`` is set; the message names ``DYNSCALE_DATASETS``.
    """
    import os
    env = os.environ if environ is None else environ
    for old in _FORMER_DATASETS_VARIABLES:
        if old in env:
            raise ValueError(f'the environment variable {old} was renamed {DATASETS_VARIABLE} (one variable for the '
                             f'datasets root of every config and tool): export {DATASETS_VARIABLE}={env[old]} and '
                             f'unset {old}')
    return env.get(DATASETS_VARIABLE)


def datasets_root(environ=None):
    """The datasets root every config and tool reads: ``$DYNSCALE_DATASETS``, else ``../shared/datasets`` beside
    the repository.

    Raises:
        ValueError: a former name of the variable is set (:func:`check_datasets_variable`).
    """
    import os
    root = check_datasets_variable(environ)
    if root:
        return root
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'datasets'))


def export_detectron2_datasets(environ=None):
    """Make detectron2's builtin datasets read the one datasets root: set ``DETECTRON2_DATASETS`` (read when
    ``detectron2.data`` is first imported) to :func:`datasets_root` unless it is already set.  Returns the root
    detectron2 will use.

    Raises:
        ValueError: a former name of the datasets-root variable is set.
    """
    import os
    env = os.environ if environ is None else environ
    root = datasets_root(env)
    return env.setdefault('DETECTRON2_DATASETS', root)
