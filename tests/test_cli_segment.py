"""``napari-sam-micro segment``: folders, stacks, OME-Zarr, a corrupt file, resume, Dask workers."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sam_micro.batch import BatchSettings, discover_inputs, output_paths
from napari_sam_micro.cli import main
from napari_sam_micro.core.export import read_table
from napari_sam_micro.core.progress import drain
from napari_sam_micro.scaleout import run_batch_job

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import DiskModel  # noqa: E402
from test_tiling import disk_plane  # noqa: E402


def _folder(root: Path) -> Path:
    """Two good images (one a two-page stack) and a corrupt TIFF."""
    src = root / "images"
    src.mkdir()
    a, _ = disk_plane((96, 96), n=3, radius=8, seed=1)
    b, _ = disk_plane((96, 96), n=2, radius=8, seed=2)
    tifffile.imwrite(src / "a.tif", a)
    tifffile.imwrite(src / "b.tif", np.stack([a, b]))
    (src / "broken.tif").write_bytes(b"this is not a TIFF file" * 20)
    return src


def test_segment_folder_with_a_corrupt_file_then_resume(tmp_path, disk_test_model, capsys):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    summary = tmp_path / "summary.json"
    rc = main(["segment", str(src), "--out", str(out), "--model", "disk-test", "--json", str(summary), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "error:" in err and "broken.tif" in err
    result = json.loads(summary.read_text())
    assert (result["done"], result["skipped"], result["failed"]) == (2, 0, 1)

    labels_a = tifffile.imread(out / "a_labels.tif")
    assert labels_a.shape == (96, 96) and len(np.unique(labels_a)) == 4
    table_a = read_table(out / "a_labels.csv")
    assert list(table_a["index"]) == [1, 2, 3]
    assert set(table_a["model"]) == {"disk-test"} and "model_sha256" in table_a
    assert list(table_a["area"]) == [int(np.count_nonzero(labels_a == i)) for i in (1, 2, 3)]
    for col in ("predicted_iou", "stability_score", "prompt", "bbox_y0", "bbox_x1"):
        assert col in table_a

    stack = tifffile.imread(out / "b_labels.tif")
    table_b = read_table(out / "b_labels.csv")
    assert stack.shape == (2, 96, 96)
    assert list(table_b["index"]) == [1, 2, 3, 4, 5]  # ids unique over the stack's planes
    assert [int(p) for p in table_b[[c for c in table_b if c.startswith("plane_")][0]]] == [0, 0, 0, 1, 1]
    assert set(np.unique(stack[1])) == {0, 4, 5}

    mtime = (out / "a_labels.tif").stat().st_mtime_ns
    rc = main(["segment", str(src), "--out", str(out), "--model", "disk-test", "--json", str(summary), "--quiet"])
    assert rc == 2 and "broken.tif" in capsys.readouterr().err
    result = json.loads(summary.read_text())
    assert (result["done"], result["skipped"], result["failed"]) == (0, 2, 1)
    assert (out / "a_labels.tif").stat().st_mtime_ns == mtime
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_inputs_globs_and_missing(tmp_path):
    src = _folder(tmp_path)
    paths, problems = discover_inputs([str(src / "*.tif"), str(src / "a.tif"), str(tmp_path / "nope.tif"), str(tmp_path / "x*.png")])
    assert [p.name for p in paths] == ["a.tif", "b.tif", "broken.tif"]
    assert [msg for _, msg in problems] == ["no such file or folder", "no image matches this pattern"]


def test_ome_zarr_in_ome_zarr_labels_out(tmp_path, disk_test_model):
    zarr = pytest.importorskip("zarr")
    img, _ = disk_plane((96, 96), n=3, radius=8, seed=4)
    root = zarr.open_group(str(tmp_path / "field.ome.zarr"), mode="w")
    root.create_array("0", data=img[None], chunks=(1, 64, 64))
    root.create_array("1", data=img[None, ::2, ::2], chunks=(1, 48, 48))
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [{"path": "0"}, {"path": "1"}]}]}
    settings = BatchSettings("disk-test")
    summary = drain(run_batch_job([str(tmp_path / "field.ome.zarr")], tmp_path / "out", settings))
    assert summary["done"] == 1, summary
    labels_path, table_path = output_paths(tmp_path / "field.ome.zarr", tmp_path / "out")
    assert labels_path.name == "field_labels.ome.zarr" and table_path.name == "field_labels.csv"
    out = zarr.open_group(str(labels_path), mode="r")
    assert "image-label" in out.attrs["ome"] and out.attrs["ome"]["multiscales"][0]["axes"] == axes
    labels = np.asarray(out["0"])
    assert labels.shape == (1, 96, 96) and len(np.unique(labels)) == 4  # the full-resolution level


def test_large_plane_is_tiled_and_written_tile_by_tile(tmp_path, disk_test_model):
    pytest.importorskip("zarr")
    img, centres = disk_plane((200, 170), n=8, radius=8, seed=5)
    tifffile.imwrite(tmp_path / "big.tif", img)
    rc = main(["segment", str(tmp_path / "big.tif"), "--out", str(tmp_path / "out"), "--model", "disk-test",
               "--tile", "64", "--halo", "24", "--quiet"])
    assert rc == 0
    labels = tifffile.imread(tmp_path / "out" / "big_labels.tif")
    table = read_table(tmp_path / "out" / "big_labels.csv")
    assert labels.shape == (200, 170) and labels.dtype == np.uint32
    assert len(table["index"]) == len(centres) == len(np.unique(labels)) - 1
    for cy, cx in centres:  # each disk is one object
        assert labels[int(cy), int(cx)] > 0


def test_cli_rejects_bad_settings(tmp_path, capsys):
    assert main(["segment", str(tmp_path), "--out", str(tmp_path / "o"), "--tile", "32"]) == 2
    assert "--tile" in capsys.readouterr().err


def _register_disk_test():
    """Run in each Dask worker: the test-only scripted model in that process's registry."""
    from napari_sam_micro.models import registry

    spec = registry.get_spec("tiny-test")
    registry.register(dataclasses.replace(spec, name="disk-test", display_name="disk-test",
                                          builder=lambda checkpoint, device: DiskModel(radius=12)), replace=True)


@pytest.mark.slow
def test_two_worker_local_cluster_gives_identical_outputs(tmp_path, disk_test_model):
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    src = _folder(tmp_path)
    big, _ = disk_plane((200, 170), n=8, radius=8, seed=5)
    tifffile.imwrite(src / "big.tif", big)  # larger than the tile: its tiles are tasks
    settings = BatchSettings("disk-test", tile=100, halo=24)
    local = drain(run_batch_job([str(src)], tmp_path / "local", settings))
    # the scripted model lives in the tests: send it to the workers by value
    cloudpickle.register_pickle_by_value(sys.modules[DiskModel.__module__])
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            client.run(_register_disk_test)
            remote = drain(run_batch_job([str(src)], tmp_path / "remote", settings, scheduler=cluster.scheduler_address))
    assert (remote["done"], remote["failed"]) == (local["done"], local["failed"]) == (3, 1)
    assert [r["status"] for r in remote["images"]] == [r["status"] for r in local["images"]]
    assert len(np.unique(tifffile.imread(tmp_path / "remote" / "big_labels.tif"))) == 9
    assert [r.get("tile_tasks") for r in remote["images"]] == [False, False, True, None]  # a, b, big, broken
    for name in ("a_labels.tif", "b_labels.tif", "big_labels.tif"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "remote" / name), tifffile.imread(tmp_path / "local" / name))
        assert (tmp_path / "remote" / name.replace(".tif", ".csv")).read_text() == (tmp_path / "local" / name.replace(".tif", ".csv")).read_text()


def _encoder_threads() -> int:
    from napari_sam_micro.models.onnx_encoder import physical_cores

    return physical_cores()


def test_encoder_threads_honour_the_thread_budget(monkeypatch):
    """A worker's thread budget (``NAPARI_SAM_MICRO_THREADS``) caps the runtimes' intra-op threads;
    ``OMP_NUM_THREADS`` (which Dask's nanny writes into the client process) does not."""
    from napari_sam_micro.models.onnx_encoder import THREADS_ENV, physical_cores

    monkeypatch.delenv(THREADS_ENV, raising=False)
    cores = physical_cores()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert physical_cores() == cores
    monkeypatch.setenv(THREADS_ENV, "1")
    assert physical_cores() == 1
    monkeypatch.setenv(THREADS_ENV, str(cores + 8))
    assert physical_cores() == cores
    monkeypatch.setenv(THREADS_ENV, "not a number")
    assert physical_cores() == cores


@pytest.mark.slow
def test_local_cluster_threads_follow_the_cores(monkeypatch):
    distributed = pytest.importorskip("distributed")
    import os

    from napari_sam_micro import scaleout

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    cluster = scaleout._local_cluster(2)
    try:
        with distributed.Client(cluster) as client:
            # one task at a time per worker; its encoder gets the worker's share of the cores
            assert sorted(client.nthreads().values()) == [1, 1]
            assert set(client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()) == {"2"}
            monkeypatch.delenv("NAPARI_SAM_MICRO_THREADS", raising=False)
            assert set(client.run(_encoder_threads).values()) == {min(2, _encoder_threads())}
    finally:
        cluster.close()


def test_segment_from_a_csv_of_boxes_and_points(tmp_path, disk_test_model, capsys):
    """Prompted mode: one object per CSV object, in file order, painted without overwriting; per-image rows."""
    src = tmp_path / "images"
    src.mkdir()
    img, centres = disk_plane((96, 96), n=3, radius=8, seed=1)
    tifffile.imwrite(src / "a.tif", img)
    tifffile.imwrite(src / "b.tif", img)
    tifffile.imwrite(src / "stack.tif", np.stack([img, img]))
    (r0, c0), (r1, c1), _ = centres
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(
        "image,object,x0,y0,x1,y1,x,y,label\n"
        f"a.tif,first,{c0 - 9},{r0 - 9},{c0 + 9},{r0 + 9},,,\n"
        f"a,second,,,,,{c1},{r1},1\n"
        f"b.tif,only,{c1 - 9},{r1 - 9},{c1 + 9},{r1 + 9},,,\n"
    )
    out = tmp_path / "out"
    rc = main(["segment", str(src), "--out", str(out), "--model", "disk-test", "--prompts", str(prompts), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "stack.tif" in err and "one 2D plane" in err  # the stack is refused, the others done
    labels = tifffile.imread(out / "a_labels.tif")
    table = read_table(out / "a_labels.csv")
    assert list(table["index"]) == [1, 2] and list(table["prompt"]) == ["box", "points"]
    assert labels[int(r0), int(c0)] == 1 and labels[int(r1), int(c1)] == 2
    assert set(np.unique(tifffile.imread(out / "b_labels.tif"))) == {0, 1}
    assert list(read_table(out / "b_labels.csv")["prompt"]) == ["box"]


def test_segment_prompts_errors_are_reported(tmp_path, disk_test_model, capsys):
    src = tmp_path / "images"
    src.mkdir()
    img, _ = disk_plane((64, 64), n=1, radius=6, seed=3)
    tifffile.imwrite(src / "a.tif", img)
    bad = tmp_path / "bad.csv"
    bad.write_text("x0,y0\n1,2\n")
    assert main(["segment", str(src), "--out", str(tmp_path / "o1"), "--model", "disk-test", "--prompts", str(bad), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err
    outside = tmp_path / "outside.csv"
    outside.write_text("object,x,y\nfar,500,10\n")
    assert main(["segment", str(src), "--out", str(tmp_path / "o2"), "--model", "disk-test", "--prompts", str(outside), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "a.tif" in err and "far" in err
    other = tmp_path / "other.csv"
    other.write_text("image,x,y\nzzz.tif,5,5\n")
    assert main(["segment", str(src), "--out", str(tmp_path / "o3"), "--model", "disk-test", "--prompts", str(other), "--quiet"]) == 2
    assert "names no box or point for a.tif" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.data
def test_segment_geojson_boxes_of_dsb_nuclei_with_micro_tiny(tmp_path, shared_data, capsys):
    """QuPath-style GeoJSON rectangles around ground-truth nuclei give those nuclei (micro-tiny, CPU)."""
    from napari_sam_micro.core.masks import mask_to_box_xyxy
    from napari_sam_micro.core.metrics import instance_scores

    name = "00071198d059ba7f"
    root = shared_data / "dsb2018-train"
    truth = tifffile.imread(root / "labels" / f"{name}.tif")
    ids = [i for i in np.unique(truth) if i][:8]
    features = []
    for i in ids:
        x0, y0, x1, y1 = (float(v) for v in mask_to_box_xyxy(truth == i))
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}})
    prompts = tmp_path / "boxes.geojson"
    prompts.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    src = tmp_path / "in"
    src.mkdir()
    (src / f"{name}.tif").write_bytes((root / "images" / f"{name}.tif").read_bytes())
    out = tmp_path / "out"
    assert main(["segment", str(src), "--out", str(out), "--device", "cpu", "--prompts", str(prompts), "--quiet"]) == 0
    labels = tifffile.imread(out / f"{name}_labels.tif")
    table = read_table(out / f"{name}_labels.csv")
    assert len(table["index"]) == len(ids) and set(table["prompt"]) == {"box"}
    reference = np.where(np.isin(truth, ids), truth, 0)
    scores = instance_scores(reference, labels)
    assert scores["f1"] >= 0.9 and scores["mean_matched_iou"] > 0.75, scores


@pytest.mark.slow
def test_a_cluster_run_leaves_this_process_thread_budget_alone(tmp_path, disk_test_model, monkeypatch):
    """Starting the workers must not leave OMP_NUM_THREADS=1 here: models loaded afterwards keep their threads."""
    pytest.importorskip("distributed")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    src = _folder(tmp_path)
    settings = BatchSettings("disk-test")
    drain(run_batch_job([str(src / "a.tif")], tmp_path / "out", settings, workers=1))
    assert "OMP_NUM_THREADS" not in os.environ
