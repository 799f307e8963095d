# Mask R-CNN + FPN with an SACT ResNet-101 backbone (the paper's COCO model); settings as in
# mask-rcnn_sact-r50_fpn_1x_coco.py.
_base_ = './mask-rcnn_sact-r50_fpn_1x_coco.py'
# MODEL_ZOO.md row sact_resnet101.timm_a1h_in1k: convert the released file with the command given there
pretrained = 'checkpoints/sact_resnet101_timm_a1h_in1k.pth'
model = dict(backbone=dict(arch='sact_resnet101', init_cfg=dict(checkpoint=pretrained)))
