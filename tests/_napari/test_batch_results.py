"""Opening `segment` outputs in napari (labels + objects table as features)."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402

from napari_sam_micro._napari.batch_results import RESULT_SUFFIX, batch_result_layers, open_batch_results  # noqa: E402
from napari_sam_micro.core.errors import UserInputError  # noqa: E402
from napari_sam_micro.core.export import write_labels  # noqa: E402


def test_open_a_folder_of_results(tmp_path):
    labels = np.zeros((20, 30), np.uint16)
    labels[2:5, 3:9] = 1
    labels[10:15, 10:12] = 2
    table = {"index": [1, 2], "area": [18, 10], "predicted_iou": [0.9, 0.7], "model": ["micro-tiny"] * 2}
    write_labels(tmp_path / "field1_labels.tif", labels, table)
    zarr = pytest.importorskip("zarr")
    root = zarr.open_group(str(tmp_path / "scan_labels.ome.zarr"), mode="w")
    root.create_array("0", data=labels[None].astype(np.uint32), chunks=(1, 10, 10))
    (tmp_path / "notes.txt").write_text("not a result")

    viewer = ViewerModel()
    added = open_batch_results(viewer, tmp_path)
    assert [layer.name for layer in added] == ["field1" + RESULT_SUFFIX, "scan" + RESULT_SUFFIX]
    np.testing.assert_array_equal(np.asarray(added[0].data), labels)
    assert added[0].features["index"].tolist() == [1, 2]
    assert added[0].features["predicted_iou"].tolist() == [0.9, 0.7]
    assert added[1].data.shape == (1, 20, 30) and added[1].features.empty  # no CSV: no table
    # one file alone
    (data, kwargs, kind), = batch_result_layers(tmp_path / "field1_labels.tif")
    assert kind == "labels" and kwargs["name"] == "field1" + RESULT_SUFFIX


def test_folder_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="no results"):
        batch_result_layers(tmp_path)
