"""ObjectsTableWidget: follows a Labels layer's features, navigates, flags low predicted IoU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.components import ViewerModel  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402

from napari_sam_micro._napari.features import FLAG_RGBA, GOOD_RGBA  # noqa: E402
from napari_sam_micro._qt.objects_table import ObjectsTableWidget  # noqa: E402


def _labels():
    data = np.zeros((40, 50), dtype=np.uint16)
    data[2:6, 3:9] = 1  # 24 px
    data[20:30, 30:40] = 2  # 100 px
    data[32:36, 5:7] = 3  # 8 px
    return data


def _features():
    return pd.DataFrame(
        {
            "index": [1, 2, 3],
            "area": [24, 100, 8],
            "predicted_iou": [0.95, 0.40, 0.70],
            "stability_score": [0.9, 0.8, 0.5],
            "prompt": ["points", "box", "box+points"],
        }
    )


@pytest.fixture
def viewer():
    return ViewerModel()


def _column(widget, column):
    return [widget.table.item(r, column).text() for r in range(widget.table.rowCount())]


def test_table_shows_features_and_follows_changes(qtbot, viewer):
    layer = viewer.add_labels(_labels(), features=_features())
    widget = ObjectsTableWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.layer() is layer
    assert widget.object_ids() == [1, 2, 3]
    assert _column(widget, 2) == ["0.950", "0.400", "0.700"]
    assert _column(widget, 1) == ["24", "100", "8"]
    assert "box" in _column(widget, 4)[1] and "rows 20–30" in _column(widget, 4)[1]

    # A commit elsewhere adds an object and its row: the table follows.
    data = layer.data.copy()
    data[10:12, 40:42] = 4
    layer.data = data
    layer.features = pd.concat(
        [_features(), pd.DataFrame({"index": [4], "area": [4], "predicted_iou": [0.99], "stability_score": [1.0]})],
        ignore_index=True,
    )
    qtbot.waitUntil(lambda: widget.object_ids() == [1, 2, 3, 4], timeout=3000)
    assert _column(widget, 2)[3] == "0.990"


def test_hand_painted_objects_appear_without_scores(qtbot, viewer):
    viewer.add_labels(_labels())
    widget = ObjectsTableWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.object_ids() == [1, 2, 3]
    assert _column(widget, 2) == ["–", "–", "–"]
    assert widget.flagged_ids() == []


def test_selecting_a_row_selects_the_label_and_centres_the_camera(qtbot, viewer):
    layer = viewer.add_labels(_labels(), features=_features(), scale=(2.0, 2.0))
    widget = ObjectsTableWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.select_object(2)
    assert layer.selected_label == 2
    np.testing.assert_allclose(viewer.camera.center[-2:], (2 * 24.5, 2 * 34.5))


def test_sorting_by_predicted_iou_is_numeric(qtbot, viewer):
    viewer.add_labels(_labels(), features=_features())
    widget = ObjectsTableWidget(viewer)
    qtbot.addWidget(widget)
    widget.table.sortItems(2, Qt.AscendingOrder)
    assert widget.object_ids() == [2, 3, 1]
    widget.table.sortItems(1, Qt.DescendingOrder)
    assert widget.object_ids() == [2, 1, 3]


def test_highlight_below_iou_recolours_and_restores(qtbot, viewer):
    layer = viewer.add_labels(_labels(), features=_features())
    original = layer.colormap
    widget = ObjectsTableWidget(viewer)
    qtbot.addWidget(widget)
    widget.threshold_spin.setValue(0.8)
    widget.highlight_check.setChecked(True)
    assert widget.flagged_ids() == [2, 3]
    colours = layer.colormap.map(np.array([1, 2, 3], dtype=np.uint16))
    np.testing.assert_allclose(colours[0], GOOD_RGBA)
    np.testing.assert_allclose(colours[1], FLAG_RGBA)
    np.testing.assert_allclose(colours[2], FLAG_RGBA)
    assert "2 with predicted IoU below 0.80" in widget.summary.text()

    widget.threshold_spin.setValue(0.5)
    assert widget.flagged_ids() == [2]
    colours = layer.colormap.map(np.array([3], dtype=np.uint16))
    np.testing.assert_allclose(colours[0], GOOD_RGBA)

    assert widget.select_next_flagged() == 2
    assert layer.selected_label == 2

    widget.highlight_check.setChecked(False)
    assert layer.colormap is original


def test_layer_list_changes_are_followed(qtbot, viewer):
    widget = ObjectsTableWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.layer() is None and widget.table.rowCount() == 0
    first = viewer.add_labels(_labels(), name="first")
    assert widget.layer() is first and widget.table.rowCount() == 3
    second = viewer.add_labels(np.zeros((5, 5), np.uint8), name="second")
    widget.set_layer(second)
    assert widget.table.rowCount() == 0
    viewer.layers.remove(second)
    assert widget.layer() is first
    first.name = "renamed"
    assert widget.layer_combo.currentText() == "renamed"
