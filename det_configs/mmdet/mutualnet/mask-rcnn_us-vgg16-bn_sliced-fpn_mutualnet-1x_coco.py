# Mask R-CNN + FPN with a universally slimmable VGG-16-BN trained with MutualNet's width-resolution
# mutual learning (Yang et al., ECCV 2020, Sec. 4.3 and App. A.2; the paper's COCO experiment is
# Mask R-CNN-FPN with this backbone in MMDetection):
# * each step follows the sandwich rule over widths [0.25, 1]: the full width at 1000 x 600, the
#   smallest width and 2 random widths, each at a shorter side drawn from {600, 480, 360, 240}
#   (longer side <= 1000); every sub-network is trained with the ground truth (no inplace
#   distillation), the FPN neck and the heads are shared (SlicedFPN slices its lateral inputs);
# * before each evaluation the BN statistics of the evaluated (width, scale) are re-estimated
#   (post-statistics BN); evaluate another sub-network with
#   tools/test_det_mm.py <config> <checkpoint> --width 0.5 --scale 480
# Backbone: torchvision's ImageNet VGG-16-BN at width 1.0 (MODEL_ZOO.md row us_vgg16_bn.tv_in1k; MutualNet
# released no VGG): its BN statistics exist for width 1.0 only, the other widths train with batch statistics
# and are calibrated before evaluation.  A slimmable checkpoint defines the BN configurations the model keeps.
# The slimmable BN trains at every width (batch statistics), so no stage is frozen and norm_eval is
# False: a frozen (eval-mode) BN at a width without private statistics cannot normalise.
_base_ = [
    '../_base_/models/mask-rcnn_fpn.py', '../_base_/datasets/coco_instance_1000x600.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime.py'
]
# MODEL_ZOO.md row us_vgg16_bn.tv_in1k: convert the released file with the command given there
pretrained = 'checkpoints/us_vgg16_bn_tv_in1k.pth'
model = dict(
    type='SlimmableTwoStageDetector',
    sandwich=dict(num_subnets=4, input_sizes=(600, 480, 360, 240)),
    max_size=1000,
    test_width=None,  # None = the full width
    test_resolution=None,  # None = the test pipeline's scale (600)
    backbone=dict(
        _delete_=True,
        type='SlimmableNet',
        arch='us_vgg16_bn',
        width_range=(0.25, 1.0),
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    # channels of the four VGG stages at the full width; narrower widths use the first channels
    neck=dict(type='SlicedFPN', in_channels=[128, 256, 512, 512]))
custom_hooks = [dict(type='BNCalibrationHook', num_batches=50)]
