"""Decoding on an encoded window: micro-tiny's ONNX Runtime decoder against its torch decoder, same run.

Figures per runtime, on held-out DSB 2018 fluorescence images of ``../shared/data``:

* **decode one box**: ``model.decode`` + ``model.upscale`` of one box prompt on its already
  encoded window (2 x the box), the model's share of a prompt on a pre-encoded object; median over
  objects of the best of ``--repeats`` calls, the two runtimes interleaved; and per box when 12
  boxes are decoded in one call (as everything mode decodes a window's seeds);
* **pre-encoded box / click → mask** (``--pipeline``): the plugin's whole path (``AnnotationSession.predict_job``
  after ``preencode_job``, as in ``bench_cpu.py``) for objects that pre-encoding covered.

Printed in milliseconds and as the ratio ONNX / torch. Usage::

    python benchmarks/bench_decoder.py [--images 1] [--objects 8] [--repeats 5] [--pipeline]
        [--threads 1 --cpu-time]   # steadier figures on a busy machine

Target (issue "Fast on a laptop CPU"): a prompt on a pre-encoded object <= 80 ms here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import _objects, _records, bench_preencoded  # noqa: E402


#: Clock of the figures: wall time, or with ``--cpu-time`` the process's CPU time (steadier on a
#: loaded machine; with ``--threads 1`` it is the work of one call).
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCK["wall"]


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = _clock()
        fn()
        times.append(_clock() - t0)
    return min(times)


def bench_decode_box(models, data, n_objects, repeats, batch: int = 1):
    """{runtime: [seconds per object]} of decode + upscale of one box on its encoded window.

    With ``batch`` > 1 the box is decoded ``batch`` times in one call (as everything mode decodes
    a window's seeds; torch then takes its two-phase decoder) and the time is per prompt.
    """
    from napari_sam_micro.core.masks import mask_to_box_xyxy
    from napari_sam_micro.core.preprocess import normalize_image, prompt_window

    out = {name: [] for name in models}
    for _rec, raw, labels in data:
        image = normalize_image(raw)
        for oid in _objects(labels, n_objects):
            box = mask_to_box_xyxy(labels == oid).astype(np.float32)
            y0, y1, x0, x1 = prompt_window(box, labels.shape)
            window = np.ascontiguousarray(image[y0:y1, x0:x1])
            local = np.repeat((box - np.array([x0, y0, x0, y0], np.float32))[None], batch, axis=0)
            for name, model in models.items():  # interleaved: both see the same machine load
                emb = model.encode(window)

                def once(model=model, emb=emb):
                    low = model.decode(emb, boxes=local, multimask_output=False).low_res_logits
                    return model.upscale(emb, low)

                once()
                out[name].append(_best_of(once, repeats) / batch)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pipeline", action="store_true", help="also the whole prompt path after pre-encoding (slow)")
    parser.add_argument("--threads", type=int, default=None, help="threads of torch and ONNX Runtime (default: theirs)")
    parser.add_argument("--cpu-time", action="store_true", help="time the decode figures in process CPU time")
    args = parser.parse_args(argv)
    global _clock
    _clock = CLOCK["cpu" if args.cpu_time else "wall"]

    from napari_sam_micro.models.registry import get_spec, load_model

    spec = get_spec("micro-tiny")
    models = {
        "torch": load_model("micro-tiny", device="cpu", runtime="torch"),
        "onnxruntime": load_model("micro-tiny", device="cpu", runtime="onnxruntime"),
    }
    assert type(models["onnxruntime"]).__name__ == "OnnxSamAdapter"
    if args.threads:
        import torch

        from napari_sam_micro.models.micro import WEIGHTS_PATH, WEIGHTS_SHA256
        from napari_sam_micro.models.onnx_runtime import OnnxSamAdapter, shipped_onnx_status

        torch.set_num_threads(args.threads)
        manifest, _ = shipped_onnx_status(WEIGHTS_PATH.parent, "micro-tiny", WEIGHTS_SHA256)
        models["onnxruntime"] = OnnxSamAdapter(
            WEIGHTS_PATH.parent / manifest["encoder"]["file"], WEIGHTS_PATH.parent / manifest["decoder"]["file"],
            "micro-tiny", threads=args.threads,
        )
    print(f"clock: {'process CPU time' if args.cpu_time else 'wall'}, threads: {args.threads or 'default'}")
    data = _records(args.images)
    print(f"images: {', '.join(r.key for r, _, _ in data)}")
    print(f"{'figure':<20}{'torch ms':>10}{'onnx ms':>10}{'onnx/torch':>12}  notes", flush=True)
    decode = bench_decode_box(models, data, args.objects, args.repeats)
    _row("decode one box", {k: statistics.median(v) for k, v in decode.items()}, f"n={len(decode['torch'])}")
    decode = bench_decode_box(models, data, args.objects, args.repeats, batch=12)
    _row("12 boxes, per box", {k: statistics.median(v) for k, v in decode.items()}, "one batched call")
    for kind in ("box", "click") if args.pipeline else ():
        per = {}
        notes = []
        for name, model in models.items():
            secs, ious, share = bench_preencoded(model, spec, data, args.objects, kind)
            per[name] = statistics.median(secs) if secs else float("nan")
            notes.append(f"{name} IoU {np.mean(ious) if ious else float('nan'):.3f}")
        _row(f"pre-encoded {kind}", per, f"{', '.join(notes)}, covered {share:.0%}")
    return 0


def _row(label: str, per: dict, note: str) -> None:
    t, o = per["torch"] * 1000, per["onnxruntime"] * 1000
    print(f"{label:<20}{t:>10.1f}{o:>10.1f}{o / t:>12.2f}  {note}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
