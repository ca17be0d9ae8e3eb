"""Label bookkeeping: free ids, pixels to paint, the per-object table.

The object table is a ``dict[str, list]`` with the columns :data:`OBJECT_COLUMNS`; ``"index"``
is the label id (napari's convention for ``Labels.features``). The ``_napari`` layer turns it
into a pandas DataFrame for ``Labels.features``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .errors import UserInputError

__all__ = [
    "OBJECT_COLUMNS",
    "next_free_id",
    "paint_indices",
    "object_row",
    "empty_table",
    "merge_rows",
    "remove_rows",
    "instance_labels_from_masks",
    "label_bbox",
]

#: Columns of the per-object table, in order. Boxes are ``[y0, y1)`` × ``[x0, x1)`` in pixels.
OBJECT_COLUMNS = (
    "index",
    "area",
    "predicted_iou",
    "stability_score",
    "prompt",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
)


def next_free_id(labels) -> int:
    """``max(labels) + 1`` (1 for an empty or all-background array).

    Raises
    ------
    UserInputError
        The next id does not fit the array's integer dtype (e.g. a ``uint8`` layer with 255 objects).
    """
    arr = np.asarray(labels)
    top = int(arr.max()) if arr.size else 0
    nxt = max(top, 0) + 1
    if np.issubdtype(arr.dtype, np.integer) and nxt > np.iinfo(arr.dtype).max:
        raise UserInputError(
            f"The labels layer is full: its data type ({arr.dtype}) cannot hold label {nxt}. "
            "Convert it to a larger type (e.g. uint32) to add more objects."
        )
    return nxt


def paint_indices(labels, mask: np.ndarray, overwrite: bool = False, leading: Sequence[int] = ()) -> tuple:
    """Pixels to set when committing ``mask`` to ``labels``.

    Parameters
    ----------
    labels : np.ndarray
        Labels array, ``(H, W)`` or ``(..., H, W)``.
    mask : (H, W) bool
        The new object on one plane.
    overwrite : bool
        False: only background (0) pixels are painted, existing objects are kept.
    leading : tuple of int
        Index of the plane along the leading axes (``labels.ndim - 2`` entries; ``()`` for 2D).

    Returns
    -------
    tuple of np.ndarray
        One ``intp`` array per axis of ``labels`` (leading axes filled with their constant index),
        ready for ``Labels.data_setitem(indices, label_id)`` (undoable) or ``labels[indices] = id``.
    """
    mask = np.asarray(mask, dtype=bool)
    leading = tuple(int(i) for i in leading)
    shape = tuple(labels.shape)
    if len(leading) != len(shape) - 2:
        raise ValueError(f"labels of shape {shape} need {len(shape) - 2} leading indices, got {leading}")
    if mask.shape != shape[-2:]:
        raise ValueError(f"mask shape {mask.shape} does not match the labels plane {shape[-2:]}")
    sel = mask
    if not overwrite:
        plane = np.asarray(labels[leading]) if leading else np.asarray(labels)
        sel = mask & (plane == 0)
    rr, cc = np.nonzero(sel)
    rr = rr.astype(np.intp)
    cc = cc.astype(np.intp)
    lead = tuple(np.full(rr.shape, i, dtype=np.intp) for i in leading)
    return (*lead, rr, cc)


def label_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)`` half-open bounding box of a 2D mask; ``(-1, -1, -1, -1)`` when empty."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (-1, -1, -1, -1)
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def object_row(
    label_id: int,
    mask: np.ndarray,
    predicted_iou: float = float("nan"),
    stability: float = float("nan"),
    prompt_kind: str = "",
) -> dict:
    """One row of the object table.

    Parameters
    ----------
    label_id : int
    mask : (H, W) bool
        The object's pixels (as committed).
    predicted_iou, stability : float
        The model's IoU prediction and the stability score of the mask (NaN when unknown, e.g.
        for manually painted objects).
    prompt_kind : str
        ``"points"``, ``"box"``, ``"box+points"``, ``"everything"`` …

    Returns
    -------
    dict
        Keys :data:`OBJECT_COLUMNS`; python scalars.
    """
    mask = np.asarray(mask, dtype=bool)
    y0, x0, y1, x1 = label_bbox(mask)
    return {
        "index": int(label_id),
        "area": int(np.count_nonzero(mask)),
        "predicted_iou": float(predicted_iou),
        "stability_score": float(stability),
        "prompt": str(prompt_kind),
        "bbox_y0": y0,
        "bbox_x0": x0,
        "bbox_y1": y1,
        "bbox_x1": x1,
    }


def empty_table() -> dict[str, list]:
    """A table with the :data:`OBJECT_COLUMNS` and no rows."""
    return {c: [] for c in OBJECT_COLUMNS}


def _columns(table: Mapping[str, Sequence], rows: Iterable[Mapping]) -> list[str]:
    cols = list(OBJECT_COLUMNS)
    for source in (table.keys(), *(r.keys() for r in rows)):
        for c in source:
            if c not in cols:
                cols.append(c)
    return cols


def merge_rows(table: Mapping[str, Sequence], rows: Iterable[Mapping]) -> dict[str, list]:
    """Insert or replace rows (matched on ``"index"``); returns a new table, ``table`` is unchanged.

    Rows with an existing index replace that row in place; new ones are appended in the given
    order. Columns missing from a row or from the old table are filled with ``None``; extra
    columns are kept after :data:`OBJECT_COLUMNS`.
    """
    rows = [dict(r) for r in rows]
    cols = _columns(table, rows)
    n_old = len(table.get("index", [])) if table else 0
    old_rows = [{c: (table[c][i] if c in table else None) for c in cols} for i in range(n_old)]
    position = {int(r["index"]): k for k, r in enumerate(old_rows)}
    for r in rows:
        full = {c: r.get(c) for c in cols}
        key = int(r["index"])
        if key in position:
            old_rows[position[key]] = full
        else:
            position[key] = len(old_rows)
            old_rows.append(full)
    return {c: [r[c] for r in old_rows] for c in cols}


def remove_rows(table: Mapping[str, Sequence], label_ids: Iterable[int]) -> dict[str, list]:
    """A new table without the rows whose ``"index"`` is in ``label_ids``."""
    drop = {int(i) for i in label_ids}
    keep = [k for k, i in enumerate(table.get("index", [])) if int(i) not in drop]
    out = {}
    for c, v in table.items():
        vals = list(v)
        out[c] = [vals[k] for k in keep]
    return out


def instance_labels_from_masks(
    masks, scores: Sequence[float], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Paint overlapping masks into one non-overlapping label image.

    Parameters
    ----------
    masks : (N, H, W) bool array or sequence of (H, W) bool
        Candidate masks.
    scores : (N,) float
        Higher score wins where masks overlap.
    shape : (H, W)

    Returns
    -------
    labels : (H, W) uint32
        Mask ``i`` gets id ``i + 1`` (so ids map back to ``masks`` / ``scores``).
    kept_ids : (K,) int64
        Ids that still have pixels (a mask fully covered by better ones disappears), ascending.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(masks)
    if scores.size != n:
        raise ValueError(f"{n} masks but {scores.size} scores")
    labels = np.zeros(tuple(shape), dtype=np.uint32)
    for i in np.argsort(-scores, kind="stable"):
        m = np.asarray(masks[i], dtype=bool)
        if m.shape != labels.shape:
            raise ValueError(f"mask {i} has shape {m.shape}, expected {tuple(shape)}")
        labels[m & (labels == 0)] = i + 1
    present = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return labels, (np.flatnonzero(present) + 1).astype(np.int64)
