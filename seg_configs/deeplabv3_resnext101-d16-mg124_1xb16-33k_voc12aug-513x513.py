# DeepLabV3 ResNeXt101 (32x4d) baseline, PASCAL VOC 2012 train_aug -> val, the Elastic paper's full
# schedule (Sec. 4.3, Table 5): OS 16, MG (1, 2, 4), ASPP (6, 12, 18) + image pooling, crop 513,
# batch 16, 50 epochs.
# Pretrained: MODEL_ZOO.md row resnext101_32x4d.elastic_in1k (convert the released file with the command given there).
_base_ = ['./_base_/models/deeplabv3_elastic-resnext50-d16.py', './_base_/datasets/voc12_aug.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_elastic-voc_33k.py']
# Reference BN momenta (official_implementations.md Sec. 1.7): backbone 0.05, ASPP 0.0003.
model = dict(
    data_preprocessor=dict(size=(513, 513)),
    backbone=dict(arch='resnext101_32x4d', norm_cfg=dict(type='SyncBN', requires_grad=True, momentum=0.05),
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnext101_32x4d_elastic_in1k.pth')),
    decode_head=dict(norm_cfg=dict(type='SyncBN', requires_grad=True, momentum=0.0003)))
