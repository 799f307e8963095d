# RefineNet-4-cascaded on an RS-Net ResNet-101, NYUDv2 40 classes (RS-Nets supplementary Sec. 3, Table 1):
# each batch trained at S = {352, 224, 96} with private BNs, logits resized to 352, learned ensemble, MRED
# loss.  Test at 352 / 224 / 96 with --cfg-options model.test_cfg.resolution=224 (whole image resized to
# resolution x resolution, logits resized back to the image).
# Pretrained: MODEL_ZOO.md row rs_resnet101.tv_in1k (torchvision ResNet-101; yikaiw/RS-Nets released no
# RS-ResNet-101): every private BN starts from its single BN.
_base_ = ['./_base_/models/refinenet_rs-resnet101.py', './_base_/datasets/nyudv2.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_refinenet-nyu_20k.py']
model = dict(data_preprocessor=dict(size=(352, 352)),
             backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='checkpoints/rs_resnet101_tv_in1k.pth')))
