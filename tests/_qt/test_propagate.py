"""The Propagate panel inside the Annotator (scripted disk model): one undo step, ids, key, messages."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytest.importorskip("segment_anything")

from napari.components import ViewerModel  # noqa: E402
from napari.utils.key_bindings import coerce_keybinding  # noqa: E402

import napari_sam_micro._qt.propagate as propagate_module  # noqa: E402
from napari_sam_micro._qt.annotator import AnnotatorWidget  # noqa: E402
from napari_sam_micro._qt.propagate import KEY_PROPAGATE, PLANES_METADATA, PropagatePanel  # noqa: E402

WAIT_MS = 120_000


def _stack(n=7, shape=(96, 128)):
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (n, *shape))
    img[:, 30:60, 40:80] += 120
    return img.astype(np.uint16)


@pytest.fixture
def notes(monkeypatch):
    shown: list[tuple[str, str]] = []
    for kind in ("show_info", "show_warning"):
        monkeypatch.setattr(propagate_module, kind, (lambda k: (lambda msg: shown.append((k, str(msg)))))(kind))
    return shown


def _setup(qtbot, disk_test_model, plane=3):
    viewer = ViewerModel()
    viewer.add_image(_stack(), name="stack")
    viewer.dims.set_current_step(0, plane)
    widget = AnnotatorWidget(viewer, model="disk-test")
    qtbot.addWidget(widget)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.session is not None, timeout=WAIT_MS)
    panel = widget.findChild(PropagatePanel)
    assert panel is not None
    return viewer, widget, panel


def _preview(qtbot, widget):
    widget.layers.boxes.add_rectangles(np.array([[3, 30, 40], [3, 30, 80], [3, 60, 80], [3, 60, 40]]))
    qtbot.waitUntil(lambda: widget.session.preview is not None and not widget.is_busy(), timeout=WAIT_MS)


def test_preview_propagated_with_the_key_is_one_undo_step(qtbot, disk_test_model):
    viewer, widget, panel = _setup(qtbot, disk_test_model)
    _preview(qtbot, widget)
    panel.first_spin.setValue(1)
    panel.last_spin.setValue(5)
    assert coerce_keybinding(KEY_PROPAGATE) in viewer.keymap
    viewer.keymap[coerce_keybinding(KEY_PROPAGATE)](viewer)
    assert panel.is_busy()
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=WAIT_MS)
    out = widget.layers.output
    planes = [p for p in range(7) if (out.data[p] == 1).any()]
    assert planes == [1, 2, 3, 4, 5] and set(np.unique(out.data)) == {0, 1}
    row = out.features[out.features["index"] == 1].iloc[0]
    assert row["prompt"] == "propagated" and row["planes"] == 5 and row["weakest_plane"] in planes
    assert sorted(out.metadata[PLANES_METADATA][1]["iou"]) == planes
    assert "weakest" in panel.status.text()
    assert f"weakest plane {int(row['weakest_plane'])}" in widget.objects.table.item(0, 4).text()
    out.undo()  # one Ctrl+Z removes every plane
    assert not out.data.any()


def test_committed_label_keeps_its_id_and_other_labels_are_kept(qtbot, disk_test_model):
    viewer, widget, panel = _setup(qtbot, disk_test_model)
    out = widget.layers.output
    out.data[3, 35:55, 45:75] = 4  # a committed object on the shown plane
    out.data[4, 30:40, 40:50] = 9  # another object in the way on plane 4
    panel.label_spin.setValue(4)
    panel.direction_combo.setCurrentIndex(panel.direction_combo.findData("forward"))
    panel.last_spin.setValue(4)
    assert panel.propagate()
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=WAIT_MS)
    assert (out.data[4] == 4).any() and (out.data[4, 30:40, 40:50] == 9).all()
    assert not (out.data[[0, 1, 2, 5, 6]] == 4).any()


def test_nothing_to_propagate_says_why(qtbot, disk_test_model, notes):
    viewer, widget, panel = _setup(qtbot, disk_test_model)
    assert not panel.propagate()
    assert any("no object to propagate" in msg for _, msg in notes)
    panel.label_spin.setValue(12)
    assert not panel.propagate()
    assert any("Label 12 is not on the shown plane" in msg for _, msg in notes)


def test_the_plane_range_spans_the_stack_and_follows_it(qtbot, disk_test_model):
    viewer, widget, panel = _setup(qtbot, disk_test_model)
    assert (panel.first_spin.value(), panel.last_spin.value()) == (0, 6)  # the 7-plane stack, not 100000
    assert panel.last_spin.maximum() == 6
    viewer.add_image(np.zeros((12, 96, 128), np.uint16), name="longer")  # the viewer's z range grows
    assert panel.last_spin.value() == 11 and panel.first_spin.maximum() == 11
    panel.last_spin.setValue(4)  # a chosen end is kept when the range changes
    viewer.layers.remove("longer")
    assert panel.last_spin.value() == 4 and panel.last_spin.maximum() == 6


def test_stop_between_stacked_objects_sets_the_waist_rule(qtbot, disk_test_model):
    from napari_sam_micro.core.propagation import WAIST_STOP

    viewer, widget, panel = _setup(qtbot, disk_test_model)
    assert panel.options(1, 3).rules.waist_ratio is None  # off by default (time-lapses)
    panel.waist_check.setChecked(True)
    assert panel.options(1, 3).rules.waist_ratio == WAIST_STOP
    widget.close()


def test_a_2d_image_offers_no_planes(qtbot, disk_test_model):
    viewer = ViewerModel()
    viewer.add_image(_stack()[0], name="plane")
    widget = AnnotatorWidget(viewer, model="disk-test")
    qtbot.addWidget(widget)
    panel = widget.findChild(PropagatePanel)
    assert panel.axis_combo.count() == 0 and (panel.first_spin.maximum(), panel.last_spin.value()) == (0, 0)
    viewer.add_image(_stack(), name="stack")  # a stack arrives: its planes are offered
    assert panel.last_spin.value() == 6
    widget.close()
