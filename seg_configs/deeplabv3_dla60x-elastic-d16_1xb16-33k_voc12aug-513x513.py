# DeepLabV3 DLA-X60+Elastic (Wang et al., CVPR 2019), PASCAL VOC 2012 train_aug -> val, the Elastic paper's
# segmentation schedule (Sec. 4.3): OS 16, ASPP (6, 12, 18) + image pooling, crop 513, batch 16.
# DLA levels -> the four stages (backbones/dla.py): stages 1-4 = levels 2-5 (strides 4, 8, 16, 32; 128, 256, 512,
# 1024 channels); output stride 16 removes the stride of level 5 and dilates it by 2.  The projections the
# reference computes but never uses are not built (backbones/dla.py, "Unused projections").
# Pretrained: MODEL_ZOO.md row dla60x_elastic.elastic_in1k (convert the released file with the command there).
_base_ = ['./_base_/models/deeplabv3_elastic-resnext50-d16.py', './_base_/datasets/voc12_aug.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_elastic-voc_33k.py']
model = dict(
    data_preprocessor=dict(size=(513, 513)),
    backbone=dict(
        _delete_=True,
        type='ElasticBackbone',
        arch='dla60x_elastic',
        out_indices=(0, 1, 2, 3),
        output_stride=16,
        frozen_stages=-1,
        norm_cfg=dict(type='SyncBN', requires_grad=True, momentum=0.05),
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dla60x_elastic_elastic_in1k.pth')),
    decode_head=dict(in_channels=1024, norm_cfg=dict(type='SyncBN', requires_grad=True, momentum=0.0003)))
