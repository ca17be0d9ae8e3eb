"""Refining degraded DSB labels with the shipped model raises their mean IoU (held-out images)."""

from __future__ import annotations

import pytest

from napari_sam_micro.core.progress import drain


def _synthetic_set(root):
    """One 96 x 96 image with three bright discs, two of them touching, in the shared-data layout."""
    import csv

    import numpy as np
    import tifffile

    folder = root / "synthetic"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rr, cc = np.mgrid[:96, :96]
    labels = np.zeros((96, 96), np.uint16)
    for k, (cy, cx, r) in enumerate([(24, 24, 10), (60, 40, 12), (60, 64, 12)], start=1):
        labels[((rr - cy) ** 2 + (cc - cx) ** 2 <= r * r) & (labels == 0)] = k
    image = (300 + 3000 * (labels > 0)).astype(np.uint16)
    tifffile.imwrite(folder / "images" / "img0.tif", image)
    tifffile.imwrite(folder / "labels" / "img0.tif", labels)
    with (folder / "index.csv").open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["name", "modality", "height", "width", "channels", "dtype", "instances"])
        w.writerow(["img0", "fluorescence", 96, 96, 1, "uint16", 3])
    return folder


def test_refine_report_on_synthetic_set_runs_every_degradation(tmp_path, disk_test_model):
    from napari_sam_micro.evaluation import read_index
    from napari_sam_micro.models.registry import get_spec, load_model
    from napari_sam_micro.refine_eval import format_refine_table, refine_report_job
    records = read_index(_synthetic_set(tmp_path))
    result = drain(refine_report_job(load_model("disk-test"), get_spec("disk-test"), records, strategies=("box", "box+mask")))
    assert set(result["before"]) == {"none", "erode", "dilate", "merge"}
    assert result["before"]["none"] == 1.0 and result["before"]["erode"] < 1.0 and result["before"]["merge"] < 1.0
    assert result["images"] == 1 and result["objects"] > 0
    table = format_refine_table(result)
    assert "after (box+mask)" in table and "| erode |" in table


def _instances(record) -> int:
    import numpy as np
    import tifffile

    return len(np.unique(tifffile.imread(record.labels_path))) - 1


def test_refining_eroded_dsb_labels_raises_mean_iou(shared_data):
    """The first held-out DSB fluorescence image with 10-16 nuclei, each eroded by a quarter of its radius.

    Bar: +0.10 mean best-match IoU with the default prompt (box + interior click). Measured on this
    image (2817299fd3b88670, 16 nuclei, 2026-12-03): 0.621 before, 0.908 after; on the first
    held-out image (27 nuclei) 0.571 before, 0.78-0.80 after (docs/models.md). A refinement that
    misplaces masks or ignores the objects gains nothing, so a third of the gain measured here
    separates working from broken. One small image keeps the test near half a minute on a 2-core
    CPU; the report over more images and degradations is in docs/models.md.
    """
    from napari_sam_micro.evaluation import select_records
    from napari_sam_micro.models.registry import available_models, get_spec, load_model
    from napari_sam_micro.core.refine import DEFAULT_STRATEGY
    from napari_sam_micro.refine_eval import refine_report_job

    if "micro-tiny" not in available_models():
        pytest.skip("micro-tiny weights are not shipped in this checkout")
    records = [r for r in select_records(shared_data, "val", modalities=["fluorescence"])
               if r.dataset.startswith("dsb") and 10 <= _instances(r) <= 16][:1]
    if not records:
        pytest.skip("the DSB validation images are not in ../shared/data")
    result = drain(refine_report_job(load_model("micro-tiny"), get_spec("micro-tiny"), records, degradations=("erode",)))
    print(records[0].name, result["before"]["erode"], result["after"][DEFAULT_STRATEGY]["erode"])
    assert result["after"][DEFAULT_STRATEGY]["erode"] >= result["before"]["erode"] + 0.10, result
