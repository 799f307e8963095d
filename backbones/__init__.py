"""dynscale backbones: framework-free PyTorch implementations of four dynamic-scale methods.

* Elastic (Wang et al., CVPR 2019): :mod:`backbones.elastic` (ResNeXt), :mod:`backbones.densenet` (DenseNet-201),
  :mod:`backbones.dla` (DLA-X60 / X102)
* US-Net / MutualNet slimmable networks (Yu & Huang 2019; Yang et al. 2020): :mod:`backbones.slimmable`
* SACT / ACT ResNet (Figurnov et al., CVPR 2017): :mod:`backbones.sact`
* RS-Net (Wang et al., ECCV 2020): :mod:`backbones.rsnet`

Build any of them with :func:`create` (``pretrained=PATH`` loads released or dynscale weights strictly, see
:mod:`backbones.pretrained`); list them with :func:`list_models`.  Only torch and torchvision
are needed to import this package.
"""
from . import densenet, dla, elastic, rsnet, sact, slimmable  # noqa: F401  (registration side effects)
from ._factory import create
from ._registry import list_models, model_family, register_model
from .base import DynamicBackbone, StageSpec
from .complexity import complexity, count_macs, count_params
from .pretrained import load_pretrained

__all__ = ['create', 'list_models', 'model_family', 'register_model', 'DynamicBackbone', 'StageSpec',
           'complexity', 'count_macs', 'count_params', 'load_pretrained']
