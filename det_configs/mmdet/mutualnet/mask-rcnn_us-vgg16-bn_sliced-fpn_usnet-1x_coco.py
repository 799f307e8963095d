# US-Net baseline of MutualNet's COCO comparison (Yang et al. 2020, Sec. 4.3): the same slimmable
# VGG-16-BN Mask R-CNN + FPN trained with the sandwich rule over widths only, every sub-network at
# 1000 x 600.
_base_ = './mask-rcnn_us-vgg16-bn_sliced-fpn_mutualnet-1x_coco.py'
# MODEL_ZOO.md row us_vgg16_bn.tv_in1k: convert the released file with the command given there
pretrained = 'checkpoints/us_vgg16_bn_tv_in1k.pth'
model = dict(
    sandwich=dict(input_sizes=None),
    backbone=dict(init_cfg=dict(checkpoint=pretrained)))
