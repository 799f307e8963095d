# RS-Net RefineNet on the single real NYUDv2 frame of ../shared/datasets/nyudv2_sample (train = val): a
# 100-iteration plumbing check of the NYUDv2 path, not a benchmark.
_base_ = ['./_base_/models/refinenet_rs-resnet101.py', './_base_/datasets/nyudv2_sample.py',
          './_base_/default_runtime.py', './_base_/schedules/schedule_refinenet-nyu_20k.py']
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=100, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=100, val_interval=50)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=50, save_best=None))
model = dict(data_preprocessor=dict(size=(352, 352)))
