# MMDetection 1x schedule (its own base config): 12 epochs, lr 0.02 for 16 images per step (8 GPUs x 2),
# steps at 8 and 11, 500 linear warm-up iterations.  `--auto-scale-lr` in tools/train_det_mm.py rescales lr
# linearly from auto_scale_lr.base_batch_size = 16.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'
