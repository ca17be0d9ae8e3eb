"""Planes too large to hold: read window by window from a lazy array (dask, zarr, a multiscale level).

An annotation session on a slide scan must never read the whole plane: each prompt reads the
window it is decoded in. What the session otherwise measured on the whole plane is measured here on
bounded reads:

- the intensity stretch, on a grid of blocks spread over the plane (:func:`block_sample`, a fixed
  number of pixels whatever the plane's size, so a 20k x 20k plane costs a few chunks);
- the plane's identity in cache keys, from its shape, dtype and that sample (:func:`large_plane_digest`);
  every window key adds the digest of the window's own pixels, so two planes that agree on the
  sample never share an embedding;
- the objects' scale and the pre-encoding plan, in a region around the prompt or the view
  (:func:`region_around`).

Pure numpy; the arrays only need ``shape``, ``dtype`` and slicing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .cache import content_digest

__all__ = [
    "LARGE_PLANE_PIXELS",
    "SAMPLE_GRID",
    "SAMPLE_BLOCK",
    "REGION_SIDE",
    "is_large_plane",
    "read_window",
    "block_sample",
    "large_plane_digest",
    "region_around",
]

#: Planes with more pixels than this (4096 x 4096) are annotated window by window, never read whole.
LARGE_PLANE_PIXELS = 4096 * 4096
#: Blocks per side of the grid the intensity stretch of a large plane is measured on.
SAMPLE_GRID = 6
#: Side (pixels) of each sampled block: 36 blocks of 256 x 256 = 2.4 M pixels.
SAMPLE_BLOCK = 256
#: Side of the region where a large plane's object scale and pre-encoding plan are measured.
REGION_SIDE = 2048


def is_large_plane(shape_hw: Sequence[int]) -> bool:
    """Whether a plane of ``(H, W)`` is annotated window by window (more than :data:`LARGE_PLANE_PIXELS`)."""
    return int(shape_hw[0]) * int(shape_hw[1]) > LARGE_PLANE_PIXELS


def read_window(plane, window: Sequence[int]) -> np.ndarray:
    """``plane[y0:y1, x0:x1]`` read into memory (numpy, dask, zarr …; channels, if any, kept last)."""
    y0, y1, x0, x1 = (int(v) for v in window)
    part = plane[y0:y1, x0:x1]
    if hasattr(part, "compute"):  # dask
        part = part.compute()
    return np.asarray(part)


def _block_starts(n: int, grid: int, block: int) -> list[int]:
    if n <= block:
        return [0]
    # multiples of the block side: a block then lies in one chunk of the usual 256 / 512 / 1024 grids
    return sorted({int(v) // block * block for v in np.linspace(0, n - block, grid)})


def block_sample(plane, grid: int = SAMPLE_GRID, block: int = SAMPLE_BLOCK) -> np.ndarray:
    """Pixels of a ``grid x grid`` grid of ``block``-sided blocks spread evenly over the plane.

    Parameters
    ----------
    plane : (H, W) or (H, W, C) array-like
        Channels last.

    Returns
    -------
    (n, block) or (n, block, C) array
        The blocks stacked along rows (same dtype), for percentiles and digests.
    """
    h, w = int(plane.shape[0]), int(plane.shape[1])
    rows, cols = _block_starts(h, grid, block), _block_starts(w, grid, block)
    blocks = [read_window(plane, (r, min(h, r + block), c, min(w, c + block))) for r in rows for c in cols]
    width = min(w, block)
    return np.concatenate([b[:, :width] for b in blocks if b.shape[1] == width], axis=0)


def large_plane_digest(plane, sample: np.ndarray) -> str:
    """Identity of a large plane in cache keys: its dtype, shape and :func:`block_sample`.

    Window keys add the digest of the window's pixels (see the module docstring).
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(b"large-plane;")
    h.update(np.dtype(plane.dtype).str.encode())
    h.update(repr(tuple(int(s) for s in plane.shape)).encode())
    h.update(content_digest(sample).encode())
    return h.hexdigest()


def region_around(shape_hw: Sequence[int], centre_rc: Sequence[float] | None, side: int = REGION_SIDE) -> tuple[int, int, int, int]:
    """The ``(y0, y1, x0, x1)`` region of at most ``side`` x ``side`` around ``centre_rc`` (row, col).

    Snapped to a grid of ``side / 2`` so that nearby centres share one region (and its measurements);
    the plane's centre when ``centre_rc`` is None.
    """
    h, w = int(shape_hw[0]), int(shape_hw[1])
    cy, cx = (h / 2.0, w / 2.0) if centre_rc is None else (float(centre_rc[0]), float(centre_rc[1]))
    half = max(1, side // 2)

    def span(c: float, n: int) -> tuple[int, int]:
        if n <= side:
            return 0, n
        start = int(round((c - half) / half)) * half
        start = int(np.clip(start, 0, n - side))
        return start, start + side

    y0, y1 = span(cy, h)
    x0, x1 = span(cx, w)
    return y0, y1, x0, x1
