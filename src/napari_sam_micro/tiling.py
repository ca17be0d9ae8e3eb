"""Everything mode on planes larger than memory: tiles with a halo, stitched into one label image.

:func:`tiled_everything_job` reads a (lazy) plane tile by tile, runs
:func:`~napari_sam_micro.segmentation.everything_job` on each tile (the one everything mode) and
stitches the objects with :class:`~napari_sam_micro.core.tiles.TileStitcher` (objects whose centre
lies in the tile's core are kept; one object found by two neighbouring tiles is matched by overlap
and keeps one id). The intensity stretch is measured once on a strided subsample of the whole
plane (:func:`~napari_sam_micro.core.preprocess.measure_value_ranges`) so every tile is normalised
alike, as the untiled plane would be.

Memory is bounded by the tile: the plane is only sliced (numpy, dask, zarr, a napari multiscale
level, a memory map) and the labels go to a ``canvas`` that may be a zarr array on disk
(:func:`zarr_canvas`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .core.cache import EmbeddingCache
from .core.errors import UserInputError
from .core.model_api import PromptableModel
from .core.preprocess import PreprocessConfig, measure_value_ranges, normalize_image, sample_plane, sample_step
from .core.progress import Job, Progress
from .core.seeds import foreground_threshold
from .core.tiles import STITCH_MIN_SCORE, Tile, TileStitcher, plan_tiles
from .segmentation import MODE_SEEDS, EverythingOptions, EverythingResult, everything_job, everything_mode_for

__all__ = [
    "DEFAULT_TILE",
    "DEFAULT_HALO",
    "TiledResult",
    "tiled_everything_job",
    "segment_tile",
    "segment_tile_pixels",
    "local_tiles",
    "read_tile",
    "full_resolution",
    "needs_tiling",
    "zarr_canvas",
]

#: Largest tile core side (pixels): ~61 bytes per pixel of the everything mode -> ~100 MB a tile.
DEFAULT_TILE = 1024
#: Halo added on each side of a core: at least the radius of the largest object (nuclei, cells).
DEFAULT_HALO = 128


@dataclass(frozen=True, eq=False)
class TiledResult:
    """Objects found on a tiled plane.

    Parameters
    ----------
    labels : (H, W) uint32 array-like
        The canvas: ids ``1..K`` (numpy, or zarr for large planes); 0 = background.
    table : dict of str to list
        One row per id; ``area`` and bbox are those of the stitched object, plane coordinates.
    mode : str
        The everything mode that ran on each tile.
    tiles : int
    merged : int
        Objects found by two neighbouring tiles and kept once.
    cut : int
        Objects that touch their tile's outer border (larger than the halo: raise ``halo``).
    preprocess : PreprocessConfig
        The normalisation used for every tile (with the measured ``value_ranges``).
    """

    labels: object
    table: dict
    mode: str
    tiles: int = 0
    merged: int = 0
    cut: int = 0
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


def full_resolution(data):
    """The full-resolution level of a napari multiscale image (a list of levels), else ``data``."""
    if isinstance(data, (list, tuple)) or type(data).__name__ == "MultiScaleData":
        return data[0]
    return data


def needs_tiling(shape_hw, tile: int = DEFAULT_TILE) -> bool:
    """Whether a plane of ``(H, W)`` is larger than one tile on either side."""
    return int(shape_hw[0]) > int(tile) or int(shape_hw[1]) > int(tile)


def zarr_canvas(shape_hw, path=None, chunk: int = 1024):
    """A zero ``uint32`` label canvas as a zarr array (on disk at ``path``, else in memory).

    Chunks that stay background are never stored, so a mostly empty plane costs little.
    """
    try:
        import zarr
    except ImportError as err:  # pragma: no cover - zarr is in the "batch" extra
        raise UserInputError("Large planes need the zarr package: pip install 'napari-sam-micro[batch]'.") from err
    store = str(path) if path is not None else zarr.storage.MemoryStore()
    h, w = int(shape_hw[0]), int(shape_hw[1])
    return zarr.create_array(
        store, shape=(h, w), chunks=(min(chunk, h), min(chunk, w)), dtype="uint32", fill_value=0, overwrite=True
    )


def segment_tile(model, plane_tile, spec, preprocess, options, cache=None, model_id=None) -> Job[EverythingResult]:
    """Everything mode on one tile's pixels (a job); ``preprocess`` must carry ``value_ranges``."""
    if preprocess.value_ranges is None and not preprocess.rgb:
        raise ValueError("tiles need the plane's intensity ranges (measure_value_ranges)")
    return (yield from everything_job(model, plane_tile, spec, preprocess=preprocess, options=options, cache=cache, model_id=model_id))


def tiled_everything_job(
    model: PromptableModel,
    plane,
    spec,
    *,
    tile: int = DEFAULT_TILE,
    halo: int = DEFAULT_HALO,
    preprocess: PreprocessConfig | None = None,
    options: EverythingOptions | None = None,
    cache: EmbeddingCache | None = None,
    model_id: str | None = None,
    canvas=None,
    min_score: float = STITCH_MIN_SCORE,
    run_tiles=None,
) -> Job[TiledResult]:
    """Segment every object of a large (lazy) plane tile by tile; a job returning :class:`TiledResult`.

    Parameters
    ----------
    model, spec, options, model_id
        As for :func:`~napari_sam_micro.segmentation.everything_job`.
    plane : (H, W) or (H, W, C) array-like
        numpy, dask, zarr, or a napari multiscale list (its full-resolution level is segmented);
        channels last. Read one tile at a time.
    tile : int
        Largest tile core side in pixels.
    halo : int
        Context added around each core; at least the largest object's radius.
    preprocess : PreprocessConfig, optional
        Without ``value_ranges`` they are measured on a strided subsample of the plane first.
    cache : EmbeddingCache, optional
        Default: a new one per tile (embeddings of one tile are not reused by the next).
    canvas : (H, W) uint32 array-like, optional
        Where the labels are stitched (zeros); default numpy for planes up to 8192² pixels, else
        an in-memory zarr array (:func:`zarr_canvas`; pass one on disk for very large planes).
    min_score : float
        See :class:`~napari_sam_micro.core.tiles.TileStitcher`.
    run_tiles : callable, optional
        ``run_tiles(tiles, preprocess, options)``: a generator yielding :class:`Progress` and, for every tile
        in plan order, ``(tile, labels, table)`` (``labels`` None for a blank tile); e.g. tiles run
        as Dask tasks (:mod:`napari_sam_micro.scaleout`). Default: here, one after the other.
    """
    plane = full_resolution(plane)
    options = options or EverythingOptions()
    mode = everything_mode_for(spec, options.mode)
    if len(plane.shape) < 2:
        raise UserInputError(f"Expected a 2D image plane, got shape {tuple(plane.shape)}.")
    h, w = int(plane.shape[0]), int(plane.shape[1])
    yield Progress(0, 0, "Measuring the intensity range")
    config = preprocess or PreprocessConfig()
    needs_threshold = mode == MODE_SEEDS and options.foreground is None
    # the subsample of a lazy plane is read once, for both measurements
    sample = sample_plane(plane) if config.value_ranges is None or needs_threshold else None
    config = measure_value_ranges(plane, config, sample=sample)
    if needs_threshold:
        # one foreground threshold for every tile: with its own Otsu threshold a tile disagrees with
        # the whole plane about dim objects (core.seeds.foreground_threshold)
        options = replace(options, foreground=foreground_threshold(
            normalize_image(sample, config), step=sample_step(plane.shape[:2])))
    if canvas is None:
        canvas = np.zeros((h, w), np.uint32) if h * w <= 8192 * 8192 else zarr_canvas((h, w))
    stitcher = TileStitcher(canvas, min_score)
    tiles = plan_tiles((h, w), tile, halo)
    if run_tiles is None:
        source = local_tiles(model, plane, spec, tiles, config, options, cache, model_id)
    else:
        source = run_tiles(tiles, config, options)
    done = 0
    for item in source:
        if isinstance(item, Progress):
            yield Progress(done, len(tiles), f"Tile {done + 1} of {len(tiles)}: {item.message}")
            continue
        t, labels, table = item
        if labels is not None:
            stitcher.add(t, labels, table)
        done += 1
        yield Progress(done, len(tiles), f"Tile {done} of {len(tiles)} stitched")
    return TiledResult(canvas, stitcher.table(), mode, len(tiles), stitcher.merged, stitcher.cut, config)


def local_tiles(model, plane, spec, tiles, config, options, cache=None, model_id=None):
    """The tiles segmented here in plan order: yields :class:`Progress` and ``(tile, labels, table)``."""
    for t in tiles:
        res = yield from segment_tile_pixels(model, read_tile(plane, t), spec, config, options, cache, model_id)
        yield (t, None, None) if res is None else (t, res.labels, res.table)


def read_tile(plane, tile: Tile) -> np.ndarray:
    """The pixels of ``tile``'s outer window (only its chunks are read from a lazy plane)."""
    part = plane[tile.slices]
    if hasattr(part, "compute"):  # dask
        part = part.compute()
    return np.asarray(part)


def segment_tile_pixels(model, pixels, spec, config, options, cache=None, model_id=None) -> Job[EverythingResult | None]:
    """Everything mode on one tile's pixels; None for a blank (constant) tile, which needs no model."""
    if _blank(pixels):
        return None
    tile_cache = cache if cache is not None else EmbeddingCache()
    return (yield from segment_tile(model, pixels, spec, config, options, tile_cache, model_id))


def _blank(pixels: np.ndarray) -> bool:
    """A constant tile (e.g. the empty part of a slide scan) has no object: skip the model."""
    flat = pixels.reshape(-1, *pixels.shape[2:]) if pixels.ndim > 2 else pixels.ravel()
    return bool(flat.size == 0 or np.all(flat == flat[0]))
