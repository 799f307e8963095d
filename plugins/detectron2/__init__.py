"""Detectron2 plugin of dynscale (layout of detectron2's ``projects/TridentNet``).

Importing this package registers, by side effect (detectron2 registries):

* backbones ``build_<family>_backbone`` and ``build_<family>_fpn_backbone`` for every family of the
  :mod:`backbones` registry, and ``build_dynscale_(fpn_)backbone`` for any (:mod:`.backbone`);
* the C4 box head ``DynscaleRes5ROIHeads`` for the SACT Faster R-CNN (:mod:`.roi_heads`).

Entry points use :func:`setup` (or :func:`get_dynscale_cfg`), which adds the ``MODEL.DYNSCALE`` keys
(:func:`add_dynscale_config`) before merging a yaml, and :class:`DynscaleTrainer` (ponder cost, sandwich
rule, RS-Net scale buckets: the training core's policy, :func:`build_policy`; DDP with dynamic graphs,
evaluation at (width, scale) points with BN calibration).  Datasets: ``DETECTRON2_DATASETS`` defaults to the
project's one datasets root (``$DYNSCALE_DATASETS``, else ``../shared/datasets``).  Configs:
``det_configs/detectron2/``; CLI: ``tools/train_det.py``; weight conversion: ``tools/convert_weights.py --to
detectron2`` (:mod:`.checkpoint`).

Raises:
    ImportError: detectron2 is not importable; the message says how to install it.
"""

_INSTALL = (
    'detectron2 is not on the package registry: build it from its source into this Python environment '
    '(CPU-only builds need no CUDA), following '
    'https://detectron2.readthedocs.io/en/latest/tutorials/install.html , e.g. '
    '`python -m pip install --no-build-isolation -e <path to a detectron2 checkout>` '
    '(or `pip install "git+https://github.com/facebookresearch/detectron2.git"`), then import '
    'plugins.detectron2 again. The rest of dynscale (backbones, plugins.mm) works without it.'
)


class Detectron2MissingError(ImportError):
    """detectron2 cannot be imported; the message names how to install it."""


from .._compat import export_detectron2_datasets  # noqa: E402

# detectron2 registers its builtin datasets under $DETECTRON2_DATASETS when detectron2.data is first imported:
# point it at the one datasets root ($DYNSCALE_DATASETS, default ../shared/datasets) unless the user set it
export_detectron2_datasets()

try:
    import detectron2  # noqa: F401
    from detectron2.modeling import BACKBONE_REGISTRY  # noqa: F401
except ImportError as e:  # ModuleNotFoundError, or a broken build (missing detectron2._C, wrong torch)
    raise Detectron2MissingError(
        f'plugins.detectron2 needs detectron2, which cannot be imported ({e}). ' + _INSTALL
    ) from e

from . import roi_heads as _roi_heads  # noqa: F401,E402  (registration: DynscaleRes5ROIHeads)
from .backbone import (  # noqa: E402
    DynscaleD2Backbone,
    build_dynscale_backbone,
    build_dynscale_fpn_backbone,
    build_elastic_backbone,
    build_elastic_fpn_backbone,
    build_rsnet_backbone,
    build_rsnet_fpn_backbone,
    build_sact_backbone,
    build_sact_fpn_backbone,
    build_slimmable_backbone,
    build_slimmable_fpn_backbone,
    convert_norm,
    find_dynscale_backbone,
    slice_fpn_laterals,
)
from .checkpointer import DynscaleCheckpointer  # noqa: E402
from .config import add_dynscale_config, get_dynscale_cfg, setup  # noqa: E402
from .evaluation import calibrate  # noqa: E402
from .policy import build_policy  # noqa: E402
from .rescale import rescale_batch  # noqa: E402
from .roi_heads import DynscaleRes5ROIHeads, SACTRes5Head  # noqa: E402
from .trainer import DynscaleSimpleTrainer, DynscaleTrainer  # noqa: E402

__all__ = [
    'add_dynscale_config',
    'get_dynscale_cfg',
    'setup',
    'DynscaleD2Backbone',
    'DynscaleTrainer',
    'DynscaleSimpleTrainer',
    'DynscaleCheckpointer',
    'DynscaleRes5ROIHeads',
    'SACTRes5Head',
    'build_policy',
    'build_dynscale_backbone',
    'build_dynscale_fpn_backbone',
    'build_elastic_backbone',
    'build_elastic_fpn_backbone',
    'build_slimmable_backbone',
    'build_slimmable_fpn_backbone',
    'build_sact_backbone',
    'build_sact_fpn_backbone',
    'build_rsnet_backbone',
    'build_rsnet_fpn_backbone',
    'calibrate',
    'convert_norm',
    'find_dynscale_backbone',
    'rescale_batch',
    'slice_fpn_laterals',
    'Detectron2MissingError',
]
