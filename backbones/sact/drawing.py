"""Drawing SACT ponder-cost maps over their image (Figurnov et al., CVPR 2017, Fig. 1 and 6; reference Sec. 5.7):
the one function every entry point uses (``tools/ponder_maps.py``, ``tools/pretrain.py --evaluate
--save-ponder-maps``, the MMSeg / MMDet test tools' ``PonderMapSaveHook``).  matplotlib is imported on call."""
import numpy as np

__all__ = ['stage_ponder_maps', 'draw_ponder_map']


def stage_ponder_maps(ponder_costs, size):
    """Per-stage ponder-cost maps resized nearest-neighbour to ``size`` (H, W), as the authors draw them.

    Args:
        ponder_costs (list[Tensor]): ``model.ponder_costs`` after a forward: per stage ``[N, h, w]`` (SACT) or
            ``[N]`` (ACT).
        size (tuple[int, int]): image size (H, W).

    Returns:
        Tensor: ``[N, num_stages, H, W]``; its sum over dim 1 is :func:`backbones.sact.ponder_cost_map`.

    Raises:
        ValueError: empty list (not a SACT / ACT model, or no forward yet).
    """
    import torch

    from .ponder import ponder_cost_map
    if not ponder_costs:
        raise ValueError('no ponder costs: run a forward of an act_* / sact_* model first')
    return torch.stack([ponder_cost_map([r], size) for r in ponder_costs], dim=1)


def draw_ponder_map(image, ponder_map, path, stage_maps=None, title=None, alpha=0.55, vmax=None):
    """Write a PNG of the ponder-cost map over the image with a colour bar, and of each stage's map if given.

    Args:
        image (array-like | PIL.Image): ``[H, W, 3]`` RGB, uint8 (0-255) or float (0-1).
        ponder_map (array-like): ``[H, W]`` ponder cost summed over the stages (units run per position,
            N + R), at the image's size.
        path (str): output PNG.
        stage_maps (array-like | None): ``[S, H, W]`` per-stage maps (one panel each, ``stage k`` titles).
        title (str | None): figure title.
        alpha (float): opacity of the map over the image.
        vmax (float | None): top of the colour scale of the summed map (default its maximum); stage panels use
            their own maxima.

    Returns:
        str: ``path``.

    Raises:
        ValueError: a map whose size is not the image's.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    total = np.asarray(ponder_map, dtype=np.float32)
    stages = [] if stage_maps is None else [np.asarray(m, dtype=np.float32) for m in stage_maps]
    for m in [total, *stages]:
        if m.shape != img.shape[:2]:
            raise ValueError(f'ponder map {m.shape} and image {img.shape[:2]} differ in size: resize the map to '
                             'the image (backbones.sact.ponder_cost_map(costs, size=image size))')
    panels = [(f'ponder cost (sum of {len(stages)} stages)' if stages else 'ponder cost', total, vmax)]
    panels += [(f'stage {k + 1}', m, None) for k, m in enumerate(stages)]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.2 * (len(panels) + 1), 3.4))
    axes[0].imshow(img)
    axes[0].set_title('image', fontsize=9)
    for ax, (name, m, top) in zip(axes[1:], panels):
        ax.imshow(img)
        im = ax.imshow(m, cmap='jet', alpha=alpha, vmin=float(m.min()), vmax=top or max(float(m.max()), 1e-6))
        ax.set_title(f'{name}\nmean {m.mean():.2f}', fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
