# SACT smoke run: Faster R-CNN + FPN with the SACT paper's detection settings (see
# faster-rcnn_sact-r50_fpn_1x_coco.py) and an SACT ResNet-50 on the 80-image COCO subset with small
# images, 40 iterations.  The backbone starts from its own initialisation, so BN is trained here.
_base_ = [
    '../_base_/models/faster-rcnn_fpn.py', '../_base_/datasets/coco_detection_subset.py',
    '../_base_/schedules/schedule_short.py', '../_base_/default_runtime_short.py'
]
model = dict(
    type='SACTTwoStageDetector',
    tau=0.005,
    backbone=dict(
        _delete_=True,
        type='SACTResNet',
        arch='sact_resnet50',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=dict()),
    neck=dict(in_channels=[256, 512, 1024, 2048], start_level=1, num_outs=4),
    rpn_head=dict(
        anchor_generator=dict(scales=[8], ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64])),
    roi_head=dict(
        bbox_roi_extractor=dict(
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=4), featmap_strides=[8, 16, 32])),
    # RoI sampling lighter than the 1x setting for CPU; low score threshold so that a barely trained
    # model still yields detections for the COCO evaluation
    train_cfg=dict(rpn_proposal=dict(nms_pre=2000, max_per_img=300), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(score_thr=0.001, nms=dict(type='nms', iou_threshold=0.6))))
