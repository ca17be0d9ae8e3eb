"""Losses of the mask decoder's outputs: BCE + Dice per token, and the IoU head against the real IoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dice_loss", "mask_losses", "real_iou", "group_loss"]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per sample, ``(B,)``, of ``(B, H, W)`` logits against a binary target."""
    probs = torch.sigmoid(logits)
    inter = (probs * target).sum((-2, -1))
    union = probs.sum((-2, -1)) + target.sum((-2, -1))
    return 1.0 - (2.0 * inter + eps) / (union + eps)


def mask_losses(masks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + Dice of each token's mask: ``(B, M)``."""
    b, m = masks.shape[:2]
    tgt = target[:, None].expand(b, m, *target.shape[-2:])
    bce = F.binary_cross_entropy_with_logits(masks, tgt, reduction="none").mean((-2, -1))
    return bce + dice_loss(masks, tgt)


def real_iou(masks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = masks.detach() > 0
    tgt = target[:, None].bool()
    inter = (pred & tgt).sum((-2, -1)).float()
    union = (pred | tgt).sum((-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def group_loss(masks, ious, target, cfg, multimask: bool):
    """Loss per sample ``(B,)`` of ``(B, 4, H, W)`` logits and ``(B, 4)`` IoU predictions.

    The single-mask token (boxes) or the best multimask token (a lone click) counts fully, the
    other at ``cfg.multimask_loss_weight``; plus ``cfg.iou_loss_weight`` x the IoU head's MSE.
    """
    losses = mask_losses(masks, target)
    single = losses[:, 0]
    best_multi = losses[:, 1:].min(dim=1).values
    loss = single + cfg.multimask_loss_weight * best_multi if not multimask else best_multi + cfg.multimask_loss_weight * single
    iou_loss = F.mse_loss(ious, real_iou(masks, target), reduction="none").mean(1)
    return loss + cfg.iou_loss_weight * iou_loss
