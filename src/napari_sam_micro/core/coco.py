"""COCO instance-segmentation JSON from a label image (object detection / segmentation format).

One ``images`` entry per 2D plane (a 2D label image has one), one ``categories`` entry, and one
``annotations`` entry per object and plane, with

* ``segmentation``: compressed RLE (``{"size": [H, W], "counts": str}``, exact, holes included)
  or polygons (``[[x0, y0, x1, y1, ...], ...]``, one per piece; holes cannot be expressed and are
  filled), see :mod:`napari_sam_micro.core.polygons` for the coordinates;
* ``bbox`` ``[x, y, width, height]`` and ``area`` (pixel count), in pixels, ``(x, y)`` order;
* ``iscrowd`` 0, ``score`` = SAM's predicted IoU when the object table has one (as in COCO result
  files), and the plugin's ``label_id``, ``stability_score`` and ``prompt`` when known.

The RLE is COCO's: run lengths of the column-major (Fortran order) mask, starting with a run of 0s,
as a string (5-bit groups, continuation bit, differences to the run two before for runs after
the third); :func:`rle_encode` / :func:`rle_decode` implement it from that definition.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping

import numpy as np

from .polygons import mask_polygons

__all__ = ["rle_encode", "rle_decode", "labels_to_coco", "object_crops", "rows_by_id", "SEGMENTATION_KINDS"]

#: Values of ``segmentation`` in :func:`labels_to_coco`.
SEGMENTATION_KINDS = ("rle", "polygon")


def _runs(mask: np.ndarray) -> np.ndarray:
    """Run lengths of the column-major mask, the first one a (possibly empty) run of 0s."""
    flat = np.asarray(mask, bool).ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges)
    if flat.size and flat[0]:
        runs = np.concatenate([[0], runs])
    return runs.astype(np.int64)


def _encode_counts(runs: np.ndarray) -> str:
    chars = []
    for i, value in enumerate(runs.tolist()):
        x = value - runs[i - 2] if i > 2 else value
        x = int(x)
        while True:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative differences keep their sign
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
            if not more:
                break
    return "".join(chars)


def rle_encode(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a 2D mask: ``{"size": [H, W], "counts": str}``."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask.shape}")
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _encode_counts(_runs(mask))}


def rle_decode(rle: Mapping) -> np.ndarray:
    """The ``(H, W)`` bool mask of a COCO RLE (compressed string or uncompressed list of counts)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (bytes, str)):
        counts = _decode_counts(counts.decode("ascii") if isinstance(counts, bytes) else counts)
    flat = np.zeros(h * w, bool)
    pos = 0
    for i, n in enumerate(counts):
        if i % 2:
            flat[pos : pos + int(n)] = True
        pos += int(n)
    if pos != h * w:
        raise ValueError(f"RLE counts cover {pos} pixels, the size {h} x {w} has {h * w}")
    return flat.reshape((h, w), order="F")


def _decode_counts(text: str) -> list[int]:
    runs: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def rows_by_id(table: Mapping | None) -> dict[int, dict]:
    """``{label id: {column: value}}`` of an object table with an ``"index"`` column (empty without one)."""
    if table is None or "index" not in table:
        return {}
    columns = {k: list(v) for k, v in table.items()}
    return {int(i): {k: v[n] for k, v in columns.items()} for n, i in enumerate(columns["index"])}


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def object_crops(plane: np.ndarray):
    """``(label_id, (row0, col0), crop_mask)`` of every object of a 2D label plane, ids ascending.

    ``crop_mask`` is the object's pixels inside its bounding box; one pass over the plane
    (:func:`scipy.ndimage.find_objects`), not one per object.
    """
    from scipy import ndimage as ndi

    plane = np.asarray(plane)
    ids = np.unique(plane)
    ids = ids[ids != 0]
    if ids.size == 0:
        return
    # find_objects lists every id up to the largest: sparse or huge ids are renumbered 1..K first
    compact = plane
    if int(ids[-1]) > 4 * ids.size + 1024 or int(ids[0]) < 0 or plane.dtype.kind not in "iu":
        compact = np.searchsorted(ids, plane).astype(np.int64) + 1
        compact[plane == 0] = 0
        slices = ndi.find_objects(compact)
        keys = range(1, ids.size + 1)
    else:
        slices = ndi.find_objects(plane)
        keys = ids.tolist()
    for label_id, key in zip(ids.tolist(), keys):
        box = slices[key - 1]
        yield int(label_id), (box[0].start, box[1].start), compact[box] == key


def _crop_rle(crop: np.ndarray, origin: tuple[int, int], shape: tuple[int, int]) -> dict:
    """:func:`rle_encode` of the full-size mask that is ``crop`` at ``origin`` (no full-size array)."""
    h, w = shape
    cols, rows = np.nonzero(crop.T)  # the object's pixels in column-major order
    flat = (cols.astype(np.int64) + origin[1]) * h + (rows.astype(np.int64) + origin[0])
    starts = np.concatenate([[0], np.flatnonzero(np.diff(flat) != 1) + 1])
    ends = np.concatenate([starts[1:], [flat.size]])
    run_start, run_len = flat[starts], ends - starts
    gaps = run_start - np.concatenate([[0], run_start[:-1] + run_len[:-1]])
    tail = h * w - (run_start[-1] + run_len[-1])
    runs = np.empty(2 * run_len.size + 1, np.int64)
    runs[0:-1:2], runs[1::2], runs[-1] = gaps, run_len, tail
    if runs[-1] == 0:
        runs = runs[:-1]
    return {"size": [int(h), int(w)], "counts": _encode_counts(runs)}


def _plane_annotations(plane: np.ndarray, image_id: int, next_id: int, rows: dict, segmentation: str, tolerance: float) -> list[dict]:
    """Annotations of one 2D plane's objects (ids ascending)."""
    out = []
    for label_id, (y0, x0), crop in object_crops(plane):
        ann = {
            "id": next_id + len(out),
            "image_id": image_id,
            "category_id": 1,
            "bbox": [int(x0), int(y0), int(crop.shape[1]), int(crop.shape[0])],
            "area": int(np.count_nonzero(crop)),
            "iscrowd": 0,
            "label_id": int(label_id),
        }
        if segmentation == "rle":
            ann["segmentation"] = _crop_rle(crop, (y0, x0), plane.shape)
        else:
            ann["segmentation"] = [
                [round(float(v), 3) for v in exterior[:-1].ravel()]
                for exterior, _ in mask_polygons(crop, tolerance, offset=(y0, x0))
            ]
        row = rows.get(int(label_id), {})
        score = _finite(row.get("predicted_iou"))
        if score is not None:
            ann["score"] = score
        stability = _finite(row.get("stability_score"))
        if stability is not None:
            ann["stability_score"] = stability
        if isinstance(row.get("prompt"), str) and row["prompt"]:
            ann["prompt"] = row["prompt"]
        out.append(ann)
    return out


def labels_to_coco(
    labels: np.ndarray,
    table: Mapping | None = None,
    *,
    image_name: str = "image",
    category: str = "object",
    segmentation: str = "rle",
    tolerance: float = 0.25,
) -> dict:
    """A COCO instance-segmentation dataset of one label image (see the module docstring).

    Parameters
    ----------
    labels : (H, W) or (..., H, W) int
        0 background, one id per object; leading axes (z, t ...) give one COCO image per plane.
    table : mapping of column to (N,) sequence, optional
        Object table with ``"index"`` (label id) and optionally ``predicted_iou``,
        ``stability_score``, ``prompt``.
    image_name : str
        ``file_name`` of the image entry (planes get ``" [z=3]"``-style suffixes by index).
    category : str
        Name of the single category.
    segmentation : {"rle", "polygon"}
    tolerance : float
        Polygon simplification in pixels: 0.25 (default) drops the vertices on straight runs
        only (the polygon rasterises back to the same pixels); 0 keeps every contour vertex.

    Returns
    -------
    dict
        ``info``, ``licenses``, ``images``, ``categories``, ``annotations``; JSON-serialisable.
    """
    if segmentation not in SEGMENTATION_KINDS:
        raise ValueError(f"segmentation must be one of {SEGMENTATION_KINDS}, got {segmentation!r}")
    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise ValueError(f"expected (..., H, W) labels, got shape {labels.shape}")
    h, w = labels.shape[-2:]
    rows = rows_by_id(table)
    images, annotations = [], []
    lead = labels.shape[:-2]
    for k, index in enumerate(np.ndindex(*lead) if lead else [()], start=1):
        suffix = " [" + ", ".join(f"axis {a}={i}" for a, i in enumerate(index)) + "]" if index else ""
        images.append({"id": k, "file_name": f"{image_name}{suffix}", "width": int(w), "height": int(h)})
        annotations += _plane_annotations(labels[index], k, len(annotations) + 1, rows, segmentation, tolerance)
    return {
        "info": {
            "description": f"Instance segmentation of {image_name} (napari-sam-micro)",
            "version": "1.0",
            "date_created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "licenses": [],
        "images": images,
        "categories": [{"id": 1, "name": category, "supercategory": category}],
        "annotations": annotations,
    }
