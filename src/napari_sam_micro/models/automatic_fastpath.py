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

__all__ = ["sam_family_batch", "preferred_batch_size", "masks_to_boxes_torch", "box_bits_torch"]

#: Pixels (masks x height x width) upscaled at once.
_UPSCALE_PIXELS = 1 << 23
#: Memory of one ``(B, N, C)`` float32 tensor of per-prompt image tokens in phase 1 (sets the batch).
_PHASE1_BYTES = 1 << 27
#: Prompts whose low-resolution masks (phase 2 of the decoder) are computed at once.
_PHASE2_PROMPTS = 32


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


def _two_phase_decoder(model: SamFamilyAdapter, embedding: Embedding):
    """The :class:`TwoPhaseDecoder` of ``embedding`` (built once per embedding, kept on the model)."""
    return model.two_phase_decoder(model._features(embedding))


def _decode_two_phase(model: SamFamilyAdapter, embedding: Embedding, points: np.ndarray, iou_floor: float):
    """Phase 1 for all prompts, phase 2 only for prompts with a mask whose IoU passes ``iou_floor``.

    Returns
    -------
    low : (K, 1, h, w) float32 tensor
        Low-resolution logits of the candidate masks (rows of ``candidates``).
    iou : (B, M) float32 tensor
    candidates : (K,) int64 tensor
        Rows ``prompt * M + mask`` of the flattened ``(B * M)`` output whose IoU passes the floor
        (all rows when ``iou_floor <= 0``), ascending.
    """
    decoder = _two_phase_decoder(model, embedding)
    n = len(points)
    dev = model.device
    if decoder is None:  # not SAM's layout: the adapter's one-phase decoder
        low, iou = model.decode_torch(
            model._features(embedding), embedding.original_size, points[:, None, :], np.ones((n, 1), np.int32), None, None, True
        )
        flat = iou.reshape(-1).float()
        cand = torch.nonzero(flat > iou_floor).reshape(-1) if iou_floor > 0 else torch.arange(flat.numel(), device=flat.device)
        return low.reshape(-1, 1, *low.shape[-2:])[cand].float(), iou.float(), cand
    coords = torch.as_tensor(model._scale_coords(points[:, None, :], embedding.original_size), dtype=torch.float, device=dev)
    labels = torch.ones((n, 1), dtype=torch.int, device=dev)
    sparse, _ = model.net.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    hs, keys = decoder.phase1(sparse)
    iou = decoder.iou(hs)[:, 1:].float()  # multimask output: tokens 1..3
    n_masks = int(iou.shape[1])
    flat = iou.reshape(-1)
    cand = torch.nonzero(flat > iou_floor).reshape(-1) if iou_floor > 0 else torch.arange(flat.numel(), device=flat.device)
    if cand.numel() == 0:
        h, w = (4 * s for s in decoder.hw)
        return torch.zeros((0, 1, h, w), device=flat.device), iou, cand
    prompts, position = torch.unique(cand // n_masks, return_inverse=True)
    pieces = []
    for start in range(0, int(prompts.numel()), _PHASE2_PROMPTS):
        sel = prompts[start : start + _PHASE2_PROMPTS]
        pieces.append(decoder.low_res_masks(hs[sel], keys[sel])[:, 1:].float())  # (P, M, h, w)
    low = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    low = low[position, cand % n_masks][:, None]
    return low, iou, cand


@torch.inference_mode()
def sam_family_batch(
    model: SamFamilyAdapter, embedding: Embedding, points: np.ndarray, settings: BatchSettings
) -> BatchResult:
    """One batch of automatic mask generation on the model's device; see ``core.automatic.process_batch_numpy``.

    The decoder runs in two phases (:mod:`napari_sam_micro.models.decoder_fastpath`): transformer
    and IoU head for the whole batch, output upscaling only for prompts with a mask above the IoU
    floor, SAM's first filter, so the same masks survive.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    low, iou, candidates = _decode_two_phase(model, embedding, points, float(settings.iou_floor))
    n_masks = int(iou.shape[1])
    flat_iou = iou.reshape(-1)
    height, width = embedding.original_size
    chunk = max(1, _UPSCALE_PIXELS // max(1, height * width))
    hi = settings.mask_threshold + settings.stability_offset
    lo = settings.mask_threshold - settings.stability_offset
    parts = []
    for start in range(0, int(candidates.numel()), chunk):
        rows = candidates[start : start + chunk]
        logits = model.upscale_torch(low[start : start + chunk], embedding.input_size, embedding.original_size)[:, 0]
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


def preferred_batch_size(model: SamFamilyAdapter) -> int:
    """Points per :func:`sam_family_batch` call: as many as keep one ``(B, N, C)`` tensor of image
    tokens under :data:`_PHASE1_BYTES` (phase 1 is a few dozen operations per batch whatever its
    size, so large batches amortise their fixed cost; 256 for the tiny model, 32 for LiteMedSAM
    and SAM's ViTs at 64 x 64 x 256)."""
    try:
        dim = int(model.net.mask_decoder.transformer_dim)
        h, w = model.net.prompt_encoder.image_embedding_size
    except AttributeError:
        return 16
    per_prompt = dim * int(h) * int(w) * 4
    return int(min(256, max(8, _PHASE1_BYTES // max(1, per_prompt))))


register_fast_path(SamFamilyAdapter, sam_family_batch, batch_size=preferred_batch_size)
