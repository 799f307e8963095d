# COCO 2017 detection at scale 1000 x 600 (shorter side 600, longer side at most 1000): the MutualNet
# (Yang et al. 2020, Sec. 4.3), US-Net and SACT (Figurnov et al. 2017, supp. A.2: shorter side 600)
# detection setting.  Multi-scale training is done by the detector (it rescales the batch to its
# sub-networks' scales), so the pipeline only resizes to the largest scale.
_base_ = './coco_detection.py'
img_scale = (1000, 600)
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
