"""GeoJSON polygons of a label image, in the form QuPath imports (*File → Import objects*).

A ``FeatureCollection`` with one ``Feature`` per object (per plane for nD labels):

* ``geometry``: ``Polygon`` (one piece, holes as interior rings) or ``MultiPolygon``, ``(x, y)``
  pixel coordinates in the pixel-corner convention QuPath uses (see
  :mod:`napari_sam_micro.core.polygons`), exterior rings counter-clockwise in x-right / y-up
  axes (RFC 7946's right-hand rule);
* ``properties``: ``objectType`` (``"detection"``, light-weight, for many cells, or
  ``"annotation"``, editable), ``name`` (``"object <id>"``), ``classification``
  (``{"name": ..., "color": [r, g, b]}``), ``isLocked`` false, and ``measurements``: label id,
  area (pixels), SAM's predicted IoU and stability score when known (NaN values are left out: JSON
  has no NaN); plus ``plane`` (the leading indices) for nD labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .coco import object_crops, rows_by_id
from .polygons import mask_polygons

__all__ = ["labels_to_geojson", "OBJECT_TYPES"]

#: QuPath object types a feature can have.
OBJECT_TYPES = ("detection", "annotation")


def _ring(ring: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 3), round(float(y), 3)] for x, y in ring]


def _geometry(polygons: list) -> dict:
    rings = [[_ring(exterior), *(_ring(h) for h in holes)] for exterior, holes in polygons]
    if len(rings) == 1:
        return {"type": "Polygon", "coordinates": rings[0]}
    return {"type": "MultiPolygon", "coordinates": rings}


def _measurements(label_id: int, area: int, row: Mapping) -> dict:
    out: dict[str, float] = {"label_id": float(label_id), "area_px": float(area)}
    for column in ("predicted_iou", "stability_score"):
        try:
            value = float(row.get(column, float("nan")))
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[column] = value
    return out


def labels_to_geojson(
    labels: np.ndarray,
    table: Mapping | None = None,
    *,
    object_type: str = "detection",
    classification: str = "Nucleus",
    color: tuple[int, int, int] = (255, 200, 0),
    tolerance: float = 0.25,
) -> dict:
    """A GeoJSON ``FeatureCollection`` of the objects of a label image (see the module docstring).

    Parameters
    ----------
    labels : (H, W) or (..., H, W) int
        0 background, one id per object.
    table : mapping of column to (N,) sequence, optional
        Object table with ``"index"`` (label id) and optionally ``predicted_iou``,
        ``stability_score``, ``prompt``.
    object_type : {"detection", "annotation"}
        QuPath's object type.
    classification : str
        QuPath class name of every object.
    color : (r, g, b)
        The class colour, 0-255.
    tolerance : float
        Polygon simplification in pixels (0.25: straight runs only; 0: every contour vertex).

    Returns
    -------
    dict
        JSON-serialisable ``FeatureCollection``.
    """
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {OBJECT_TYPES}, got {object_type!r}")
    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise ValueError(f"expected (..., H, W) labels, got shape {labels.shape}")
    rows = rows_by_id(table)
    features = []
    lead = labels.shape[:-2]
    for index in np.ndindex(*lead) if lead else [()]:
        for label_id, origin, crop in object_crops(labels[index]):
            row = rows.get(label_id, {})
            properties = {
                "objectType": object_type,
                "name": f"object {label_id}",
                "classification": {"name": classification, "color": [int(c) for c in color]},
                "isLocked": False,
                "measurements": _measurements(label_id, int(np.count_nonzero(crop)), row),
            }
            if isinstance(row.get("prompt"), str) and row["prompt"]:
                properties["prompt"] = row["prompt"]
            if index:
                properties["plane"] = [int(i) for i in index]
            geometry = _geometry(mask_polygons(crop, tolerance, offset=origin))
            features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return {"type": "FeatureCollection", "features": features}
