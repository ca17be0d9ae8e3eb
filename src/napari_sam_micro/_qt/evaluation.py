"""Evaluation panel: compare a prediction Labels layer with a reference (ground truth) one.

Reports the object-level scores of :func:`napari_sam_micro.core.metrics.instance_scores`
(matched objects and their IoU, mean IoU, precision / recall / F1 at IoU 0.5, mAP over
0.5:0.95) and colours the prediction's objects by their best IoU with any reference object
(red = no match … green = perfect), with a button to restore the layer's colours. The table lists
every predicted object with its best IoU and the reference object it overlaps most; clicking a
row selects the object and centres the view on it.

The same numbers are available without napari: ``napari_sam_micro.core.metrics.instance_scores``
and the command line (``napari-sam-micro metrics GT PRED``).
"""

from __future__ import annotations

import math

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QSignalBlocker, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from ..core.metrics import instance_scores, iou_matrix
from .._napari.features import colormap_by_value, focus_object
from .layer_picker import LayerComboBox
from .objects_table import numeric_item

__all__ = ["EvaluationWidget", "prediction_ious"]

_RESULT_FIELDS = (
    ("objects", "Objects (reference / prediction)"),
    ("matched", "Matched at IoU ≥ 0.5"),
    ("precision", "Precision @ 0.5"),
    ("recall", "Recall @ 0.5"),
    ("f1", "F1 @ 0.5"),
    ("mean_iou", "Mean IoU of matched objects"),
    ("map", "mAP (IoU 0.5:0.95)"),
)


def prediction_ious(reference: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best IoU of every predicted object with any reference object.

    Parameters
    ----------
    reference, prediction : np.ndarray
        Integer label images of the same shape, 0 = background.

    Returns
    -------
    pred_ids : (P,) int64
        Predicted ids, ascending.
    best_iou : (P,) float64
        Highest IoU of each with a reference object (0 when it overlaps none).
    best_ref : (P,) int64
        The reference id reaching it (0 when none).
    """
    ref_ids, pred_ids, iou = iou_matrix(reference, prediction)
    if iou.shape[0] == 0:
        return pred_ids, np.zeros(pred_ids.size), np.zeros(pred_ids.size, dtype=np.int64)
    best = iou.max(axis=0)
    best_ref = np.where(best > 0, ref_ids[iou.argmax(axis=0)], 0)
    return pred_ids, best, best_ref.astype(np.int64)


class EvaluationWidget(QWidget):
    """Scores of a prediction Labels layer against a reference Labels layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer or ViewerModel
        The viewer.
    parent : QWidget, optional
        Qt parent.

    Attributes
    ----------
    scores : dict or None
        The last result of :func:`~napari_sam_micro.core.metrics.instance_scores`.
    """

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.scores: dict | None = None
        self._coloured = None  # (layer, saved colormap)
        self._evaluated = None  # prediction layer the table describes

        self.prediction_combo = LayerComboBox(napari_viewer, Labels, self)
        self.prediction_combo.setToolTip("The labels to score (e.g. the output of everything mode or the annotator).")
        self.reference_combo = LayerComboBox(napari_viewer, Labels, self)
        self.reference_combo.setToolTip("The ground truth: hand-made labels of the same image.")
        self._default_reference()
        self.colour_check = QCheckBox("Colour predicted objects by IoU", self)
        self.colour_check.setChecked(True)
        self.colour_check.setToolTip(
            "Red: no matching reference object; yellow: IoU 0.5; green: perfect overlap. "
            "Untick or press 'Restore colours' to get the layer's colours back."
        )
        self.evaluate_button = QPushButton("Evaluate", self)
        self.restore_button = QPushButton("Restore colours", self)
        self.restore_button.setEnabled(False)

        form = QFormLayout()
        form.addRow("Prediction:", self.prediction_combo)
        form.addRow("Reference:", self.reference_combo)
        self.result_labels: dict[str, QLabel] = {}
        results = QFormLayout()
        for key, title in _RESULT_FIELDS:
            label = QLabel("–", self)
            label.setTextInteractionFlags(Qt.TextSelectableByMouse)
            self.result_labels[key] = label
            results.addRow(title + ":", label)
        self.message = QLabel(self)
        self.message.setWordWrap(True)

        self.table = QTableWidget(0, 3, self)
        self.table.setHorizontalHeaderLabels(["prediction id", "best IoU", "reference id"])
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.table.horizontalHeader().setSortIndicator(1, Qt.AscendingOrder)
        self.table.setSortingEnabled(True)
        self.table.setToolTip("Click a row to select that predicted object and centre the view on it.")
        self.table.itemSelectionChanged.connect(self._on_selection)

        buttons = QHBoxLayout()
        buttons.addWidget(self.evaluate_button)
        buttons.addWidget(self.restore_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.colour_check)
        layout.addLayout(buttons)
        layout.addLayout(results)
        layout.addWidget(self.message)
        layout.addWidget(self.table, 1)

        self.evaluate_button.clicked.connect(self.evaluate)
        self.restore_button.clicked.connect(self.restore_colours)
        self.colour_check.toggled.connect(lambda on: None if on else self.restore_colours())

    # -- public ----------------------------------------------------------------------------
    def set_layers(self, prediction: Labels, reference: Labels) -> None:
        """Choose the prediction and reference layers."""
        self.prediction_combo.set_layer(prediction)
        self.reference_combo.set_layer(reference)

    def evaluate(self) -> dict | None:
        """Score the chosen layers, show the result, colour the prediction; returns the scores.

        Returns None (and says why in the panel) when the layers cannot be compared.
        """
        pred_layer = self.prediction_combo.current_layer()
        ref_layer = self.reference_combo.current_layer()
        problem = None
        if pred_layer is None or ref_layer is None:
            problem = "Add two Labels layers: a prediction and a reference (ground truth)."
        elif pred_layer is ref_layer:
            problem = "The prediction and the reference are the same layer; pick the ground truth as reference."
        elif tuple(pred_layer.data.shape) != tuple(ref_layer.data.shape):
            problem = (
                f"The layers have different shapes (prediction {tuple(pred_layer.data.shape)}, "
                f"reference {tuple(ref_layer.data.shape)}); they must label the same image."
            )
        if problem is not None:
            self._show_problem(problem)
            return None
        prediction = np.asarray(pred_layer.data)
        reference = np.asarray(ref_layer.data)
        try:
            scores = instance_scores(reference, prediction)
        except ValueError as err:  # e.g. a float layer holding non-integer values
            self._show_problem(f"These layers cannot be compared: {err}.")
            return None
        self.scores = scores
        pred_ids, best, best_ref = prediction_ious(reference, prediction)
        self._show_scores(scores)
        self._fill_table(pred_ids, best, best_ref)
        self._evaluated = pred_layer
        if self.colour_check.isChecked():
            self.colour_by_iou(pred_layer, pred_ids, best)
        return scores

    def colour_by_iou(self, layer: Labels, ids, ious) -> None:
        """Colour ``layer``'s objects by IoU (saving its colormap for :meth:`restore_colours`)."""
        if self._coloured is not None and self._coloured[0] is not layer:
            self.restore_colours()
        if self._coloured is None:
            self._coloured = (layer, layer.colormap)
        layer.colormap = colormap_by_value(ids, ious, 0.0, 1.0)
        self.restore_button.setEnabled(True)

    def restore_colours(self) -> None:
        """Give the prediction layer its colours from before the evaluation back."""
        if self._coloured is not None:
            layer, colormap = self._coloured
            layer.colormap = colormap
            self._coloured = None
        self.restore_button.setEnabled(False)

    # -- internals -------------------------------------------------------------------------
    def _default_reference(self) -> None:
        """Prefer a layer that looks like ground truth as reference, and another as prediction."""
        layers = self.reference_combo.layers()
        hints = ("gt", "ground", "truth", "reference", "mask", "annotation")
        for layer in layers:
            if any(h in layer.name.lower() for h in hints):
                self.reference_combo.set_layer(layer)
                others = [lyr for lyr in layers if lyr is not layer]
                if others and self.prediction_combo.current_layer() is layer:
                    self.prediction_combo.set_layer(others[-1])
                return

    def _show_problem(self, text: str) -> None:
        self.scores = None
        self.message.setText(text)
        for label in self.result_labels.values():
            label.setText("–")
        with QSignalBlocker(self.table):
            self.table.setRowCount(0)

    def _show_scores(self, s: dict) -> None:
        def pct(v: float) -> str:
            return "–" if v is None or math.isnan(v) else f"{v:.3f}"

        values = {
            "objects": f"{s['n_gt']} / {s['n_pred']}",
            "matched": f"{s['tp']}  (missed {s['fn']}, extra {s['fp']})",
            "precision": pct(s["precision"]),
            "recall": pct(s["recall"]),
            "f1": pct(s["f1"]),
            "mean_iou": pct(s["mean_matched_iou"]),
            "map": pct(s["map"]),
        }
        for key, text in values.items():
            self.result_labels[key].setText(text)
        self.message.setText("")

    def _fill_table(self, ids, best, best_ref) -> None:
        self.table.setSortingEnabled(False)
        with QSignalBlocker(self.table):
            self.table.setRowCount(len(ids))
            for r, (i, v, g) in enumerate(zip(ids, best, best_ref)):
                self.table.setItem(r, 0, numeric_item(int(i)))
                self.table.setItem(r, 1, numeric_item(float(v), "{:.3f}"))
                self.table.setItem(r, 2, numeric_item(int(g) if g else None))
        self.table.setSortingEnabled(True)

    def _on_selection(self) -> None:
        layer = self._evaluated
        rows = self.table.selectionModel().selectedRows()
        if layer is None or not rows or layer not in self.viewer.layers:
            return
        focus_object(self.viewer, layer, int(self.table.item(rows[0].row(), 0).data(Qt.UserRole)))
