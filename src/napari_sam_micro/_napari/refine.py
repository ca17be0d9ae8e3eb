"""Refine existing labels in napari: the labels plane, the user's clicks, the preview, the commit.

The refinement itself is :func:`napari_sam_micro.core.refine.refine_objects_job` (through
:func:`~napari_sam_micro.plane_jobs.refine_job`); this module reads what it needs
from layers and writes what the user accepted:

* :func:`labels_plane` — the ``(H, W)`` plane of a Labels layer at the image's plane index;
* :func:`selected_ids` — which objects to refine (typed ids, else the layer's ``selected_label``);
* :func:`plane_clicks` — the user's extra clicks (a Points layer, ``positive`` feature) per object;
* :func:`show_refinement` — the proposed masks in a preview Labels layer (contours over the old ones);
* :func:`commit_refinements` — the accepted objects written with ``Labels.data_setitem`` inside
  ``block_history`` (one Ctrl+Z), their rows updated in ``layer.features`` (prompt ``"refine"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.errors import ImageError, UserInputError
from ..core.labels import object_row
from ..core.refine import ObjectClicks, RefinedObject, assign_clicks, refinement_edits
from .commit import _roll_back, check_writable
from .features import merge_object_rows
from .layers import META_KEY, layer_meta

__all__ = [
    "REFINE_PREVIEW_ROLE",
    "labels_plane",
    "parse_ids",
    "selected_ids",
    "plane_clicks",
    "show_refinement",
    "clear_refinement",
    "commit_refinements",
]

#: ``layer.metadata["napari_sam_micro"]["role"]`` of the preview layer.
REFINE_PREVIEW_ROLE = "refine-preview"


def labels_plane(layer, index: tuple[int, ...], hw: tuple[int, int]) -> np.ndarray:
    """The ``(H, W)`` plane of a Labels layer at ``index`` (a copy).

    Raises
    ------
    ImageError
        The layer's planes are not ``hw`` or it has another number of leading axes.
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(data.shape)
    if shape[-2:] != tuple(hw) or len(shape) - 2 != len(index):
        raise ImageError(
            f"The labels layer '{layer.name}' (shape {shape}) does not match the image plane "
            f"({hw[1]} x {hw[0]} pixels{', plane ' + str(index) if index else ''}): choose the labels of this image."
        )
    return np.array(data[tuple(index)] if index else data, copy=True)


def parse_ids(text: str) -> list[int] | None:
    """Ids typed by the user (``"3, 7 12"``); None for an empty text. Raises UserInputError."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    if not parts:
        return None
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise UserInputError(f"Object ids must be whole numbers separated by commas (e.g. 3, 7, 12), not '{text}'.") from None
    if any(i <= 0 for i in ids):
        raise UserInputError("Object ids are positive numbers (0 is the background).")
    return ids


def selected_ids(layer, typed: str = "") -> list[int]:
    """The objects the user chose: typed ids, else the layer's selected label (e.g. from the Objects table)."""
    ids = parse_ids(typed)
    if ids is not None:
        return ids
    chosen = int(getattr(layer, "selected_label", 0) or 0)
    if chosen <= 0:
        raise UserInputError("Select an object first (click it in the Objects table, or type its id).")
    return [chosen]


def plane_clicks(points_layer, labels: np.ndarray, index: tuple[int, ...]) -> dict[int, ObjectClicks]:
    """The clicks of ``points_layer`` on plane ``index``, attached to the objects of ``labels``.

    Points are in the layer's data frame (same frame as the labels); a ``positive`` feature
    (False = negative) is honoured, every point is positive without it.
    """
    if points_layer is None or not len(points_layer.data):
        return {}
    data = np.asarray(points_layer.data, np.float64)
    on_plane = np.ones(len(data), bool)
    for axis, i in enumerate(index):
        if data.shape[1] - 2 > axis:
            on_plane &= np.round(data[:, axis]) == i
    feats = getattr(points_layer, "features", None)
    positive = np.ones(len(data), bool)
    if feats is not None and "positive" in feats:
        positive = np.asarray(feats["positive"], bool)
    return assign_clicks(labels, data[on_plane, -2:], positive[on_plane])


def _preview_layer(viewer, labels_layer):
    for layer in viewer.layers:
        meta = layer_meta(layer)
        if meta.get("role") == REFINE_PREVIEW_ROLE and meta.get("labels") == labels_layer.name and layer.data.shape == labels_layer.data.shape:
            return layer
    return viewer.add_labels(
        np.zeros(labels_layer.data.shape, dtype=np.uint32),
        name=f"{labels_layer.name} [SAM refine preview]",
        scale=labels_layer.scale,
        translate=labels_layer.translate,
        metadata={META_KEY: {"role": REFINE_PREVIEW_ROLE, "labels": labels_layer.name}},
        opacity=1.0,
        blending="translucent",
    )


def show_refinement(viewer, labels_layer, index: tuple[int, ...], refined: Sequence[RefinedObject]):
    """Draw the proposed masks (each with its object's id) as contours in a preview layer; returns it."""
    layer = _preview_layer(viewer, labels_layer)
    plane = np.zeros(labels_layer.data.shape[-2:], dtype=layer.data.dtype)
    for obj in refined:
        r, c = obj.new.offset
        h, w = obj.new.crop.shape
        plane[r : r + h, c : c + w][obj.new.crop] = obj.label_id
    layer.data[...] = 0
    if index:
        layer.data[tuple(index)] = plane
    else:
        layer.data[...] = plane
    layer.contour = 2
    layer.refresh()
    return layer


def clear_refinement(viewer, labels_layer) -> None:
    """Remove the preview layer of ``labels_layer`` (if any)."""
    for layer in list(viewer.layers):
        meta = layer_meta(layer)
        if meta.get("role") == REFINE_PREVIEW_ROLE and meta.get("labels") == labels_layer.name:
            viewer.layers.remove(layer)


def commit_refinements(layer, index: tuple[int, ...], refined: Sequence[RefinedObject], overwrite: bool = False) -> list[int]:
    """Write accepted refinements into ``layer`` as one undo step; returns the ids changed.

    Old pixels an object loses become background, its new pixels take its id (on background and
    its own pixels only, unless ``overwrite``). The objects' rows in ``layer.features`` get their
    new area, box, predicted IoU and stability (prompt ``"refine"``).

    Raises
    ------
    ImageError
        The layer cannot be painted, or the write failed (the layer is then rolled back).
    """
    check_writable(layer)
    hw = tuple(layer.data.shape[-2:])
    plane = labels_plane(layer, index, hw)
    edits = refinement_edits(plane, refined, overwrite)
    if not edits:
        return []
    lead = tuple(int(i) for i in index)
    try:
        with layer.block_history():
            for k, (value, rr, cc) in enumerate(edits):
                indices = (*(np.full(rr.shape, i, np.intp) for i in lead), rr, cc)
                layer.data_setitem(indices, value, refresh=k == len(edits) - 1)
    except Exception as err:  # whatever the array refused: leave the layer as it was, and say so
        _roll_back(layer)
        raise ImageError(
            f"The refined objects could not be written into the labels layer '{layer.name}' "
            f"({type(err).__name__}: {err}); the layer was left unchanged."
        ) from err
    changed = sorted({obj.label_id for obj in refined if obj.new.bbox() is not None})
    after = labels_plane(layer, index, hw)
    rows = []
    for obj in refined:
        if obj.label_id not in changed:
            continue
        row = object_row(obj.label_id, after == obj.label_id, obj.new.predicted_iou, obj.new.stability, "refine")
        if row["area"]:
            rows.append(row)
    gone = [i for i in changed if not (after == i).any()]
    layer.features = merge_object_rows(layer.features, rows, drop=gone)
    return changed
