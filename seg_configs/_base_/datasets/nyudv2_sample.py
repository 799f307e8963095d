# The one real NYUDv2 frame in ../shared/datasets/nyudv2_sample (image.png + label40.png, 682x512), used for
# both training and validation: a format and plumbing check of the NYUDv2 path, not a benchmark.
_base_ = './nyudv2.py'
datasets_root = '{{$DYNSCALE_DATASETS:{{ fileDirname }}/../../../../shared/datasets}}'
data_root = datasets_root + '/nyudv2_sample'
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, layout='frame', data_prefix=dict(img_path='', seg_map_path='')))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, layout='frame', data_prefix=dict(img_path='', seg_map_path='')))
test_dataloader = val_dataloader
