# DeepLabV3 DenseNet-201+Elastic (Wang et al., CVPR 2019), PASCAL VOC 2012 train_aug -> val, the Elastic paper's
# segmentation schedule (Sec. 4.3): OS 16, ASPP (6, 12, 18) + image pooling, crop 513, batch 16.
# Dense blocks -> the four stages (backbones/densenet.py): stage 1 = dense block 1 (stride 4, 384 channels);
# stage 2 = transition 1 + dense block 2 (stride 8, 832); stage 3 = transition 2 + dense block 3 (stride 16, 1696);
# stage 4 = transition 3 + dense block 4 + final norm/ReLU (1808 channels).  Output stride 16 drops the average
# pooling of transition 3 and dilates dense block 4 by 2 (no multi-grid: a dense block has no per-unit grid).
# Pretrained: MODEL_ZOO.md row densenet201_elastic.elastic_in1k (convert the released file with the command there).
_base_ = ['./_base_/models/deeplabv3_elastic-resnext50-d16.py', './_base_/datasets/voc12_aug.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_elastic-voc_33k.py']
model = dict(
    data_preprocessor=dict(size=(513, 513)),
    backbone=dict(
        _delete_=True,
        type='ElasticBackbone',
        arch='densenet201_elastic',
        out_indices=(0, 1, 2, 3),
        output_stride=16,
        frozen_stages=-1,
        norm_cfg=dict(type='SyncBN', requires_grad=True, momentum=0.05),
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/densenet201_elastic_elastic_in1k.pth')),
    decode_head=dict(in_channels=1808, norm_cfg=dict(type='SyncBN', requires_grad=True, momentum=0.0003)))
