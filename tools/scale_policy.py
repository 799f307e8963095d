#!/usr/bin/env python
"""Elastic scale-policy analysis over an image folder (Wang et al., "ELASTIC", CVPR 2019, Sec. 4.1.1, Fig. 5-6).

    python tools/scale_policy.py CKPT --model resnext50_elastic --data-path /data/imagenet --out-dir policy
    python tools/scale_policy.py CKPT --model dla60x_elastic --data-path ../shared/datasets/imagenette --split val

For every image of ``<data-path>/<split>/<class>/*`` (ImageNet layout) the tool runs the eval-mode model once
(resize ``--resize-size``, centre crop ``--crop-size``, the checkpoint's own input normalisation) and records the
scale-policy score of every Elastic unit (:mod:`backbones.scale_policy`: mean high-resolution minus mean
low-resolution branch activation; > 0: the unit looked at the image mostly at high resolution).  Writes to
``--out-dir``:

* ``scores.csv`` / ``scores.json``: one row per image (path, true and predicted class, one score per unit);
* ``class_means.csv`` and ``class_means.png``: per class the mean score over units and images, sorted (Fig. 5);
* ``tsne.png``: a t-SNE (scikit-learn) of the score vectors, the images drawn at their points (Fig. 6 left);
  ``tsne.csv`` its coordinates;
* ``block_distributions.png``: per unit, the distribution of the scores over the images (Fig. 6 middle);
* ``explorer.html``: one self-contained page (plotly.js embedded; opens from disk without a server): thumbnails
  with true / predicted class and a per-unit score strip, search by class, sort by class, mean or any unit's
  score, and the t-SNE map with the images as points (the paper's interactive demo, supplementary C).

Class names come from ``classes.txt`` beside or inside the folder (Imagenette: ``<k> <wnid> <name> ...``), else
the folder names.  A 1000-class ImageNet model on a subset whose ``classes.txt`` gives ``imagenet1k_index=<i>``
predicts among the subset's classes only.
"""
import argparse
import csv
import json
import os
import re
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TOOLS))
sys.path.insert(0, TOOLS)


def parse_args(argv=None):
    """Command-line arguments.

    Raises:
        SystemExit: usage errors (missing checkpoint or folder, a model without Elastic units).
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('checkpoint', nargs='?', help='checkpoint (tools/pretrain.py output, converted release)')
    ap.add_argument('--model', required=True, help='registered Elastic backbone (e.g. resnext50_elastic)')
    ap.add_argument('--data-path', required=True, help='image folder in ImageNet layout (<split>/<class>/*)')
    ap.add_argument('--split', default='val', help='sub-folder of --data-path to analyse (default: val)')
    ap.add_argument('--random-init', action='store_true', help='no checkpoint: random weights (testing)')
    ap.add_argument('--resize-size', type=int, default=256)
    ap.add_argument('--crop-size', type=int, default=224)
    ap.add_argument('--batch-size', type=int, default=16)
    ap.add_argument('--per-class', type=int, default=None, help='first N images of each class (sorted order)')
    ap.add_argument('--perplexity', type=float, default=30.0, help='t-SNE perplexity (capped at (N - 1) / 3)')
    ap.add_argument('--seed', type=int, default=0, help='t-SNE seed')
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--explorer-images', type=int, default=2000,
                    help='images in explorer.html (the first N rows: thumbnails are embedded in the file)')
    ap.add_argument('--out-dir', default='scale_policy')
    args = ap.parse_args(argv)
    import backbones
    if args.model not in backbones.list_models():
        ap.error(f'unknown model {args.model!r}; Elastic models: {backbones.list_models("*elastic*")}')
    if args.checkpoint is None and not args.random_init:
        ap.error('give a checkpoint (or --random-init for random weights)')
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        ap.error(f'checkpoint not found: {args.checkpoint}')
    folder = os.path.join(args.data_path, args.split)
    if not os.path.isdir(folder):
        ap.error(f'{args.data_path} has no {args.split}/ folder (ImageNet layout: {args.split}/<class>/*.JPEG); '
                 'pick the sub-folder with --split')
    return args


def checkpoint_classes(path):
    """Number of classes of the classifier stored in ``path`` (``head.<i>.weight`` ``[num_classes, C]``, any
    prefix such as a training checkpoint's ``model.``).

    Raises:
        ValueError: the file holds no classifier (a backbone checkpoint saved without it): the message names the
            files that hold one.
    """
    from backbones.pretrained import read_source
    for key, value in read_source(path).state_dict.items():
        if re.search(r'(^|\.)head\.\d+\.weight$', key) and value.ndim == 2:
            return int(value.shape[0])
    raise ValueError(f'{path} holds no classifier (a backbone checkpoint saved without it): the analysis needs the '
                     'predicted classes; give backbone.pth, last.pth or best.pth of tools/pretrain.py, or a converted '
                     'ImageNet release')


def class_names(root, folders):
    """Readable names of the class ``folders`` from ``classes.txt`` in ``root`` or its parent (lines ``<k> <wnid>
    <name> ...``, :func:`pretrain_lib.pretrained.read_classes_txt`); a folder without a line keeps its own name."""
    from pretrain_lib.pretrained import read_classes_txt
    table = read_classes_txt(root)
    return [table[c][0] if c in table else c for c in folders]


def class_means(rows, classes):
    """Per class: mean score over its images and all units, and its image count; sorted by the mean, highest
    first (Fig. 5).  ``rows``: dicts with ``label`` and ``scores``; returns ``[(class_name, mean, n), ...]``."""
    import numpy as np
    out = []
    for k, name in enumerate(classes):
        s = [np.mean(r['scores']) for r in rows if r['label'] == k]
        if s:
            out.append((name, float(np.mean(s)), len(s)))
    return sorted(out, key=lambda t: -t[1])


def tsne(vectors, perplexity, seed):
    """2-d t-SNE (scikit-learn) of ``[N, U]`` score vectors; perplexity capped at ``(N - 1) / 3``.

    Raises:
        ValueError: fewer than 4 images.
    """
    import numpy as np
    from sklearn.manifold import TSNE
    n = len(vectors)
    if n < 4:
        raise ValueError(f't-SNE needs at least 4 images, the folder gave {n}: drop --per-class or add images')
    return TSNE(n_components=2, perplexity=min(perplexity, (n - 1) / 3), init='pca', random_state=seed
                ).fit_transform(np.asarray(vectors, dtype=np.float64))


def plot_class_means(means, path, title):
    """Horizontal bars of the sorted per-class mean score (Fig. 5)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.28 * len(means)))
    names = [m[0] for m in means][::-1]
    vals = [m[1] for m in means][::-1]
    ax.barh(range(len(vals)), vals, color=['tab:blue' if v >= 0 else 'tab:orange' for v in vals])
    ax.set_yticks(range(len(vals)), names, fontsize=8)
    ax.axvline(0, color='k', lw=0.5)
    ax.set_xlabel('mean scale-policy score (> 0: high-resolution branches)')
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_tsne(coords, images, labels, classes, path, title, thumb=24):
    """The images drawn at their t-SNE points, framed in their class colour (Fig. 6 left)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage
    fig, ax = plt.subplots(figsize=(8, 8))
    cmap = plt.get_cmap('tab10' if len(classes) <= 10 else 'tab20')
    colours = [cmap(k % cmap.N) for k in labels]
    ax.scatter(coords[:, 0], coords[:, 1], c=colours, s=4)
    for (x, y), img, c in zip(coords, images, colours):
        box = AnnotationBbox(OffsetImage(np.asarray(img.resize((thumb, thumb))), zoom=1.0), (x, y), frameon=True,
                             pad=0.05, bboxprops=dict(edgecolor=c, linewidth=1.5))
        ax.add_artist(box)
    for k, name in enumerate(classes):
        ax.scatter([], [], color=cmap(k % cmap.N), label=name)
    ax.legend(fontsize=7, loc='best', markerscale=3)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_block_distributions(scores, names, path, title):
    """Per unit the distribution of the image scores (box plot) over every image's score line (Fig. 6 middle)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    scores = np.asarray(scores)
    x = np.arange(1, scores.shape[1] + 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(x)), 4))
    for s in scores:
        ax.plot(x, s, color='tab:gray', lw=0.3, alpha=0.3)
    ax.boxplot(scores, positions=x, widths=0.6, showfliers=False)
    ax.axhline(0, color='k', lw=0.5)
    ax.set_xlabel('Elastic unit (forward order)')
    ax.set_ylabel('scale-policy score')
    ax.set_xticks(x, [str(i) for i in x], fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_EXPLORER_JS = """
const cards = Array.from(document.querySelectorAll('#grid .card'));
const search = document.getElementById('search'), sortBy = document.getElementById('sort');
function key(card) {
  const k = sortBy.value;
  if (k === 'class') return card.dataset.cls;
  if (k === 'mean') return -parseFloat(card.dataset.mean);
  return -JSON.parse(card.dataset.scores)[parseInt(k.slice(4), 10) - 1];
}
function update() {
  const q = search.value.trim().toLowerCase();
  const grid = document.getElementById('grid');
  cards.map(c => [key(c), c.dataset.index | 0, c])
       .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1]))
       .forEach(([, , c]) => {
         c.style.display = !q || c.dataset.cls.toLowerCase().includes(q) ? '' : 'none';
         grid.appendChild(c);
       });
  document.getElementById('count').textContent =
    cards.filter(c => c.style.display !== 'none').length + ' of ' + cards.length + ' images';
}
search.addEventListener('input', update);
sortBy.addEventListener('change', update);
update();
"""


def _thumbnail(img, size):
    """``data:`` URI of a ``size`` x ``size`` JPEG of a PIL image."""
    import base64
    import io
    buf = io.BytesIO()
    img.convert('RGB').resize((size, size)).save(buf, format='JPEG', quality=85)
    return 'data:image/jpeg;base64,' + base64.b64encode(buf.getvalue()).decode('ascii')


def write_explorer(rows, units, classes, images, path, title, thumb=64):
    """The interactive explorer: one self-contained HTML file (plotly.js embedded, images as ``data:`` URIs; opens
    from disk without a server).

    Holds a thumbnail per image with its true and predicted class and a strip of its per-unit scores (blue: high
    resolution, red: low; hover for the value), a search box filtering by true class (``#search``), a sort menu
    (``#sort``: class, mean score, or the score of any unit, highest first) and the t-SNE map (plotly) with the
    images drawn at their points.  ``rows`` need ``path``, ``label``, ``pred``, ``scores`` and ``tsne``.
    """
    import html

    import matplotlib
    import numpy as np
    import plotly.graph_objects as go
    import plotly.io as pio
    scores = np.array([r['scores'] for r in rows])
    bound = float(np.abs(scores).max()) or 1.0
    cmap = matplotlib.colormaps['coolwarm_r']
    thumbs = [_thumbnail(img, thumb) for img in images]
    cards = []
    for i, (r, src) in enumerate(zip(rows, thumbs)):
        strip = ''.join(
            f'<span style="background:{matplotlib.colors.to_hex(cmap(0.5 + 0.5 * v / bound))}" '
            f'title="unit {j + 1} ({html.escape(units[j])}): {v:+.4f}"></span>' for j, v in enumerate(r['scores']))
        cls, pred = classes[r['label']], classes[r['pred']]
        ok = 'ok' if r['label'] == r['pred'] else 'wrong'
        cards.append(
            f'<div class="card" data-index="{i}" data-cls="{html.escape(cls)}" data-pred="{html.escape(pred)}" '
            f'data-mean="{np.mean(r["scores"]):.6g}" data-scores="{json.dumps([round(v, 6) for v in r["scores"]])}">'
            f'<img src="{src}" alt="{html.escape(os.path.basename(r["path"]))}" width="{thumb}" height="{thumb}">'
            f'<div class="cap"><div>{html.escape(cls)}</div><div class="{ok}">pred: {html.escape(pred)}</div></div>'
            f'<div class="strip">{strip}</div></div>')
    xy = np.array([r['tsne'] for r in rows])
    span = float(max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1e-6))
    fig = go.Figure(go.Scatter(
        x=xy[:, 0], y=xy[:, 1], mode='markers', marker=dict(size=4, color=[r['label'] for r in rows]),
        text=[f'{classes[r["label"]]} (pred {classes[r["pred"]]}), mean score {np.mean(r["scores"]):+.4f}'
              for r in rows], hoverinfo='text'))
    fig.update_layout(
        images=[dict(source=src, x=x, y=y, xref='x', yref='y', sizex=span / 20, sizey=span / 20, xanchor='center',
                     yanchor='middle', layer='above') for src, (x, y) in zip(thumbs, xy)],
        title='t-SNE of the scale-policy vectors', width=800, height=800, margin=dict(l=20, r=20, t=40, b=20))
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, scaleanchor='x')
    tsne_div = pio.to_html(fig, include_plotlyjs=True, full_html=False, div_id='tsne')
    options = ['<option value="class">class</option>', '<option value="mean">mean score</option>']
    options += [f'<option value="unit{j + 1}">unit {j + 1}: {html.escape(n)}</option>' for j, n in enumerate(units)]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
#grid {{ display: flex; flex-wrap: wrap; gap: 6px; }}
.card {{ width: {thumb + 8}px; font-size: 10px; border: 1px solid #ccc; padding: 3px; }}
.cap div {{ white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }}
.ok {{ color: #070; }} .wrong {{ color: #b00; }}
.strip {{ display: flex; height: 8px; }} .strip span {{ flex: 1; }}
</style></head><body>
<h2>Elastic scale policy</h2><p>{html.escape(title)}. Score per unit: mean high-resolution minus mean low-resolution
branch activation (Wang et al., CVPR 2019, Sec. 4.1.1); strip colours: blue &gt; 0 (high resolution), red &lt; 0
(low resolution), scale &plusmn;{bound:.3g}.</p>
<p><label>search class <input id="search" type="search"></label>
<label>sort by <select id="sort">{''.join(options)}</select></label> <span id="count"></span></p>
<div id="grid">{''.join(cards)}</div>
{tsne_div}
<script>{_EXPLORER_JS}</script>
</body></html>
"""
    with open(path, 'w', encoding='utf-8') as f:
        f.write(page)


def score_folder(model, folder, args):
    """Run the model over ``folder`` (ImageFolder): returns ``(rows, units, classes, images)``, rows holding
    ``path, label, pred, scores`` and images the centre crops (PIL) for drawing."""
    import torch
    from pretrain_lib.pretrained import imagenet_index_map
    from torchvision import datasets, transforms
    from tqdm import tqdm

    from backbones.scale_policy import ScalePolicyRecorder
    crop = transforms.Compose([transforms.Resize(args.resize_size), transforms.CenterCrop(args.crop_size)])
    to_input = transforms.Compose([transforms.ToTensor(), transforms.Normalize(model.pixel_mean, model.pixel_std)])
    ds = datasets.ImageFolder(folder)
    samples = ds.samples
    if args.per_class:
        samples = [s for k in range(len(ds.classes)) for s in [t for t in ds.samples if t[1] == k][:args.per_class]]
    if not samples:
        raise ValueError(f'{folder} holds no images in class folders (ImageNet layout: <class>/*.JPEG)')
    if getattr(model, 'head', None) is None:
        raise ValueError(f'{args.model} was built without a classifier (num_classes=0): the analysis needs the '
                         'predicted classes; give a classification checkpoint (tools/pretrain.py output)')
    num_classes = model.head[-1].out_features
    restrict = None
    if num_classes != len(ds.classes):
        restrict = imagenet_index_map(os.path.dirname(folder.rstrip('/')), ds.classes)
        if restrict is None or (num_classes or 0) <= max(restrict):
            raise ValueError(f'the model has {num_classes} classes and {folder} {len(ds.classes)} class folders: '
                             'analyse the folder it was trained on, or give a classes.txt mapping each folder to '
                             'its ImageNet-1k index (imagenet1k_index=<i>)')
    rows, images = [], []
    model.eval()
    with ScalePolicyRecorder(model) as rec, torch.no_grad():
        for i in tqdm(range(0, len(samples), args.batch_size), desc='scale policy', unit='batch'):
            batch = samples[i:i + args.batch_size]
            crops = [crop(ds.loader(p)) for p, _ in batch]
            logits = model(torch.stack([to_input(c) for c in crops]))
            if restrict is not None:
                logits = logits[:, restrict]
            scores = rec.scores()
            for (p, y), c, lg, s in zip(batch, crops, logits, scores):
                rows.append(dict(path=p, label=int(y), pred=int(lg.argmax()), scores=[float(v) for v in s]))
                images.append(c)
    return rows, rec.names, class_names(os.path.dirname(folder.rstrip('/')), ds.classes), images


def main(argv=None):
    """Score the folder, write the data and the plots; returns the rows (dicts with ``path``, ``label``,
    ``pred``, ``scores`` and ``tsne``)."""
    import numpy as np
    import torch

    import backbones
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = {} if args.random_init else dict(num_classes=checkpoint_classes(args.checkpoint))
    model = backbones.create(args.model, pretrained=None if args.random_init else args.checkpoint, **kwargs)
    from backbones.scale_policy import elastic_units
    elastic_units(model)  # refuse a model without Elastic units before reading any image
    folder = os.path.join(args.data_path, args.split)
    rows, units, classes, images = score_folder(model, folder, args)
    os.makedirs(args.out_dir, exist_ok=True)
    scores = np.array([r['scores'] for r in rows])
    coords = tsne(scores, args.perplexity, args.seed)
    for r, xy in zip(rows, coords):
        r['tsne'] = [float(xy[0]), float(xy[1])]
    cols = [f'unit{j + 1}' for j in range(len(units))]
    with open(os.path.join(args.out_dir, 'scores.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['path', 'label', 'class', 'pred', 'pred_class', 'correct', 'tsne_x', 'tsne_y', *cols])
        for r in rows:
            w.writerow([r['path'], r['label'], classes[r['label']], r['pred'], classes[r['pred']],
                        int(r['label'] == r['pred']), *r['tsne'], *(f'{v:.6g}' for v in r['scores'])])
    with open(os.path.join(args.out_dir, 'scores.json'), 'w') as f:
        json.dump(dict(model=args.model, checkpoint=args.checkpoint and os.path.abspath(args.checkpoint),
                       folder=os.path.abspath(folder), units=units, classes=classes, crop_size=args.crop_size,
                       images=rows), f)
    means = class_means(rows, classes)
    with open(os.path.join(args.out_dir, 'class_means.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['class', 'mean_score', 'images'])
        w.writerows((n, f'{m:.6g}', k) for n, m, k in means)
    title = f'{args.model}: {os.path.basename(args.checkpoint) if args.checkpoint else "random init"}, ' \
            f'{len(rows)} images of {folder}'
    plot_class_means(means, os.path.join(args.out_dir, 'class_means.png'), title)
    plot_tsne(coords, images, [r['label'] for r in rows], classes, os.path.join(args.out_dir, 'tsne.png'), title)
    plot_block_distributions(scores, units, os.path.join(args.out_dir, 'block_distributions.png'), title)
    write_explorer(rows[:args.explorer_images], units, classes, images[:args.explorer_images],
                   os.path.join(args.out_dir, 'explorer.html'), title)
    acc = np.mean([r['label'] == r['pred'] for r in rows])
    print(f'{len(rows)} images, {len(units)} Elastic units, top-1 {100 * acc:.1f}% -> {args.out_dir}: '
          f'scores.csv, class_means.png (highest: {means[0][0]} {means[0][1]:+.4f}, lowest: {means[-1][0]} '
          f'{means[-1][1]:+.4f}), tsne.png, block_distributions.png, explorer.html')
    return rows


if __name__ == '__main__':
    from backbones.errors import run_main
    run_main(main)
