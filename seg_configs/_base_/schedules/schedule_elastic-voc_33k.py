# Elastic paper Sec. 4.3 / reference segment.py: SGD momentum 0.9, base lr 0.007, poly (power 0.9) per
# iteration, weight decay 5e-4 (ResNeXt), batch 16 on one GPU, 50 epochs of VOC train_aug
# (10582 images / 16 = 661.4 iterations per epoch -> 33069 iterations).  Validation every 5 epochs.
optimizer = dict(type='SGD', lr=0.007, momentum=0.9, weight_decay=0.0005)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=33069, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=33069, val_interval=3307)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    # pixel mean/std of the data_preprocessor must match the pretrained backbone weights (plugins.mm.hooks)
    input_normalization=dict(type='InputNormalizationHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=3307, max_keep_ckpts=3, save_best='mIoU'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
