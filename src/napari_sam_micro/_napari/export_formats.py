"""npe2 writers for exchange formats: COCO instance JSON and GeoJSON polygons (QuPath).

*File → Save Selected Layers…* on a Labels layer, then one of

* "SAM Micro COCO JSON (RLE)" / "(polygons)" → ``.json``: :func:`napari_sam_micro.core.coco.labels_to_coco`
  (predicted IoU as ``score``);
* "SAM Micro GeoJSON (QuPath detections)" / "(annotations)" → ``.geojson``:
  :func:`napari_sam_micro.core.geojson.labels_to_geojson`.

The object table comes from the layer's ``features`` (as for the TIFF writer); the image name
from the plugin's layer metadata, else the layer's name. Files are written atomically. A refusal
(e.g. labels that are not whole numbers) is a :class:`~napari_sam_micro._napari.writer.SaveRefusedError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .writer import SaveRefusedError, layer_table

__all__ = ["write_coco_rle", "write_coco_polygons", "write_geojson_detections", "write_geojson_annotations"]


def _labels(data: Any, target: Path) -> np.ndarray:
    if isinstance(data, (list, tuple)):  # multiscale: full resolution only
        data = data[0]
    labels = np.asarray(data)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if labels.dtype.kind not in "iu" or labels.ndim < 2:
        raise SaveRefusedError(
            f"Nothing was saved to {target}: only label images of whole numbers with at least two dimensions can be "
            f"exported, got {labels.dtype} data of shape {labels.shape}."
        )
    return labels


def _image_name(meta: dict) -> str:
    from .layers import META_KEY

    ours = ((meta or {}).get("metadata") or {}).get(META_KEY)
    if isinstance(ours, dict) and ours.get("image"):
        return str(ours["image"])
    return str((meta or {}).get("name") or "image")


def _target(path: str, suffix: str) -> Path:
    target = Path(path)
    if target.suffix.lower() != suffix:
        target = target.with_name(target.name + suffix)
    if not target.parent.is_dir():
        raise SaveRefusedError(f"Nothing was saved to {target}: the folder {target.parent} does not exist.")
    return target


def _write_json(target: Path, document: dict) -> list[str]:
    from ..core.export import write_text_atomic

    write_text_atomic(target, json.dumps(document, separators=(",", ":")))
    return [str(target)]


def _coco(path: str, data: Any, meta: dict, segmentation: str) -> list[str]:
    from ..core.coco import labels_to_coco

    target = _target(path, ".json")
    labels = _labels(data, target)
    document = labels_to_coco(labels, layer_table(meta), image_name=_image_name(meta), segmentation=segmentation)
    return _write_json(target, document)


def _geojson(path: str, data: Any, meta: dict, object_type: str) -> list[str]:
    from ..core.geojson import labels_to_geojson

    target = _target(path, ".geojson")
    labels = _labels(data, target)
    return _write_json(target, labels_to_geojson(labels, layer_table(meta), object_type=object_type))


def write_coco_rle(path: str, data: Any, meta: dict) -> list[str]:
    """COCO instance JSON, masks as compressed RLE (exact); returns the path written."""
    return _coco(path, data, meta, "rle")


def write_coco_polygons(path: str, data: Any, meta: dict) -> list[str]:
    """COCO instance JSON, masks as polygons (holes filled); returns the path written."""
    return _coco(path, data, meta, "polygon")


def write_geojson_detections(path: str, data: Any, meta: dict) -> list[str]:
    """GeoJSON FeatureCollection of QuPath detections; returns the path written."""
    return _geojson(path, data, meta, "detection")


def write_geojson_annotations(path: str, data: Any, meta: dict) -> list[str]:
    """GeoJSON FeatureCollection of QuPath annotations (editable); returns the path written."""
    return _geojson(path, data, meta, "annotation")
