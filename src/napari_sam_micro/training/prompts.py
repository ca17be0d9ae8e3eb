"""Prompts of training samples in the 256 model frame: the target, a box, a click, a corrective click."""

from __future__ import annotations

import numpy as np

from ..core.masks import border_distance, farthest_interior_point, mask_to_box_xyxy
from .crops import MODEL_SIDE

__all__ = ["choose_target", "box_prompt", "point_prompt", "corrective_click"]


def choose_target(lab: np.ndarray, center: int, rng, cfg) -> np.ndarray | None:
    """The mask of the object a crop trains on: its centre object, or (``1 - cfg.center_object_fraction``
    of the time) another complete object; None when the crop has no object of 12 px or more."""
    ids, counts = np.unique(lab, return_counts=True)
    ok = [(i, c) for i, c in zip(ids, counts) if i != 0 and c >= 12]
    if rng.random() >= cfg.center_object_fraction and len(ok) > 1:
        # an object not touching the crop border (a complete object)
        inner = np.unique(lab[1:-1, 1:-1])
        border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])).tolist())
        cand = [i for i, _ in ok if i not in border and i in inner]
        if cand:
            return lab == cand[int(rng.integers(len(cand)))]
    if any(i == center for i, _ in ok):
        return lab == center
    if ok:
        return lab == ok[int(rng.integers(len(ok)))][0]
    return None


def box_prompt(mask: np.ndarray, rng, jitter: float, pad: float = 0.0) -> np.ndarray:
    """The mask's box, each side moved by up to ``jitter`` x the box size, then grown by ``pad`` x its longer side."""
    box = mask_to_box_xyxy(mask).astype(np.float64)
    side = np.tile(box[2:] - box[:2] + 1, 2)
    box = box + rng.uniform(-jitter, jitter, 4) * side
    if pad:
        grow = pad * float(side.max())
        box = box + np.array([-grow, -grow, grow, grow])
    return np.clip(box, 0, MODEL_SIDE - 1)


def point_prompt(mask: np.ndarray, rng) -> np.ndarray:
    """A click ``(1, 2)`` ``(x, y)`` inside ``mask``: its farthest interior point, or (half the time) a random pixel well inside."""
    if rng.random() < 0.5:
        r, c, _ = farthest_interior_point(mask)
    else:
        dist = border_distance(mask)
        rr, cc = np.nonzero(dist >= max(1.0, dist.max() / 3.0))
        j = int(rng.integers(rr.size))
        r, c = rr[j], cc[j]
    return np.array([[c, r]], np.float64)


def corrective_click(pred: np.ndarray, gt: np.ndarray, rng) -> tuple[np.ndarray, int] | None:
    """A corrective click in the error region: farthest-from-border (half the time) or random."""
    fn, fp = gt & ~pred, pred & ~gt
    regions = [(r, lab) for r, lab in ((fn, 1), (fp, 0)) if r.any()]
    if not regions:
        return None
    if rng.random() < 0.5:
        best = max(((farthest_interior_point(r), lab) for r, lab in regions), key=lambda t: t[0][2])
        (r, c, _), lab = best
    else:
        sizes = np.array([reg.sum() for reg, _ in regions], np.float64)
        reg, lab = regions[int(rng.choice(len(regions), p=sizes / sizes.sum()))]
        rr, cc = np.nonzero(reg)
        j = int(rng.integers(rr.size))
        r, c = rr[j], cc[j]
    return np.array([c, r], np.float64), lab
