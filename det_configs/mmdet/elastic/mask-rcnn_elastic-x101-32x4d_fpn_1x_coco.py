# Mask R-CNN + FPN with an Elastic-ResNeXt101 (32x4d) backbone (Wang et al., CVPR 2019), MMDet 1x.
_base_ = './mask-rcnn_elastic-x50-32x4d_fpn_1x_coco.py'
# MODEL_ZOO.md row resnext101_elastic.elastic_in1k: convert the released file with the command given there
pretrained = 'checkpoints/resnext101_elastic_elastic_in1k.pth'
model = dict(backbone=dict(arch='resnext101_elastic', init_cfg=dict(checkpoint=pretrained)))
