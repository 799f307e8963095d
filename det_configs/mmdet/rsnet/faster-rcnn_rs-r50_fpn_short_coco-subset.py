# RS-Net smoke run: Faster R-CNN + FPN with RS-Net ResNet-50 on the 80-image COCO subset with small
# images: every step trains shorter sides {256, 192, 128} (private BN each), 40 iterations; the
# backbone starts from its own initialisation, so BN is trained.
_base_ = [
    '../_base_/models/faster-rcnn_fpn.py', '../_base_/datasets/coco_detection_subset.py',
    '../_base_/schedules/schedule_short.py', '../_base_/default_runtime_short.py'
]
model = dict(
    type='RSNetTwoStageDetector',
    max_size=320,
    backbone=dict(
        _delete_=True,
        type='RSNetBackbone',
        arch='rs_resnet50',
        resolutions=(256, 192, 128),
        resolution_rule='nearest',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=dict()),
    neck=dict(in_channels=[256, 512, 1024, 2048]),
    # a light RoI stage for CPU (the 1x setting samples 512 RoIs from 1000 proposals), and a low score
    # threshold so that a barely trained model still yields detections for the COCO evaluation
    train_cfg=dict(rpn_proposal=dict(max_per_img=300), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(max_per_img=300), rcnn=dict(score_thr=0.001)))
