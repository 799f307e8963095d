# Faster R-CNN + FPN with an Elastic-ResNeXt101 (32x4d) backbone (Wang et al., CVPR 2019), MMDet 1x.
_base_ = './faster-rcnn_elastic-x50-32x4d_fpn_1x_coco.py'
pretrained = 'checkpoints/resnext101_elastic_imagenet.pth'
model = dict(backbone=dict(arch='resnext101_elastic', init_cfg=dict(checkpoint=pretrained)))
