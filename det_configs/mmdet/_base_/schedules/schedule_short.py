# Short iteration-based schedule for the 80-image COCO subset (a CPU smoke run / demo, not a
# benchmark): 40 iterations of 2 images, linear warm-up, gradient clipping (the backbones start from
# their own initialisation unless a pretrained checkpoint is given), validation once at the end.
max_iters = 40
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
]

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001),
    clip_grad=dict(max_norm=10, norm_type=2))

auto_scale_lr = dict(enable=False, base_batch_size=2)
