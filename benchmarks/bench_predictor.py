"""Embedding and prompt-to-mask latency: this project's session path vs segment-anything's SamPredictor.

Both run the *same* Sam network in the same process, on the same image, one after the other:

* ``SamPredictor.set_image`` vs ``AnnotationSession`` embedding (cold: encoder runs);
* the session's second request for the same image + model (cache hit: no encoder);
* ``SamPredictor.predict`` (one point, three masks) vs ``AnnotationSession.predict`` (one point,
  best of three masks, upscaled, stability score) — the preview latency a user feels per click;
* three boxes: ``SamPredictor.predict_torch`` batched vs the session's batched box decode.

Models: ``tiny-test`` (random weights, default; always available) and ``vit_b`` when given a
local checkpoint (``--vit-b-checkpoint sam_vit_b_01ec64.pth``). LiteMedSAM is not a
``segment_anything.Sam``, so SamPredictor cannot run it; ``--litemedsam`` times the session path
alone for reference.

Usage::

    python benchmarks/bench_predictor.py [--size 1024] [--repeats 5] [--vit-b-checkpoint PATH] [--litemedsam]

Prints medians (ms) and ratios session / SamPredictor (< 1: the session is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def _image(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.normal(60, 8, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for cy, cx, r in ((0.3, 0.3, 0.08), (0.6, 0.7, 0.1), (0.75, 0.25, 0.06)):
        img[(yy - cy * size) ** 2 + (xx - cx * size) ** 2 < (r * size) ** 2] += 120
    return np.clip(img, 0, 255).astype(np.uint8)


def bench_sam(name: str, checkpoint: str | None, size: int, repeats: int) -> dict:
    import torch
    from segment_anything import SamPredictor

    from napari_sam_micro.core.cache import EmbeddingCache
    from napari_sam_micro.core.preprocess import PreprocessConfig, normalize_image
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.core.prompts import Prompts
    from napari_sam_micro.models.registry import load_model
    from napari_sam_micro.session import AnnotationSession

    model = load_model(name, device="cpu", checkpoint=checkpoint)
    sam = model.net
    gray = _image(size)
    # SamPredictor gets exactly the 8-bit RGB image the session's adapter encodes
    config = PreprocessConfig(percentiles=(0.0, 100.0))
    rgb8 = np.clip(np.round(normalize_image(gray, config) * 255.0), 0, 255).astype(np.uint8)
    predictor = SamPredictor(sam)
    point = np.array([[0.3 * size, 0.3 * size]], np.float32)
    label = np.array([1])
    boxes = np.array(
        [[0.2 * size, 0.2 * size, 0.4 * size, 0.4 * size],
         [0.5 * size, 0.6 * size, 0.8 * size, 0.9 * size],
         [0.15 * size, 0.65 * size, 0.35 * size, 0.85 * size]],
        np.float32,
    )

    with torch.inference_mode():
        predictor.set_image(rgb8)  # warm-up
        t_set_image = _median_ms(lambda: predictor.set_image(rgb8), repeats)
        predictor.predict(point, label, multimask_output=True)
        t_pred_point = _median_ms(lambda: predictor.predict(point, label, multimask_output=True), repeats * 4)
        tb = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes), predictor.original_size)
        t_pred_boxes = _median_ms(
            lambda: predictor.predict_torch(None, None, boxes=tb, multimask_output=False), repeats * 4
        )

    def cold_embedding():
        s = AnnotationSession(model, EmbeddingCache(), config)  # fresh cache: the encoder runs
        s.set_image(gray)
        drain(s.embedding_job())

    cold_embedding()  # warm-up
    t_embed = _median_ms(cold_embedding, repeats)

    cache = EmbeddingCache()
    session = AnnotationSession(model, cache, config, crop_to_prompt=False)
    session.set_image(gray)
    session.compute_embedding()

    def cache_hit():
        s = AnnotationSession(model, cache, config)
        s.set_image(gray.copy())  # same content, new array: content digest + cache lookup
        assert s.embedding is not None

    t_cache = _median_ms(cache_hit, repeats * 4)
    prompts_point = Prompts(point, label)
    prompts_boxes = Prompts(boxes_xyxy=boxes)

    def predict_point():
        session.clear_preview()
        session.predict(prompts_point)

    predict_point()
    t_point = _median_ms(predict_point, repeats * 4)
    session.predict(prompts_boxes)
    t_boxes = _median_ms(lambda: session.predict(prompts_boxes), repeats * 4)
    return {
        "model": name,
        "SamPredictor.set_image": t_set_image,
        "session embedding (cold)": t_embed,
        "session embedding (cache hit)": t_cache,
        "SamPredictor.predict (1 point)": t_pred_point,
        "session.predict (1 point)": t_point,
        "SamPredictor.predict_torch (3 boxes)": t_pred_boxes,
        "session.predict (3 boxes)": t_boxes,
    }


def bench_litemedsam(size: int, repeats: int) -> dict:
    from napari_sam_micro.core.cache import EmbeddingCache
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.core.prompts import Prompts
    from napari_sam_micro.models.registry import load_model
    from napari_sam_micro.session import AnnotationSession

    model = load_model("litemedsam", device="cpu")
    gray = _image(size)
    box = Prompts(boxes_xyxy=[[0.2 * size, 0.2 * size, 0.4 * size, 0.4 * size]])

    def cold():
        s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True)
        s.set_image(gray)
        drain(s.embedding_job())
        return s

    cold()
    t_embed = _median_ms(cold, repeats)
    s = cold()
    t0 = time.perf_counter()
    drain(s.embeddings_job(s.missing_embeddings(box)))
    t_crop = (time.perf_counter() - t0) * 1000.0
    s.predict(box)
    t_box = _median_ms(lambda: s.predict(box), repeats * 4)
    return {
        "model": "litemedsam",
        "session embedding (cold, whole image)": t_embed,
        "session crop embedding (first box)": t_crop,
        "session.predict (1 box, cached crop)": t_box,
    }


def _report(result: dict) -> None:
    print(f"\n== {result['model']} ==")
    for key, value in result.items():
        if key != "model":
            print(f"  {key:<40s} {value:10.2f} ms")
    pairs = (
        ("session embedding (cold)", "SamPredictor.set_image"),
        ("session embedding (cache hit)", "SamPredictor.set_image"),
        ("session.predict (1 point)", "SamPredictor.predict (1 point)"),
        ("session.predict (3 boxes)", "SamPredictor.predict_torch (3 boxes)"),
    )
    for ours, ref in pairs:
        if ours in result and ref in result and result[ref] > 0:
            print(f"  ratio {ours} / {ref}: {result[ours] / result[ref]:.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vit-b-checkpoint", default=None, help="local sam_vit_b checkpoint: also time vit_b")
    parser.add_argument("--litemedsam", action="store_true", help="also time the session path with LiteMedSAM")
    args = parser.parse_args(argv)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; image {args.size} x {args.size}")
    _report(bench_sam("tiny-test", None, args.size, args.repeats))
    if args.vit_b_checkpoint:
        _report(bench_sam("vit_b", args.vit_b_checkpoint, args.size, args.repeats))
    if args.litemedsam:
        _report(bench_litemedsam(args.size, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
