# Mask R-CNN with FPN (He et al. 2017; Lin et al. 2017): MMDetection 3.3's own base model
# (mmdet::_base_/models/mask-rcnn_r50_fpn.py), with its ResNet-50 replaced by a dynscale backbone adapter
# (plugins/mm/backbones.py); leaf configs replace the backbone again with _delete_=True.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
model = dict(
    # MMDet conventions for an ImageNet-pretrained backbone: stem + stage 1 frozen, BN statistics frozen.
    backbone=dict(
        _delete_=True,
        type='ElasticBackbone',
        arch='resnext50_elastic',
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict()))  # paper initialisation; a config adds type='Pretrained', checkpoint=...
