"""A synthetic fluorescence nuclei image with its exact ground truth (the plugin's sample data).

The sample is made, not shipped: the same seed always gives the same 16-bit image and labels, in
a few tens of milliseconds, offline. What it imitates (DSB 2018 fluorescence nuclei):

* nuclei are ellipses of varied size (semi-axes about 6 to 22 px), elongation and orientation;
* some nuclei touch: they are placed against an earlier one and take only the pixels still free,
  so the two share a border (the case that needs instance segmentation);
* each nucleus has its own brightness (dim ones too), a slightly domed profile and chromatin-like
  texture; the optics blur them a little (Gaussian PSF);
* the background has an offset and a smooth illumination gradient; camera noise is Poisson (shot
  noise) plus Gaussian (read noise).

The ground truth is the ellipses as painted (before blur and noise): every label id is one nucleus.
Pure numpy/scipy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["synthetic_nuclei"]

#: Semi-axis range (pixels) of the nuclei's long axis.
_RADIUS_RANGE = (6.0, 22.0)


def _ellipse(shape: tuple[int, int], centre, a: float, b: float, angle: float):
    """``(slices, mask)``: the ellipse's bounding box in the image and its pixels there."""
    h, w = shape
    r = int(np.ceil(a)) + 1
    cy, cx = centre
    y0, y1 = max(0, int(cy) - r), min(h, int(cy) + r + 1)
    x0, x1 = max(0, int(cx) - r), min(w, int(cx) + r + 1)
    if y1 <= y0 or x1 <= x0:  # entirely outside the image
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy - cy, xx - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u = (dx * cos + dy * sin) / a
    v = (-dx * sin + dy * cos) / b
    return (slice(y0, y1), slice(x0, x1)), u * u + v * v <= 1.0


def _place_nuclei(rng: np.random.Generator, shape: tuple[int, int], n: int, touching: float) -> tuple[np.ndarray, list]:
    """Paint up to ``n`` ellipses; returns the labels and per nucleus ``(id, centre, a, b, angle)``."""
    labels = np.zeros(shape, np.uint16)
    free_gap = np.ones(shape, bool)  # False within 2 px of a nucleus: where a lone one may not go
    nuclei: list = []
    for _ in range(20 * n):
        if len(nuclei) >= n:
            break
        a = float(rng.uniform(*_RADIUS_RANGE))
        b = a * float(rng.uniform(0.6, 1.0))
        angle = float(rng.uniform(0, np.pi))
        against = nuclei and rng.random() < touching
        if against:
            _, (py, px), pa, pb, _ = nuclei[int(rng.integers(len(nuclei)))]
            theta = rng.uniform(0, 2 * np.pi)
            reach = 0.8 * ((pa + pb) / 2 + (a + b) / 2)
            centre = (py + reach * np.sin(theta), px + reach * np.cos(theta))
        else:
            centre = (rng.uniform(0, shape[0]), rng.uniform(0, shape[1]))
        sl, mask = _ellipse(shape, centre, a, b, angle)
        new = mask & (labels[sl] == 0)
        # a lone nucleus keeps its distance; one placed against another shares a border but must
        # keep most of itself (no slivers)
        if (not against and not free_gap[sl][mask].all()) or np.count_nonzero(new) < 0.75 * max(np.count_nonzero(mask), 1):
            continue
        if np.count_nonzero(new) < 40:
            continue
        label_id = len(nuclei) + 1
        labels[sl][new] = label_id
        free_gap[sl] &= ~ndi.binary_dilation(new, iterations=2)
        nuclei.append((label_id, centre, a, b, angle))
    return labels, nuclei


def synthetic_nuclei(shape: tuple[int, int] = (512, 512), n_nuclei: int = 70, seed: int = 0, touching: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like nuclei image and its ground-truth labels (see the module docstring).

    Parameters
    ----------
    shape : (H, W)
        Image size in pixels.
    n_nuclei : int
        Nuclei to place (fewer when the image is too crowded to fit them).
    seed : int
        Random seed: the same seed gives the same image and labels.
    touching : float
        Fraction of the nuclei placed against an earlier one (sharing a border).

    Returns
    -------
    image : (H, W) uint16
        Camera counts: background about 200-400, nuclei about 700-3500, with noise.
    labels : (H, W) uint16
        Ground truth: 0 background, ``1..K`` one id per nucleus.
    """
    rng = np.random.default_rng(int(seed))
    shape = (int(shape[0]), int(shape[1]))
    labels, nuclei = _place_nuclei(rng, shape, int(n_nuclei), float(touching))
    # chromatin-like texture: smoothed noise around 1
    texture = 1.0 + 0.15 * ndi.gaussian_filter(rng.standard_normal(shape), 1.5) / 0.19
    signal = np.zeros(shape, np.float64)
    for label_id, centre, a, b, angle in nuclei:
        sl, _ = _ellipse(shape, centre, a, b, angle)
        own = labels[sl] == label_id
        yy, xx = np.mgrid[sl]
        r2 = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (a * a)
        dome = 0.8 + 0.2 * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
        brightness = float(rng.uniform(0.25, 1.0))
        signal[sl][own] = (brightness * dome * texture[sl])[own]
    signal = ndi.gaussian_filter(np.clip(signal, 0.0, None), 1.0)  # the microscope's PSF
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    background = 200.0 + 150.0 * (0.6 * yy + 0.4 * xx)  # uneven illumination
    expected = background + 3000.0 * signal
    counts = rng.poisson(expected).astype(np.float64) + rng.normal(0.0, 15.0, shape)
    image = np.clip(np.round(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return image, labels
