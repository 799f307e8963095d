# DeepLabV3 on an RS-Net ResNet-50, PASCAL VOC train_aug: every batch trained at {513, 321, 129} (the RS-Net
# segmentation recipe's ratios 1 : 0.64 : 0.27 at the VOC crop) with private BNs and the MRED loss; tested at
# test_cfg.resolution (shorter side, with that resolution's BN).  Schedule: the Elastic/DeepLabV3 VOC one.
# Pretrained: MODEL_ZOO.md row rs_resnet50.rsnet_in1k (yikaiw/RS-Nets parallel_resnet50): its private BNs of
# 224 / 160 / 96 start the BNs of 513 / 321 / 129, and its inputs are unnormalised RGB in [0, 1] (mean 0, std 255).
_base_ = ['./_base_/models/deeplabv3_elastic-resnext50-d16.py', './_base_/datasets/voc12_aug.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_elastic-voc_33k.py']
model = dict(
    data_preprocessor=dict(size=(513, 513), mean=[0.0, 0.0, 0.0], std=[255.0, 255.0, 255.0]),
    type='RSNetEncoderDecoder',
    kd='ens_topdown',
    backbone=dict(_delete_=True, type='RSNetBackbone', arch='rs_resnet50', resolutions=(513, 321, 129),
                  resolution_rule='nearest', out_indices=(0, 1, 2, 3), strides=(1, 2, 2, 1),
                  dilations=(1, 1, 1, 2), multi_grid=(1, 2, 4),
                  norm_cfg=dict(type='SyncBN', requires_grad=True), norm_eval=False,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/rs_resnet50_rsnet_in1k.pth',
                                private_bn_map=[224, 160, 96])),
    train_cfg=dict(bn_resolutions=(513, 321, 129)),
    test_cfg=dict(mode='whole', resolution=513, keep_ratio=True))
