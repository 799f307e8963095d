# NYUDv2, 40 classes (Gupta et al. 2013 labels), RGB only: 795 train / 654 test images, as in RefineNet and
# the RS-Nets segmentation extension (supplementary Sec. 3).  Layout (plugins/mm/datasets/seg.py NYU_LAYOUT):
# <data_root>/images/{train,test}/<id>.png and <data_root>/labels40/{train,test}/<id>.png (0 = unlabelled,
# ignored through reduce_zero_label).  data_root defaults to ../shared/datasets/nyudv2 beside the repository
# (or $DYNSCALE_DATASETS/nyudv2); tools/train_seg.py --data-root overrides it.
# Train: random scale 0.5-2 of a 480-pixel short side, 352x352 crop (the largest RS-Net input), flip.
# Test: whole 640x480 image (RS-Net tests resize it to test_cfg.resolution).
datasets_root = '{{$DYNSCALE_DATASETS:{{ fileDirname }}/../../../../shared/datasets}}'
dataset_type = 'NYUDv2Dataset'
data_root = datasets_root + '/nyudv2'
crop_size = (352, 352)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(640, 480), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, layout='split',
                 data_prefix=dict(img_path='images/train', seg_map_path='labels40/train'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, layout='split',
                 data_prefix=dict(img_path='images/test', seg_map_path='labels40/test'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
