"""What committing previewed objects into a labels array paints: new ids, kept labels, table rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import ImageError, PromptError, UserInputError
from .labels import next_free_id, object_row

__all__ = ["CommitItem", "plan_commit"]


@dataclass(frozen=True, eq=False)
class CommitItem:
    """One object to write into a labels array.

    Parameters
    ----------
    indices : tuple of (P,) intp arrays
        One per labels axis (leading plane indices, rows, cols): for ``Labels.data_setitem``.
    label_id : int
    row : dict
        Object-table row (:data:`~napari_sam_micro.core.labels.OBJECT_COLUMNS`).
    object_index : int
        Position of the object in the prediction.
    """

    indices: tuple
    label_id: int
    row: dict = field(default_factory=dict)
    object_index: int = 0


def _first_free_id(labels) -> int:
    if isinstance(labels, np.ndarray):
        return next_free_id(labels)
    # lazy arrays reduce chunk by chunk (dask), else plane by plane
    top = labels.max() if hasattr(labels, "max") else max((np.asarray(p).max() for p in labels), default=0)
    return max(int(top.compute() if hasattr(top, "compute") else top), 0) + 1


def _check_shapes(objects, labels, leading: tuple) -> None:
    if len(leading) != labels.ndim - 2:
        raise ValueError(f"labels of shape {labels.shape} need {labels.ndim - 2} leading indices, got {leading}")
    hw = tuple(int(s) for s in labels.shape[-2:])
    image_hw = objects[0].plane_hw
    if hw != image_hw:
        raise ImageError(f"The labels layer plane is {hw[1]} × {hw[0]} pixels but the image is {image_hw[1]} × {image_hw[0]}.")


def plan_commit(objects: Sequence, labels, overwrite: bool = False, leading: Sequence[int] = ()) -> list[CommitItem]:
    """What committing ``objects`` into ``labels`` would paint (``labels`` is not modified).

    Object ``k`` gets id ``next_free_id(labels) + k``. Without ``overwrite`` only background pixels
    are painted (objects committed together do not overwrite each other either); objects left with
    no pixel are skipped. Only the region the masks touch is read (a lazy volume is never loaded
    whole).

    Parameters
    ----------
    objects : sequence of ObjectPreview
        From a :class:`~napari_sam_micro.session.Prediction` (``.region()``, ``.bbox()``,
        ``.plane_hw``, ``predicted_iou``, ``stability``, ``kind``).
    labels : array-like
        ``(..., H, W)`` integer labels (numpy, dask, zarr).
    overwrite : bool
        Paint over existing labels.
    leading : tuple of int
        Plane index along the leading axes of ``labels``.

    Raises
    ------
    PromptError
        Nothing to commit.
    ImageError
        The labels' plane is not the image's size.
    UserInputError
        The labels' dtype cannot hold the next id.
    """
    if not objects:
        raise PromptError("There is no mask to commit: add a point or a box first.")
    leading = tuple(int(i) for i in leading)
    _check_shapes(objects, labels, leading)
    boxes = [b for b in (obj.bbox() for obj in objects) if b is not None]
    r0, c0 = (min(b[0] for b in boxes), min(b[1] for b in boxes)) if boxes else (0, 0)
    r1, c1 = (max(b[2] for b in boxes), max(b[3] for b in boxes)) if boxes else (0, 0)
    plane = np.array(labels[(*leading, slice(r0, r1), slice(c0, c1))], copy=True)
    next_id = _first_free_id(labels)
    items = []
    for k, obj in enumerate(objects):
        mask = obj.region(r0, r1, c0, c1)  # masks in that region only: no whole-plane array per object
        sel = mask if overwrite else mask & (plane == 0)
        if not sel.any():
            continue
        if np.issubdtype(labels.dtype, np.integer) and next_id > np.iinfo(labels.dtype).max:
            raise UserInputError(
                f"The labels layer is full: its data type ({labels.dtype}) cannot hold label {next_id}. "
                "Convert it to a larger type (e.g. uint32) to add more objects."
            )
        plane[sel] = next_id
        rr, cc = np.nonzero(sel)
        rr, cc = rr + r0, cc + c0
        indices = (*(np.full(rr.shape, i, dtype=np.intp) for i in leading), rr.astype(np.intp), cc.astype(np.intp))
        row = object_row(next_id, sel, obj.predicted_iou, obj.stability, obj.kind)
        for key, shift in (("bbox_y0", r0), ("bbox_x0", c0), ("bbox_y1", r0), ("bbox_x1", c0)):
            row[key] += shift  # region frame → plane
        items.append(CommitItem(indices=indices, label_id=next_id, row=row, object_index=k))
        next_id += 1
    return items
