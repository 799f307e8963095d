# RefineNet-4-cascaded on a plain ResNet-101 (the RS-Nets "I-Net" baseline): rs_resnet101 with a single
# resolution (one BN, i.e. a standard ResNet-101) trained at 352 with the ordinary EncoderDecoder.
# Pretrained: MODEL_ZOO.md row rs_resnet101.tv_in1k (torchvision ResNet-101).
_base_ = ['./_base_/models/refinenet_rs-resnet101.py', './_base_/datasets/nyudv2.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_refinenet-nyu_20k.py']
model = dict(
    data_preprocessor=dict(size=(352, 352)),
    type='EncoderDecoder',
    backbone=dict(resolutions=(352, ),
                  init_cfg=dict(type='Pretrained', checkpoint='checkpoints/rs_resnet101_tv_in1k.pth')),
    train_cfg=dict(_delete_=True),
    test_cfg=dict(_delete_=True, mode='whole'))
