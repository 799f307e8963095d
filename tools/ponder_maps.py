#!/usr/bin/env python
"""SACT ponder-cost maps and saliency maps of a folder of images (Figurnov et al., CVPR 2017, Sec. 4.3, Fig. 1 and
6; supplementary A.3).

    python tools/ponder_maps.py CKPT --model sact_resnet50 --images DIR --out-dir ponder
    python tools/ponder_maps.py CKPT --model sact_resnet101 --images cat2000/Stimuli --fixations cat2000/FIXATIONLOCS \\
        --densities cat2000/FIXATIONMAPS --size 320 --s 10 --gamma 0.005

Each image (any ``*.jpg`` / ``*.jpeg`` / ``*.png`` below ``--images``) is resized so that its shorter side is
``--size`` (no crop: the network is fully convolutional), normalised as the checkpoint says, and run once in eval
mode.  Written to ``--out-dir`` per image (its path below ``--images`` with ``/`` as ``__``):

* ``<name>.png``: the image, the ponder-cost map summed over the four stages and each stage's map over it, with
  colour bars (:func:`backbones.sact.drawing.draw_ponder_map`; each stage's map resized nearest-neighbour, as
  the authors draw them);
* ``<name>_ponder.npy``: the summed map ``[H, W]`` (float32) at the resized image's size;
* ``<name>_saliency.png`` / ``.npy``: :func:`backbones.sact.saliency.ponder_saliency` (normalise, Gaussian blur
  of std ``--s`` px, plus ``--gamma`` times the centred baseline).

and ``maps.csv`` (image, size, mean ponder cost).  With ``--fixations`` (maps of the same name, non-zero at the
fixated pixels, any image format) each saliency map is resized bilinearly to its fixation map and scored: AUC-Judd,
NSS, and CC against ``--densities`` (continuous fixation maps) or, without them, against the fixation map blurred
by ``--density-sigma`` px; ``saliency_metrics.csv`` holds the scores and their means.
"""
import argparse
import csv
import glob
import os
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS))

EXTENSIONS = ('.jpg', '.jpeg', '.png')


def parse_args(argv=None):
    """Command-line arguments.

    Raises:
        SystemExit: usage errors (missing checkpoint or folder, a model that is not SACT / ACT).
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('checkpoint', nargs='?', help='SACT checkpoint (tools/pretrain.py output, converted release)')
    ap.add_argument('--model', required=True, help='registered SACT / ACT backbone (e.g. sact_resnet50)')
    ap.add_argument('--images', required=True, help='folder of images (searched recursively)')
    ap.add_argument('--random-init', action='store_true', help='no checkpoint: random weights (testing)')
    ap.add_argument('--size', type=int, default=224, help='shorter side the images are resized to')
    ap.add_argument('--s', type=float, default=10.0, help='saliency: Gaussian blur std in pixels (paper: 10)')
    ap.add_argument('--gamma', type=float, default=0.005, help='saliency: centre baseline weight (paper: 0.005)')
    ap.add_argument('--fixations', help='folder of fixation maps named as the images (non-zero = fixated)')
    ap.add_argument('--densities', help='folder of continuous fixation maps for CC (default: blurred fixations)')
    ap.add_argument('--density-sigma', type=float, default=10.0, help='blur of the fixations for CC, pixels')
    ap.add_argument('--max-images', type=int, default=None)
    ap.add_argument('--out-dir', default='ponder_maps')
    args = ap.parse_args(argv)
    import backbones
    from backbones.capabilities import capabilities, models_with
    if args.model not in backbones.list_models() or 'ponder_cost' not in capabilities(args.model):
        ap.error(f'{args.model!r} is not a SACT / ACT model (ponder costs): one of {models_with("ponder_cost")}')
    if args.checkpoint is None and not args.random_init:
        ap.error('give a checkpoint (or --random-init for random weights)')
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        ap.error(f'checkpoint not found: {args.checkpoint}')
    for flag in ('images', 'fixations', 'densities'):
        folder = getattr(args, flag)
        if folder is not None and not os.path.isdir(folder):
            ap.error(f'--{flag}: {folder} is not a folder')
    if args.densities and not args.fixations:
        ap.error('--densities needs --fixations (AUC-Judd and NSS score fixation locations)')
    return args


def find_images(folder):
    """Sorted image paths below ``folder`` (``*.jpg``, ``*.jpeg``, ``*.png``, any case)."""
    return sorted(p for p in glob.glob(os.path.join(folder, '**', '*'), recursive=True)
                  if p.lower().endswith(EXTENSIONS) and os.path.isfile(p))


def _match(folder, rel):
    """The file of ``folder`` with the same relative path as ``rel`` up to its extension, or None."""
    stem = os.path.splitext(rel)[0]
    for p in glob.glob(os.path.join(folder, glob.escape(stem) + '.*')):
        if p.lower().endswith(EXTENSIONS):
            return p
    return None


def main(argv=None):
    """Draw and save the maps; returns the rows of ``maps.csv`` (dicts; with ``--fixations`` also ``auc_judd``,
    ``nss``, ``cc``)."""
    import numpy as np
    import torch
    from PIL import Image
    from scipy.ndimage import gaussian_filter, zoom
    from torchvision import transforms
    from tqdm import tqdm

    import backbones
    from backbones.sact.drawing import draw_ponder_map, stage_ponder_maps
    from backbones.sact.saliency import auc_judd, cc, nss, ponder_saliency
    args = parse_args(argv)
    paths = find_images(args.images)[:args.max_images]
    if not paths:
        raise ValueError(f'{args.images} holds no *.jpg / *.jpeg / *.png image')
    model = backbones.create(args.model, pretrained=None if args.random_init else args.checkpoint).eval()
    prep = transforms.Compose([transforms.Resize(args.size), transforms.ToTensor()])
    norm = transforms.Normalize(model.pixel_mean, model.pixel_std)
    os.makedirs(args.out_dir, exist_ok=True)
    rows = []
    for path in tqdm(paths, desc='ponder maps', unit='image'):
        rel = os.path.relpath(path, args.images)
        name = os.path.splitext(rel)[0].replace(os.sep, '__')
        x = prep(Image.open(path).convert('RGB'))
        with torch.no_grad():
            model(norm(x)[None])
        size = tuple(x.shape[-2:])
        stages = stage_ponder_maps(model.ponder_costs, size)[0].numpy()  # [S, H, W]
        total = stages.sum(0)  # = backbones.sact.ponder_cost_map
        draw_ponder_map(x.permute(1, 2, 0).numpy(), total, os.path.join(args.out_dir, f'{name}.png'),
                        stage_maps=stages, title=f'{args.model}: {rel}')
        np.save(os.path.join(args.out_dir, f'{name}_ponder.npy'), total.astype(np.float32))
        sal = ponder_saliency(total, s=args.s, gamma=args.gamma)
        np.save(os.path.join(args.out_dir, f'{name}_saliency.npy'), sal.astype(np.float32))
        grey = (255 * (sal - sal.min()) / max(np.ptp(sal), 1e-12)).astype(np.uint8)
        Image.fromarray(grey).save(os.path.join(args.out_dir, f'{name}_saliency.png'))
        row = dict(image=rel, height=size[0], width=size[1], ponder_cost=float(total.mean()))
        if args.fixations:
            fpath = _match(args.fixations, rel)
            if fpath is None:
                raise FileNotFoundError(f'no fixation map for {rel} in {args.fixations} (expected '
                                        f'{os.path.splitext(rel)[0]}.png or .jpg)')
            fix = np.asarray(Image.open(fpath).convert('L')) > 0
            big = zoom(sal, (fix.shape[0] / sal.shape[0], fix.shape[1] / sal.shape[1]), order=1)
            if args.densities:
                dpath = _match(args.densities, rel)
                if dpath is None:
                    raise FileNotFoundError(f'no fixation density map for {rel} in {args.densities}')
                density = np.asarray(Image.open(dpath).convert('L'), dtype=np.float64)
            else:
                density = gaussian_filter(fix.astype(np.float64), args.density_sigma)
            row.update(auc_judd=auc_judd(big, fix), nss=nss(big, fix), cc=cc(big, density))
        rows.append(row)
    with open(os.path.join(args.out_dir, 'maps.csv'), 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    msg = f'{len(rows)} images, mean ponder cost {np.mean([r["ponder_cost"] for r in rows]):.3f} -> {args.out_dir}'
    if args.fixations:
        means = {k: float(np.mean([r[k] for r in rows])) for k in ('auc_judd', 'nss', 'cc')}
        with open(os.path.join(args.out_dir, 'saliency_metrics.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['image', 'auc_judd', 'nss', 'cc'])
            w.writerows([r['image'], f'{r["auc_judd"]:.4f}', f'{r["nss"]:.4f}', f'{r["cc"]:.4f}'] for r in rows)
            w.writerow(['mean', *(f'{means[k]:.4f}' for k in ('auc_judd', 'nss', 'cc'))])
        msg += (f'; saliency (s={args.s:g}, gamma={args.gamma:g}): AUC-Judd {means["auc_judd"]:.3f}, '
                f'NSS {means["nss"]:.3f}, CC {means["cc"]:.3f}')
    print(msg)
    return rows


if __name__ == '__main__':
    from backbones.errors import run_main
    run_main(main)
