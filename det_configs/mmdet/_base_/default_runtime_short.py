# Runtime of the short iteration-based runs (schedules/schedule_short.py): log every 5 iterations,
# one checkpoint at the end, iteration-based log keys.
_base_ = './default_runtime.py'
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=5),
    checkpoint=dict(type='CheckpointHook', interval=40, by_epoch=False, max_keep_ckpts=1))
log_processor = dict(type='LogProcessor', window_size=5, by_epoch=False)
