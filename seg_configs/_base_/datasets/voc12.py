# PASCAL VOC 2012 segmentation, standard layout (VOCdevkit/VOC2012: JPEGImages, SegmentationClass,
# ImageSets/Segmentation/{train,val}.txt).  data_root defaults to ../shared/datasets beside the repository
# (found from this file's location), or $DYNSCALE_DATASETS; tools/train_seg.py --data-root overrides it.
# Augmentation (Elastic paper Sec. 4.3 / DeepLabV3): random scale 0.5-2 (of a 512-pixel long side), crop,
# horizontal flip; padding with 0 (image) / 255 (label) is done by the data preprocessor.  Whole-image test.
datasets_root = '{{$DYNSCALE_DATASETS:{{ fileDirname }}/../../../../shared/datasets}}'
dataset_type = 'VOCSegDataset'
data_root = datasets_root + '/VOCdevkit/VOC2012'
crop_size = (513, 513)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(512, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
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
    batch_size=16,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
                 ann_file='ImageSets/Segmentation/train.txt', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
                 ann_file='ImageSets/Segmentation/val.txt', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
