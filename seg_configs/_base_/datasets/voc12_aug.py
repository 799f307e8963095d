# PASCAL VOC 2012 "train_aug" (10582 images: VOC train + the SBD annotations converted to
# SegmentationClassAug, as in MMSegmentation's pascal_voc12_aug), the training set of the Elastic paper's
# segmentation experiments (Sec. 4.3).  Validation: VOC 2012 val (1449 images).
_base_ = './voc12.py'
train_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='ConcatDataset',
        datasets=[
            dict(type={{_base_.dataset_type}}, data_root={{_base_.data_root}},
                 data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
                 ann_file='ImageSets/Segmentation/train.txt', pipeline={{_base_.train_pipeline}}),
            dict(type={{_base_.dataset_type}}, data_root={{_base_.data_root}},
                 data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassAug'),
                 ann_file='ImageSets/Segmentation/aug.txt', pipeline={{_base_.train_pipeline}}),
        ]))
