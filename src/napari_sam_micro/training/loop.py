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


@dataclass
class _Step:
    """What prompting and decoding one batch needs: the network, settings, device, RNG and autocast."""

    net: torch.nn.Module
    cfg: TrainConfig
    dev: torch.device
    rng: np.random.Generator
    autocast: torch.autocast


@dataclass
class _RunningMeans:
    """Loss and IoU summed over the steps since the last history entry."""

    loss: float = 0.0
    iou: float = 0.0
    n: int = 0

    def add(self, loss: float, iou: float) -> None:
        """Count one step's loss and mean IoU."""
        self.loss += loss
        self.iou += iou
        self.n += 1

    def entry(self, step: int, lr: float, t0: float) -> dict:
        """The history entry of the steps counted so far (the counts are not reset)."""
        return {"step": step, "loss": self.loss / self.n, "train_iou_after_click": self.iou / self.n,
                "lr": lr, "seconds": round(time.time() - t0, 1)}


def _param_groups(net, crops: CropSet | CropStream, cfg: TrainConfig) -> tuple[list, list[dict]]:
    """The trained parameters and the optimiser's parameter groups; freezes what is not trained."""
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
    return params, groups


def _prepare(crops: CropSet | CropStream, cfg: TrainConfig, net, dev: torch.device):
    """Seed the RNGs, put ``net`` (default: bundled LiteMedSAM) on ``dev`` in training mode, build its optimiser."""
    from ..models.litemedsam import build_litemedsam

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if net is None:
        net = build_litemedsam(device="cpu").net
    net = net.to(dev)
    net.train()
    params, groups = _param_groups(net, crops, cfg)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return net, rng, opt, params


def _check_crops(crops: CropSet | CropStream, cfg: TrainConfig) -> None:
    """Raise ``ValueError`` when there are no crops, or a stream's inputs but no encoder to train."""
    if len(crops) == 0:
        raise ValueError("no training crops")
    if isinstance(crops, CropStream) and not cfg.train_encoder:
        raise ValueError("a CropStream has only the encoder's inputs: train with train_encoder=True")


def _lr_factor(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """Warm-up then cosine over the run's progress (steps, or elapsed time with a budget)."""
    warmup_fraction = cfg.warmup / max(1, cfg.steps)
    done = step / max(1, cfg.steps)
    if cfg.time_budget_s:
        done = max(done, elapsed / cfg.time_budget_s)
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (done - warmup_fraction) / max(1e-9, 1 - warmup_fraction))))


def _set_lr(opt: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    """Set each parameter group's learning rate to its base rate times the schedule's ``factor``."""
    for group, base in zip(opt.param_groups, base_lrs):
        group["lr"] = base * factor


def _choose_targets(batch, rng: np.random.Generator, cfg: TrainConfig) -> tuple[list, list[int]]:
    """Target masks of the batch's crops and the positions of the crops that have one."""
    targets, chosen = [], []
    for j, (lab, center) in enumerate(zip(batch.labels, batch.centers)):
        t = choose_target(np.asarray(lab), int(center), rng, cfg)
        if t is not None:
            targets.append(t)
            chosen.append(j)
    return targets, chosen


def _features(s: _Step, batch, chosen: list[int]) -> torch.Tensor:
    """Image embeddings of the chosen crops: from the encoder, its tail on cached tokens, or stored."""
    cfg, dev = s.cfg, s.dev
    with s.autocast:
        if cfg.train_encoder:
            imgs = torch.from_numpy(batch.take("inputs", chosen)).permute(0, 3, 1, 2).to(dev).float()
            return s.net.image_encoder(imgs)
        if cfg.train_encoder_tail:
            return encoder_tail(s.net.image_encoder, torch.from_numpy(batch.take("tokens", chosen)).to(dev))
        return torch.from_numpy(batch.take("embeddings", chosen)).to(dev)


def _prompt_kinds(cfg: TrainConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    """Prompt kind per sample: 0 box, 1 lone click, 2 loose box + click (a click's second stage)."""
    p_point = max(0.0, 1.0 - cfg.box_fraction - cfg.box_point_fraction)
    p = np.array([cfg.box_fraction, p_point, cfg.box_point_fraction]) / (
        cfg.box_fraction + p_point + cfg.box_point_fraction)
    return rng.choice(3, size=n, p=p)


def _first_prompts(s: _Step, kind: int, gts: list) -> tuple[torch.Tensor | None, np.ndarray, np.ndarray]:
    """First-stage prompts of one kind: boxes (or None), click coordinates ``(N, k, 2)`` and labels ``(N, k)``."""
    cfg, rng, dev, n = s.cfg, s.rng, s.dev, len(gts)
    if kind == 0:
        boxes = torch.as_tensor(np.stack([box_prompt(g, rng, cfg.box_jitter) for g in gts]), dtype=torch.float,
                                device=dev)
        return boxes, np.zeros((n, 0, 2)), np.zeros((n, 0), np.int64)
    if kind == 1:
        return None, np.stack([point_prompt(g, rng) for g in gts]), np.ones((n, 1), np.int64)
    loose = [box_prompt(g, rng, cfg.loose_box_jitter, pad=cfg.loose_box_pad) for g in gts]
    boxes = torch.as_tensor(np.stack(loose), dtype=torch.float, device=dev)
    return boxes, np.stack([point_prompt(g, rng) for g in gts]), np.ones((n, 1), np.int64)


def _add_corrective_clicks(prev: torch.Tensor, gts: list, pts: np.ndarray, lbl: np.ndarray,
                           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``pts`` / ``lbl`` with one more click per sample, in the error region of the prediction ``prev``."""
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
    return pts, lbl


def _group_losses(s: _Step, feats: torch.Tensor, gts: list, kind: int) -> tuple[list[torch.Tensor], list[float]]:
    """Loss terms of one prompt ``kind``'s samples (first prompt, each click) and their IoUs after the last click."""
    cfg, dev = s.cfg, s.dev
    group_box = kind != 1
    target = torch.from_numpy(np.stack(gts).astype(np.float32)).to(dev)
    boxes, pts, lbl = _first_prompts(s, kind, gts)
    coords_t = torch.as_tensor(pts, dtype=torch.float, device=dev) if pts.shape[1] else None
    labels_t = torch.as_tensor(lbl, dtype=torch.int, device=dev) if pts.shape[1] else None
    with s.autocast:
        masks, ious = _decode(s.net, feats, coords_t, labels_t, boxes, None)
    masks, ious = masks.float(), ious.float()
    terms = [group_loss(masks, ious, target, cfg, multimask=not group_box).sum()]
    # previous prediction: single token for boxes, best predicted multimask token for points
    if group_box:
        prev = masks[:, 0:1]
    else:
        k = ious[:, 1:].argmax(1) + 1
        prev = masks[torch.arange(masks.shape[0]), k][:, None]
    for _ in range(cfg.n_clicks):
        pts, lbl = _add_corrective_clicks(prev, gts, pts, lbl, s.rng)
        coords_t = torch.as_tensor(pts, dtype=torch.float, device=dev)
        labels_t = torch.as_tensor(lbl, dtype=torch.int, device=dev)
        with s.autocast:
            masks, ious = _decode(s.net, feats, coords_t, labels_t, boxes, prev.detach())
        masks, ious = masks.float(), ious.float()
        terms.append(group_loss(masks, ious, target, cfg, multimask=False).sum())
        prev = masks[:, 0:1]
    return terms, real_iou(masks[:, 0:1], target)[:, 0].tolist()


def _batch_loss(s: _Step, batch, targets: list, chosen: list[int]) -> tuple[torch.Tensor, list[float]]:
    """Mean loss over the chosen crops of a batch, and their IoUs after the last click."""
    feats = _features(s, batch, chosen)
    kinds = _prompt_kinds(s.cfg, s.rng, len(chosen))
    total_loss = torch.zeros((), device=s.dev)
    ious_seen = []
    for kind in (0, 1, 2):
        sel = np.flatnonzero(kinds == kind)
        if sel.size == 0:
            continue
        f = feats[torch.as_tensor(sel, device=s.dev)]
        terms, ious = _group_losses(s, f, [targets[j] for j in sel], kind)
        for term in terms:  # summed in the same order as before the split, for identical rounding
            total_loss = total_loss + term
        ious_seen.extend(ious)
    return total_loss / len(chosen), ious_seen


def _optimiser_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list) -> None:
    """Back-propagate ``loss``, clip the gradient norm of ``params`` to 1 and step the optimiser."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def _record(history: list, log, entry: dict) -> None:
    """Append ``entry`` to ``history`` and pass it to ``log`` (when given)."""
    history.append(entry)
    if log is not None:
        log(entry)


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
    cfg = cfg or TrainConfig()
    dev = torch.device(cfg.device)
    net, rng, opt, params = _prepare(crops, cfg, net, dev)
    base_lrs = [g["lr"] for g in opt.param_groups]
    history = []
    t0 = last_checkpoint = time.time()
    _check_crops(crops, cfg)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.autocast and dev.type == "cuda")
    s = _Step(net, cfg, dev, rng, autocast)
    running = _RunningMeans()
    step = empty_draws = 0
    while step < cfg.steps and not (cfg.time_budget_s and time.time() - t0 >= cfg.time_budget_s):
        _set_lr(opt, base_lrs, _lr_factor(cfg, step, time.time() - t0))
        batch = crops.draw(rng, cfg.batch_size)
        targets, chosen = _choose_targets(batch, rng, cfg)
        if not chosen:
            empty_draws += 1
            if empty_draws >= 100:
                raise ValueError("no usable object in 100 batches of crops")
            continue
        empty_draws = 0
        loss, ious_seen = _batch_loss(s, batch, targets, chosen)
        _optimiser_step(opt, loss, params)
        step += 1
        running.add(float(loss.detach()), float(np.mean(ious_seen)))
        if step % cfg.log_every == 0 or step == cfg.steps:
            _record(history, log, running.entry(step, opt.param_groups[0]["lr"], t0))
            running = _RunningMeans()
        if checkpoint is not None and time.time() - last_checkpoint >= checkpoint_every_s:
            checkpoint(net, step)
            last_checkpoint = time.time()
        yield Progress(step, cfg.steps, f"step {step}/{cfg.steps}")
    if running.n:
        history.append(running.entry(step, opt.param_groups[0]["lr"], t0))
    net.eval()
    return {"net": net, "history": history}
