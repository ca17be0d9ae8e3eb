"""Bad files and unwritable outputs on the command line (issue 12, defects 2 and 9).

Every case must end with ``error: ...`` naming the file and exit code 2, never a traceback; the
evaluation must check ``--json`` before the run, skip (and name) a bad image instead of stopping,
and keep the results of the images already done.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from napari_sam_micro import evaluation
from napari_sam_micro.cli import main

tifffile = pytest.importorskip("tifffile")


def _pair(tmp_path):
    gt = np.zeros((20, 20), np.uint16)
    gt[2:8, 2:8] = 1
    gt[10:18, 10:18] = 2
    np.save(tmp_path / "gt.npy", gt)
    return tmp_path / "gt.npy", gt


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda gt: gt.astype(np.float32) * 0.5, r"pred\.npy is not a label image.*whole numbers"),
        (lambda gt: gt.astype(np.int32) - 1, r"pred\.npy has negative values"),
        (lambda gt: np.where(gt > 0, np.nan, 0.0), r"pred\.npy is not a label image"),
    ],
    ids=["fractional", "negative", "nan"],
)
def test_metrics_bad_label_values(tmp_path, capsys, bad, message):
    gt_path, gt = _pair(tmp_path)
    np.save(tmp_path / "pred.npy", bad(gt))
    assert main(["metrics", str(gt_path), str(tmp_path / "pred.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err)


def test_metrics_corrupt_tiff(tmp_path, capsys):
    gt_path, gt = _pair(tmp_path)
    tifffile.imwrite(tmp_path / "pred.tif", gt)
    data = (tmp_path / "pred.tif").read_bytes()
    (tmp_path / "pred.tif").write_bytes(data[: len(data) // 3])  # truncated download
    assert main(["metrics", str(gt_path), str(tmp_path / "pred.tif")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot read ") and "pred.tif" in err


def test_metrics_not_an_image_and_missing_file(tmp_path, capsys):
    gt_path, _ = _pair(tmp_path)
    (tmp_path / "notes.tif").write_text("these are my notes, not an image")
    assert main(["metrics", str(gt_path), str(tmp_path / "notes.tif")]) == 2
    assert "notes.tif" in capsys.readouterr().err
    assert main(["metrics", str(gt_path), str(tmp_path / "missing.npy")]) == 2
    assert "missing.npy does not exist" in capsys.readouterr().err


# -- evaluate ----------------------------------------------------------------------------------


def _write_set(root, names):
    """A DSB-layout set of 96 x 96 images with three bright discs each."""
    (root / "s" / "images").mkdir(parents=True)
    (root / "s" / "labels").mkdir()
    rr, cc = np.ogrid[:96, :96]
    lines = ["name,modality"]
    for i, name in enumerate(names):
        labels = np.zeros((96, 96), np.uint16)
        for k, (cy, cx) in enumerate([(24, 24), (30, 70), (70, 45)], start=1):
            labels[(rr - cy - i) ** 2 + (cc - cx) ** 2 <= (9 + k) ** 2] = k
        tifffile.imwrite(root / "s" / "images" / f"{name}.tif", (300 + 3000 * (labels > 0)).astype(np.uint16))
        tifffile.imwrite(root / "s" / "labels" / f"{name}.tif", labels)
        lines.append(f"{name},fluorescence")
    (root / "s" / "index.csv").write_text("\n".join(lines) + "\n")
    return root / "s"


def _evaluate(data, *extra):
    return main(["evaluate", "--model", "tiny-test", "--data", str(data), "--split", "all", "--prompts", "box",
                 "--baselines", "ellipse", "--no-everything", "--device", "cpu", "--quiet", *extra])


def test_unwritable_json_is_reported_before_the_run(tmp_path, capsys, monkeypatch):
    data = _write_set(tmp_path / "data", ["a"])
    monkeypatch.setattr(evaluation, "evaluate_job", lambda *a, **k: pytest.fail("the run started"))
    assert _evaluate(data, "--json", str(tmp_path / "no" / "such" / "out.json")) == 2
    assert "no/such does not exist" in capsys.readouterr().err
    assert _evaluate(data, "--json", str(tmp_path)) == 2
    assert "is a folder" in capsys.readouterr().err


def test_missing_name_column(tmp_path, capsys):
    data = _write_set(tmp_path / "data", ["a"])
    (data / "index.csv").write_text("image,modality\na,fluorescence\n")
    assert _evaluate(data) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "index.csv has no 'name' column" in err


def test_bad_images_are_skipped_named_and_the_rest_saved(tmp_path, capsys):
    pytest.importorskip("segment_anything")
    data = _write_set(tmp_path / "data", ["a_good", "b_corrupt", "c_fraction", "d_shape", "e_good"])
    raw = (data / "images" / "b_corrupt.tif").read_bytes()
    (data / "images" / "b_corrupt.tif").write_bytes(raw[:200])
    labels = tifffile.imread(data / "labels" / "c_fraction.tif").astype(np.float32)
    tifffile.imwrite(data / "labels" / "c_fraction.tif", labels * 0.5)  # 1 → 0.5 would be truncated to 0
    tifffile.imwrite(data / "labels" / "d_shape.tif", np.zeros((50, 96), np.uint16))
    out = tmp_path / "result.json"
    assert _evaluate(data, "--json", str(out)) == 2
    err = capsys.readouterr().err
    assert "error: 3 of 5 images could not be evaluated" in err and str(out) in err
    assert "images/b_corrupt.tif" in err and "labels/c_fraction.tif" in err and "labels/d_shape.tif" in err
    result = json.loads(out.read_text())
    assert result["complete"] is True
    assert result["images"] == ["s/a_good", "s/e_good"]
    assert [s["image"] for s in result["skipped"]] == ["s/b_corrupt", "s/c_fraction", "s/d_shape"]
    assert result["n_objects"] == {"fluorescence": 6}
    assert {row["image"] for row in result["per_object"]} == {"s/a_good", "s/e_good"}


def test_interrupted_run_keeps_the_images_done(tmp_path, monkeypatch):
    pytest.importorskip("segment_anything")
    data = _write_set(tmp_path / "data", ["a", "b", "c"])
    real = evaluation._score_objects
    calls = []

    def score(user, name, rec, *args):
        calls.append(rec.key)
        if rec.key == "s/b":
            raise KeyboardInterrupt  # Ctrl+C during the second image
        return real(user, name, rec, *args)

    monkeypatch.setattr(evaluation, "_score_objects", score)
    out = tmp_path / "result.json"
    with pytest.raises(KeyboardInterrupt):
        _evaluate(data, "--json", str(out))
    result = json.loads(out.read_text())
    assert result["complete"] is False and result["images"] == ["s/a"]
    assert len([r for r in result["per_object"] if r["model"] == "tiny-test"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "result.json"]  # no temporary file left
