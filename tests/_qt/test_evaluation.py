"""EvaluationWidget: scores of a prediction layer against a reference layer, IoU colouring."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.components import ViewerModel  # noqa: E402

from napari_sam_micro._napari.features import value_ramp_rgba  # noqa: E402
from napari_sam_micro._qt.evaluation import EvaluationWidget, prediction_ious  # noqa: E402
from napari_sam_micro.core.metrics import instance_scores  # noqa: E402


def _pair():
    gt = np.zeros((40, 40), dtype=np.uint16)
    gt[0:10, 0:10] = 1  # matched exactly by pred 7
    gt[20:30, 20:30] = 2  # pred 3 covers 10x5 of it: IoU 0.5
    gt[30:40, 0:10] = 4  # missed
    pred = np.zeros_like(gt)
    pred[0:10, 0:10] = 7
    pred[20:30, 20:25] = 3
    pred[0:5, 30:40] = 9  # false positive
    return gt, pred


def test_prediction_ious_gives_best_overlap_per_predicted_object():
    gt, pred = _pair()
    ids, best, ref = prediction_ious(gt, pred)
    assert ids.tolist() == [3, 7, 9]
    np.testing.assert_allclose(best, [0.5, 1.0, 0.0])
    assert ref.tolist() == [2, 1, 0]


def test_widget_reports_scores_and_colours_prediction(qtbot):
    gt, pred = _pair()
    viewer = ViewerModel()
    pred_layer = viewer.add_labels(pred, name="prediction")
    gt_layer = viewer.add_labels(gt, name="ground truth")
    original = pred_layer.colormap
    widget = EvaluationWidget(viewer)
    qtbot.addWidget(widget)
    # The layer named like ground truth is taken as the reference.
    assert widget.reference_combo.current_layer() is gt_layer
    assert widget.prediction_combo.current_layer() is pred_layer

    scores = widget.evaluate()
    expected = instance_scores(gt, pred)
    assert scores["f1"] == pytest.approx(expected["f1"])
    assert scores["tp"] == 2 and scores["fp"] == 1 and scores["fn"] == 1
    assert widget.result_labels["f1"].text() == f"{expected['f1']:.3f}"
    assert widget.result_labels["objects"].text() == "3 / 3"
    assert widget.result_labels["map"].text() == f"{expected['map']:.3f}"
    assert widget.table.rowCount() == 3

    colours = pred_layer.colormap.map(np.array([7, 3, 9], dtype=np.uint16))
    np.testing.assert_allclose(colours, value_ramp_rgba([1.0, 0.5, 0.0]), atol=1e-6)

    widget.table.selectRow([widget.table.item(r, 0).text() for r in range(3)].index("9"))
    assert pred_layer.selected_label == 9

    widget.restore_colours()
    assert pred_layer.colormap is original


def test_widget_explains_layers_that_cannot_be_compared(qtbot):
    viewer = ViewerModel()
    a = viewer.add_labels(np.zeros((10, 10), np.uint8), name="a")
    b = viewer.add_labels(np.zeros((12, 10), np.uint8), name="b")
    widget = EvaluationWidget(viewer)
    qtbot.addWidget(widget)
    widget.set_layers(a, b)
    assert widget.evaluate() is None
    assert "different shapes" in widget.message.text()
    widget.set_layers(a, a)
    assert widget.evaluate() is None
    assert "same layer" in widget.message.text()
