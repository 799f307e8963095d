"""Ponder-cost maps as visual saliency (Figurnov et al., CVPR 2017, Sec. 4.3 and supplementary A.3) and the
standard saliency metrics to score them against human fixations (Judd et al. 2012; Bylinskii et al., "What do
different evaluation metrics tell us about saliency models?", TPAMI 2019).

:func:`ponder_saliency` is the supplementary's post-processing: normalise the ponder-cost map to [0, 1] (eq. 1-2),
blur it with a Gaussian of standard deviation ``s`` pixels (eq. 3) and add ``gamma`` times a centred baseline map
(eq. 4); the paper uses ``s = 10``, ``gamma = 0.005``.  The paper's baseline is the MIT benchmark's reference
centred Gaussian (``center.mat``), not shipped here: :func:`center_baseline` is a centred Gaussian with a
standard deviation of a quarter of each side and peak 1, and ``baseline=`` takes the reference map (any size,
resized bilinearly) when you have it.

Metrics, from their definitions (no maintained Python package implements the MIT benchmark's set without heavy
dependencies): :func:`auc_judd`, :func:`nss` and :func:`cc`.  Maps are ``[H, W]`` arrays; fixation maps are
``[H, W]`` with non-zero entries at fixated pixels; a fixation density map (for CC) is any non-negative ``[H, W]``
map (e.g. fixations blurred by one degree of visual angle).
"""
import numpy as np

__all__ = ['normalize_map', 'center_baseline', 'ponder_saliency', 'auc_judd', 'nss', 'cc']


def normalize_map(m):
    """``(m - min) / (max - min)`` (supplementary eq. 1-2); a constant map becomes zeros.  ``[H, W]`` -> float64."""
    m = np.asarray(m, dtype=np.float64)
    lo, hi = m.min(), m.max()
    return np.zeros_like(m) if hi <= lo else (m - lo) / (hi - lo)


def center_baseline(shape, std_fraction=0.25):
    """Centred Gaussian baseline ``B`` of ``shape`` (H, W): peak 1 at the image centre, standard deviation
    ``std_fraction`` of the side along each axis (our stand-in for the MIT benchmark's ``center.mat``)."""
    h, w = shape
    y = (np.arange(h) - (h - 1) / 2) / (std_fraction * h)
    x = (np.arange(w) - (w - 1) / 2) / (std_fraction * w)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def ponder_saliency(ponder_map, s=10.0, gamma=0.005, baseline=None):
    """Saliency map of a ponder-cost map (supplementary A.3, eq. 1-4): ``G_s * normalize(rho) + gamma * B``.

    Args:
        ponder_map (array-like): ``[H, W]`` ponder cost at image resolution (e.g.
            :func:`backbones.sact.ponder_cost_map` of one image).
        s (float): standard deviation of the Gaussian blur in pixels (paper: 10).
        gamma (float): weight of the centred baseline (paper: 0.005).
        baseline (array-like | None): ``[h, w]`` baseline map, resized to ``[H, W]`` (default
            :func:`center_baseline`).

    Returns:
        np.ndarray: ``[H, W]`` float64.

    Raises:
        ValueError: a map that is not 2-d, ``s < 0`` or ``gamma < 0``.
    """
    from scipy.ndimage import gaussian_filter, zoom
    rho = np.asarray(ponder_map, dtype=np.float64)
    if rho.ndim != 2:
        raise ValueError(f'ponder_saliency takes one [H, W] map, got shape {rho.shape}: pass map[i] for image i')
    if s < 0 or gamma < 0:
        raise ValueError(f's and gamma must be >= 0 (paper: s=10, gamma=0.005), got s={s}, gamma={gamma}')
    out = normalize_map(rho)
    if s > 0:
        out = gaussian_filter(out, sigma=s, mode='nearest')
    if baseline is None:
        base = center_baseline(rho.shape)
    else:
        base = np.asarray(baseline, dtype=np.float64)
        if base.shape != rho.shape:
            base = zoom(base, (rho.shape[0] / base.shape[0], rho.shape[1] / base.shape[1]), order=1)
    return out + gamma * base


def _fixations(fixation_map, shape):
    fix = np.asarray(fixation_map) != 0
    if fix.shape != tuple(shape):
        raise ValueError(f'fixation map {fix.shape} and saliency map {tuple(shape)} differ in size: resize the '
                         'saliency map to the fixation map (nearest fixations are positions, not values)')
    if not fix.any():
        raise ValueError('the fixation map has no fixation (no non-zero pixel)')
    return fix


def auc_judd(saliency, fixation_map):
    """AUC-Judd (Judd et al. 2012): ROC area with every fixated pixel's saliency as a threshold; true positive
    rate = fixations at or above it, false positive rate = other pixels at or above it (the MIT benchmark's
    ``AUC_Judd.m`` without its tie-breaking jitter).  1 = every fixation outranks every other pixel, 0.5 = chance.

    Args:
        saliency (array-like): ``[H, W]``.
        fixation_map (array-like): ``[H, W]``, non-zero at fixations.

    Returns:
        float in [0, 1].

    Raises:
        ValueError: different sizes, no fixation, or every pixel fixated.
    """
    s = normalize_map(saliency)
    fix = _fixations(fixation_map, s.shape)
    n_fix, n_pix = int(fix.sum()), s.size
    if n_fix == n_pix:
        raise ValueError('every pixel is fixated: AUC-Judd needs non-fixated pixels')
    thresholds = np.sort(s[fix])[::-1]
    flat = np.sort(s.ravel())
    tp = np.concatenate([[0.0], np.arange(1, n_fix + 1) / n_fix, [1.0]])
    above = n_pix - np.searchsorted(flat, thresholds, side='left')  # pixels with saliency >= threshold
    fp = np.concatenate([[0.0], (above - np.arange(1, n_fix + 1)) / (n_pix - n_fix), [1.0]])
    return float(np.trapezoid(tp, fp))


def nss(saliency, fixation_map):
    """Normalised scanpath saliency (Peters et al. 2005): mean of the standardised saliency map (zero mean, unit
    sample standard deviation, as MATLAB's ``std``) at the fixated pixels; 0 = chance.

    Raises:
        ValueError: different sizes, no fixation, or a constant saliency map.
    """
    s = np.asarray(saliency, dtype=np.float64)
    fix = _fixations(fixation_map, s.shape)
    sd = s.std(ddof=1)
    if sd == 0:
        raise ValueError('a constant saliency map has no NSS (zero standard deviation)')
    return float(((s - s.mean()) / sd)[fix].mean())


def cc(saliency, density):
    """Pearson's linear correlation coefficient between a saliency map and a fixation density map (both
    ``[H, W]``); in [-1, 1].

    Raises:
        ValueError: different sizes or a constant map.
    """
    a = np.asarray(saliency, dtype=np.float64)
    b = np.asarray(density, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f'saliency {a.shape} and density {b.shape} maps differ in size')
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if den == 0:
        raise ValueError('CC is undefined for a constant map')
    return float((a * b).sum() / den)
