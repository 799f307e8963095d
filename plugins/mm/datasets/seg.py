"""Segmentation datasets for the dynscale configs (MMSegmentation 1.x).

* :class:`NYUDv2Dataset`: NYU Depth v2 RGB images with the 40-class labels of Gupta et al. (2013) as used by
  RefineNet and the RS-Nets segmentation extension (795 train / 654 test).  Label PNGs hold 0 = unlabelled
  and 1..40 = NYU-40 ids; ``reduce_zero_label=True`` maps 0 -> 255 (ignored) and k -> k - 1.
* :class:`VOCSegDataset`: PASCAL VOC 2012 segmentation (standard ``VOCdevkit/VOC2012`` layout) that checks
  the layout first and names the missing path and the expected tree.
* :func:`make_synthetic_voc`: writes a small synthetic dataset in the VOC 2012 layout, so the demo and the
  tests run where no real data is present.
"""
import os
import os.path as osp

import numpy as np
from mmseg.datasets import BaseSegDataset, PascalVOCDataset

from ..registry import register_mm_module

__all__ = ['NYUDv2Dataset', 'VOCSegDataset', 'NYU40_CLASSES', 'make_synthetic_voc', 'VOC_LAYOUT',
           'NYU_LAYOUT']

NYU40_CLASSES = ('wall', 'floor', 'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window', 'bookshelf',
                 'picture', 'counter', 'blinds', 'desk', 'shelves', 'curtain', 'dresser', 'pillow', 'mirror',
                 'floor mat', 'clothes', 'ceiling', 'books', 'refrigerator', 'television', 'paper', 'towel',
                 'shower curtain', 'box', 'whiteboard', 'person', 'night stand', 'toilet', 'sink', 'lamp',
                 'bathtub', 'bag', 'otherstructure', 'otherfurniture', 'otherprop')

VOC_LAYOUT = """VOCdevkit/VOC2012/
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png        (palette PNG: 0 background, 1-20 classes, 255 void)
    ImageSets/Segmentation/{train,val,trainval}.txt   (one <id> per line)"""

NYU_LAYOUT = """either split folders:
    <data_root>/images/{train,test}/<id>.png      (RGB)
    <data_root>/labels40/{train,test}/<id>.png    (uint8, 0 unlabelled, 1-40 NYU-40 ids)
or frame folders (e.g. ../shared/datasets/nyudv2_sample):
    <data_root>/<frame>/image.png + <frame>/label40.png   (or image.png + label40.png in data_root itself)"""


def _missing(path, what, layout, hint=''):
    return FileNotFoundError(f'{what} not found: {path}\nExpected layout:\n{layout}{hint}')


@register_mm_module(registry='DATASETS', frameworks=('mmseg',))
class NYUDv2Dataset(BaseSegDataset):
    """NYUDv2 40-class semantic segmentation (RGB + ``label40`` PNG; 0 = unlabelled, ignored).

    Two layouts (:data:`NYU_LAYOUT`): split folders given by ``data_prefix`` (default
    ``images/train`` / ``labels40/train``, files paired by name; an ``ann_file`` with one id per line
    selects a subset), or frame folders each holding ``frame_image`` and ``frame_label`` (the layout of
    ``nyudv2_sample``), found recursively under ``data_root/data_prefix.img_path``.

    Args:
        layout (str): 'auto' (frame folders if ``frame_image`` exists under the image folder, else split),
            'split' or 'frame'.
        frame_image, frame_label (str): file names inside a frame folder.
        reduce_zero_label (bool): True (0 -> 255 ignored, k -> k - 1), as the labels are 1-based.
        **kwargs: ``BaseSegDataset`` arguments (``data_root``, ``data_prefix``, ``pipeline``, ...).

    Raises:
        FileNotFoundError: the image/label folder or files are missing; the message shows the expected layout.
        ValueError: unknown ``layout``.
    """

    METAINFO = dict(classes=NYU40_CLASSES,
                    palette=[[(37 * i) % 256, (101 * i + 50) % 256, (173 * i + 100) % 256]
                             for i in range(1, 41)])

    def __init__(self, layout='auto', frame_image='image.png', frame_label='label40.png', img_suffix='.png',
                 seg_map_suffix='.png',
                 data_prefix=dict(img_path='images/train', seg_map_path='labels40/train'),
                 reduce_zero_label=True, **kwargs):
        if layout not in ('auto', 'split', 'frame'):
            raise ValueError(f"layout must be 'auto', 'split' or 'frame', got {layout!r}")
        self.layout = layout
        self.frame_image, self.frame_label = frame_image, frame_label
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, data_prefix=data_prefix,
                         reduce_zero_label=reduce_zero_label, **kwargs)

    def _frames(self, root):
        found = []
        for dirpath, _, files in os.walk(root):
            if self.frame_image in files:
                if self.frame_label not in files:
                    raise _missing(osp.join(dirpath, self.frame_label), 'NYUDv2 label of frame', NYU_LAYOUT)
                found.append(dirpath)
        return sorted(found)

    def load_data_list(self):
        """List of ``dict(img_path, seg_map_path, label_map, reduce_zero_label, seg_fields)``."""
        img_dir = self.data_prefix.get('img_path') or self.data_root or ''
        if not osp.isdir(img_dir):
            raise _missing(img_dir, 'NYUDv2 image folder', NYU_LAYOUT)
        frames = self._frames(img_dir) if self.layout in ('auto', 'frame') else []
        if self.layout == 'frame' and not frames:
            raise _missing(osp.join(img_dir, '<frame>', self.frame_image), 'NYUDv2 frame folders', NYU_LAYOUT)
        if frames:
            return [dict(img_path=osp.join(d, self.frame_image), seg_map_path=osp.join(d, self.frame_label),
                         label_map=self.label_map, reduce_zero_label=self.reduce_zero_label, seg_fields=[])
                    for d in frames]
        ann_dir = self.data_prefix.get('seg_map_path')
        if not ann_dir or not osp.isdir(ann_dir):
            raise _missing(ann_dir, 'NYUDv2 label folder', NYU_LAYOUT)
        data = super().load_data_list()
        if not data:
            raise _missing(osp.join(img_dir, '*' + self.img_suffix), 'NYUDv2 images', NYU_LAYOUT)
        absent = [d['seg_map_path'] for d in data if not osp.isfile(d['seg_map_path'])]
        if absent:
            raise _missing(absent[0], f'{len(absent)} NYUDv2 label files, e.g.', NYU_LAYOUT)
        return data


@register_mm_module(registry='DATASETS', frameworks=('mmseg',))
class VOCSegDataset(PascalVOCDataset):
    """PASCAL VOC 2012 segmentation (21 classes, 255 = void) that checks the standard layout first.

    Same arguments as MMSeg's ``PascalVOCDataset`` (``data_root`` = the ``VOC2012`` folder,
    ``data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass')``,
    ``ann_file='ImageSets/Segmentation/train.txt'``).

    Raises:
        FileNotFoundError: ``data_root``, the image or label folder, or the split file is missing; the message
            names the path, shows :data:`VOC_LAYOUT` and how to make a synthetic set
            (``python tools/make_synthetic_voc.py <dir>``).
    """

    def __init__(self, ann_file, data_root=None,
                 data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'), **kwargs):
        hint = ('\nPoint the config at the folder that holds VOCdevkit/ '
                '(tools/train_seg.py --data-root DIR or $DYNSCALE_DATASETS), or create a synthetic set with '
                '`python tools/make_synthetic_voc.py DIR/VOCdevkit/VOC2012`.')
        root = data_root or ''
        if data_root is not None and not osp.isdir(data_root):
            raise _missing(data_root, 'VOC 2012 data_root', VOC_LAYOUT, hint)
        for key in ('img_path', 'seg_map_path'):
            d = osp.join(root, data_prefix.get(key, ''))
            if not osp.isdir(d):
                raise _missing(d, f'VOC 2012 {key} folder', VOC_LAYOUT, hint)
        split = ann_file if osp.isabs(ann_file) else osp.join(root, ann_file)
        if not osp.isfile(split):
            raise _missing(split, 'VOC 2012 split file', VOC_LAYOUT, hint)
        super().__init__(ann_file=ann_file, data_root=data_root, data_prefix=data_prefix, **kwargs)


def _voc_palette():
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i, c in enumerate(PascalVOCDataset.METAINFO['palette']):
        pal[i] = c
    pal[255] = (224, 224, 192)  # VOC void colour
    return pal


def make_synthetic_voc(root, num_train=16, num_val=8, size=(160, 120), max_objects=3, seed=0):
    """Write a synthetic segmentation set in the VOC 2012 layout (:data:`VOC_LAYOUT`) under ``root``.

    Each image is a textured background with 1..``max_objects`` rectangles/ellipses; every object has a random
    VOC class (1..20) and a class-specific mean colour with noise, so a network can learn the mapping.  Labels
    are palette PNGs with 0 background, the class ids, and a 2-pixel 255 (void) band around each object, as in
    VOC.  Deterministic for a given ``seed``.

    Args:
        root (str): the ``VOC2012`` folder to create (existing files are overwritten).
        num_train, num_val (int): images per split (``trainval`` is their union).
        size (tuple[int, int]): ``(W, H)`` of every image.
        max_objects (int): objects per image at most.
        seed (int): RNG seed.

    Returns:
        str: ``root``.
    """
    from PIL import Image, ImageDraw, ImageFilter
    rng = np.random.default_rng(seed)
    w, h = size
    for sub in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
        os.makedirs(osp.join(root, sub), exist_ok=True)
    class_rgb = rng.integers(30, 226, size=(21, 3))
    pal = _voc_palette().reshape(-1).tolist()
    ids = {'train': [], 'val': []}
    for split, n in (('train', num_train), ('val', num_val)):
        for k in range(n):
            name = f'synth_{split}_{k:04d}'
            img = rng.normal(110, 25, size=(h, w, 3))
            img += np.linspace(-20, 20, w)[None, :, None]
            label = Image.new('L', (w, h), 0)
            void = Image.new('L', (w, h), 0)
            for _ in range(int(rng.integers(1, max_objects + 1))):
                cls = int(rng.integers(1, 21))
                bw, bh = int(rng.integers(w // 6, w // 2)), int(rng.integers(h // 6, h // 2))
                x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                mask = Image.new('L', (w, h), 0)
                draw = ImageDraw.Draw(mask)
                (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + bw, y0 + bh], fill=255)
                m = np.asarray(mask) > 0
                img[m] = class_rgb[cls] + rng.normal(0, 15, size=(int(m.sum()), 3))
                label.paste(cls, mask=mask)
                grown = np.asarray(mask.filter(ImageFilter.MaxFilter(5)))
                band = grown ^ np.asarray(mask.filter(ImageFilter.MinFilter(5)))
                void.paste(255, mask=Image.fromarray((band > 0).astype(np.uint8) * 255))
            lab = np.asarray(label).copy()
            lab[np.asarray(void) > 0] = 255
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                osp.join(root, 'JPEGImages', name + '.jpg'), quality=95)
            p = Image.frombytes('P', (w, h), np.ascontiguousarray(lab, dtype=np.uint8).tobytes())
            p.putpalette(pal)
            p.save(osp.join(root, 'SegmentationClass', name + '.png'))
            ids[split].append(name)
    seg = osp.join(root, 'ImageSets', 'Segmentation')
    ids['trainval'] = ids['train'] + ids['val']
    for split, names in ids.items():
        with open(osp.join(seg, split + '.txt'), 'w') as f:
            f.write('\n'.join(names) + '\n')
    return root
