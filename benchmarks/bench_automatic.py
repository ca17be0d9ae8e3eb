"""Automatic mask generation: segment_anything's SamAutomaticMaskGenerator vs ours, same model, image, parameters.

Runs both in the same process, alternating, and prints the times, the speed ratio, the number of
masks of each and how many agree (identical mask, or best-match IoU >= 0.99).

    python benchmarks/bench_automatic.py                       # tiny model, image from ../shared/data
    python benchmarks/bench_automatic.py --model litemedsam --max-side 384
    python benchmarks/bench_automatic.py --image path.tif --points-per-side 16 --repeats 2

Ours is timed as the full run: ``generate_candidates`` (model, candidates at the floors) +
``CandidateSet.filter`` with the same parameters. A re-filter with other thresholds costs only the
second part (printed as well).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def load_image(path: str | None, max_side: int) -> tuple[np.ndarray, str]:
    """``(H, W, 3)`` float32 in [0, 1] via core.preprocess, and a description."""
    from napari_sam_micro.core.preprocess import normalize_image

    if path is None and (SHARED / "dsb2018-train" / "images").is_dir():
        candidates = sorted((SHARED / "dsb2018-train" / "images").glob("*.tif"))
        path = str(candidates[0]) if candidates else None
    if path is None:
        yy, xx = np.mgrid[:max_side, :max_side]
        img = np.zeros((max_side, max_side), np.float32)
        rng = np.random.default_rng(0)
        for _ in range(30):
            cy, cx, r = rng.uniform(0, max_side, 2).tolist() + [rng.uniform(5, 18)]
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.4, 1.0)
        raw, desc = img, f"synthetic nuclei {max_side}x{max_side}"
    else:
        import tifffile

        raw = tifffile.imread(path)
        desc = Path(path).name
    image = normalize_image(raw)
    image = np.ascontiguousarray(image[:max_side, :max_side])
    return image, f"{desc} -> {image.shape[0]}x{image.shape[1]}"


def load_model(name: str):
    if name == "tiny-test":
        from napari_sam_micro.models.sam_family import SamAdapter
        from napari_sam_micro.models.tiny import build_tiny_sam

        return SamAdapter(build_tiny_sam(seed=0), "tiny-test", device="cpu")
    from napari_sam_micro.models.registry import load_model as registry_load

    return registry_load(name, device="cpu")


def sam_generator(model, **kwargs):
    """SAM's generator on the model's network; non-Sam networks get a predictor that uses the adapter's encoder."""
    import torch
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor
    from segment_anything.modeling import Sam

    net = model.net
    if isinstance(net, Sam):
        return SamAutomaticMaskGenerator(net, output_mode="binary_mask", **kwargs)

    class AdapterPredictor(SamPredictor):
        """SamPredictor whose image encoding and mask upscaling are the adapter's (e.g. LiteMedSAM)."""

        def __init__(self, adapter):
            from segment_anything.utils.transforms import ResizeLongestSide

            self.adapter = adapter
            self.model = _NetView(adapter)
            self.transform = ResizeLongestSide(adapter.image_size)
            self.reset_image()

        def set_image(self, image, image_format="RGB"):
            emb = self.adapter.encode(image.astype(np.float32) / 255.0)
            self.features = torch.from_numpy(emb.features)
            self.original_size, self.input_size = emb.original_size, emb.input_size
            self.is_image_set = True

    class _NetView:
        def __init__(self, adapter):
            self.prompt_encoder = adapter.net.prompt_encoder
            self.mask_decoder = adapter.net.mask_decoder
            self.mask_threshold = adapter.mask_threshold
            self.device = torch.device(adapter.device)
            self._adapter = adapter

        def postprocess_masks(self, masks, input_size, original_size):
            return self._adapter.upscale_torch(masks, input_size, original_size)

    gen = SamAutomaticMaskGenerator.__new__(SamAutomaticMaskGenerator)
    ref = SamAutomaticMaskGenerator(_tiny_sam_for_init(), output_mode="binary_mask", **kwargs)
    gen.__dict__.update(ref.__dict__)
    gen.predictor = AdapterPredictor(model)
    return gen


def _tiny_sam_for_init():
    from napari_sam_micro.models.tiny import build_tiny_sam

    return build_tiny_sam(seed=0)


def agreement(ref: list[dict], ours) -> tuple[int, int, float]:
    """(identical masks, masks with best-match IoU >= 0.99, min best IoU) of SAM's masks among ours."""
    if not ref or not len(ours):
        return 0, 0, float("nan")
    a = np.stack([r["segmentation"].reshape(-1) for r in ref]).astype(np.float32)
    b = np.stack([ours.mask(i).reshape(-1) for i in range(len(ours))]).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = inter / np.maximum(union, 1)
    best = iou.max(axis=1)
    return int((best == 1.0).sum()), int((best >= 0.99).sum()), float(best.min())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-test")
    p.add_argument("--image", default=None)
    p.add_argument("--max-side", type=int, default=256)
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--pred-iou-thresh", type=float, default=0.88)
    p.add_argument("--stability-score-thresh", type=float, default=0.95)
    p.add_argument("--stability-score-offset", type=float, default=1.0)
    p.add_argument("--box-nms-thresh", type=float, default=0.7)
    p.add_argument("--crop-n-layers", type=int, default=0)
    p.add_argument("--points-per-batch", type=int, default=None, help="ours (SAM keeps its default, 64)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads for both")
    p.add_argument("--profile", action="store_true", help="cProfile our run")
    args = p.parse_args(argv)

    import torch

    from napari_sam_micro.core.automatic import AmgParams, generate_candidates
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.models import automatic_fastpath  # noqa: F401  (registers the fast path)

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    image, desc = load_image(args.image, args.max_side)
    sam_kwargs = dict(
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        stability_score_offset=args.stability_score_offset,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers,
    )
    params = AmgParams(points_per_batch=args.points_per_batch, **sam_kwargs)
    generator = sam_generator(model, **sam_kwargs)
    image_u8 = np.round(image * 255).astype(np.uint8)
    print(f"model {args.model}, image {desc}, torch threads {torch.get_num_threads()}, params {sam_kwargs}")

    t_sam, t_ours, t_filter = [], [], []
    ref = result = candidates = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ref = generator.generate(image_u8)
        t_sam.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
        candidates = drain(generate_candidates(model, image, params))
        t1 = time.perf_counter()
        result = candidates.filter(params)
        t_ours.append(time.perf_counter() - t0)
        t_filter.append(time.perf_counter() - t1)
        if args.profile:
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    sam_s, ours_s = min(t_sam), min(t_ours)
    exact, close, worst = agreement(ref, result)
    print(f"SamAutomaticMaskGenerator: {sam_s:8.2f} s  {len(ref)} masks")
    print(f"ours (candidates+filter):  {ours_s:8.2f} s  {len(result)} masks  ({len(candidates)} candidates kept, "
          f"{candidates.nbytes / 1e6:.1f} MB; re-filter {min(t_filter) * 1000:.0f} ms)")
    print(f"speed ratio SAM / ours:    {sam_s / ours_s:8.2f}x")
    print(f"agreement: {exact}/{len(ref)} SAM masks identical in ours, {close}/{len(ref)} with IoU >= 0.99 (min best IoU {worst:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
