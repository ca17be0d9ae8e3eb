"""npe2 writers for COCO and GeoJSON: through the writer functions and viewer.layers.save."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("napari")
mask_utils = pytest.importorskip("pycocotools.mask")

from napari.components import ViewerModel  # noqa: E402

from napari_sam_micro._napari.export_formats import (  # noqa: E402
    write_coco_polygons,
    write_coco_rle,
    write_geojson_annotations,
    write_geojson_detections,
)
from napari_sam_micro._napari.features import set_object_table  # noqa: E402
from napari_sam_micro._napari.layers import META_KEY  # noqa: E402
from napari_sam_micro._napari.writer import SaveRefusedError  # noqa: E402
from napari_sam_micro.core.labels import object_row  # noqa: E402


def _layer(viewer):
    data = np.zeros((30, 40), dtype=np.uint32)
    data[2:9, 3:12] = 3
    data[15:25, 20:38] = 7
    layer = viewer.add_labels(data, name="cells [SAM everything]", metadata={META_KEY: {"role": "everything", "image": "cells"}})
    set_object_table(layer, [object_row(3, data == 3, 0.91, 0.97, "seed"), object_row(7, data == 7, 0.875, 0.955, "box")])
    return layer


@pytest.mark.parametrize("writer", [write_coco_rle, write_coco_polygons])
def test_coco_writers(tmp_path, writer):
    layer = _layer(ViewerModel())
    data, meta, _ = layer.as_layer_data_tuple()
    assert writer(str(tmp_path / "cells"), data, meta) == [str(tmp_path / "cells.json")]
    coco = json.loads((tmp_path / "cells.json").read_text())
    assert coco["images"][0]["file_name"] == "cells"
    assert [(a["label_id"], a["score"], a["prompt"]) for a in coco["annotations"]] == [(3, 0.91, "seed"), (7, 0.875, "box")]
    for ann in coco["annotations"]:
        seg = ann["segmentation"]
        rle = seg if isinstance(seg, dict) else mask_utils.merge(mask_utils.frPyObjects(seg, 30, 40))
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), layer.data == ann["label_id"])


@pytest.mark.parametrize(("writer", "kind"), [(write_geojson_detections, "detection"), (write_geojson_annotations, "annotation")])
def test_geojson_writers(tmp_path, writer, kind):
    layer = _layer(ViewerModel())
    data, meta, _ = layer.as_layer_data_tuple()
    assert writer(str(tmp_path / "cells.geojson"), data, meta) == [str(tmp_path / "cells.geojson")]
    collection = json.loads((tmp_path / "cells.geojson").read_text())
    assert [f["properties"]["objectType"] for f in collection["features"]] == [kind, kind]
    assert [f["properties"]["measurements"]["predicted_iou"] for f in collection["features"]] == [0.91, 0.875]


def test_refusals_say_why(tmp_path):
    with pytest.raises(SaveRefusedError, match="whole numbers"):
        write_coco_rle(str(tmp_path / "x.json"), np.zeros((4, 4), np.float32), {})
    with pytest.raises(SaveRefusedError, match="does not exist"):
        write_geojson_detections(str(tmp_path / "missing" / "x.geojson"), np.zeros((4, 4), np.uint8), {})
    assert list(tmp_path.iterdir()) == []


def test_viewer_save_picks_the_format_from_the_extension(tmp_path):
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    try:
        manager.get_manifest("napari-sam-micro")
    except KeyError:
        pytest.skip("the package is not installed (no napari.manifest entry point)")
    viewer = ViewerModel()
    layer = _layer(viewer)
    viewer.layers.selection = {layer}
    viewer.layers.save(str(tmp_path / "cells.json"), selected=True, plugin="napari-sam-micro")
    viewer.layers.save(str(tmp_path / "cells.geojson"), selected=True, plugin="napari-sam-micro")
    assert "annotations" in json.loads((tmp_path / "cells.json").read_text())
    assert json.loads((tmp_path / "cells.geojson").read_text())["type"] == "FeatureCollection"
