"""Everything mode on one plane: the one high-level function the widgets, the CLI and the Python API run.

:func:`everything_job` takes a raw plane (any dtype, grey / RGB / channels last), normalises it the
way the Annotator does, and segments it with the model's best automatic mode:

* **seeds** for 256-px models that decode clicks in windows (``micro-tiny``, LiteMedSAM): one
  click per detected object centre, many per encoded window
  (:func:`~napari_sam_micro.core.seeded.seeded_segmentation_job` through an
  :class:`~napari_sam_micro.session.AnnotationSession`, so the windows, runtime and cache are the
  Annotator's);
* **grid** for SAM's ViT models: SAM's automatic mask generator
  (:func:`~napari_sam_micro.core.automatic.generate_candidates`, then the filters of
  :class:`~napari_sam_micro.core.automatic.AmgParams`).

Tiling of large planes, the ``segment`` CLI and the notebook API build on this function; it holds
no state between calls except what the embedding cache keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .core.automatic import AmgParams, CandidateSet, generate_candidates, labels_from_result
from .core.cache import EmbeddingCache, content_digest, embedding_key
from .core.commit_plan import plan_commit
from .core.errors import PromptError, UserInputError
from .core.model_api import PromptableModel
from .core.preprocess import PreprocessConfig, normalize_image
from .core.progress import Job, Progress
from .core.prompts import Prompts
from .core.seeded import BOX_STAGE_REUSE, SeededSegmentation
from .core.seeds import SEED_IOU_FLOOR, everything_seeds
from .core.touching import TOUCHING_H
from .plane_jobs import segment_seeds_job
from .session import AnnotationSession

__all__ = [
    "MODE_SEEDS", "MODE_GRID", "MODE_PROMPTS", "EverythingOptions", "EverythingResult", "everything_job", "seeds_mode_job",
    "everything_mode_for", "prompted_job", "paint_objects",
]

MODE_SEEDS = "seeds"
MODE_GRID = "grid"
#: :func:`prompted_job`'s mode: objects from given boxes and points.
MODE_PROMPTS = "prompts"


@dataclass(frozen=True)
class EverythingOptions:
    """Settings of one everything-mode run.

    Parameters
    ----------
    mode : {"auto", "seeds", "grid"}
        ``auto``: seeds where the model supports them (see :func:`everything_mode_for`), else grid.
    min_distance : int
        Seeds mode: object centres at least this many pixels apart (about the smallest radius).
    iou_floor, nms_thresh, fill_holes, keep_largest, refill
        Seeds mode: see :func:`~napari_sam_micro.core.seeded.seeded_segmentation_job`.
    min_area : int
        Objects with fewer pixels are dropped (both modes).
    split_touching : bool
        Seeds mode, for crowded nuclei: seeds at the h-maxima of the seed score
        (``find_seeds(..., h=TOUCHING_H)``) and masks clipped to their watershed basin where they
        cover another seed (:mod:`napari_sam_micro.core.touching`). Off by default: on held-out
        images it has not been shown to help (docs/models.md).
    fewer_windows : bool
        Seeds mode, faster: a seed's second decoding stage (its first mask's box) stays in the
        window the seed shares with others wherever a box prompt would reuse that window
        (``box_stage_reuse`` of :func:`~napari_sam_micro.core.seeded.seeded_segmentation_job`):
        20-40 % less time on fluorescence nuclei, F1@0.5 0.853 against 0.859 on 15 held-out
        images (docs/models.md). Off by default.
    foreground : (float, str, int), optional
        Seeds mode: the foreground threshold, polarity and background radius of the whole plane
        when the plane given is a tile of it (:func:`~napari_sam_micro.core.seeds.foreground_threshold`;
        set by the tiled mode); default: the plane's own.
    grid : AmgParams
        Grid mode: SAM's automatic mask generator settings and filters.
    """

    mode: str = "auto"
    min_distance: int = 5
    iou_floor: float = SEED_IOU_FLOOR
    nms_thresh: float = 0.5
    fill_holes: bool = True
    keep_largest: bool = True
    min_area: int = 10
    refill: bool = True
    split_touching: bool = False
    fewer_windows: bool = BOX_STAGE_REUSE
    foreground: tuple | None = None
    grid: AmgParams = field(default_factory=AmgParams)

    def __post_init__(self):
        if self.mode not in ("auto", MODE_SEEDS, MODE_GRID):
            raise UserInputError(f"Everything mode must be 'auto', 'seeds' or 'grid', not {self.mode!r}.")
        if int(self.min_distance) < 1:
            raise UserInputError("The seed spacing (min distance) must be at least 1 pixel.")
        if int(self.min_area) < 0:
            raise UserInputError("The smallest object area cannot be negative.")


@dataclass(frozen=True, eq=False)
class EverythingResult:
    """Objects found on one plane.

    Parameters
    ----------
    labels : (H, W) uint32
        Instance ids ``1..K``, 0 = background.
    table : dict of str to list
        One row per id (:data:`~napari_sam_micro.core.labels.OBJECT_COLUMNS`: ``index``, ``area``,
        ``predicted_iou``, ``stability``, bbox, prompt ...).
    mode : str
        The mode that ran (``seeds`` or ``grid``).
    seeds_rc : (N, 2) float64
        Seeds mode: the detected object centres, ``(row, col)``.
    refill_rc : (M, 2) float64
        Seeds mode: the second pass's seeds in foreground no mask covered, ``(row, col)``.
    windows_encoded : int
        Seeds mode: window embeddings computed (cache hits not counted).
    candidates : CandidateSet or None
        Grid mode: every candidate the model run kept, for re-filtering without the model.
    """

    labels: np.ndarray
    table: dict
    mode: str
    seeds_rc: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    refill_rc: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    windows_encoded: int = 0
    candidates: CandidateSet | None = None


def everything_mode_for(spec, mode: str = "auto") -> str:
    """The mode a model runs: seeds where its spec allows (``spec.seeded_everything``), else grid.

    Raises
    ------
    UserInputError
        ``mode="seeds"`` for a model that cannot decode seeds in windows.
    """
    can_seed = bool(getattr(spec, "seeded_everything", False))
    if mode == MODE_SEEDS and not can_seed:
        raise UserInputError(f"The model '{spec.name}' has no seeds mode; use the grid mode.")
    if mode == "auto":
        return MODE_SEEDS if can_seed else MODE_GRID
    return mode


def everything_job(
    model: PromptableModel,
    plane: np.ndarray,
    spec,
    *,
    preprocess: PreprocessConfig | None = None,
    options: EverythingOptions | None = None,
    cache: EmbeddingCache | None = None,
    model_id: str | None = None,
) -> Job[EverythingResult]:
    """Segment every object of one plane; a job (yields :class:`Progress`, returns :class:`EverythingResult`).

    Parameters
    ----------
    model : PromptableModel
        A loaded model (e.g. from :func:`~napari_sam_micro.models.registry.load_model`).
    plane : (H, W), (H, W, 3) or (H, W, C) array
        Raw pixels, any numeric dtype; rows first. RGB must be said in ``preprocess``.
    spec : ModelSpec
        The model's registry entry (decides the mode and how prompts are decoded).
    preprocess : PreprocessConfig, optional
        Normalisation (percentiles, channel, RGB); default ``PreprocessConfig()``.
    options : EverythingOptions, optional
    cache : EmbeddingCache, optional
        Embeddings are looked up and kept there (a new one per call by default).
    model_id : str, optional
        Identity of the model's embeddings in cache keys; default ``spec.embedding_id``.
    """
    options = options or EverythingOptions()
    config = preprocess or PreprocessConfig()
    mode = everything_mode_for(spec, options.mode)
    model_id = model_id or spec.embedding_id
    cache = cache if cache is not None else EmbeddingCache()
    if mode == MODE_GRID:
        return (yield from _grid_job(model, plane, config, options, cache, model_id))
    yield Progress(0, 0, "Finding object centres")
    session = AnnotationSession(model, cache, config, model_id=model_id, **AnnotationSession.options_for(spec))
    session.set_image(plane)
    res = yield from seeds_mode_job(session, normalize_image(plane, config), options)
    return EverythingResult(res.labels, res.table, MODE_SEEDS, res.seeds_rc, res.refill_rc, res.windows_encoded)


def seeds_mode_job(session: AnnotationSession, image: np.ndarray, options: EverythingOptions) -> Job[SeededSegmentation]:
    """The seeds mode on the session's plane with every seeds-mode setting of ``options``; a job.

    ``image`` is the plane normalised (``(H, W)`` or ``(H, W, C)`` float), where the seeds are found
    (:func:`~napari_sam_micro.core.seeds.everything_seeds`); shared by :func:`everything_job` and
    the evaluation.
    """
    seeds, foreground = everything_seeds(image, min_distance=int(options.min_distance),
                                         h=TOUCHING_H if options.split_touching else 0.0, threshold=options.foreground)
    return (yield from segment_seeds_job(
        session,
        seeds,
        iou_floor=options.iou_floor,
        nms_thresh=options.nms_thresh,
        fill_holes=options.fill_holes,
        keep_largest=options.keep_largest,
        min_area=options.min_area,
        refill=options.refill,
        split_touching=options.split_touching,
        foreground=foreground,
        box_stage_reuse=options.fewer_windows,
    ))


def _grid_job(model, plane, config, options, cache, model_id) -> Job[EverythingResult]:
    key = embedding_key(content_digest(plane), model_id, config.key())
    yield Progress(0, 0, "Normalising the image")
    image = normalize_image(plane, config)
    candidates = yield from generate_candidates(model, image, options.grid, cache=cache, cache_key=key)
    labels, table = labels_from_result(candidates.filter(options.grid), options.min_area)
    return EverythingResult(labels, table, MODE_GRID, candidates=candidates)


def prompted_job(
    model: PromptableModel,
    plane: np.ndarray,
    spec,
    objects,
    *,
    preprocess: PreprocessConfig | None = None,
    cache: EmbeddingCache | None = None,
    model_id: str | None = None,
) -> Job[EverythingResult]:
    """Segment the objects that given boxes and points describe, as the Annotator commits them; a job.

    Each object is decoded like an Annotator prompt (its window, click stages, refinement clicks:
    :meth:`~napari_sam_micro.session.AnnotationSession.predict_job`) and painted in order without
    overwriting earlier objects (:func:`~napari_sam_micro.core.commit_plan.plan_commit`).

    Parameters
    ----------
    model, plane, spec, preprocess, cache, model_id
        As in :func:`everything_job`.
    objects : sequence of ObjectPrompt
        :class:`~napari_sam_micro.core.prompt_files.ObjectPrompt` (``box_xyxy``, ``points_xy``,
        ``labels``; ``(x, y)`` pixels of ``plane``).

    Returns
    -------
    EverythingResult
        ``mode`` ``"prompts"``; ids ``1..K`` in prompt order (an object left without pixels gets
        none); the table's ``prompt`` column says ``box`` / ``points`` / ``box+points``.

    Raises
    ------
    PromptError
        A prompt outside the plane (the message names the object).
    """
    cache = cache if cache is not None else EmbeddingCache()
    session = AnnotationSession(model, cache, preprocess, model_id=model_id or spec.embedding_id,
                                **AnnotationSession.options_for(spec))
    session.set_image(plane)
    previews = []
    for k, obj in enumerate(objects):
        yield Progress(k, len(objects), f"Object {k + 1} of {len(objects)}")
        boxes = np.array([obj.box_xyxy] if obj.box_xyxy is not None else [], np.float32).reshape(-1, 4)
        points = np.array(obj.points_xy, np.float32).reshape(-1, 2)
        prompts = Prompts(points, np.array(obj.labels, np.int32), boxes_xyxy=boxes)
        session.clear_preview()
        try:
            prediction = yield from session.predict_job(prompts)
        except PromptError as err:
            raise PromptError(f"object {obj.name!r}: {err}") from None
        previews.extend(prediction.objects)
    labels, table = paint_objects(previews, session.image_hw)
    return EverythingResult(labels, table, MODE_PROMPTS)


def paint_objects(objects, hw: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """New ``(H, W)`` uint32 labels of ``objects`` painted as the Annotator commits them, and their table.

    ``objects`` are :class:`~napari_sam_micro.core.decoding.ObjectPreview` in order: ids ``1..K``,
    a later object never overwrites an earlier one, an object left without pixels gets no id
    (:func:`~napari_sam_micro.core.commit_plan.plan_commit`); the table has one row per id.
    """
    labels = np.zeros(hw, np.uint32)
    items = plan_commit(objects, labels, False, ()) if len(objects) else []
    table: dict[str, list] = {"index": [], "area": []} if not items else {}
    for item in items:
        labels[item.indices] = item.label_id
        for column, value in item.row.items():
            table.setdefault(column, []).append(value)
    return labels, table
