"""Peak memory per image pixel of one annotation: set_image + one click + commit, on a large plane.

A synthetic ``--size`` x ``--size`` (default 4096) uint16 plane of bright round nuclei on a noisy
background goes through the plugin's own path (``AnnotationSession`` with a ``crop_to_prompt``
model, as ``micro-tiny``): ``set_image``, a click on a nucleus (its window encoded, the objects'
scale measured on the plane), ``commit_plan`` into a uint32 labels plane. The model is a scripted
stand-in (a disk of fixed radius, no weights), so only the plugin's own arrays are counted.

Memory is Python's ``tracemalloc`` (numpy reports its buffers to it): the peak above what was held
before the step (the plane and the labels, which are the user's), and what stays held after it.
Each figure is printed in bytes per image pixel and as a ratio to the raw plane's own bytes per
pixel (2 for uint16); ``--reference`` prints the ratio of the total peak to a previous run's (59.0
B/px before issue 12's memory work, same script on commit d68f546). Takes about 30 s on 2 cores.

Usage::

    python benchmarks/bench_memory.py [--size 4096] [--dtype uint16] [--reference BYTES_PER_PIXEL]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np


class _DiskStandIn:
    """A 256-px ``crop_to_prompt`` model that answers every click with a disk (no weights, no torch)."""

    name = "disk-bench"
    image_size = 256
    mask_threshold = 0.0
    device = "cpu"

    def __init__(self, radius: float = 12.0):
        self.radius = float(radius)

    def encode(self, image):
        from napari_sam_micro.core.model_api import Embedding

        h, w = image.shape[:2]
        s = 256 / max(h, w)
        return Embedding(np.zeros((1, 4, 4), np.float32), (h, w), (round(h * s), round(w * s)), self.name)

    def decode(self, embedding, point_coords=None, point_labels=None, boxes=None, mask_input=None, multimask_output=True):
        from napari_sam_micro.core.model_api import DecoderOutput

        h, w = embedding.original_size
        s = 256 / max(h, w)
        yy, xx = (np.mgrid[:256, :256] + 0.5) / s
        n = len(boxes) if boxes is not None else len(point_coords)
        logits = np.full((n, 256, 256), -10.0, np.float32)
        for b in range(n):
            if boxes is not None:
                x0, y0, x1, y1 = boxes[b]
                cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 0.5)
            else:
                cx, cy = point_coords[b][0]
                r = self.radius
            logits[b][(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 10.0
        m = 3 if multimask_output else 1
        iou = np.tile(np.array([0.5, 0.9, 0.7][:m] if m == 3 else [0.8], np.float32), (n, 1))
        return DecoderOutput(np.repeat(logits[:, None], m, axis=1), iou)

    def upscale(self, embedding, low_res_logits):
        h, w = embedding.original_size
        s = 256 / max(h, w)
        rows = np.minimum(((np.arange(h) + 0.5) * s).astype(int), 255)
        cols = np.minimum(((np.arange(w) + 0.5) * s).astype(int), 255)
        return np.asarray(low_res_logits)[:, :, rows][:, :, :, cols]


def nuclei_plane(size: int, dtype=np.uint16, spacing: int = 64, radius: int = 12, seed: int = 0) -> np.ndarray:
    """``(size, size)`` plane: disks of ``radius`` on a jittered grid, bright on a noisy background."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    plane = rng.normal(0.1 * top, 0.02 * top, (size, size)).clip(0, top).astype(dtype)
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = (yy**2 + xx**2) <= radius**2
    for r in range(spacing // 2, size - spacing // 2, spacing):
        for c in range(spacing // 2, size - spacing // 2, spacing):
            plane[r - radius : r + radius + 1, c - radius : c + radius + 1][disk] = dtype(0.6 * top)
    return plane


def _step(name, fn, pixels, rows):
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    now, peak = tracemalloc.get_traced_memory()
    rows.append((name, (peak - before) / pixels, (now - before) / pixels, dt))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--dtype", default="uint16", choices=["uint8", "uint16"])
    parser.add_argument("--reference", type=float, default=None, help="total peak bytes/pixel of an earlier run")
    args = parser.parse_args(argv)

    from napari_sam_micro.core.prompts import Prompts
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.session import AnnotationSession

    dtype = np.dtype(args.dtype).type
    plane = nuclei_plane(args.size, dtype)
    labels = np.zeros(plane.shape, np.uint32)
    pixels = plane.size
    raw = plane.dtype.itemsize
    session = AnnotationSession(_DiskStandIn(), crop_to_prompt=True)
    # a click on the nucleus nearest the centre (grid of 64 px starting at 32)
    centre = 32 + 64 * ((args.size // 2 - 32) // 64)
    click = Prompts([[float(centre), float(centre)]], [1])

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    rows: list = []
    _step("set_image", lambda: session.set_image(plane), pixels, rows)
    _step("click (window encode + object scale + decode)", lambda: drain(session.predict_job(click)), pixels, rows)
    items = _step("commit_plan", lambda: session.commit_plan(labels), pixels, rows)
    held = (tracemalloc.get_traced_memory()[0] - base) / pixels
    tracemalloc.stop()
    # a step's peak comes on top of what the steps before it still hold
    overall = max(r[1] + sum(x[2] for x in rows[:k]) for k, r in enumerate(rows))

    print(f"{args.size} x {args.size} {args.dtype} plane ({raw} B/px raw, {pixels * raw / 2**20:.0f} MiB); "
          f"committed {len(items)} object(s), {sum(len(i.indices[0]) for i in items)} px")
    print(f"{'step':<50} {'peak B/px':>10} {'held B/px':>10} {'s':>6}")
    for name, peak, kept, dt in rows:
        print(f"{name:<50} {peak:>10.2f} {kept:>10.2f} {dt:>6.2f}")
    print(f"whole annotation: peak {overall:.2f} B/px ({overall / raw:.1f}x the raw plane), "
          f"held afterwards {held:.2f} B/px ({held / raw:.1f}x)")
    print(f"  = {overall * 16384**2 / 2**30:.1f} GiB peak for the largest accepted plane (16384 x 16384)")
    if args.reference:
        print(f"vs reference {args.reference:.2f} B/px: {overall / args.reference:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
