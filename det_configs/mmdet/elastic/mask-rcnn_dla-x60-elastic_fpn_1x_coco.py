# Mask R-CNN + FPN with a DLA-X60+Elastic backbone (Wang et al., CVPR 2019; DLA: Yu et al., CVPR 2018), MMDet 1x
# schedule on COCO 2017.  Stages 1-4 = DLA levels 2-5 (strides 4-32; 128, 256, 512, 1024 channels,
# backbones/dla.py).  Only the projections the network uses are built: the reference's Tree computes a projection
# at every depth > 1 node and discards it (documented in backbones/dla.py and the complexity table); the converter
# drops those keys, so the detection backbone holds no dead convolution.
_base_ = './mask-rcnn_elastic-x50-32x4d_fpn_1x_coco.py'
# MODEL_ZOO.md row dla60x_elastic.elastic_in1k: convert the released file with the command given there
pretrained = 'checkpoints/dla60x_elastic_elastic_in1k.pth'
model = dict(
    backbone=dict(arch='dla60x_elastic', init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
