"""Write a small synthetic segmentation dataset in the PASCAL VOC 2012 layout (for demos and tests where the
real data is absent): VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/{train,val,trainval}.txt}.

    python tools/make_synthetic_voc.py /tmp/datasets/VOCdevkit/VOC2012 --train 160 --val 64
    python tools/train_seg.py CONFIG --data-root /tmp/datasets
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    """Write the dataset (see the module docstring); ``argv`` None: ``sys.argv``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('root', help='the VOC2012 folder to create')
    p.add_argument('--train', type=int, default=160)
    p.add_argument('--val', type=int, default=64)
    p.add_argument('--size', type=int, nargs=2, default=(320, 240), metavar=('W', 'H'))
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args(argv)
    from plugins.mm.datasets import make_synthetic_voc
    make_synthetic_voc(a.root, num_train=a.train, num_val=a.val, size=tuple(a.size), seed=a.seed)
    print(f'wrote {a.train} train / {a.val} val images to {a.root}')


if __name__ == '__main__':
    main()
