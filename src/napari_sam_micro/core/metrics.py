"""Instance-segmentation metrics on label images (0 = background, objects = positive ids).

All object overlaps come from one sparse contingency table of ``(gt id, pred id)`` pixel pairs
(:func:`iou_matrix`): the cost is one pass over the pixels whatever the number of objects, never
a loop over objects touching the full image.

Definitions
-----------
* IoU of two objects: ``|A ∩ B| / |A ∪ B|`` in pixels.
* Matching at threshold ``t``: one-to-one, maximum number of pairs with ``IoU >= t`` and, among
  those, maximum total IoU (:func:`match_instances`). For ``t > 0.5`` every object has at most one
  candidate, so the matching is unique.
* ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``F1 = 2 TP / (2 TP + FP + FN)``.
* ``AP(t) = TP / (TP + FP + FN)`` at threshold ``t``: the definition of the Kaggle Data Science
  Bowl 2018 (and of StarDist / Cellpose papers' "average precision"), **not** the area under a
  precision-recall curve. ``mAP`` is its mean over the thresholds (default 0.5, 0.55, …, 0.95).
* Empty images: when both images have no objects every score is 1; when exactly one is empty
  every score is 0.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from .errors import UserInputError

__all__ = [
    "DEFAULT_THRESHOLDS",
    "check_label_image",
    "iou_matrix",
    "match_instances",
    "instance_scores",
    "mask_iou",
]

#: IoU thresholds 0.5, 0.55, …, 0.95 (rounded to two decimals so they can be dict keys).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def check_label_image(labels, name: str = "The label image") -> np.ndarray:
    """Validate a label image and return it as integers (bool → ``uint8``, whole floats → ``int64``).

    Parameters
    ----------
    labels : array-like
        Any shape; 0 = background, objects = positive whole numbers.
    name : str
        How the message names the image (e.g. its file path).

    Returns
    -------
    np.ndarray
        Integer array of the same shape (the input itself when it is already integer).

    Raises
    ------
    UserInputError
        Non-numeric data, fractional / NaN / infinite values (truncating them would silently
        merge or drop objects), or negative ids.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if np.issubdtype(labels.dtype, np.floating):
        bad = ~np.isfinite(labels) | (np.mod(labels, 1) != 0)
        if bad.any():
            example = labels[bad].flat[0].item()
            raise UserInputError(
                f"{name} is not a label image: it holds values that are not whole numbers "
                f"(e.g. {example!r}). Label images have 0 for background and one whole number per object; "
                "is this the intensity image or a probability map?"
            )
        labels = labels.astype(np.int64)
    elif not np.issubdtype(labels.dtype, np.integer):
        raise UserInputError(f"{name} is not a label image (its data are of type {labels.dtype}).")
    if labels.size and labels.min() < 0:
        raise UserInputError(
            f"{name} has negative values (down to {labels.min()}); label ids must be 0 (background) or positive."
        )
    return labels


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compact ids.

    Returns
    -------
    ids : (K,) int64
        Sorted non-zero ids present.
    index : np.ndarray
        Flat ``int64`` array, same number of pixels as ``labels``: position of each pixel's id in
        ``ids``, ``-1`` for background.
    areas : (K,) int64
        Pixel count of each id.
    """
    flat = labels.ravel()
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    top = int(flat.max())
    if top <= 4 * flat.size + 1024:
        # Dense ids: a bincount and a lookup table (O(pixels), no sort).
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=top + 1)
        ids = np.flatnonzero(counts)
        ids = ids[ids != 0]
        lut = np.full(top + 1, -1, dtype=np.int64)
        lut[ids] = np.arange(ids.size)
        return ids.astype(np.int64), lut[flat], counts[ids].astype(np.int64)
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inverse = inverse.astype(np.int64).ravel()
    if uniq[0] == 0:
        inverse -= 1
        uniq, counts = uniq[1:], counts[1:]
    return uniq.astype(np.int64), inverse, counts.astype(np.int64)


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every ground-truth object with every predicted object.

    Parameters
    ----------
    gt, pred : np.ndarray
        Integer label images of the same shape (any dimensionality), 0 = background.

    Returns
    -------
    gt_ids : (G,) int64
        Sorted ground-truth ids.
    pred_ids : (P,) int64
        Sorted predicted ids.
    iou : (G, P) float64
        ``iou[i, j]`` = IoU of ``gt_ids[i]`` and ``pred_ids[j]`` (0 where they do not overlap).
    """
    gt = check_label_image(gt, "The ground-truth label image")
    pred = check_label_image(pred, "The predicted label image")
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred must have the same shape, got {gt.shape} and {pred.shape}")
    gt_ids, gi, gt_area = _relabel(gt)
    pred_ids, pj, pred_area = _relabel(pred)
    n_g, n_p = gt_ids.size, pred_ids.size
    iou = np.zeros((n_g, n_p), dtype=np.float64)
    if n_g == 0 or n_p == 0:
        return gt_ids, pred_ids, iou
    both = (gi >= 0) & (pj >= 0)
    codes = gi[both] * n_p + pj[both]
    if codes.size:
        pairs, inter = np.unique(codes, return_counts=True)
        rows, cols = np.divmod(pairs, n_p)
        union = gt_area[rows] + pred_area[cols] - inter
        iou[rows, cols] = inter / union
    return gt_ids, pred_ids, iou


def match_instances(iou: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of objects whose IoU reaches ``threshold``.

    Maximises the number of matched pairs first and their total IoU second
    (:func:`scipy.optimize.linear_sum_assignment` on ``(min(G, P) + 1) + IoU`` for eligible pairs).

    Parameters
    ----------
    iou : (G, P) array
        From :func:`iou_matrix`.
    threshold : float
        Minimum IoU of a match (inclusive).

    Returns
    -------
    gt_index, pred_index : (M,) int64
        Row and column indices into ``iou`` of the matched pairs, sorted by ``gt_index``.
    """
    iou = np.asarray(iou, dtype=np.float64)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if iou.ndim != 2 or iou.size == 0:
        return empty
    eligible = iou >= threshold
    if threshold <= 0:
        eligible &= iou > 0
    if not eligible.any():
        return empty
    # Only rows/columns with a candidate take part (keeps the assignment small).
    rows = np.flatnonzero(eligible.any(axis=1))
    cols = np.flatnonzero(eligible.any(axis=0))
    sub_ok = eligible[np.ix_(rows, cols)]
    bonus = min(rows.size, cols.size) + 1.0
    weight = np.where(sub_ok, bonus + iou[np.ix_(rows, cols)], 0.0)
    r, c = linear_sum_assignment(weight, maximize=True)
    keep = sub_ok[r, c]
    gi, pj = rows[r[keep]], cols[c[keep]]
    order = np.argsort(gi, kind="stable")
    return gi[order].astype(np.int64), pj[order].astype(np.int64)


def _ratio(num: float, den: float, n_gt: int, n_pred: int) -> float:
    if den > 0:
        return float(num) / float(den)
    return 1.0 if (n_gt == 0 and n_pred == 0) else 0.0


def instance_scores(
    gt: np.ndarray,
    pred: np.ndarray,
    thresholds: tuple[float, ...] | np.ndarray = DEFAULT_THRESHOLDS,
) -> dict:
    """Object-level scores of a predicted label image against ground truth.

    Parameters
    ----------
    gt, pred : np.ndarray
        Integer label images of the same shape, 0 = background.
    thresholds : sequence of float
        IoU thresholds for AP (default 0.5:0.95 step 0.05).

    Returns
    -------
    dict
        ``n_gt``, ``n_pred``; at IoU 0.5: ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``;
        ``matches``: list of ``(gt_id, pred_id, iou)`` matched at 0.5; ``per_object_iou``:
        ``{gt_id: iou}`` of the objects matched at 0.5; ``best_iou``: ``{gt_id: max IoU with any
        prediction}`` for every ground-truth object; ``mean_matched_iou`` (NaN when nothing
        matched); ``ap``: ``{threshold: TP/(TP+FP+FN)}``; ``map``: mean of ``ap``.
        See the module docstring for the definitions.
    """
    gt_ids, pred_ids, iou = iou_matrix(gt, pred)
    n_g, n_p = int(gt_ids.size), int(pred_ids.size)

    def counts(thr: float) -> tuple[int, int, int, np.ndarray, np.ndarray]:
        gi, pj = match_instances(iou, thr)
        tp = int(gi.size)
        return tp, n_p - tp, n_g - tp, gi, pj

    tp, fp, fn, gi, pj = counts(0.5)
    matched_iou = iou[gi, pj]
    ap = {}
    for thr in thresholds:
        thr = round(float(thr), 4)
        t_tp, t_fp, t_fn, _, _ = counts(thr)
        ap[thr] = _ratio(t_tp, t_tp + t_fp + t_fn, n_g, n_p)
    best = iou.max(axis=1) if n_p else np.zeros(n_g)
    return {
        "n_gt": n_g,
        "n_pred": n_p,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp, n_g, n_p),
        "recall": _ratio(tp, tp + fn, n_g, n_p),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, n_g, n_p),
        "matches": [(int(gt_ids[a]), int(pred_ids[b]), float(v)) for a, b, v in zip(gi, pj, matched_iou)],
        "per_object_iou": {int(gt_ids[a]): float(v) for a, v in zip(gi, matched_iou)},
        "best_iou": {int(g): float(v) for g, v in zip(gt_ids, best)},
        "mean_matched_iou": float(matched_iou.mean()) if matched_iou.size else float("nan"),
        "ap": ap,
        "map": float(np.mean(list(ap.values()))) if ap else float("nan"),
    }


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of the same shape (1.0 when both are empty: they are identical)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    union = np.count_nonzero(a | b)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(a & b)) / float(union)
