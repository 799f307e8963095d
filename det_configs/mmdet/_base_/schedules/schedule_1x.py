# MMDetection 1x schedule: 12 epochs, lr 0.02 for 16 images per step (8 GPUs x 2), steps at 8 and 11.
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001))

# `--auto-scale-lr` in tools/train_det_mm.py rescales lr linearly from this total batch size.
auto_scale_lr = dict(enable=False, base_batch_size=16)
