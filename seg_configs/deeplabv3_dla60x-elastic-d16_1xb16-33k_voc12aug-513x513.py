# DeepLabV3 DLA-X60+Elastic (Wang et al., CVPR 2019), PASCAL VOC 2012 train_aug -> val, the Elastic paper's
# segmentation schedule (Sec. 4.3): OS 16, ASPP (6, 12, 18) + image pooling, crop 513, batch 16 (everything but
# the backbone from the DenseNet-201+Elastic config).
# DLA levels -> the four stages (backbones/dla.py): stages 1-4 = levels 2-5 (strides 4, 8, 16, 32; 128, 256, 512,
# 1024 channels); output stride 16 removes the stride of level 5 and dilates it by 2.  The projections the
# reference computes but never uses are not built (backbones/dla.py, "Unused projections").
# Pretrained: MODEL_ZOO.md row dla60x_elastic.elastic_in1k (convert the released file with the command there).
_base_ = './deeplabv3_densenet201-elastic-d16_1xb16-33k_voc12aug-513x513.py'
model = dict(
    backbone=dict(arch='dla60x_elastic',
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/dla60x_elastic_elastic_in1k.pth')),
    decode_head=dict(in_channels=1024))
