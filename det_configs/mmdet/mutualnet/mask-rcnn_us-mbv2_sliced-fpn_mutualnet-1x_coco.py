# Mask R-CNN + FPN with a universally slimmable MobileNet v2 (width [0.35, 1]) trained with
# MutualNet's sandwich rule over widths and scales 1000 x {600, 480, 360, 240}; see
# mask-rcnn_us-vgg16-bn_sliced-fpn_mutualnet-1x_coco.py for the method.
_base_ = './mask-rcnn_us-vgg16-bn_sliced-fpn_mutualnet-1x_coco.py'
# MODEL_ZOO.md row us_mobilenet_v2.mutualnet_in1k: convert the released file with the command given there
# The release was trained on widths 0.7-1.0 (MutualNet MBv2 recipe); this config trains 0.35-1.0, so widths below 0.7
# start from weights never trained at them (the load report says so in the log at start).
pretrained = 'checkpoints/us_mobilenet_v2_mutualnet_in1k.pth'
model = dict(
    backbone=dict(
        arch='us_mobilenet_v2',
        width_range=(0.35, 1.0),
        init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[24, 32, 96, 320]))
