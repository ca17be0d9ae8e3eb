"""Refine labels: fix the objects of an existing Labels layer (Cellpose, StarDist, by hand) with SAM.

How to use
----------
1. Pick the image and the Labels layer to fix (its objects must lie on the image's pixels).
2. Refine all objects of the shown plane, or only some: type their ids, or select one (click it
   in the Objects table, or pick it with the layer's colour picker) and choose "Selected objects".
3. Optionally add clicks in a Points layer: a click on (or next to) an object is added to its
   prompt (a ``positive`` feature set to False makes it a negative click).
4. *Refine* re-segments each object from its box (see :mod:`napari_sam_micro.core.refine`); the
   proposals appear as contours in a "[SAM refine preview]" layer and in the table (old and new
   area, their IoU, the model's predicted IoU).
5. *Accept checked* / *Accept all* writes them into the labels layer as one undo step (Ctrl+Z);
   nothing is written before. Other objects' pixels are only taken with *Overwrite other objects*.
"""

from __future__ import annotations

from napari.layers import Image, Labels, Points
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from .._napari.features import focus_object
from .._napari.layers import current_plane_index, image_geometry, plane_data
from .._napari.refine import clear_refinement, commit_refinements, labels_plane, plane_clicks, selected_ids, show_refinement
from .._napari.state import ViewerState, embedding_model_id
from ..core.errors import UserInputError
from ..core.preprocess import PreprocessConfig
from ..core.refine import DEFAULT_STRATEGY, STRATEGIES, label_objects
from ..models.registry import get_spec
from ..plane_jobs import refine_job
from ..session import AnnotationSession
from .forms import check, choice, model_combo, text
from .job_panel import JobPanel
from .layer_picker import LayerComboBox
from .objects_table import numeric_item
from .settings import PersistedControls
from .workers import notify_exception

__all__ = ["RefineWidget", "RESULT_HEADERS", "SCOPE_ALL", "SCOPE_SELECTED"]

#: Columns of the proposals table.
RESULT_HEADERS = ("id", "old area", "new area", "IoU old/new", "predicted IoU")
SCOPE_ALL = "all"
SCOPE_SELECTED = "selected"

_STRATEGY_TIPS = {
    "box": "the object's box (best on too-tight labels; a loose box makes the mask fill it)",
    "box+mask": "its box and its old mask as the model's mask input",
    "box+point": "its box and a click at its deepest interior point (best on average over tight, loose and merged labels)",
    "box+mask+point": "box, old mask and interior click",
    "point": "a click at its deepest interior point, decoded as an Annotator click: the old label gives the place, not the extent",
}


class RefineWidget(QWidget):
    """Dock widget: re-segment existing objects with SAM and accept them per object or all at once.

    Parameters
    ----------
    napari_viewer : napari.Viewer or ViewerModel
    model : str, optional
        Registry name of the model chosen first.

    Attributes
    ----------
    refined : list of RefinedObject
        Proposals not yet accepted or discarded (table order).
    """

    def __init__(self, napari_viewer, model: str | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = ViewerState.for_viewer(napari_viewer)
        self.refined: list = []
        self._target = None  # (labels layer, plane index) of the proposals
        self._build(model)

    # -- layout ------------------------------------------------------------------------------
    def _build(self, model) -> None:
        viewer = self.viewer
        self.image_combo = LayerComboBox(viewer, Image, self)
        self.image_combo.setToolTip("Image the labels belong to (the plane shown in the viewer is used).")
        self.labels_combo = LayerComboBox(viewer, Labels, self)
        self.labels_combo.setToolTip("Labels to fix: from Cellpose, StarDist, a threshold, a previous run or drawn by hand.")
        self.model_combo = model_combo(model)
        self.scope_combo = choice(
            [("All objects of the plane", SCOPE_ALL), ("Selected objects", SCOPE_SELECTED)],
            tooltip="Selected: the ids typed below, else the layer's selected label (Objects table).",
        )
        self.ids_edit = text("ids, e.g. 3, 7, 12 (empty: the selected label)", "Ids of the objects to refine.")
        self.strategy_combo = choice(
            STRATEGIES, DEFAULT_STRATEGY, "What of each old object the model is given besides its box.", item_tooltips=_STRATEGY_TIPS
        )
        self.clicks_combo = LayerComboBox(viewer, Points, self, allow_none=True)
        self.clicks_combo.setToolTip("Optional points layer: clicks on an object are added to its prompt.")
        self.overwrite_check = check(
            "Overwrite other objects", False, "Off: a refined object only grows into background, never into its neighbours."
        )
        self.job_panel = JobPanel("Refine", "Re-segment the chosen objects (nothing is written yet).", "Pick an image and its labels.", self)
        self.table = QTableWidget(0, len(RESULT_HEADERS), self)
        self.table.setHorizontalHeaderLabels(RESULT_HEADERS)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.setToolTip("Proposals: tick the ones to accept; click a row to centre the view on the object.")
        self.accept_button = QPushButton("Accept checked", self)
        self.accept_all_button = QPushButton("Accept all", self)
        self.discard_button = QPushButton("Discard", self)
        self.reset_button = QPushButton("Reset to defaults", self)
        self.reset_button.setToolTip("Put this widget's settings back to their defaults (they are remembered otherwise).")
        form = QFormLayout()
        for label, widget in (
            ("Image:", self.image_combo), ("Labels:", self.labels_combo), ("Model:", self.model_combo.native),
            ("Objects:", self.scope_combo.native), ("Ids:", self.ids_edit.native), ("Prompt:", self.strategy_combo.native),
            ("Extra clicks:", self.clicks_combo),
        ):
            form.addRow(label, widget)
        buttons = QHBoxLayout()
        for button in (self.accept_button, self.accept_all_button, self.discard_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.overwrite_check.native)
        layout.addWidget(self.job_panel)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.reset_button)
        controls = {"model": self.model_combo, "scope": self.scope_combo, "strategy": self.strategy_combo, "overwrite": self.overwrite_check}
        self.settings = PersistedControls("refine", controls, keep=("model",) if model else ())
        self.reset_button.clicked.connect(self.settings.reset)
        self.job_panel.run_button.clicked.connect(self.run)
        self.accept_button.clicked.connect(self.accept_checked)
        self.accept_all_button.clicked.connect(self.accept_all)
        self.discard_button.clicked.connect(self.discard)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self._update_buttons()

    # -- run ---------------------------------------------------------------------------------
    def model_name(self) -> str:
        return str(self.model_combo.value)

    def _inputs(self):
        image_layer = self.image_combo.current_layer()
        labels_layer = self.labels_combo.current_layer()
        if image_layer is None or labels_layer is None:
            raise UserInputError("Pick the image and the labels layer to refine.")
        geometry = image_geometry(image_layer)
        index = current_plane_index(self.viewer, image_layer, geometry)
        labels = labels_plane(labels_layer, index, geometry.plane_hw)
        ids = None
        if self.scope_combo.value == SCOPE_SELECTED:
            ids = selected_ids(labels_layer, self.ids_edit.value)
            label_objects(labels, ids)  # unknown ids: said now, not from the worker
        clicks = plane_clicks(self.clicks_combo.current_layer(), labels, index)
        plane = plane_data(image_layer, geometry, index)
        return labels_layer, index, plane, PreprocessConfig(rgb=geometry.rgb), labels, ids, clicks

    def run(self):
        """Refine the chosen objects in the background; returns the worker (None on bad input)."""
        if self.job_panel.is_busy():
            return self.job_panel.worker
        try:
            labels_layer, index, plane, config, labels, ids, clicks = self._inputs()
        except UserInputError as err:
            self.job_panel.status.setText(str(err))
            notify_exception(err)
            return None
        job = self._job(self.model_name(), plane, config, labels, ids, clicks, self.strategy_combo.value)
        target = (labels_layer, index)
        return self.job_panel.start(
            job,
            on_result=lambda refined: self._on_refined(refined, target),
            context="Refining the labels",
            status=f"Refining the objects of '{labels_layer.name}' …",
        )

    def _job(self, model_name, plane, config, labels, ids, clicks, strategy):
        model = yield from self.state.models.get_job(model_name)
        session = AnnotationSession(
            model, self.state.cache, config, model_id=embedding_model_id(model_name), **AnnotationSession.options_for(get_spec(model_name))
        )
        session.set_image(plane)
        refined = yield from refine_job(session, labels, ids, strategy=strategy, clicks=clicks)
        return refined

    def _on_refined(self, refined, target) -> None:
        self.refined = list(refined)
        self._target = target
        labels_layer, index = target
        show_refinement(self.viewer, labels_layer, index, self.refined)
        self._fill_table()
        n = len(self.refined)
        self.job_panel.status.setText(
            f"{n} proposal{'s' if n != 1 else ''} (contours in the preview layer). Tick and accept, or accept all; "
            "nothing is written before."
        )

    # -- proposals ----------------------------------------------------------------------------
    def _fill_table(self) -> None:
        table = self.table
        table.setRowCount(0)
        for row, obj in enumerate(self.refined):
            table.insertRow(row)
            first = numeric_item(obj.label_id)
            first.setFlags(first.flags() | Qt.ItemIsUserCheckable)
            first.setCheckState(Qt.Checked if obj.iou_old_new < 1.0 and obj.new_area else Qt.Unchecked)
            table.setItem(row, 0, first)
            table.setItem(row, 1, numeric_item(obj.old_area))
            table.setItem(row, 2, numeric_item(obj.new_area))
            table.setItem(row, 3, numeric_item(obj.iou_old_new, "{:.2f}"))
            table.setItem(row, 4, numeric_item(obj.predicted_iou, "{:.2f}"))
        self._update_buttons()

    def checked_ids(self) -> list[int]:
        """Ids of the ticked proposals."""
        return [self.refined[r].label_id for r in range(self.table.rowCount()) if self.table.item(r, 0).checkState() == Qt.Checked]

    def set_checked(self, ids) -> None:
        """Tick exactly the proposals of ``ids``."""
        wanted = {int(i) for i in ids}
        for r, obj in enumerate(self.refined):
            self.table.item(r, 0).setCheckState(Qt.Checked if obj.label_id in wanted else Qt.Unchecked)

    def accept_checked(self) -> list[int]:
        """Write the ticked proposals (one undo step); returns the ids changed."""
        return self._accept(self.checked_ids())

    def accept_all(self) -> list[int]:
        """Write every proposal (one undo step); returns the ids changed."""
        return self._accept([obj.label_id for obj in self.refined])

    def _accept(self, ids) -> list[int]:
        if not self.refined or self._target is None:
            return []
        wanted = set(ids)
        chosen = [obj for obj in self.refined if obj.label_id in wanted]
        if not chosen:
            self.job_panel.status.setText("Tick the proposals to accept first.")
            return []
        layer, index = self._target
        try:
            changed = commit_refinements(layer, index, chosen, overwrite=self.overwrite_check.value)
        except UserInputError as err:
            notify_exception(err)
            self.job_panel.status.setText(str(err))
            return []
        self.refined = [obj for obj in self.refined if obj.label_id not in wanted]
        self._after_change()
        self.job_panel.status.setText(
            f"Refined {len(changed)} object(s) in '{layer.name}' ({len(self.refined)} proposal(s) left). "
            "Ctrl+Z in the labels layer undoes."
        )
        return changed

    def discard(self) -> None:
        """Forget the proposals (the labels are untouched)."""
        self.refined = []
        self._after_change()
        self.job_panel.status.setText("Proposals discarded; the labels are unchanged.")

    def _after_change(self) -> None:
        layer, index = self._target if self._target is not None else (None, ())
        if layer is not None:
            if self.refined:
                show_refinement(self.viewer, layer, index, self.refined)
            else:
                clear_refinement(self.viewer, layer)
        if not self.refined:
            self._target = None
        self._fill_table()

    def _update_buttons(self) -> None:
        has = bool(self.refined)
        for button in (self.accept_button, self.accept_all_button, self.discard_button):
            button.setEnabled(has)

    def _on_row_selected(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows and self._target is not None and rows[0].row() < len(self.refined):
            focus_object(self.viewer, self._target[0], self.refined[rows[0].row()].label_id)

    def closeEvent(self, event):  # noqa: N802 - Qt API
        self.job_panel.cancel()
        super().closeEvent(event)
