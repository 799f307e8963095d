# DeepLabV3 on a SACT pre-activation ResNet-50 (Figurnov et al. 2017), PASCAL VOC train_aug: the ponder
# cost tau * sum_stages mean(rho) is added to the loss (tau = 0.005, the authors' ImageNet release value) and
# logged; ponder-cost maps are saved at test time.  Schedule: the Elastic/DeepLabV3 VOC schedule.
# Pretrained: MODEL_ZOO.md row sact_resnet50.timm_a1h_in1k (timm resnetv2_50, the pre-activation ResNet SACT
# is fine-tuned from; the halting branches start at bias -3).
_base_ = ['./_base_/models/deeplabv3_elastic-resnext50-d16.py', './_base_/datasets/voc12_aug.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_elastic-voc_33k.py']
model = dict(
    # timm resnetv2_50.a1h_in1k expects RGB normalised with mean = std = 0.5 (its pretrained_cfg)
    data_preprocessor=dict(size=(513, 513), mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    type='SACTEncoderDecoder',
    tau=0.005,
    backbone=dict(_delete_=True, type='SACTResNet', arch='sact_resnet50', out_indices=(0, 1, 2, 3),
                  strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), multi_grid=(1, 2, 4),
                  norm_cfg=dict(type='SyncBN', requires_grad=True), norm_eval=False,
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/sact_resnet50_timm_a1h_in1k.pth')))
# writes <work_dir>/ponder_maps/*.npy|png at test time (tools/test_seg.py)
custom_hooks = [dict(type='PonderMapSaveHook')]
