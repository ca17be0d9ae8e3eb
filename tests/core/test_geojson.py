"""GeoJSON (QuPath) export: polygons rasterised back give the objects; properties as QuPath reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam_micro.core.geojson import labels_to_geojson
from napari_sam_micro.core.polygons import ring_area
from napari_sam_micro.core.synthetic import synthetic_nuclei

draw = pytest.importorskip("skimage.draw")


def _rasterise(geometry, shape):
    polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
    out = np.zeros(shape, bool)
    for exterior, *holes in polygons:
        # pixel-corner (x, y) -> pixel centres (row, col): half a pixel back
        xy = np.asarray(exterior) - 0.5
        rr, cc = draw.polygon(xy[:, 1], xy[:, 0], shape)
        out[rr, cc] = True
        for hole in holes:
            xy = np.asarray(hole) - 0.5
            rr, cc = draw.polygon(xy[:, 1], xy[:, 0], shape)
            out[rr, cc] = False
    return out


def test_geojson_polygons_rasterise_back_to_the_labels():
    _, labels = synthetic_nuclei(seed=1)
    labels = labels.astype(np.uint32)
    labels[300:330, 0:30] = 0
    labels[300:330, 0:30][np.pad(np.ones((10, 10), bool), 10, constant_values=False) == 0] = 71  # a hole
    labels[0:4, 500:504] = 72
    labels[8:10, 500:502] = 72  # two pieces of one object
    ids = np.unique(labels)[1:]
    table = {"index": ids, "predicted_iou": np.full(ids.size, 0.875), "stability_score": np.full(ids.size, np.nan)}
    collection = json.loads(json.dumps(labels_to_geojson(labels, table)))
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == ids.size
    rebuilt = np.zeros_like(labels)
    for feature in collection["features"]:
        props = feature["properties"]
        label_id = int(props["measurements"]["label_id"])
        mask = _rasterise(feature["geometry"], labels.shape)
        np.testing.assert_array_equal(mask, labels == label_id)
        rebuilt[mask] = label_id
        assert props["objectType"] == "detection" and props["classification"]["name"] == "Nucleus"
        assert props["measurements"]["predicted_iou"] == 0.875
        assert "stability_score" not in props["measurements"]  # NaN is not JSON
        assert props["measurements"]["area_px"] == (labels == label_id).sum()
        rings = feature["geometry"]["coordinates"]
        for polygon in rings if feature["geometry"]["type"] == "MultiPolygon" else [rings]:
            assert polygon[0][0] == polygon[0][-1]  # closed
            assert ring_area(np.asarray(polygon[0])) > 0  # exterior counter-clockwise (RFC 7946)
            assert all(ring_area(np.asarray(h)) < 0 for h in polygon[1:])
        if label_id == 71:
            assert feature["geometry"]["type"] == "Polygon" and len(feature["geometry"]["coordinates"]) == 2
        if label_id == 72:
            assert feature["geometry"]["type"] == "MultiPolygon"
    np.testing.assert_array_equal(rebuilt, labels)


def test_annotations_and_nd_planes():
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[1, 2:6, 2:6] = 3
    collection = labels_to_geojson(labels, object_type="annotation", classification="Cell")
    (feature,) = collection["features"]
    assert feature["properties"]["objectType"] == "annotation"
    assert feature["properties"]["plane"] == [1]
    assert feature["properties"]["classification"]["name"] == "Cell"
    ring = np.asarray(feature["geometry"]["coordinates"][0])
    assert ring[:, 0].min() == 2 and ring[:, 0].max() == 6  # x from the left edge of col 2 to the right edge of col 5
    with pytest.raises(ValueError, match="object_type"):
        labels_to_geojson(labels, object_type="cell")
