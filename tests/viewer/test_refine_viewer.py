"""Refine labels end to end in a real napari window, on a real fluorescence image with spoiled labels.

Run under a display: ``xvfb-run -a pytest -m viewer tests/viewer/test_refine_viewer.py -s``.
The ground truth of a held-out DSB 2018 image is eroded (as a too-tight Cellpose / StarDist result
would be), every object is refined with the offline default model, the proposals are shown as
contours and the screenshot ``docs/images/refine.png`` is saved; accepting them all must raise the
mean IoU with the ground truth.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.viewer, pytest.mark.data, pytest.mark.slow]

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "refine.png"
RUN_TIMEOUT_MS = 580_000
IMAGE = "2349e95ece2857c8"  # held-out (validation) fluorescence image, 9 well separated nuclei


def test_refine_eroded_labels_in_the_viewer(make_napari_viewer, qtbot, shared_data):
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display: run under xvfb-run -a")
    pytest.importorskip("napari")
    tifffile = pytest.importorskip("tifffile")
    from napari_sam_micro._qt.refine import RefineWidget
    from napari_sam_micro.core.degrade import best_match_iou, erode_labels
    from napari_sam_micro.models.registry import default_model_name

    folder = shared_data / "dsb2018-train"
    if not (folder / "images" / f"{IMAGE}.tif").exists():
        pytest.skip("image not in ../shared/data")
    image = tifffile.imread(folder / "images" / f"{IMAGE}.tif")
    gt = tifffile.imread(folder / "labels" / f"{IMAGE}.tif").astype(np.int32)
    spoiled = erode_labels(gt, 0.25)
    before = float(np.mean(best_match_iou(gt, spoiled)))

    # the fixture shares napari's plugin registration between viewers (a second napari.Viewer in
    # one process re-registers our npe2 commands and fails) and closes the viewer afterwards
    viewer = make_napari_viewer(show=True, title="napari-sam-micro: refine labels")
    viewer.window.resize(1500, 950)
    if image.ndim == 3:
        image = image[..., :3]
    viewer.add_image(image, name=f"dsb2018 {IMAGE[:8]}", rgb=image.ndim == 3)
    layer = viewer.add_labels(spoiled, name="eroded labels (e.g. Cellpose)", opacity=0.5)
    widget = RefineWidget(viewer, model=default_model_name())
    viewer.window.add_dock_widget(widget, name="Refine labels", area="right")
    widget.labels_combo.set_layer(layer)
    assert widget.run() is not None, widget.status.text() if hasattr(widget, "status") else ""
    qtbot.waitUntil(lambda: not widget.job_panel.is_busy(), timeout=RUN_TIMEOUT_MS)
    assert widget.refined, "no proposals"
    assert widget.table.rowCount() == len(widget.refined)
    np.testing.assert_array_equal(layer.data, spoiled)  # nothing written before accepting
    qtbot.wait(300)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    import imageio.v3 as iio

    iio.imwrite(SCREENSHOT, shot)
    assert SCREENSHOT.stat().st_size > 10_000

    widget.accept_all()
    after = float(np.mean(best_match_iou(gt, np.asarray(layer.data))))
    print(f"refine on dsb2018/{IMAGE}: mean IoU of eroded labels {before:.3f} -> {after:.3f}")
    # eroding by a quarter of the radius leaves ~0.56 IoU; the model's masks of these nuclei
    # reach about 0.9 (box IoU on held-out fluorescence 0.886): a gain of 0.15 is a clear win
    assert after >= before + 0.15
    layer.undo()
    np.testing.assert_array_equal(layer.data, spoiled)  # one undo step
