"""COCO export round trips through pycocotools, the reference reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam_micro.core.coco import labels_to_coco, rle_decode, rle_encode
from napari_sam_micro.core.synthetic import synthetic_nuclei

mask_utils = pytest.importorskip("pycocotools.mask")


def _labels():
    _, labels = synthetic_nuclei(seed=0)
    labels = labels.astype(np.uint32)
    labels[0:3, 0:3] = 900  # tiny objects in the corners, a sparse large id
    labels[-2:, -2:] = 70_001
    ring = np.zeros(labels.shape, bool)
    ring[200:230, 5:35] = True
    ring[210:220, 15:25] = False  # an object with a hole
    labels[ring & (labels == 0)] = 500
    return labels


def _table(labels):
    ids = np.unique(labels)[1:]
    iou = np.linspace(0.5, 0.99, ids.size)
    iou[3] = np.nan  # a hand-painted object: no score
    return {"index": ids, "predicted_iou": iou, "stability_score": iou / 2, "prompt": ["box"] * ids.size}


def test_rle_is_pycocotools_rle():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (37, 23), (64, 64)]:
        for p in (0.0, 0.1, 0.5, 1.0):
            mask = rng.random(shape) < p
            ours = rle_encode(mask)
            ref = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert ours["counts"] == ref["counts"].decode() and ours["size"] == list(ref["size"])
            np.testing.assert_array_equal(rle_decode(ours), mask)


def test_coco_rle_decodes_to_the_labels_exactly():
    labels = _labels()
    table = _table(labels)
    coco = json.loads(json.dumps(labels_to_coco(labels, table, image_name="cells", segmentation="rle")))
    assert coco["images"] == [{"id": 1, "file_name": "cells", "width": 512, "height": 512}]
    assert coco["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    anns = coco["annotations"]
    assert [a["label_id"] for a in anns] == table["index"].tolist()
    assert len({a["id"] for a in anns}) == len(anns)
    rebuilt = np.zeros_like(labels)
    for n, ann in enumerate(anns):
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        truth = labels == ann["label_id"]
        np.testing.assert_array_equal(mask, truth)
        rebuilt[mask] = ann["label_id"]
        ys, xs = np.nonzero(truth)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]  # x, y, w, h
        assert ann["area"] == truth.sum() == int(mask_utils.area(ann["segmentation"]))
        assert ann["iscrowd"] == 0 and ann["image_id"] == 1 and ann["category_id"] == 1
        if n == 3:
            assert "score" not in ann
        else:
            assert ann["score"] == pytest.approx(table["predicted_iou"][n])
    np.testing.assert_array_equal(rebuilt, labels)


def test_coco_polygons_rasterise_back_to_the_objects():
    labels = _labels()
    coco = json.loads(json.dumps(labels_to_coco(labels, _table(labels), segmentation="polygon")))
    h, w = labels.shape
    ious = []
    for ann in coco["annotations"]:
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
        mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))).astype(bool)
        truth = labels == ann["label_id"]
        if ann["label_id"] == 500:  # polygons cannot hold holes: filled
            from scipy import ndimage as ndi

            truth = ndi.binary_fill_holes(truth)
        ious.append((mask & truth).sum() / (mask | truth).sum())
    assert min(ious) > 0.95, min(ious)


def test_pycocotools_loads_the_dataset_and_its_results(tmp_path):
    coco_module = pytest.importorskip("pycocotools.coco")
    labels = _labels()
    document = labels_to_coco(labels, _table(labels))
    path = tmp_path / "cells.json"
    path.write_text(json.dumps(document))
    dataset = coco_module.COCO(str(path))
    assert len(dataset.getAnnIds()) == np.unique(labels).size - 1
    ann = dataset.loadAnns(dataset.getAnnIds())[0]
    np.testing.assert_array_equal(dataset.annToMask(ann).astype(bool), labels == ann["label_id"])
    # the annotations with a score are also a valid detection result file for COCOeval
    results = dataset.loadRes([a for a in document["annotations"] if "score" in a])
    assert len(results.getAnnIds()) == len(document["annotations"]) - 1


def test_nd_labels_give_one_image_per_plane():
    labels = np.zeros((2, 6, 7), np.uint16)
    labels[0, 1:3, 1:3] = 4
    labels[1, 2:5, 3:6] = 4
    coco = labels_to_coco(labels)
    assert [img["id"] for img in coco["images"]] == [1, 2]
    assert [(a["image_id"], a["label_id"], a["area"]) for a in coco["annotations"]] == [(1, 4, 4), (2, 4, 9)]
    assert labels_to_coco(np.zeros((3, 3), np.uint8))["annotations"] == []


def test_negative_and_huge_ids():
    labels = np.zeros((6, 6), np.int64)
    labels[0:2, 0:2] = -3
    labels[3:6, 3:6] = 2**40
    anns = labels_to_coco(labels)["annotations"]
    assert [(a["label_id"], a["area"], a["bbox"]) for a in anns] == [(-3, 4, [0, 0, 2, 2]), (2**40, 9, [3, 3, 3, 3])]
    for ann in anns:
        np.testing.assert_array_equal(rle_decode(ann["segmentation"]), labels == ann["label_id"])
