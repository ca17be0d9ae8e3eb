"""Objects table: one row per object of a Labels layer, with SAM's predicted IoU for review.

The table shows a Labels layer's ``features`` (id, area, predicted IoU, stability score, prompt
kind / bounding box) and follows it: it refreshes when the features change (an annotator commit,
everything mode) or the data are edited. Selecting a row selects that label and centres the
camera on the object. "Highlight below IoU" recolours the layer so that objects whose predicted
IoU is below the threshold stand out (orange-red) against the others (dim grey); unticking it
restores the layer's previous colours.
"""

from __future__ import annotations

import math

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QSignalBlocker, Qt, QTimer
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .._napari.features import BBOX_COLUMNS, MEASURE_MAX_PIXELS, focus_object, read_object_table, review_colormap
from .layer_picker import LayerComboBox

__all__ = ["ObjectsTableWidget", "TABLE_HEADERS", "numeric_item"]

#: Column titles of the table.
TABLE_HEADERS = ("id", "area", "predicted IoU", "stability", "prompt / bbox")

_FLAG_BRUSH = QColor(255, 120, 60, 90)


class _SortableItem(QTableWidgetItem):
    """Sorts by the number in ``Qt.UserRole`` (falls back to text)."""

    def __lt__(self, other):
        a, b = self.data(Qt.UserRole), other.data(Qt.UserRole)
        if a is not None and b is not None:
            return a < b
        return super().__lt__(other)


def numeric_item(value, fmt: str = "{}") -> QTableWidgetItem:
    """A right-aligned table cell showing ``fmt.format(value)`` that sorts numerically ("–" for None / NaN)."""
    item = _SortableItem()
    if value is None or _isnan(value):
        item.setText("–")
        item.setData(Qt.UserRole, -math.inf)
    else:
        item.setText(fmt.format(value))
        item.setData(Qt.UserRole, float(value))
    item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
    return item


def _describe(row) -> str:
    """Prompt kind and bounding box of a table row as short text."""
    parts = []
    prompt = row.get("prompt")
    if isinstance(prompt, str) and prompt:
        parts.append(prompt)
    if "weakest_plane" in row and not _isnan(row["weakest_plane"]):  # propagated through z / t
        parts.append(f"weakest plane {int(row['weakest_plane'])}")
    if all(c in row and not _isnan(row[c]) for c in BBOX_COLUMNS):
        y0, x0, y1, x1 = (int(row[c]) for c in BBOX_COLUMNS)
        parts.append(f"rows {y0}–{y1}, cols {x0}–{x1}")
    return " · ".join(parts)


def _isnan(value) -> bool:
    try:
        return bool(np.isnan(value))
    except TypeError:
        return value is None


class ObjectsTableWidget(QWidget):
    """Table of the objects of a Labels layer with predicted IoU, for review.

    Parameters
    ----------
    napari_viewer : napari.Viewer or ViewerModel
        The viewer.
    layer : napari.layers.Labels, optional
        Layer to show first (default: the last Labels layer of the viewer).
    parent : QWidget, optional
        Qt parent.

    Notes
    -----
    Public API used by other widgets: :meth:`set_layer`, :meth:`layer`, :meth:`refresh`,
    :meth:`select_object`, ``threshold_spin`` / ``highlight_check`` (the review threshold).
    """

    def __init__(self, napari_viewer, layer: Labels | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._layer: Labels | None = None
        self._saved_colormaps: dict[int, object] = {}
        self._ids: list[int] = []
        self._iou: dict[int, float] = {}
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(150)
        self._refresh_timer.timeout.connect(self.refresh)

        self.layer_combo = LayerComboBox(napari_viewer, Labels, self)
        self.layer_combo.setToolTip("Labels layer whose objects are listed.")

        self.table = QTableWidget(0, len(TABLE_HEADERS), self)
        self.table.setHorizontalHeaderLabels(TABLE_HEADERS)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSortIndicator(0, Qt.AscendingOrder)
        self.table.setSortingEnabled(True)
        for column in range(len(TABLE_HEADERS) - 1):
            header.setSectionResizeMode(column, QHeaderView.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.setToolTip("Click a row to select that object and centre the view on it.")
        self.table.setMinimumHeight(180)
        self.table.itemSelectionChanged.connect(self._on_selection)

        self.highlight_check = QCheckBox("Highlight predicted IoU below", self)
        self.highlight_check.setToolTip(
            "Colour objects whose predicted IoU (the model's own quality estimate) is below the "
            "threshold in orange-red and all others in grey, to review them first. "
            "Untick to restore the layer's colours."
        )
        self.threshold_spin = QDoubleSpinBox(self)
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setValue(0.85)
        self.threshold_spin.setToolTip("Objects with a predicted IoU under this value are flagged for review.")
        self.next_button = QPushButton("Next to review", self)
        self.next_button.setToolTip("Select the next object whose predicted IoU is below the threshold.")
        self.summary = QLabel(self)
        self.summary.setWordWrap(True)

        self.highlight_check.toggled.connect(self._apply_highlight)
        self.threshold_spin.valueChanged.connect(self._on_threshold)
        self.next_button.clicked.connect(self.select_next_flagged)

        top = QHBoxLayout()
        top.addWidget(QLabel("Labels:", self))
        top.addWidget(self.layer_combo, 1)
        review = QHBoxLayout()
        review.addWidget(self.highlight_check)
        review.addWidget(self.threshold_spin)
        review.addStretch(1)
        review.addWidget(self.next_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        layout.addLayout(review)
        layout.addWidget(self.summary)

        self.layer_combo.layer_changed.connect(self._bind)
        if layer is not None:
            self.set_layer(layer)
        else:
            self._bind(self.layer_combo.current_layer())

    # -- public ----------------------------------------------------------------------------
    def layer(self) -> Labels | None:
        """The Labels layer shown."""
        return self._layer

    def set_layer(self, layer: Labels) -> None:
        """Show the objects of ``layer`` (must be in the viewer)."""
        self.layer_combo.set_layer(layer)
        self._bind(layer)

    def object_ids(self) -> list[int]:
        """Ids in table order (as sorted now)."""
        return [int(self.table.item(r, 0).data(Qt.UserRole)) for r in range(self.table.rowCount())]

    def flagged_ids(self) -> list[int]:
        """Ids whose predicted IoU is below the threshold (objects without one are not flagged)."""
        threshold = self.threshold_spin.value()
        return sorted(i for i, v in self._iou.items() if not math.isnan(v) and v < threshold)

    def select_object(self, label_id: int) -> bool:
        """Select the row of ``label_id`` (which selects the label and centres the camera)."""
        for row in range(self.table.rowCount()):
            if int(self.table.item(row, 0).data(Qt.UserRole)) == int(label_id):
                self.table.selectRow(row)
                self.table.scrollToItem(self.table.item(row, 0))
                return True
        return False

    def select_next_flagged(self) -> int | None:
        """Select the next flagged object after the current row (wrapping); returns its id."""
        flagged = set(self.flagged_ids())
        if not flagged:
            return None
        ids = self.object_ids()
        rows = self.table.selectionModel().selectedRows()
        start = rows[0].row() + 1 if rows else 0
        for offset in range(len(ids)):
            row = (start + offset) % len(ids)
            if ids[row] in flagged:
                self.select_object(ids[row])
                return ids[row]
        return None

    def refresh(self) -> None:
        """Re-read the layer's objects and features into the table."""
        layer = self._layer
        self._refresh_timer.stop()
        selected = None
        rows = self.table.selectionModel().selectedRows()
        if rows:
            selected = int(self.table.item(rows[0].row(), 0).data(Qt.UserRole))
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)
        with QSignalBlocker(self.table):
            self.table.clearContents()
            self.table.setRowCount(0)
            self._ids, self._iou = [], {}
            if layer is not None:
                frame = read_object_table(layer, measure=int(np.prod(layer.data.shape)) <= MEASURE_MAX_PIXELS)
                self.table.setRowCount(frame.shape[0])
                for r, row in enumerate(frame.to_dict("records")):
                    label_id = int(row["index"])
                    iou = float(row.get("predicted_iou", math.nan))
                    self._ids.append(label_id)
                    self._iou[label_id] = iou
                    self.table.setItem(r, 0, numeric_item(label_id))
                    self.table.setItem(r, 1, numeric_item(row.get("area"), "{:.0f}"))
                    self.table.setItem(r, 2, numeric_item(iou, "{:.3f}"))
                    self.table.setItem(r, 3, numeric_item(row.get("stability_score", math.nan), "{:.3f}"))
                    text = QTableWidgetItem(_describe(row))
                    self.table.setItem(r, 4, text)
        self.table.setSortingEnabled(sorting)
        self._update_flags()
        self._refresh_highlight_after_refresh()
        if selected is not None and selected in self._ids:
            with QSignalBlocker(self.table):
                for r in range(self.table.rowCount()):
                    if int(self.table.item(r, 0).data(Qt.UserRole)) == selected:
                        self.table.selectRow(r)

    # -- internals -------------------------------------------------------------------------
    def _bind(self, layer) -> None:
        if layer is self._layer:
            return
        old = self._layer
        if old is not None:
            self._restore_colormap(old)
            for name in ("features", "data", "paint"):
                getattr(old.events, name).disconnect(self._schedule_refresh)
        self._layer = layer
        if layer is not None:
            for name in ("features", "data", "paint"):
                getattr(layer.events, name).connect(self._schedule_refresh)
        self.refresh()
        if layer is not None and self.highlight_check.isChecked():
            self._apply_highlight(True)

    def _schedule_refresh(self, event=None) -> None:
        try:
            self._refresh_timer.start()
        except RuntimeError:  # widget deleted while the layer lives on
            layer = self._layer
            if layer is not None:
                for name in ("features", "data", "paint"):
                    getattr(layer.events, name).disconnect(self._schedule_refresh)

    def _on_selection(self) -> None:
        layer = self._layer
        rows = self.table.selectionModel().selectedRows()
        if layer is None or not rows:
            return
        label_id = int(self.table.item(rows[0].row(), 0).data(Qt.UserRole))
        focus_object(self.viewer, layer, label_id)

    def _on_threshold(self, _value=None) -> None:
        self._update_flags()
        if self.highlight_check.isChecked():
            self._apply_highlight(True)

    def _update_flags(self) -> None:
        flagged = set(self.flagged_ids()) if self.highlight_check.isChecked() else set()
        brush = QBrush(_FLAG_BRUSH)
        for r in range(self.table.rowCount()):
            label_id = int(self.table.item(r, 0).data(Qt.UserRole))
            for c in range(self.table.columnCount()):
                item = self.table.item(r, c)
                if item is not None:
                    item.setBackground(brush if label_id in flagged else QBrush())
        n = len(self._ids)
        text = f"{n} object{'s' if n != 1 else ''}"
        scored = [v for v in self._iou.values() if not math.isnan(v)]
        if scored:
            below = len(self.flagged_ids())
            text += f"; {below} with predicted IoU below {self.threshold_spin.value():.2f}"
            text += f"; mean predicted IoU {np.mean(scored):.3f}"
        self.summary.setText(text)

    def _apply_highlight(self, on: bool) -> None:
        layer = self._layer
        self._update_flags()
        if layer is None:
            return
        if on:
            self._saved_colormaps.setdefault(id(layer), layer.colormap)
            layer.colormap = review_colormap(self._ids, self.flagged_ids())
        else:
            self._restore_colormap(layer)

    def _restore_colormap(self, layer) -> None:
        saved = self._saved_colormaps.pop(id(layer), None)
        if saved is not None:
            layer.colormap = saved

    def _refresh_highlight_after_refresh(self) -> None:
        if self.highlight_check.isChecked() and self._layer is not None:
            self._layer.colormap = review_colormap(self._ids, self.flagged_ids())

    def closeEvent(self, event):  # noqa: N802 - Qt API
        if self._layer is not None:
            self._restore_colormap(self._layer)
        super().closeEvent(event)
