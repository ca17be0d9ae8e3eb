"""Windows of a plane that 256-px models segment objects in: reuse rule and cover planning.

A ``crop_to_prompt`` model (LiteMedSAM, ``micro-tiny``) segments an object in a square window
about twice the object's size, upscaled to its 256-px input. Encoding a window is the expensive
step (one image-encoder pass), decoding a prompt in it is cheap. The model was trained on windows
1.6-2.6 x the target object's box side, with the object anywhere in the window as long as it is
complete (``training.crops``: centre jitter, and targets chosen among all complete objects of a
crop), so one encoded window serves every object that lies inside it at a trained-for scale and
away from its border:

* :func:`fits` — the rule: window side / object side within :data:`REUSE_SCALE_RANGE` and the
  object at least :data:`REUSE_MARGIN` x the window side away from every window side that is not
  the image border;
* :func:`reuse_window` — the best already-encoded window that fits an object, if any;
* :func:`cover_objects` — few windows that together fit many objects (everything mode,
  background pre-encoding): dense images get many objects per window.

Windows are ``(y0, y1, x0, x1)`` half-open pixel ranges of the plane (napari order); object boxes
are ``(x0, y0, x1, y1)`` in SAM order (inclusive pixel coordinates, as
:func:`~napari_sam_micro.core.masks.mask_to_box_xyxy` returns them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "Window",
    "REUSE_SCALE_RANGE",
    "EVERYTHING_SCALE_RANGE",
    "REUSE_MARGIN",
    "TRAINED_SCALE_RANGE",
    "TRAINED_CENTRE_JITTER",
    "as_trained",
    "BOX_STAGE_SCALE_RANGE",
    "BOX_STAGE_CENTRE_JITTER",
    "COVER_FILL",
    "window_side",
    "covers_plane",
    "reaches_border",
    "fits",
    "reuse_window",
    "square_window",
    "cover_objects",
]

#: ``(y0, y1, x0, x1)`` half-open pixel window of a plane.
Window = tuple[int, int, int, int]

#: Window side / object box side (longer sides) at which a prompt may be decoded in a window that
#: was encoded for another prompt. Training used 1.6-2.6 for the prompted object and smaller
#: neighbours; box IoU on held-out images drops by about 0.005 at 3 and 0.012 at 4
#: (docs/benchmarks.md), so prompts stay at or below 3.
REUSE_SCALE_RANGE = (1.6, 3.0)
#: The same for everything mode, whose score (F1 at IoU 0.5) tolerates the small IoU cost of larger
#: windows, which hold more objects each.
EVERYTHING_SCALE_RANGE = (1.6, 4.0)
#: The window scale and centring the models were trained on (``training.crops.CropConfig``): window
#: side 1.6-2.6 x the box side, window centre within 0.15 x the box side of the box centre. A
#: click's second stage (its first mask's box) stays in the click's window only inside these: on
#: held-out nuclei, keeping it in any window that merely fits (up to 3 x) cost 0.016 click IoU.
TRAINED_SCALE_RANGE = (1.6, 2.6)
TRAINED_CENTRE_JITTER = 0.15
#: The window a click's second stage (its first mask's box) is decoded in: the window a box
#: prompt gets (2 x, centred), or an encoded one within these of it. Any trained-for window (above)
#: cost 0.017 click IoU on 20 held-out nuclei against the box window (0.730 vs 0.748).
BOX_STAGE_SCALE_RANGE = (1.8, 2.25)
BOX_STAGE_CENTRE_JITTER = 0.06
#: Smallest gap between an object and a window side (that is not the image border), as a fraction
#: of the window side: objects cut by the window or pressed against its side are never reused.
REUSE_MARGIN = 0.08
#: A window :func:`cover_objects` opens for an object is this fraction of the largest side the scale
#: range allows for it (2.4 x for prompts, 3.2 x in everything mode): neighbours somewhat larger
#: than the object that opens the window still fit.
COVER_FILL = 0.8


def window_side(window: Window) -> int:
    """Longer side of a window, pixels."""
    y0, y1, x0, x1 = window
    return int(max(y1 - y0, x1 - x0))


def covers_plane(window: Window, hw: tuple[int, int]) -> bool:
    """Whether ``window`` is the whole ``(H, W)`` plane."""
    y0, y1, x0, x1 = window
    return y0 <= 0 and x0 <= 0 and y1 >= hw[0] and x1 >= hw[1]


def reaches_border(mask: np.ndarray, window: Window, hw: tuple[int, int]) -> bool:
    """Whether ``mask`` (plane frame, ``(H, W)`` bool) touches a side of ``window`` that is not the plane's border."""
    y0, y1, x0, x1 = window
    sides = []
    if y0 > 0:
        sides.append(mask[y0, x0:x1])
    if y1 < hw[0]:
        sides.append(mask[y1 - 1, x0:x1])
    if x0 > 0:
        sides.append(mask[y0:y1, x0])
    if x1 < hw[1]:
        sides.append(mask[y0:y1, x1 - 1])
    return any(bool(side.any()) for side in sides)


def _gaps(boxes: np.ndarray, window: Window, hw: tuple[int, int]) -> np.ndarray:
    """``(N,)`` smallest gap (pixels) between each box and a window side that is not the plane border.

    A box sticking out of the window gets a negative gap, even at the plane border.
    """
    y0, y1, x0, x1 = window
    inf = np.inf
    left = np.where(boxes[:, 0] < x0, -1.0, boxes[:, 0] - x0 if x0 > 0 else inf)
    top = np.where(boxes[:, 1] < y0, -1.0, boxes[:, 1] - y0 if y0 > 0 else inf)
    right = np.where(boxes[:, 2] > x1 - 1, -1.0, (x1 - 1) - boxes[:, 2] if x1 < hw[1] else inf)
    bottom = np.where(boxes[:, 3] > y1 - 1, -1.0, (y1 - 1) - boxes[:, 3] if y1 < hw[0] else inf)
    return np.minimum(np.minimum(left, right), np.minimum(top, bottom))


def _fits_many(boxes, window: Window, hw, scale_range=REUSE_SCALE_RANGE, margin: float = REUSE_MARGIN) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    side = float(window_side(window))
    obj = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1.0
    # a window clipped by a small plane is as large as the plane allows: the lower bound is moot there
    lo = scale_range[0] if side < min(hw) else 0.0
    scale_ok = (side >= lo * obj) & (side <= scale_range[1] * obj)
    return scale_ok & (_gaps(boxes, window, hw) >= margin * side)


def fits(box_xyxy, window: Window, hw: tuple[int, int], scale_range=REUSE_SCALE_RANGE, margin: float = REUSE_MARGIN) -> bool:
    """Whether an object with box ``box_xyxy`` may be decoded in ``window``.

    Parameters
    ----------
    box_xyxy : (4,) array-like
        ``(x0, y0, x1, y1)`` of the object (inclusive pixels, plane frame).
    window : Window
    hw : (int, int)
        Plane ``(H, W)``.
    scale_range : (float, float)
        Accepted window side / object side.
    margin : float
        Smallest gap to a window side that is not the plane border, as a fraction of the window side.
    """
    return bool(_fits_many(box_xyxy, window, hw, scale_range, margin)[0])


def as_trained(
    box_xyxy, window: Window, hw: tuple[int, int], scale_range=TRAINED_SCALE_RANGE, jitter: float = TRAINED_CENTRE_JITTER
) -> bool:
    """Whether ``window`` is one the models were trained on for this box (scale and centring).

    :func:`fits` within ``scale_range``, and the box centre within ``jitter`` x the box side of the
    window centre along each axis on which the window was not shifted by the plane's border (the
    plugin's windows are shifted there too).
    """
    box = np.asarray(box_xyxy, np.float64).reshape(4)
    if not fits(box, window, hw, scale_range):
        return False
    y0, y1, x0, x1 = window
    side = max(box[2] - box[0], box[3] - box[1]) + 1.0
    for lo, hi, a, b, size in ((x0, x1, box[0], box[2], hw[1]), (y0, y1, box[1], box[3], hw[0])):
        at_border = lo <= 0 or hi >= size
        if not at_border and abs((lo + hi - 1) / 2.0 - (a + b) / 2.0) > jitter * side:
            return False
    return True


def _badness(box: np.ndarray, window: Window) -> float:
    """How far a fitting window is from the plugin's own choice (scale 2, object centred); smaller is better."""
    y0, y1, x0, x1 = window
    side = float(window_side(window))
    obj = max(box[2] - box[0], box[3] - box[1]) + 1.0
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    off = math.hypot(cx - (x0 + x1 - 1) / 2.0, cy - (y0 + y1 - 1) / 2.0) / side
    return abs(math.log(side / (2.0 * obj))) + off


def reuse_window(box_xyxy, windows: Sequence[Window], hw: tuple[int, int], scale_range=REUSE_SCALE_RANGE) -> Window | None:
    """The window of ``windows`` that fits the object best (:func:`fits` with ``scale_range``), or None.

    Among fitting windows the one closest to scale 2 with the object nearest its centre wins.
    """
    box = np.asarray(box_xyxy, np.float64).reshape(4)
    best, best_bad = None, math.inf
    for window in windows:
        if window is None or not fits(box, window, hw, scale_range):
            continue
        bad = _badness(box, window)
        if bad < best_bad:
            best, best_bad = tuple(int(v) for v in window), bad
    return best


def square_window(cx: float, cy: float, side: float, hw: tuple[int, int]) -> Window:
    """Square window of ``side`` pixels centred on ``(cx, cy)``, shifted (not shrunk) into the plane."""
    h, w = int(hw[0]), int(hw[1])

    def span(center: float, size: int) -> tuple[int, int]:
        length = int(min(size, math.ceil(side)))
        start = int(math.floor(center + 0.5 - length / 2.0))
        start = min(max(start, 0), size - length)
        return start, start + length

    ya, yb = span(cy, h)
    xa, xb = span(cx, w)
    return ya, yb, xa, xb


def cover_objects(
    boxes_xyxy, hw: tuple[int, int], scale_range=REUSE_SCALE_RANGE, min_side: int = 32
) -> tuple[list[Window], np.ndarray]:
    """Few windows that together fit every object (greedy set cover).

    Objects are taken largest first; each still unassigned object opens a window of side
    :data:`COVER_FILL` x the largest side ``scale_range`` allows (at least ``min_side``), placed among nine positions (the object
    at the window's centre, sides and corners, at the margin) where the most still unassigned
    objects fit (:func:`fits` with ``scale_range``); those objects are assigned to it. An object that fits no position (larger than the
    plane allows) gets the window centred on it.

    Parameters
    ----------
    boxes_xyxy : (N, 4) array-like
        ``(x0, y0, x1, y1)`` of each object (estimated boxes are fine).
    hw : (int, int)
        Plane ``(H, W)``.
    scale_range : (float, float)
        :data:`REUSE_SCALE_RANGE` (prompts, pre-encoding) or :data:`EVERYTHING_SCALE_RANGE`.
    min_side : int
        Smallest window side, pixels.

    Returns
    -------
    windows : list of Window
    assignment : (N,) intp
        Index into ``windows`` of each object's window.
    """
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1.0
    assignment = np.full(len(boxes), -1, np.intp)
    windows: list[Window] = []
    for i in np.argsort(-sides, kind="stable"):
        if assignment[i] >= 0:
            continue
        free = np.flatnonzero(assignment < 0)
        best, best_hits = None, None
        for factor in _cover_factors(scale_range):  # smallest first: ties keep the smaller window
            side = max(float(min_side), factor * sides[i])
            for window in _placements(boxes[i], side, hw):
                hits = free[_fits_many(boxes[free], window, hw, scale_range)]
                if i in hits and (best_hits is None or len(hits) > len(best_hits)):
                    best, best_hits = window, hits
        if best is None:
            cx, cy = (boxes[i, 0] + boxes[i, 2]) / 2.0, (boxes[i, 1] + boxes[i, 3]) / 2.0
            side = max(float(min_side), COVER_FILL * scale_range[1] * sides[i])
            best, best_hits = square_window(cx, cy, side, hw), np.array([i])
        windows.append(best)
        assignment[best_hits] = len(windows) - 1
    return windows, assignment


def _cover_factors(scale_range) -> list[float]:
    """Window side / opening object's side tried by :func:`cover_objects`, smallest first."""
    lo, hi = float(scale_range[0]), float(scale_range[1])
    start = min(max(lo, 2.4), COVER_FILL * hi)
    return sorted({start, COVER_FILL * hi, 0.5 * (COVER_FILL * hi + hi), 0.98 * hi})


def _placements(box: np.ndarray, side: float, hw) -> list[Window]:
    """Windows of ``side`` with the box at the centre, at each side and in each corner (at the margin)."""
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    half_obj = (max(box[2] - box[0], box[3] - box[1]) + 1.0) / 2.0
    reach = max(0.0, side / 2.0 - half_obj - (REUSE_MARGIN * side + 1.0))
    out = []
    for dy in (0.0, -reach, reach):
        for dx in (0.0, -reach, reach):
            window = square_window(cx + dx, cy + dy, side, hw)
            if window not in out:
                out.append(window)
    return out
