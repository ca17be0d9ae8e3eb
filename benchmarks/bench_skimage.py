"""scikit-image against the hand-written code it replaced: Otsu, seed spacing, region measurement.

The former implementations are kept here only, as the reference (they are also what
``tests/core/test_skimage_equivalence.py`` compares the library versions with):

* ``former_otsu_threshold``: a chunked 256-bin Otsu → ``core.seeds.otsu_threshold``
  (:func:`skimage.filters.threshold_otsu`);
* ``former_spaced``: the greedy peak-spacing loop comparing every peak with every kept one →
  ``core.seeds._spaced`` (a KD-tree, as :func:`skimage.feature.peak_local_max` spaces its peaks);
* ``former_measure``: area and box by relabelling + ``bincount`` + ``find_objects`` →
  ``_napari.features._measure`` (:func:`skimage.measure.regionprops_table`).

Inputs: the most crowded DSB 2018 fluorescence image and Usiigaci phase-contrast image in
``../shared/data`` when present, else the synthetic sample with 600 nuclei on 1024 x 1024; region
measurement on a label image tiled from the first one to about 3,000 objects. Each step is timed old and new in the same run (best of ``--repeat``),
and the outputs are checked equal. Prints milliseconds and the speed-up (old / new).

Usage::

    python benchmarks/bench_skimage.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# -- the former, hand-written implementations (reference only) ----------------------------------
def former_otsu_threshold(values: np.ndarray, bins: int = 256, chunk: int = 1 << 16) -> float:
    """Otsu's threshold with a chunked float64 histogram (the code ``threshold_otsu`` replaced)."""
    v = np.asarray(values).reshape(-1)
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist = np.zeros(bins, np.int64)
    for start in range(0, v.size, chunk):
        part, edges = np.histogram(v[start : start + chunk].astype(np.float64), bins=bins, range=(lo, hi))
        hist += part
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    between = w0 * w1 * (m0 / np.maximum(w0, 1) - (m0[-1] - m0) / np.maximum(w1, 1)) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def former_spaced(points: np.ndarray, min_distance: float, max_points: int | None = None) -> np.ndarray:
    """The greedy spacing loop (every candidate against every kept peak)."""
    kept: list[int] = []
    for i, c in enumerate(points):
        if all(np.max(np.abs(c - points[j])) >= min_distance for j in kept):
            kept.append(i)
        if max_points is not None and len(kept) >= max_points:
            break
    return np.asarray(kept, dtype=np.intp)


def former_measure(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Ids, areas and 2D boxes (last two axes) by relabelling to 1..K, ``bincount`` and ``find_objects``."""
    ids = np.unique(labels)
    ids = ids[ids != 0].astype(np.int64)
    compact = np.searchsorted(ids, labels.ravel()).reshape(labels.shape) + 1
    compact[labels == 0] = 0
    slices = ndi.find_objects(compact)
    area = np.bincount(compact.ravel(), minlength=ids.size + 1)[1:]
    boxes = np.array([[s[-2].start, s[-1].start, s[-2].stop, s[-1].stop] for s in slices], dtype=np.int64)
    return {"index": ids, "area": area.astype(np.int64), "bbox": boxes}


# -- inputs ----------------------------------------------------------------------------------
def crowded_images() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, image, labels)``: the DSB fluorescence image with most nuclei and the Usiigaci image
    with most cells when ``../shared/data`` is present, else a synthetic 1024 x 1024 one."""
    import tifffile

    out = []
    for folder, modality in (("dsb2018-train", "fluorescence"), ("usiigaci-train", "phase-contrast")):
        root = DATA / folder
        if not (root / "index.csv").is_file():
            continue
        with open(root / "index.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["modality"] == modality]
        best = max(rows, key=lambda r: int(r["instances"]))
        image = tifffile.imread(root / "images" / f"{best['name']}.tif")
        labels = tifffile.imread(root / "labels" / f"{best['name']}.tif")
        out.append((f"{folder} {best['name']} ({best['instances']} objects)", image, labels))
    if not out:
        from napari_sam_micro.core.synthetic import synthetic_nuclei

        image, labels = synthetic_nuclei((1024, 1024), n_nuclei=600, seed=0)
        out.append(("synthetic 1024 x 1024 (600 nuclei)", image, labels))
    return out


def tiled_labels(labels: np.ndarray, at_least: int = 3000) -> np.ndarray:
    """``labels`` tiled (ids kept distinct) until it holds at least ``at_least`` objects."""
    n = int(labels.max())
    k = int(np.ceil(np.sqrt(at_least / max(n, 1))))
    tiles = [[np.where(labels > 0, labels.astype(np.int64) + (i * k + j) * n, 0) for j in range(k)] for i in range(k)]
    return np.block(tiles).astype(np.uint32)


def best_of(repeat: int, fn, *args):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times) * 1000.0, out


# -- steps -----------------------------------------------------------------------------------
def peak_candidates(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The sorted plateau centres ``find_seeds`` spaces (captured from ``core.seeds``) and its ``min_distance``."""
    from napari_sam_micro.core import seeds
    from napari_sam_micro.core.preprocess import PreprocessConfig, normalize_image

    captured = {}
    original = seeds._spaced

    def capture(points, min_distance, max_points=None):
        captured["points"], captured["min_distance"] = points.copy(), min_distance
        return original(points, min_distance, max_points)

    seeds._spaced = capture
    try:
        seeds.find_seeds(normalize_image(image, PreprocessConfig(rgb=image.ndim == 3)))
    finally:
        seeds._spaced = original
    return captured["points"], captured["min_distance"]


def former_find_seeds(image: np.ndarray) -> np.ndarray:
    """``core.seeds.find_seeds`` with the former Otsu and spacing swapped back in."""
    from napari_sam_micro.core import seeds

    saved = seeds.otsu_threshold, seeds._spaced
    seeds.otsu_threshold, seeds._spaced = former_otsu_threshold, former_spaced
    try:
        return seeds.find_seeds(image)
    finally:
        seeds.otsu_threshold, seeds._spaced = saved


def seed_rows(name: str, image: np.ndarray, repeat: int) -> list[tuple]:
    """Otsu, spacing and the whole ``find_seeds``, old and new, on one image."""
    from napari_sam_micro.core import seeds
    from napari_sam_micro.core.preprocess import PreprocessConfig, normalize_image

    norm = normalize_image(image, PreprocessConfig(rgb=image.ndim == 3))
    signal = ndi.gaussian_filter(seeds.gray_image(norm), 1.0)
    rows = []
    old_ms, old = best_of(repeat, former_otsu_threshold, signal)
    new_ms, new = best_of(repeat, seeds.otsu_threshold, signal)
    rows.append((f"{name}: Otsu", old_ms, new_ms, np.count_nonzero(signal > old) == np.count_nonzero(signal > new)))
    points, min_distance = peak_candidates(image)
    old_ms, old = best_of(repeat, former_spaced, points, min_distance)
    new_ms, new = best_of(repeat, seeds._spaced, points, min_distance)
    rows.append((f"{name}: spacing {len(points)} -> {len(new)} peaks", old_ms, new_ms, np.array_equal(old, new)))
    old_ms, old = best_of(repeat, former_find_seeds, norm)
    new_ms, new = best_of(repeat, seeds.find_seeds, norm)
    rows.append((f"{name}: find_seeds", old_ms, new_ms, np.array_equal(old, new)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    from napari_sam_micro._napari.features import _measure

    images = crowded_images()
    rows = []
    for name, image, _ in images:
        rows += seed_rows(name.split(" (")[0], image, args.repeat)
    many = tiled_labels(images[0][2])
    old_ms, old = best_of(args.repeat, former_measure, many)
    new_ms, new = best_of(args.repeat, _measure, many)
    boxes = new[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]].to_numpy()
    same = np.array_equal(old["index"], new["index"]) and np.array_equal(old["area"], new["area"]) and np.array_equal(old["bbox"], boxes)
    rows.append((f"area + box of {len(old['index'])} objects, {many.shape[0]} x {many.shape[1]}", old_ms, new_ms, same))

    print(f"{'step':<62} {'old ms':>9} {'new ms':>9} {'speed-up':>9}  same result")
    for step, old_ms, new_ms, same in rows:
        print(f"{step:<62} {old_ms:9.1f} {new_ms:9.1f} {old_ms / new_ms:8.2f}x  {same}")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
