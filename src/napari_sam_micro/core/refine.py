"""Refine existing labels with SAM: each object re-segmented from its own box and mask.

A label image from another tool (Cellpose, StarDist, a threshold, a previous run, a hand drawing)
already says where the objects are; its borders are often off (too tight, too loose, two nuclei
merged). Each object of the label image becomes a prompt for the model:

* its **box** (the mask's bounding box, padded by ``box_pad`` x its longer side: a box that is a
  little too large costs SAM less than one that cuts the object);
* optionally its **mask** as ``mask_input`` (the low-resolution logits SAM's decoder takes for
  interactive refinement: the mask is resampled into the window's model frame);
* optionally its **interior point** (the pixel farthest from its border) as a positive click;
* and the user's extra clicks on that object, if any (positive or negative).

Which of these works best was measured on deliberately degraded ground truth (see
``docs/models.md``): :data:`DEFAULT_STRATEGY` is the winner. Objects are decoded in the windows
boxes get (:func:`~napari_sam_micro.core.decoding.object_window`: encoded windows that fit are
reused), all objects of one window in one batched decoder call.

Nothing here writes labels: :func:`refinement_edits` says which pixels an accepted refinement
changes, the caller writes them (one undo step in napari).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .decoding import DecodeContext, ObjectPreview, object_window, previews
from .errors import UserInputError
from .masks import farthest_interior_point, mask_to_box_xyxy
from .model_api import LOW_RES_SIZE
from .progress import Job, Progress
from .prompts import ObjectPrompt
from .seeded import decode_seeds_job, with_embeddings
from .windows import Window, cover_objects, reuse_window

__all__ = [
    "REFINE_CHUNK",
    "STRATEGIES",
    "DEFAULT_STRATEGY",
    "DEFAULT_BOX_PAD",
    "MASK_LOGIT",
    "ObjectClicks",
    "RefinedObject",
    "label_objects",
    "refine_prompt",
    "mask_logits",
    "assign_clicks",
    "plan_windows",
    "refine_objects_job",
    "refinement_edits",
    "apply_refinements",
]

#: Prompt recipes: what of the old object goes into the decoder besides its box.
STRATEGIES = ("box", "box+mask", "box+point", "box+mask+point", "point")
#: The recipe measured best on degraded DSB validation labels (docs/models.md).
DEFAULT_STRATEGY = "box+point"
#: The old mask's box is padded by this fraction of its longer side (plus one pixel).
DEFAULT_BOX_PAD = 0.1
#: Magnitude of the logits a binary mask becomes for ``mask_input`` (inverse sigmoid of 0.999).
MASK_LOGIT = float(np.log(0.999 / 0.001))
#: Windows encoded, then decoded, at a time (16 embeddings of micro-tiny: 64 MB of the cache).
REFINE_CHUNK = 16

#: ``encode(windows) -> Job``: computes (and caches) the embeddings of the windows (None = plane).
Encoder = Callable[[Sequence[Window | None]], Job]


@dataclass(frozen=True)
class ObjectClicks:
    """The user's extra clicks on one object.

    Parameters
    ----------
    points_xy : (N, 2) float
        ``(x, y)`` plane pixels.
    labels : (N,) int
        1 positive, 0 negative.
    """

    points_xy: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True, eq=False)
class RefinedObject:
    """One object of the label image and what the model makes of it.

    Parameters
    ----------
    label_id : int
    old_slices : (slice, slice)
        Bounding box of the old object on the plane (``labels[old_slices]``).
    old_crop : (h, w) bool
        The old object inside ``old_slices``.
    new : ObjectPreview
        The refined mask (empty when the model found nothing).
    iou_old_new : float
        IoU between the old and the new mask (1 = unchanged).
    """

    label_id: int
    old_slices: tuple[slice, slice]
    old_crop: np.ndarray
    new: ObjectPreview
    iou_old_new: float

    @property
    def old_area(self) -> int:
        return int(np.count_nonzero(self.old_crop))

    @property
    def new_area(self) -> int:
        return self.new.area

    @property
    def predicted_iou(self) -> float:
        return self.new.predicted_iou


def label_objects(labels: np.ndarray, ids: Sequence[int] | None = None) -> list[tuple[int, tuple[slice, slice]]]:
    """``(id, bounding slices)`` of the objects of a 2D label image (``ids`` only, when given), by id.

    Raises
    ------
    UserInputError
        The label image is not 2D, or none of ``ids`` is present.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise UserInputError(f"Refining works on one 2D plane of labels; got an array of shape {labels.shape}.")
    found = ndi.find_objects(labels.astype(np.int64, copy=False)) if labels.size and labels.max() > 0 else []
    wanted = None if ids is None else {int(i) for i in ids}
    out = [(i, sl) for i, sl in enumerate(found, start=1) if sl is not None and (wanted is None or i in wanted)]
    if wanted is not None and not out:
        shown = ", ".join(str(i) for i in sorted(wanted)[:5])
        raise UserInputError(f"The labels layer has no object with id {shown} on this plane: choose other objects.")
    return out


def refine_prompt(
    mask: np.ndarray,
    offset: tuple[int, int],
    hw: tuple[int, int],
    strategy: str = DEFAULT_STRATEGY,
    box_pad: float = DEFAULT_BOX_PAD,
    clicks: ObjectClicks | None = None,
) -> ObjectPrompt:
    """The prompt of one old object: its padded box, its interior point if asked, the user's clicks.

    Parameters
    ----------
    mask : (h, w) bool
        The old object in a crop of the plane whose first pixel is ``offset`` ``(row, col)``.
    hw : (int, int)
        ``(H, W)`` of the plane (the box is clipped to it).
    strategy : str
        One of :data:`STRATEGIES` (the mask part is the caller's: :func:`mask_logits`).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown refine strategy {strategy!r}; use one of {STRATEGIES}")
    if strategy == "point":
        strategy = "box+point"  # the prompt of an object with the user's clicks
    r, c = offset
    x0, y0, x1, y1 = (mask_to_box_xyxy(mask) + np.array([c, r, c, r])).astype(np.float64)
    pad = box_pad * max(x1 - x0, y1 - y0) + 1.0 if box_pad > 0 else 0.0
    box = np.clip([x0 - pad, y0 - pad, x1 + pad, y1 + pad], 0, [hw[1] - 1, hw[0] - 1, hw[1] - 1, hw[0] - 1])
    pts, labs = [], []
    if strategy.endswith("point"):
        row, col, _ = farthest_interior_point(mask)
        pts.append([col + c, row + r])
        labs.append(1)
    if clicks is not None and len(clicks.points_xy):
        pts.extend(np.asarray(clicks.points_xy, np.float64).reshape(-1, 2).tolist())
        labs.extend(np.asarray(clicks.labels, np.int64).reshape(-1).tolist())
    if not pts:
        return ObjectPrompt(None, None, box.astype(np.float32), "box")
    return ObjectPrompt(np.asarray(pts, np.float32), np.asarray(labs, np.int32), box.astype(np.float32), "box+points")


def mask_logits(mask: np.ndarray, offset: tuple[int, int], window: Window | None, hw: tuple[int, int]) -> np.ndarray:
    """A binary mask as ``mask_input`` logits in ``window``'s model frame.

    SAM's low-resolution logits cover the window resized so that its longer side spans
    :data:`~napari_sam_micro.core.model_api.LOW_RES_SIZE` pixels, padded at the bottom and right;
    each low-resolution pixel takes the mask's value at its centre.

    Parameters
    ----------
    mask : (h, w) bool
        The object in a crop of the plane starting at ``offset`` ``(row, col)``.
    window : Window or None
        ``(y0, y1, x0, x1)`` of the embedding (None = the whole plane of ``hw``).

    Returns
    -------
    (1, 256, 256) float32
        ``+MASK_LOGIT`` inside, ``-MASK_LOGIT`` outside and in the padding.
    """
    y0, y1, x0, x1 = window if window is not None else (0, hw[0], 0, hw[1])
    h, w = y1 - y0, x1 - x0
    s = LOW_RES_SIZE / max(h, w)
    n_r, n_c = min(LOW_RES_SIZE, int(round(h * s))), min(LOW_RES_SIZE, int(round(w * s)))
    rows = y0 + np.minimum(((np.arange(n_r) + 0.5) / s).astype(np.int64), h - 1) - offset[0]
    cols = x0 + np.minimum(((np.arange(n_c) + 0.5) / s).astype(np.int64), w - 1) - offset[1]
    ok_r = (rows >= 0) & (rows < mask.shape[0])
    ok_c = (cols >= 0) & (cols < mask.shape[1])
    inside = np.zeros((n_r, n_c), bool)
    sub = np.asarray(mask, bool)[np.ix_(rows[ok_r], cols[ok_c])]
    inside[np.ix_(ok_r, ok_c)] = sub
    out = np.full((1, LOW_RES_SIZE, LOW_RES_SIZE), -MASK_LOGIT, np.float32)
    out[0, :n_r, :n_c] = np.where(inside, MASK_LOGIT, -MASK_LOGIT)
    return out


def assign_clicks(labels: np.ndarray, points_rc: np.ndarray, positive: np.ndarray) -> dict[int, ObjectClicks]:
    """Attach clicks to objects: a click on an object belongs to it; on background, to the object
    whose bounding box (padded by half its size) contains it with the nearest centre; else to none.

    Parameters
    ----------
    labels : (H, W) int
    points_rc : (N, 2) float
        ``(row, col)`` on the plane.
    positive : (N,) bool

    Returns
    -------
    dict of int to ObjectClicks
    """
    labels = np.asarray(labels)
    pts = np.asarray(points_rc, np.float64).reshape(-1, 2)
    if not len(pts):
        return {}
    objs = label_objects(labels)
    boxes = np.array([[sl[0].start, sl[1].start, sl[0].stop, sl[1].stop] for _, sl in objs], np.float64).reshape(-1, 4)
    ids = np.array([i for i, _ in objs], np.int64)
    out: dict[int, list] = {}
    h, w = labels.shape
    for (r, c), pos in zip(pts, np.asarray(positive, bool).reshape(-1)):
        ri, ci = int(np.clip(round(r), 0, h - 1)), int(np.clip(round(c), 0, w - 1))
        owner = int(labels[ri, ci])
        if owner == 0 and len(ids):
            half = (boxes[:, 2:] - boxes[:, :2]) / 2.0
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
            near = np.all(np.abs(np.array([r, c]) - centre) <= 2 * half, axis=1)
            if near.any():
                dist = np.hypot(*(centre - np.array([r, c])).T)
                owner = int(ids[np.flatnonzero(near)[np.argmin(dist[near])]])
        if owner:
            out.setdefault(owner, []).append((c, r, 1 if pos else 0))
    return {k: ObjectClicks(np.array([[x, y] for x, y, _ in v], np.float32), np.array([p for *_, p in v], np.int32)) for k, v in out.items()}


def _pad_points(prompts: Sequence[ObjectPrompt]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(B, N, 2)`` coords and ``(B, N)`` labels, shorter prompts padded with label -1 (SAM's padding)."""
    n = max((0 if p.point_coords is None else len(p.point_coords)) for p in prompts)
    if n == 0:
        return None, None
    coords = np.zeros((len(prompts), n, 2), np.float32)
    labels = np.full((len(prompts), n), -1, np.int32)
    for b, p in enumerate(prompts):
        if p.point_coords is not None and len(p.point_coords):
            k = len(p.point_coords)
            coords[b, :k] = p.point_coords
            labels[b, :k] = p.point_labels
    return coords, labels


def _decode_window(ctx: DecodeContext, window, prompts, masks_in) -> list[ObjectPreview]:
    """All refinement prompts of one window in one batched decoder call."""
    emb = ctx.get_embedding(window)
    off = np.zeros(2, np.float32) if window is None else np.array([window[2], window[0]], np.float32)
    coords, labels = _pad_points(prompts)
    if coords is not None:
        coords = coords - off[None, None]
    boxes = (np.stack([p.box for p in prompts]) - np.tile(off, 2)[None]).astype(np.float32)
    mask_input = None if masks_in is None else np.stack(masks_in).astype(np.float32)
    out = ctx.model.decode(emb, point_coords=coords, point_labels=labels, boxes=boxes, mask_input=mask_input, multimask_output=False)
    return previews(ctx, window, emb, out.low_res_logits, out.iou_predictions, ["refine"] * len(prompts))


def plan_windows(ctx: DecodeContext, boxes: np.ndarray) -> list[Window | None]:
    """The window of each object box: an encoded window that fits it, else few shared windows.

    Objects share windows at the prompts' reuse scale
    (:func:`~napari_sam_micro.core.windows.cover_objects`, as seeded everything mode does), so
    crowded planes need few encodings and few (batched) decoder calls.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not ctx.crop_to_prompt:
        return [object_window(ctx, ObjectPrompt(None, None, b.astype(np.float32), "box")) for b in boxes]
    encoded = list(ctx.encoded())
    out: list = [reuse_window(b, encoded, ctx.hw, ctx.reuse_scale) for b in boxes]
    rest = [k for k, w in enumerate(out) if w is None]
    if rest:
        cover, sub = cover_objects(boxes[rest], ctx.hw, ctx.reuse_scale, min_side=ctx.window_min)
        for k, j in zip(rest, sub):
            out[k] = ctx.plane_or(cover[j])
    return out


def _iou(old_crop: np.ndarray, slices, new: ObjectPreview) -> float:
    box = new.bbox()
    y0, x0 = slices[0].start, slices[1].start
    y1, x1 = slices[0].stop, slices[1].stop
    if box is not None:
        y0, x0, y1, x1 = min(y0, box[0]), min(x0, box[1]), max(y1, box[2]), max(x1, box[3])
    old = np.zeros((y1 - y0, x1 - x0), bool)
    old[slices[0].start - y0 : slices[0].stop - y0, slices[1].start - x0 : slices[1].stop - x0] = old_crop
    got = new.region(y0, y1, x0, x1)
    union = np.count_nonzero(old | got)
    return float(np.count_nonzero(old & got)) / union if union else 1.0


def refine_objects_job(
    ctx: DecodeContext,
    labels: np.ndarray,
    encode: Encoder,
    ids: Sequence[int] | None = None,
    *,
    strategy: str = DEFAULT_STRATEGY,
    box_pad: float = DEFAULT_BOX_PAD,
    clicks: Mapping[int, ObjectClicks] | None = None,
    check: Callable[[], None] = lambda: None,
) -> Job[list[RefinedObject]]:
    """Re-segment objects of a label plane from their boxes (and masks / interior points / clicks); a job.

    Parameters
    ----------
    ctx : DecodeContext
        Of the image plane the labels belong to (same ``(H, W)``).
    labels : (H, W) int
        The label plane (not modified).
    encode : callable
        ``encode(windows) -> Job`` computes missing embeddings.
    ids : sequence of int, optional
        Objects to refine (default: all).
    strategy : str
        One of :data:`STRATEGIES`.
    box_pad : float
        Box padding, fraction of the object's longer side.
    clicks : mapping of int to ObjectClicks, optional
        The user's extra clicks per object (:func:`assign_clicks`).
    check : callable
        Runs before each window (raises when the image changed meanwhile).

    Returns
    -------
    list of RefinedObject
        In id order.
    """
    labels = np.asarray(labels)
    if tuple(labels.shape) != tuple(ctx.hw):
        raise UserInputError(
            f"The labels plane is {labels.shape[1]} x {labels.shape[0]} pixels but the image is {ctx.hw[1]} x {ctx.hw[0]}: "
            "choose the labels layer that belongs to this image."
        )
    objs = label_objects(labels, ids)
    clicks = clicks or {}
    olds, prompts = [], []
    for label_id, sl in objs:
        crop = labels[sl] == label_id
        offset = (sl[0].start, sl[1].start)
        prompt = refine_prompt(crop, offset, ctx.hw, strategy, box_pad, clicks.get(label_id))
        olds.append(crop)
        prompts.append(prompt)
    if strategy == "point" and ctx.clicks_in_windows:
        news = yield from _decode_interior_clicks(ctx, objs, olds, prompts, clicks, encode, check)
    else:
        news = yield from _decode_box_windows(ctx, objs, olds, prompts, strategy, encode, check)
    return [RefinedObject(i, sl, old, new, _iou(old, sl, new)) for (i, sl), old, new in zip(objs, olds, news)]


def _decode_box_windows(ctx, objs, olds, prompts, strategy, encode, check) -> Job[list[ObjectPreview]]:
    """The box strategies: the objects' prompts decoded per window (all of a window's in one call),
    with the old masks as ``mask_input`` where ``strategy`` says so."""
    windows = plan_windows(ctx, np.array([p.box for p in prompts]))
    order = list(dict.fromkeys(windows))
    n = len(prompts)
    news: list[ObjectPreview | None] = [None] * n
    done = 0
    # a chunk of windows is encoded, then decoded: hundreds of objects' embeddings would not all
    # stay in the cache until their turn (313 nuclei evicted the first ones from 512 MB)
    for start in range(0, len(order), REFINE_CHUNK):
        chunk = order[start : start + REFINE_CHUNK]
        missing = [w for w in chunk if not ctx.is_ready(w)]
        if missing:
            yield Progress(done, n, f"Encoding {len(missing)} window(s) around the objects")
            yield from encode(missing)
        for window in chunk:
            ks = [k for k, w in enumerate(windows) if w == window]
            masks_in = None
            if "mask" in strategy:
                masks_in = [mask_logits(olds[k], (objs[k][1][0].start, objs[k][1][1].start), window, ctx.hw) for k in ks]
            # a window evicted meanwhile (a cache smaller than a chunk) is encoded again
            decoded = yield from with_embeddings(
                lambda: _decode_window(ctx, window, [prompts[k] for k in ks], masks_in), encode, check  # noqa: B023
            )
            for k, prev in zip(ks, decoded):
                news[k] = prev
            done += len(ks)
            yield Progress(done, n, f"Refined {done} of {n} object(s)")
    return news


def _decode_interior_clicks(ctx, objs, olds, prompts, clicks, encode, check) -> Job[list[ObjectPreview]]:
    """Strategy ``"point"``: each object's deepest interior point decoded as an Annotator click
    (the click's own window and box stage, batched per window as seeded everything mode does), so
    the old mask gives the place, not the extent; objects with the user's clicks take their box prompt."""
    seeds = []
    for (_, sl), crop in zip(objs, olds):
        row, col, _ = farthest_interior_point(crop)
        seeds.append((row + sl[0].start, col + sl[1].start))
    plain = [k for k, (i, _) in enumerate(objs) if i not in clicks]
    news: list = [None] * len(objs)
    if plain:
        got = yield from decode_seeds_job(ctx, np.array([seeds[k] for k in plain], np.float64), encode, what="Object", check=check)
        for k, prev in zip(plain, got):
            news[k] = prev
    for k in (k for k in range(len(objs)) if news[k] is None):
        window = plan_windows(ctx, prompts[k].box[None])[0]
        news[k] = (yield from with_embeddings(lambda: _decode_window(ctx, window, [prompts[k]], None)[0], encode, check))
    return news


def refinement_edits(
    labels: np.ndarray, refined: Sequence[RefinedObject], overwrite: bool = False
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Pixels that accepting ``refined`` changes in ``labels``, per object and value.

    Each object keeps its id. Its old pixels outside the new mask become background (0); the new
    mask is painted on background and on the object's own pixels only, unless ``overwrite`` (then
    it also takes pixels of other objects). Objects are applied in the given order.

    Parameters
    ----------
    labels : (H, W) int
        The current label plane (not modified).

    Returns
    -------
    list of (value, rows, cols)
        ``value`` to write at ``(rows, cols)`` (intp), in order; an object whose new mask is empty
        is left as it is (nothing listed for it).
    """
    plane = np.array(labels, copy=True)
    out = []
    for obj in refined:
        box = obj.new.bbox()
        if box is None:
            continue
        sl = obj.old_slices
        y0, x0 = min(sl[0].start, box[0]), min(sl[1].start, box[1])
        y1, x1 = max(sl[0].stop, box[2]), max(sl[1].stop, box[3])
        region = plane[y0:y1, x0:x1]
        own = region == obj.label_id
        new = obj.new.region(y0, y1, x0, x1)
        paint = new & ~own & ((region == 0) | bool(overwrite))
        clear = own & ~new
        for value, sel in ((0, clear), (obj.label_id, paint)):
            if sel.any():
                rr, cc = np.nonzero(sel)
                out.append((int(value), (rr + y0).astype(np.intp), (cc + x0).astype(np.intp)))
                region[sel] = value
    return out


def apply_refinements(labels: np.ndarray, refined: Sequence[RefinedObject], overwrite: bool = False) -> np.ndarray:
    """A copy of ``labels`` with ``refined`` accepted (:func:`refinement_edits`)."""
    out = np.array(labels, copy=True)
    for value, rr, cc in refinement_edits(labels, refined, overwrite):
        out[rr, cc] = value
    return out
