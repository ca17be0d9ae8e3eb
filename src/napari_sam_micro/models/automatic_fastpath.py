"""Torch fast path of automatic mask generation for SAM-family models.

:func:`sam_family_batch` does what :func:`napari_sam_micro.core.automatic.process_batch_numpy`
does for one batch of point prompts (decode, IoU floor on the low-resolution output, upscaling
only the survivors, stability floor, binarisation, boxes, crop-edge filter, cutting masks to their
boxes) but keeps every tensor on the model's device until the compact result, and skips the
numpy round trip of the decoder output. The arithmetic is SAM's (same interpolation, same float32
comparisons), so the results are identical to the numpy path.

Importing this module registers the fast path for
:class:`~napari_sam_micro.models.sam_family.SamFamilyAdapter` (and so for every adapter derived
from it: SAM, the tiny test model, LiteMedSAM).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.automatic import BatchResult, BatchSettings, near_crop_edge, register_fast_path
from ..core.model_api import Embedding
from .sam_family import SamFamilyAdapter

__all__ = ["sam_family_batch", "masks_to_boxes_torch", "box_bits_torch"]

#: Pixels (masks x height x width) upscaled at once.
_UPSCALE_PIXELS = 1 << 23


def masks_to_boxes_torch(masks: torch.Tensor) -> torch.Tensor:
    """``(K, H, W)`` bool -> ``(K, 4)`` int64 inclusive ``(x0, y0, x1, y1)``; ``(0, 0, 0, 0)`` when empty."""
    k, h, w = masks.shape
    rows = masks.any(dim=2)  # (K, H)
    cols = masks.any(dim=1)  # (K, W)
    y0 = rows.to(torch.uint8).argmax(dim=1)
    y1 = h - 1 - rows.flip(1).to(torch.uint8).argmax(dim=1)
    x0 = cols.to(torch.uint8).argmax(dim=1)
    x1 = w - 1 - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.int64)
    return boxes * rows.any(dim=1, keepdim=True)


def box_bits_torch(masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Cut ``(K, H, W)`` bool masks to their inclusive boxes, raveled and concatenated (on the device)."""
    k, h, w = masks.shape
    dev = masks.device
    if k == 0:
        return torch.zeros(0, dtype=torch.bool, device=dev)
    hs = boxes[:, 3] - boxes[:, 1] + 1
    ws = boxes[:, 2] - boxes[:, 0] + 1
    row_owner = torch.repeat_interleave(torch.arange(k, device=dev), hs)
    row_start = torch.cumsum(hs, 0) - hs
    rows = boxes[row_owner, 1] + (torch.arange(row_owner.numel(), device=dev) - row_start[row_owner])
    seg_w = ws[row_owner]
    seg = torch.repeat_interleave(torch.arange(row_owner.numel(), device=dev), seg_w)
    seg_start = torch.cumsum(seg_w, 0) - seg_w
    cols = boxes[row_owner[seg], 0] + (torch.arange(seg.numel(), device=dev) - seg_start[seg])
    flat = (row_owner[seg] * h + rows[seg]) * w + cols
    return masks.reshape(-1)[flat]


@torch.inference_mode()
def sam_family_batch(
    model: SamFamilyAdapter, embedding: Embedding, points: np.ndarray, settings: BatchSettings
) -> BatchResult:
    """One batch of automatic mask generation on the model's device; see ``core.automatic.process_batch_numpy``."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    n = len(points)
    features = model._features(embedding)
    low, iou = model.decode_torch(
        features, embedding.original_size, points[:, None, :], np.ones((n, 1), dtype=np.int32), None, None, True
    )
    n_masks = int(iou.shape[1])
    flat_iou = iou.reshape(-1).float()
    low = low.reshape(n * n_masks, 1, *low.shape[-2:]).float()
    if settings.iou_floor > 0:
        candidates = torch.nonzero(flat_iou > settings.iou_floor).reshape(-1)
    else:
        candidates = torch.arange(n * n_masks, device=flat_iou.device)
    height, width = embedding.original_size
    chunk = max(1, _UPSCALE_PIXELS // max(1, height * width))
    hi = settings.mask_threshold + settings.stability_offset
    lo = settings.mask_threshold - settings.stability_offset
    parts = []
    for start in range(0, int(candidates.numel()), chunk):
        rows = candidates[start : start + chunk]
        logits = model.upscale_torch(low[rows], embedding.input_size, embedding.original_size)[:, 0]
        inter = (logits > hi).sum(dim=(1, 2), dtype=torch.int32)
        union = (logits > lo).sum(dim=(1, 2), dtype=torch.int32)
        stability = inter.float() / union.float()
        keep = torch.ones_like(stability, dtype=torch.bool)
        if settings.stability_floor > 0:
            keep &= stability >= settings.stability_floor
        masks = logits[keep] > settings.mask_threshold
        boxes = masks_to_boxes_torch(masks)
        edge = torch.from_numpy(near_crop_edge(boxes.cpu().numpy(), settings.crop_box, settings.image_hw)).to(masks.device)
        masks, boxes = masks[~edge], boxes[~edge]
        kept_rows = rows[keep][~edge]
        areas = masks.sum(dim=(1, 2), dtype=torch.int64)
        bits = box_bits_torch(masks, boxes)
        parts.append(
            (
                kept_rows.cpu().numpy(),
                stability[keep][~edge].cpu().numpy(),
                boxes.cpu().numpy(),
                areas.cpu().numpy(),
                bits.cpu().numpy(),
            )
        )
    flat_iou_np = flat_iou.cpu().numpy()
    if not parts:
        empty = np.zeros(0, np.int64)
        return BatchResult(
            n_masks, empty, np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 4), np.int64), empty, np.zeros(0, bool)
        )
    index, stability, boxes, areas, bits = (np.concatenate(p) for p in zip(*parts))
    index = index.astype(np.int64)
    return BatchResult(n_masks, index, flat_iou_np[index], stability, boxes.reshape(-1, 4), areas, bits)


register_fast_path(SamFamilyAdapter, sam_family_batch)
