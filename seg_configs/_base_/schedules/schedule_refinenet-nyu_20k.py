# RefineNet / RS-Net on NYUDv2 (795 train images): 20k iterations at batch 8 (~200 epochs), SGD momentum 0.9,
# lr 0.01, poly 0.9, weight decay 5e-4.  The RS-Nets supplementary (Sec. 3) only says its I-Nets and RS-Net
# share "the same data pre-processing methods and training settings"; these numbers are our choice.
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=20000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=20000, val_interval=2000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    # pixel mean/std of the data_preprocessor must match the pretrained backbone weights (plugins.mm.hooks)
    input_normalization=dict(type='InputNormalizationHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2000, max_keep_ckpts=3, save_best='mIoU'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
