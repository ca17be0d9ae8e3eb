"""The Labels layer everything mode writes: one per image, one plane (or one stack) replaced per run (one undo step).

Ids never overlap between planes (a plane's objects are shifted above every id used in the other
planes); where masks overlap the higher predicted IoU wins; ``layer.features`` holds the object
table (:mod:`napari_sam_micro._napari.features`).
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels

from ..core.automatic import labels_from_result
from ..core.errors import UserInputError
from .features import set_object_table
from .layers import layer_meta

__all__ = [
    "EVERYTHING_ROLE", "labels_from_result", "find_everything_layer", "write_plane_labels", "write_region_labels",
    "write_stack_labels",
]

#: ``layer.metadata["napari_sam_micro"]["role"]`` of the layer everything mode writes.
EVERYTHING_ROLE = "everything"


def find_everything_layer(viewer, image_name: str, shape: tuple[int, ...]) -> Labels | None:
    """The Labels layer everything mode made for ``image_name`` with data ``shape``, or None."""
    for layer in viewer.layers:
        meta = layer_meta(layer)
        if (
            isinstance(layer, Labels)
            and meta.get("role") == EVERYTHING_ROLE
            and meta.get("image") == image_name
            and tuple(layer.data.shape) == tuple(shape)
        ):
            return layer
    return None


def _max_outside(data: np.ndarray, region: tuple) -> int:
    """Largest id of ``data`` outside ``data[region]`` (0 when the region is all of it)."""
    data = np.asarray(data)
    lead = data.shape[: len(region)]
    outside = np.ones(lead, bool)
    outside[region] = False
    if not outside.any() or data.size == 0:
        return 0
    # one max per leading-axes plane (a view, no copy of the layer: this runs on every re-filter)
    per_plane = data.reshape(*lead, -1).max(axis=-1)
    return int(per_plane[outside].max())


def write_plane_labels(layer: Labels, index: tuple[int, ...], labels: np.ndarray, table: dict) -> np.ndarray:
    """Replace the objects of one 2D plane of ``layer`` by ``labels`` (one undo step) and their rows.

    Parameters
    ----------
    layer : napari.layers.Labels
        ``(..., H, W)`` layer.
    index : tuple of int
        Plane along the leading axes (``()`` for 2D).
    labels : (H, W) int
        New objects, ids ``1..K``; shifted above every id used in other planes so ids stay unique.
    table : dict of str to list
        Object rows of ``labels`` (``"index"`` = the unshifted ids).

    Returns
    -------
    np.ndarray
        The ids written into the layer.
    """
    return write_region_labels(layer, tuple(int(i) for i in index), labels, table)


def write_stack_labels(layer: Labels, index: tuple[int, ...], axis: int, labels: np.ndarray, table: dict) -> np.ndarray:
    """Replace the objects of a whole stack of planes along ``axis`` (one undo step) and their rows.

    Parameters
    ----------
    layer : napari.layers.Labels
        ``(..., H, W)`` layer with at least one leading axis.
    index : tuple of int
        The displayed plane along the leading axes; every leading axis but ``axis`` stays there.
    axis : int
        Leading axis of the stack (``0 <= axis < len(index)``).
    labels : (N, H, W) int
        Objects of the stack (N = the layer's length along ``axis``), ids ``1..K`` unique over the
        stack; shifted above every id used outside it.
    table : dict of str to list
        Object rows of ``labels``.

    Returns
    -------
    np.ndarray
        The ids written into the layer.
    """
    region = tuple(slice(None) if a == axis else int(i) for a, i in enumerate(index))
    return write_region_labels(layer, region, labels, table)


def write_region_labels(layer: Labels, region: tuple, labels: np.ndarray, table: dict) -> np.ndarray:
    """Replace the objects of ``layer.data[region]`` by ``labels`` (one undo step) and their rows.

    ``region`` indexes the leading axes with ints (a fixed plane) and at most one ``slice(None)``
    (a whole stack axis); ``labels`` has the region's shape. Ids are shifted above every id used
    outside the region, so they stay unique in the layer.
    """
    offset = _max_outside(layer.data, region)
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    dtype = np.dtype(layer.data.dtype)
    if np.issubdtype(dtype, np.integer) and offset + top > np.iinfo(dtype).max:
        raise UserInputError(
            f"The labels layer '{layer.name}' ({layer.data.dtype}) cannot hold {offset + top} objects; "
            "delete it so that a new uint32 layer is made."
        )
    new = np.where(labels > 0, labels.astype(np.int64) + offset, 0)
    old = np.asarray(layer.data[region]) if region else np.asarray(layer.data)
    if old.shape != new.shape:
        raise UserInputError(f"The labels ({new.shape}) do not fit the layer's region ({old.shape}).")
    changed = np.nonzero(old != new)
    if changed[0].size:
        # full coordinates: fixed leading axes as constants, the region's own axes from `changed`
        free = iter(changed)
        coords = tuple(np.full(changed[0].size, r, np.intp) if not isinstance(r, slice) else next(free) for r in region)
        with layer.block_history():
            layer.data_setitem(coords + tuple(free), new[changed].astype(layer.data.dtype))
    rows = dict(table)
    rows["index"] = [int(i) + offset for i in table["index"]]
    set_object_table(layer, rows, merge=True, keep_only_present=True)
    return np.asarray(rows["index"], dtype=np.int64)
