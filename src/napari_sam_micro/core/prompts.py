"""Prompts: napari layer data → SAM point and box prompts.

This is the **only** module that flips napari's ``(row, col)`` order to SAM's ``(x, y)``
(``x`` = column, ``y`` = row). Everything it returns is in SAM order, in pixel units of the 2D
image plane being segmented (pixel centres at integer coordinates, as in napari).

Typical use (``_napari`` glue)::

    pts, lab = points_from_napari(points_layer_data_in_image_frame, positive_flags, (H, W))
    boxes = boxes_from_napari_rectangles(rectangles_in_image_frame, (H, W))
    objects = object_prompts(Prompts(pts, lab, boxes))
    for obj in objects:          # one decoder call (or one batch row) per object
        model.decode(emb, *obj.decoder_args())
    objects.warnings             # sentences to show the user (ignored points …)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import PromptError

__all__ = [
    "Prompts",
    "ObjectPrompt",
    "ObjectPrompts",
    "points_from_napari",
    "boxes_from_napari_rectangles",
    "prompts_from_napari",
    "prompts_from_sam",
    "object_prompts",
    "batch_boxes",
    "check_inside",
]

PromptKind = Literal["points", "box", "box+points"]


def _fmt(v: float) -> str:
    return f"{v:.1f}" if abs(v - round(v)) > 1e-6 else f"{int(round(v))}"


def _size_text(image_hw: tuple[int, int]) -> str:
    h, w = image_hw
    return f"{w} × {h} pixels (rows 0–{h - 1}, columns 0–{w - 1})"


def _check_hw(image_hw) -> tuple[int, int]:
    h, w = (int(image_hw[0]), int(image_hw[1]))
    if h <= 0 or w <= 0:
        raise ValueError(f"image_hw must be positive, got {image_hw}")
    return h, w


@dataclass(frozen=True)
class Prompts:
    """All prompts drawn on one 2D image plane, in SAM order.

    Parameters
    ----------
    points_xy : (N, 2) float32
        Point coordinates ``(x, y)`` = ``(col, row)``.
    point_labels : (N,) int32
        1 = positive (object), 0 = negative (background).
    boxes_xyxy : (K, 4) float32
        Boxes ``(x0, y0, x1, y1)`` with ``x0 <= x1``, ``y0 <= y1``.

    Raises
    ------
    PromptError
        A NaN or infinite coordinate. Whether the prompts lie on the image is checked by
        :meth:`check_inside` (a ``Prompts`` does not know the image size).
    """

    points_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    boxes_xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))

    def __post_init__(self):
        # Copies: the stored arrays are made read-only, the caller's must not be.
        pts = np.array(self.points_xy, dtype=np.float32).reshape(-1, 2)
        lab = np.array(self.point_labels).reshape(-1).astype(np.int32)
        boxes = np.array(self.boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        if pts.shape[0] != lab.shape[0]:
            raise ValueError(f"{pts.shape[0]} points but {lab.shape[0]} point labels")
        if not np.isfinite(pts).all():
            raise PromptError("A point has no valid position (NaN coordinate). Delete it and click again.")
        if not np.isfinite(boxes).all():
            raise PromptError("A box has a missing (NaN) corner. Delete it and draw it again.")
        if lab.size and not np.isin(lab, (0, 1)).all():
            raise ValueError("point labels must be 1 (positive) or 0 (negative)")
        for arr in (pts, lab, boxes):
            arr.flags.writeable = False
        object.__setattr__(self, "points_xy", pts)
        object.__setattr__(self, "point_labels", lab)
        object.__setattr__(self, "boxes_xyxy", boxes)

    @property
    def n_points(self) -> int:
        return int(self.points_xy.shape[0])

    @property
    def n_boxes(self) -> int:
        return int(self.boxes_xyxy.shape[0])

    @property
    def is_empty(self) -> bool:
        return self.n_points == 0 and self.n_boxes == 0

    def check_inside(self, image_hw) -> None:
        """Raise :class:`PromptError` unless every point and box lies on the ``(H, W)`` image.

        See :func:`check_inside`.
        """
        check_inside(image_hw, self.points_xy, self.boxes_xyxy)


def _point_outside(r: float, c: float, hw: tuple[int, int]) -> bool:
    return not (-0.5 <= r <= hw[0] - 0.5 and -0.5 <= c <= hw[1] - 0.5)


def _outside_message(r: float, c: float, hw: tuple[int, int]) -> str:
    return (
        f"The point at (row {_fmt(r)}, column {_fmt(c)}) is outside the image, which is "
        f"{_size_text(hw)}. Move or delete that point."
    )


def check_inside(image_hw, points_xy=None, boxes_xyxy=None) -> None:
    """Reject prompts that do not lie on the image (a model would still return a confident mask).

    Parameters
    ----------
    image_hw : (int, int)
        ``(H, W)`` of the plane.
    points_xy : (N, 2) array-like, optional
        SAM ``(x, y)`` points; each must be within half a pixel of the image.
    boxes_xyxy : (K, 4) array-like, optional
        SAM ``(x0, y0, x1, y1)`` boxes; each must overlap the image.

    Raises
    ------
    PromptError
        A NaN coordinate, a point outside the image or a box completely outside it.
    """
    hw = _check_hw(image_hw)
    pts = np.zeros((0, 2)) if points_xy is None else np.asarray(points_xy, np.float64).reshape(-1, 2)
    boxes = np.zeros((0, 4)) if boxes_xyxy is None else np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    if not (np.isfinite(pts).all() and np.isfinite(boxes).all()):
        raise PromptError("A prompt has no valid position (NaN coordinate). Delete it and draw it again.")
    for x, y in pts:
        if _point_outside(y, x, hw):
            raise PromptError(_outside_message(y, x, hw))
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        if max(x0, x1) < -0.5 or max(y0, y1) < -0.5 or min(x0, x1) > hw[1] - 0.5 or min(y0, y1) > hw[0] - 0.5:
            raise PromptError(
                f"Box {k + 1} (rows {_fmt(y0)}–{_fmt(y1)}, columns {_fmt(x0)}–{_fmt(x1)}) is completely "
                f"outside the image, which is {_size_text(hw)}. Move or delete that box."
            )


@dataclass(frozen=True)
class ObjectPrompt:
    """The prompt of one object (one mask to decode), SAM order.

    Parameters
    ----------
    point_coords : (N, 2) float32 or None
        ``(x, y)`` points.
    point_labels : (N,) int32 or None
        1 positive, 0 negative.
    box : (4,) float32 or None
        ``(x0, y0, x1, y1)``.
    kind : {"points", "box", "box+points"}
        What the prompt holds (shown in the object table).
    """

    point_coords: np.ndarray | None
    point_labels: np.ndarray | None
    box: np.ndarray | None
    kind: PromptKind

    def decoder_args(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """``(point_coords (1, N, 2), point_labels (1, N), boxes (1, 4))`` for ``PromptableModel.decode``."""
        pc = None if self.point_coords is None else self.point_coords[None].astype(np.float32)
        pl = None if self.point_labels is None else self.point_labels[None].astype(np.int32)
        bx = None if self.box is None else self.box[None].astype(np.float32)
        return pc, pl, bx


class ObjectPrompts(list):
    """A ``list`` of :class:`ObjectPrompt` with ``warnings``: sentences for the user."""

    def __init__(self, items=(), warnings=()):
        super().__init__(items)
        self.warnings: list[str] = list(warnings)


def _point_labels(labels, n: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape == ():
        lab = np.full(n, lab)
    lab = lab.reshape(-1)
    if lab.shape[0] != n:
        raise ValueError(f"{n} points but {lab.shape[0]} labels")
    if lab.dtype == bool:
        return lab.astype(np.int32)
    if lab.size and not np.isin(lab, (0, 1)).all():
        raise PromptError("Point labels must be positive (1) or negative (0).")
    return lab.astype(np.int32)


def points_from_napari(data_rc, labels, image_hw) -> tuple[np.ndarray, np.ndarray]:
    """Convert napari Points data to SAM point prompts.

    Parameters
    ----------
    data_rc : array-like, (N, D) with D >= 2
        Point coordinates already in the image layer's data frame; the last two columns are
        ``(row, col)`` (leading columns, e.g. the z index, are ignored here: the caller selects
        the points of the current plane).
    labels : array-like, (N,) bool or int, or a scalar
        True / 1 = positive, False / 0 = negative.
    image_hw : (int, int)
        ``(H, W)`` of the plane.

    Returns
    -------
    points_xy : (N, 2) float32
        ``(x, y)`` = ``(col, row)``; points within half a pixel of the border are clipped inside.
    point_labels : (N,) int32

    Raises
    ------
    PromptError
        A point is outside the image or has a missing (NaN) coordinate.
    """
    h, w = _check_hw(image_hw)
    data = np.asarray(data_rc, dtype=np.float64)
    if data.size == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.int32)
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2 or data.shape[1] < 2:
        raise ValueError(f"points must be (N, D>=2), got shape {data.shape}")
    rc = data[:, -2:]
    lab = _point_labels(labels, rc.shape[0])
    for r, c in rc:
        if not (np.isfinite(r) and np.isfinite(c)):
            raise PromptError("A point has no valid position (NaN coordinate). Delete it and click again.")
        if _point_outside(r, c, (h, w)):
            raise PromptError(_outside_message(r, c, (h, w)))
    xy = np.empty_like(rc)
    xy[:, 0] = np.clip(rc[:, 1], 0, w - 1)
    xy[:, 1] = np.clip(rc[:, 0], 0, h - 1)
    return xy.astype(np.float32), lab


def boxes_from_napari_rectangles(rects_rc, image_hw) -> np.ndarray:
    """Convert napari Shapes rectangles to SAM boxes.

    Parameters
    ----------
    rects_rc : sequence of (4, D) arrays or an (K, 4, D) array, D >= 2
        Rectangle vertices in the image data frame, last two columns ``(row, col)``. Rotated
        rectangles (or any polygon) become their axis-aligned bounding box.
    image_hw : (int, int)
        ``(H, W)`` of the plane.

    Returns
    -------
    boxes_xyxy : (K, 4) float32
        ``(x0, y0, x1, y1)`` clipped to ``[0, W-1] × [0, H-1]``.

    Raises
    ------
    PromptError
        A box lies completely outside the image, has no area, or has NaN vertices.
    """
    h, w = _check_hw(image_hw)
    out = []
    for k, rect in enumerate(list(rects_rc) if not isinstance(rects_rc, np.ndarray) else rects_rc):
        v = np.asarray(rect, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] < 2 or v.shape[0] < 2:
            raise ValueError(f"rectangle {k} must be (n_vertices, D>=2), got shape {v.shape}")
        rc = v[:, -2:]
        if not np.isfinite(rc).all():
            raise PromptError(f"Box {k + 1} has a missing (NaN) corner. Delete it and draw it again.")
        r0, c0 = rc.min(axis=0)
        r1, c1 = rc.max(axis=0)
        where = f"Box {k + 1} (rows {_fmt(r0)}–{_fmt(r1)}, columns {_fmt(c0)}–{_fmt(c1)})"
        if r1 < -0.5 or c1 < -0.5 or r0 > h - 0.5 or c0 > w - 0.5:
            raise PromptError(
                f"{where} is completely outside the image, which is {_size_text((h, w))}. "
                "Move or delete that box."
            )
        x0, x1 = np.clip([c0, c1], 0, w - 1)
        y0, y1 = np.clip([r0, r1], 0, h - 1)
        if x1 <= x0 or y1 <= y0:
            raise PromptError(f"{where} has no area inside the image. Draw a larger box.")
        out.append((x0, y0, x1, y1))
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


def prompts_from_napari(points_rc=None, point_labels=None, rects_rc=None, image_hw=(0, 0)) -> Prompts:
    """:func:`points_from_napari` and :func:`boxes_from_napari_rectangles` into one :class:`Prompts`."""
    if points_rc is not None and len(points_rc):
        pts, lab = points_from_napari(points_rc, 1 if point_labels is None else point_labels, image_hw)
    else:
        pts, lab = np.zeros((0, 2), np.float32), np.zeros(0, np.int32)
    boxes = (
        boxes_from_napari_rectangles(rects_rc, image_hw)
        if rects_rc is not None and len(rects_rc)
        else np.zeros((0, 4), np.float32)
    )
    return Prompts(pts, lab, boxes)


def prompts_from_sam(points_xy=None, point_labels=None, boxes_xyxy=None, image_hw=(0, 0)) -> Prompts:
    """Prompts given in SAM order (``SamPredictor``'s ``point_coords`` / ``box``), checked like napari's.

    The same checks, clipping and messages as :func:`prompts_from_napari` (points within half a
    pixel of the border are clipped inside, boxes are clipped to the image and must keep an area).

    Parameters
    ----------
    points_xy : (N, 2) array-like, optional
        ``(x, y)`` = ``(col, row)``.
    point_labels : (N,) array-like or scalar, optional
        1 / True positive, 0 / False negative (default: all positive).
    boxes_xyxy : (K, 4) array-like, optional
        ``(x0, y0, x1, y1)``; corners in any order.
    image_hw : (int, int)
        ``(H, W)`` of the plane.
    """
    rc = None if points_xy is None else np.asarray(points_xy, np.float64).reshape(-1, 2)[:, ::-1]
    rects = None
    if boxes_xyxy is not None:
        rects = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)[:, [1, 0, 3, 2]].reshape(-1, 2, 2)
    return prompts_from_napari(rc, point_labels, rects, image_hw)


def _inside(points_xy: np.ndarray, box: np.ndarray) -> np.ndarray:
    x, y = points_xy[:, 0], points_xy[:, 1]
    return (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])


def _object(points, labels, box) -> ObjectPrompt:
    has_pts = points is not None and len(points) > 0
    if box is None:
        return ObjectPrompt(points.copy(), labels.copy(), None, "points")
    if not has_pts:
        return ObjectPrompt(None, None, np.asarray(box, np.float32).copy(), "box")
    return ObjectPrompt(points.copy(), labels.copy(), np.asarray(box, np.float32).copy(), "box+points")


def object_prompts(prompts: Prompts) -> ObjectPrompts:
    """Group prompts into the objects to decode.

    Rules
    -----
    * no prompts → :class:`PromptError`;
    * points only → one ``"points"`` object (needs at least one positive point);
    * one box (with or without points) → one ``"box"`` / ``"box+points"`` object holding every point;
    * several boxes → one object per box; each point goes with the smallest box containing it
      (``"box+points"``); points inside no box are ignored and reported in ``.warnings``.

    Returns
    -------
    ObjectPrompts
        A list of :class:`ObjectPrompt` (box order kept) with a ``warnings`` list of sentences.
    """
    pts, lab, boxes = prompts.points_xy, prompts.point_labels, prompts.boxes_xyxy
    if prompts.is_empty:
        raise PromptError("Add a point or draw a box first: there is nothing to segment yet.")
    if prompts.n_boxes == 0:
        if not (lab == 1).any():
            raise PromptError(
                "Only negative (background) points are set. Add at least one positive point on the object."
            )
        return ObjectPrompts([_object(pts, lab, None)])
    if prompts.n_boxes == 1:
        return ObjectPrompts([_object(pts if pts.size else None, lab if pts.size else None, boxes[0])])
    owner = np.full(pts.shape[0], -1, dtype=np.int64)
    if pts.size:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        inside = np.stack([_inside(pts, b) for b in boxes], axis=1)  # (N, K)
        masked_area = np.where(inside, area[None, :], np.inf)
        owner = np.where(inside.any(axis=1), np.argmin(masked_area, axis=1), -1)
    objects = []
    for k in range(prompts.n_boxes):
        sel = owner == k
        objects.append(_object(pts[sel] if sel.any() else None, lab[sel] if sel.any() else None, boxes[k]))
    warnings = []
    n_out = int((owner < 0).sum())
    if n_out:
        warnings.append(
            f"{n_out} point{'s' if n_out > 1 else ''} outside every box "
            f"{'were' if n_out > 1 else 'was'} ignored: with several boxes, each point refines the box "
            "it lies in."
        )
    return ObjectPrompts(objects, warnings)


def batch_boxes(objects) -> np.ndarray:
    """``(B, 4)`` ``float32`` boxes of objects that are all plain boxes (one batched decoder call).

    Raises
    ------
    ValueError
        An object has points or no box (decode those one by one).
    """
    out = []
    for obj in objects:
        if obj.kind != "box":
            raise ValueError(f"batch_boxes needs plain box prompts, got kind {obj.kind!r}")
        out.append(obj.box)
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)
