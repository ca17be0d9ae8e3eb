"""The training loop: AdamW on the prompt encoder and mask decoder (optionally the image encoder).

Each sample is prompted with a box (jittered), a point, or a loose box + point, then with
corrective clicks in the error region of the previous prediction, the previous low-res logits fed
back as ``mask_input`` (:mod:`.prompts`); losses in :mod:`.losses`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ..core.masks import farthest_interior_point
from ..core.progress import Progress
from .crops import CropSet
from .encoder_split import encoder_tail, encoder_tail_parts
from .losses import group_loss, real_iou
from .prompts import box_prompt, choose_target, corrective_click, point_prompt
from .streams import CropStream

__all__ = ["TrainConfig", "train_job"]


@dataclass
class TrainConfig:
    """Optimisation settings of :func:`train_job`.

    ``train_encoder`` trains the whole image encoder from the stored inputs or a
    :class:`CropStream` (for a GPU); ``train_encoder_tail`` its last stage + neck from cached
    tokens (:func:`encoder_tail_tokens_job`); either at ``encoder_lr_scale`` x ``lr``. With
    ``time_budget_s`` training ends at ``steps`` or when the time is spent, whichever comes first,
    and the warm-up + cosine schedule runs over that fraction.
    """

    steps: int = 300
    batch_size: int = 4
    lr: float = 8e-5
    weight_decay: float = 0.01
    warmup: int = 15
    n_clicks: int = 1
    box_fraction: float = 0.5
    box_point_fraction: float = 0.0
    loose_box_jitter: float = 0.15
    loose_box_pad: float = 0.1
    center_object_fraction: float = 0.6
    box_jitter: float = 0.08
    iou_loss_weight: float = 1.0
    multimask_loss_weight: float = 0.5
    train_encoder: bool = False
    train_encoder_tail: bool = False
    encoder_lr_scale: float = 0.5
    device: str = "cpu"
    seed: int = 0
    log_every: int = 10
    #: Stop after this many seconds (the learning-rate schedule follows elapsed time) when set.
    time_budget_s: float | None = None
    #: Keep the image encoder's batch-norm statistics fixed when it is trained.
    freeze_batchnorm: bool = True
    #: bfloat16 autocast for the network's forward pass (CUDA only).
    autocast: bool = False


def _decode(net, features, coords, labels, boxes, mask_input):
    """All four mask tokens: ``(B, 4, 256, 256)`` logits and ``(B, 4)`` IoU predictions."""
    points = None if coords is None else (coords, labels)
    sparse, dense = net.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    return net.mask_decoder.predict_masks(
        image_embeddings=features,
        image_pe=net.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )


def train_job(
    crops: CropSet | CropStream,
    cfg: TrainConfig | None = None,
    net=None,
    log=None,
    checkpoint=None,
    checkpoint_every_s: float = 120.0,
) -> Generator[Progress, None, dict]:
    """Fine-tune on precomputed crops or a stream of fresh ones; a job returning ``{"net", "history"}``.

    Parameters
    ----------
    crops : CropSet or CropStream
    cfg : TrainConfig
    net : MedSAMLite, optional
        Start point (default: bundled LiteMedSAM). Trained in place.
    log : callable, optional
        ``log(dict)`` every ``cfg.log_every`` steps (step, loss, mean IoU, seconds).
    checkpoint : callable, optional
        ``checkpoint(net, step)`` every ``checkpoint_every_s`` seconds (a long run that is cut
        short still leaves weights).
    """
    from ..models.litemedsam import build_litemedsam

    cfg = cfg or TrainConfig()
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if net is None:
        net = build_litemedsam(device="cpu").net
    net = net.to(dev)
    net.train()
    params = list(net.prompt_encoder.parameters()) + list(net.mask_decoder.parameters())
    groups = [{"params": params}]
    if cfg.train_encoder:
        encoder_params = list(net.image_encoder.parameters())
        groups.append({"params": encoder_params, "lr": cfg.lr * cfg.encoder_lr_scale})
        params = params + encoder_params
        if cfg.freeze_batchnorm:
            for module in net.image_encoder.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
    else:
        net.image_encoder.eval()  # also keeps its batch-norm statistics fixed
        for p in net.image_encoder.parameters():
            p.requires_grad_(False)
        if cfg.train_encoder_tail:
            if crops.tokens is None:
                raise ValueError("train_encoder_tail needs the cached tokens of encoder_tail_tokens_job")
            tail = [p for part in encoder_tail_parts(net) for p in part.parameters()]
            for p in tail:
                p.requires_grad_(True)
            groups.append({"params": tail, "lr": cfg.lr * cfg.encoder_lr_scale})
            params = params + tail
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    warmup_fraction = cfg.warmup / max(1, cfg.steps)

    def lr_factor(step, elapsed):
        """Warm-up then cosine over the run's progress (steps, or elapsed time with a budget)."""
        done = step / max(1, cfg.steps)
        if cfg.time_budget_s:
            done = max(done, elapsed / cfg.time_budget_s)
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (done - warmup_fraction) / max(1e-9, 1 - warmup_fraction))))

    history = []
    t0 = last_checkpoint = time.time()
    if len(crops) == 0:
        raise ValueError("no training crops")
    if isinstance(crops, CropStream) and not cfg.train_encoder:
        raise ValueError("a CropStream has only the encoder's inputs: train with train_encoder=True")
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.autocast and dev.type == "cuda")
    run_loss, run_iou, run_n = 0.0, 0.0, 0
    step = empty_draws = 0
    while step < cfg.steps and not (cfg.time_budget_s and time.time() - t0 >= cfg.time_budget_s):
        factor = lr_factor(step, time.time() - t0)
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * factor
        batch = crops.draw(rng, cfg.batch_size)
        targets, chosen = [], []
        for j, (lab, center) in enumerate(zip(batch.labels, batch.centers)):
            t = choose_target(np.asarray(lab), int(center), rng, cfg)
            if t is not None:
                targets.append(t)
                chosen.append(j)
        if not chosen:
            empty_draws += 1
            if empty_draws >= 100:
                raise ValueError("no usable object in 100 batches of crops")
            continue
        empty_draws = 0
        with autocast:
            if cfg.train_encoder:
                imgs = torch.from_numpy(batch.take("inputs", chosen)).permute(0, 3, 1, 2).to(dev).float()
                feats = net.image_encoder(imgs)
            elif cfg.train_encoder_tail:
                feats = encoder_tail(net.image_encoder, torch.from_numpy(batch.take("tokens", chosen)).to(dev))
            else:
                feats = torch.from_numpy(batch.take("embeddings", chosen)).to(dev)
        # prompt kind per sample: 0 box, 1 lone click, 2 loose box + click (a click's second stage)
        p_point = max(0.0, 1.0 - cfg.box_fraction - cfg.box_point_fraction)
        kinds = rng.choice(3, size=len(chosen), p=np.array([cfg.box_fraction, p_point, cfg.box_point_fraction]) / (cfg.box_fraction + p_point + cfg.box_point_fraction))
        total_loss = torch.zeros((), device=dev)
        ious_seen = []
        for kind in (0, 1, 2):
            sel = np.flatnonzero(kinds == kind)
            if sel.size == 0:
                continue
            group_box = kind != 1
            gts = [targets[j] for j in sel]
            target = torch.from_numpy(np.stack(gts).astype(np.float32)).to(dev)
            f = feats[torch.as_tensor(sel, device=dev)]
            if kind == 0:
                boxes = torch.as_tensor(np.stack([box_prompt(g, rng, cfg.box_jitter) for g in gts]), dtype=torch.float, device=dev)
                pts = np.zeros((len(sel), 0, 2))
                lbl = np.zeros((len(sel), 0), np.int64)
            elif kind == 1:
                boxes = None
                pts = np.stack([point_prompt(g, rng) for g in gts])
                lbl = np.ones((len(sel), 1), np.int64)
            else:
                loose = [box_prompt(g, rng, cfg.loose_box_jitter, pad=cfg.loose_box_pad) for g in gts]
                boxes = torch.as_tensor(np.stack(loose), dtype=torch.float, device=dev)
                pts = np.stack([point_prompt(g, rng) for g in gts])
                lbl = np.ones((len(sel), 1), np.int64)
            coords_t = torch.as_tensor(pts, dtype=torch.float, device=dev) if pts.shape[1] else None
            labels_t = torch.as_tensor(lbl, dtype=torch.int, device=dev) if pts.shape[1] else None
            with autocast:
                masks, ious = _decode(net, f, coords_t, labels_t, boxes, None)
            masks, ious = masks.float(), ious.float()
            total_loss = total_loss + group_loss(masks, ious, target, cfg, multimask=not group_box).sum()
            # previous prediction: single token for boxes, best predicted multimask token for points
            if group_box:
                prev = masks[:, 0:1]
            else:
                k = ious[:, 1:].argmax(1) + 1
                prev = masks[torch.arange(masks.shape[0]), k][:, None]
            for _ in range(cfg.n_clicks):
                pred_np = (prev.detach()[:, 0] > 0).cpu().numpy()
                new_pts, new_lbl = [], []
                for j, g in enumerate(gts):
                    click = corrective_click(pred_np[j], g, rng)
                    if click is None:  # perfect: repeat a positive click at the interior point
                        r, c, _ = farthest_interior_point(g)
                        click = (np.array([c, r], np.float64), 1)
                    new_pts.append(click[0])
                    new_lbl.append(click[1])
                pts = np.concatenate([pts, np.array(new_pts)[:, None]], axis=1)
                lbl = np.concatenate([lbl, np.array(new_lbl)[:, None]], axis=1)
                coords_t = torch.as_tensor(pts, dtype=torch.float, device=dev)
                labels_t = torch.as_tensor(lbl, dtype=torch.int, device=dev)
                with autocast:
                    masks, ious = _decode(net, f, coords_t, labels_t, boxes, prev.detach())
                masks, ious = masks.float(), ious.float()
                total_loss = total_loss + group_loss(masks, ious, target, cfg, multimask=False).sum()
                prev = masks[:, 0:1]
            ious_seen.extend(real_iou(masks[:, 0:1], target)[:, 0].tolist())
        loss = total_loss / len(chosen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        run_loss += float(loss.detach())
        run_iou += float(np.mean(ious_seen))
        run_n += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            entry = {"step": step, "loss": run_loss / run_n, "train_iou_after_click": run_iou / run_n,
                     "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 1)}
            history.append(entry)
            if log is not None:
                log(entry)
            run_loss, run_iou, run_n = 0.0, 0.0, 0
        if checkpoint is not None and time.time() - last_checkpoint >= checkpoint_every_s:
            checkpoint(net, step)
            last_checkpoint = time.time()
        yield Progress(step, cfg.steps, f"step {step}/{cfg.steps}")
    if run_n:
        history.append({"step": step, "loss": run_loss / run_n, "train_iou_after_click": run_iou / run_n,
                        "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 1)})
    net.eval()
    return {"net": net, "history": history}
