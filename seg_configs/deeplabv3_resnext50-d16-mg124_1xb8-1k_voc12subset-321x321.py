# DeepLabV3 ResNeXt50 (32x4d) baseline, short schedule on the VOC subset of ../shared/datasets
# (160 train / 64 val):
# 1000 iterations at batch 8, crop 321 (the main-job configuration; see README).
_base_ = ['./_base_/models/deeplabv3_elastic-resnext50-d16.py', './_base_/datasets/voc12.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_short_1k.py']
model = dict(data_preprocessor=dict(size=(321, 321)), backbone=dict(arch='resnext50_32x4d'))
crop_size = (321, 321)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(400, 400), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=8, dataset=dict(pipeline=train_pipeline))
