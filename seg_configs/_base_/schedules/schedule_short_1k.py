# Short schedule for the small real datasets in ../shared/datasets (VOC subset: 160 train / 64 val):
# 1000 iterations (50 epochs at batch 8), SGD momentum 0.9, lr 0.01, poly 0.9, weight decay 5e-4,
# validation every 250 iterations.  Our choice (no paper trains on a 160-image subset).
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=1000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000, val_interval=250)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    # pixel mean/std of the data_preprocessor must match the pretrained backbone weights (plugins.mm.hooks)
    input_normalization=dict(type='InputNormalizationHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=250, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
