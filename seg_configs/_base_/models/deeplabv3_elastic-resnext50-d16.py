# DeepLabV3 (Chen et al. 2017) as in the Elastic paper's PASCAL VOC experiments (Sec. 4.3): output stride 16,
# multi-grid (1, 2, 4) in the last stage, ASPP with rates (6, 12, 18) + 1x1 + image pooling (256 channels
# each, BN + ReLU), concatenation projected by a 1x1 conv (256), 1x1 classifier, bilinear upsampling with
# align_corners=True; no auxiliary head.  Backbone: ResNeXt50+Elastic from backbones/elastic.py through the
# plugins/mm adapter (swap `arch` for resnext50_32x4d / resnext101_32x4d / resnext101_elastic).
# Pretrained backbone: backbone.init_cfg=dict(type='Pretrained', checkpoint='<dynscale backbone .pth>').
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],  # RGB, torchvision/ImageNet convention of every dynscale backbone
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='ElasticBackbone',
        arch='resnext50_elastic',
        out_indices=(0, 1, 2, 3),
        strides=(1, 2, 2, 1),
        dilations=(1, 1, 1, 2),
        multi_grid=(1, 2, 4),
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        with_cp=False,
        init_cfg=dict()),  # paper initialisation; a config adds type='Pretrained', checkpoint=...
    decode_head=dict(
        type='DeepLabV3Head',
        in_channels=2048,
        in_index=3,
        channels=256,
        dilations=(1, 6, 12, 18),
        bottleneck_kernel_size=1,
        dropout_ratio=0.0,
        num_classes=21,
        norm_cfg=norm_cfg,
        align_corners=True,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
