"""Write committed objects into a napari Labels layer: undoable, with the object table in ``features``.

Pixels are written with :meth:`napari.layers.Labels.data_setitem` inside
:meth:`~napari.layers.Labels.block_history`, so one Ctrl+Z (``layer.undo()``) removes all objects
of one commit. Rows (:data:`~napari_sam_micro.core.labels.OBJECT_COLUMNS`) are merged into
``layer.features`` by label id. After an undo the rows of vanished objects stay in ``features``
until the next commit drops them; :func:`~napari_sam_micro._napari.features.read_object_table`
(the objects table) only lists objects present in the data.

A layer that cannot be painted (read-only array, lazy dask array, multiscale pyramid) is refused
before anything is planned (:func:`check_writable`), with a message saying what to do. A write
that fails half-way (a store that refuses it, a full disk under a memory-mapped array) is rolled
back: the pixels already written get their old values, no undo step is left staged, and an
:class:`~napari_sam_micro.core.errors.ImageError` says the layer is unchanged.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import ImageError
from .features import merge_object_rows, present_ids

__all__ = ["check_writable", "commit_items", "present_ids"]


def check_writable(layer) -> None:
    """Raise :class:`ImageError` when the objects cannot be painted into ``layer`` (nothing is read).

    Raises
    ------
    ImageError
        Multiscale labels, a lazy (dask) array, or a read-only array.
    """
    how = (
        "Add an empty labels layer for the result (Layers > New Labels Layer, or let the annotator "
        "create one), or load the labels into memory first."
    )
    if getattr(layer, "multiscale", False):
        raise ImageError(f"The labels layer '{layer.name}' is a multiscale pyramid, which cannot be painted. {how}")
    data = layer.data
    if type(data).__module__.split(".")[0] == "dask":
        raise ImageError(
            f"The labels layer '{layer.name}' is read lazily from disk (a dask array), so objects cannot be "
            f"written into it. {how}"
        )
    base = data if isinstance(data, np.ndarray) else getattr(data, "data", None)
    if isinstance(base, np.ndarray) and not base.flags.writeable:
        raise ImageError(f"The labels layer '{layer.name}' is read-only, so objects cannot be written into it. {how}")


def _roll_back(layer) -> None:
    """Undo the writes staged by a failed ``block_history`` and drop them, so no stale undo step remains."""
    staged = list(getattr(layer, "_staged_history", None) or [])  # napari's pending undo atoms
    for indices, old, _new in reversed(staged):
        try:
            layer.data[indices] = old
        except Exception:  # noqa: BLE001 - it never was written then
            pass
    if hasattr(layer, "_staged_history"):
        layer._staged_history = []
    try:
        layer.refresh()
    except Exception:  # noqa: BLE001 - a layer that cannot redraw is still rolled back
        pass


def commit_items(layer, items) -> list[int]:
    """Paint ``items`` (:class:`~napari_sam_micro.session.CommitItem`) into ``layer`` as one undo step.

    Parameters
    ----------
    layer : napari.layers.Labels
        The output layer (its data must have the shape the items were planned for).
    items : sequence of CommitItem
        From :meth:`~napari_sam_micro.session.AnnotationSession.commit_plan`.

    Returns
    -------
    list of int
        The label ids written.

    Raises
    ------
    ImageError
        The layer cannot be painted (:func:`check_writable`), the indices do not fit its shape, or
        the write failed (the layer is then rolled back: nothing is written, no undo step added).
    """
    items = list(items)
    if not items:
        return []
    shape = tuple(layer.data.shape)
    for item in items:
        if len(item.indices) != len(shape):
            raise ImageError(
                f"The labels layer '{layer.name}' has {len(shape)} dimensions but the objects were planned "
                f"for {len(item.indices)}. Choose the labels layer made for this image."
            )
        for axis, idx in enumerate(item.indices):
            if idx.size and (idx.min() < 0 or idx.max() >= shape[axis]):
                raise ImageError(f"The objects do not fit the labels layer '{layer.name}' (shape {shape}).")
    check_writable(layer)
    try:
        with layer.block_history():
            for k, item in enumerate(items):
                layer.data_setitem(item.indices, int(item.label_id), refresh=k == len(items) - 1)
    except Exception as err:  # whatever the array refused: leave the layer as it was, and say so
        _roll_back(layer)
        raise ImageError(
            f"The objects could not be written into the labels layer '{layer.name}' ({type(err).__name__}: {err}); "
            "the layer was left unchanged. Add an empty labels layer for the result and commit again."
        ) from err
    stale = [int(i) for i in layer.features["index"]] if "index" in layer.features else []
    gone = set(stale) - present_ids(layer, stale) if stale else set()
    layer.features = merge_object_rows(layer.features, [item.row for item in items], drop=gone)
    return [int(item.label_id) for item in items]
