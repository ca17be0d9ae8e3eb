"""Everything mode: automatic segmentation of the displayed image plane into an instance Labels layer.

The widget runs :func:`napari_sam_micro.core.automatic.generate_candidates` (SAM's point-grid
"segment everything") with the chosen model on the selected image's displayed 2D plane,
normalised like the annotator does it, in a background worker with a progress bar and Cancel.
The expensive result, a :class:`~napari_sam_micro.core.automatic.CandidateSet`, is kept: moving a
threshold, NMS, area or post-processing control re-filters it instantly
(:meth:`CandidateSet.filter`) without running the model again. Only "points per side", "crop
layers" and the model need a new run (the widget says so).

The objects are written into one Labels layer per image (``"<image> [SAM everything]"``, found
again by its metadata): ids do not overlap (where masks overlap the higher predicted IoU wins),
each run or re-filter replaces the objects of that plane in this layer as one undoable step
(Ctrl+Z), and ``layer.features`` holds the per-object table (index = id, area, predicted_iou,
stability_score, prompt, bounding box, prompt point).

Seeded mode (``crop_to_prompt`` models such as ``micro-tiny``): these 256-px models were tuned on
object-centred crops and segment badly from grid points, so for them the widget offers
"Seeds (object centres)": :func:`napari_sam_micro.core.seeds.find_seeds` proposes object centres
by classical means (background removed, Otsu foreground, distance transform + intensity maxima) and
:func:`napari_sam_micro.segmentation.everything_job` decodes each as a centred
click in its window. The grid filters do not apply to that mode (its masks are cleaned and
de-duplicated by :func:`~napari_sam_micro.core.seeds.resolve_seeded_masks`); "Seed spacing" is its
only setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFormLayout, QPushButton, QVBoxLayout, QWidget

from .._napari.everything import EVERYTHING_ROLE, find_everything_layer, write_plane_labels, write_stack_labels
from .._napari.layers import META_KEY, current_plane_index, image_geometry, plane_data
from .._napari.state import ViewerState, embedding_model_id
from ..core.automatic import AmgParams, AmgResult, CandidateSet, generate_candidates, labels_from_result
from ..core.cache import content_digest, embedding_key
from ..core.errors import UserInputError
from ..core.large_planes import is_large_plane
from ..core.preprocess import PreprocessConfig, normalize_image
from ..core.progress import Progress
from ..models.registry import get_spec
from ..segmentation import EverythingOptions, EverythingResult, everything_job
from ..tiling import needs_tiling, tiled_everything_job
from .._napari.batch_results import open_batch_results
from ..propagation import StackEverything, everything_stack_job
from .everything_form import MODE_GRID, MODE_SEEDS, PLANES_ONE, EverythingForm
from .forms import model_combo
from .job_panel import JobPanel
from .layer_picker import LayerComboBox
from .settings import PersistedControls
from .workers import notify_exception

__all__ = ["EverythingWidget", "EVERYTHING_ROLE", "labels_from_result", "write_plane_labels", "find_everything_layer"]


@dataclass(frozen=True)
class _Run:
    """Candidates of one model run and where they belong."""

    candidates: CandidateSet
    image_layer: Image
    geometry: object
    index: tuple[int, ...]
    model_name: str


class EverythingWidget(QWidget):
    """Automatic ("everything") segmentation of the displayed plane of an image layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer or ViewerModel
        The viewer; its :class:`~napari_sam_micro._napari.state.ViewerState` provides the loaded
        models and the embedding cache (shared with the annotator).
    model : str, optional
        Registry name of the model chosen first (default: ``default_model_name()``).
    parent : QWidget, optional

    Attributes
    ----------
    candidates : CandidateSet or None
        Candidates of the last model run (kept for instant re-filtering).
    result : AmgResult or None
        The objects currently written (grid mode, one plane).
    seeded : EverythingResult or None
        The last seeds-mode run on one plane.
    stack : StackEverything or None
        The last whole-stack run (planes linked in z or t).
    output_layer : napari.layers.Labels or None
        The layer the objects are written to.
    worker : GeneratorWorker or None
        The running job.
    """

    def __init__(self, napari_viewer, model: str | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = ViewerState.for_viewer(napari_viewer)
        self._run: _Run | None = None
        self.result: AmgResult | None = None
        self.seeded: EverythingResult | None = None
        self.stack: StackEverything | None = None
        self.output_layer: Labels | None = None
        self.image_combo = LayerComboBox(napari_viewer, Image, self)
        self.image_combo.setToolTip("Image to segment. For 3D / time-lapse data the plane shown in the viewer is used.")
        self.model_combo = model_combo(model)
        self.form = EverythingForm(self)
        self._seed_box, self._grid_boxes = self.form.seed_box, self.form.grid_boxes
        for name in EverythingForm.CONTROLS:  # the controls stay reachable as widget attributes
            setattr(self, name, getattr(self.form, name))
        self.job_panel = JobPanel(
            "Segment everything", "Run the model on the displayed plane of the image (in the background).",
            "Choose an image and press 'Segment everything'.", self,
        )
        panel = self.job_panel
        self.run_button, self.cancel_button, self.progress, self.status = panel.run_button, panel.cancel_button, panel.progress, panel.status
        self.open_button = QPushButton("Open batch results…", self)
        self.open_button.setToolTip(
            "Load the labels and object tables written by 'napari-sam-micro segment' (a folder or one file) for correction."
        )
        self.reset_button = QPushButton("Reset to defaults", self)
        self.reset_button.setToolTip("Put every setting of this widget back to its default (they are remembered otherwise).")
        inputs = QFormLayout()
        inputs.addRow("Image:", self.image_combo)
        for label, control in (("Model:", self.model_combo), ("Mode:", self.mode_combo), ("Planes:", self.planes_combo)):
            inputs.addRow(label, control.native)
        layout = QVBoxLayout(self)
        layout.addLayout(inputs)
        layout.addWidget(self.form)
        layout.addWidget(self.job_panel)
        layout.addWidget(self.open_button)
        layout.addWidget(self.reset_button)
        self.settings = PersistedControls(
            "everything", {"model": self.model_combo, **self.form.controls()}, keep=("model",) if model else ()
        )
        self._update_mode_controls()
        self._wire()

    def _wire(self) -> None:
        self._filter_timer = QTimer(self)
        self._filter_timer.setSingleShot(True)
        self._filter_timer.setInterval(40)
        self._filter_timer.timeout.connect(self._apply_filter_safely)
        for control in (self.iou_slider, self.stability_slider, self.nms_slider, self.min_area_spin, self.max_area_spin,
                        self.fragment_spin, self.fill_holes_check, self.largest_check):
            control.changed.connect(self._schedule_filter)
        for control in (self.points_spin, self.crop_layers_spin, self.model_combo):
            control.changed.connect(self._on_run_params_changed)
        self.model_combo.changed.connect(self._update_mode_controls)
        self.mode_combo.changed.connect(self._update_mode_controls)
        self.run_button.clicked.connect(self.run)
        self.reset_button.clicked.connect(self.settings.reset)
        self.open_button.clicked.connect(self._choose_results)

    @property
    def worker(self):
        """The running job's worker, or None."""
        return self.job_panel.worker

    # -- parameters -------------------------------------------------------------------------
    @property
    def candidates(self) -> CandidateSet | None:
        """Candidates of the last model run, or None."""
        return None if self._run is None else self._run.candidates

    def model_name(self) -> str:
        """Registry name of the chosen model."""
        return str(self.model_combo.value)

    def seeds_available(self) -> bool:
        """Seeds mode is offered: the model decodes clicks in windows (``crop_to_prompt`` and ``point_prompts``)."""
        return get_spec(self.model_name()).seeded_everything

    def mode(self) -> str:
        """:data:`MODE_SEEDS` or :data:`MODE_GRID` (grid whenever the model has no seeds mode)."""
        if not self.seeds_available():
            return MODE_GRID
        return str(self.mode_combo.value)

    def _update_mode_controls(self, *_args) -> None:
        self.form.show_mode(self.mode() == MODE_SEEDS, self.seeds_available())

    def params(self) -> AmgParams:
        """:class:`AmgParams` from the controls (``max_mask_region_area`` None when 'no limit')."""
        return self.form.params()

    def is_busy(self) -> bool:
        """A model run is in progress."""
        return self.worker is not None

    # -- the model run -------------------------------------------------------------------------
    def run(self):
        """Start automatic segmentation of the displayed plane; returns the worker (None on bad input)."""
        if self.is_busy():
            return self.worker
        try:
            image_layer = self.image_combo.current_layer()
            if image_layer is None:
                raise UserInputError("Open or select an image layer to segment.")
            geometry = image_geometry(image_layer)
            index = current_plane_index(self.viewer, image_layer, geometry)
            params = self.params()
            config = PreprocessConfig(rgb=geometry.rgb)
            if is_large_plane(geometry.plane_hw) and self.mode() != MODE_SEEDS:
                h, w = geometry.plane_hw
                raise UserInputError(
                    f"The plane is {w} × {h} pixels: planes this large are segmented in tiles, which the seeds mode "
                    "does. Choose the seeds mode."
                )
            plane = plane_data(image_layer, geometry, index)  # lazy for a large plane: read tile by tile
        except UserInputError as err:
            self.status.setText(str(err))
            notify_exception(err)
            return None
        model_name = self.model_name()
        target = (image_layer, geometry, index, model_name)
        kind = str(self.planes_combo.value)
        if kind != PLANES_ONE:
            return self._run_stack(kind, target, config)
        if self.mode() == MODE_SEEDS:
            job = self._seeds_job(model_name, plane, config, self.seed_options())
            on_result = lambda res: self._on_seeded(res, target)  # noqa: E731
        else:
            key = embedding_key(content_digest(plane), embedding_model_id(model_name), config.key())
            job = self._job(model_name, plane, config, params, key)
            on_result = lambda cands: self._on_candidates(cands, target)  # noqa: E731
        where = f"'{image_layer.name}'" + (f" plane {index}" if index else "")
        return self.job_panel.start(
            job, on_result=on_result, on_error=self._on_error, on_finished=self._on_finished,
            context="Automatic segmentation", status=f"Segmenting {where} …",
        )

    def _job(self, model_name, plane, config, params, key):
        model = yield from self.state.models.get_job(model_name)
        yield Progress(0, 0, "Normalising the image")
        image = normalize_image(plane, config)
        candidates = yield from generate_candidates(model, image, params, cache=self.state.cache, cache_key=key)
        return candidates

    def seed_options(self, mode: str = MODE_SEEDS) -> EverythingOptions:
        """The everything-mode options of the form (seed spacing, fewer windows, the grid's settings)."""
        return EverythingOptions(
            mode=mode, min_distance=int(self.seed_spin.value), fewer_windows=self.fewer_windows_check.value,
            grid=self.params(),
        )

    def _seeds_job(self, model_name, plane, config, options: EverythingOptions):
        model = yield from self.state.models.get_job(model_name)
        spec, model_id = get_spec(model_name), embedding_model_id(model_name)
        if needs_tiling(plane.shape[:2]):  # large planes: tiles with a halo, read lazily, stitched
            tiled = yield from tiled_everything_job(model, plane, spec, preprocess=config, options=options, model_id=model_id)
            return EverythingResult(np.asarray(tiled.labels), tiled.table, tiled.mode)
        result = yield from everything_job(model, plane, spec, preprocess=config, options=options, cache=self.state.cache, model_id=model_id)
        return result

    # -- the whole stack ------------------------------------------------------------------------
    def _run_stack(self, kind: str, target, config):
        """Everything mode on every plane along the stack axis (z: the last leading axis, t: the first)."""
        image_layer, geometry, index, model_name = target
        if not index:
            err = UserInputError("This image has one plane: choose 'Displayed plane', or open a 3D / time-lapse image.")
            self.status.setText(str(err))
            notify_exception(err)
            return None
        axis = len(index) - 1 if kind == "z" else 0
        options = self.seed_options(self.mode())

        def get_plane(p):
            return plane_data(image_layer, geometry, index[:axis] + (int(p),) + index[axis + 1 :])

        def job():
            model = yield from self.state.models.get_job(model_name)
            stack = yield from everything_stack_job(
                model, get_spec(model_name), get_plane, range(geometry.shape[axis]), options=options,
                preprocess=config, cache=self.state.cache, model_id=embedding_model_id(model_name), kind=kind,
            )
            return stack

        what = "3D objects" if kind == "z" else "tracks"
        return self.job_panel.start(
            job(), on_result=lambda res: self._on_stack(res, target, axis, what), on_error=self._on_error,
            on_finished=self._on_finished, context="Automatic segmentation of the stack",
            status=f"Segmenting every plane of '{image_layer.name}' along axis {axis} …",
        )

    def _on_stack(self, stack: StackEverything, target, axis: int, what: str) -> None:
        image_layer, geometry, index, model_name = target
        self._run = None
        self.seeded, self.stack = None, stack
        layer = self._output_for(_Run(None, image_layer, geometry, index, model_name))
        try:
            write_stack_labels(layer, index, axis, stack.labels, stack.table)
        except UserInputError as err:
            self.status.setText(str(err))
            notify_exception(err)
            return
        n = len(stack.table["index"])
        self.status.setText(f"{n} {what} in '{image_layer.name}' over {len(stack.planes)} planes (axis {axis}).")

    # -- batch results ---------------------------------------------------------------------------
    def _choose_results(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path = QFileDialog.getExistingDirectory(self, "Folder written by 'napari-sam-micro segment'")
        if path:
            self.open_results(path)

    def open_results(self, path) -> list:
        """Add the outputs of a ``segment`` run at ``path`` (folder or file) as Labels layers with their tables."""
        try:
            layers = open_batch_results(self.viewer, path)
        except (OSError, ValueError, UserInputError) as err:
            self.status.setText(f"Could not open the results: {err}")
            notify_exception(err, "Opening batch results")
            return []
        self.status.setText(f"Opened {len(layers)} labels layer(s) from {path}." if layers else f"No results of 'segment' found in {path}.")
        return layers

    def _on_seeded(self, result: EverythingResult, target) -> None:
        image_layer, geometry, index, model_name = target
        run = _Run(None, image_layer, geometry, index, model_name)
        self._run, self.stack = None, None
        self.seeded = result
        layer = self._output_for(run)
        try:
            write_plane_labels(layer, index, result.labels, result.table)
        except UserInputError as err:
            self.status.setText(str(err))
            notify_exception(err)
            return
        n = len(result.table["index"])
        where = f"'{image_layer.name}'" + (f" plane {index}" if index else "")
        extra = len(result.refill_rc)
        more = f" and {extra} in foreground they left uncovered" if extra else ""
        self.status.setText(
            f"{n} object{'s' if n != 1 else ''} in {where} from {len(result.seeds_rc)} seeds (object centres){more}."
        )

    def cancel(self) -> None:
        """Stop the running job at its next step (the labels stay as they were)."""
        self.job_panel.cancel()

    def _on_error(self, err: BaseException) -> None:
        self.status.setText(str(err) if isinstance(err, UserInputError) else f"Failed: {err}")
        notify_exception(err, "Automatic segmentation")

    def _on_finished(self, aborted: bool) -> None:
        if aborted:
            self.status.setText("Cancelled; the labels were not changed.")
        self.job_panel.reset_progress(1 if not aborted and self._has_result() else 0)

    def _has_result(self) -> bool:
        return any(r is not None for r in (self._run, self.seeded, self.stack))

    def _on_candidates(self, candidates: CandidateSet, target) -> None:
        image_layer, geometry, index, model_name = target
        self._run = _Run(candidates, image_layer, geometry, index, model_name)
        self.seeded = self.stack = None
        self._apply_filter_safely()

    # -- instant re-filtering --------------------------------------------------------------
    def _schedule_filter(self, *_args) -> None:
        if self._run is not None:
            self._filter_timer.start()

    def _on_run_params_changed(self, *_args) -> None:
        run = self._run
        if run is None:
            return
        stale = run.model_name != self.model_name() or run.candidates.params.model_run_key() != (
            self.params().model_run_key()
        )
        if stale:
            self.status.setText("Model or grid settings changed: press 'Segment everything' to run the model again.")

    def _apply_filter_safely(self) -> None:
        try:
            self.apply_filter()
        except UserInputError as err:
            self.status.setText(str(err))
        except Exception as err:  # noqa: BLE001 - shown to the user, labels untouched
            notify_exception(err, "Filtering the automatic segmentation")

    def apply_filter(self) -> AmgResult | None:
        """Re-filter the kept candidates with the current controls and write the labels (no model run).

        Returns
        -------
        AmgResult or None
            None when there are no candidates yet.

        Raises
        ------
        UserInputError
            A threshold below what the run kept (run again), or the output layer cannot hold the ids.
        """
        self._filter_timer.stop()
        run = self._run
        if run is None:
            return None
        # Keep the run's grid settings: only the filter fields change here.
        params = self.params().replace(
            points_per_side=run.candidates.params.points_per_side,
            crop_n_layers=run.candidates.params.crop_n_layers,
        )
        result = run.candidates.filter(params)
        labels, table = labels_from_result(result, self.min_area_spin.value)
        layer = self._output_for(run)
        write_plane_labels(layer, run.index, labels, table)
        self.result = result
        n = len(table["index"])
        where = f"'{run.image_layer.name}'" + (f" plane {run.index}" if run.index else "")
        text = (
            f"{n} object{'s' if n != 1 else ''} in {where} ({len(run.candidates)} candidates kept from the model run). "
            "Move the filters to update instantly."
        )
        cands = run.candidates
        if n == 0 and len(cands):
            text += (
                f" The model rated its masks low (best predicted IoU {float(cands.predicted_iou.max()):.2f}, "
                f"best stability {float(cands.stability_score.max()):.2f}): lower the thresholds, or choose a model "
                "that handles point prompts (SAM ViT-B)."
            )
        self.status.setText(text)
        return result

    def _output_for(self, run: _Run) -> Labels:
        shape = run.geometry.shape
        layer = self.output_layer
        if layer is None or layer not in self.viewer.layers or tuple(layer.data.shape) != tuple(shape):
            layer = find_everything_layer(self.viewer, run.image_layer.name, shape)
        if layer is None:
            layer = self.viewer.add_labels(
                np.zeros(shape, dtype=np.uint32),
                name=f"{run.image_layer.name} [SAM everything]",
                scale=run.geometry.scale,
                translate=run.geometry.translate,
                metadata={META_KEY: {"role": EVERYTHING_ROLE, "image": run.image_layer.name}},
                opacity=0.6,
            )
        self.output_layer = layer
        return layer

    def closeEvent(self, event):  # noqa: N802 - Qt API
        self.cancel()
        super().closeEvent(event)
