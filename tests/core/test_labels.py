import numpy as np
import pytest

from napari_sam_micro.core.errors import UserInputError
from napari_sam_micro.core.labels import (
    OBJECT_COLUMNS,
    empty_table,
    instance_labels_from_masks,
    merge_rows,
    next_free_id,
    object_row,
    paint_indices,
    remove_rows,
)


def test_object_columns_contract():
    assert OBJECT_COLUMNS == (
        "index", "area", "predicted_iou", "stability_score", "prompt",
        "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1",
    )


def test_next_free_id():
    assert next_free_id(np.zeros((3, 3), np.uint8)) == 1
    assert next_free_id(np.zeros((0, 3), np.uint8)) == 1
    lab = np.zeros((4, 4), np.uint16)
    lab[1, 1] = 7
    lab[2, 2] = 3
    assert next_free_id(lab) == 8
    full = np.full((2, 2), 255, np.uint8)
    with pytest.raises(UserInputError, match="uint8"):
        next_free_id(full)


def test_paint_indices_2d_keeps_existing_objects():
    labels = np.zeros((6, 6), np.uint16)
    labels[0:3, 0:3] = 4
    mask = np.zeros((6, 6), bool)
    mask[2:5, 2:5] = True
    idx = paint_indices(labels, mask)
    assert len(idx) == 2
    out = labels.copy()
    out[idx] = 9
    assert out[2, 2] == 4  # existing object kept
    assert np.count_nonzero(out == 9) == 9 - 1
    assert np.all(out[mask & (labels == 0)] == 9)
    idx = paint_indices(labels, mask, overwrite=True)
    out = labels.copy()
    out[idx] = 9
    assert np.count_nonzero(out == 9) == 9 and np.count_nonzero(out == 4) == 8


def test_paint_indices_nd_plane():
    labels = np.zeros((2, 3, 5, 5), np.uint32)
    labels[1, 2, 0, 0] = 1
    mask = np.zeros((5, 5), bool)
    mask[0, :2] = True
    idx = paint_indices(labels, mask, leading=(1, 2))
    assert len(idx) == 4 and all(a.dtype == np.intp for a in idx)
    out = labels.copy()
    out[idx] = 5
    assert out[1, 2, 0, 1] == 5 and out[1, 2, 0, 0] == 1
    assert np.count_nonzero(out == 5) == 1  # no other plane touched
    with pytest.raises(ValueError):
        paint_indices(labels, mask)
    with pytest.raises(ValueError):
        paint_indices(labels, mask[:4], leading=(0, 0))


def test_object_row():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    row = object_row(3, mask, 0.91, 0.8, "box")
    assert tuple(row) == OBJECT_COLUMNS
    assert row["index"] == 3 and row["area"] == 18 and row["prompt"] == "box"
    assert (row["bbox_y0"], row["bbox_x0"], row["bbox_y1"], row["bbox_x1"]) == (2, 3, 5, 9)
    assert row["predicted_iou"] == pytest.approx(0.91)
    empty = object_row(4, np.zeros((3, 3), bool))
    assert empty["area"] == 0 and empty["bbox_y0"] == -1 and np.isnan(empty["predicted_iou"])


def test_merge_and_remove_rows():
    m = np.ones((2, 2), bool)
    t0 = empty_table()
    t1 = merge_rows(t0, [object_row(1, m, 0.5, 0.5, "points"), object_row(2, m, 0.6, 0.6, "box")])
    assert t0["index"] == []  # input unchanged
    assert t1["index"] == [1, 2]
    t2 = merge_rows(t1, [object_row(1, m[:1], 0.9, 0.9, "box+points"), {"index": 5, "area": 1, "note": "x"}])
    assert t2["index"] == [1, 2, 5]
    assert t2["predicted_iou"] == [0.9, 0.6, None]
    assert t2["area"] == [2, 4, 1]
    assert t2["note"] == [None, None, "x"]
    assert list(t2)[: len(OBJECT_COLUMNS)] == list(OBJECT_COLUMNS)
    assert t1["predicted_iou"] == [0.5, 0.6]
    t3 = remove_rows(t2, [2])
    assert t3["index"] == [1, 5] and t3["note"] == [None, "x"]


def test_instance_labels_from_masks_higher_score_wins():
    a = np.zeros((6, 6), bool)
    a[0:4, 0:4] = True
    b = np.zeros((6, 6), bool)
    b[2:6, 2:6] = True
    c = np.zeros((6, 6), bool)
    c[3, 3] = True  # fully covered by the better mask b
    labels, kept = instance_labels_from_masks(np.stack([a, b, c]), [0.5, 0.9, 0.1], (6, 6))
    assert labels.dtype == np.uint32
    assert labels[2, 2] == 2 and labels[0, 0] == 1 and labels[5, 5] == 2
    assert np.count_nonzero(labels == 1) == 16 - 4
    np.testing.assert_array_equal(kept, [1, 2])
    labels, kept = instance_labels_from_masks([], [], (3, 3))
    assert not labels.any() and kept.size == 0
    with pytest.raises(ValueError):
        instance_labels_from_masks([a], [0.1, 0.2], (6, 6))
