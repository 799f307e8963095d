# Main-job smoke run: Mask R-CNN + FPN, Elastic-ResNeXt50, on the 80-image COCO subset
# (../shared/datasets/coco, or $DYNSCALE_DATASETS/coco) with small images (<= 320 x 256) and a 40-iteration
# schedule; evaluates bbox and segm AP with pycocotools (CocoMetric).  The backbone starts from its
# own (paper) initialisation, so the AP is a plumbing check, not a result; to fine-tune converted ImageNet
# weights (MODEL_ZOO.md) add --cfg-options model.backbone.init_cfg.type=Pretrained
# model.backbone.init_cfg.checkpoint=checkpoints/resnext50_elastic_elastic_in1k.pth
_base_ = [
    '../_base_/models/mask-rcnn_fpn.py', '../_base_/datasets/coco_instance_subset.py',
    '../_base_/schedules/schedule_short.py', '../_base_/default_runtime_short.py'
]
model = dict(
    backbone=dict(
        _delete_=True,
        type='ElasticBackbone',
        arch='resnext50_elastic',
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,  # nothing pretrained to keep: train every stage
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=dict()),
    neck=dict(in_channels=[256, 512, 1024, 2048]),
    # a light RoI stage for CPU (the 1x setting samples 512 RoIs from 1000 proposals), and a low score
    # threshold so that a barely trained model still yields detections for the COCO evaluation
    train_cfg=dict(rpn_proposal=dict(max_per_img=300), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(max_per_img=300), rcnn=dict(score_thr=0.001)))
