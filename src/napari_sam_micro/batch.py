"""Batch everything-mode segmentation of files and folders: what ``napari-sam-micro segment`` runs.

Inputs are files, folders (their images, not recursive), or glob patterns: TIFF (single plane,
multi-page or nD: every plane is segmented; an RGB last axis is kept as colour), PNG / JPEG, NumPy
``.npy`` and OME-Zarr (its full-resolution level). Planes larger than the tile size are segmented
tile by tile (:func:`napari_sam_micro.tiling.tiled_everything_job`) and read lazily, so memory
follows the tile, not the image.

For every input ``<name>`` the output folder gets

* ``<name>_labels.tif`` (OME-Zarr input: ``<name>_labels.ome.zarr``, an OME-Zarr label image),
  the objects of every plane with ids unique in the file;
* ``<name>_labels.csv``: one row per object: ``index``, ``area``, ``predicted_iou``,
  ``stability_score``, ``prompt``, bbox (pixels, half-open), the plane (``plane_<axis>`` columns for
  stacks), ``model`` and ``model_sha256``.

Every file is written atomically, the table last: an input whose table exists is finished and
is skipped on the next run (resume after an interruption). A file that cannot be read or
segmented is reported and the batch goes on.

:func:`napari_sam_micro.scaleout.run_batch_job` runs :func:`run_one` per image, here or on a Dask
distributed cluster.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .core.errors import UserInputError
from .core.export import write_labels, write_table
from .core.preprocess import PreprocessConfig
from .core.progress import Job, Progress, drain
from .core.prompt_files import prompts_for_image
from .segmentation import EverythingOptions, everything_job, prompted_job
from .tiling import (
    DEFAULT_HALO,
    DEFAULT_TILE,
    needs_tiling,
    read_tile,
    segment_tile_pixels,
    tiled_everything_job,
    zarr_canvas,
)

__all__ = [
    "BatchSettings",
    "discover_inputs",
    "output_paths",
    "segment_file",
    "run_one",
    "run_one_job",
    "segment_tile_task",
    "open_input",
    "is_large",
    "model_checksum",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
ZARR_SUFFIXES = (".zarr",)

#: Arrays larger than this are read lazily (zarr views of TIFF / OME-Zarr); smaller ones at once.
LAZY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class BatchSettings:
    """What every image of a batch is segmented with (picklable: sent to the workers).

    Parameters
    ----------
    model : str
        Registry name.
    device, checkpoint : str, optional
        As for :func:`~napari_sam_micro.models.registry.load_model`.
    options : EverythingOptions
    preprocess : PreprocessConfig
    tile, halo : int
        Planes with a side above ``tile`` are tiled (see :mod:`napari_sam_micro.tiling`).
    overwrite : bool
        Redo inputs whose outputs exist (default: skip them).
    prompts : tuple of ObjectPrompt
        Prompted segmentation instead of the everything mode: each input's objects from these
        boxes / points (:func:`~napari_sam_micro.core.prompt_files.read_prompt_file`; matched to
        inputs by :func:`~napari_sam_micro.core.prompt_files.prompts_for_image`). Empty: everything mode.
    """

    model: str
    device: str | None = None
    checkpoint: str | None = None
    options: EverythingOptions = field(default_factory=EverythingOptions)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    tile: int = DEFAULT_TILE
    halo: int = DEFAULT_HALO
    overwrite: bool = False
    prompts: tuple = ()


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (path.suffix.lower() in ZARR_SUFFIXES or (path / "zarr.json").is_file() or (path / ".zattrs").is_file())


def _is_input(path: Path) -> bool:
    return _is_zarr(path) or (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def discover_inputs(items) -> tuple[list[Path], list[tuple[str, str]]]:
    """Images named by files, folders and glob patterns, in order, each once.

    Returns
    -------
    paths : list of Path
    problems : list of (item, message)
        Items that name no image (missing file, empty folder, pattern without a match).
    """
    paths: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in items:
        item = str(item)
        path = Path(item).expanduser()
        if any(ch in item for ch in "*?["):
            found = [Path(p) for p in sorted(glob.glob(os.path.expanduser(item), recursive=True))]
            found = [p for p in found if _is_input(p)]
            if not found:
                problems.append((item, "no image matches this pattern"))
        elif _is_zarr(path):
            found = [path]
        elif path.is_dir():
            found = [p for p in sorted(path.iterdir()) if _is_input(p) and not p.name.startswith(".")]
            if not found:
                problems.append((item, f"the folder has no images ({', '.join(IMAGE_SUFFIXES)}, OME-Zarr)"))
        elif path.is_file():
            found = [path]
        else:
            found = []
            problems.append((item, "no such file or folder"))
        for p in found:
            if p.resolve() not in {q.resolve() for q in paths}:
                paths.append(p)
    return paths, problems


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def output_paths(path: Path, out_dir: Path) -> tuple[Path, Path]:
    """``(labels, table)`` written for the input ``path`` in ``out_dir``."""
    stem = _stem(Path(path)) + "_labels"
    labels = out_dir / (stem + (".ome.zarr" if _is_zarr(Path(path)) else ".tif"))
    return labels, out_dir / (stem + ".csv")


@dataclass
class _Image:
    data: object  # (..., H, W[, S]) array-like
    leading: tuple[str, ...]  # names of the leading axes
    rgb: bool
    ome_axes: list | None = None  # OME-Zarr axes of the image (to write labels alike)


def _open_tiff(path: Path, lazy: bool = False) -> _Image:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        axes, shape, nbytes = series.axes, tuple(series.shape), series.size * series.dtype.itemsize
        if nbytes <= LAZY_BYTES and not lazy:
            data = series.asarray()
        else:
            data = None
    if data is None:
        import zarr

        data = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        if hasattr(data, "keys") and not hasattr(data, "shape"):  # a pyramid: its full resolution
            data = data["0"]
    rgb = axes.endswith("S") and shape[-1] in (3, 4)
    n_spatial = 3 if rgb else 2
    if len(shape) < n_spatial:
        raise UserInputError(f"{path.name}: the image has fewer than two dimensions (shape {shape}).")
    return _Image(data, tuple(axes[: len(shape) - n_spatial]), rgb)


def _open_zarr(path: Path) -> _Image:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    meta = attrs.get("ome", attrs)
    if "multiscales" not in meta:
        raise UserInputError(f"{path.name}: not an OME-Zarr image (no 'multiscales' metadata).")
    ms = meta["multiscales"][0]
    data = group[ms["datasets"][0]["path"]]
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", [])] or ["y", "x"][-len(data.shape):]
    return _Image(data, tuple(axes[:-2]), False, ms.get("axes"))


def _open(path: Path, lazy: bool = False) -> _Image:
    """The image's array (read lazily when large or when ``lazy``: only what is sliced is read)."""
    if _is_zarr(path):
        return _open_zarr(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return _open_tiff(path, lazy)
    if suffix == ".npy":
        data = np.load(path, mmap_mode="r", allow_pickle=False)
        return _Image(data, tuple(f"axis{k}" for k in range(data.ndim - 2)), False)
    import imageio.v3 as iio

    data = iio.imread(path)
    rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
    return _Image(data, (), rgb)


def model_checksum(spec, checkpoint: str | None = None) -> str:
    """SHA-256 of the weights (a given checkpoint file, else the registry's or the shipped ones)."""
    if checkpoint:
        digest = hashlib.sha256()
        with open(checkpoint, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    if getattr(spec, "sha256", None):
        return str(spec.sha256)
    if spec.name == "micro-tiny":
        from .models.micro import WEIGHTS_SHA256

        return WEIGHTS_SHA256
    return ""


_STORE = None
_STORE_LOCK = threading.Lock()


def _model(settings: BatchSettings):
    """The settings' model, loaded once per process (each Dask worker keeps its own)."""
    global _STORE
    from .models.registry import ModelStore, get_spec

    with _STORE_LOCK:
        if _STORE is None:
            _STORE = ModelStore()
        store = _STORE
    spec = get_spec(settings.model)
    return store.get(settings.model, settings.device, settings.checkpoint), spec


def _spec(settings: BatchSettings):
    from .models.registry import get_spec

    return get_spec(settings.model)


def is_large(image, settings: BatchSettings) -> bool:
    """Whether the planes of an opened input (see :func:`open_input`) are tiled."""
    rgb = 1 if image.rgb else 0
    shape = image.data.shape
    return needs_tiling(shape[len(shape) - 2 - rgb : len(shape) - rgb], settings.tile)


def open_input(path, lazy: bool = True):
    """An input's array (lazy), its leading axes and whether it is RGB (for planning tile tasks)."""
    return _open(Path(path), lazy)


def segment_tile_task(path, index, tile, settings: BatchSettings, config: PreprocessConfig, options=None):
    """One tile of one plane of an input, segmented where this runs (a Dask task).

    ``options`` (default ``settings.options``): the plane's, with its measured foreground threshold.

    Returns
    -------
    labels : (h, w) uint32 or None
        The tile's objects in its outer window (None: a blank tile).
    table : dict or None
    """
    plane = _plane(_open(Path(path), lazy=True).data, tuple(index))
    pixels = read_tile(plane, tile)
    model, spec = _model(settings)
    res = drain(segment_tile_pixels(model, pixels, spec, config, options or settings.options))
    return (None, None) if res is None else (res.labels, res.table)


def _plane(data, index: tuple[int, ...]):
    return data[index] if index else data


def _segment_plane_job(model, spec, plane, settings: BatchSettings, config: PreprocessConfig, canvas_dir: Path | None,
                       run_tiles=None, objects=None):
    if objects is not None:  # prompted: the Annotator's windows read from the plane, never tiled
        res = yield from prompted_job(model, np.asarray(plane), spec, objects, preprocess=config)
        return res.labels, res.table
    if needs_tiling(plane.shape[:2], settings.tile):
        canvas = zarr_canvas(plane.shape[:2], canvas_dir)
        res = yield from tiled_everything_job(
            model, plane, spec, tile=settings.tile, halo=settings.halo, preprocess=config, options=settings.options,
            canvas=canvas, run_tiles=run_tiles,
        )
        return res.labels, res.table
    res = yield from everything_job(model, np.asarray(plane), spec, preprocess=config, options=settings.options)
    return res.labels, res.table


def segment_file(path, out_dir, settings: BatchSettings, tile_runner=None) -> Job[dict]:
    """Segment every plane of one input and write its labels and table (a job returning a summary).

    Parameters
    ----------
    path, out_dir : path-like
    settings : BatchSettings
    tile_runner : callable, optional
        ``tile_runner(path, plane_index)`` gives the ``run_tiles`` of
        :func:`~napari_sam_micro.tiling.tiled_everything_job` for a large plane (tiles as Dask
        tasks); default: tiles run here. The model is then loaded only where tiles run.

    Returns
    -------
    dict
        ``input``, ``labels``, ``table``, ``status`` (``done`` or ``skipped``), ``objects``,
        ``planes``, ``tile_tasks`` (its tiles ran through ``tile_runner``), ``seconds``.

    Raises
    ------
    UserInputError, OSError, ValueError
        The file cannot be read or segmented (the caller reports it and goes on).
    """
    path, out_dir = Path(path), Path(out_dir)
    labels_path, table_path = output_paths(path, out_dir)
    summary = {"input": str(path), "labels": str(labels_path), "table": str(table_path)}
    if table_path.exists() and labels_path.exists() and not settings.overwrite:
        return {**summary, "status": "skipped"}
    start = time.perf_counter()
    image = _open(path, lazy=tile_runner is not None)
    objects = _prompts_of(path, image, settings)
    tile_tasks = tile_runner is not None and objects is None and is_large(image, settings)
    model, spec = (None, _spec(settings)) if tile_tasks else _model(settings)
    tile_runner = tile_runner if tile_tasks else None
    checksum = model_checksum(spec, settings.checkpoint)
    config = dataclasses.replace(settings.preprocess, rgb=image.rgb or settings.preprocess.rgb)
    lead_shape = tuple(image.data.shape[: len(image.leading)])
    work = Path(tempfile.mkdtemp(prefix=f".{labels_path.name}.", dir=out_dir))
    try:
        planes, rows, next_id = [], [], 1
        for k, index in enumerate(np.ndindex(*lead_shape)):
            yield Progress(k, int(np.prod(lead_shape, dtype=int)), f"{path.name}: plane {k + 1}")
            run_tiles = tile_runner(str(path), index) if tile_runner is not None else None
            labels, table = yield from _segment_plane_job(
                model, spec, _plane(image.data, index), settings, config, work / f"plane{k}.zarr", run_tiles, objects
            )
            labels, table, next_id = _renumber(labels, table, next_id)
            table.update({f"plane_{ax}": [i] * len(table["index"]) for ax, i in zip(image.leading, index)})
            planes.append(labels)
            rows.append(table)
        table = _concat(rows, {"model": settings.model, "model_sha256": checksum})
        _write_outputs(planes, lead_shape, table, labels_path, table_path, image, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {**summary, "status": "done", "objects": len(table["index"]), "planes": len(planes),
            "tile_tasks": tile_tasks, "seconds": round(time.perf_counter() - start, 3)}


def _prompts_of(path: Path, image: _Image, settings: BatchSettings):
    """The input's object prompts in prompted mode (None in everything mode)."""
    if not settings.prompts:
        return None
    if image.leading:
        raise UserInputError(f"prompts apply to one 2D plane; {path.name} has {int(np.prod(image.data.shape[: len(image.leading)]))} "
                             "planes (split the stack, or run the everything mode).")
    objects = prompts_for_image(settings.prompts, path)
    if not objects:
        raise UserInputError(f"the prompt file names no box or point for {path.name} (its 'image' column names other files).")
    return objects


def _renumber(labels, table: dict, next_id: int):
    """Shift a plane's ids ``1..K`` to ``next_id..`` so ids are unique in the file."""
    n = len(table["index"])
    if next_id != 1 and n:
        if isinstance(labels, np.ndarray):
            labels = np.where(labels > 0, labels + np.uint32(next_id - 1), 0).astype(np.uint32)
        else:  # a zarr canvas: shift chunk by chunk
            _shift_ids(labels, next_id - 1)
        table = {**table, "index": [int(i) + next_id - 1 for i in table["index"]]}
    return labels, dict(table), next_id + n


def _shift_ids(canvas, offset: int, rows: int = 1024) -> None:
    for y in range(0, canvas.shape[0], rows):
        part = np.asarray(canvas[y : y + rows])
        if part.any():
            canvas[y : y + rows] = np.where(part > 0, part + np.uint32(offset), 0).astype(np.uint32)


def _concat(tables: list[dict], extra: dict) -> dict:
    cols = list(dict.fromkeys(c for t in tables for c in t))
    out = {c: [v for t in tables for v in t.get(c, [None] * len(t["index"]))] for c in cols}
    n = len(out.get("index", []))
    out.update({k: [v] * n for k, v in extra.items()})
    if not cols:
        out = {"index": [], "area": [], **{k: [] for k in extra}}
    return out


def _write_outputs(planes, lead_shape, table, labels_path: Path, table_path: Path, image: _Image, work: Path) -> None:
    """Labels first, the table last (its presence marks the input as finished)."""
    if labels_path.suffix == ".zarr":
        _write_ome_zarr(planes, lead_shape, labels_path, image, work)
        write_table(table_path, table)
    elif all(isinstance(p, np.ndarray) for p in planes):
        stack = np.stack(planes).reshape(*lead_shape, *planes[0].shape)
        write_labels(labels_path, stack, table)  # both atomically, as a pair (the table is <stem>.csv)
    else:
        _write_tiled_tiff(planes, lead_shape, labels_path, work)
        write_table(table_path, table)


def _write_tiled_tiff(planes, lead_shape, path: Path, work: Path, tile: int = 512) -> None:
    """A tiled, compressed uint32 TIFF written tile by tile (memory: one tile), then moved in place."""
    import tifffile

    h, w = planes[0].shape[:2]

    def tiles():
        for plane in planes:
            for y in range(0, h, tile):
                for x in range(0, w, tile):
                    part = np.zeros((tile, tile), np.uint32)
                    block = np.asarray(plane[y : y + tile, x : x + tile])
                    part[: block.shape[0], : block.shape[1]] = block
                    yield part

    tmp = work / path.name
    tifffile.imwrite(tmp, tiles(), shape=(*lead_shape, h, w), dtype=np.uint32, tile=(tile, tile), compression="zlib", bigtiff=True)
    os.replace(tmp, path)


def _write_ome_zarr(planes, lead_shape, path: Path, image: _Image, work: Path) -> None:
    """An OME-Zarr (0.5) label image: one full-resolution level, axes as the input's."""
    import zarr

    h, w = planes[0].shape[:2]
    tmp = work / path.name
    root = zarr.open_group(str(tmp), mode="w")
    arr = root.create_array("0", shape=(*lead_shape, h, w), chunks=(*(1,) * len(lead_shape), min(h, 1024), min(w, 1024)), dtype="uint32", fill_value=0)
    for k, index in enumerate(np.ndindex(*lead_shape)):
        for y in range(0, h, 1024):
            arr[(*index, slice(y, y + 1024))] = np.asarray(planes[k][y : y + 1024])
    axes = image.ome_axes or [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    scale = [{"type": "scale", "scale": [1.0] * len(arr.shape)}]
    root.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": scale}], "name": path.name}],
        "image-label": {"version": "0.5", "source": {"image": "../../"}},
    }
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _describe(err: BaseException) -> str:
    if isinstance(err, (UserInputError, OSError)):
        return str(err)
    return f"{type(err).__name__}: {err}"


def run_one(path, out_dir, settings: BatchSettings) -> dict:
    """:func:`segment_file` run to its end; a file that fails gives ``status: failed`` and ``error``.

    The task of a Dask worker. Errors of the input itself (unreadable, wrong shape ...) are
    reported, not raised, so they are not retried; a crash of the worker is retried by Dask.
    """
    return drain(run_one_job(path, out_dir, settings))


def run_one_job(path, out_dir, settings: BatchSettings, tile_runner=None) -> Job[dict]:
    """:func:`run_one` as a job (``tile_runner``: see :func:`segment_file`)."""
    start = time.perf_counter()
    try:
        return (yield from segment_file(path, out_dir, settings, tile_runner))
    except (UserInputError, OSError, ValueError, KeyError, TypeError, IndexError) as err:
        return {"input": str(path), "status": "failed", "error": _describe(err), "seconds": round(time.perf_counter() - start, 3)}
