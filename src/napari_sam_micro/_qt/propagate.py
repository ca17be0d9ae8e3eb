"""Propagate panel of the Annotator: carry an object through z-slices or time frames.

The panel lives inside the Annotator (one line there: ``layout.addWidget(PropagatePanel(self))``)
and reads what it needs from it through :func:`annotator_context` (the one place that knows the
Annotator's attributes). The object to propagate is the Annotator's preview on the shown plane,
or, with *Label id* set, a committed object of the labels layer. Along the chosen axis (z or t),
in one or both directions and within a range of planes, each plane is prompted from the previous
plane's mask (:func:`~napari_sam_micro.propagation.propagate_job`, in a worker with progress and
Cancel); it stops at a plane whose predicted IoU is below the threshold, where the mask vanishes
or its area jumps by more than the factor. The whole propagation is committed as **one** undo
step; existing labels are kept unless the Annotator's *Overwrite existing labels* is ticked. Each
plane's predicted IoU goes to ``layer.metadata["napari_sam_micro_planes"]`` and the object's row
in ``features`` (``predicted_iou`` = its weakest plane's, ``weakest_plane``, ``planes``), which the
objects table shows.

Key: **J** propagates (bound on the viewer while the panel lives).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

from .._napari.commit import check_writable, commit_items
from .._napari.layers import plane_data
from ..core.errors import UserInputError
from ..core.propagation import WAIST_STOP, StopRules
from ..models.registry import get_spec
from ..propagation import PropagationOptions, propagate_job, propagation_commit_plan
from .workers import start_job

__all__ = ["PropagatePanel", "KEY_PROPAGATE", "PLANES_METADATA", "annotator_context"]

#: Key bound on the viewer while the panel lives.
KEY_PROPAGATE = "J"  # P is napari's add mode of the active points / labels / shapes layer (layer keys win)
#: ``layer.metadata`` key of the per-plane predicted IoUs: ``{label_id: {"axis": a, "iou": {plane: iou}}}``.
PLANES_METADATA = "napari_sam_micro_planes"


@dataclass
class AnnotatorContext:
    """What a propagation needs from the Annotator at the moment Propagate is pressed."""

    viewer: object
    image_layer: object
    geometry: object
    index: tuple
    model: object
    spec: object
    model_id: str
    cache: object
    preprocess: object
    output: object
    overwrite: bool
    preview: object  # a session Prediction on the shown plane, or None


def annotator_context(annotator) -> AnnotatorContext:
    """Collect the Annotator's current image, plane, model, cache, output layer and preview.

    Raises
    ------
    UserInputError
        No image, no model loaded yet, or a 2D image.
    """
    annotator._attach_plugin_layers()
    layers = annotator.layers
    if layers is None or annotator._image_layer is None:
        raise UserInputError("Pick an image layer in the Annotator first.")
    index, config = annotator._target()
    if not index:
        raise UserInputError("This image has a single plane: propagation needs a z-stack or a time-lapse.")
    session = annotator.session
    model = session.model if session is not None else annotator._loaded_model()
    if model is None:
        raise UserInputError("The model is still loading; try again when the Annotator is ready.")
    preview = session.preview if session is not None else None
    if preview is not None and preview.generation != session.generation:
        preview = None
    return AnnotatorContext(
        annotator.viewer, annotator._image_layer, annotator._geometry, tuple(index), model,
        get_spec(annotator.model_name()), annotator._model_id(), annotator.state.cache, config,
        layers.output, annotator.overwrite_check.value, preview,
    )


class PropagatePanel(QGroupBox):
    """Axis, direction, range and stop thresholds, and the Propagate button (key J).

    Parameters
    ----------
    annotator : AnnotatorWidget
        The Annotator the panel belongs to (its image, model, preview and labels layer).
    """

    def __init__(self, annotator, parent: QWidget | None = None):
        super().__init__("Propagate through z / t", parent or annotator)
        self.annotator = annotator
        self.viewer = annotator.viewer
        self.worker = None
        self.last_result = None
        self._bound = None
        self.axis_combo = QComboBox(self)
        self.axis_combo.setToolTip("The stack axis to step along (z-slices or time frames).")
        self.direction_combo = QComboBox(self)
        for text, value in (("both", "both"), ("forward (+)", "forward"), ("backward (−)", "backward")):
            self.direction_combo.addItem(text, value)
        self.first_spin, self.last_spin = QSpinBox(self), QSpinBox(self)
        for spin in (self.first_spin, self.last_spin):
            spin.setRange(0, 100_000)
        self.last_spin.setValue(100_000)
        self.label_spin = QSpinBox(self)
        self.label_spin.setRange(0, 2**31 - 1)
        self.label_spin.setSpecialValueText("preview")
        self.label_spin.setToolTip("0 = the preview on the shown plane; else the committed label with this id.")
        self.iou_spin = QDoubleSpinBox(self)
        self.iou_spin.setRange(0.0, 1.0)
        self.iou_spin.setSingleStep(0.05)
        self.iou_spin.setValue(StopRules().min_iou)
        self.area_spin = QDoubleSpinBox(self)
        self.area_spin.setRange(1.0, 100.0)
        self.area_spin.setSingleStep(0.5)
        self.area_spin.setValue(StopRules().max_area_ratio)
        self.waist_check = QCheckBox("Stop between stacked objects (z)", self)
        self.waist_check.setToolTip(
            f"Stop where the object narrows to under {WAIST_STOP:.0%} of its largest area and then widens "
            "again: the mask has reached the next nucleus above or below (packed nuclei in z look like one "
            "blob). Leave it off for time-lapses, where a cell may shrink and grow back."
        )
        self.propagate_button = QPushButton(f"Propagate ({KEY_PROPAGATE})", self)
        self.propagate_button.setToolTip("Segment the object on the neighbouring planes; one Ctrl+Z undoes it all.")
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow("Axis:", self.axis_combo)
        form.addRow("Direction:", self.direction_combo)
        span = QHBoxLayout()
        span.addWidget(self.first_spin)
        span.addWidget(QLabel("to", self))
        span.addWidget(self.last_spin)
        form.addRow("Planes:", span)
        form.addRow("Label id:", self.label_spin)
        form.addRow("Stop if IoU <", self.iou_spin)
        form.addRow("Stop if area ×", self.area_spin)
        form.addRow(self.waist_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.propagate_button)
        buttons.addWidget(self.cancel_button)
        form.addRow(buttons)
        form.addRow(self.status)
        self.propagate_button.clicked.connect(self.propagate)
        self.cancel_button.clicked.connect(self.cancel)
        self.viewer.dims.events.ndim.connect(self._refresh_axes)
        self.viewer.dims.events.range.connect(self._fit_range)
        self.axis_combo.currentIndexChanged.connect(self._fit_range)
        # no ``destroyed`` handler: it would run during garbage collection, after the Qt side is gone
        # (a crash under pytest-qt); the Annotator's shutdown() calls shutdown() here
        self._refresh_axes()
        self.bind_keys()

    def shutdown(self) -> None:
        """Cancel a running propagation, release J and stop following the viewer's axes."""
        self.cancel()
        _make_teardown(self.viewer, self._refresh_axes, self._fit_range, self.unbind_keys)()

    # -- keys ---------------------------------------------------------------------------------
    def bind_keys(self) -> None:
        """Bind J (propagate) on the viewer, remembering what it was bound to."""
        if self._bound is None:
            func = lambda viewer: self.propagate()  # noqa: E731
            self._bound = (func, self.viewer.bind_key(KEY_PROPAGATE, func, overwrite=True))

    def unbind_keys(self) -> None:
        """Release J (restoring its previous binding)."""
        bound, self._bound = self._bound, None
        if bound is None:
            return
        try:
            self.viewer.bind_key(KEY_PROPAGATE, bound[1], overwrite=True)
        except Exception:  # noqa: BLE001 - the viewer is closing
            pass

    # -- settings -----------------------------------------------------------------------------
    def _refresh_axes(self, event=None) -> None:
        """List the viewer's stack axes (all but the two shown), the last slider first (usually z)."""
        current = self.axis_combo.currentData()
        self.axis_combo.clear()
        ndim = self.viewer.dims.ndim
        labels = self.viewer.dims.axis_labels
        for axis in reversed(range(max(ndim - 2, 0))):
            self.axis_combo.addItem(f"{labels[axis]} (axis {axis})", axis)
        found = self.axis_combo.findData(current)
        if found >= 0:
            self.axis_combo.setCurrentIndex(found)
        self._fit_range()

    def _fit_range(self, *_args) -> None:
        """Planes 0 to the chosen axis's last plane (the spin boxes cannot go past it)."""
        axis = self.axis_combo.currentData()
        last = 0 if axis is None else max(int(self.viewer.dims.nsteps[int(axis)]) - 1, 0)  # 2D: nothing to span
        follow = self.last_spin.value() >= self.last_spin.maximum()  # "to the end" stays the end
        for spin in (self.first_spin, self.last_spin):
            spin.setMaximum(last)
        if follow:
            self.last_spin.setValue(last)

    def options(self, n_leading: int, world_ndim: int) -> PropagationOptions:
        """The panel's settings; the viewer axis is mapped to the image's leading axis."""
        axis = self.axis_combo.currentData()
        if axis is None:
            raise UserInputError("The viewer shows no stack axis to propagate along.")
        axis = int(axis) - (world_ndim - 2 - n_leading)
        if not 0 <= axis < n_leading:
            raise UserInputError("The chosen axis is not an axis of this image; choose another one.")
        return PropagationOptions(
            axis=axis,
            direction=str(self.direction_combo.currentData()),
            first=int(self.first_spin.value()),
            last=int(self.last_spin.value()),
            rules=StopRules(
                min_iou=float(self.iou_spin.value()), max_area_ratio=float(self.area_spin.value()),
                waist_ratio=WAIST_STOP if self.waist_check.isChecked() else None,
            ),
        )

    def is_busy(self) -> bool:
        return self.worker is not None

    # -- run ----------------------------------------------------------------------------------
    def propagate(self) -> bool:
        """Start propagating (returns False when nothing was started: a message says why)."""
        if self.is_busy():
            show_info("A propagation is already running.")
            return False
        if self.annotator.is_busy():
            show_info("The Annotator is still computing; propagate again when its preview is ready.")
            return False
        try:
            ctx = annotator_context(self.annotator)
            check_writable(ctx.output)
            options = self.options(len(ctx.index), self.viewer.dims.ndim)
            masks, ious = self._start_objects(ctx)
        except UserInputError as err:
            show_warning(str(err))
            self.status.setText(str(err))
            return False
        preencoder = getattr(self.annotator, "preencoder", None)
        if preencoder is not None:
            preencoder.pause()  # one model, one worker at a time
        index, geometry, layer = ctx.index, ctx.geometry, ctx.image_layer
        job = propagate_job(
            ctx.model, ctx.spec, lambda i: plane_data(layer, geometry, i), geometry.shape[:-2], index, masks, options,
            start_ious=ious, cache=ctx.cache, preprocess=ctx.preprocess, model_id=ctx.model_id,
        )
        self._ctx = ctx
        self.propagate_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.worker = start_job(
            job, on_progress=self._on_progress, on_result=self._on_result,
            on_finished=self._on_finished, context="Propagating the object",
        )
        return True

    def _start_objects(self, ctx) -> tuple[dict, dict]:
        """``({key: mask}, {key: predicted IoU})`` of the object to propagate on the shown plane."""
        label_id = int(self.label_spin.value())
        if label_id > 0:
            mask = np.asarray(ctx.output.data[ctx.index]) == label_id
            if not mask.any():
                raise UserInputError(f"Label {label_id} is not on the shown plane: move to a plane where it is, or choose another id.")
            frame = ctx.output.features
            row = frame[frame["index"] == label_id] if "index" in frame else frame.iloc[:0]
            iou = float(row["predicted_iou"].iloc[0]) if len(row) and "predicted_iou" in row else float("nan")
            return {label_id: mask}, {label_id: iou}
        if ctx.preview is None or not ctx.preview.objects:
            raise UserInputError("There is no object to propagate: click or draw a box on it first, or set a committed label id.")
        if len(ctx.preview.objects) > 1:
            raise UserInputError("The preview holds several objects: propagate one at a time (one box or one click).")
        obj = ctx.preview.objects[0]
        return {0: obj.mask}, {0: float(obj.predicted_iou)}

    def _on_progress(self, report) -> None:
        self.status.setText(report.message)

    def _on_result(self, objects) -> None:
        ctx = self._ctx
        self.last_result = objects
        try:
            ids = {0: int(self.label_spin.value())} if self.label_spin.value() > 0 else None
            items, plane_ious = propagation_commit_plan(objects, ctx.output.data, overwrite=ctx.overwrite, ids=ids)
            if not items:
                raise UserInputError("Nothing was added: the object lies on existing labels on every plane (tick 'Overwrite').")
            written = commit_items(ctx.output, items)
        except UserInputError as err:
            show_warning(str(err))
            self.status.setText(str(err))
            return
        meta = dict(ctx.output.metadata.get(PLANES_METADATA, {}))
        for label_id, ious in plane_ious.items():
            meta[int(label_id)] = {"axis": int(objects[0].axis), "iou": {int(p): float(v) for p, v in ious.items()}}
        ctx.output.metadata[PLANES_METADATA] = meta
        if self.label_spin.value() == 0 and hasattr(self.annotator, "clear_prompts"):
            self.annotator.clear_prompts()
        objects_table = getattr(self.annotator, "objects", None)
        if objects_table is not None:
            objects_table.refresh()
        self.status.setText(_summary(objects, sorted(set(written))))

    def _on_finished(self) -> None:
        self.worker = None
        self.propagate_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        preencoder = getattr(self.annotator, "preencoder", None)
        if preencoder is not None:
            preencoder.resume()

    def cancel(self) -> None:
        """Stop the running propagation at its next plane (nothing is committed)."""
        if self.worker is not None:
            self.worker.quit()
            self.status.setText("Propagation cancelled; nothing was added.")


def _make_teardown(viewer, on_ndim, on_range, unbind):
    """What runs when the panel is destroyed (no reference to the dead widget's Qt side is needed)."""

    def teardown(*_args):
        for event, handler in ((viewer.dims.events.ndim, on_ndim), (viewer.dims.events.range, on_range)):
            try:
                event.disconnect(handler)
            except (TypeError, ValueError, RuntimeError):
                pass
        unbind()

    return teardown


def _summary(objects, ids) -> str:
    parts = []
    for obj, label_id in zip(objects, ids):
        planes = sorted(obj.planes)
        weakest, iou = obj.weakest_plane()
        stops = "; ".join(f"{d} stopped at plane {p}: {why}" for d, (p, why) in sorted(obj.stopped.items()))
        parts.append(f"Label {label_id} on planes {planes[0]}–{planes[-1]} (weakest: plane {weakest}, IoU {iou:.2f}). {stops}.")
    return " ".join(parts) + " Ctrl+Z in the labels layer undoes it."
