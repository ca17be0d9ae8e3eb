"""npe2 writers: labels + object table round-trip exactly (writer functions and viewer.layers.save)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("napari")
tifffile = pytest.importorskip("tifffile")

from napari.components import ViewerModel  # noqa: E402

from napari_sam_micro._napari.features import set_object_table  # noqa: E402
from napari_sam_micro._napari.writer import (  # noqa: E402
    SaveRefusedError,
    layer_table,
    write_labels_npy,
    write_labels_png,
    write_labels_tiff,
)
from napari_sam_micro.core.export import read_labels, read_table  # noqa: E402
from napari_sam_micro.core.labels import object_row  # noqa: E402


def _annotated_layer(viewer, top_id: int = 7):
    """A Labels layer as everything mode / the annotator leave it: objects + their table."""
    data = np.zeros((30, 40), dtype=np.uint32)
    data[2:9, 3:12] = 3
    data[15:25, 20:38] = top_id
    data[26:29, 1:4] = 5
    layer = viewer.add_labels(data, name="cells [SAM everything]")
    rows = [
        object_row(3, data == 3, 0.91, 0.97, "everything"),
        object_row(top_id, data == top_id, 0.875, 0.955, "box"),
        object_row(5, data == 5, 0.5, 0.66, "points"),
    ]
    set_object_table(layer, rows)
    return layer


def _csv_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _check_table(csv_path, layer):
    table = read_table(csv_path)
    features = layer.features
    assert table["index"].tolist() == features["index"].tolist()
    assert table["area"].tolist() == features["area"].tolist()
    # Floats are written with repr: they come back exactly.
    assert table["predicted_iou"].tolist() == features["predicted_iou"].tolist()
    assert table["stability_score"].tolist() == features["stability_score"].tolist()
    assert table["prompt"].tolist() == features["prompt"].tolist()
    for c in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"):
        assert table[c].tolist() == features[c].tolist()
    # Rows are one per object of the image, bounding boxes match the pixels.
    for row in _csv_rows(csv_path):
        ys, xs = np.nonzero(np.asarray(layer.data) == int(row["index"]))
        assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == tuple(
            int(row[c]) for c in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")
        )


@pytest.mark.parametrize(
    ("writer", "name"), [(write_labels_tiff, "out.tif"), (write_labels_png, "out.png"), (write_labels_npy, "out.npy")]
)
def test_writer_functions_round_trip(tmp_path, writer, name):
    viewer = ViewerModel()
    layer = _annotated_layer(viewer)
    data, meta, _ = layer.as_layer_data_tuple()
    written = writer(str(tmp_path / name), data, meta)
    # the image, its object table and the layer information the reader restores
    assert written == [str(tmp_path / name), str(tmp_path / "out.csv"), str(tmp_path / "out.sam-micro.json")]
    back = read_labels(tmp_path / name)
    np.testing.assert_array_equal(back, layer.data)
    if name.endswith(".tif"):
        assert tifffile.imread(tmp_path / name).dtype == np.uint16
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert tif.pages[0].compression != 1  # compressed
    if name.endswith(".png"):
        assert back.dtype == np.uint16
    _check_table(tmp_path / "out.csv", layer)


def test_tiff_uses_uint32_for_large_ids(tmp_path):
    viewer = ViewerModel()
    layer = _annotated_layer(viewer, top_id=70_000)
    data, meta, _ = layer.as_layer_data_tuple()
    write_labels_tiff(str(tmp_path / "big.tif"), data, meta)
    back = tifffile.imread(tmp_path / "big.tif")
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, layer.data)
    with pytest.raises(SaveRefusedError, match="PNG"):
        write_labels_png(str(tmp_path / "big.png"), data, meta)
    assert not (tmp_path / "big.png").exists()


def test_layer_without_table_writes_no_csv(tmp_path):
    viewer = ViewerModel()
    layer = viewer.add_labels(np.eye(6, dtype=np.uint8))
    data, meta, _ = layer.as_layer_data_tuple()
    assert layer_table(meta) is None
    assert write_labels_npy(str(tmp_path / "plain.npy"), data, meta) == [str(tmp_path / "plain.npy")]
    assert not (tmp_path / "plain.csv").exists()


def _discover_plugin():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()  # napari.Viewer does this at start-up; a bare ViewerModel does not
    try:
        manager.get_manifest("napari-sam-micro")
    except KeyError:
        pytest.skip("the package is not installed (no napari.manifest entry point)")


def test_viewer_save_with_the_plugin_round_trips(tmp_path):
    _discover_plugin()
    viewer = ViewerModel()
    layer = _annotated_layer(viewer)
    viewer.layers.selection = {layer}
    path = tmp_path / "saved.tif"
    written = viewer.layers.save(str(path), selected=True, plugin="napari-sam-micro")
    assert str(path) in [str(p) for p in written]
    np.testing.assert_array_equal(tifffile.imread(path), layer.data)
    _check_table(tmp_path / "saved.csv", layer)


def test_nd_labels_export_to_tiff_but_not_png(tmp_path):
    viewer = ViewerModel()
    data = np.zeros((2, 5, 6), dtype=np.uint16)
    data[1, 1:3, 1:3] = 4
    layer = viewer.add_labels(data)
    d, meta, _ = layer.as_layer_data_tuple()
    write_labels_tiff(str(tmp_path / "stack.tif"), d, meta)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "stack.tif"), data)
    with pytest.raises(SaveRefusedError, match="2D"):
        write_labels_png(str(tmp_path / "stack.png"), d, meta)


def test_scripted_save_of_3d_labels_as_png_tells_why(tmp_path):
    """Issue 12.3: npe2 swallows a writer's ValueError (``[]`` + "not a valid writer"); ours reaches the user."""
    _discover_plugin()
    viewer = ViewerModel()
    data = np.zeros((3, 10, 12), dtype=np.uint16)
    data[1, 2:5, 2:6] = 4
    layer = viewer.add_labels(data, name="vol")
    viewer.layers.selection = {layer}
    with pytest.raises(SaveRefusedError, match=r"Nothing was saved to .*vol\.png.*3 dimensions.*TIFF"):
        viewer.layers.save(str(tmp_path / "vol.png"), selected=True, plugin="napari-sam-micro")
    assert list(tmp_path.iterdir()) == []
    # the same layer saves as TIFF
    written = viewer.layers.save(str(tmp_path / "vol.tif"), selected=True, plugin="napari-sam-micro")
    assert written == [str(tmp_path / "vol.tif")]
