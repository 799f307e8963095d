# Runtime shared by every dynscale segmentation config: MMSegmentation 1.x's own default runtime
# (mmseg::_base_/default_runtime.py: env, visualizer, log processor) plus `custom_imports`, which registers
# the dynscale backbones, heads, segmentors, datasets and hooks (plugins/mm).
_base_ = 'mmseg::_base_/default_runtime.py'
custom_imports = dict(imports=['plugins.mm'], allow_failed_imports=False)
