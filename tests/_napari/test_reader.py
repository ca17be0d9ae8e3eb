"""npe2 reader: labels saved by the plugin come back with their features and metadata; others fall through."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

pytest.importorskip("napari")
tifffile = pytest.importorskip("tifffile")

from napari.components import ViewerModel  # noqa: E402

from napari_sam_micro._napari.features import set_object_table  # noqa: E402
from napari_sam_micro._napari.layers import META_KEY  # noqa: E402
from napari_sam_micro._napari.reader import LabelsTableWarning, get_reader, read_labels_layer  # noqa: E402
from napari_sam_micro._napari.writer import write_labels_npy, write_labels_png, write_labels_tiff  # noqa: E402
from napari_sam_micro.core.export import write_labels  # noqa: E402
from napari_sam_micro.core.labels import object_row  # noqa: E402

FEATURE_COLUMNS = ("index", "area", "predicted_iou", "stability_score", "prompt", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")


def _annotated_layer(viewer):
    data = np.zeros((30, 40), dtype=np.uint32)
    data[2:9, 3:12] = 3
    data[15:25, 20:38] = 7
    data[26:29, 1:4] = 5
    layer = viewer.add_labels(
        data,
        name="cells [SAM everything]",
        scale=(0.5, 0.25),
        translate=(10.0, -3.0),
        metadata={META_KEY: {"role": "everything", "image": "cells"}},
    )
    rows = [
        object_row(3, data == 3, 0.91, 0.97, "everything"),
        object_row(7, data == 7, 0.875, 0.955, "box"),
        object_row(5, data == 5, 0.5, 0.66, "points"),
    ]
    set_object_table(layer, rows)
    layer.features["model"] = "micro-tiny"
    return layer


@pytest.mark.parametrize(
    ("writer", "name"), [(write_labels_tiff, "out.tif"), (write_labels_png, "out.png"), (write_labels_npy, "out.npy")]
)
def test_writer_then_reader_restores_labels_features_and_metadata(tmp_path, writer, name):
    layer = _annotated_layer(ViewerModel())
    data, meta, _ = layer.as_layer_data_tuple()
    written = writer(str(tmp_path / name), data, meta)
    assert written == [str(tmp_path / name), str(tmp_path / "out.csv"), str(tmp_path / "out.sam-micro.json")]

    reader = get_reader(str(tmp_path / name))
    assert reader is not None
    (back, kwargs, kind), = reader(str(tmp_path / name))
    assert kind == "labels"
    np.testing.assert_array_equal(back, layer.data)
    assert kwargs["name"] == "cells [SAM everything]"
    assert kwargs["metadata"] == {META_KEY: {"role": "everything", "image": "cells"}}
    assert kwargs["scale"] == [0.5, 0.25] and kwargs["translate"] == [10.0, -3.0]
    features = kwargs["features"]
    for column in (*FEATURE_COLUMNS, "model"):
        assert features[column].tolist() == layer.features[column].tolist(), column

    # the layer napari builds from it is the same layer again
    viewer = ViewerModel()
    reopened = viewer.add_labels(back, **kwargs)
    assert reopened.features["predicted_iou"].tolist() == [0.91, 0.5, 0.875]
    assert reopened.metadata[META_KEY]["role"] == "everything"


def test_viewer_open_with_the_plugin_round_trips(tmp_path):
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    try:
        manager.get_manifest("napari-sam-micro")
    except KeyError:
        pytest.skip("the package is not installed (no napari.manifest entry point)")
    viewer = ViewerModel()
    layer = _annotated_layer(viewer)
    viewer.layers.selection = {layer}
    viewer.layers.save(str(tmp_path / "saved.tif"), selected=True, plugin="napari-sam-micro")
    opened = ViewerModel().open(str(tmp_path / "saved.tif"), plugin="napari-sam-micro")
    assert len(opened) == 1 and opened[0].name == "cells [SAM everything]"
    np.testing.assert_array_equal(opened[0].data, layer.data)
    assert opened[0].features["stability_score"].tolist() == layer.features["stability_score"].tolist()


def test_foreign_files_fall_through(tmp_path):
    image = np.arange(600, dtype=np.uint16).reshape(20, 30)
    tifffile.imwrite(tmp_path / "foreign.tif", image)
    assert get_reader(str(tmp_path / "foreign.tif")) is None
    # a CSV beside it that is not ours does not make it ours
    (tmp_path / "foreign.csv").write_text("x,y,intensity\n1,2,3\n")
    assert get_reader(str(tmp_path / "foreign.tif")) is None
    # nor a JSON of the same name from another tool
    (tmp_path / "foreign.sam-micro.json").write_text(json.dumps({"format": "something else"}))
    assert get_reader(str(tmp_path / "foreign.tif")) is None
    assert get_reader(str(tmp_path / "missing.tif")) is None
    assert get_reader(str(tmp_path / "foreign.csv")) is None
    assert get_reader([str(tmp_path / "foreign.tif"), str(tmp_path / "foreign.tif")]) is None


def test_a_table_with_our_columns_is_enough(tmp_path):
    """Files saved before the layer JSON existed: recognised by the CSV's columns, named after the file."""
    labels = np.zeros((10, 10), np.uint16)
    labels[2:5, 2:5] = 1
    table = {"index": [1], "area": [9], "predicted_iou": [0.8], "stability_score": [0.9], "prompt": ["box"]}
    write_labels(tmp_path / "old.tif", labels, table=table)
    (back, kwargs, _), = get_reader(str(tmp_path / "old.tif"))(str(tmp_path / "old.tif"))
    np.testing.assert_array_equal(back, labels)
    assert kwargs["name"] == "old" and "metadata" not in kwargs
    assert kwargs["features"]["prompt"].tolist() == ["box"]


def _saved(tmp_path):
    labels = np.zeros((10, 10), np.uint16)
    labels[1:4, 1:4] = 1
    labels[6:9, 6:9] = 2
    table = {"index": [1, 2], "area": [9, 9], "predicted_iou": [0.8, 0.7], "stability_score": [0.9, 0.95]}
    write_labels(tmp_path / "a.npy", labels, table=table, layer_info={"name": "a labels", "metadata": {META_KEY: {"role": "output", "image": "a"}}})
    return labels


@pytest.mark.parametrize(
    ("csv_text", "match"),
    [
        ("index,predicted_iou\n1,0.5\n2\n", "could not be read"),  # a ragged row
        ("label,predicted_iou\n1,0.5\n", "no 'index' column"),
        ("index,predicted_iou\none,0.5\n", "whole numbers"),
        (b"\xff\xfe\x00garbage", "could not be read"),
    ],
)
def test_a_damaged_table_opens_the_labels_and_warns(tmp_path, csv_text, match):
    labels = _saved(tmp_path)
    csv_path = tmp_path / "a.csv"
    csv_path.write_bytes(csv_text if isinstance(csv_text, bytes) else csv_text.encode())
    with pytest.warns(LabelsTableWarning, match=match):
        (back, kwargs, _), = read_labels_layer(str(tmp_path / "a.npy"))
    np.testing.assert_array_equal(back, labels)
    assert "features" not in kwargs
    assert kwargs["metadata"][META_KEY]["role"] == "output"


def test_rows_of_missing_objects_are_dropped_with_a_warning(tmp_path):
    labels = _saved(tmp_path)
    labels[6:9, 6:9] = 0
    np.save(tmp_path / "a.npy", labels)  # the image replaced, the table not
    with pytest.warns(LabelsTableWarning, match=r"1 object\(s\).*ids 2"):
        (back, kwargs, _), = read_labels_layer(str(tmp_path / "a.npy"))
    assert kwargs["features"]["index"].tolist() == [1]
    assert kwargs["features"]["predicted_iou"].tolist() == [0.8]


def test_a_damaged_layer_json_still_opens_with_the_table(tmp_path):
    labels = _saved(tmp_path)
    (tmp_path / "a.sam-micro.json").write_text("{not json")
    reader = get_reader(str(tmp_path / "a.npy"))  # the CSV's columns still mark it as ours
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (back, kwargs, _), = reader(str(tmp_path / "a.npy"))
    np.testing.assert_array_equal(back, labels)
    assert kwargs["name"] == "a" and kwargs["features"]["index"].tolist() == [1, 2]


def test_scale_of_the_wrong_dimensionality_is_ignored(tmp_path):
    labels = np.ones((4, 5), np.uint8)
    write_labels(tmp_path / "b.tif", labels, layer_info={"name": "b", "scale": [1.0, 2.0, 3.0]})
    (_, kwargs, _), = read_labels_layer(str(tmp_path / "b.tif"))
    assert "scale" not in kwargs and "features" not in kwargs


def test_a_reopened_output_layer_is_adopted_by_the_annotator(tmp_path):
    """The restored metadata is what ``find_plugin_layer`` looks for: no duplicate 'SAM labels' layer."""
    from napari_sam_micro._napari.layers import ensure_plugin_layers, find_plugin_layer, image_geometry

    viewer = ViewerModel()
    image = viewer.add_image(np.zeros((20, 24), np.uint16), name="cells")
    output = ensure_plugin_layers(viewer, image, image_geometry(image)).output
    output.data[3:6, 4:9] = 1
    set_object_table(output, [object_row(1, output.data == 1, 0.8, 0.9, "box")])
    data, meta, _ = output.as_layer_data_tuple()
    write_labels_tiff(str(tmp_path / "cells_labels.tif"), data, meta)

    fresh = ViewerModel()
    image = fresh.add_image(np.zeros((20, 24), np.uint16), name="cells")
    (back, kwargs, _), = read_labels_layer(str(tmp_path / "cells_labels.tif"))
    reopened = fresh.add_labels(back, **kwargs)
    assert find_plugin_layer(fresh.layers, "output", "cells", image_geometry(image)) is reopened
    assert ensure_plugin_layers(fresh, image, image_geometry(image)).output is reopened
    assert reopened.features["predicted_iou"].tolist() == [0.8]


def test_a_table_left_from_an_earlier_save_is_not_attached(tmp_path):
    """Saving a plain layer over a plugin save replaces the JSON: the old CSV is no longer taken for its table."""
    viewer = ViewerModel()
    layer = _annotated_layer(viewer)
    data, meta, _ = layer.as_layer_data_tuple()
    write_labels_npy(str(tmp_path / "a.npy"), data, meta)
    plain = viewer.add_labels(np.asarray(layer.data), name="hand-made")  # same ids, no table
    data, meta, _ = plain.as_layer_data_tuple()
    assert write_labels_npy(str(tmp_path / "a.npy"), data, meta) == [str(tmp_path / "a.npy"), str(tmp_path / "a.sam-micro.json")]
    with pytest.warns(LabelsTableWarning, match="not the objects table"):
        (_, kwargs, _), = read_labels_layer(str(tmp_path / "a.npy"))
    assert kwargs["name"] == "hand-made" and "features" not in kwargs


def test_an_edited_table_is_attached_with_a_warning(tmp_path):
    _saved(tmp_path)
    csv_path = tmp_path / "a.csv"
    csv_path.write_text(csv_path.read_text().replace("0.8", "0.85"))
    with pytest.warns(LabelsTableWarning, match="changed after"):
        (_, kwargs, _), = read_labels_layer(str(tmp_path / "a.npy"))
    assert kwargs["features"]["predicted_iou"].tolist() == [0.85, 0.7]
