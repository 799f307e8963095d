# CPU demo of the main job: DeepLabV3 ResNeXt50+Elastic on the VOC subset (160 train / 64 val), 300
# iterations at batch 4 on 193x193 crops (images scaled to a 256-pixel long side, x0.5-1.5), validation on
# the 64 val images at a 256-pixel long side (about 3 s per iteration on one CPU core, ~15 min); to start
# from converted ImageNet weights (MODEL_ZOO.md) add --cfg-options model.backbone.init_cfg.type=Pretrained
# model.backbone.init_cfg.checkpoint=checkpoints/resnext50_elastic_elastic_in1k.pth
_base_ = './deeplabv3_elastic-resnext50-d16-mg124_1xb8-1k_voc12subset-321x321.py'
crop_size = (193, 193)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 256), ratio_range=(0.5, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=2, persistent_workers=True,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(num_workers=1, persistent_workers=True, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=300, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=300, val_interval=150)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=150, max_keep_ckpts=1),
    visualization=dict(type='SegVisualizationHook', draw=False))
env_cfg = dict(cudnn_benchmark=False)
model = dict(data_preprocessor=dict(size=(193, 193)))
