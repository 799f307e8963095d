# Faster R-CNN + FPN with an SACT ResNet-50 backbone (spatially adaptive computation time, Figurnov et
# al., CVPR 2017).  The ponder cost tau * sum_stages mean(rho) is added to the detector losses
# (loss_ponder) and the un-weighted sum is logged (ponder_cost).  Settings of the paper's COCO
# Faster R-CNN (supplementary A.2), mapped onto FPN:
# * anchors of sizes {64, 128, 256, 512} x aspect ratios {0.5, 1, 2}: one size per pyramid level
#   (FPN from C3: P3-P6 at strides 8-64, anchor scale 8), i.e. every size of the paper;
# * 300 proposals per image (training and testing), NMS of the detections at IoU 0.6 (the RPN
#   keeps MMDet's 0.7);
# * RoI features sampled on a 28 x 28 grid and pooled to 7 x 7 (RoIAlign 7 x 7, 4 x 4 samples per
#   bin), the counterpart of crop_and_resize 28 x 28 + pooling;
# * images resized so the shorter side is 600 (longer <= 1000), random horizontal flips;
# * batch-normalisation parameters fixed to their ImageNet values (norm_eval, requires_grad=False);
#   no atrous convolution.
# tau: 0.005 (the authors' ImageNet release); change with --cfg-options model.tau=0.001.
# The paper's optimiser (asynchronous SGD, batch 1, lr 3e-4, 1.2M steps) is replaced by MMDet's 1x.
_base_ = [
    '../_base_/models/faster-rcnn_fpn.py', '../_base_/datasets/coco_detection_1000x600.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime.py'
]
# MODEL_ZOO.md row sact_resnet50.timm_a1h_in1k: convert the released file with the command given there
pretrained = 'checkpoints/sact_resnet50_timm_a1h_in1k.pth'
model = dict(
    type='SACTTwoStageDetector',
    tau=0.005,
    # timm resnetv2 *.a1h_in1k expects RGB normalised with mean = std = 0.5 (its pretrained_cfg; the converted file
    # carries it and InputNormalizationHook refuses another)
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    backbone=dict(
        _delete_=True,
        type='SACTResNet',
        arch='sact_resnet50',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[256, 512, 1024, 2048], start_level=1, num_outs=4),
    rpn_head=dict(
        anchor_generator=dict(scales=[8], ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64])),
    roi_head=dict(
        bbox_roi_extractor=dict(
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=4), featmap_strides=[8, 16, 32]),
    ),
    train_cfg=dict(rpn_proposal=dict(nms_pre=2000, max_per_img=300)),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(nms=dict(type='nms', iou_threshold=0.6))))
