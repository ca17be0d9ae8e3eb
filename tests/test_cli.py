"""The napari-sam-micro command line: metrics and evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_sam_micro.cli import build_parser, main


def _labels():
    gt = np.zeros((40, 40), np.uint16)
    gt[2:12, 2:12] = 1
    gt[20:30, 20:35] = 2
    gt[32:38, 2:8] = 3
    pred = np.zeros_like(gt)
    pred[2:12, 2:13] = 5  # IoU 10/11 with object 1
    pred[20:30, 20:26] = 7  # IoU 6/15 with object 2: a miss at 0.5
    return gt, pred


def test_metrics_json(tmp_path, capsys):
    import tifffile

    gt, pred = _labels()
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    np.save(tmp_path / "pred.npy", pred)
    assert main(["metrics", str(tmp_path / "gt.tif"), str(tmp_path / "pred.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n_gt"], out["n_pred"], out["tp"], out["fp"], out["fn"]) == (3, 2, 1, 1, 2)
    assert out["f1"] == pytest.approx(2 / 5)
    assert out["per_object_iou"] == {"1": pytest.approx(10 / 11)}


def test_metrics_text_and_shape_mismatch(tmp_path, capsys):
    gt, pred = _labels()
    np.save(tmp_path / "gt.npy", gt)
    np.save(tmp_path / "pred.npy", pred)
    np.save(tmp_path / "small.npy", pred[:10])
    assert main(["metrics", str(tmp_path / "gt.npy"), str(tmp_path / "pred.npy")]) == 0
    assert "F1 0.400" in capsys.readouterr().out
    assert main(["metrics", str(tmp_path / "gt.npy"), str(tmp_path / "small.npy")]) == 2
    assert "differ in shape" in capsys.readouterr().err


def _write_set(root, n_images):
    """Shared-data layout: bright discs (3 per image) on a dark uint16 background."""
    import tifffile

    (root / "s" / "images").mkdir(parents=True)
    (root / "s" / "labels").mkdir()
    rr, cc = np.ogrid[:96, :96]
    lines = ["name,modality,height,width,channels,dtype,instances"]
    for i in range(n_images):
        labels = np.zeros((96, 96), np.uint16)
        for k, (cy, cx) in enumerate([(24, 24), (30, 70), (70, 45)], start=1):
            labels[(rr - cy - i) ** 2 + (cc - cx) ** 2 <= (9 + k) ** 2] = k
        tifffile.imwrite(root / "s" / "images" / f"im{i}.tif", (300 + 3000 * (labels > 0)).astype(np.uint16))
        tifffile.imwrite(root / "s" / "labels" / f"im{i}.tif", labels)
        lines.append(f"im{i},fluorescence,96,96,1,uint16,3")
    (root / "s" / "index.csv").write_text("\n".join(lines) + "\n")


def test_evaluate_prints_table_progress_and_json(tmp_path, capsys):
    pytest.importorskip("segment_anything")
    _write_set(tmp_path / "data", 2)
    out_json = tmp_path / "result.json"
    code = main(["evaluate", "--model", "tiny-test", "--data", str(tmp_path / "data"), "--split", "all",
                 "--prompts", "box,box+clicks", "--clicks", "1", "--baselines", "ellipse", "--no-everything",
                 "--device", "cpu", "--json", str(out_json)])
    assert code == 0
    captured = capsys.readouterr()
    assert "tiny-test" in captured.out and "ellipse" in captured.out and "box+clicks" in captured.out
    assert "[" in captured.err and "/2" in captured.err  # progress bar on stderr
    result = json.loads(out_json.read_text())
    assert result["n_objects"] == {"fluorescence": 6}
    assert set(result["iou"]["tiny-test"]) == {"box", "box+clicks"}


def test_evaluate_missing_data_is_a_clean_error(tmp_path, capsys):
    assert main(["evaluate", "--model", "tiny-test", "--data", str(tmp_path / "none"), "--quiet"]) == 2
    assert "No data set found" in capsys.readouterr().err


def test_parser_defaults():
    args = build_parser().parse_args(["evaluate", "--data", "d"])
    assert args.split == "val" and args.clicks == 3 and args.everything is True and args.model is None
    assert args.checkpoint is None
    assert build_parser().parse_args(["evaluate", "--data", "d", "--checkpoint", "w.npz"]).checkpoint == "w.npz"


def test_fewer_windows_reaches_segment_and_evaluate(tmp_path, disk_test_model):
    from napari_sam_micro.cli import _segment_settings

    parser = build_parser()
    for flag, want in (([], False), (["--fewer-windows"], True)):
        args = parser.parse_args(["segment", str(tmp_path), "--out", str(tmp_path / "o"), *flag])
        assert _segment_settings(args).options.fewer_windows is want
    _write_set(tmp_path / "data", 1)
    out_json = tmp_path / "result.json"
    code = main(["evaluate", "--model", "disk-test", "--data", str(tmp_path / "data"), "--split", "all", "--prompts", "box",
                 "--baselines", "", "--fewer-windows", "--device", "cpu", "--json", str(out_json), "--quiet"])
    assert code == 0
    result = json.loads(out_json.read_text())
    assert result["settings"]["fewer_windows"] is True
    assert len(result["everything"]) == 1 and result["everything"][0]["tp"] >= 2  # the seeds mode ran and found discs
