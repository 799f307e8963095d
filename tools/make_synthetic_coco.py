#!/usr/bin/env python
"""Write a small synthetic instance-segmentation dataset in the COCO 2017 layout.

For demos and smoke runs on a machine without ``../shared/datasets/coco``::

    python tools/make_synthetic_coco.py /tmp/datasets/coco --train 32 --val 16
    DYNSCALE_DATASETS=/tmp/datasets python tools/train_det_mm.py <config>

Layout: ``train2017/*.jpg``, ``val2017/*.jpg``, ``annotations/instances_{train,val}2017.json``; objects are
filled ellipses and rectangles on a noisy background, annotated with polygons, boxes (x, y, w, h in pixels)
and areas, under three official COCO category ids (1 person, 3 car, 18 dog).
"""
import argparse
import json
import os

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [{'id': 1, 'name': 'person', 'supercategory': 'person'},
              {'id': 3, 'name': 'car', 'supercategory': 'vehicle'},
              {'id': 18, 'name': 'dog', 'supercategory': 'animal'}]


def _shape_polygon(rng, w, h):
    """A random ellipse or rectangle as a closed polygon ``[x0, y0, x1, y1, ...]`` in pixels."""
    cx, cy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
    rx, ry = rng.uniform(0.08 * w, 0.25 * w), rng.uniform(0.08 * h, 0.25 * h)
    if rng.random() < 0.5:
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        pts = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)
    else:
        pts = np.array([[cx - rx, cy - ry], [cx + rx, cy - ry], [cx + rx, cy + ry], [cx - rx, cy + ry]])
    pts[:, 0] = pts[:, 0].clip(0, w - 1)
    pts[:, 1] = pts[:, 1].clip(0, h - 1)
    return pts


def make_split(root, split, n, size, seed, start_id=1):
    """Write ``n`` images and their annotation json for ``split``; returns the number of instances."""
    rng = np.random.default_rng(seed)
    w, h = size
    img_dir = os.path.join(root, f'{split}2017')
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    colors = {1: (220, 60, 60), 3: (60, 200, 60), 18: (60, 60, 220)}
    images, anns = [], []
    ann_id = start_id
    for i in range(n):
        img_id = start_id + i
        arr = (rng.normal(120, 25, (h, w, 3))).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(1, 4))):
            cat = int(rng.choice([1, 3, 18]))
            pts = _shape_polygon(rng, w, h)
            draw.polygon([tuple(p) for p in pts], fill=colors[cat])
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            poly = pts.reshape(-1)
            area = 0.5 * abs(np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], 1)))
            anns.append({'id': ann_id, 'image_id': img_id, 'category_id': cat, 'iscrowd': 0,
                         'segmentation': [poly.round(2).tolist()], 'area': float(area),
                         'bbox': [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]})
            ann_id += 1
        name = f'{img_id:012d}.jpg'
        im.save(os.path.join(img_dir, name), quality=92)
        images.append({'id': img_id, 'file_name': name, 'width': w, 'height': h})
    with open(os.path.join(root, 'annotations', f'instances_{split}2017.json'), 'w') as f:
        json.dump({'images': images, 'annotations': anns, 'categories': CATEGORIES}, f)
    return len(anns)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('root', help='the coco folder to create (holds train2017/, val2017/, annotations/)')
    ap.add_argument('--train', type=int, default=32)
    ap.add_argument('--val', type=int, default=16)
    ap.add_argument('--size', type=int, nargs=2, default=(320, 240), metavar=('W', 'H'))
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args(argv)
    nt = make_split(a.root, 'train', a.train, tuple(a.size), a.seed)
    nv = make_split(a.root, 'val', a.val, tuple(a.size), a.seed + 1, start_id=100000)
    print(f'wrote {a.train} train ({nt} instances) / {a.val} val ({nv} instances) images to {a.root}')


if __name__ == '__main__':
    main()
