"""The parameter form of the Everything widget: mode, seeds, grid run, instant filters, post-processing."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QGroupBox, QVBoxLayout, QWidget

from ..core.automatic import AmgParams
from ..core.seeded import BOX_STAGE_REUSE
from .forms import slider, spin

__all__ = ["EverythingForm", "MODE_GRID", "MODE_SEEDS", "PLANES_ONE"]

#: Values of :attr:`EverythingForm.mode_combo`.
MODE_GRID = "grid"
MODE_SEEDS = "seeds"
#: Values of :attr:`EverythingForm.planes_combo`: the displayed plane, or the whole stack linked in z / t.
PLANES_ONE = "plane"


class EverythingForm(QWidget):
    """Controls of everything mode, grouped; :meth:`params` reads the grid ones.

    Attributes
    ----------
    CONTROLS : tuple of str
        Names of the controls (kept in the settings file, reachable from the widget).
    """

    CONTROLS = (
        "mode_combo", "planes_combo", "seed_spin", "points_spin", "crop_layers_spin", "iou_slider", "stability_slider", "nms_slider",
        "min_area_spin", "max_area_spin", "fill_holes_check", "fragment_spin", "largest_check", "fewer_windows_check",
    )

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._make_mode()
        self._make_run()
        self._make_filters()
        self.fill_holes_check = QCheckBox("Fill holes", self)
        self.fill_holes_check.setToolTip("Fill holes inside each object (e.g. nucleoli, vacuoles). Applies instantly.")
        self.fragment_spin = spin(
            0, 10**6, 0,
            "Remove pieces of an object smaller than this many pixels (its largest piece always stays). "
            "Applies instantly.", " px", "off",
        )
        self.largest_check = QCheckBox("Keep largest piece only", self)
        self.largest_check.setToolTip("Keep only the largest connected piece of each object. Applies instantly.")
        self._layout()

    def _make_mode(self) -> None:
        self.mode_combo = QComboBox(self)
        self.mode_combo.addItem("Seeds (object centres)", MODE_SEEDS)
        self.mode_combo.addItem("Grid of points (SAM)", MODE_GRID)
        self.mode_combo.setToolTip(
            "Seeds: find object centres in the image (bright or dark blobs) and segment each with one "
            "centred click; best for 256-px microscopy models such as micro-tiny. Grid: SAM's regular "
            "grid of point prompts with instant filters; for SAM models."
        )
        self.planes_combo = QComboBox(self)
        self.planes_combo.addItem("Displayed plane", PLANES_ONE)
        self.planes_combo.addItem("Whole stack: 3D objects (z)", "z")
        self.planes_combo.addItem("Whole stack: tracks over time (t)", "t")
        self.planes_combo.setToolTip(
            "Displayed plane: segment the plane shown in the viewer. Whole stack (3D or time-lapse images): "
            "segment every plane along the stack axis and give objects that overlap on neighbouring planes "
            "one id. z: the axis just before rows and columns, objects cut where they narrow (stacked "
            "nuclei); t: the first axis, cells linked frame to frame. Other axes stay at the displayed plane."
        )
        self.seed_spin = spin(
            2, 200, 5,
            "Seeds mode: smallest distance between two object centres, in pixels (about the radius of the "
            "smallest object). Larger values merge nearby seeds; smaller ones split objects.",
            " px",
        )
        self.fewer_windows_check = QCheckBox("Faster: fewer windows", self)
        self.fewer_windows_check.setChecked(BOX_STAGE_REUSE)
        self.fewer_windows_check.setToolTip(
            "Seeds mode: decode each object's second stage in the window it shares with its neighbours "
            "where the model allows it. 20-40 % less time on nuclei images; on held-out nuclei it found "
            "slightly fewer objects (F1 0.853 against 0.859)."
        )

    def _make_run(self) -> None:
        self.points_spin = spin(
            4, 128, 32,
            "Number of point prompts along each side of the image: the model is asked 'what object is here?' "
            "at points_per_side² grid points. More points find smaller objects but take longer "
            "(time grows with the square). Changing it needs a new run.",
        )
        self.crop_layers_spin = spin(
            0, 3, 0,
            "Also segment zoomed-in tiles of the image (1: 2×2 tiles, 2: also 4×4 …). Helps with many small "
            "objects; each layer multiplies the run time. Changing it needs a new run.",
        )

    def _make_filters(self) -> None:
        self.iou_slider = slider(
            0.0, 1.0, 0.88, 0.01,
            "Keep objects whose predicted IoU (the model's own estimate of mask quality) is above this. "
            "Lower it to keep more, fainter objects; 0 switches the filter off. Applies instantly.",
        )
        self.stability_slider = slider(
            0.0, 1.0, 0.95, 0.01,
            "Keep objects whose mask hardly changes when the model's cut-off is moved (stability score). "
            "Lower it to keep objects with fuzzy borders; 0 switches the filter off. Applies instantly.",
        )
        self.nms_slider = slider(
            0.0, 1.0, 0.7, 0.01,
            "Duplicate removal: of two objects whose bounding boxes overlap more than this (box IoU), "
            "only the better one is kept. Lower it to remove more near-duplicates. Applies instantly.",
        )
        self.min_area_spin = spin(
            0, 10**9, 0, "Remove objects smaller than this many pixels (debris, noise). Applies instantly.", " px", "off",
        )
        self.max_area_spin = spin(
            0, 10**9, 0,
            "Remove objects larger than this many pixels (e.g. the background or a whole cell cluster "
            "segmented as one object). Applies instantly.", " px", "no limit",
        )

    def _layout(self) -> None:
        self.seed_box = QGroupBox("Seeds", self)
        seed_form = QFormLayout(self.seed_box)
        seed_form.addRow("Seed spacing:", self.seed_spin)
        seed_form.addRow(self.fewer_windows_check)
        run_box = QGroupBox("Model run", self)
        run_form = QFormLayout(run_box)
        run_form.addRow("Points per side:", self.points_spin)
        run_form.addRow("Crop layers:", self.crop_layers_spin)
        filter_box = QGroupBox("Filter (instant)", self)
        filter_form = QFormLayout(filter_box)
        for label, control in (
            ("Predicted IoU ≥", self.iou_slider), ("Stability ≥", self.stability_slider), ("Box NMS:", self.nms_slider),
            ("Min object area:", self.min_area_spin), ("Max object area:", self.max_area_spin),
        ):
            filter_form.addRow(label, control)
        post_box = QGroupBox("Microscopy post-processing (instant)", self)
        post_form = QFormLayout(post_box)
        post_form.addRow(self.fill_holes_check)
        post_form.addRow("Remove fragments <", self.fragment_spin)
        post_form.addRow(self.largest_check)
        self.grid_boxes = (run_box, filter_box, post_box)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.seed_box)
        for box in self.grid_boxes:
            layout.addWidget(box)

    def controls(self) -> dict:
        """``{name: control}`` of :attr:`CONTROLS` (for the settings file)."""
        return {name.rsplit("_", 1)[0]: getattr(self, name) for name in self.CONTROLS}

    def show_mode(self, seeded: bool, can_seed: bool) -> None:
        """Show the seeds group or the grid groups."""
        self.mode_combo.setEnabled(can_seed)  # SAM models: grid only
        self.seed_box.setVisible(seeded)
        for box in self.grid_boxes:
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
