"""Object tables on Labels layers: conversion, merge by id, measuring, navigation, colours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

napari = pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402
from napari.layers import Labels  # noqa: E402

from napari_sam_micro._napari import features as F  # noqa: E402


def _two_objects(shape=(12, 14)):
    data = np.zeros(shape, dtype=np.uint16)
    data[1:3, 1:4] = 5  # 6 px, rows 1-2, cols 1-3
    data[6:9, 6:8] = 2  # 6 px
    return data


def test_table_to_frame_accepts_columns_rows_and_frames():
    columns = {"index": np.array([3, 1]), "area": np.array([10, 20])}
    rows = [{"index": 3, "area": 10}, {"index": 1, "area": 20}]
    for table in (columns, rows, pd.DataFrame(columns)):
        frame = F.table_to_frame(table)
        assert frame["index"].tolist() == [1, 3]
        assert frame["area"].tolist() == [20, 10]
    back = F.frame_to_table(F.table_to_frame(columns))
    assert back["index"].tolist() == [1, 3]
    with pytest.raises(ValueError, match="index"):
        F.table_to_frame({"area": [1]})


def test_merge_replaces_rows_by_id_and_keeps_other_columns():
    old = pd.DataFrame({"index": [1, 2], "area": [5, 6], "note": ["a", "b"]})
    merged = F.merge_object_rows(old, {"index": [2, 4], "area": [60, 70], "predicted_iou": [0.5, 0.9]}, drop=[1])
    assert merged["index"].tolist() == [2, 4]
    assert merged["area"].tolist() == [60, 70]
    assert merged["predicted_iou"].tolist() == [0.5, 0.9]
    assert merged["note"].isna().all()  # row 2 was replaced as a whole


def test_set_and_read_object_table_measures_the_data():
    layer = Labels(_two_objects())
    F.set_object_table(layer, {"index": [5, 7], "area": [999, 1], "predicted_iou": [0.9, 0.1]})
    # id 7 is not in the data: dropped; napari finds rows by "index".
    assert layer.features["index"].tolist() == [5]
    assert "predicted_iou: 0.9" in layer.get_status((1, 1))["coordinates"]
    table = F.read_object_table(layer)
    assert table["index"].tolist() == [2, 5]
    assert table["area"].tolist() == [6, 6]  # measured, not the stale 999
    assert np.isnan(table.loc[0, "predicted_iou"]) and table.loc[1, "predicted_iou"] == 0.9
    assert table.loc[1, list(F.BBOX_COLUMNS)].tolist() == [1, 1, 3, 4]


def test_read_object_table_of_an_empty_layer():
    table = F.read_object_table(Labels(np.zeros((4, 4), np.uint8)))
    assert table.shape[0] == 0 and "index" in table


def test_object_centroid_and_focus_in_world_coordinates_nd():
    data = np.zeros((3, 20, 30), dtype=np.uint8)
    data[2, 4:6, 10:14] = 9
    viewer = ViewerModel()
    layer = viewer.add_labels(data, scale=(1, 2, 3), translate=(0, 10, 0))
    assert F.object_centroid(data, 9).tolist() == [2.0, 4.5, 11.5]
    assert F.object_centroid(data, 4) is None
    assert F.focus_object(viewer, layer, 9)
    assert layer.selected_label == 9
    assert viewer.dims.current_step[0] == 2
    np.testing.assert_allclose(viewer.camera.center[-2:], (10 + 2 * 4.5, 3 * 11.5))
    assert not F.focus_object(viewer, layer, 4)


def test_colormaps_colour_by_value_and_flag_for_review():
    rgba = F.value_ramp_rgba([0.0, 0.5, 1.0, np.nan])
    assert rgba.shape == (4, 4) and rgba.dtype == np.float32
    red, yellow, green, grey = rgba
    assert red[0] > red[1] and green[1] > green[0]  # low is red, high is green
    assert yellow[0] > 0.9 and yellow[1] > 0.8
    assert np.allclose(grey[:3], 0.5)

    layer = Labels(_two_objects())
    layer.colormap = F.colormap_by_value([2, 5], [1.0, 0.0])
    mapped = layer.colormap.map(np.array([0, 2, 5], dtype=np.uint16))
    assert mapped[0, 3] == 0  # background transparent
    np.testing.assert_allclose(mapped[1], F.value_ramp_rgba([1.0])[0], atol=1e-6)
    np.testing.assert_allclose(mapped[2], F.value_ramp_rgba([0.0])[0], atol=1e-6)

    layer.colormap = F.review_colormap([2, 5], flagged=[5])
    mapped = layer.colormap.map(np.array([2, 5], dtype=np.uint16))
    np.testing.assert_allclose(mapped[0], F.GOOD_RGBA)
    np.testing.assert_allclose(mapped[1], F.FLAG_RGBA)


def test_present_ids_look_inside_each_objects_box_only(counted_plane):
    """A large layer is never read whole to tell which committed objects are still there."""
    from types import SimpleNamespace

    plane = counted_plane(8192, 1024, ((3000, 5000),))  # background 100, one disc of value 1000
    features = pd.DataFrame({"index": [1000, 7], "bbox_y0": [2990, 10], "bbox_x0": [4990, 10],
                             "bbox_y1": [3011, 30], "bbox_x1": [5011, 30]})
    layer = SimpleNamespace(data=plane.array, features=features)
    assert F.present_ids(layer, [1000, 7]) == {1000}
    assert plane.distinct == 2  # the two boxes' chunks, of 64
    small = Labels(np.zeros((40, 50), np.uint32))
    small.data[5:9, 5:9] = 3  # no bbox row: looked up in the whole layer
    small.features = pd.DataFrame({"index": [4], "bbox_y0": [0], "bbox_x0": [0], "bbox_y1": [40], "bbox_x1": [50]})
    assert F.present_ids(small, [3, 4]) == {3}
