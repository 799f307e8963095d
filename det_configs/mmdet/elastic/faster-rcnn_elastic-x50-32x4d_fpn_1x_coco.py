# Faster R-CNN + FPN with an Elastic-ResNeXt50 (32x4d) backbone (Wang et al., CVPR 2019), MMDet 1x
# schedule on COCO 2017.  The backbone starts from the authors' ImageNet weights converted to a dynscale
# checkpoint (MODEL_ZOO.md); every key is checked (strict both ways).
_base_ = [
    '../_base_/models/faster-rcnn_fpn.py', '../_base_/datasets/coco_detection.py',
    '../_base_/schedules/schedule_1x.py', '../_base_/default_runtime.py'
]
# MODEL_ZOO.md row resnext50_elastic.elastic_in1k: convert the released file with the command given there
pretrained = 'checkpoints/resnext50_elastic_elastic_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ElasticBackbone',
        arch='resnext50_elastic',
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
