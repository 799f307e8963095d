# Mask R-CNN + FPN with an RS-Net ResNet-50 backbone (resolution switchable networks, Wang et al.,
# ECCV 2020): shared convolutions and one private BN per training scale.  The RS-Net paper has no
# detection experiment; this carries its multi-resolution training over to detection:
# * five scales, shorter side {800, 600, 480, 360, 240} (longer side <= 1333), one private BN each
#   (in the order of the ImageNet model's 224/192/160/128/96 BNs);
# * every step runs the same batch at all five scales, each with its private BN, and trains each
#   with the ground truth (the MRED distillation of the paper is defined for classification logits
#   and is not used); the FPN neck and the heads are shared;
# * testing at one scale uses that scale's BN:
#   tools/test_det_mm.py <config> <checkpoint> --scale 480
#   (without --scale: the pipeline's 800 and the BN of the nearest trained scale).
_base_ = [
    '../_base_/models/mask-rcnn_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime.py'
]
# MODEL_ZOO.md row rs_resnet50.rsnet_in1k: convert the released file with the command given there
pretrained = 'checkpoints/rs_resnet50_rsnet_in1k.pth'
# the released RS-Nets weights expect unnormalised RGB in [0, 1] (mean 0, std 255), checked by
# InputNormalizationHook
model = dict(
    data_preprocessor=dict(mean=[0.0, 0.0, 0.0], std=[255.0, 255.0, 255.0], bgr_to_rgb=True),
    type='RSNetTwoStageDetector',
    bn_resolutions=None,  # None = all of the backbone's resolutions
    max_size=1333,
    test_resolution=None,
    backbone=dict(
        _delete_=True,
        type='RSNetBackbone',
        arch='rs_resnet50',
        resolutions=(800, 600, 480, 360, 240),
        resolution_rule='nearest',
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
