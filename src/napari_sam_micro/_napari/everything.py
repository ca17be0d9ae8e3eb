"""The Labels layer everything mode writes: one per image, one plane replaced per run (one undo step).

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

__all__ = ["EVERYTHING_ROLE", "labels_from_result", "find_everything_layer", "write_plane_labels"]

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


def _max_outside_plane(data: np.ndarray, index: tuple[int, ...]) -> int:
    """Largest id of ``data`` outside the 2D plane ``index`` (0 for 2D data)."""
    if not index:
        return 0
    data = np.asarray(data)
    planes = data.reshape(-1, *data.shape[-2:])
    k = int(np.ravel_multi_index(index, data.shape[:-2]))
    top = 0
    if k > 0:
        top = max(top, int(planes[:k].max()))
    if k + 1 < planes.shape[0]:
        top = max(top, int(planes[k + 1 :].max()))
    return top


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
    index = tuple(int(i) for i in index)
    offset = _max_outside_plane(layer.data, index)
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    dtype = np.dtype(layer.data.dtype)
    if np.issubdtype(dtype, np.integer) and offset + top > np.iinfo(dtype).max:
        raise UserInputError(
            f"The labels layer '{layer.name}' ({layer.data.dtype}) cannot hold {offset + top} objects; "
            "delete it so that a new uint32 layer is made."
        )
    new_plane = np.where(labels > 0, labels.astype(np.int64) + offset, 0)
    old_plane = np.asarray(layer.data[index]) if index else np.asarray(layer.data)
    changed = np.nonzero(old_plane != new_plane)
    if changed[0].size:
        lead = tuple(np.full(changed[0].size, i, dtype=np.intp) for i in index)
        with layer.block_history():
            layer.data_setitem(lead + changed, new_plane[changed].astype(layer.data.dtype))
    rows = dict(table)
    rows["index"] = [int(i) + offset for i in table["index"]]
    set_object_table(layer, rows, merge=True, keep_only_present=True)
    return np.asarray(rows["index"], dtype=np.int64)
