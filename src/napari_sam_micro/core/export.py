"""Save and load label images (TIFF, 16-bit PNG, NumPy) with the object table as CSV beside them.

Every write is atomic: data goes to a temporary file in the destination folder, which replaces
the destination with ``os.replace`` only once it is complete. If anything fails (including
Ctrl+C) the temporary files are removed and any earlier file is left untouched, so a crash never
leaves a half-written or lost annotation. A label image and its table are atomic as a pair: both
temporary files are complete before either replaces anything, and if replacing the second fails
the first is restored from a backup (a hard link, or a copy), so ids and table always agree.

Formats (chosen from the suffix)
--------------------------------
* ``.tif`` / ``.tiff``: any dimensionality, zlib-compressed, ``uint16`` (``uint32`` when ids
  exceed 65535).
* ``.png``: 2D only, ``uint16`` (ids up to 65535).
* ``.npy``: any dimensionality, dtype kept.

The table (``dict`` of columns, or a pandas DataFrame) is written to ``<stem>.csv`` in the same
folder. Layer information (the plugin's layer metadata, name, scale, translate) goes to
``<stem>.sam-micro.json`` (:data:`LAYER_FORMAT` in its ``"format"`` key): the marker by which the
plugin's reader recognises a label image as its own. All files of a save are replaced as one set.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from .errors import UserInputError

__all__ = [
    "SUFFIXES",
    "write_labels",
    "read_labels",
    "read_table",
    "write_table",
    "write_text_atomic",
    "table_path",
    "layer_info_path",
    "read_layer_info",
    "table_digest",
    "LAYER_FORMAT",
]

#: Suffixes :func:`write_labels` understands.
SUFFIXES = (".tif", ".tiff", ".png", ".npy")


#: ``"format"`` of the layer-information JSON written beside a label image.
LAYER_FORMAT = "napari-sam-micro labels"


def table_path(path) -> Path:
    """``<folder>/<stem>.csv`` for an image path."""
    path = Path(path)
    return path.with_name(path.stem + ".csv")


def layer_info_path(path) -> Path:
    """``<folder>/<stem>.sam-micro.json`` for an image path: the layer information beside it."""
    path = Path(path)
    return path.with_name(path.stem + ".sam-micro.json")


def table_digest(csv_path) -> str | None:
    """SHA-256 (hex) of a table file's bytes, or None when it cannot be read."""
    try:
        return hashlib.sha256(Path(csv_path).read_bytes()).hexdigest()
    except OSError:
        return None


def read_layer_info(path) -> dict | None:
    """The layer information written beside label image ``path``, or None.

    Returns None when there is no ``<stem>.sam-micro.json``, or when it is not JSON holding an
    object whose ``"format"`` is :data:`LAYER_FORMAT` (a foreign or damaged file).
    """
    info = layer_info_path(path)
    try:
        with open(info, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != LAYER_FORMAT:
        return None
    return data


def _check_labels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise UserInputError(f"Only label images (whole numbers) can be saved here, got data of type {arr.dtype}.")
    if arr.size and arr.min() < 0:
        raise UserInputError("The labels contain negative values; label ids must be 0 (background) or positive.")
    return arr


def _write_tiff(fh, labels: np.ndarray) -> None:
    import tifffile

    top = int(labels.max()) if labels.size else 0
    if top > np.iinfo(np.uint32).max:
        raise UserInputError(f"Label ids up to {top} do not fit a TIFF label image (max 4294967295).")
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    tifffile.imwrite(fh, labels.astype(dtype, copy=False), compression="zlib")


def _write_png(fh, labels: np.ndarray) -> None:
    import imageio.v3 as iio

    iio.imwrite(fh, labels.astype(np.uint16, copy=False), extension=".png")


def _check_png(labels: np.ndarray) -> None:
    if labels.ndim != 2:
        raise UserInputError(
            f"PNG holds a single 2D image, but these labels have {labels.ndim} dimensions "
            f"{tuple(labels.shape)}. Save as TIFF (.tif) instead."
        )
    top = int(labels.max()) if labels.size else 0
    if top > np.iinfo(np.uint16).max:
        raise UserInputError(f"PNG holds label ids up to 65535, but the largest id is {top}. Save as TIFF (.tif) instead.")


def _write_npy(fh, labels: np.ndarray) -> None:
    np.save(fh, labels, allow_pickle=False)


#: Writer per suffix: ``writer(binary_file, labels)``.
_WRITERS: dict[str, Callable] = {".tif": _write_tiff, ".tiff": _write_tiff, ".png": _write_png, ".npy": _write_npy}


def _write_temp(path: Path, write: Callable) -> str:
    """Call ``write(binary_file)`` on a new temporary file next to ``path``; returns its name.

    The temporary file is removed if ``write`` fails (any exception, Ctrl+C included).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:  # a named file object: tifffile wants .name to be a path
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the result the old file's mode or an ordinary 0644.
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            mode = 0o644
        os.chmod(tmp, mode)
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _remove(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _atomic_write(path: Path, write: Callable) -> None:
    """Write ``path`` through a temporary file and ``os.replace``."""
    _commit([(_write_temp(path, write), path)])


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: the old file stays whole until the new one is.

    Raises
    ------
    OSError
        The folder is missing or not writable, the disk is full …
    """
    path = Path(path)
    data = text.encode("utf-8")
    _atomic_write(path, lambda fh: fh.write(data))
    return path


def _backup(dest: Path) -> str | None:
    """A copy of ``dest`` next to it (hard link when possible), or None when ``dest`` does not exist."""
    if not dest.exists():
        return None
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".bak", dir=dest.parent)
    os.close(fd)
    os.unlink(name)
    try:
        os.link(dest, name)  # no copy of the data; the old file keeps its inode
    except OSError:
        try:
            shutil.copy2(dest, name)  # file systems without hard links (FAT, some network shares)
        except BaseException:
            _remove(name)  # a partial copy (disk full) must not be left behind
            raise
    return name


def _commit(pairs: list[tuple[str, Path]]) -> None:
    """``os.replace`` every temporary file onto its destination, all or none.

    Every destination but the last is backed up first; if a later replace fails, the ones
    already replaced are restored (or removed when they did not exist), so the files of a set
    (a label image and its table) always belong together. Temporary files and backups are
    removed in every case, except a backup that could not be restored (named in the error).
    """
    backups: list[str | None] = []
    done = 0
    try:
        for _, dest in pairs[:-1]:
            backups.append(_backup(dest))
        for tmp, dest in pairs:
            os.replace(tmp, dest)
            done += 1
    except BaseException as err:
        for tmp, _ in pairs[done:]:
            _remove(tmp)
        _roll_back(pairs[:done], backups, err)
        for name in backups[done:]:
            if name is not None:
                _remove(name)
        raise
    for name in backups:
        if name is not None:
            _remove(name)


def _roll_back(replaced: list[tuple[str, Path]], backups: list[str | None], err: BaseException) -> None:
    """Put back the old files of ``replaced`` (the destinations already replaced)."""
    for (_, dest), backup in zip(replaced, backups):
        try:
            if backup is None:
                os.unlink(dest)
            else:
                os.replace(backup, dest)
        except OSError as restore_err:
            where = f"; the previous version is kept as {backup}" if backup is not None else ""
            raise OSError(
                f"Saving failed ({err}) and {dest} could not be put back as it was ({restore_err}){where}."
            ) from err


def _table_columns(table) -> dict[str, list]:
    if hasattr(table, "columns") and hasattr(table, "to_dict"):  # pandas DataFrame (not imported)
        return {str(c): list(table[c]) for c in table.columns}
    if isinstance(table, Mapping):
        cols = {str(c): list(v) for c, v in table.items()}
    else:
        raise TypeError(f"table must be a dict of columns or a DataFrame, got {type(table).__name__}")
    lengths = {len(v) for v in cols.values()}
    if len(lengths) > 1:
        raise ValueError(f"table columns have different lengths: {sorted(lengths)}")
    return cols


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else repr(float(v))
    return str(v)


def _csv_text(cols: dict[str, list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(cols))
    n = len(next(iter(cols.values()))) if cols else 0
    for i in range(n):
        writer.writerow([_cell(v[i]) for v in cols.values()])
    return buf.getvalue()


def write_table(csv_path, table) -> Path:
    """Write a table (dict of columns or DataFrame) to CSV atomically; returns the path."""
    csv_path = Path(csv_path)
    data = _csv_text(_table_columns(table)).encode("utf-8")
    _atomic_write(csv_path, lambda fh: fh.write(data))
    return csv_path


def write_labels(path, labels, table=None, layer_info: Mapping | None = None) -> list[Path]:
    """Write a label image (and its object table, and layer information) atomically.

    Parameters
    ----------
    path : path-like
        Destination; the suffix (``.tif``, ``.tiff``, ``.png``, ``.npy``) picks the format.
    labels : array-like
        Integer (or bool) label image, 0 = background.
    table : dict of columns or pandas.DataFrame, optional
        Per-object table, written to ``<stem>.csv`` beside the image.
    layer_info : mapping, optional
        JSON-serialisable layer information (e.g. ``{"name": ..., "metadata": ...}``), written
        with ``"format": LAYER_FORMAT`` and ``"table_sha256"`` (the SHA-256 of the CSV written
        now, or None without a table) to ``<stem>.sam-micro.json`` beside the image.

    Returns
    -------
    list of Path
        The files written (image first, then the table, then the layer information).

    Raises
    ------
    UserInputError
        Unknown suffix, missing folder, non-integer labels, or labels PNG cannot hold.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITERS:
        raise UserInputError(f"Cannot save labels as '{suffix or path.name}': use one of {', '.join(SUFFIXES)}.")
    if not path.parent.is_dir():
        raise UserInputError(f"The folder {path.parent} does not exist.")
    arr = _check_labels(labels)
    if suffix == ".png":
        _check_png(arr)
    sidecars: list[tuple[Path, bytes]] = []
    csv_bytes = None
    if table is not None:
        csv_bytes = _csv_text(_table_columns(table)).encode("utf-8")
        sidecars.append((table_path(path), csv_bytes))
    if layer_info is not None:
        info = {"format": LAYER_FORMAT, "version": 1, **{k: v for k, v in layer_info.items() if k != "format"}}
        # which table belongs to this image: a CSV left from an earlier save is not taken for it
        info["table_sha256"] = hashlib.sha256(csv_bytes).hexdigest() if csv_bytes is not None else None
        sidecars.append((layer_info_path(path), json.dumps(info, indent=1, default=_json_default).encode("utf-8")))
    writer = _WRITERS[suffix]
    # All files are complete on disk before any replaces an old one; _commit rolls back the
    # earlier ones if a later one cannot replace its old version.
    pairs = [(_write_temp(path, lambda fh: writer(fh, arr)), path)]
    try:
        for dest, data in sidecars:
            pairs.append((_write_temp(dest, lambda fh, data=data: fh.write(data)), dest))
    except BaseException:
        for tmp, _ in pairs:
            _remove(tmp)
        raise
    _commit(pairs)
    return [dest for _, dest in pairs]


def _json_default(value):
    """numpy scalars and arrays in layer information become plain JSON numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def read_labels(path) -> np.ndarray:
    """Read a label image written by :func:`write_labels` (format from the suffix).

    Raises
    ------
    UserInputError
        Unknown suffix, missing file, or a file that cannot be decoded (damaged, not an image);
        the message names the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserInputError(f"Cannot read labels from '{path}': use one of {', '.join(SUFFIXES)}.")
    if not path.is_file():
        raise UserInputError(f"The file {path} does not exist.")
    try:
        return _read(path, suffix)
    except (OSError, MemoryError) as err:
        raise UserInputError(f"Cannot read {path}: {err}.") from err
    except Exception as err:  # decoders raise many types for a damaged file (struct, zlib, ValueError …)
        raise UserInputError(
            f"Cannot read {path}: the file is damaged or not a {suffix} image ({type(err).__name__}: {err})."
        ) from err


def _read(path: Path, suffix: str) -> np.ndarray:
    if suffix in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    if suffix == ".png":
        import imageio.v3 as iio

        return np.asarray(iio.imread(path, extension=".png"))
    return np.load(path, allow_pickle=False)


def _parse_column(values: list[str]) -> np.ndarray:
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        pass
    try:
        return np.array([float(v) if v != "" else np.nan for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=object)


def read_table(csv_path) -> dict[str, np.ndarray]:
    """Read a CSV written by :func:`write_labels` into ``{column: array}``.

    Integer columns come back ``int64``, numeric ones ``float64`` (empty cells → NaN), others as
    ``object`` arrays of ``str``.
    """
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return {}
    header, body = rows[0], rows[1:]
    return {name: _parse_column([r[i] for r in body]) for i, name in enumerate(header)}
