"""Automatic ("everything") mask generation: SAM's point-grid segmentation, run once, re-filtered instantly.

This is a numpy re-implementation of ``segment_anything``'s ``SamAutomaticMaskGenerator`` (AMG)
that gives the same masks for the same model and parameters, split into two stages:

1. :func:`generate_candidates` (slow, needs the model): encodes the image and its crops, decodes
   a grid of point prompts in large batches and keeps every mask that passes a low *floor*
   (:data:`CANDIDATE_IOU_FLOOR`, :data:`CANDIDATE_STABILITY_FLOOR`, or the requested thresholds
   if those are lower) as compact data: scores, box, crop and the binary mask cropped to its
   bounding box. No full-size arrays and no RLE are kept.
2. :meth:`CandidateSet.filter` (instant, no model): thresholds, box NMS within each crop, NMS
   between crops, SAM's small-region clean-up, area limits and microscopy post-processing.
   Moving a slider in the widget only re-runs this stage.

Which parameter needs which stage (:data:`MODEL_RUN_FIELDS`, :data:`FILTER_FIELDS`):

* a new model run: ``points_per_side``, ``crop_n_layers``, ``crop_overlap_ratio``,
  ``crop_n_points_downscale_factor``, ``stability_score_offset`` (and thresholds below the floor
  the candidates were generated with);
* re-filtering only: ``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh``,
  ``crop_nms_thresh``, ``min_mask_region_area``, ``max_mask_region_area``, ``fill_holes``,
  ``min_fragment_area``, ``keep_largest_component``.
* ``points_per_batch`` changes memory use and speed, never the result.

The model is reached only through :class:`~napari_sam_micro.core.model_api.PromptableModel`
(``encode`` / ``decode`` / ``upscale``). The per-batch work (decode, IoU filter on the
low-resolution output, upscaling the survivors, stability filter, binarisation, boxes, crop-edge
filter, cutting masks to their boxes) is one function, :func:`process_batch_numpy` here; model
packages can register a faster equivalent that stays on the model's device with
:func:`register_fast_path` (``napari_sam_micro.models.automatic_fastpath`` does for SAM-family
models).

Coordinates: points and boxes are SAM's ``(x, y)`` = ``(column, row)``. Internal boxes are
``(x0, y0, x1, y1)`` with **inclusive** ``x1, y1`` (SAM's ``batched_mask_to_box``); SAM-style
records give ``bbox`` and ``crop_box`` as ``(x, y, w, h)`` exactly as SAM does (for ``bbox``,
``w = x1 - x0`` with the inclusive ``x1``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .errors import ImageError, UserInputError
from .labels import OBJECT_COLUMNS, instance_labels_from_masks
from .masks import mask_to_box_xyxy, postprocess_mask
from .model_api import Embedding, PromptableModel
from .progress import Job, Progress

__all__ = [
    "labels_from_result",
    "AmgParams",
    "MODEL_RUN_FIELDS",
    "FILTER_FIELDS",
    "CANDIDATE_IOU_FLOOR",
    "CANDIDATE_STABILITY_FLOOR",
    "BatchSettings",
    "BatchResult",
    "CandidateSet",
    "AmgObject",
    "AmgResult",
    "generate_candidates",
    "automatic_segmentation",
    "register_fast_path",
    "unregister_fast_path",
    "find_fast_path",
    "process_batch_numpy",
    "point_grid",
    "crop_boxes",
    "box_nms",
    "remove_small_regions",
]

#: Lowest ``pred_iou_thresh`` the candidates support without a new model run.
CANDIDATE_IOU_FLOOR = 0.5
#: Lowest ``stability_score_thresh`` the candidates support without a new model run.
CANDIDATE_STABILITY_FLOOR = 0.5

#: :class:`AmgParams` fields whose change needs a new model run.
MODEL_RUN_FIELDS = (
    "points_per_side",
    "crop_n_layers",
    "crop_overlap_ratio",
    "crop_n_points_downscale_factor",
    "stability_score_offset",
)
#: :class:`AmgParams` fields applied by :meth:`CandidateSet.filter` (no model run).
FILTER_FIELDS = (
    "pred_iou_thresh",
    "stability_score_thresh",
    "box_nms_thresh",
    "crop_nms_thresh",
    "min_mask_region_area",
    "max_mask_region_area",
    "fill_holes",
    "min_fragment_area",
    "keep_largest_component",
)

#: Pixels (masks x height x width) upscaled at once by :func:`process_batch_numpy`.
_UPSCALE_PIXELS = 1 << 23
#: SAM's distance (pixels) under which a box "touches" a crop edge.
_CROP_EDGE_ATOL = 20.0


@dataclass(frozen=True)
class AmgParams:
    """Parameters of automatic mask generation; names and defaults are SAM's.

    Parameters
    ----------
    points_per_side : int
        Grid of ``points_per_side ** 2`` point prompts over the image (model run).
    points_per_batch : int, optional
        Prompts decoded per model call (speed / memory only). None: 16 on the CPU (small batches
        stay in cache and are faster there), 256 on an accelerator.
    pred_iou_thresh : float
        Keep masks whose predicted IoU is ``> pred_iou_thresh`` (0 disables the filter).
    stability_score_thresh : float
        Keep masks whose stability score is ``>= stability_score_thresh`` (0 disables it).
    stability_score_offset : float
        Logit offset of the stability score (model run).
    box_nms_thresh : float
        Box-IoU threshold of the non-maximum suppression within one crop.
    crop_n_layers : int
        Extra layers of crops (layer ``i`` has ``(2 ** i) ** 2`` crops) (model run).
    crop_nms_thresh : float
        Box-IoU threshold of the suppression between crops (smaller crops win).
    crop_overlap_ratio : float
        Overlap of neighbouring crops, as a fraction of the short image side (model run).
    crop_n_points_downscale_factor : int
        Points per side in crop layer ``i`` are ``points_per_side / factor ** i`` (model run).
    min_mask_region_area : int
        SAM's clean-up: holes and islands (8-connected) smaller than this are filled / removed,
        then duplicates are suppressed again (0 disables it).
    max_mask_region_area : int, optional
        Drop objects larger than this many pixels (after all clean-up).
    fill_holes : bool
        Microscopy clean-up: fill every hole of each object.
    min_fragment_area : int
        Microscopy clean-up: remove connected fragments smaller than this (the largest stays).
    keep_largest_component : bool
        Microscopy clean-up: keep only the largest connected piece of each object.
    """

    points_per_side: int = 32
    points_per_batch: int | None = None
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    max_mask_region_area: int | None = None
    fill_holes: bool = False
    min_fragment_area: int = 0
    keep_largest_component: bool = False

    def __post_init__(self):
        def bad(message: str):
            raise UserInputError(f"Automatic segmentation: {message}")

        if int(self.points_per_side) < 1:
            bad(f"points per side must be at least 1, got {self.points_per_side}.")
        if self.points_per_batch is not None and int(self.points_per_batch) < 1:
            bad(f"points per batch must be at least 1, got {self.points_per_batch}.")
        if int(self.crop_n_layers) < 0:
            bad(f"the number of crop layers cannot be negative, got {self.crop_n_layers}.")
        if int(self.crop_n_points_downscale_factor) < 1:
            bad(f"the point downscale factor must be at least 1, got {self.crop_n_points_downscale_factor}.")
        for name in ("box_nms_thresh", "crop_nms_thresh", "stability_score_thresh"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                bad(f"{name.replace('_', ' ')} must be between 0 and 1, got {value}.")
        if not self.stability_score_offset > 0:
            bad(f"the stability score offset must be positive, got {self.stability_score_offset}.")
        if not 0.0 <= float(self.crop_overlap_ratio) < 1.0:
            bad(f"the crop overlap ratio must be in [0, 1), got {self.crop_overlap_ratio}.")
        if int(self.min_mask_region_area) < 0 or int(self.min_fragment_area) < 0:
            bad("minimum areas cannot be negative.")
        if self.max_mask_region_area is not None and int(self.max_mask_region_area) < 1:
            bad(f"the maximum object area must be positive, got {self.max_mask_region_area}.")

    def model_run_key(self) -> tuple:
        """Values of :data:`MODEL_RUN_FIELDS` (equal keys: the same candidates)."""
        return tuple(getattr(self, name) for name in MODEL_RUN_FIELDS)

    def replace(self, **changes) -> AmgParams:
        """A copy with some fields changed."""
        return replace(self, **changes)


# -- grids and crops (SAM's layout) -------------------------------------------------------------


def point_grid(n_per_side: int) -> np.ndarray:
    """``(n * n, 2)`` float64 ``(x, y)`` points in ``[0, 1]``, cell centres, x varying fastest."""
    n = int(n_per_side)
    centres = np.linspace(0.5 / n, 1.0 - 0.5 / n, n)
    xs, ys = np.meshgrid(centres, centres)
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)


def crop_boxes(image_hw: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """SAM's crops: the whole image, then ``(2 ** i) ** 2`` overlapping crops in layer ``i``.

    Returns
    -------
    boxes : list of [x0, y0, x1, y1]
        Exclusive ``x1, y1``.
    layers : list of int
        Crop layer of each box (0 for the whole image).
    """
    height, width = (int(s) for s in image_hw)
    boxes, layers = [[0, 0, width, height]], [0]
    short = min(height, width)
    for layer in range(1, int(n_layers) + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + width) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + height) / per_side))
        starts_x = [int((crop_w - overlap) * i) for i in range(per_side)]
        starts_y = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0 in starts_x:
            for y0 in starts_y:
                boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
                layers.append(layer)
    return boxes, layers


# -- per-batch work ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSettings:
    """What the per-batch function needs besides the model, embedding and points.

    Parameters
    ----------
    iou_floor : float
        Keep masks with predicted IoU ``> iou_floor`` (no filter when ``<= 0``).
    stability_floor : float
        Keep masks with stability ``>= stability_floor`` (no filter when ``<= 0``).
    stability_offset : float
    mask_threshold : float
        The model's logit threshold.
    crop_box : tuple of int
        ``(x0, y0, x1, y1)`` (exclusive ends) of the encoded crop in the image.
    image_hw : tuple of int
        ``(H, W)`` of the whole image.
    """

    iou_floor: float
    stability_floor: float
    stability_offset: float
    mask_threshold: float
    crop_box: tuple[int, int, int, int]
    image_hw: tuple[int, int]


@dataclass(frozen=True)
class BatchResult:
    """Masks of one batch of point prompts that passed the floors and the crop-edge filter.

    Parameters
    ----------
    n_masks : int
        Masks per prompt ``M`` (3 with multimask output).
    index : (K,) int64
        Row of each kept mask in the flattened ``(B * M)`` decoder output (prompt ``index // M``,
        mask ``index % M``), ascending.
    predicted_iou, stability : (K,) float32
    boxes : (K, 4) int64
        ``(x0, y0, x1, y1)`` inclusive, in the **crop** frame.
    areas : (K,) int64
        Foreground pixels of each mask.
    bits : (sum of box areas,) bool
        The masks cut to their boxes, raveled (C order) and concatenated in ``index`` order.
    """

    n_masks: int
    index: np.ndarray
    predicted_iou: np.ndarray
    stability: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    bits: np.ndarray


#: ``fn(model, embedding, points_xy (B, 2) float64 in the crop frame, settings) -> BatchResult``.
BatchFunction = Callable[[PromptableModel, Embedding, np.ndarray, BatchSettings], BatchResult]

_FAST_PATHS: list[tuple[Any, BatchFunction]] = []
_BATCH_SIZES: dict[Any, Callable[[Any], int]] = {}


def register_fast_path(key, fn: BatchFunction, batch_size: Callable[[Any], int] | None = None) -> None:
    """Register a faster per-batch function for a family of models.

    Parameters
    ----------
    key : type or str
        A model class (matches instances of it and its subclasses) or a model name.
    fn : callable
        Same contract and results as :func:`process_batch_numpy`. A later registration for the
        same key replaces the earlier one.
    batch_size : callable, optional
        ``batch_size(model) -> int``: points per call that suit ``fn`` (used when
        ``AmgParams.points_per_batch`` is None; speed and memory only, never the result).
    """
    unregister_fast_path(key)
    if batch_size is not None:
        _BATCH_SIZES[fn] = batch_size
    _FAST_PATHS.insert(0, (key, fn))


def unregister_fast_path(key) -> None:
    """Remove the fast path registered for ``key`` (no error if there is none)."""
    _FAST_PATHS[:] = [(k, f) for k, f in _FAST_PATHS if k is not key and k != key]


def find_fast_path(model) -> BatchFunction | None:
    """The registered fast path for ``model`` (name first, then class), or None."""
    name = getattr(model, "name", None)
    for key, fn in _FAST_PATHS:
        if isinstance(key, str) and key == name:
            return fn
    for key, fn in _FAST_PATHS:
        if isinstance(key, type) and isinstance(model, key):
            return fn
    return None


def near_crop_edge(boxes: np.ndarray, crop_box: Sequence[int], image_hw: tuple[int, int]) -> np.ndarray:
    """SAM's crop-edge test: ``(K,)`` bool, True where a box (crop frame, inclusive) touches an inner crop edge."""
    x0, y0 = int(crop_box[0]), int(crop_box[1])
    boxes = (np.asarray(boxes, dtype=np.int64).reshape(-1, 4) + np.array([x0, y0, x0, y0])).astype(np.float32)
    crop = np.asarray(crop_box, dtype=np.float32)
    whole = np.array([0, 0, image_hw[1], image_hw[0]], dtype=np.float32)
    near_crop = np.abs(boxes - crop) <= _CROP_EDGE_ATOL
    near_image = np.abs(boxes - whole) <= _CROP_EDGE_ATOL
    return np.any(near_crop & ~near_image, axis=1)


def box_bits(masks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Cut ``(K, H, W)`` bool masks to their inclusive ``(K, 4)`` boxes; the pieces raveled and concatenated."""
    masks = np.asarray(masks, dtype=bool)
    k, _, width = masks.shape
    if k == 0:
        return np.zeros(0, dtype=bool)
    boxes = np.asarray(boxes, dtype=np.int64)
    hs = boxes[:, 3] - boxes[:, 1] + 1
    ws = boxes[:, 2] - boxes[:, 0] + 1
    # One row segment per (mask, box row): gather whole rows with one fancy index, then the
    # columns of every row with a second one (no per-mask Python loop).
    row_owner = np.repeat(np.arange(k), hs)
    row_start = np.cumsum(hs) - hs
    rows = boxes[row_owner, 1] + (np.arange(row_owner.size) - row_start[row_owner])
    seg_w = ws[row_owner]
    col_owner = np.repeat(np.arange(row_owner.size), seg_w)
    col_start = np.cumsum(seg_w) - seg_w
    cols = boxes[row_owner[col_owner], 0] + (np.arange(col_owner.size) - col_start[col_owner])
    flat = (row_owner[col_owner] * masks.shape[1] + rows[col_owner]) * width + cols
    return masks.reshape(-1)[flat]


def masks_from_logits(logits: np.ndarray, settings: BatchSettings) -> tuple[np.ndarray, ...]:
    """Stability, floor, binarise, boxes, crop-edge filter for ``(K, H, W)`` upscaled logits (numpy).

    Returns
    -------
    keep : (K,) bool
        Masks that pass the stability floor and the crop-edge filter.
    stability : (k,) float32, boxes : (k, 4) int64, areas : (k,) int64, bits : bool
        For the kept masks, see :class:`BatchResult`.
    """
    hi = np.float32(settings.mask_threshold + settings.stability_offset)
    lo = np.float32(settings.mask_threshold - settings.stability_offset)
    inter = np.count_nonzero(logits > hi, axis=(1, 2))
    union = np.count_nonzero(logits > lo, axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        stability = inter.astype(np.float32) / union.astype(np.float32)
    keep = np.ones(len(logits), dtype=bool)
    if settings.stability_floor > 0:
        keep &= stability >= np.float32(settings.stability_floor)
    masks = logits[keep] > np.float32(settings.mask_threshold)
    boxes = mask_to_box_xyxy(masks)
    edge = near_crop_edge(boxes, settings.crop_box, settings.image_hw)
    kept = np.flatnonzero(keep)
    keep[kept[edge]] = False
    masks, boxes = masks[~edge], boxes[~edge]
    areas = np.count_nonzero(masks, axis=(1, 2)).astype(np.int64)
    return keep, stability[keep], boxes, areas, box_bits(masks, boxes)


def process_batch_numpy(model: PromptableModel, embedding: Embedding, points: np.ndarray, settings: BatchSettings) -> BatchResult:
    """Decode one batch of point prompts and keep the masks passing the floors (generic numpy path).

    Parameters
    ----------
    model : PromptableModel
    embedding : Embedding
        Of the crop ``settings.crop_box``.
    points : (B, 2) float64
        ``(x, y)`` point prompts in the crop frame (pixels).
    settings : BatchSettings

    Returns
    -------
    BatchResult
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    n = len(points)
    out = model.decode(embedding, points[:, None, :], np.ones((n, 1), dtype=np.int32), multimask_output=True)
    iou = np.asarray(out.iou_predictions, dtype=np.float32).reshape(n, -1)
    n_masks = iou.shape[1]
    low = np.asarray(out.low_res_logits)
    low = low.reshape(n * n_masks, 1, *low.shape[-2:])
    flat_iou = iou.reshape(-1)
    if settings.iou_floor > 0:
        candidates = np.flatnonzero(flat_iou > np.float32(settings.iou_floor))
    else:
        candidates = np.arange(n * n_masks)
    height, width = embedding.original_size
    chunk = max(1, _UPSCALE_PIXELS // max(1, height * width))
    parts = []
    for start in range(0, len(candidates), chunk):
        rows = candidates[start : start + chunk]
        logits = np.asarray(model.upscale(embedding, low[rows]))[:, 0]
        keep, stability, boxes, areas, bits = masks_from_logits(logits, settings)
        parts.append((rows[keep], stability, boxes, areas, bits))
    return _join_batch(n_masks, flat_iou, parts)


def _join_batch(n_masks: int, flat_iou: np.ndarray, parts: list) -> BatchResult:
    if not parts:
        return BatchResult(
            n_masks,
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros(0, np.float32),
            np.zeros((0, 4), np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, bool),
        )
    index, stability, boxes, areas, bits = (np.concatenate(p) for p in zip(*parts))
    index = index.astype(np.int64)
    return BatchResult(n_masks, index, flat_iou[index], stability, boxes.reshape(-1, 4), areas, bits)


# -- non-maximum suppression and SAM's small-region clean-up ------------------------------------


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy box NMS with torchvision's arithmetic and tie order.

    Parameters
    ----------
    boxes : (N, 4)
        ``(x0, y0, x1, y1)``; computed in float32 like ``torchvision.ops.nms`` on float boxes
        (``area = (x1 - x0) * (y1 - y0)``).
    scores : (N,)
        Higher first; equal scores keep their input order (stable sort).
    iou_threshold : float
        A box is suppressed by a better kept one when their IoU is ``> iou_threshold``.

    Returns
    -------
    (K,) int64
        Indices of the kept boxes, best score first.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores).reshape(-1)
    n = len(boxes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = (np.ascontiguousarray(c) for c in boxes[order].T)
    areas = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    thr = float(iou_threshold)
    zero = np.float32(0)
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = np.flatnonzero(~suppressed[i + 1 :]) + i + 1
        if rest.size == 0:
            break
        w = np.maximum(zero, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        h = np.maximum(zero, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap = inter / (areas[i] + areas[rest] - inter)
        # torchvision compares the float IoU with the threshold as a double
        suppressed[rest[overlap.astype(np.float64) > thr]] = True
    return order[np.asarray(keep, dtype=np.int64)]


_EIGHT = np.ones((3, 3), dtype=bool)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """SAM's ``remove_small_regions`` with scipy: fill small holes or remove small islands (8-connected).

    Parameters
    ----------
    mask : (H, W) bool
    area_thresh : float
        Regions with fewer pixels are changed.
    mode : {"holes", "islands"}
        ``"holes"``: background components (including the one touching the border) smaller than
        ``area_thresh`` become foreground. ``"islands"``: foreground components smaller than it
        are removed; if all are small, the largest is kept.

    Returns
    -------
    mask : (H, W) bool
    changed : bool
    """
    mask = np.asarray(mask, dtype=bool)
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    work = ~mask if mode == "holes" else mask
    lab, n = ndi.label(work, structure=_EIGHT)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    small = sizes < area_thresh
    if not small.any():
        return mask, False
    if mode == "holes":
        fill = np.concatenate([[True], small])
    else:
        fill = np.concatenate([[False], ~small])
        if not fill.any():
            fill[int(np.argmax(sizes)) + 1] = True
    return fill[lab], True


def _small_regions_in_box(piece: np.ndarray, box: np.ndarray, image_hw: tuple[int, int], area_thresh: float):
    """SAM's holes-then-islands clean-up of one mask given as its box crop.

    Equal to running :func:`remove_small_regions` on the full ``(H, W)`` mask, but on the box
    (plus a one-pixel ring standing for the background outside it, weighted with its true area).

    Returns
    -------
    full_or_piece : bool array
        The new mask: a piece in ``box`` frame, or a full ``(H, W)`` mask when the fill reached
        outside the box (``is_full`` True).
    is_full : bool
    changed : bool
    """
    height, width = image_hw
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = piece.shape
    top, bottom, left, right = int(y0 > 0), int(y1 < height - 1), int(x0 > 0), int(x1 < width - 1)
    pad = ((top, bottom), (left, right))
    background = np.pad(~piece, pad, constant_values=True)
    weights = np.pad(np.ones(piece.shape), pad, constant_values=0.0)
    outside = height * width - h * w
    if outside:
        if top and bottom and not (left or right):  # box spans the width: two pieces outside
            weights[0, 0], weights[-1, 0] = y0 * width, (height - 1 - y1) * width
        elif left and right and not (top or bottom):
            weights[0, 0], weights[0, -1] = x0 * height, (width - 1 - x1) * height
        else:
            ring = np.argwhere(weights == 0)[0]
            weights[ring[0], ring[1]] = outside
    lab, n = ndi.label(background, structure=_EIGHT)
    sizes = np.bincount(lab.ravel(), weights=weights.ravel(), minlength=n + 1)[1:]
    small = sizes < area_thresh
    changed = bool(small.any())
    if changed:
        fill = np.concatenate([[True], small])
        is_ring = np.pad(np.zeros(piece.shape, dtype=bool), pad, constant_values=True)
        ring_labels = np.unique(lab[is_ring])
        ring_labels = ring_labels[ring_labels > 0]
        if small[ring_labels - 1].any():
            # the fill reaches outside the box: do it on the full mask (rare)
            full = np.zeros((height, width), dtype=bool)
            full[y0 : y1 + 1, x0 : x1 + 1] = piece
            full, _ = remove_small_regions(full, area_thresh, "holes")
            full, _ = remove_small_regions(full, area_thresh, "islands")
            return full, True, True
        inner = lab[top : top + h, left : left + w]
        piece = fill[inner]
    piece, islands_changed = remove_small_regions(piece, area_thresh, "islands")
    return piece, False, changed or islands_changed


# -- candidates and results ----------------------------------------------------------------------


class _MaskStore:
    """Masks stored as their box crops: ``bits`` (concatenated, raveled) + ``boxes`` (inclusive)."""

    image_shape: tuple[int, int]
    boxes: np.ndarray
    bits: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    def mask_crop(self, i: int) -> np.ndarray:
        """``(h, w)`` bool mask of object ``i`` inside its box (a read-only view)."""
        x0, y0, x1, y1 = (int(v) for v in self.boxes[i])
        view = self.bits[self.offsets[i] : self.offsets[i + 1]].reshape(y1 - y0 + 1, x1 - x0 + 1)
        view.flags.writeable = False
        return view

    def mask(self, i: int) -> np.ndarray:
        """Full ``(H, W)`` bool mask of object ``i``."""
        out = np.zeros(self.image_shape, dtype=bool)
        x0, y0, x1, y1 = (int(v) for v in self.boxes[i])
        out[y0 : y1 + 1, x0 : x1 + 1] = self.mask_crop(i)
        return out


def _offsets(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    sizes = (boxes[:, 3] - boxes[:, 1] + 1) * (boxes[:, 2] - boxes[:, 0] + 1)
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _pack(pieces: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([p.reshape(-1) for p in pieces]) if pieces else np.zeros(0, dtype=bool)


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = np.array(boxes, copy=True)
    out[..., 2] -= out[..., 0]
    out[..., 3] -= out[..., 1]
    return out


@dataclass(frozen=True, eq=False)
class CandidateSet(_MaskStore):
    """Every mask of one model run that passed the floors, in SAM's order (crop, prompt, mask).

    Attributes
    ----------
    params : AmgParams
        Parameters of the run (its :data:`MODEL_RUN_FIELDS` are what :meth:`filter` can reuse).
    image_shape : (H, W)
    iou_floor, stability_floor : float
        Lowest thresholds :meth:`filter` accepts.
    crop_boxes : (C, 4) int64
        ``(x0, y0, x1, y1)`` of the crops, exclusive ends; crop 0 is the whole image.
    crop_index : (N,) int64
    predicted_iou, stability_score : (N,) float32
    boxes : (N, 4) int64
        Inclusive ``(x0, y0, x1, y1)`` in the image.
    areas : (N,) int64
    point_coords : (N, 2) float64
        ``(x, y)`` prompt of each mask in the image.
    bits, offsets
        Masks cut to their boxes (see :meth:`mask_crop`, :meth:`mask`).
    """

    params: AmgParams
    image_shape: tuple[int, int]
    iou_floor: float
    stability_floor: float
    crop_boxes: np.ndarray
    crop_index: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    point_coords: np.ndarray
    bits: np.ndarray
    offsets: np.ndarray

    @property
    def nbytes(self) -> int:
        """Memory held by the candidates, in bytes."""
        return int(sum(np.asarray(getattr(self, f.name)).nbytes for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)))

    def check(self, params: AmgParams) -> None:
        """Raise ``UserInputError`` if ``params`` need a new model run rather than a re-filter."""
        if params.model_run_key() != self.params.model_run_key():
            changed = [n for n in MODEL_RUN_FIELDS if getattr(params, n) != getattr(self.params, n)]
            raise UserInputError(
                "These settings need the automatic segmentation to run again: " + ", ".join(changed) + "."
            )
        if self.iou_floor > 0 and params.pred_iou_thresh < self.iou_floor:
            raise UserInputError(
                f"The predicted IoU threshold {params.pred_iou_thresh} is below {self.iou_floor}, the lowest "
                "value of this run; run the automatic segmentation again to use it."
            )
        if self.stability_floor > 0 and params.stability_score_thresh < self.stability_floor:
            raise UserInputError(
                f"The stability threshold {params.stability_score_thresh} is below {self.stability_floor}, the "
                "lowest value of this run; run the automatic segmentation again to use it."
            )

    def filter(self, params: AmgParams | None = None, **changes) -> AmgResult:
        """Objects for ``params`` (default: the run's parameters, with ``changes``), without the model.

        Thresholds, box NMS within each crop, NMS between crops (smaller crops win), SAM's
        ``min_mask_region_area`` clean-up, microscopy clean-up, ``max_mask_region_area``.

        Raises
        ------
        UserInputError
            ``params`` need a new model run (see :meth:`check`).
        """
        params = (params or self.params).replace(**changes) if changes else (params or self.params)
        self.check(params)
        keep = np.ones(len(self), dtype=bool)
        if params.pred_iou_thresh > 0:
            keep &= self.predicted_iou > np.float32(params.pred_iou_thresh)
        if params.stability_score_thresh > 0:
            keep &= self.stability_score >= np.float32(params.stability_score_thresh)
        # NMS within each crop (crop-frame boxes: integer shifts do not change the arithmetic)
        selected = []
        for c in range(len(self.crop_boxes)):
            idx = np.flatnonzero(keep & (self.crop_index == c))
            selected.append(idx[box_nms(self.boxes[idx], self.predicted_iou[idx], params.box_nms_thresh)])
        sel = np.concatenate(selected) if selected else np.zeros(0, np.int64)
        if len(self.crop_boxes) > 1 and sel.size:
            crops = self.crop_boxes[self.crop_index[sel]]
            crop_area = ((crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])).astype(np.float32)
            sel = sel[box_nms(self.boxes[sel], np.float32(1) / crop_area, params.crop_nms_thresh)]

        boxes = self.boxes[sel]
        areas = self.areas[sel]
        pieces = [self.mask_crop(int(i)) for i in sel]
        if params.min_mask_region_area > 0 and sel.size:
            boxes, pieces, order = _sam_postprocess(
                pieces, boxes, self.image_shape, params.min_mask_region_area, max(params.box_nms_thresh, params.crop_nms_thresh)
            )
            sel = sel[order]
            areas = np.array([np.count_nonzero(p) for p in pieces], dtype=np.int64)
        if params.fill_holes or params.min_fragment_area > 1 or params.keep_largest_component:
            boxes, pieces, alive = _microscopy_postprocess(pieces, boxes, params)
            sel = sel[alive]
            areas = np.array([np.count_nonzero(p) for p in pieces], dtype=np.int64)
        if params.max_mask_region_area is not None:
            keep_i = np.flatnonzero(areas <= int(params.max_mask_region_area))
            sel, boxes, areas = sel[keep_i], boxes[keep_i], areas[keep_i]
            pieces = [pieces[i] for i in keep_i]
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        return AmgResult(
            params=params,
            image_shape=self.image_shape,
            predicted_iou=self.predicted_iou[sel],
            stability_score=self.stability_score[sel],
            boxes=boxes,
            areas=areas,
            point_coords=self.point_coords[sel],
            crop_boxes=self.crop_boxes[self.crop_index[sel]].reshape(-1, 4),
            bits=_pack(pieces),
            offsets=_offsets(boxes),
        )


def _sam_postprocess(pieces, boxes, image_shape, min_area, nms_thresh):
    """SAM's ``postprocess_small_regions`` on box crops: returns new boxes, pieces and the kept order."""
    new_pieces, new_boxes, unchanged = [], [], []
    for piece, box in zip(pieces, boxes):
        out, is_full, changed = _small_regions_in_box(piece, box, image_shape, min_area)
        unchanged.append(0.0 if changed else 1.0)
        if not changed:
            new_boxes.append(np.asarray(box, dtype=np.int64))
            new_pieces.append(piece)
            continue
        local = mask_to_box_xyxy(out)  # (0, 0, 0, 0) when empty, as in SAM
        new_pieces.append(out[local[1] : local[3] + 1, local[0] : local[2] + 1])
        if is_full or not out.any():
            new_boxes.append(local)
        else:
            new_boxes.append(local + np.array([box[0], box[1], box[0], box[1]], dtype=np.int64))
    new_boxes = np.asarray(new_boxes, dtype=np.int64).reshape(-1, 4)
    order = box_nms(new_boxes, np.asarray(unchanged, dtype=np.float32), nms_thresh)
    return new_boxes[order], [new_pieces[i] for i in order], order


def _microscopy_postprocess(pieces, boxes, params: AmgParams):
    """Fill holes / remove fragments / keep the largest piece, per object on its box crop."""
    new_pieces, new_boxes, alive = [], [], []
    for i, (piece, box) in enumerate(zip(pieces, boxes)):
        out = postprocess_mask(
            piece,
            fill_holes=params.fill_holes,
            min_fragment_area=params.min_fragment_area,
            keep_largest=params.keep_largest_component,
        )
        if not out.any():
            continue
        b = mask_to_box_xyxy(out)
        new_pieces.append(out[b[1] : b[3] + 1, b[0] : b[2] + 1])
        new_boxes.append(b + np.array([box[0], box[1], box[0], box[1]]))
        alive.append(i)
    return np.asarray(new_boxes, dtype=np.int64).reshape(-1, 4), new_pieces, np.asarray(alive, dtype=np.int64)


@dataclass(frozen=True)
class AmgObject:
    """One object of an :class:`AmgResult`, with SAM's record fields.

    ``bbox`` and ``crop_box`` are ``(x, y, w, h)`` as SAM gives them; ``segmentation`` is the full
    ``(H, W)`` bool mask, built on demand.
    """

    result: AmgResult = field(repr=False)
    index: int
    area: int
    predicted_iou: float
    stability_score: float
    bbox: tuple[int, int, int, int]
    point_coords: tuple[float, float]
    crop_box: tuple[int, int, int, int]

    @property
    def segmentation(self) -> np.ndarray:
        """``(H, W)`` bool mask."""
        return self.result.mask(self.index)


@dataclass(frozen=True, eq=False)
class AmgResult(_MaskStore):
    """Objects found by automatic segmentation, in SAM's output order.

    Attributes
    ----------
    params : AmgParams
    image_shape : (H, W)
    predicted_iou, stability_score : (N,) float32
    boxes : (N, 4) int64
        Inclusive ``(x0, y0, x1, y1)``.
    areas : (N,) int64
    point_coords : (N, 2) float64
        ``(x, y)``.
    crop_boxes : (N, 4) int64
        ``(x0, y0, x1, y1)`` (exclusive ends) of the crop each object came from.
    """

    params: AmgParams
    image_shape: tuple[int, int]
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    point_coords: np.ndarray
    crop_boxes: np.ndarray
    bits: np.ndarray
    offsets: np.ndarray
    _painted: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def objects(self) -> list[AmgObject]:
        """One :class:`AmgObject` per object."""
        bbox = _xywh(self.boxes)
        crop = _xywh(self.crop_boxes)
        return [
            AmgObject(
                self,
                i,
                int(self.areas[i]),
                float(self.predicted_iou[i]),
                float(self.stability_score[i]),
                tuple(int(v) for v in bbox[i]),
                (float(self.point_coords[i, 0]), float(self.point_coords[i, 1])),
                tuple(int(v) for v in crop[i]),
            )
            for i in range(len(self))
        ]

    def to_sam_records(self) -> list[dict]:
        """SAM's ``generate`` output (``output_mode="binary_mask"``): a list of dicts."""
        return [
            {
                "segmentation": o.segmentation,
                "area": o.area,
                "bbox": list(o.bbox),
                "predicted_iou": o.predicted_iou,
                "point_coords": [list(o.point_coords)],
                "stability_score": o.stability_score,
                "crop_box": list(o.crop_box),
            }
            for o in self.objects
        ]

    def _paint(self, shape) -> tuple[np.ndarray, np.ndarray]:
        shape = tuple(int(s) for s in (shape or self.image_shape))
        if shape != tuple(self.image_shape):
            raise ValueError(f"the result is for an image of shape {self.image_shape}, not {shape}")
        if shape not in self._painted:
            order = np.lexsort((-self.stability_score.astype(np.float64), -self.predicted_iou.astype(np.float64)))

            class _Lazy(Sequence):
                def __len__(_self):
                    return len(order)

                def __getitem__(_self, k):
                    return self.mask(int(order[k]))

            # ``order`` is best first, so scores decreasing with position make the best win
            labels, kept = instance_labels_from_masks(_Lazy(), -np.arange(len(order), dtype=np.float64), shape)
            lut = np.zeros(len(order) + 1, dtype=np.uint32)
            lut[kept] = np.arange(1, len(kept) + 1, dtype=np.uint32)
            self._painted[shape] = (lut[labels], order[kept - 1])
        return self._painted[shape]

    def to_label_image(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """``(H, W)`` uint32 labels without overlaps: where objects overlap the higher predicted IoU wins.

        Ids are ``1..K`` by decreasing predicted IoU (ties: stability); objects hidden completely
        by better ones get no id.
        """
        return self._paint(shape)[0].copy()

    def object_table(self, shape: tuple[int, int] | None = None, prompt: str = "everything") -> dict[str, list]:
        """Per-label table of :meth:`to_label_image` (columns :data:`~napari_sam_micro.core.labels.OBJECT_COLUMNS`).

        ``area`` and the half-open ``bbox_*`` are those of the painted label; ``point_x`` /
        ``point_y`` (the prompt) are added after the standard columns.
        """
        labels, objects = self._paint(shape)
        n = len(objects)
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        slices = ndi.find_objects(labels, max_label=n)
        table = {c: [] for c in (*OBJECT_COLUMNS, "point_x", "point_y")}
        for k, (obj, sl) in enumerate(zip(objects, slices)):
            table["index"].append(k + 1)
            table["area"].append(int(areas[k]))
            table["predicted_iou"].append(float(self.predicted_iou[obj]))
            table["stability_score"].append(float(self.stability_score[obj]))
            table["prompt"].append(prompt)
            table["bbox_y0"].append(int(sl[0].start))
            table["bbox_x0"].append(int(sl[1].start))
            table["bbox_y1"].append(int(sl[0].stop))
            table["bbox_x1"].append(int(sl[1].stop))
            table["point_x"].append(float(self.point_coords[obj, 0]))
            table["point_y"].append(float(self.point_coords[obj, 1]))
        return table


# -- the model run ---------------------------------------------------------------------------------


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(
            f"Automatic segmentation needs a normalised (height, width, 3) image; got shape {image.shape}."
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError("The image is empty.")
    return image


def _batch_size(model, params: AmgParams, process=None) -> int:
    if params.points_per_batch is not None:
        return int(params.points_per_batch)
    preferred = _BATCH_SIZES.get(process)
    if preferred is not None:
        return max(1, int(preferred(model)))
    return 16 if str(getattr(model, "device", "cpu")).startswith("cpu") else 256


def _crop_key(cache_key: str, crop: Sequence[int], whole: bool) -> str:
    if whole:
        return cache_key
    import hashlib

    return hashlib.blake2b(f"{cache_key}|crop={list(crop)}".encode(), digest_size=16).hexdigest()


def generate_candidates(
    model: PromptableModel,
    image: np.ndarray,
    params: AmgParams | None = None,
    cache=None,
    cache_key: str | None = None,
    iou_floor: float = CANDIDATE_IOU_FLOOR,
    stability_floor: float = CANDIDATE_STABILITY_FLOOR,
    use_fast_path: bool = True,
) -> Job[CandidateSet]:
    """Run the model over the point grid (and crops) once; yields progress, returns a :class:`CandidateSet`.

    Parameters
    ----------
    model : PromptableModel
    image : (H, W, 3) float32 in [0, 1]
        From :func:`napari_sam_micro.core.preprocess.normalize_image`.
    params : AmgParams, optional
        Defaults to ``AmgParams()``. The floors kept are ``min(iou_floor, pred_iou_thresh)`` and
        ``min(stability_floor, stability_score_thresh)``.
    cache : EmbeddingCache-like, optional
        ``get(key)`` / ``put(key, embedding)``; embeddings of the image and its crops are looked
        up and stored there.
    cache_key : str, optional
        Key of the whole image's embedding (the one interactive prompting uses, e.g.
        :func:`~napari_sam_micro.core.cache.embedding_key`); crop keys are derived from it. By
        default a digest of ``image`` and the model name.
    iou_floor, stability_floor : float
        Candidate floors (see the module docstring).
    use_fast_path : bool
        Use a registered fast path for the model (:func:`register_fast_path`) when there is one.

    Yields
    ------
    Progress
        One per encoded crop and per decoded batch; closing the generator stops the work.

    Returns
    -------
    CandidateSet
    """
    params = params or AmgParams()
    image = _check_image(image)
    height, width = int(image.shape[0]), int(image.shape[1])
    iou_floor = min(float(iou_floor), float(params.pred_iou_thresh))
    stability_floor = min(float(stability_floor), float(params.stability_score_thresh))
    boxes, layers = crop_boxes((height, width), params.crop_n_layers, params.crop_overlap_ratio)
    grids = [
        point_grid(int(params.points_per_side / (params.crop_n_points_downscale_factor**layer)))
        for layer in range(params.crop_n_layers + 1)
    ]
    process = (find_fast_path(model) if use_fast_path else None) or process_batch_numpy
    batch = _batch_size(model, params, process)
    if cache is not None and cache_key is None:
        from .cache import content_digest, embedding_key

        cache_key = embedding_key(content_digest(image), model.name, "normalized-rgb-float32")

    n_batches = [math.ceil(len(grids[layer]) / batch) for layer in layers]
    total = len(boxes) + sum(n_batches)
    done = 0
    yield Progress(done, total, "Automatic segmentation: starting")
    collected = []
    for c, (crop, layer) in enumerate(zip(boxes, layers)):
        x0, y0, x1, y1 = crop
        key = _crop_key(cache_key, crop, c == 0) if cache is not None else None
        embedding = _crop_embedding(model, image, crop, cache, key)
        done += 1
        yield Progress(done, total, f"Encoded crop {c + 1} of {len(boxes)}")
        points = grids[layer] * np.array([[x1 - x0, y1 - y0]], dtype=np.float64)
        settings = BatchSettings(
            iou_floor=iou_floor,
            stability_floor=stability_floor,
            stability_offset=float(params.stability_score_offset),
            mask_threshold=float(model.mask_threshold),
            crop_box=(int(x0), int(y0), int(x1), int(y1)),
            image_hw=(height, width),
        )
        for b in range(n_batches[c]):
            pts = points[b * batch : (b + 1) * batch]
            collected.append(_batch_rows(process(model, embedding, pts, settings), c, pts, crop))
            done += 1
            yield Progress(done, total, f"Crop {c + 1} of {len(boxes)}: {min((b + 1) * batch, len(points))} of {len(points)} points")
    return _candidate_set(params, (height, width), (iou_floor, stability_floor), boxes, collected)


def _crop_embedding(model: PromptableModel, image: np.ndarray, crop, cache, key: str | None):
    """The embedding of ``image``'s crop ``(x0, y0, x1, y1)``: from ``cache`` under ``key``, else encoded (and kept)."""
    embedding = cache.get(key) if key is not None else None
    if embedding is None:
        x0, y0, x1, y1 = crop
        embedding = model.encode(np.ascontiguousarray(image[y0:y1, x0:x1]))
        if key is not None:
            cache.put(key, embedding)
    return embedding


def _batch_rows(res, c: int, pts: np.ndarray, crop) -> tuple:
    """One decoded batch of crop ``c`` as candidate columns in image coordinates (see :func:`_candidate_set`)."""
    x0, y0 = int(crop[0]), int(crop[1])
    prompt = res.index // res.n_masks
    shift = np.array([x0, y0, x0, y0], dtype=np.int64)
    return (
        np.full(len(res.index), c, dtype=np.int64),
        res.predicted_iou.astype(np.float32),
        res.stability.astype(np.float32),
        res.boxes.astype(np.int64).reshape(-1, 4) + shift,
        res.areas.astype(np.int64),
        pts[prompt] + np.array([x0, y0], dtype=np.float64),
        res.bits,
    )


def _candidate_set(params: AmgParams, image_hw, floors, crop_boxes_xyxy, collected: list) -> CandidateSet:
    """A :class:`CandidateSet` from the batches' columns (crop index, IoU, stability, boxes, areas, points, bits)."""
    if collected:
        crop_index, iou, stability, mboxes, areas, pts, bits = (np.concatenate(a) for a in zip(*collected))
    else:
        crop_index, iou, stability, areas, bits = (np.zeros(0, dt) for dt in (np.int64, np.float32, np.float32, np.int64, bool))
        mboxes, pts = np.zeros((0, 4), np.int64), np.zeros((0, 2), np.float64)
    mboxes = mboxes.reshape(-1, 4)
    return CandidateSet(
        params=params,
        image_shape=tuple(image_hw),
        iou_floor=floors[0],
        stability_floor=floors[1],
        crop_boxes=np.asarray(crop_boxes_xyxy, dtype=np.int64).reshape(-1, 4),
        crop_index=crop_index,
        predicted_iou=iou,
        stability_score=stability,
        boxes=mboxes,
        areas=areas,
        point_coords=pts.reshape(-1, 2),
        bits=bits,
        offsets=_offsets(mboxes),
    )


def automatic_segmentation(model: PromptableModel, image: np.ndarray, params: AmgParams | None = None, **kwargs) -> Job[AmgResult]:
    """:func:`generate_candidates` then :meth:`CandidateSet.filter` with the same ``params``."""
    candidates = yield from generate_candidates(model, image, params, **kwargs)
    return candidates.filter(params or AmgParams())


def labels_from_result(result: AmgResult, min_area: int = 0) -> tuple[np.ndarray, dict]:
    """Non-overlapping label image and object table of an automatic-segmentation result.

    Parameters
    ----------
    result : AmgResult
        From :meth:`CandidateSet.filter`.
    min_area : int
        Objects with fewer painted pixels are removed (0 keeps all).

    Returns
    -------
    labels : (H, W) uint32
        Ids ``1..K`` by decreasing predicted IoU; where objects overlap the higher predicted IoU
        wins.
    table : dict of str to list
        :data:`~napari_sam_micro.core.labels.OBJECT_COLUMNS` (+ ``point_x``, ``point_y``) per id.
    """
    labels = result.to_label_image()
    table = result.object_table()
    if min_area > 0 and table["index"]:
        areas = np.asarray(table["area"])
        keep = np.flatnonzero(areas >= int(min_area))
        lut = np.zeros(len(areas) + 1, dtype=np.uint32)
        lut[np.asarray(table["index"])[keep]] = np.arange(1, keep.size + 1, dtype=np.uint32)
        labels = lut[labels]
        table = {c: [v[k] for k in keep] for c, v in table.items()}
        table["index"] = list(range(1, keep.size + 1))
    return labels, table
