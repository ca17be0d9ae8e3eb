"""Write committed objects into a napari Labels layer: undoable, with the object table in ``features``.

Pixels are written with :meth:`napari.layers.Labels.data_setitem` inside
:meth:`~napari.layers.Labels.block_history`, so one Ctrl+Z (``layer.undo()``) removes all objects
of one commit. Rows (:data:`~napari_sam_micro.core.labels.OBJECT_COLUMNS`) are merged into
``layer.features`` by label id. After an undo the rows of vanished objects stay in ``features``
until the next commit drops them; :func:`~napari_sam_micro._napari.features.read_object_table`
(the objects table) only lists objects present in the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.errors import ImageError
from .features import merge_object_rows

__all__ = ["commit_items", "present_ids"]


def present_ids(layer, ids: Sequence[int]) -> set[int]:
    """Those of ``ids`` that occur in ``layer.data`` (cheap for a few ids)."""
    ids = [int(i) for i in ids]
    if not ids:
        return set()
    found = np.isin(np.asarray(ids), np.unique(np.asarray(layer.data)))
    return {i for i, f in zip(ids, found) if f}


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
        The layer is not editable / indices do not fit its shape (nothing is written then).
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
    with layer.block_history():
        for k, item in enumerate(items):
            layer.data_setitem(item.indices, int(item.label_id), refresh=k == len(items) - 1)
    stale = [int(i) for i in layer.features["index"]] if "index" in layer.features else []
    gone = set(stale) - present_ids(layer, stale) if stale else set()
    layer.features = merge_object_rows(layer.features, [item.row for item in items], drop=gone)
    return [int(item.label_id) for item in items]
