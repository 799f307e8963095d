# Short schedule of the SACT ResNet-50 DeepLabV3 on the VOC subset.
_base_ = ['./_base_/models/deeplabv3_elastic-resnext50-d16.py', './_base_/datasets/voc12.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_short_1k.py']
model = dict(
    data_preprocessor=dict(size=(321, 321)),
    type='SACTEncoderDecoder',
    tau=0.005,
    backbone=dict(_delete_=True, type='SACTResNet', arch='sact_resnet50', out_indices=(0, 1, 2, 3),
                  strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), multi_grid=(1, 2, 4),
                  norm_cfg=dict(type='SyncBN', requires_grad=True), norm_eval=False, init_cfg=dict()))
# writes <work_dir>/ponder_maps/*.npy|png at test time (tools/test_seg.py)
custom_hooks = [dict(type='PonderMapSaveHook')]
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
