"""npe2 reader: re-open a label image saved by this plugin as a Labels layer with its object table.

A file is this plugin's when, beside ``<stem>.tif`` / ``.tiff`` / ``.png`` / ``.npy``, there is

* ``<stem>.sam-micro.json`` whose ``"format"`` is
  :data:`napari_sam_micro.core.export.LAYER_FORMAT` (written by the plugin's writers, see
  :mod:`napari_sam_micro._napari.writer`): the layer's name, scale, translate and the plugin's
  metadata (role, image) are restored; or
* only ``<stem>.csv`` with the plugin's object columns (``index``, ``predicted_iou``,
  ``stability_score``; files saved before the JSON existed): the layer is named after the file.

The CSV becomes the layer's ``features`` (predicted IoU, stability, prompt, bounding box ... per
label id). The JSON records the SHA-256 of the CSV saved with the image: a CSV left from an earlier
save (the image was saved again without a table) is not attached, one edited since is attached
with a warning. For any other file :func:`get_reader` returns None, so napari's own readers take it.

A damaged or mismatched table never stops the labels from opening: the problem is reported as a
:class:`LabelsTableWarning` (napari shows it as a notification) and the layer opens without the
rows that cannot be trusted. A label image that cannot be decoded raises
:class:`~napari_sam_micro.core.errors.UserInputError` naming the file.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.export import SUFFIXES, read_labels, read_layer_info, read_table, table_digest, table_path
from .layers import META_KEY

__all__ = ["get_reader", "read_labels_layer", "is_plugin_labels", "LabelsTableWarning", "TABLE_MARKER_COLUMNS"]

#: Columns whose presence in ``<stem>.csv`` marks a label image as this plugin's (when the JSON is missing).
TABLE_MARKER_COLUMNS = ("index", "predicted_iou", "stability_score")


class LabelsTableWarning(UserWarning):
    """The object table beside a label image is damaged or does not match it; the labels opened anyway."""


def _single_path(path: Any) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None  # a stack of files is napari's business
        path = path[0]
    try:
        return Path(path)
    except TypeError:
        return None


def _table_header(csv_path: Path) -> list[str]:
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def is_plugin_labels(path) -> bool:
    """True when ``path`` is a label image this plugin saved (see the module docstring)."""
    path = _single_path(path)
    if path is None or path.suffix.lower() not in SUFFIXES or not path.is_file():
        return False
    if read_layer_info(path) is not None:
        return True
    header = set(_table_header(table_path(path)))
    return all(column in header for column in TABLE_MARKER_COLUMNS)


def get_reader(path) -> Callable | None:
    """npe2 ``get_reader``: :func:`read_labels_layer` for this plugin's label files, else None."""
    return read_labels_layer if is_plugin_labels(path) else None


def read_labels_layer(path) -> list[tuple]:
    """Read label image(s) saved by this plugin.

    Parameters
    ----------
    path : str, Path or list of them
        ``.tif`` / ``.tiff`` / ``.png`` / ``.npy`` label image(s).

    Returns
    -------
    list of (data, kwargs, "labels")
        ``data``: the integer label image as saved; ``kwargs``: ``name``, ``metadata``
        (``{META_KEY: {...}}`` when saved), ``scale`` / ``translate`` (when saved and matching the
        data's dimensions) and ``features`` (a DataFrame with an ``"index"`` column) when the
        table could be read.

    Raises
    ------
    UserInputError
        The label image itself is missing or cannot be decoded.
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    return [_read_one(Path(p)) for p in paths]


def _warn(text: str) -> None:
    warnings.warn(LabelsTableWarning(text), stacklevel=3)


def _read_one(path: Path) -> tuple:
    data = read_labels(path)
    info = read_layer_info(path) or {}
    kwargs: dict[str, Any] = {"name": str(info.get("name") or path.stem)}
    ours = (info.get("metadata") or {}).get(META_KEY) if isinstance(info.get("metadata"), dict) else None
    if isinstance(ours, dict):
        kwargs["metadata"] = {META_KEY: dict(ours)}
    for key in ("scale", "translate"):
        value = info.get(key)
        try:
            value = [float(v) for v in value] if value is not None else None
        except (TypeError, ValueError):
            value = None
        if value is not None and len(value) == data.ndim:
            kwargs[key] = value
    features = _features(path, data, info)
    if features is not None:
        kwargs["features"] = features
    return data, kwargs, "labels"


def _features(path: Path, data: np.ndarray, info: dict):
    """The table beside ``path`` as a features DataFrame, rows of ids present in ``data`` only; or None."""
    from .features import table_to_frame

    csv_path = table_path(path)
    if not csv_path.is_file():
        return None
    if "table_sha256" in info and info["table_sha256"] is None:
        _warn(f"{csv_path.name} is not the objects table of {path.name} (it was saved without one); it was left out.")
        return None
    edited = "table_sha256" in info and table_digest(csv_path) != info["table_sha256"]
    try:
        table = read_table(csv_path)
        if "index" not in table:
            raise ValueError("it has no 'index' column of label ids")
        if table["index"].dtype.kind not in "iu":
            raise ValueError("its 'index' column does not hold whole numbers")
        frame = table_to_frame(table)
    except Exception as err:  # a damaged CSV raises csv, Unicode, index and value errors alike
        _warn(f"The objects table {csv_path} could not be read ({err}); {path.name} is opened without it.")
        return None
    if edited:
        _warn(f"The objects table {csv_path} was changed after {path.name} was saved; check that the two belong together.")
    present = np.unique(data)
    absent = ~frame["index"].isin(present[present != 0])
    if absent.any():
        missing = frame.loc[absent, "index"].tolist()
        shown = ", ".join(str(i) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        _warn(
            f"The objects table {csv_path} lists {len(missing)} object(s) that are not in {path.name} "
            f"(ids {shown}); their rows were left out. Was one of the two files replaced?"
        )
        frame = frame[~absent].reset_index(drop=True)
    return frame
