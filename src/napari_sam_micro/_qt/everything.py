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
by classical means (Otsu foreground, distance transform + intensity maxima) and
:meth:`napari_sam_micro.session.AnnotationSession.segment_seeds_job` decodes each as a centred
click in its window. The grid filters do not apply to that mode (its masks are cleaned and
de-duplicated by :func:`~napari_sam_micro.core.seeds.resolve_seeded_masks`); "Seed spacing" is its
only setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from ..core.automatic import AmgParams, AmgResult, CandidateSet, generate_candidates, labels_from_result
from ..core.cache import content_digest, embedding_key
from ..core.errors import UserInputError
from ..core.preprocess import PreprocessConfig, normalize_image
from ..core.progress import Progress
from ..models.registry import available_models, default_model_name, get_spec
from ..segmentation import EverythingOptions, EverythingResult, everything_job
from .._napari.features import set_object_table
from .._napari.layers import META_KEY, current_plane_index, image_geometry, layer_meta, plane_data
from .._napari.state import ViewerState, embedding_model_id
from .objects_table import LayerComboBox
from .workers import notify_exception, start_job

__all__ = ["EverythingWidget", "EVERYTHING_ROLE", "labels_from_result", "write_plane_labels", "find_everything_layer"]

#: ``layer.metadata["napari_sam_micro"]["role"]`` of the layer everything mode writes.
EVERYTHING_ROLE = "everything"

#: Values of :attr:`EverythingWidget.mode_combo`.
MODE_GRID = "grid"
MODE_SEEDS = "seeds"


@dataclass(frozen=True)
class _Run:
    """Candidates of one model run and where they belong."""

    candidates: CandidateSet
    image_layer: Image
    geometry: object
    index: tuple[int, ...]
    model_name: str


def find_everything_layer(viewer, image_name: str, shape: tuple[int, ...]) -> Labels | None:
    """The Labels layer everything mode made for ``image_name`` with data ``shape``, or None."""
    for layer in viewer.layers:
        meta = layer_meta(layer)
        if (
            isinstance(layer, Labels)
            and meta.get("role") == EVERYTHING_ROLE
            and meta.get("image") == image_name
            and tuple(layer.data.shape) == tuple(shape)
        ):
            return layer
    return None


def _max_outside_plane(data: np.ndarray, index: tuple[int, ...]) -> int:
    """Largest id of ``data`` outside the 2D plane ``index`` (0 for 2D data)."""
    if not index:
        return 0
    data = np.asarray(data)
    planes = data.reshape(-1, *data.shape[-2:])
    k = int(np.ravel_multi_index(index, data.shape[:-2]))
    top = 0
    if k > 0:
        top = max(top, int(planes[:k].max()))
    if k + 1 < planes.shape[0]:
        top = max(top, int(planes[k + 1 :].max()))
    return top


def write_plane_labels(layer: Labels, index: tuple[int, ...], labels: np.ndarray, table: dict) -> np.ndarray:
    """Replace the objects of one 2D plane of ``layer`` by ``labels`` (one undo step) and their rows.

    Parameters
    ----------
    layer : napari.layers.Labels
        ``(..., H, W)`` layer.
    index : tuple of int
        Plane along the leading axes (``()`` for 2D).
    labels : (H, W) int
        New objects, ids ``1..K``; shifted above every id used in other planes so ids stay unique.
    table : dict of str to list
        Object rows of ``labels`` (``"index"`` = the unshifted ids).

    Returns
    -------
    np.ndarray
        The ids written into the layer.
    """
    index = tuple(int(i) for i in index)
    offset = _max_outside_plane(layer.data, index)
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    dtype = np.dtype(layer.data.dtype)
    if np.issubdtype(dtype, np.integer) and offset + top > np.iinfo(dtype).max:
        raise UserInputError(
            f"The labels layer '{layer.name}' ({layer.data.dtype}) cannot hold {offset + top} objects; "
            "delete it so that a new uint32 layer is made."
        )
    new_plane = np.where(labels > 0, labels.astype(np.int64) + offset, 0)
    old_plane = np.asarray(layer.data[index]) if index else np.asarray(layer.data)
    changed = np.nonzero(old_plane != new_plane)
    if changed[0].size:
        lead = tuple(np.full(changed[0].size, i, dtype=np.intp) for i in index)
        with layer.block_history():
            layer.data_setitem(lead + changed, new_plane[changed].astype(layer.data.dtype))
    rows = dict(table)
    rows["index"] = [int(i) + offset for i in table["index"]]
    set_object_table(layer, rows, merge=True, keep_only_present=True)
    return np.asarray(rows["index"], dtype=np.int64)


def _slider(minimum: float, maximum: float, value: float, step: float, tooltip: str) -> QLabeledDoubleSlider:
    slider = QLabeledDoubleSlider(Qt.Horizontal)
    slider.setRange(minimum, maximum)
    slider.setSingleStep(step)
    slider.setDecimals(2)
    slider.setValue(value)
    slider.setToolTip(tooltip)
    return slider


def _spin(minimum: int, maximum: int, value: int, tooltip: str, suffix: str = "", special: str = "") -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(minimum, maximum)
    spin.setValue(value)
    spin.setToolTip(tooltip)
    if suffix:
        spin.setSuffix(suffix)
    if special:
        spin.setSpecialValueText(special)
    return spin


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
        The objects currently written.
    output_layer : napari.layers.Labels or None
        The layer the objects are written to.
    worker : GeneratorWorker or None
        The running job.
    """

    def __init__(self, napari_viewer, model: str | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = ViewerState.for_viewer(napari_viewer)
        self.worker = None
        self._run: _Run | None = None
        self.result: AmgResult | None = None
        self.seeded: EverythingResult | None = None
        self.output_layer: Labels | None = None

        # -- inputs ------------------------------------------------------------------------
        self.image_combo = LayerComboBox(napari_viewer, Image, self)
        self.image_combo.setToolTip("Image to segment. For 3D / time-lapse data the plane shown in the viewer is used.")
        self.model_combo = QComboBox(self)
        for name in available_models():
            spec = get_spec(name)
            self.model_combo.addItem(spec.display_name, name)
            self.model_combo.setItemData(self.model_combo.count() - 1, spec.description, Qt.ToolTipRole)
        chosen = model or default_model_name()
        if self.model_combo.findData(chosen) >= 0:
            self.model_combo.setCurrentIndex(self.model_combo.findData(chosen))
        self.model_combo.setToolTip("Segmentation model. Models marked offline need no download.")

        self.mode_combo = QComboBox(self)
        self.mode_combo.addItem("Seeds (object centres)", MODE_SEEDS)
        self.mode_combo.addItem("Grid of points (SAM)", MODE_GRID)
        self.mode_combo.setToolTip(
            "Seeds: find object centres in the image (bright or dark blobs) and segment each with one "
            "centred click; best for 256-px microscopy models such as micro-tiny. Grid: SAM's regular "
            "grid of point prompts with instant filters; for SAM models."
        )
        self.seed_spin = _spin(
            2, 200, 5,
            "Seeds mode: smallest distance between two object centres, in pixels (about the radius of the "
            "smallest object). Larger values merge nearby seeds; smaller ones split objects.",
            " px",
        )
        # -- model run parameters ----------------------------------------------------------
        self.points_spin = _spin(
            4, 128, 32,
            "Number of point prompts along each side of the image: the model is asked 'what object is here?' "
            "at points_per_side² grid points. More points find smaller objects but take longer "
            "(time grows with the square). Changing it needs a new run.",
        )
        self.crop_layers_spin = _spin(
            0, 3, 0,
            "Also segment zoomed-in tiles of the image (1: 2×2 tiles, 2: also 4×4 …). Helps with many small "
            "objects; each layer multiplies the run time. Changing it needs a new run.",
        )

        # -- filter parameters (instant) -----------------------------------------------------
        self.iou_slider = _slider(
            0.0, 1.0, 0.88, 0.01,
            "Keep objects whose predicted IoU (the model's own estimate of mask quality) is above this. "
            "Lower it to keep more, fainter objects; 0 switches the filter off. Applies instantly.",
        )
        self.stability_slider = _slider(
            0.0, 1.0, 0.95, 0.01,
            "Keep objects whose mask hardly changes when the model's cut-off is moved (stability score). "
            "Lower it to keep objects with fuzzy borders; 0 switches the filter off. Applies instantly.",
        )
        self.nms_slider = _slider(
            0.0, 1.0, 0.7, 0.01,
            "Duplicate removal: of two objects whose bounding boxes overlap more than this (box IoU), "
            "only the better one is kept. Lower it to remove more near-duplicates. Applies instantly.",
        )
        self.min_area_spin = _spin(
            0, 10**9, 0,
            "Remove objects smaller than this many pixels (debris, noise). Applies instantly.", " px", "off",
        )
        self.max_area_spin = _spin(
            0, 10**9, 0,
            "Remove objects larger than this many pixels (e.g. the background or a whole cell cluster "
            "segmented as one object). Applies instantly.", " px", "no limit",
        )
        # -- microscopy post-processing ----------------------------------------------------
        self.fill_holes_check = QCheckBox("Fill holes", self)
        self.fill_holes_check.setToolTip("Fill holes inside each object (e.g. nucleoli, vacuoles). Applies instantly.")
        self.fragment_spin = _spin(
            0, 10**6, 0,
            "Remove pieces of an object smaller than this many pixels (its largest piece always stays). "
            "Applies instantly.", " px", "off",
        )
        self.largest_check = QCheckBox("Keep largest piece only", self)
        self.largest_check.setToolTip("Keep only the largest connected piece of each object. Applies instantly.")

        self.run_button = QPushButton("Segment everything", self)
        self.run_button.setToolTip("Run the model on the displayed plane of the image (in the background).")
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.status = QLabel("Choose an image and press 'Segment everything'.", self)
        self.status.setWordWrap(True)

        # -- layout ----------------------------------------------------------------------------
        inputs = QFormLayout()
        inputs.addRow("Image:", self.image_combo)
        inputs.addRow("Model:", self.model_combo)
        inputs.addRow("Mode:", self.mode_combo)
        self._seed_box = QGroupBox("Seeds", self)
        QFormLayout(self._seed_box).addRow("Seed spacing:", self.seed_spin)
        run_box = QGroupBox("Model run", self)
        run_form = QFormLayout(run_box)
        run_form.addRow("Points per side:", self.points_spin)
        run_form.addRow("Crop layers:", self.crop_layers_spin)
        filter_box = QGroupBox("Filter (instant)", self)
        filter_form = QFormLayout(filter_box)
        filter_form.addRow("Predicted IoU ≥", self.iou_slider)
        filter_form.addRow("Stability ≥", self.stability_slider)
        filter_form.addRow("Box NMS:", self.nms_slider)
        filter_form.addRow("Min object area:", self.min_area_spin)
        filter_form.addRow("Max object area:", self.max_area_spin)
        post_box = QGroupBox("Microscopy post-processing (instant)", self)
        post_form = QFormLayout(post_box)
        post_form.addRow(self.fill_holes_check)
        post_form.addRow("Remove fragments <", self.fragment_spin)
        post_form.addRow(self.largest_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(inputs)
        layout.addWidget(self._seed_box)
        layout.addWidget(run_box)
        layout.addWidget(filter_box)
        layout.addWidget(post_box)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self._grid_boxes = (run_box, filter_box, post_box)
        self._update_mode_controls()

        # -- wiring ------------------------------------------------------------------------------
        self._filter_timer = QTimer(self)
        self._filter_timer.setSingleShot(True)
        self._filter_timer.setInterval(40)
        self._filter_timer.timeout.connect(self._apply_filter_safely)
        for slider in (self.iou_slider, self.stability_slider, self.nms_slider):
            slider.valueChanged.connect(self._schedule_filter)
        for spin in (self.min_area_spin, self.max_area_spin, self.fragment_spin):
            spin.valueChanged.connect(self._schedule_filter)
        for check in (self.fill_holes_check, self.largest_check):
            check.toggled.connect(self._schedule_filter)
        self.points_spin.valueChanged.connect(self._on_run_params_changed)
        self.crop_layers_spin.valueChanged.connect(self._on_run_params_changed)
        self.model_combo.currentIndexChanged.connect(self._on_run_params_changed)
        self.model_combo.currentIndexChanged.connect(self._update_mode_controls)
        self.mode_combo.currentIndexChanged.connect(self._update_mode_controls)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)

    # -- parameters -------------------------------------------------------------------------
    @property
    def candidates(self) -> CandidateSet | None:
        """Candidates of the last model run, or None."""
        return None if self._run is None else self._run.candidates

    def model_name(self) -> str:
        """Registry name of the chosen model."""
        return str(self.model_combo.currentData())

    def seeds_available(self) -> bool:
        """Seeds mode is offered: the model decodes clicks in windows (``crop_to_prompt`` and ``point_prompts``)."""
        return get_spec(self.model_name()).seeded_everything

    def mode(self) -> str:
        """:data:`MODE_SEEDS` or :data:`MODE_GRID` (grid whenever the model has no seeds mode)."""
        if not self.seeds_available():
            return MODE_GRID
        return str(self.mode_combo.currentData())

    def _update_mode_controls(self, *_args) -> None:
        self.mode_combo.setEnabled(self.seeds_available())  # SAM models: grid only
        seeded = self.mode() == MODE_SEEDS
        self._seed_box.setVisible(seeded)
        for box in self._grid_boxes:
            box.setVisible(not seeded)

    def params(self) -> AmgParams:
        """:class:`AmgParams` from the controls (``max_mask_region_area`` None when 'no limit')."""
        return AmgParams(
            points_per_side=self.points_spin.value(),
            crop_n_layers=self.crop_layers_spin.value(),
            pred_iou_thresh=round(float(self.iou_slider.value()), 4),
            stability_score_thresh=round(float(self.stability_slider.value()), 4),
            box_nms_thresh=round(float(self.nms_slider.value()), 4),
            max_mask_region_area=self.max_area_spin.value() or None,
            fill_holes=self.fill_holes_check.isChecked(),
            min_fragment_area=self.fragment_spin.value(),
            keep_largest_component=self.largest_check.isChecked(),
        )

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
            plane = plane_data(image_layer, geometry, index)
        except UserInputError as err:
            self.status.setText(str(err))
            notify_exception(err)
            return None
        model_name = self.model_name()
        target = (image_layer, geometry, index, model_name)
        if self.mode() == MODE_SEEDS:
            job = self._seeds_job(model_name, plane, config, self.seed_spin.value())
            on_result = lambda res: self._on_seeded(res, target)  # noqa: E731
        else:
            key = embedding_key(content_digest(plane), embedding_model_id(model_name), config.key())
            job = self._job(model_name, plane, config, params, key)
            on_result = lambda cands: self._on_candidates(cands, target)  # noqa: E731
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.status.setText(f"Segmenting '{image_layer.name}'" + (f" plane {index}" if index else "") + " …")
        self.worker = start_job(
            job,
            on_progress=self._on_progress,
            on_result=on_result,
            on_error=self._on_error,
            on_aborted=lambda: self.status.setText("Cancelled; the labels were not changed."),
            on_finished=self._on_finished,
            context="Automatic segmentation",
        )
        return self.worker

    def _job(self, model_name, plane, config, params, key):
        model = yield from self.state.models.get_job(model_name)
        yield Progress(0, 0, "Normalising the image")
        image = normalize_image(plane, config)
        candidates = yield from generate_candidates(model, image, params, cache=self.state.cache, cache_key=key)
        return candidates

    def _seeds_job(self, model_name, plane, config, min_distance):
        model = yield from self.state.models.get_job(model_name)
        options = EverythingOptions(mode=MODE_SEEDS, min_distance=int(min_distance))
        result = yield from everything_job(
            model, plane, get_spec(model_name), preprocess=config, options=options,
            cache=self.state.cache, model_id=embedding_model_id(model_name),
        )
        return result

    def _on_seeded(self, result: EverythingResult, target) -> None:
        image_layer, geometry, index, model_name = target
        run = _Run(None, image_layer, geometry, index, model_name)
        self._run = None
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
        if self.worker is not None:
            self.worker.quit()
            self.status.setText("Cancelling …")

    def _on_progress(self, report: Progress) -> None:
        if report.total:
            self.progress.setRange(0, report.total)
            self.progress.setValue(report.done)
        else:
            self.progress.setRange(0, 0)
        if report.message:
            self.progress.setFormat(f"{report.message} (%p%)" if report.total else report.message)

    def _on_error(self, err: BaseException) -> None:
        self.status.setText(str(err) if isinstance(err, UserInputError) else f"Failed: {err}")
        notify_exception(err, "Automatic segmentation")

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if self._run is not None or self.seeded is not None else 0)
        self.progress.setFormat("%p%")

    def _on_candidates(self, candidates: CandidateSet, target) -> None:
        image_layer, geometry, index, model_name = target
        self._run = _Run(candidates, image_layer, geometry, index, model_name)
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
        labels, table = labels_from_result(result, self.min_area_spin.value())
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
