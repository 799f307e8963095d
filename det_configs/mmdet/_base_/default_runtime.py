# Runtime shared by every dynscale MMDetection config: MMDetection 3.x's own default runtime
# (mmdet::_base_/default_runtime.py: hooks, env, visualizer, log processor) plus `custom_imports`, which
# registers the dynscale backbones, detectors, neck, hooks and dataset (plugins/mm); without it MMDet reports
# "X is not in the mmdet::model registry".
_base_ = 'mmdet::_base_/default_runtime.py'
custom_imports = dict(imports=['plugins.mm'], allow_failed_imports=False)
# the data_preprocessor's pixel mean/std must match the pretrained backbone weights (plugins.mm.hooks)
default_hooks = dict(input_normalization=dict(type='InputNormalizationHook'))
