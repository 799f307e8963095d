# Short schedule of the RS-Net ResNet-50 DeepLabV3 on the VOC subset, resolutions {321, 193, 97}.
_base_ = ['./_base_/models/deeplabv3_elastic-resnext50-d16.py', './_base_/datasets/voc12.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_short_1k.py']
model = dict(
    data_preprocessor=dict(size=(321, 321)),
    type='RSNetEncoderDecoder',
    kd='ens_topdown',
    backbone=dict(_delete_=True, type='RSNetBackbone', arch='rs_resnet50', resolutions=(321, 193, 97),
                  resolution_rule='nearest', out_indices=(0, 1, 2, 3), strides=(1, 2, 2, 1),
                  dilations=(1, 1, 1, 2), multi_grid=(1, 2, 4),
                  norm_cfg=dict(type='SyncBN', requires_grad=True), norm_eval=False, init_cfg=dict()),
    train_cfg=dict(bn_resolutions=(321, 193, 97)),
    test_cfg=dict(mode='whole', resolution=321, keep_ratio=True))
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
