# Short schedule of the slimmable MobileNet v2 DeepLabV3 on the VOC subset (crop 321; students at
# {321, 257, 193, 129}).
_base_ = ['./_base_/models/deeplabv3_elastic-resnext50-d16.py', './_base_/datasets/voc12.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_short_1k.py']
model = dict(
    data_preprocessor=dict(size=(321, 321)),
    type='SlimmableEncoderDecoder',
    num_subnets=4,
    distill='inplace',
    student_gt_weight=0.0,
    backbone=dict(_delete_=True, type='SlimmableNet', arch='us_mobilenet_v2', width_range=(0.35, 1.0),
                  out_indices=(0, 1, 2, 3), output_stride=16, norm_cfg=dict(type='BN', requires_grad=True),
                  norm_eval=False, init_cfg=dict()),
    decode_head=dict(in_channels=320, input_sliced=True),
    train_cfg=dict(input_sizes=(321, 257, 193, 129), max_input_size=321),
    test_cfg=dict(mode='whole', width=1.0, resolution=None))
# post-statistics BN for test_cfg's (width, resolution) before every evaluation
custom_hooks = [dict(type='BNCalibrationHook', num_batches=5)]
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
