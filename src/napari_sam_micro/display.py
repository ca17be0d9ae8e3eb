"""Matplotlib figures for notebooks: an image with masks, prompts and scores; prediction vs ground truth.

matplotlib is imported when a function is called (``pip install 'napari-sam-micro[notebook]'``).
Coordinates as in :mod:`napari_sam_micro.api`: points ``(x, y)`` and boxes ``(x0, y0, x1, y1)``
with ``coords="xy"`` (SAM's order, the default), ``(row, col)`` and ``(row0, col0, row1, col1)``
with ``coords="rc"``. Every function draws into ``ax`` (a new figure when None) and returns it.

::

    from napari_sam_micro.display import show_masks, show_comparison
    show_masks(image, masks, scores=iou, points=points, labels=labels)
    show_comparison(image, ground_truth, labels)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._api_input import COORDS, image_layout
from .core.metrics import iou_matrix
from .core.preprocess import normalize_plane

__all__ = ["show_image", "show_masks", "show_comparison", "prediction_iou", "object_colours"]


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - matplotlib is in the notebook extra
        raise ImportError("The display helpers need matplotlib: pip install 'napari-sam-micro[notebook]'.") from err
    return plt


def _axes(ax, size=5.0):
    if ax is not None:
        return ax
    _, ax = _plt().subplots(figsize=(size, size))
    return ax


def show_image(image, ax=None, *, channel_axis=None, channels=None, rgb=None, percentiles=(1.0, 99.8), title=None):
    """Show one plane as the model sees it (the plugin's percentile normalisation, channels as colours).

    Parameters
    ----------
    image : array-like
        ``(H, W)`` grey, ``(H, W, 3|4)`` RGB, or channels on ``channel_axis``; any dtype.
    ax : matplotlib Axes, optional
    channel_axis, channels, rgb, percentiles
        As in :meth:`napari_sam_micro.api.Predictor.set_image`.
    title : str, optional
    """
    layout = image_layout(image, channel_axis=channel_axis, channels=channels, rgb=rgb, percentiles=percentiles, single_plane=True)
    shown = normalize_plane(layout.plane(()), layout.config)
    ax = _axes(ax)
    ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def object_colours(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3)`` distinct, bright RGB colours in ``[0, 1]`` (golden-ratio hues, fixed order)."""
    import colorsys

    hues = (seed * 0.1 + np.arange(n) * 0.618033988749895) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, 0.75, 1.0) for h in hues]).reshape(-1, 3)


def _as_labels(masks) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W)`` labels and the ids in drawing order from bool masks ``(K, H, W)`` / ``(H, W)`` or a label image."""
    arr = np.asarray(masks)
    if arr.ndim == 3:
        labels = np.zeros(arr.shape[1:], np.int64)
        for k in range(arr.shape[0] - 1, -1, -1):  # earlier masks drawn on top
            labels[arr[k].astype(bool)] = k + 1
        return labels, np.arange(1, arr.shape[0] + 1)
    if arr.ndim != 2:
        raise ValueError(f"masks must be (K, H, W) bool masks or an (H, W) label image, got shape {arr.shape}.")
    labels = arr.astype(np.int64)
    ids = np.unique(labels)
    return labels, ids[ids > 0]


def _overlay(ax, labels: np.ndarray, ids: np.ndarray, colours: np.ndarray, alpha: float) -> None:
    lut = np.zeros((max(int(labels.max(initial=0)), int(np.max(ids, initial=0))) + 1, 4), np.float32)  # empty masks too
    lut[ids, :3] = colours[: len(ids)]
    lut[ids, 3] = alpha
    rgba = lut[labels]
    edge = (ndi.grey_dilation(labels, size=3) != ndi.grey_erosion(labels, size=3)) & (labels > 0)
    rgba[edge, 3] = 1.0  # outlines stay visible where objects touch
    ax.imshow(rgba, interpolation="nearest")


def _score_texts(ax, labels, ids, scores) -> None:
    if scores is None:
        return
    values = _score_lookup(scores, ids)
    centres = ndi.center_of_mass(np.ones_like(labels), labels, ids) if len(ids) else []
    for (r, c), v in zip(centres, values):
        if v is None or not np.isfinite(v):
            continue
        ax.text(c, r, f"{v:.2f}", color="white", fontsize=8, ha="center", va="center",
                bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})


def _score_lookup(scores, ids) -> list:
    if hasattr(scores, "columns"):  # a table from segment_everything
        col = "predicted_iou" if "predicted_iou" in scores.columns else scores.columns[-1]
        by_id = dict(zip(np.asarray(scores["index"]).tolist(), np.asarray(scores[col], float).tolist()))
        return [by_id.get(int(i)) for i in ids]
    if isinstance(scores, dict):
        return [scores.get(int(i)) for i in ids]
    values = np.asarray(scores, float).reshape(-1)
    if values.size != len(ids):
        raise ValueError(f"{values.size} scores for {len(ids)} masks: give one score per mask.")
    return values.tolist()


def _draw_prompts(ax, points, labels, boxes, coords: str) -> None:
    if coords not in COORDS:
        raise ValueError(f"coords must be 'xy' or 'rc', not {coords!r}.")
    if points is not None and np.size(points):
        pts = np.asarray(points, float).reshape(-1, 2)
        xy = pts if coords == "xy" else pts[:, ::-1]
        lab = np.ones(len(xy), int) if labels is None else np.broadcast_to(np.asarray(labels).astype(int).reshape(-1), (len(xy),))
        for flag, colour, marker in ((1, "lime", "*"), (0, "red", "X")):
            sel = lab == flag
            ax.scatter(xy[sel, 0], xy[sel, 1], c=colour, marker=marker, s=160, edgecolors="white", linewidths=1.0)
    if boxes is not None and np.size(boxes):
        plt = _plt()
        for b in np.asarray(boxes, float).reshape(-1, 4):
            x0, y0, x1, y1 = b if coords == "xy" else (b[1], b[0], b[3], b[2])
            ax.add_patch(plt.Rectangle((min(x0, x1), min(y0, y1)), abs(x1 - x0), abs(y1 - y0), fill=False, edgecolor="lime", linewidth=1.5))


def show_masks(image, masks=None, *, scores=None, points=None, labels=None, boxes=None, coords: str = "xy",
               ax=None, alpha: float = 0.45, title=None, **image_kw):
    """An image with masks (each in its own colour), prompts and per-object scores.

    Parameters
    ----------
    image : array-like
        The plane the masks belong to (see :func:`show_image`; ``image_kw`` go there).
    masks : (K, H, W) bool, (H, W) bool or (H, W) int, optional
        Masks from :meth:`~napari_sam_micro.api.Predictor.predict` or a label image.
    scores : (K,) array-like, dict or DataFrame, optional
        Written on each object: one value per mask, ``{id: value}``, or the table of
        :func:`~napari_sam_micro.api.segment_everything` (its ``predicted_iou``).
    points : (N, 2) array-like, optional
        Positive points are green stars, negative ones (``labels`` 0) red crosses.
    labels : (N,) array-like, optional
        1 / 0 per point (default all 1).
    boxes : (K, 4) array-like, optional
    coords : {"xy", "rc"}
        Order of ``points`` and ``boxes``.
    """
    ax = show_image(image, ax=ax, title=title, **image_kw)
    if masks is not None:
        lab, ids = _as_labels(masks)
        # a colour per id value: an object keeps its colour across the planes of a linked stack
        _overlay(ax, lab, ids, object_colours(int(ids.max(initial=0)))[ids - 1], alpha)
        _score_texts(ax, lab, ids, scores)
    _draw_prompts(ax, points, labels, boxes, coords)
    return ax


def prediction_iou(ground_truth, prediction) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the predicted objects and each one's best IoU with any ground-truth object."""
    gt_ids, pred_ids, iou = iou_matrix(np.asarray(ground_truth), np.asarray(prediction))
    best = iou.max(axis=0) if gt_ids.size else np.zeros(pred_ids.size)
    return pred_ids, best


def show_comparison(image, ground_truth, prediction, *, ax=None, alpha: float = 0.55, title=None, colorbar: bool = True, **image_kw):
    """Predicted objects coloured by their best IoU with the ground truth, ground truth outlined.

    Red = no match (IoU 0), yellow = 0.5 (the usual match threshold), green = perfect; ground-truth
    objects are outlined in white, so missed objects show as outlines with no colour inside.

    Parameters
    ----------
    image : array-like
        The plane (see :func:`show_image`).
    ground_truth, prediction : (H, W) int
        Label images, 0 = background.
    """
    plt = _plt()
    pred = np.asarray(prediction)
    ax = show_image(image, ax=ax, title=title, **image_kw)
    ids, best = prediction_iou(ground_truth, pred)
    cmap = plt.get_cmap("RdYlGn")
    lab, _ = _as_labels(pred)
    if ids.size:
        _overlay(ax, lab, ids, np.asarray(cmap(best))[:, :3], alpha)
    gt = np.asarray(ground_truth).astype(np.int64)
    edge = (ndi.grey_dilation(gt, size=3) != ndi.grey_erosion(gt, size=3)) & (gt > 0)
    outline = np.zeros((*gt.shape, 4), np.float32)
    outline[edge] = (1.0, 1.0, 1.0, 0.9)
    ax.imshow(outline, interpolation="nearest")
    if colorbar:
        mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0.0, 1.0))
        ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02, label="IoU with ground truth")
    return ax
