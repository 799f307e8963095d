# MutualNet smoke run: Mask R-CNN + FPN with the slimmable MobileNet v2 on the 80-image COCO subset
# with small images; sandwich rule over widths [0.35, 1] and shorter sides 256 x {1, 0.8, 0.6, 0.4}
# (the paper's 600/480/360/240 ratios), 40 iterations, evaluation at the full width after BN
# calibration.  Backbone from its own initialisation (plumbing check, not a result).
_base_ = [
    '../_base_/models/mask-rcnn_fpn.py', '../_base_/datasets/coco_instance_subset.py',
    '../_base_/schedules/schedule_short.py', '../_base_/default_runtime_short.py'
]
model = dict(
    type='SlimmableTwoStageDetector',
    sandwich=dict(num_subnets=4, input_sizes=(256, 208, 152, 104)),
    max_size=320,
    backbone=dict(
        _delete_=True,
        type='SlimmableNet',
        arch='us_mobilenet_v2',
        width_range=(0.35, 1.0),
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=dict()),
    neck=dict(type='SlicedFPN', in_channels=[24, 32, 96, 320]),
    # a light RoI stage for CPU (the 1x setting samples 512 RoIs from 1000 proposals), and a low score
    # threshold so that a barely trained model still yields detections for the COCO evaluation
    train_cfg=dict(rpn_proposal=dict(max_per_img=300), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(max_per_img=300), rcnn=dict(score_thr=0.001)))
custom_hooks = [dict(type='BNCalibrationHook', num_batches=10)]
