"""Objects through z-slices and time frames: propagation of prompted objects, and 3D / time everything mode.

**Propagation** (:func:`propagate_job`): objects known on one plane of a stack (the Annotator's
preview, or committed labels chosen by id) are segmented on the neighbouring planes along one axis
(z or t), each plane prompted from the previous plane's mask
(:func:`~napari_sam_micro.core.propagation.next_prompt`: its padded box, optionally its logits as
``mask_input`` or its interior point), until a stop rule fires
(:func:`~napari_sam_micro.core.propagation.stop_reason`) or the range ends. It runs through an
:class:`~napari_sam_micro.session.AnnotationSession` of its own (one plane at a time, sharing the
caller's model and embedding cache), so prompts are decoded exactly like the Annotator's: windows
around the object for 256-px models, the ONNX Runtime encoder on the CPU, cached embeddings. The
result is turned into commit items (:func:`propagation_commit_plan`): one object id on every
plane, so that :func:`~napari_sam_micro._napari.commit.commit_items` paints the whole propagation
as **one** undo step; a cell propagated over time frames keeps its id (simple tracking).

**3D / time everything mode** (:func:`everything_stack_job`): every plane is segmented by
:func:`~napari_sam_micro.segmentation.everything_job` and the planes are joined by overlap with
:func:`~napari_sam_micro.core.overlap.link_stack`: one id per 3D object (z) or per track (t).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .core.cache import EmbeddingCache
from .core.decoding import ObjectPreview, decode_object, object_window
from .core.errors import PromptError, UserInputError
from .core.labels import next_free_id
from .core.masks import postprocess_mask
from .core.model_api import PromptableModel
from .core.overlap import link_stack, split_at_waists
from .core.preprocess import PreprocessConfig
from .core.progress import Job, Progress
from .core.propagation import STOP_END, StopRules, next_prompt, plane_sequence, stop_reason
from .core.windows import as_trained
from .segmentation import EverythingOptions, everything_job
from .session import AnnotationSession, CommitItem

__all__ = [
    "PropagationOptions",
    "PlaneMask",
    "PropagatedObject",
    "propagate_job",
    "propagation_commit_plan",
    "stack_planes",
    "StackEverything",
    "everything_stack_job",
    "WAIST_RATIO",
]

#: ``prompt`` column of propagated objects in the object table.
PROPAGATED = "propagated"


#: Waist depth at which 3D everything mode cuts a linked object in z
#: (:func:`~napari_sam_micro.core.overlap.split_at_waists`). Chosen on the one 3D stack with exact
#: labels here (stardist's synthetic nuclei; F1@0.5 over the whole stack, on one run's per-plane
#: labels: 0.246 linked only, 0.481 / 0.541 with waists at 0.7 / 0.85 and one-plane objects
#: dropped, 0.455 / 0.460 when the waist's plane started the next object; the test's fp32 run:
#: 0.294 linked only, 0.548 with these rules), so these numbers are optimistic.
WAIST_RATIO = 0.85


@dataclass(frozen=True)
class PropagationOptions:
    """How objects are propagated.

    Parameters
    ----------
    axis : int
        The leading axis (of the stack's leading, non-image axes) to step along: z or t.
    direction : {"both", "forward", "backward"}
    first, last : int, optional
        Inclusive range of planes along ``axis`` (default the whole axis).
    prompt : str
        :data:`~napari_sam_micro.core.propagation.PROMPT_MODES`. ``box+point`` (the previous mask's
        box and its interior point) is the default: on two nuclei of the synthetic 3D stack
        (micro-tiny, 13 planes) it gave 3D IoU 0.64 / 0.69 where the box alone gave 0.46 / 0.39 and
        box + logits 0.42 / 0.43 (the box alone lets the mask grow plane after plane; docs/models.md).
    rules : StopRules
    fill_holes, keep_largest : bool
        Clean each plane's mask (one piece, no holes) before it prompts the next plane.
    """

    axis: int = 0
    direction: str = "both"
    first: int | None = None
    last: int | None = None
    prompt: str = "box+point"
    rules: StopRules = field(default_factory=StopRules)
    fill_holes: bool = True
    keep_largest: bool = True


@dataclass(frozen=True, eq=False)
class PlaneMask:
    """One object on one plane.

    Parameters
    ----------
    index : tuple of int
        The plane's position along every leading axis.
    preview : ObjectPreview
        The mask (a window's crop), its predicted IoU and stability.
    """

    index: tuple
    preview: ObjectPreview

    @property
    def predicted_iou(self) -> float:
        return float(self.preview.predicted_iou)


@dataclass(eq=False)
class PropagatedObject:
    """One object through the planes: the start plane and every plane it was propagated to.

    Attributes
    ----------
    key : int
        The caller's key (a label id, or 0 for the preview).
    axis : int
    start : PlaneMask
    planes : dict of int to PlaneMask
        By position along ``axis``, the start plane included.
    stopped : dict of str to (int, str)
        ``{"forward" | "backward": (plane where it stopped, reason)}``.
    """

    key: int
    axis: int
    start: PlaneMask
    planes: dict = field(default_factory=dict)
    stopped: dict = field(default_factory=dict)

    def plane_ious(self) -> dict[int, float]:
        """``{plane: predicted IoU}`` in plane order."""
        return {p: self.planes[p].predicted_iou for p in sorted(self.planes)}

    def weakest_plane(self) -> tuple[int, float]:
        """``(plane, predicted IoU)`` of the plane with the lowest predicted IoU."""
        ious = self.plane_ious()
        plane = min(ious, key=lambda p: (ious[p] if np.isfinite(ious[p]) else np.inf, p))
        return plane, ious[plane]


def stack_planes(stack: np.ndarray, n_leading: int | None = None) -> tuple[Callable[[tuple], np.ndarray], tuple]:
    """``(get_plane, leading_shape)`` of an array whose image axes come last.

    Parameters
    ----------
    stack : array-like, (..., H, W) or (..., H, W, C)
    n_leading : int, optional
        Leading (z, t, ...) axes; default ``stack.ndim - 2``.
    """
    n = stack.ndim - 2 if n_leading is None else int(n_leading)
    return (lambda index: np.asarray(stack[tuple(index)])), tuple(int(s) for s in stack.shape[:n])


def _clean(preview: ObjectPreview, options: PropagationOptions) -> ObjectPreview:
    if not (options.fill_holes or options.keep_largest):
        return preview
    crop = postprocess_mask(preview.crop, fill_holes=options.fill_holes, keep_largest=options.keep_largest)
    return replace(preview, crop=crop)


def _start_preview(mask: np.ndarray, iou: float) -> ObjectPreview:
    mask = np.asarray(mask, dtype=bool)
    return ObjectPreview(mask, float(iou), float("nan"), "start", np.zeros((1, 256, 256), np.float32), None, mask.shape)


def _decode_next(session: AnnotationSession, prev: ObjectPreview, options: PropagationOptions):
    """Decode the object on the session's plane from ``prev`` (a job: encodes its window first)."""
    obj = next_prompt(prev.mask, options.prompt, options.rules.box_pad)
    ctx = session.decode_context()
    hw = ctx.hw
    window = None
    if ctx.crop_to_prompt:
        # the previous plane's window when it is one the model was trained on for this box: the
        # logits then share its frame (mask_input); else the window a box prompt gets
        keep = prev.window is not None and prev.kind != "start" and as_trained(obj.box, prev.window, hw)
        window = prev.window if keep else object_window(ctx, obj)
    yield from session.embeddings_job([window])
    mask_input = None
    if options.prompt == "box+mask" and prev.kind != "start" and prev.window == window:
        mask_input = prev.low_res_logits[None].astype(np.float32)
    out = decode_object(ctx, obj, window, ctx.get_embedding(window), mask_input=mask_input)
    return _clean(out, options)


def propagate_job(
    model: PromptableModel,
    spec,
    get_plane: Callable[[tuple], np.ndarray],
    leading_shape: Sequence[int],
    start: Sequence[int],
    start_masks: dict,
    options: PropagationOptions | None = None,
    *,
    start_ious: dict | None = None,
    cache: EmbeddingCache | None = None,
    preprocess: PreprocessConfig | None = None,
    model_id: str | None = None,
) -> Job[list[PropagatedObject]]:
    """Propagate objects from plane ``start`` along ``options.axis``; a job (cancellable between planes).

    Parameters
    ----------
    model, spec
        A loaded model and its registry entry (how prompts are decoded).
    get_plane : callable
        ``get_plane(index) -> (H, W)`` (or ``(H, W, C)``) raw plane at a leading index.
    leading_shape : tuple of int
        Sizes of the leading axes (z, t, ...).
    start : tuple of int
        Leading index of the plane the objects are known on.
    start_masks : dict of int to (H, W) bool
        The objects on the start plane by key (label id, or 0 for a preview).
    options : PropagationOptions, optional
    start_ious : dict of int to float, optional
        Predicted IoU of each start mask (NaN when unknown).
    cache, preprocess, model_id
        Shared embedding cache, normalisation, the model's identity in cache keys.

    Returns
    -------
    list of PropagatedObject
        One per start mask, in the order given.
    """
    options = options or PropagationOptions()
    start, leading_shape, axis, masks = _checked_inputs(start, leading_shape, start_masks, options)
    forward, backward = plane_sequence(start[axis], leading_shape[axis], options.direction, options.first, options.last)
    objects = _start_objects(masks, start, axis, start_ious or {})
    session = AnnotationSession(
        model, cache, preprocess, model_id=model_id or spec.embedding_id, **AnnotationSession.options_for(spec)
    )
    total = len(forward) + len(backward)
    sweep = _Sweep(session, get_plane, start, axis, options)
    done = 0
    for name, planes in (("forward", forward), ("backward", backward)):
        yield from _propagate_direction(sweep, objects, name, planes, (done, total))
        done = len(forward) if name == "forward" else total
    yield Progress(total, total, "Propagation done")
    return objects


def _checked_inputs(start, leading_shape, start_masks: dict, options: PropagationOptions):
    """``(start, leading_shape, axis, masks)`` as ints and bool masks; errors when there is nothing to propagate."""
    start = tuple(int(i) for i in start)
    leading_shape = tuple(int(s) for s in leading_shape)
    if not leading_shape:
        raise UserInputError(
            "The image has a single plane: there is nothing to propagate to. Open a z-stack or a time-lapse."
        )
    axis = int(options.axis)
    if not 0 <= axis < len(leading_shape) or len(start) != len(leading_shape):
        raise UserInputError(f"Cannot propagate along axis {axis} of an image with {len(leading_shape)} stack axes.")
    masks = {int(k): np.asarray(m, bool) for k, m in start_masks.items()}
    if not masks or not any(m.any() for m in masks.values()):
        raise PromptError("There is no object to propagate: make a preview or choose a committed label first.")
    return start, leading_shape, axis, masks


def _start_objects(masks: dict, start: tuple, axis: int, ious: dict) -> list[PropagatedObject]:
    """One :class:`PropagatedObject` per non-empty start mask, holding only its start plane."""
    objects = []
    for key, mask in masks.items():
        begin = PlaneMask(start, _start_preview(mask, ious.get(key, float("nan"))))
        objects.append(PropagatedObject(key, axis, begin, {start[axis]: begin}))
    return [o for o in objects if o.start.preview.area > 0]


@dataclass(frozen=True, eq=False)
class _Sweep:
    """What one :func:`propagate_job` run steps its objects through the planes with."""

    session: AnnotationSession
    get_plane: Callable[[tuple], np.ndarray]
    start: tuple
    axis: int
    options: PropagationOptions


def _propagate_direction(sweep: _Sweep, objects: list, name: str, planes: Sequence[int], progress: tuple[int, int]):
    """Propagate ``objects`` through ``planes`` in direction ``name``; a job recording where each one stops."""
    done, total = progress
    start, axis = sweep.start, sweep.axis
    previous = {id(o): o.start.preview for o in objects}
    peak = {id(o): o.start.preview.area for o in objects}  # largest area so far, for the waist rule
    active = list(objects)
    for plane in planes:
        if not active:
            break
        index = start[:axis] + (plane,) + start[axis + 1 :]
        yield Progress(done, total, f"Propagating {name}: plane {plane} ({len(active)} object(s))")
        sweep.session.set_image(sweep.get_plane(index))
        for obj in list(active):
            prev = previous[id(obj)]
            out = yield from _decode_next(sweep.session, prev, sweep.options)
            reason = stop_reason(prev.area, out.area, out.predicted_iou, sweep.options.rules, peak[id(obj)])
            if reason is not None:
                obj.stopped[name] = (plane, reason)
                active.remove(obj)
                continue
            obj.planes[plane] = PlaneMask(index, replace(out, kind=PROPAGATED))
            previous[id(obj)] = obj.planes[plane].preview
            peak[id(obj)] = max(peak[id(obj)], out.area)
        done += 1
    for obj in active:
        if planes:
            obj.stopped[name] = (planes[-1], STOP_END)


def propagation_commit_plan(
    objects: Sequence[PropagatedObject], labels: np.ndarray, overwrite: bool = False, ids: dict | None = None
) -> tuple[list[CommitItem], dict]:
    """What committing propagated objects into ``labels`` paints: one id per object on every plane.

    Parameters
    ----------
    objects : sequence of PropagatedObject
    labels : (..., H, W) int array
        The labels layer's data (not modified); its leading axes are the stack's.
    overwrite : bool
        Paint over other objects (else only background and the object's own pixels).
    ids : dict of int to int, optional
        Label id per object key; default: the key itself when it is a label id (> 0), else the
        next free ids.

    Returns
    -------
    items : list of CommitItem
        One per plane and object, each carrying the object's table row (merged by id).
    plane_ious : dict of int to dict
        ``{label_id: {plane: predicted IoU}}`` (for the layer's metadata).
    """
    ids = dict(ids or {})
    next_id = next_free_id(labels)
    items, plane_ious = [], {}
    for obj in objects:
        label_id = int(ids.get(obj.key, obj.key if obj.key > 0 else 0))
        if label_id <= 0:
            label_id, next_id = next_id, next_id + 1
        painted, box = 0, [np.inf, np.inf, -np.inf, -np.inf]
        first = len(items)
        for p in sorted(obj.planes):
            plane_mask = obj.planes[p]
            prev = plane_mask.preview
            bbox = prev.bbox()
            if bbox is None:
                continue
            y0, x0, y1, x1 = bbox
            current = np.asarray(labels[(*plane_mask.index, slice(y0, y1), slice(x0, x1))])
            sel = prev.region(y0, y1, x0, x1)
            if not overwrite:
                sel &= (current == 0) | (current == label_id)
            rr, cc = np.nonzero(sel)
            if rr.size == 0:
                continue
            painted += int(rr.size)
            box = [min(box[0], y0), min(box[1], x0), max(box[2], y1), max(box[3], x1)]
            lead = tuple(np.full(rr.shape, i, np.intp) for i in plane_mask.index)
            items.append(CommitItem((*lead, (rr + y0).astype(np.intp), (cc + x0).astype(np.intp)), label_id, {}, p))
        if len(items) == first:
            continue
        weakest, weakest_iou = obj.weakest_plane()
        ious = obj.plane_ious()
        row = _row(label_id, painted, box, ious, weakest, weakest_iou, obj.axis)
        items[first:] = [replace(item, row=row) for item in items[first:]]  # the same row: merged by id
        plane_ious[label_id] = ious
    return items, plane_ious


def _row(label_id, area, box, ious, weakest, weakest_iou, axis) -> dict:
    finite = [v for v in ious.values() if np.isfinite(v)]
    return {
        "index": int(label_id),
        "area": int(area),
        # the weakest plane's: review by predicted IoU then flags an object any plane of which is doubtful
        "predicted_iou": float(weakest_iou),
        "stability_score": float("nan"),
        "prompt": PROPAGATED,
        "bbox_y0": int(box[0]),
        "bbox_x0": int(box[1]),
        "bbox_y1": int(box[2]),
        "bbox_x1": int(box[3]),
        "planes": len(ious),
        "first_plane": int(min(ious)),
        "last_plane": int(max(ious)),
        "weakest_plane": int(weakest),
        "mean_plane_iou": float(np.mean(finite)) if finite else float("nan"),
        "stack_axis": int(axis),
    }


@dataclass(frozen=True, eq=False)
class StackEverything:
    """Objects of a whole stack, linked along one axis.

    Parameters
    ----------
    labels : (N, H, W) uint32
        One id per 3D object (z) or track (t), planes along the first axis.
    table : dict of str to list
        One row per id: ``index``, ``area`` (pixels over all planes), ``predicted_iou`` (the lowest
        of its planes), ``planes``, ``first_plane``, ``last_plane``, ``mean_plane_iou``.
    planes : list of int
        Plane positions segmented, in order.
    per_plane : (N, H, W) uint32
        Each plane's own labels before linking.
    """

    labels: np.ndarray
    table: dict
    planes: list
    per_plane: np.ndarray | None = None


def everything_stack_job(
    model: PromptableModel,
    spec,
    get_plane: Callable[[int], np.ndarray],
    planes: Sequence[int],
    *,
    options: EverythingOptions | None = None,
    preprocess: PreprocessConfig | None = None,
    cache: EmbeddingCache | None = None,
    model_id: str | None = None,
    min_overlap: float = 0.3,
    kind: str = "z",
) -> Job[StackEverything]:
    """Everything mode on each plane (:func:`~napari_sam_micro.segmentation.everything_job`), linked by overlap.

    Parameters
    ----------
    get_plane : callable
        ``get_plane(p) -> (H, W)`` raw plane at position ``p`` along the stack axis.
    planes : sequence of int
        Consecutive positions to segment (e.g. ``range(z0, z1 + 1)``).
    min_overlap : float
        IoU of two objects on neighbouring planes at which they are one object
        (:func:`~napari_sam_micro.core.overlap.link_stack`).
    kind : {"z", "t"}
        ``"z"``: linked objects are also cut where their cross-section narrows (nuclei stacked in
        z) and objects on a single plane are dropped
        (:func:`~napari_sam_micro.core.overlap.split_at_waists`, ratio :data:`WAIST_RATIO`);
        ``"t"``: tracks are kept as linked.

    Returns
    -------
    StackEverything
    """
    planes = [int(p) for p in planes]
    if not planes:
        raise UserInputError("Choose at least one plane to segment.")
    if kind not in ("z", "t"):
        raise UserInputError(f"The stack axis kind must be 'z' or 't', not {kind!r}.")
    cache = cache if cache is not None else EmbeddingCache()
    per_plane, tables = [], []
    for k, p in enumerate(planes):
        yield Progress(k, len(planes), f"Everything mode on plane {p} ({k + 1} of {len(planes)})")
        res = yield from everything_job(model, get_plane(p), spec, preprocess=preprocess, options=options, cache=cache, model_id=model_id)
        per_plane.append(np.asarray(res.labels, np.uint32))
        tables.append(res.table)
    yield Progress(len(planes), len(planes), "Linking the planes")
    local = np.stack(per_plane)
    linked = link_stack(local, axis=0, min_score=min_overlap)
    if kind == "z" and len(planes) > 1:
        linked = split_at_waists(linked, axis=0, ratio=WAIST_RATIO, min_planes=2)
    return StackEverything(linked, _stack_table(local, linked, tables, planes), planes, local)


def _stack_table(local: np.ndarray, linked: np.ndarray, tables: list, planes: list) -> dict:
    """One row per linked id from the per-plane tables (predicted IoU: the lowest of its planes)."""
    rows: dict[int, dict] = {}
    for k, table in enumerate(tables):
        iou_of = dict(zip((int(i) for i in table.get("index", [])), (float(v) for v in table.get("predicted_iou", []))))
        both = (local[k] != 0) & (linked[k] != 0)  # objects split_at_waists dropped have no row
        pairs, counts = np.unique(np.stack([local[k][both], linked[k][both]]), axis=1, return_counts=True)
        for (lid, gid), n in zip(pairs.T, counts):
            row = rows.setdefault(int(gid), {"index": int(gid), "area": 0, "ious": {}})
            row["area"] += int(n)
            row["ious"][planes[k]] = iou_of.get(int(lid), float("nan"))
    out = {c: [] for c in ("index", "area", "predicted_iou", "prompt", "planes", "first_plane", "last_plane", "mean_plane_iou")}
    for gid in sorted(rows):
        ious = rows[gid]["ious"]
        finite = [v for v in ious.values() if np.isfinite(v)]
        for c, v in (
            ("index", gid),
            ("area", rows[gid]["area"]),
            ("predicted_iou", min(finite) if finite else float("nan")),
            ("prompt", "everything"),
            ("planes", len(ious)),
            ("first_plane", min(ious)),
            ("last_plane", max(ious)),
            ("mean_plane_iou", float(np.mean(finite)) if finite else float("nan")),
        ):
            out[c].append(v)
    return out
