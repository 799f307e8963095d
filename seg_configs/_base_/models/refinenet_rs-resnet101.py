# RefineNet-4-cascaded (Lin et al. 2017) on an RS-Net ResNet-101 (Wang et al. 2020, supplementary Sec. 3):
# backbone features at strides 4, 8, 16, 32 (output stride 32), path widths 512 (RefineNet-4) / 256, no
# normalisation in the head (the paper's RCUs have no BN).  The segmentor trains on the same batch at
# S = {352, 224, 96} with private BNs and the MRED loss (plugins.mm.segmentors.RSNetEncoderDecoder);
# test_cfg.resolution picks the resolution (and its BN) used at test time.
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='RSNetEncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='RSNetBackbone',
        arch='rs_resnet101',
        resolutions=(352, 224, 96),
        resolution_rule='nearest',
        out_indices=(0, 1, 2, 3),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        init_cfg=dict()),  # paper initialisation; a config adds type='Pretrained', checkpoint=...
    decode_head=dict(
        type='RefineNetHead',
        in_channels=[256, 512, 1024, 2048],
        in_index=[0, 1, 2, 3],
        channels=256,
        top_channels=512,
        num_rcu=2,
        crp_blocks=2,
        num_final_rcu=2,
        dropout_ratio=0.0,
        num_classes=40,
        norm_cfg=None,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(bn_resolutions=(352, 224, 96)),
    test_cfg=dict(mode='whole', resolution=352, keep_ratio=False))
