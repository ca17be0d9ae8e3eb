"""Batch throughput and the memory of tiled large planes (issue 14).

Four measurements, each with its reference measured in the same run:

1. **Images per minute** of ``segment`` (:func:`napari_sam_micro.scaleout.run_batch_job`) on
   ``--images`` small fluorescence DSB images: here (no cluster), on a Dask ``LocalCluster`` of one
   worker process and of two; the time includes starting the cluster and loading the model in
   each worker, as a user's run does. Ratio: 2 workers / 1 worker.
2. **Tiles per second** of :func:`napari_sam_micro.tiling.tiled_everything_job` on a mosaic of
   ``--mosaic`` x ``--mosaic`` DSB images (256 px each) with 256-px tiles and a 64-px halo, and the
   untiled everything mode on the same mosaic (ratio tiled / untiled time).
3. **Annotating a lazy plane** of ``--lazy-side``² (``annotate``): one box and one click through
   :class:`~napari_sam_micro.session.AnnotationSession` with ``--model`` in a fresh process; peak
   RSS against the RSS after loading the model, seconds, and the chunks read of the plane's.
4. **Peak RSS** of segmenting a lazy ``--lazy-side`` x ``--lazy-side`` uint16 dask plane (three
   objects in each 2048-px chunk of the diagonal, the rest constant, so those tiles are skipped;
   2048-px tiles) in a fresh process with a scripted stand-in model
   (:class:`bench_memory._DiskStandIn`: no weights), against the plane's and its labels' size as
   numpy arrays.

On a shared machine the numbers are indicative only. Usage::

    python benchmarks/bench_batch.py --data ../shared/data [--model micro-tiny] [--images 4]
        [--mosaic 3] [--lazy-side 20480] [--skip images,tiles,memory,annotate]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _fluorescence(data: Path, n: int) -> list[Path]:
    root = data / "dsb2018-train"
    with open(root / "index.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["modality"] == "fluorescence" and r["height"] == r["width"] == "256" and r["channels"] == "1"]
    return [root / "images" / f"{r['name']}.tif" for r in rows[:n]]


def bench_images(files: list[Path], model: str) -> dict:
    from napari_sam_micro.batch import BatchSettings
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.scaleout import run_batch_job

    settings = BatchSettings(model, device="cpu")
    out = {}
    for label, workers in (("here", 0), ("1 worker", 1), ("2 workers", 2)):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = drain(run_batch_job([str(f) for f in files], tmp, settings, workers=workers))
            dt = time.perf_counter() - t0
        assert summary["done"] == len(files), summary
        out[label] = {"seconds": round(dt, 1), "images_per_minute": round(60 * len(files) / dt, 2)}
        print(f"{label:>10}: {len(files)} images in {dt:.1f} s = {60 * len(files) / dt:.2f} images/min", flush=True)
    out["ratio_2_vs_1"] = round(out["2 workers"]["images_per_minute"] / out["1 worker"]["images_per_minute"], 2)
    print(f"2 workers / 1 worker: {out['ratio_2_vs_1']:.2f} x", flush=True)
    return out


def bench_tiles(files: list[Path], model_name: str, n_side: int) -> dict:
    import tifffile

    from napari_sam_micro.core.metrics import instance_scores
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.models import registry
    from napari_sam_micro.segmentation import everything_job
    from napari_sam_micro.tiling import tiled_everything_job

    tiles = [tifffile.imread(f) for f in files[: n_side * n_side]]
    mosaic = np.block([[tiles[i * n_side + j] for j in range(n_side)] for i in range(n_side)])
    spec, model = registry.get_spec(model_name), registry.load_model(model_name, device="cpu")
    t0 = time.perf_counter()
    whole = drain(everything_job(model, mosaic, spec)).labels
    t_whole = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = drain(tiled_everything_job(model, mosaic, spec, tile=256, halo=64))
    t_tiled = time.perf_counter() - t0
    f1 = instance_scores(whole, np.asarray(res.labels))["f1"]
    out = {"mosaic": list(mosaic.shape), "tiles": res.tiles, "tiles_per_second": round(res.tiles / t_tiled, 3),
           "tiled_seconds": round(t_tiled, 1), "untiled_seconds": round(t_whole, 1),
           "ratio_tiled_vs_untiled": round(t_tiled / t_whole, 2), "f1_tiled_vs_untiled": round(float(f1), 4)}
    print(f"tiles: {out}", flush=True)
    return out


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    import dask.array as da
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from bench_memory import _DiskStandIn
    import dataclasses
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.models import registry
    from napari_sam_micro.tiling import tiled_everything_job

    side = int(sys.argv[2])
    def block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        out = np.full((y1 - y0, x1 - x0), 100, np.uint16)
        if y0 == x0:  # objects in the diagonal's chunks: those tiles run the model, the rest are blank
            yy, xx = np.indices(out.shape)
            for cy, cx in ((100, 100), (300, 200), (500, 700)):
                out[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = 1000
        return out
    n = side // 2048
    plane = da.map_blocks(block, chunks=((2048,) * n, (2048,) * n), dtype=np.uint16)
    spec = dataclasses.replace(registry.get_spec("tiny-test"), name="disk-bench")
    t0 = time.perf_counter()
    res = drain(tiled_everything_job(_DiskStandIn(12), plane, spec, tile=2048, halo=64))
    dt = time.perf_counter() - t0
    try:  # VmHWM: this process's own peak (ru_maxrss is kept across execve on Linux)
        with open("/proc/self/status") as status:
            peak = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": round(peak), "objects": len(res.table["index"]), "tiles": res.tiles,
                      "seconds": round(dt, 1)}))
    """
)


def bench_memory(side: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "lazy.py"
        script.write_text(MEMORY_SCRIPT)
        run = subprocess.run([sys.executable, str(script), str(HERE), str(side)], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr[-3000:])
    out = json.loads(run.stdout.strip().splitlines()[-1])
    out.update(side=side, plane_mib=round(side * side * 2 / 2**20), labels_mib=round(side * side * 4 / 2**20))
    out["ratio_peak_vs_plane"] = round(out["peak_rss_mib"] / out["plane_mib"], 3)
    print(f"memory: {out}", flush=True)
    return out


ANNOTATE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import dask.array as da
    import numpy as np
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.core.prompts import Prompts
    from napari_sam_micro.models.registry import get_spec, load_model
    from napari_sam_micro.session import AnnotationSession

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(key)) / 1024

    side, name = int(sys.argv[1]), sys.argv[2]
    # every 1024-px chunk is one noisy field of radius-12 nuclei on a 150-px grid (made once, copied:
    # the chunks cost the plugin's reads, not the generator's time)
    template = np.random.default_rng(0).normal(100, 5, (1024, 1024)).astype(np.uint16)
    yy, xx = np.mgrid[:1024, :1024]
    for cy in range(60, 1024, 150):
        for cx in range(60, 1024, 150):
            template[(yy - cy) ** 2 + (xx - cx) ** 2 <= 144] = 1000
    reads = []
    def block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        reads.append((y0, x0))
        return template[: y1 - y0, : x1 - x0].copy()
    n = side // 1024
    plane = da.map_blocks(block, chunks=((1024,) * n, (1024,) * n), dtype=np.uint16)
    spec = get_spec(name)
    model = load_model(name, device="cpu")
    base = status("VmRSS:")
    session = AnnotationSession(model, model_id=spec.embedding_id, **AnnotationSession.options_for(spec))
    t0 = time.perf_counter(); session.set_image(plane); t_set = time.perf_counter() - t0
    cy, cx = 1024 * (n // 2) + 60 + 150 * 3, 1024 * (n // 2) + 60 + 150 * 2
    t0 = time.perf_counter()
    box = drain(session.predict_job(Prompts(boxes_xyxy=[[cx - 14, cy - 14, cx + 14, cy + 14]]))).objects[0]
    t_box = time.perf_counter() - t0
    session.clear_preview()
    t0 = time.perf_counter()
    click = drain(session.predict_job(Prompts([[float(cx + 150), float(cy)]], [1]))).objects[0]
    t_click = time.perf_counter() - t0
    print(json.dumps({"rss_after_model_mib": round(base), "peak_rss_mib": round(status("VmHWM:")),
                      "set_image_s": round(t_set, 2), "box_s": round(t_box, 2), "click_s": round(t_click, 2),
                      "box_area": int(box.area), "click_area": int(click.area),
                      "chunks_read": len(set(reads)), "chunks": n * n}))
    """
)


def bench_annotate(side: int, model: str) -> dict:
    """One box and one click on a lazy ``side``² plane through ``AnnotationSession``, in a fresh process."""
    run = subprocess.run([sys.executable, "-c", ANNOTATE_SCRIPT, str(side), model], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr[-3000:])
    out = json.loads(run.stdout.strip().splitlines()[-1])
    out.update(side=side, plane_mib=round(side * side * 2 / 2**20))
    print(f"annotate: {out}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--model", default="micro-tiny")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--mosaic", type=int, default=3)
    ap.add_argument("--lazy-side", type=int, default=20480)
    ap.add_argument("--skip", default="", help="comma-separated: images,tiles,memory,annotate")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    files = _fluorescence(Path(args.data), max(args.images, args.mosaic**2)) if {"images", "tiles"} - skip else []
    result = {}
    if "memory" not in skip:
        result["memory"] = bench_memory(args.lazy_side)
    if "annotate" not in skip:
        result["annotate"] = bench_annotate(args.lazy_side, args.model)
    if "tiles" not in skip:
        result["tiles"] = bench_tiles(files, args.model, args.mosaic)
    if "images" not in skip:
        result["images"] = bench_images(files[: args.images], args.model)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
