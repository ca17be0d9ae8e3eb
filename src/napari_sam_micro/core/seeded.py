"""Seeded everything mode: one object per seed, many seeds per encoded window.

For ``crop_to_prompt`` models each seed (an object centre from
:func:`~napari_sam_micro.core.seeds.find_seeds`) is a centred click. Instead of one window per
seed, the seeds' estimated object boxes are covered by few windows
(:func:`~napari_sam_micro.core.windows.cover_objects`; already-encoded windows that fit are used
first), the windows are encoded (in batches where the model can), and each window's seeds are
decoded in two batched decoder calls (:func:`~napari_sam_micro.core.decoding.decode_clicks_in_window`;
optionally the box stage too, wherever a box prompt would reuse that window, :data:`BOX_STAGE_REUSE`).
A seed whose mask does not fit its window (an object larger than estimated) is decoded alone like
an Annotator click. Masks are then cleaned, de-duplicated and painted
(:func:`~napari_sam_micro.core.seeds.resolve_seeded_masks`), and a second pass seeds the foreground
no mask covers (:func:`~napari_sam_micro.core.seeds.uncovered_seeds`,
:func:`~napari_sam_micro.core.seeds.add_uncovered_masks`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .decoding import (
    CLICK_WINDOW_MIN,
    DecodeContext,
    EmbeddingNotReady,
    ObjectPreview,
    click_box,
    decode_click,
    decode_clicks_in_window,
    decode_object,
    object_window,
)
from .masks import stability_score
from .progress import Job, Progress
from .prompts import ObjectPrompt
from .seeds import (
    REFILL_AREA_FRACTION,
    SEED_IOU_FLOOR,
    add_uncovered_masks,
    choose_seed_mask,
    foreground_mask,
    resolve_seeded_masks,
    uncovered_seeds,
)
from .touching import clip_merged_masks, seed_basins
from .windows import Window, cover_objects, reuse_window

__all__ = ["SeededSegmentation", "seeded_segmentation_job", "decode_seeds_job", "with_embeddings"]

#: Whether everything mode decodes a seed's box stage in the window the seed shares wherever a box
#: prompt would reuse that window (``box_stage_reuse=True``), instead of where an Annotator click's
#: goes. Off: on 15 dev images 22 % fewer windows and 41 % less time with F1 0.936 -> 0.939, but on
#: the 15 held-out images F1 0.859 -> 0.853, below the bar set beforehand (docs/models.md).
BOX_STAGE_REUSE = False

#: ``encode(windows) -> Job``: computes (and caches) the embeddings of the windows (None = plane).
Encoder = Callable[[Sequence[Window | None]], Job]


@dataclass(frozen=True, eq=False)
class SeededSegmentation:
    """Result of a seeded everything-mode run.

    Parameters
    ----------
    labels : (H, W) uint32
        Instance ids ``1..K`` (best first).
    table : dict of str to list
        Object table (:data:`~napari_sam_micro.core.labels.OBJECT_COLUMNS`), prompt ``"seed"``.
    seeds_rc : (N, 2) float64
        The seeds given, ``(row, col)``.
    generation : int
        Session generation the result belongs to.
    refill_rc : (M, 2) float64
        The second pass's seeds in uncovered foreground, ``(row, col)`` (none without ``refill``).
    windows_encoded : int
        Window embeddings this run had to compute (cache hits not counted).
    """

    labels: np.ndarray
    table: dict
    seeds_rc: np.ndarray
    generation: int
    refill_rc: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    windows_encoded: int = 0


def with_embeddings(decode: Callable[[], object], encode: Encoder, check: Callable[[], None] = lambda: None) -> Job:
    """Run ``decode()``, encoding every window it asks for (:class:`EmbeddingNotReady`), until it succeeds; a job.

    ``check()`` runs before each try (e.g. raises when the image changed meanwhile).
    """
    for _ in range(8):
        check()
        try:
            return decode()
        except EmbeddingNotReady as need:
            yield from encode(need.windows)
    raise RuntimeError("the embeddings asked for do not stay in the cache (is it too small?)")


def _plan(ctx: DecodeContext, points_xy: np.ndarray) -> tuple[list, np.ndarray]:
    """Windows for the seeds: encoded windows that fit first, then a cover of the rest."""
    boxes = np.array([click_box(ctx, x, y)[0] for x, y in points_xy]).reshape(-1, 4)
    encoded = list(ctx.encoded())
    windows: list = []
    assignment = np.full(len(points_xy), -1, np.intp)
    for k, box in enumerate(boxes):
        reused = reuse_window(box, encoded, ctx.hw, ctx.reuse_scale)
        if reused is not None:
            if reused not in windows:
                windows.append(reused)
            assignment[k] = windows.index(reused)
    rest = np.flatnonzero(assignment < 0)
    if len(rest):
        cover, sub = cover_objects(boxes[rest], ctx.hw, ctx.reuse_scale, min_side=CLICK_WINDOW_MIN)
        base = len(windows)
        windows.extend(ctx.plane_or(w) for w in cover)
        assignment[rest] = base + sub
    return windows, assignment


def decode_seeds_job(
    ctx: DecodeContext, seeds_rc, encode: Encoder, choose=None, what: str = "Seed", check=lambda: None, box_stage_reuse: bool = False
) -> Job:
    """Decode each seed as a centred click; many seeds per window; a job returning ``list[ObjectPreview]``.

    Parameters
    ----------
    seeds_rc : (N, 2) float
        ``(row, col)`` on the plane.
    encode : callable
        ``encode(windows) -> Job`` computes missing embeddings.
    choose : callable, optional
        Multimask choice, ``choose(iou (3,), logits (3, h, w)) -> int``.
    box_stage_reuse : bool
        Decode a click's box stage in the window its seed shares where a box prompt would reuse it
        (:func:`~napari_sam_micro.core.decoding.decode_clicks_in_window`).
    """
    seeds = np.asarray(seeds_rc, np.float64).reshape(-1, 2)
    points_xy = seeds[:, ::-1]
    n = len(seeds)
    # seeds share windows only at the prompts' reuse scale (up to 3 x): at 4 x the pooled F1 on
    # 15 held-out images fell from 0.862 to 0.852
    results: list[ObjectPreview | None] = [None] * n
    if ctx.clicks_in_windows or not ctx.crop_to_prompt:
        windows, assignment = _plan(ctx, points_xy) if ctx.crop_to_prompt else ([None], np.zeros(n, np.intp))
        missing = [w for w in windows if not ctx.is_ready(w)]
        if missing:
            yield Progress(0, n, f"{what}s: encoding {len(missing)} window(s)")
            yield from encode(missing)
        done = 0
        for j, window in enumerate(windows):
            idx = np.flatnonzero(assignment == j)
            if not len(idx):
                continue
            got = yield from with_embeddings(lambda: decode_clicks_in_window(ctx, points_xy[idx], window, choose, box_stage_reuse), encode, check)
            for k, prev in zip(idx, got):
                results[k] = prev
            done += len(idx)
            yield Progress(done, n, f"{what}s: {done} of {n} decoded")
    for k in range(n):  # seeds that need their own window (object larger than estimated), or box-only models
        if results[k] is not None:
            continue
        obj = ObjectPrompt(points_xy[k : k + 1].astype(np.float32), np.ones(1, np.int32), None, "points")
        results[k] = yield from with_embeddings(lambda: _decode_alone(ctx, obj, choose), encode, check)
        yield Progress(k + 1, n, f"{what} {k + 1} of {n}: decoded in its own window")
    return results


def _decode_alone(ctx: DecodeContext, obj: ObjectPrompt, choose) -> ObjectPreview:
    window = object_window(ctx, obj)
    if ctx.clicks_in_windows:
        return decode_click(ctx, obj, window, choose=choose)
    return decode_object(ctx, obj, window, ctx.get_embedding(window), choose=choose)


def seeded_segmentation_job(
    ctx: DecodeContext,
    seeds_rc,
    image: np.ndarray,
    encode: Encoder,
    *,
    generation: int = 0,
    check: Callable[[], None] = lambda: None,
    iou_floor: float = SEED_IOU_FLOOR,
    nms_thresh: float = 0.5,
    fill_holes: bool = True,
    keep_largest: bool = True,
    min_area: int = 10,
    refill: bool = True,
    split_touching: bool = False,
    foreground: tuple | None = None,
    box_stage_reuse: bool = BOX_STAGE_REUSE,
) -> Job[SeededSegmentation]:
    """Seeded everything mode on one plane (see the module docstring); a job.

    Parameters
    ----------
    ctx : DecodeContext
    seeds_rc : (N, 2) array-like
        ``(row, col)`` object centres (e.g. :func:`~napari_sam_micro.core.seeds.find_seeds`).
    image : (H, W, 3) float32
        The normalised plane (the second pass's foreground is found in it).
    encode : callable
        ``encode(windows) -> Job`` computes missing embeddings.
    iou_floor, nms_thresh, fill_holes, keep_largest, min_area
        See :mod:`napari_sam_micro.core.seeds`.
    refill : bool
        Seed the foreground no mask covers (regions of at least ``REFILL_AREA_FRACTION`` x the first
        pass's median object area) and add the objects found there.
    split_touching : bool
        Clip a seed's mask that covers another seed to leave that seed's watershed basin
        (:func:`~napari_sam_micro.core.touching.clip_merged_masks`), so touching nuclei are not merged.
        Off by default (the masks are then exactly the decoder's).
    foreground : (float, str, int), optional
        The whole plane's foreground threshold, polarity and background radius when ``image`` is a tile of it
        (:func:`~napari_sam_micro.core.seeds.foreground_threshold`); default: ``image``'s own.
    box_stage_reuse : bool
        A seed's box stage in the window it shares with other seeds where a box prompt would reuse
        that window (default :data:`BOX_STAGE_REUSE`); False: where an Annotator click's goes.
    """
    hw = ctx.hw
    seeds = np.asarray(seeds_rc, dtype=np.float64).reshape(-1, 2)
    thr = float(ctx.model.mask_threshold)
    encoded = [0]

    def counted(windows):
        encoded[0] += len([w for w in windows if not ctx.is_ready(w)])
        return encode(windows)

    def choose(iou, logits):
        return choose_seed_mask(iou, stability_score(logits, thr), iou_floor)

    def split(previews):
        return [p.mask for p in previews], [p.predicted_iou for p in previews], [p.stability for p in previews]

    masks, pious, stabs = split((yield from decode_seeds_job(ctx, seeds, counted, choose, "Seed", check, box_stage_reuse)))
    yield Progress(len(seeds), len(seeds), "Resolving overlaps")
    if split_touching and len(seeds):
        masks = clip_merged_masks(masks, seeds, seed_basins(foreground_mask(image, threshold=foreground)[0], seeds))
    labels_img, table = resolve_seeded_masks(
        masks, pious, stabs, hw, nms_thresh=nms_thresh, fill_holes=fill_holes, keep_largest=keep_largest, min_area=min_area
    )
    extra = np.zeros((0, 2), np.float64)
    if refill and table["area"]:
        covered, _ = foreground_mask(image, threshold=foreground)
        area = max(min_area, int(REFILL_AREA_FRACTION * float(np.median(table["area"]))))
        extra = uncovered_seeds(covered, labels_img, min_area=area)
        if len(extra):
            masks, pious, stabs = split((yield from decode_seeds_job(ctx, extra, counted, choose, "Uncovered region", check, box_stage_reuse)))
            labels_img, table = add_uncovered_masks(labels_img, table, masks, pious, stabs, min_area=min_area, fill_holes=fill_holes)
    return SeededSegmentation(labels_img, table, seeds, generation, extra, encoded[0])
