"""npe2 writers for Labels layers: TIFF, 16-bit PNG and NumPy, each with the object table as CSV.

napari calls these with ``(path, data, meta)`` when a Labels layer is saved with
``File > Save Selected Layers…`` (choosing "SAM Micro labels …") or
``viewer.layers.save(path, plugin="napari-sam-micro")``. ``meta`` is the layer state; its
``"features"`` (the per-object table: id, area, predicted IoU, stability, prompt, bounding box) is
written as ``<path stem>.csv`` beside the image, and the layer's name, scale, translate and this
plugin's metadata as ``<path stem>.sam-micro.json`` (:func:`layer_info`; what
:mod:`napari_sam_micro._napari.reader` restores), by :func:`napari_sam_micro.core.export.write_labels`,
which also chooses the integer type (TIFF ``uint16``, or ``uint32`` when ids exceed 65535,
compressed), writes atomically (never a half-written file) and refuses PNG for non-2D labels.

A refusal is raised as :class:`SaveRefusedError`, which is **not** a ``ValueError``: npe2 treats a
writer's ``ValueError`` as "this writer does not apply", so a scripted
``viewer.layers.save(..., plugin="napari-sam-micro")`` would return ``[]`` with only a vague
warning and the user would never learn why nothing was saved. Other exceptions reach the caller
(a script sees the message; *File → Save* shows it as a napari notification).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .features import frame_to_table, table_to_frame

__all__ = [
    "SaveRefusedError",
    "write_labels_tiff",
    "write_labels_png",
    "write_labels_npy",
    "layer_table",
    "layer_info",
]


class SaveRefusedError(OSError):
    """The labels cannot be saved as asked (e.g. 3D labels as PNG); ``str(err)`` says why and what to do.

    An ``OSError`` like napari's own "save failed" error, and deliberately not a ``ValueError``
    (which npe2 silently swallows, see the module docstring).
    """


def layer_table(meta: dict) -> dict[str, np.ndarray] | None:
    """The object table in a layer's ``meta`` (``meta["features"]``) as ``core``'s column dict.

    Returns None when there is no table (no features, or features without an ``"index"`` column
    that napari fills in for plain layers).
    """
    features = (meta or {}).get("features")
    if features is None or len(features) == 0 or "index" not in features:
        return None
    return frame_to_table(table_to_frame(features))


def layer_info(meta: dict, has_table: bool, target: Path | None = None) -> dict | None:
    """What the reader needs to restore the layer besides its data and table, or None.

    ``{"name", "scale", "translate", "metadata": {META_KEY: ...}}`` for a layer of this plugin
    (its metadata has :data:`~napari_sam_micro._napari.layers.META_KEY`), one with an object
    table, or any layer saved over a ``target`` that has this plugin's JSON beside it (replaced,
    so that it does not describe the old save); None otherwise (nothing is written beside a
    plain layer's image).
    """
    from ..core.export import read_layer_info
    from .layers import META_KEY

    meta = meta or {}
    ours = (meta.get("metadata") or {}).get(META_KEY)
    if not isinstance(ours, dict) and not has_table and (target is None or read_layer_info(target) is None):
        return None
    info: dict[str, Any] = {"name": str(meta.get("name", ""))}
    for key in ("scale", "translate"):
        if meta.get(key) is not None:
            info[key] = [float(v) for v in np.asarray(meta[key], dtype=np.float64).ravel()]
    info["metadata"] = {META_KEY: dict(ours)} if isinstance(ours, dict) else {}
    return info


def _labels_array(data: Any) -> np.ndarray:
    if isinstance(data, (list, tuple)):  # multiscale: full resolution only
        data = data[0]
    return np.asarray(data)


def _write(path: str, data: Any, meta: dict, suffixes: tuple[str, ...]) -> list[str]:
    from ..core.errors import UserInputError
    from ..core.export import write_labels

    target = Path(path)
    if target.suffix.lower() not in suffixes:
        target = target.with_name(target.name + suffixes[0])
    try:
        table = layer_table(meta)
        written = write_labels(target, _labels_array(data), table=table, layer_info=layer_info(meta, table is not None, target))
    except UserInputError as err:
        raise SaveRefusedError(f"Nothing was saved to {target}: {err}") from err
    if written is None:
        written = [target]
    elif isinstance(written, (str, Path)):
        written = [written]
    return [str(p) for p in written]


def write_labels_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """Write labels as a compressed TIFF (+ CSV object table); returns the paths written."""
    return _write(path, data, meta, (".tif", ".tiff"))


def write_labels_png(path: str, data: Any, meta: dict) -> list[str]:
    """Write 2D labels as a 16-bit PNG (+ CSV object table); returns the paths written."""
    return _write(path, data, meta, (".png",))


def write_labels_npy(path: str, data: Any, meta: dict) -> list[str]:
    """Write labels as a NumPy ``.npy`` file (+ CSV object table); returns the paths written."""
    return _write(path, data, meta, (".npy",))
