# DeepLabV3 on a universally slimmable MobileNet v2 (US-Nets / MutualNet), PASCAL VOC train_aug: sandwich
# rule with 4 sub-networks per step (max width at the full crop = teacher, min width, 2 random widths in
# [0.35, 1]); each student at a crop side drawn from {513, 417, 321, 209} (~1, 0.8, 0.6, 0.4 of the crop,
# the MutualNet detection scale ratios) and trained by inplace distillation.  One DeepLabV3 head serves
# every width (input-sliced ASPP convs).  Evaluate any (width, resolution) by setting test_cfg; the hook
# calibrates BN for it first.  Schedule: the Elastic/DeepLabV3 VOC schedule (no paper gives one).
# Pretrained: MODEL_ZOO.md row us_mobilenet_v2.mutualnet_in1k (MutualNet MobileNet v2, statistics for widths
# 0.7 / 0.9 / 1.0; the other widths train with batch statistics and are calibrated before evaluation).
# The release was trained on widths 0.7-1.0 (MutualNet MBv2 recipe); this config trains 0.35-1.0, so widths below 0.7
# start from weights never trained at them (the load report says so in the log at start).
_base_ = ['./_base_/models/deeplabv3_elastic-resnext50-d16.py', './_base_/datasets/voc12_aug.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_elastic-voc_33k.py']
model = dict(
    data_preprocessor=dict(size=(513, 513)),
    type='SlimmableEncoderDecoder',
    num_subnets=4,
    distill='inplace',
    student_gt_weight=0.0,
    backbone=dict(_delete_=True, type='SlimmableNet', arch='us_mobilenet_v2', width_range=(0.35, 1.0),
                  out_indices=(0, 1, 2, 3), output_stride=16, norm_cfg=dict(type='BN', requires_grad=True),
                  norm_eval=False,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/us_mobilenet_v2_mutualnet_in1k.pth')),
    decode_head=dict(in_channels=320, input_sliced=True),
    train_cfg=dict(input_sizes=(513, 417, 321, 209), max_input_size=513),
    test_cfg=dict(mode='whole', width=1.0, resolution=None))
# post-statistics BN for test_cfg's (width, resolution) before every evaluation
custom_hooks = [dict(type='BNCalibrationHook', num_batches=20)]
