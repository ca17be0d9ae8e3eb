"""Time per plane of propagation on the CPU, as a ratio to prompting each plane by hand.

Propagation (``napari_sam_micro.propagation.propagate_job``, default model ``micro-tiny``, the CPU
runtime ``Device: auto`` picks, an empty embedding cache) follows nuclei of the Cell Tracking
Challenge CHO time-lapse (../shared/data/nd, one z-slice) forward through frames. The reference,
measured in the same run on the same frames: a fresh box prompt per frame through the Annotator's
path (``AnnotationSession.predict_job`` with the ground-truth box; a new window is encoded each
time), i.e. what annotating each frame by hand costs in compute. Both figures are seconds per
plane and object; their ratio says what propagation costs over the hand-prompted path (its extra
work: the mask clean-up and the interior point, no user time counted).

Usage::

    python benchmarks/bench_propagation.py [--frames 6] [--cells 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "nd"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--cells", type=int, default=2)
    parser.add_argument("--z", type=int, default=2)
    args = parser.parse_args()
    import tifffile

    from napari_sam_micro.core.cache import EmbeddingCache
    from napari_sam_micro.core.masks import mask_to_box_xyxy
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.core.prompts import Prompts
    from napari_sam_micro.models.registry import get_spec, load_model
    from napari_sam_micro.propagation import PropagationOptions, propagate_job, stack_planes
    from napari_sam_micro.session import AnnotationSession

    frames = tifffile.imread(SHARED / "images" / "ctc-cho-tzyx.tif")[: args.frames, args.z]
    gt = tifffile.imread(SHARED / "labels" / "ctc-cho-tzyx.tif")[: args.frames, args.z]
    spec, model = get_spec("micro-tiny"), load_model("micro-tiny")
    cells = [int(c) for c in np.unique(gt[0])[1 : args.cells + 1]]
    get, lead = stack_planes(frames)
    # reference: one fresh box per frame and cell (a new session and cache: nothing reused)
    t0 = time.perf_counter()
    for t in range(1, args.frames):
        session = AnnotationSession(model, EmbeddingCache(), model_id=spec.embedding_id, **AnnotationSession.options_for(spec))
        session.set_image(frames[t])
        for cell in cells:
            box = mask_to_box_xyxy(gt[t] == cell).astype(np.float32)[None]
            drain(session.predict_job(Prompts(boxes_xyxy=box)))
    manual = (time.perf_counter() - t0) / ((args.frames - 1) * len(cells))
    t0 = time.perf_counter()
    masks = {cell: gt[0] == cell for cell in cells}
    objects = drain(propagate_job(model, spec, get, lead, (0,), masks, PropagationOptions(direction="forward"), cache=EmbeddingCache()))
    planes = sum(len(o.planes) - 1 for o in objects)
    propagated = (time.perf_counter() - t0) / max(planes, 1)
    print(f"runtime {getattr(model, 'runtime', '?')}, {len(cells)} cell(s), frames 1-{args.frames - 1}")
    print(f"fresh box per plane (reference): {manual:.2f} s")
    print(f"propagation per plane:           {propagated:.2f} s  ({propagated / manual:.2f} x the reference, {planes} planes)")


if __name__ == "__main__":
    main()
