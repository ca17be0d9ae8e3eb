"""Open the outputs of ``napari-sam-micro segment`` in napari for correction.

:func:`batch_result_layers` turns a result (``<name>_labels.tif`` or ``<name>_labels.ome.zarr``
with ``<name>_labels.csv`` beside it), or a folder of them, into napari layer-data tuples
``(data, kwargs, "labels")``: the labels (large ones read lazily, never loaded whole) with the
objects table in ``features``. :func:`open_batch_results` adds them to a viewer (the Everything
widget's "Open results" calls it).
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import UserInputError
from ..core.export import read_table
from .features import table_to_frame

__all__ = ["batch_result_layers", "open_batch_results", "RESULT_SUFFIX"]

#: Layer names of opened results end with this.
RESULT_SUFFIX = " [SAM batch]"

#: Label images above this many bytes are opened lazily (zarr view), not read into memory.
_LAZY_BYTES = 256 * 1024 * 1024


def _result_files(path: Path) -> list[Path]:
    if path.is_dir() and not path.name.endswith(".zarr"):
        found = sorted(p for p in path.iterdir() if p.name.endswith(("_labels.tif", "_labels.ome.zarr")))
        if not found:
            raise UserInputError(f"{path} has no results of 'napari-sam-micro segment' (*_labels.tif, *_labels.ome.zarr).")
        return found
    if not path.exists():
        raise UserInputError(f"{path} does not exist.")
    return [path]


def _read_labels(path: Path):
    if path.name.endswith(".zarr"):
        import zarr

        return zarr.open_group(str(path), mode="r")["0"]
    import tifffile

    if path.stat().st_size > _LAZY_BYTES:
        import zarr

        return zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    return tifffile.imread(path)


def _table_path(labels_path: Path) -> Path:
    name = labels_path.name
    stem = name[: -len(".ome.zarr")] if name.endswith(".ome.zarr") else labels_path.stem
    return labels_path.with_name(stem + ".csv")


def batch_result_layers(path) -> list[tuple]:
    """Layer data of one result or of a folder of results.

    Parameters
    ----------
    path : path-like
        ``<name>_labels.tif``, ``<name>_labels.ome.zarr`` or the output folder of ``segment``.

    Returns
    -------
    list of (data, kwargs, "labels")
        ``kwargs`` has the layer ``name`` and the objects table as ``features`` (when its CSV exists).
    """
    layers = []
    for labels_path in _result_files(Path(path).expanduser()):
        data = _read_labels(labels_path)
        name = labels_path.name.replace("_labels.ome.zarr", "").replace("_labels.tif", "")
        kwargs = {"name": name + RESULT_SUFFIX}
        csv = _table_path(labels_path)
        if csv.is_file():
            kwargs["features"] = table_to_frame(read_table(csv))
        layers.append((data, kwargs, "labels"))
    return layers


def open_batch_results(viewer, path) -> list:
    """Add the results at ``path`` (a file or a folder) to ``viewer`` as Labels layers; returns them."""
    added = []
    for data, kwargs, _ in batch_result_layers(path):
        added.append(viewer.add_labels(data, **kwargs))
    return added
