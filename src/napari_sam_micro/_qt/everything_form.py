"""The parameter form of the Everything widget: mode, seeds, grid run, instant filters, post-processing.

The controls are magicgui widgets (:mod:`.forms`), grouped in titled boxes.
"""

from __future__ import annotations

from qtpy.QtWidgets import QGroupBox, QVBoxLayout, QWidget

from ..core.automatic import AmgParams
from ..core.seeded import BOX_STAGE_REUSE
from .forms import check, choice, form, slider, spin

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
        Names of the controls (magicgui value widgets; kept in the settings file, reachable from
        the widget).
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
        self.fill_holes_check = check("Fill holes", False, "Fill holes inside each object (e.g. nucleoli, vacuoles). Applies instantly.")
        self.fragment_spin = spin(
            0, 10**6, 0,
            "Remove pieces of an object smaller than this many pixels (its largest piece always stays). "
            "Applies instantly.", "Remove fragments < (px, 0 = off):",
        )
        self.largest_check = check("Keep largest piece only", False, "Keep only the largest connected piece of each object. Applies instantly.")
        self._layout()

    def _make_mode(self) -> None:
        self.mode_combo = choice(
            [("Seeds (object centres)", MODE_SEEDS), ("Grid of points (SAM)", MODE_GRID)],
            tooltip="Seeds: find object centres in the image (bright or dark blobs) and segment each with one "
            "centred click; best for 256-px microscopy models such as micro-tiny. Grid: SAM's regular "
            "grid of point prompts with instant filters; for SAM models.",
            label="Mode:",
        )
        self.planes_combo = choice(
            [("Displayed plane", PLANES_ONE), ("Whole stack: 3D objects (z)", "z"), ("Whole stack: tracks over time (t)", "t")],
            tooltip="Displayed plane: segment the plane shown in the viewer. Whole stack (3D or time-lapse images): "
            "segment every plane along the stack axis and give objects that overlap on neighbouring planes "
            "one id. z: the axis just before rows and columns, objects cut where they narrow (stacked "
            "nuclei); t: the first axis, cells linked frame to frame. Other axes stay at the displayed plane.",
            label="Planes:",
        )
        self.seed_spin = spin(
            2, 200, 5,
            "Seeds mode: smallest distance between two object centres, in pixels (about the radius of the "
            "smallest object). Larger values merge nearby seeds; smaller ones split objects.",
            "Seed spacing (px):",
        )
        self.fewer_windows_check = check(
            "Faster: fewer windows", BOX_STAGE_REUSE,
            "Seeds mode: decode each object's second stage in the window it shares with its neighbours "
            "where the model allows it. 20-40 % less time on nuclei images; on held-out nuclei it found "
            "slightly fewer objects (F1 0.853 against 0.859).",
        )

    def _make_run(self) -> None:
        self.points_spin = spin(
            4, 128, 32,
            "Number of point prompts along each side of the image: the model is asked 'what object is here?' "
            "at points_per_side² grid points. More points find smaller objects but take longer "
            "(time grows with the square). Changing it needs a new run.",
            "Points per side:",
        )
        self.crop_layers_spin = spin(
            0, 3, 0,
            "Also segment zoomed-in tiles of the image (1: 2×2 tiles, 2: also 4×4 …). Helps with many small "
            "objects; each layer multiplies the run time. Changing it needs a new run.",
            "Crop layers:",
        )

    def _make_filters(self) -> None:
        self.iou_slider = slider(
            0.0, 1.0, 0.88, 0.01,
            "Keep objects whose predicted IoU (the model's own estimate of mask quality) is above this. "
            "Lower it to keep more, fainter objects; 0 switches the filter off. Applies instantly.",
            "Min. predicted IoU:",
        )
        self.stability_slider = slider(
            0.0, 1.0, 0.95, 0.01,
            "Keep objects whose mask hardly changes when the model's cut-off is moved (stability score). "
            "Lower it to keep objects with fuzzy borders; 0 switches the filter off. Applies instantly.",
            "Min. stability:",
        )
        self.nms_slider = slider(
            0.0, 1.0, 0.7, 0.01,
            "Duplicate removal: of two objects whose bounding boxes overlap more than this (box IoU), "
            "only the better one is kept. Lower it to remove more near-duplicates. Applies instantly.",
            "Box NMS:",
        )
        self.min_area_spin = spin(
            0, 10**9, 0, "Remove objects smaller than this many pixels (debris, noise). Applies instantly.",
            "Min object area (px, 0 = off):",
        )
        self.max_area_spin = spin(
            0, 10**9, 0,
            "Remove objects larger than this many pixels (e.g. the background or a whole cell cluster "
            "segmented as one object). Applies instantly.", "Max object area (px, 0 = no limit):",
        )

    def _layout(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        groups = (
            ("Seeds", (self.seed_spin, self.fewer_windows_check)),
            ("Model run", (self.points_spin, self.crop_layers_spin)),
            ("Filter (instant)", (self.iou_slider, self.stability_slider, self.nms_slider, self.min_area_spin, self.max_area_spin)),
            ("Microscopy post-processing (instant)", (self.fill_holes_check, self.fragment_spin, self.largest_check)),
        )
        boxes = []
        for title, controls in groups:
            box = QGroupBox(title, self)
            QVBoxLayout(box).addWidget(form(*controls).native)
            layout.addWidget(box)
            boxes.append(box)
        self.seed_box, self.grid_boxes = boxes[0], tuple(boxes[1:])

    def controls(self) -> dict:
        """``{name: control}`` of :attr:`CONTROLS` (for the settings file)."""
        return {name.rsplit("_", 1)[0]: getattr(self, name) for name in self.CONTROLS}

    def show_mode(self, seeded: bool, can_seed: bool) -> None:
        """Show the seeds group or the grid groups."""
        self.mode_combo.enabled = can_seed  # SAM models: grid only
        self.seed_box.setVisible(seeded)
        for box in self.grid_boxes:
            box.setVisible(not seeded)

    def params(self) -> AmgParams:
        """:class:`AmgParams` from the controls (``max_mask_region_area`` None when 'no limit')."""
        return AmgParams(
            points_per_side=self.points_spin.value,
            crop_n_layers=self.crop_layers_spin.value,
            pred_iou_thresh=round(float(self.iou_slider.value), 4),
            stability_score_thresh=round(float(self.stability_slider.value), 4),
            box_nms_thresh=round(float(self.nms_slider.value), 4),
            max_mask_region_area=self.max_area_spin.value or None,
            fill_holes=self.fill_holes_check.value,
            min_fragment_area=self.fragment_spin.value,
            keep_largest_component=self.largest_check.value,
        )
