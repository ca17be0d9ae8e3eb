"""Tiles of a large plane and the stitching of their objects into one label image.

A plane too large for one everything-mode run is cut into **cores** that partition it; each tile
is its core plus a **halo** (``halo`` pixels each side, clipped at the plane border) and is
segmented on its own. Stitching then keeps, per tile, only the objects whose centre (centroid)
lies in its core: an object cut by the tile's outer border has its centre in the halo, so it is
taken from the neighbour where it lies whole (provided the halo is at least the largest object's
radius). Because the two tiles segment the shared halo independently, one object may still have
its centre in the core of each (a slightly different mask in each tile): the objects of a tile are
therefore matched (:func:`napari_sam_micro.core.overlap.match_overlaps`) to those already stitched
in the tile's region, and a matched pair is one object with one id, the same idea as linking
z-slices or frames. Pixels already labelled are never overwritten (the first tile wins), so the
result has no overlaps and every object one id.

The stitched labels live in any ``canvas`` that supports numpy slicing (a numpy array, a zarr array
or a memory map), read and written one tile region at a time, so memory is bounded by the tile.

Coordinates are ``(row, col)``; windows ``(y0, y1, x0, x1)`` are half-open.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .overlap import match_overlaps

__all__ = ["Tile", "plan_tiles", "core_object_ids", "TileStitcher", "STITCH_MIN_SCORE"]

#: Two objects of neighbouring tiles are one when their overlap covers at least this fraction of
#: the smaller one (``measure="min"``): a duplicate in the shared halo overlaps almost wholly,
#: two touching neighbours hardly at all.
STITCH_MIN_SCORE = 0.5

#: Table columns holding a row / a column coordinate (shifted from tile to plane coordinates).
_ROW_COLUMNS = ("bbox_y0", "bbox_y1", "point_y")
_COL_COLUMNS = ("bbox_x0", "bbox_x1", "point_x")


@dataclass(frozen=True)
class Tile:
    """One tile of a plane.

    Parameters
    ----------
    index : int
        Position in the plan (row-major).
    core : (y0, y1, x0, x1)
        The part of the plane this tile is responsible for (cores partition the plane).
    outer : (y0, y1, x0, x1)
        The core plus the halo, clipped to the plane: the pixels segmented.
    """

    index: int
    core: tuple[int, int, int, int]
    outer: tuple[int, int, int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)`` of the outer window."""
        y0, y1, x0, x1 = self.outer
        return y1 - y0, x1 - x0

    @property
    def slices(self) -> tuple[slice, slice]:
        """The outer window as ``(rows, cols)`` slices of the plane."""
        y0, y1, x0, x1 = self.outer
        return slice(y0, y1), slice(x0, x1)


def _edges(n: int, tile: int) -> np.ndarray:
    count = max(1, -(-n // tile))  # ceil: no core larger than ``tile``
    return np.linspace(0, n, count + 1).round().astype(int)


def plan_tiles(shape_hw, tile: int, halo: int) -> list[Tile]:
    """Cut an ``(H, W)`` plane into near-equal cores of at most ``tile`` pixels a side, plus halo.

    Parameters
    ----------
    shape_hw : (int, int)
    tile : int
        Largest core side in pixels (>= 1).
    halo : int
        Pixels added on every side of a core (>= 0); at least the largest object's radius.

    Returns
    -------
    list of Tile
        Row-major; a plane no larger than ``tile`` is one tile without halo.
    """
    h, w = int(shape_hw[0]), int(shape_hw[1])
    tile, halo = int(tile), int(halo)
    if tile < 1 or halo < 0:
        raise ValueError(f"tile must be >= 1 and halo >= 0, got tile={tile}, halo={halo}")
    ys, xs = _edges(h, tile), _edges(w, tile)
    tiles = []
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            core = (int(ys[i]), int(ys[i + 1]), int(xs[j]), int(xs[j + 1]))
            outer = (max(0, core[0] - halo), min(h, core[1] + halo), max(0, core[2] - halo), min(w, core[3] + halo))
            tiles.append(Tile(len(tiles), core, outer))
    return tiles


def _centroids(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area and centroid (row, col) of ids ``0..n`` (index = id)."""
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    rows, cols = np.indices(labels.shape)
    cy = np.bincount(flat, weights=rows.ravel(), minlength=n + 1) / np.maximum(area, 1)
    cx = np.bincount(flat, weights=cols.ravel(), minlength=n + 1) / np.maximum(area, 1)
    return area, cy, cx


def core_object_ids(labels: np.ndarray, tile: Tile) -> np.ndarray:
    """Ids of the tile's objects whose centroid lies in its core (the ones the tile keeps).

    Parameters
    ----------
    labels : (h, w) int
        The tile's labels, in its outer window (``tile.shape``).

    Returns
    -------
    (K,) int64, ascending
    """
    labels = np.asarray(labels)
    if labels.shape != tile.shape:
        raise ValueError(f"tile labels of shape {labels.shape}, expected {tile.shape}")
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros(0, np.int64)
    area, cy, cx = _centroids(labels.astype(np.int64, copy=False), n)
    oy, ox = tile.outer[0], tile.outer[2]
    cy, cx = cy + oy, cx + ox
    y0, y1, x0, x1 = tile.core
    inside = (area > 0) & (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
    inside[0] = False
    return np.flatnonzero(inside).astype(np.int64)


class TileStitcher:
    """Stitches tiles' labels and tables into one label image (``canvas``) and one table.

    Parameters
    ----------
    canvas : (H, W) array-like of uint32
        All zeros at the start; numpy, zarr or a memory map (read / written per tile region).
    min_score : float
        Overlap (over the smaller object) above which an object is the one already stitched there.

    Attributes
    ----------
    merged : int
        Objects found again by a neighbouring tile and kept as one.
    cut : int
        Kept objects touching their tile's outer border inside the plane (the halo was smaller than
        the object: it may be incomplete).
    """

    def __init__(self, canvas, min_score: float = STITCH_MIN_SCORE):
        self.canvas = canvas
        self.min_score = float(min_score)
        self.next_id = 1
        self.merged = 0
        self.cut = 0
        self._rows: dict[int, dict] = {}
        self._columns: list[str] = []

    def add(self, tile: Tile, labels: np.ndarray, table: dict | None = None) -> int:
        """Stitch one tile's objects; returns how many new objects it added.

        Parameters
        ----------
        tile : Tile
        labels : (h, w) int
            The tile's independently numbered objects in its outer window.
        table : dict of str to list, optional
            One row per id (``index`` column), tile coordinates; shifted to plane coordinates.
        """
        labels = np.asarray(labels)
        keep = core_object_ids(labels, tile)
        n = int(labels.max()) if labels.size else 0
        if keep.size == 0:
            return 0
        kept_lut = np.zeros(n + 1, np.int64)
        kept_lut[keep] = keep
        local = kept_lut[labels]
        sl = tile.slices
        existing = np.asarray(self.canvas[sl]).astype(np.uint32, copy=True)
        src, dst, _ = match_overlaps(local, existing, self.min_score, "min")
        lut = np.zeros(n + 1, np.uint32)
        lut[src] = dst.astype(np.uint32)
        free = existing == 0
        paint_count = np.bincount(local[free], minlength=n + 1)
        fresh = keep[(lut[keep] == 0) & (paint_count[keep] > 0)]
        lut[fresh] = np.arange(self.next_id, self.next_id + fresh.size, dtype=np.uint32)
        self.next_id += int(fresh.size)
        self.merged += int(src.size)
        painted_local = np.where(free & (lut[local] != 0), local, 0)
        existing[painted_local != 0] = lut[painted_local[painted_local != 0]]
        self.canvas[sl] = existing
        self._record(tile, painted_local, lut, table)
        self.cut += _touching_inner_border(painted_local, tile, self.canvas.shape)
        return int(fresh.size)

    def _record(self, tile: Tile, painted_local: np.ndarray, lut: np.ndarray, table: dict | None) -> None:
        oy, ox = tile.outer[0], tile.outer[2]
        rows_of = {}
        if table:
            for c in table:
                if c not in self._columns:
                    self._columns.append(c)
            rows_of = {int(i): k for k, i in enumerate(table.get("index", []))}
        boxes = ndi.find_objects(painted_local)
        area = np.bincount(painted_local.ravel(), minlength=len(boxes) + 1)
        for local_id, box in enumerate(boxes, start=1):
            if box is None:
                continue
            gid = int(lut[local_id])
            bbox = (box[0].start + oy, box[1].start + ox, box[0].stop + oy, box[1].stop + ox)
            row = self._rows.get(gid)
            if row is None:
                row = {c: table[c][rows_of[local_id]] for c in table} if local_id in rows_of else {}
                _shift(row, oy, ox)
                row.update(index=gid, area=0, bbox_y0=bbox[0], bbox_x0=bbox[1], bbox_y1=bbox[2], bbox_x1=bbox[3])
                self._rows[gid] = row
            row["area"] = int(row["area"]) + int(area[local_id])
            row["bbox_y0"], row["bbox_x0"] = min(row["bbox_y0"], bbox[0]), min(row["bbox_x0"], bbox[1])
            row["bbox_y1"], row["bbox_x1"] = max(row["bbox_y1"], bbox[2]), max(row["bbox_x1"], bbox[3])

    def table(self) -> dict:
        """The stitched objects, one row per id (ascending), plane coordinates."""
        cols = list(dict.fromkeys(["index", "area", *self._columns, "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]))
        ids = sorted(self._rows)
        return {c: [self._rows[i].get(c) for i in ids] for c in cols}


def _shift(row: dict, oy: int, ox: int) -> None:
    for c in _ROW_COLUMNS:
        if c in row and row[c] is not None:
            row[c] = type(row[c])(row[c] + oy)
    for c in _COL_COLUMNS:
        if c in row and row[c] is not None:
            row[c] = type(row[c])(row[c] + ox)


def _touching_inner_border(painted: np.ndarray, tile: Tile, shape_hw) -> int:
    """Objects of ``painted`` on an outer-window side that is not the plane's border."""
    y0, y1, x0, x1 = tile.outer
    h, w = int(shape_hw[0]), int(shape_hw[1])
    sides = []
    if y0 > 0:
        sides.append(painted[0])
    if y1 < h:
        sides.append(painted[-1])
    if x0 > 0:
        sides.append(painted[:, 0])
    if x1 < w:
        sides.append(painted[:, -1])
    if not sides:
        return 0
    ids = np.unique(np.concatenate(sides))
    return int(np.count_nonzero(ids))
