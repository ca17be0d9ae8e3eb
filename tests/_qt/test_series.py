"""Image series widget: step through a folder, labels + table saved atomically, resume where the user stopped."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
tifffile = pytest.importorskip("tifffile")

from napari.components import ViewerModel  # noqa: E402
from napari.utils.key_bindings import coerce_keybinding  # noqa: E402

from napari_sam_micro._napari.features import merge_object_rows  # noqa: E402
from napari_sam_micro._napari.layers import ensure_plugin_layers, image_geometry  # noqa: E402
from napari_sam_micro._qt.series import KEY_NEXT, SeriesWidget  # noqa: E402
from napari_sam_micro.core.export import read_labels, read_table  # noqa: E402
from napari_sam_micro.core.series import STATE_FILE, SeriesState  # noqa: E402


def _folder(tmp_path, n=3):
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(n):
        tifffile.imwrite(folder / f"img{k}.tif", np.full((40, 50), 10 * k, np.uint16))
    return folder


def _annotate(viewer, widget, label_id, rows, cols, iou):
    """What the Annotator does on a commit: its labels layer for the image, pixels and a table row."""
    layers = ensure_plugin_layers(viewer, widget._layer, image_geometry(widget._layer))
    layers.output.data[rows, cols] = label_id
    layers.output.features = merge_object_rows(layers.output.features, [{"index": label_id, "predicted_iou": iou, "prompt": "box"}])
    return layers.output


def _widget(qtbot, viewer, folder):
    widget = SeriesWidget(viewer)
    qtbot.addWidget(widget)
    widget.folder_edit.setText(str(folder))
    return widget


def test_round_trip_two_images_switch_and_reopen(qtbot, tmp_path):
    folder = _folder(tmp_path)
    viewer = ViewerModel()
    widget = _widget(qtbot, viewer, folder)
    assert widget.start()
    assert widget._layer.name == "img0"
    _annotate(viewer, widget, 1, slice(5, 15), slice(5, 20), 0.91)
    viewer.keymap[coerce_keybinding(KEY_NEXT)](viewer)  # PageDown: save, next image
    assert widget._layer.name == "img1" and [lyr.name for lyr in viewer.layers if lyr.name.startswith("img0")] == []
    saved = folder / "labels" / "img0_labels.tif"
    assert (read_labels(saved) == 1).sum() == 150 and read_table(saved.with_suffix(".csv"))["predicted_iou"].tolist() == [0.91]
    _annotate(viewer, widget, 1, slice(20, 30), slice(0, 10), 0.55)
    _annotate(viewer, widget, 2, slice(0, 4), slice(40, 50), 0.77)
    assert widget.previous()  # saves img1, reopens img0 with its labels and table
    out = widget.labels_layer()
    assert widget._layer.name == "img0" and (np.asarray(out.data) == 1).sum() == 150
    assert out.features["predicted_iou"].tolist() == [0.91]
    assert widget.next()
    assert SeriesState.load(folder / "labels").index == 1
    widget.close()

    # reopen (a new viewer and widget on the same folders): resumes at img1 with both objects and their table
    viewer2 = ViewerModel()
    again = _widget(qtbot, viewer2, folder)
    assert again.start()
    out = again.labels_layer()
    assert again._layer.name == "img1" and sorted(np.unique(np.asarray(out.data)).tolist()) == [0, 1, 2]
    assert out.features.sort_values("index")["predicted_iou"].tolist() == [0.55, 0.77]
    assert (folder / "labels" / STATE_FILE).is_file()


def test_ends_of_the_series_and_missing_folder(qtbot, tmp_path):
    folder = _folder(tmp_path, n=2)
    viewer = ViewerModel()
    widget = _widget(qtbot, viewer, folder)
    assert not widget.next()  # not started
    assert widget.start()
    assert not widget.previous() and "first" in widget.status.text()
    assert widget.next() and not widget.next() and "last" in widget.status.text()
    bad = _widget(qtbot, ViewerModel(), tmp_path / "nowhere")
    assert not bad.start() and "does not exist" in bad.status.text()


def test_open_image_layers_as_a_series(qtbot, tmp_path):
    viewer = ViewerModel()
    for k in range(2):
        viewer.add_image(np.full((30, 30), k, np.uint8), name=f"layer{k}")
    widget = SeriesWidget(viewer)
    qtbot.addWidget(widget)
    widget.output_edit.setText(str(tmp_path / "out"))
    assert widget.use_open_layers()
    _annotate(viewer, widget, 3, slice(0, 5), slice(0, 5), 0.8)
    assert widget.next() and widget._layer.name == "layer1"
    assert viewer.layers["layer1"].visible and not viewer.layers["layer0"].visible
    assert (read_labels(tmp_path / "out" / "layer0_labels.tif") == 3).sum() == 25


def test_the_annotator_follows_the_series(qtbot, tmp_path):
    """Next / previous in the series also switch the Annotator of the same viewer to that image."""
    pytest.importorskip("segment_anything")
    from napari_sam_micro._qt.annotator import AnnotatorWidget

    viewer = ViewerModel()
    for k in range(2):
        viewer.add_image(np.full((30, 30), k, np.uint8), name=f"layer{k}")
    annotator = AnnotatorWidget(viewer, model="tiny-test", auto_embed=False)
    qtbot.addWidget(annotator)
    series = SeriesWidget(viewer)
    qtbot.addWidget(series)
    series.output_edit.setText(str(tmp_path / "out"))
    assert series.use_open_layers()
    assert annotator.image_combo.current_layer() is viewer.layers["layer0"]
    assert series.next()
    assert annotator.image_combo.current_layer() is viewer.layers["layer1"]
    assert series.previous()
    assert annotator.image_combo.current_layer() is viewer.layers["layer0"]
    annotator.close()  # disconnected: the series goes on without it
    assert series.next()
