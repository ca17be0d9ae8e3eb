"""Decode strategies: how prompts become masks, as functions over a ``PromptableModel``.

The session, the Everything widget, the evaluation and the CLI share these (they hold no state
of their own): a :class:`DecodeContext` says which model, which plane, where embeddings come from
and how prompts are decoded; the functions plan windows, decode and paste masks back.

* :func:`object_window` — the window an object prompt is decoded in (None = the whole plane): an
  already-encoded window that fits the object (:func:`~napari_sam_micro.core.windows.reuse_window`),
  else a new one sized from the prompt (boxes: ``window_scale`` x their side; clicks: the object
  diameter estimated under the click).
* :func:`decode_prompts` — one preview per object of a prompt set (boxes batched per window).
* :func:`decode_click` — a fresh click on a 256-px model: the click, then the first mask's padded
  box decoded in the same window when it fits there (one window per click), else in a new one.
* :func:`decode_clicks_in_window` — many clicks in one window in one batched decoder call, then
  their boxes in one more (everything mode).

Embeddings are asked for through ``DecodeContext.get_embedding``, which raises
:class:`EmbeddingNotReady` naming the window to encode; the caller encodes it (a worker, or in-line
in a job) and calls again: decodes are cheap, embeddings are cached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .masks import mask_to_box_xyxy, stability_score
from .model_api import Embedding, PromptableModel
from .preprocess import prompt_window
from .prompts import ObjectPrompt
from .windows import (
    BOX_STAGE_CENTRE_JITTER, BOX_STAGE_SCALE_RANGE, REUSE_SCALE_RANGE, Window, as_trained, covers_plane, fits, reuse_window, square_window,
)

__all__ = [
    "refinable_previous",
    "EmbeddingNotReady",
    "ObjectPreview",
    "DecodeContext",
    "object_window",
    "decode_prompts",
    "decode_object",
    "decode_click",
    "decode_clicks_in_window",
    "decode_multimask",
    "click_box_windows",
    "click_box",
    "CLICK_WINDOW_FACTOR",
    "CLICK_WINDOW_MIN",
    "CLICK_WINDOW_GROWTH",
    "CLICK_BOX_PAD",
    "CLICK_OBJECT_FACTOR",
    "POINT_BOX_FRACTIONS",
]

#: A lone click on a ``crop_to_prompt`` model is decoded in a window this many times the object
#: diameter estimated at the click: the models were trained on windows 1.6-2.6 x the object's box
#: side, and the estimate is about 0.87 x that side on nuclei.
CLICK_WINDOW_FACTOR = 2.4
#: Smallest window (pixels) for a lone click.
CLICK_WINDOW_MIN = 32
#: How many times a click's window is doubled when its first mask reaches the window's border.
CLICK_WINDOW_GROWTH = 2
#: The box derived from a click's first mask is padded by this fraction of its longer side.
CLICK_BOX_PAD = 0.1
#: Box side of the object under a click, estimated as this many times the diameter measured there
#: (the diameter is about 0.87 x the box side on nuclei); used to find a reusable window.
CLICK_OBJECT_FACTOR = 1.15
#: Candidate box sides for ``points_as_boxes``, as fractions of the largest one (``max(window_min, min(H, W) / 8)``).
POINT_BOX_FRACTIONS = (0.125, 0.1875, 0.25, 0.375, 0.5, 0.75, 1.0)


class EmbeddingNotReady(RuntimeError):
    """A decode needs embeddings that are not computed yet.

    Attributes
    ----------
    windows : list of Window or None
        What to encode (``None`` = the whole plane).
    """

    def __init__(self, windows: Sequence[Window | None]):
        self.windows = list(windows)
        super().__init__(f"{len(self.windows)} embedding(s) to compute first")


@dataclass(frozen=True)
class ObjectPreview:
    """The predicted mask of one object, stored as the crop of the window it was decoded in.

    A preview costs memory in proportion to its window, not to the plane; :attr:`mask` pastes the
    crop into a whole-plane array when asked.

    Parameters
    ----------
    crop : (h, w) bool
        The mask inside ``window`` (``image[y0:y1, x0:x1]``); the whole ``(H, W)`` plane when
        ``window`` is None.
    predicted_iou, stability : float
        The model's IoU prediction and SAM's stability score of the chosen mask.
    kind : str
        ``"points"``, ``"box"`` or ``"box+points"``.
    low_res_logits : (1, 256, 256) float32
        Logits of the chosen mask in the model frame of ``window`` (refinement input).
    window : Window or None
        Crop the object was decoded in (None = the whole plane).
    hw : (int, int), optional
        ``(H, W)`` of the plane; needed with a ``window`` (default: the crop's shape).
    """

    crop: np.ndarray
    predicted_iou: float
    stability: float
    kind: str
    low_res_logits: np.ndarray
    window: Window | None = None
    hw: tuple[int, int] | None = None

    @property
    def plane_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the plane."""
        if self.hw is not None:
            return int(self.hw[0]), int(self.hw[1])
        if self.window is not None:
            raise ValueError("an ObjectPreview decoded in a window needs the plane's hw")
        return int(self.crop.shape[0]), int(self.crop.shape[1])

    @property
    def mask(self) -> np.ndarray:
        """``(H, W)`` bool on the whole plane (a new array for a windowed object: prefer :meth:`region`)."""
        if self.window is None:
            return self.crop
        out = np.zeros(self.plane_hw, dtype=bool)
        y0, y1, x0, x1 = self.window
        out[y0:y1, x0:x1] = self.crop
        return out

    @property
    def area(self) -> int:
        """Pixels in the mask."""
        return int(np.count_nonzero(self.crop))

    @property
    def offset(self) -> tuple[int, int]:
        """``(row, col)`` of the crop's first pixel on the plane."""
        return (0, 0) if self.window is None else (int(self.window[0]), int(self.window[2]))

    def bbox(self) -> tuple[int, int, int, int] | None:
        """``(y0, x0, y1, x1)`` half-open bounding box of the mask on the plane; None when empty."""
        rows = np.flatnonzero(self.crop.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(self.crop.any(axis=0))
        r, c = self.offset
        return r + int(rows[0]), c + int(cols[0]), r + int(rows[-1]) + 1, c + int(cols[-1]) + 1

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``(y1 - y0, x1 - x0)`` bool: the mask in ``plane[y0:y1, x0:x1]`` (equals ``mask[y0:y1, x0:x1]``)."""
        out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
        r, c = self.offset
        h, w = self.crop.shape
        a0, a1, b0, b1 = max(y0, r), min(y1, r + h), max(x0, c), min(x1, c + w)
        if a0 < a1 and b0 < b1:
            out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = self.crop[a0 - r : a1 - r, b0 - c : b1 - c]
        return out

    def touches_window_border(self) -> bool:
        """Whether the mask touches a side of its window that is not the plane's border.

        :func:`~napari_sam_micro.core.windows.reaches_border` of :attr:`mask`, from the crop alone.
        """
        if self.window is None:
            return False
        y0, y1, x0, x1 = self.window
        h, w = self.plane_hw
        c = self.crop
        sides = [side for keep, side in ((y0 > 0, c[0]), (y1 < h, c[-1]), (x0 > 0, c[:, 0]), (x1 < w, c[:, -1])) if keep]
        return any(bool(side.any()) for side in sides)


@dataclass(frozen=True)
class DecodeContext:
    """What the decode strategies need to know about one plane.

    Parameters
    ----------
    model : PromptableModel
    hw : (int, int)
        ``(H, W)`` of the plane.
    get_embedding : callable
        ``get_embedding(window or None) -> Embedding``; raises :class:`EmbeddingNotReady`.
    is_ready : callable
        ``is_ready(window or None) -> bool``: the embedding is available without encoding.
    crop_to_prompt : bool
        Decode each object in a window around it (256-px models).
    points_as_boxes : bool
        Box-only models: a click becomes candidate boxes around it.
    window_scale, window_min : float, int
        A box's window: ``window_scale`` x its longer side, at least ``window_min`` pixels.
    click_diameter : callable, optional
        ``click_diameter(x, y) -> float``: the object diameter (pixels) estimated under a click.
    encoded : callable
        ``encoded() -> sequence of Window``: windows of this plane already encoded (reuse candidates).
    reuse_scale : (float, float)
        Window side / object side at which an object is decoded in a window made for another one
        (:data:`~napari_sam_micro.core.windows.REUSE_SCALE_RANGE`; everything mode allows more).
    """

    model: PromptableModel
    hw: tuple[int, int]
    get_embedding: Callable[[Window | None], Embedding]
    is_ready: Callable[[Window | None], bool]
    crop_to_prompt: bool = False
    points_as_boxes: bool = False
    window_scale: float = 2.0
    window_min: int = 64
    click_diameter: Callable[[float, float], float] | None = None
    encoded: Callable[[], Sequence[Window]] = tuple
    reuse_scale: tuple[float, float] = REUSE_SCALE_RANGE

    @property
    def clicks_in_windows(self) -> bool:
        """Whether fresh clicks take :func:`decode_click` (crop models that take clicks)."""
        return self.crop_to_prompt and not self.points_as_boxes

    def plane_or(self, window: Window) -> Window | None:
        """``window``, or None when it is the whole plane."""
        return None if covers_plane(window, self.hw) else tuple(int(v) for v in window)

    def point_box_scale(self) -> float:
        """Side of the largest candidate box for a click (``points_as_boxes``), in pixels."""
        return float(max(self.window_min, min(self.hw) // 8))


def prompt_bbox(obj: ObjectPrompt) -> np.ndarray:
    """``(x0, y0, x1, y1)`` of everything in an object prompt."""
    pts = []
    if obj.box is not None:
        pts.append(np.asarray(obj.box, np.float64).reshape(2, 2))
    if obj.point_coords is not None and len(obj.point_coords):
        pts.append(np.asarray(obj.point_coords, np.float64).reshape(-1, 2))
    allp = np.concatenate(pts, axis=0)
    return np.concatenate([allp.min(axis=0), allp.max(axis=0)])


def _positive_centre(obj: ObjectPrompt) -> np.ndarray | None:
    pos = np.asarray(obj.point_coords, np.float64)[np.asarray(obj.point_labels) == 1]
    return pos.mean(axis=0) if len(pos) else None


def click_box(ctx: DecodeContext, x: float, y: float) -> tuple[np.ndarray, float]:
    """Estimated object box ``(x0, y0, x1, y1)`` under a click at ``(x, y)``, and the diameter estimated there."""
    diameter = float(ctx.click_diameter(x, y)) if ctx.click_diameter is not None else float(ctx.window_min) / 2.0
    half = CLICK_OBJECT_FACTOR * diameter / 2.0
    return np.array([x - half, y - half, x + half, y + half]), diameter


def object_window(ctx: DecodeContext, obj: ObjectPrompt, previous: ObjectPreview | None = None) -> Window | None:
    """The window ``obj`` is decoded in (None = the whole plane).

    Refinements keep the previous window while the prompts stay well inside it; a box, or a click
    on a model that takes clicks, first looks for an already-encoded window that fits the object
    (:func:`~napari_sam_micro.core.windows.reuse_window`); otherwise a new window is sized from
    the prompt.
    """
    if not ctx.crop_to_prompt:
        return None
    hw = ctx.hw
    bbox = prompt_bbox(obj)
    if previous is not None and previous.window is not None:
        # keep the window while the prompts stay well inside it: the crop embedding is
        # reused and the previous logits still refine the mask
        y0, y1, x0, x1 = previous.window
        my, mx = (y1 - y0) / 6.0, (x1 - x0) / 6.0
        if bbox[0] >= x0 + mx and bbox[2] <= x1 - mx and bbox[1] >= y0 + my and bbox[3] <= y1 - my:
            return previous.window
    if obj.box is not None:
        reused = reuse_window(np.asarray(obj.box, np.float64), ctx.encoded(), hw, ctx.reuse_scale)
        if reused is not None:
            return reused
        window = prompt_window(bbox, hw, scale=ctx.window_scale, min_size=ctx.window_min)
        return ctx.plane_or(window)
    if ctx.clicks_in_windows:
        centre = _positive_centre(obj)
        if centre is None:
            return ctx.plane_or(prompt_window(bbox, hw, scale=ctx.window_scale, min_size=ctx.window_min))
        est_box, diameter = click_box(ctx, *centre)
        if len(obj.point_coords) == 1:
            reused = reuse_window(est_box, ctx.encoded(), hw, ctx.reuse_scale)
            if reused is not None:
                return reused
        # a click says where, not how big: the window follows the object size estimated there
        side = max(CLICK_WINDOW_MIN, round(CLICK_WINDOW_FACTOR * diameter))
        source = bbox if len(obj.point_coords) > 1 else obj.point_coords
        return ctx.plane_or(prompt_window(source, hw, scale=ctx.window_scale, min_size=int(side)))
    source = bbox if len(obj.point_coords) > 1 else obj.point_coords
    min_size = ctx.window_min
    if ctx.points_as_boxes:
        # the object's size is unknown: candidate boxes up to the point-box scale, in a window
        # 1.5 times larger so that the largest candidate still has context around it
        min_size = int(round(1.5 * ctx.point_box_scale()))
    return ctx.plane_or(prompt_window(source, hw, scale=ctx.window_scale, min_size=min_size))


def _offset(window: Window | None) -> np.ndarray:
    if window is None:
        return np.zeros(2, np.float32)
    return np.array([window[2], window[0]], np.float32)  # (x0, y0)


def previews(
    ctx: DecodeContext,
    window: Window | None,
    emb: Embedding,
    low_res: np.ndarray,
    iou: np.ndarray,
    kinds: Sequence[str],
    choose: Callable[[np.ndarray, np.ndarray], int] | None = None,
) -> list[ObjectPreview]:
    """Choose one mask per prompt, upscale it and paste it into the plane.

    Parameters
    ----------
    low_res : (B, M, 256, 256) float32
        Decoder logits in ``window``'s model frame.
    iou : (B, M) float32
        Predicted IoUs.
    kinds : sequence of str
        Prompt kind of each of the ``B`` objects.
    choose : callable, optional
        ``choose(iou (M,), logits (M, h, w)) -> int`` for multimask outputs; default: highest predicted IoU.
    """
    thr = float(ctx.model.mask_threshold)
    n, m = iou.shape
    if choose is not None and m > 1:
        up_all = ctx.model.upscale(emb, low_res)  # (B, M, h, w)
        best = np.array([int(choose(iou[b], up_all[b])) for b in range(n)])
        up = up_all[np.arange(n), best]
    else:
        best = np.argmax(iou, axis=1)
        up = ctx.model.upscale(emb, low_res[np.arange(n), best][:, None])[:, 0]
    chosen = low_res[np.arange(n), best]
    stab = stability_score(up, thr)
    out = []
    for b in range(n):
        crop = up[b] > thr  # kept as the window's crop: O(window), not O(plane)
        out.append(
            ObjectPreview(
                crop, float(iou[b, best[b]]), float(stab[b]), kinds[b], np.asarray(chosen[b][None], np.float32), window, tuple(ctx.hw)
            )
        )
    return out


def _window_args(obj: ObjectPrompt, window: Window | None):
    """The object's decoder arguments ``(coords, labels, box)`` in ``window``'s frame (float32)."""
    off = _offset(window)
    coords, labels, box = obj.decoder_args()
    if coords is not None:
        coords = (coords - off[None, None, :]).astype(np.float32)
    if box is not None:
        box = (box - np.tile(off, 2)[None]).astype(np.float32)
    return coords, labels, box


def decode_object(ctx: DecodeContext, obj: ObjectPrompt, window: Window | None, emb: Embedding, mask_input=None, choose=None) -> ObjectPreview:
    """One decoder call for one object (points and/or box) in ``window``; the object's preview."""
    coords, labels, box = _window_args(obj, window)
    multimask = mask_input is None and box is None and coords is not None and coords.shape[1] == 1
    out = ctx.model.decode(emb, point_coords=coords, point_labels=labels, boxes=box, mask_input=mask_input, multimask_output=multimask)
    return previews(ctx, window, emb, out.low_res_logits, out.iou_predictions, [obj.kind], choose if multimask else None)[0]


def _padded_box(preview: ObjectPreview, hw: tuple[int, int]) -> np.ndarray:
    r, c = preview.offset
    x0, y0, x1, y1 = (mask_to_box_xyxy(preview.crop) + np.array([c, r, c, r])).astype(np.float64)
    pad = CLICK_BOX_PAD * max(x1 - x0, y1 - y0) + 1.0
    return np.clip([x0 - pad, y0 - pad, x1 + pad, y1 + pad], 0, [hw[1] - 1, hw[0] - 1, hw[1] - 1, hw[0] - 1])


def _box_stage_window(ctx: DecodeContext, box: np.ndarray, window: Window | None) -> Window | None:
    """Where a click's second stage is decoded: the window a box prompt gets, or an encoded window
    (the click's own included) that is nearly it (:data:`~napari_sam_micro.core.windows.BOX_STAGE_SCALE_RANGE`,
    :data:`~napari_sam_micro.core.windows.BOX_STAGE_CENTRE_JITTER`). The box stage sets the final mask."""

    def near(w):
        return w is not None and as_trained(box, w, ctx.hw, BOX_STAGE_SCALE_RANGE, BOX_STAGE_CENTRE_JITTER)

    if window is None or near(window):
        return window
    reused = reuse_window(box, [w for w in ctx.encoded() if near(w)], ctx.hw, BOX_STAGE_SCALE_RANGE)
    if reused is not None:
        return reused
    return ctx.plane_or(prompt_window(box, ctx.hw, scale=ctx.window_scale, min_size=ctx.window_min))


def decode_click(ctx: DecodeContext, obj: ObjectPrompt, window: Window | None, choose=None) -> ObjectPreview:
    """Decode a fresh points-only prompt on a ``crop_to_prompt`` model, in two stages.

    1. The points in ``window`` (sized from the object diameter estimated at the click, or an
       encoded window the estimated object fits in); a single click uses the three-mask output and
       keeps ``choose(iou (3,), logits (3, h, w))`` (default: the highest predicted IoU). While the
       mask reaches a border of the window that is not the image's, the window is doubled (at most
       ``CLICK_WINDOW_GROWTH`` times).
    2. The first mask's bounding box (padded by ``CLICK_BOX_PAD``) plus the points, decoded in the
       same window when it is a window the models were trained on for that box
       (:func:`~napari_sam_micro.core.windows.as_trained`: one window per click), else in an
       encoded window that fits or the window a box prompt gets.

    Raises :class:`EmbeddingNotReady` for a window still to encode.
    """
    hw = ctx.hw
    first = None
    for attempt in range(CLICK_WINDOW_GROWTH + 1):
        first = decode_object(ctx, obj, window, ctx.get_embedding(window), choose=choose)
        if window is None or attempt == CLICK_WINDOW_GROWTH or not first.touches_window_border():
            break
        y0, y1, x0, x1 = window
        bigger = ctx.plane_or(square_window((x0 + x1) / 2.0, (y0 + y1) / 2.0, 2 * max(y1 - y0, x1 - x0), hw))
        if bigger == window:
            break
        window = bigger
    if first is None or not first.crop.any():
        return first
    box = _padded_box(first, hw)
    boxed = ObjectPrompt(obj.point_coords, obj.point_labels, box.astype(np.float32), "box+points")
    window2 = _box_stage_window(ctx, box, window)
    second = decode_object(ctx, boxed, window2, ctx.get_embedding(window2))
    return replace(second, kind=obj.kind)


def click_box_windows(ctx: DecodeContext, points_xy: np.ndarray, window: Window | None) -> list[Window | None]:
    """The second-stage windows single clicks at ``points_xy`` would need after stage 1 in ``window``.

    One batched decoder call (no encoding beyond ``window``): what pre-encoding encodes so that a
    later click on these objects is decode-only. Clicks whose first mask is empty or reaches the
    window's border are left out.
    """
    emb = ctx.get_embedding(window)
    off = _offset(window)
    pts = np.asarray(points_xy, np.float64).reshape(-1, 2)
    coords = (pts - off[None])[:, None, :].astype(np.float32)
    out = ctx.model.decode(emb, point_coords=coords, point_labels=np.ones((len(pts), 1), np.int32), multimask_output=True)
    needed = []
    for prev in previews(ctx, window, emb, out.low_res_logits, out.iou_predictions, ["points"] * len(pts)):
        if prev.crop.any() and not (window is not None and prev.touches_window_border()):
            needed.append(_box_stage_window(ctx, _padded_box(prev, ctx.hw), window))
    return list(dict.fromkeys(needed))


def decode_clicks_in_window(
    ctx: DecodeContext, points_xy: np.ndarray, window: Window | None, choose=None, box_stage_reuse: bool = False
) -> list[ObjectPreview | None]:
    """Single positive clicks decoded together in one window: two batched decoder calls.

    Stage 1 decodes every click in ``window`` (three masks each, ``choose`` picks one); stage 2
    decodes each first mask's padded box plus its click where a click's box stage goes (the window a
    box gets, or an encoded one nearly it: often ``window`` itself), one batched call per window;
    the box windows still to encode are asked for together (:class:`EmbeddingNotReady`). A click
    whose first mask is empty or reaches the window's border gets None: the caller decodes it
    alone with :func:`decode_click`.

    Parameters
    ----------
    points_xy : (B, 2) float
        Clicks ``(x, y)`` in plane pixels.
    window : Window or None
    box_stage_reuse : bool
        Decode a box stage in ``window`` itself wherever a box prompt would reuse it (the object
        fits by :func:`~napari_sam_micro.core.windows.fits` at the prompts' reuse scale), else where
        an Annotator click's box stage goes (everything mode, see
        :data:`~napari_sam_micro.core.seeded.BOX_STAGE_REUSE`).

    Returns
    -------
    list of ObjectPreview or None
        One per click, kind ``"points"``.
    """
    emb = ctx.get_embedding(window)
    off = _offset(window)
    pts = np.asarray(points_xy, np.float64).reshape(-1, 2)
    coords = (pts - off[None])[:, None, :].astype(np.float32)
    labels = np.ones((len(pts), 1), np.int32)
    out = ctx.model.decode(emb, point_coords=coords, point_labels=labels, multimask_output=True)
    first = previews(ctx, window, emb, out.low_res_logits, out.iou_predictions, ["points"] * len(pts), choose)
    keep, boxes, stage2 = [], [], []
    for b, prev in enumerate(first):
        if not prev.crop.any() or (window is not None and prev.touches_window_border()):
            continue
        box = _padded_box(prev, ctx.hw)
        keep.append(b)
        boxes.append(box)
        here = box_stage_reuse and (window is None or fits(box, window, ctx.hw, ctx.reuse_scale))
        stage2.append(window if here else _box_stage_window(ctx, box, window))
    missing = [w for w in dict.fromkeys(stage2) if not ctx.is_ready(w)]
    if missing:  # the box windows of this window's objects: encoded together, then decoded again
        raise EmbeddingNotReady(missing)
    result: list[ObjectPreview | None] = [None] * len(pts)
    for window2 in dict.fromkeys(stage2):
        rows = [k for k, w in enumerate(stage2) if w == window2]
        emb2, off2 = ctx.get_embedding(window2), _offset(window2)
        clicks = (pts[[keep[k] for k in rows]] - off2[None])[:, None, :].astype(np.float32)
        boxes_w = (np.asarray([boxes[k] for k in rows]) - np.tile(off2, 2)[None]).astype(np.float32)
        out2 = ctx.model.decode(emb2, point_coords=clicks, point_labels=labels[: len(rows)], boxes=boxes_w, multimask_output=False)
        done = previews(ctx, window2, emb2, out2.low_res_logits, out2.iou_predictions, ["points"] * len(rows))
        for k, prev in zip(rows, done):
            result[keep[k]] = prev
    return result

def _points_as_boxes(ctx: DecodeContext, obj: ObjectPrompt, window: Window | None, emb: Embedding) -> ObjectPreview:
    """Decode a click prompt on a box-only model: candidate boxes around it, one batched call."""
    off = _offset(window)
    if obj.box is not None:
        # box + points: the box is the prompt a box-only model understands
        out = ctx.model.decode(emb, boxes=(obj.box[None] - np.tile(off, 2)[None]).astype(np.float32), multimask_output=False)
        return previews(ctx, window, emb, out.low_res_logits, out.iou_predictions, [obj.kind])[0]
    pts = np.asarray(obj.point_coords, np.float64) - off[None]
    lab = np.asarray(obj.point_labels)
    pos, neg = pts[lab == 1], pts[lab == 0]
    eh, ew = emb.original_size
    side = float(min(ctx.point_box_scale(), max(eh, ew)))
    (x0, y0), (x1, y1) = pos.min(axis=0), pos.max(axis=0)
    cx, cy, extent = (x0 + x1) / 2.0, (y0 + y1) / 2.0, max(x1 - x0, y1 - y0)
    halves = [max(frac * side, extent + 4.0) / 2.0 for frac in POINT_BOX_FRACTIONS]
    boxes = np.array([[cx - h, cy - h, cx + h, cy + h] for h in halves])
    boxes = np.clip(boxes, 0, [ew - 1, eh - 1, ew - 1, eh - 1]).astype(np.float32)
    out = ctx.model.decode(emb, boxes=boxes, multimask_output=False)
    masks = ctx.model.upscale(emb, out.low_res_logits)[:, 0] > float(ctx.model.mask_threshold)
    iou = out.iou_predictions[:, 0]

    def inside(mask, p):
        r = np.clip(np.round(p[:, 1]).astype(int), 0, eh - 1)
        c = np.clip(np.round(p[:, 0]).astype(int), 0, ew - 1)
        return mask[r, c]

    valid = [b for b, m in enumerate(masks) if m.any() and inside(m, pos).all() and not (len(neg) and inside(m, neg).any())]
    best = max(valid, key=lambda b: iou[b]) if valid else int(np.argmax(iou))
    return previews(ctx, window, emb, out.low_res_logits[[best]], out.iou_predictions[[best]], [obj.kind])[0]


def decode_prompts(ctx: DecodeContext, objects: Sequence[ObjectPrompt], previous: ObjectPreview | None = None) -> list[ObjectPreview]:
    """One preview per object prompt (the Annotator's preview, the evaluation's simulated user).

    Plain boxes sharing a window go through **one** batched decoder call. A fresh click takes
    :func:`decode_click` on crop models; points added to the ``previous`` single-object prompt
    refine it with its low-resolution logits as ``mask_input`` (SAM's interactive refinement).

    Raises
    ------
    EmbeddingNotReady
        Every window still to encode for the first stage (later stages may raise once more).
    """
    windows = [object_window(ctx, obj, previous) for obj in objects]
    missing = [w for w in dict.fromkeys(windows) if not ctx.is_ready(w)]
    if missing:
        raise EmbeddingNotReady(missing)
    results: list[ObjectPreview | None] = [None] * len(objects)
    groups: dict = {}
    for k, (obj, window) in enumerate(zip(objects, windows)):
        if obj.kind == "box":
            groups.setdefault(window, []).append(k)
    for window, ks in groups.items():
        emb = ctx.get_embedding(window)
        boxes = np.stack([np.asarray(objects[k].box, np.float32) for k in ks]) - np.tile(_offset(window), 2)[None]
        out = ctx.model.decode(emb, boxes=boxes.astype(np.float32), multimask_output=False)
        for k, prev in zip(ks, previews(ctx, window, emb, out.low_res_logits, out.iou_predictions, ["box"] * len(ks))):
            results[k] = prev
    for k, (obj, window) in enumerate(zip(objects, windows)):
        if obj.kind == "box":
            continue
        if ctx.points_as_boxes:
            results[k] = _points_as_boxes(ctx, obj, window, ctx.get_embedding(window))
        elif obj.box is None and previous is None:  # a fresh click
            if ctx.clicks_in_windows:
                results[k] = decode_click(ctx, obj, window)
            else:
                results[k] = decode_object(ctx, obj, window, ctx.get_embedding(window))
        else:
            mask_input = None
            if previous is not None and previous.window == window:
                mask_input = previous.low_res_logits[None].astype(np.float32)
            results[k] = decode_object(ctx, obj, window, ctx.get_embedding(window), mask_input=mask_input)
    return results


def decode_multimask(ctx: DecodeContext, obj: ObjectPrompt, window: Window | None) -> list[ObjectPreview]:
    """SAM's candidate masks of one object prompt (three for SAM-family decoders), one decoder call.

    The prompt is decoded once in ``window`` with ``multimask_output=True`` and every candidate is
    kept, in the decoder's order: SAM's answer to an ambiguous prompt (``SamPredictor.predict(...,
    multimask_output=True)``). No click box stage and no refinement: :func:`decode_prompts` is
    what the Annotator shows.

    Raises :class:`EmbeddingNotReady` when ``window`` is still to encode.
    """
    emb = ctx.get_embedding(window)
    coords, labels, box = _window_args(obj, window)
    out = ctx.model.decode(emb, point_coords=coords, point_labels=labels, boxes=box, multimask_output=True)
    n = out.iou_predictions.shape[1]
    # each candidate as its own row: previews() keeps one mask per row
    low_res = np.asarray(out.low_res_logits)[0][:, None]
    iou = np.asarray(out.iou_predictions)[0][:, None]
    return previews(ctx, window, emb, low_res, iou, [obj.kind] * n)


def refinable_previous(previous_objects, previous_prompts, objects, prompts) -> ObjectPreview | None:
    """The previous single-object preview when ``prompts`` only add points to ``previous_prompts``.

    Then the new points refine that object (its low-resolution logits become ``mask_input``)
    instead of starting a new one. ``objects`` are :func:`~napari_sam_micro.core.prompts.object_prompts`
    of ``prompts``; returns None when there was not exactly one object before and now, when the
    boxes changed, or when earlier points moved or changed label.
    """
    if len(previous_objects) != 1 or len(objects) != 1:
        return None
    old, new = previous_prompts, prompts
    if new.n_points <= old.n_points or new.n_boxes != old.n_boxes or not np.array_equal(old.boxes_xyxy, new.boxes_xyxy):
        return None
    if not (
        np.array_equal(new.points_xy[: old.n_points], old.points_xy)
        and np.array_equal(new.point_labels[: old.n_points], old.point_labels)
    ):
        return None
    return previous_objects[0]
