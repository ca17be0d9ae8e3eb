"""RefineWidget: proposals for existing objects, nothing written before accepting, one undo step."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.components import ViewerModel  # noqa: E402

from napari_sam_micro._napari.layers import layer_meta  # noqa: E402
from napari_sam_micro._napari.refine import REFINE_PREVIEW_ROLE  # noqa: E402
from napari_sam_micro._qt.refine import SCOPE_SELECTED, RefineWidget  # noqa: E402

RUN_TIMEOUT_MS = 60_000


def _viewer():
    labels = np.zeros((120, 160), np.int32)
    labels[20:40, 20:44] = 1
    labels[60:90, 100:130] = 2
    image = np.where(labels > 0, 1000, 100).astype(np.uint16)
    viewer = ViewerModel()
    viewer.add_image(image, name="cells")
    layer = viewer.add_labels(labels, name="cellpose")
    return viewer, layer


def _run(qtbot, widget):
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.job_panel.is_busy(), timeout=RUN_TIMEOUT_MS)


def _preview(viewer):
    return [layer for layer in viewer.layers if layer_meta(layer).get("role") == REFINE_PREVIEW_ROLE]


def test_proposals_are_shown_then_accepted_as_one_undo_step(qtbot, disk_test_model):
    viewer, layer = _viewer()
    widget = RefineWidget(viewer, model="disk-test")
    qtbot.addWidget(widget)
    before = layer.data.copy()
    _run(qtbot, widget)
    assert [r.label_id for r in widget.refined] == [1, 2]
    assert widget.table.rowCount() == 2
    np.testing.assert_array_equal(layer.data, before)  # nothing written yet
    (preview,) = _preview(viewer)
    assert set(np.unique(preview.data)) == {0, 1, 2}

    widget.set_checked([2])
    assert widget.accept_checked() == [2]
    assert widget.refined[0].label_id == 1 and widget.table.rowCount() == 1
    np.testing.assert_array_equal(layer.data == 1, before == 1)  # 1 not accepted: untouched
    assert (layer.data == 2).sum() != (before == 2).sum()
    assert layer.features.set_index("index").loc[2, "prompt"] == "refine"

    assert widget.accept_all() == [1]
    assert not widget.refined and not _preview(viewer)
    layer.undo()
    np.testing.assert_array_equal(layer.data == 1, before == 1)  # one undo step per accept
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_selected_objects_only_and_discard_leaves_the_labels(qtbot, disk_test_model):
    viewer, layer = _viewer()
    widget = RefineWidget(viewer, model="disk-test")
    qtbot.addWidget(widget)
    widget.scope_combo.value = SCOPE_SELECTED
    layer.selected_label = 2
    _run(qtbot, widget)
    assert [r.label_id for r in widget.refined] == [2]
    before = layer.data.copy()
    widget.discard()
    assert not _preview(viewer) and widget.table.rowCount() == 0
    np.testing.assert_array_equal(layer.data, before)
    widget.ids_edit.value = "7"
    assert widget.run() is None  # no object 7: a message, no job
    assert "no object with id 7" in widget.job_panel.status.text()
