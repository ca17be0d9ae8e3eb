"""Pre-encoding: which windows to encode while the user is idle, so that a later prompt is decode-only.

The plane's objects are found as in everything mode (:func:`~napari_sam_micro.core.seeds.find_seeds`),
their boxes estimated from the diameter under each seed (:func:`~napari_sam_micro.core.decoding.click_box`)
and covered by few windows (:func:`~napari_sam_micro.core.windows.cover_objects`). Each cover window
is a click's first stage; the box windows of its objects' first masks
(:func:`~napari_sam_micro.core.decoding.click_box_windows`) are the second, encoded right after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from .decoding import CLICK_WINDOW_MIN, DecodeContext, click_box, click_box_windows
from .progress import Job, Progress
from .seeds import find_seeds
from .windows import Window, cover_objects

__all__ = ["plan_object_windows", "nearest_first", "preencode_windows_job"]


def plan_object_windows(ctx: DecodeContext, image: np.ndarray, offset: Sequence[int] = (0, 0)) -> list[tuple[Window, np.ndarray]]:
    """Windows that fit the plane's detected objects, each with its seeds.

    Parameters
    ----------
    ctx : DecodeContext
        Of the plane (its click-diameter estimate sizes the boxes).
    image : (h, w) or (h, w, 3) float32
        The normalised plane, or a region of it (a large plane).
    offset : (row, col)
        Of ``image``'s first pixel in the plane.

    Returns
    -------
    list of (Window, (K, 2) float64)
        ``(y0, y1, x0, x1)`` windows (never the whole plane) and the ``(x, y)`` seeds they hold.
    """
    seeds_xy = find_seeds(image)[:, ::-1].reshape(-1, 2) + np.array([offset[1], offset[0]], dtype=np.float64)
    if not len(seeds_xy):
        return []
    boxes = np.array([click_box(ctx, x, y)[0] for x, y in seeds_xy]).reshape(-1, 4)
    windows, assignment = cover_objects(boxes, ctx.hw, ctx.reuse_scale, min_side=CLICK_WINDOW_MIN)
    pairs = [(ctx.plane_or(w), seeds_xy[np.asarray(assignment) == j]) for j, w in enumerate(windows)]
    return [(w, pts) for w, pts in pairs if w is not None]


def nearest_first(planned: list, centre_rc: Sequence[float] | None, hw: tuple[int, int]) -> list:
    """``planned`` sorted by the distance of each window's centre to ``centre_rc`` (default: the plane's centre)."""
    cy, cx = (np.asarray(centre_rc, float) if centre_rc is not None else np.asarray(hw) / 2.0)[:2]
    return sorted(planned, key=lambda p: math.hypot((p[0][0] + p[0][1]) / 2.0 - cy, (p[0][2] + p[0][3]) / 2.0 - cx))


def preencode_windows_job(
    ctx: DecodeContext,
    planned: list,
    encode: Callable[[Window], Job],
    current: Callable[[], bool] = lambda: True,
) -> Job[int]:
    """Encode each planned window, then the box windows of its objects' first masks; a job.

    Parameters
    ----------
    ctx : DecodeContext
    planned : list of (Window, (K, 2) seeds)
        From :func:`plan_object_windows`, in the order to encode.
    encode : callable
        ``encode(window) -> Job`` computes and caches one window's embedding.
    current : callable
        False once the plane changed: the job stops between windows.

    Returns
    -------
    int
        Windows encoded.
    """
    encoded = 0
    for k, (window, points_xy) in enumerate(planned):
        todo = [window]
        while todo:
            if not current():
                return encoded
            win = todo.pop(0)
            if win is not None and not ctx.is_ready(win):
                yield from encode(win)
                encoded += 1
            if win == window:  # its objects' box stages, so that a click there is decode-only
                todo = [w for w in click_box_windows(ctx, points_xy, window) if w != window]
        yield Progress(k + 1, len(planned), f"Pre-encoded the objects of {k + 1} of {len(planned)} window(s)")
    return encoded
