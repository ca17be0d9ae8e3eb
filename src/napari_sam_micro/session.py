"""Annotation state of one 2D image plane: embeddings, prompts → masks, commit plans.

:class:`AnnotationSession` knows nothing about napari or Qt. It holds a model
(:class:`~napari_sam_micro.core.model_api.PromptableModel`), an
:class:`~napari_sam_micro.core.cache.EmbeddingCache`, the preprocessing configuration, the current
plane and the current preview, and tells listeners about changes through psygnal signals.

Typical use::

    session = AnnotationSession(model, cache)
    session.set_image(plane)                     # (H, W) grey or (H, W, C) with a preprocess config
    embedding = session.compute_embedding()      # or run session.embedding_job() in a worker
    prediction = session.predict(prompts)        # core.prompts.Prompts, SAM (x, y) order
    plan = session.commit_plan(labels_plane_or_volume, overwrite=False, leading=())

Embeddings
----------
Embeddings are cached by :func:`~napari_sam_micro.core.cache.embedding_key` of the raw plane's
content digest, the model (and checkpoint), and the preprocessing key. Picking the same image and
model again is a cache hit. For 256-px models (``crop_to_prompt``) each object is segmented in a
window around its prompt (:func:`~napari_sam_micro.core.preprocess.prompt_window`, about twice the
prompt's extent and at least 64 px): the crop of the normalised plane is encoded (cached too,
the window is part of the key), decoded there and pasted back.

Stale results
-------------
Every change of image, model or preprocessing increments :attr:`AnnotationSession.generation`.
A job captures the generation when it is created; :meth:`accept_embedding` refuses an embedding
whose generation is no longer current, so an embedding finished for an image that changed
mid-way never becomes the session's embedding (it stays in the cache under its own key, which
cannot match the new image).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from psygnal import Signal

from .core.cache import EmbeddingCache, content_digest, embedding_key
from .core.errors import ImageError, PromptError, UserInputError
from .core.labels import next_free_id, object_row
from .core.masks import mask_to_box_xyxy, stability_score
from .core.object_size import click_diameter, object_polarity, typical_diameter
from .core.model_api import Embedding, PromptableModel
from .core.preprocess import PreprocessConfig, normalize_image, prompt_window
from .core.progress import Job, Progress, drain
from .core.prompts import ObjectPrompt, Prompts, object_prompts, points_from_napari
from .core.seeds import (
    REFILL_AREA_FRACTION,
    SEED_IOU_FLOOR,
    add_uncovered_masks,
    choose_seed_mask,
    foreground_mask,
    resolve_seeded_masks,
    uncovered_seeds,
)

__all__ = [
    "AnnotationSession",
    "EmbeddingNotReady",
    "ObjectPreview",
    "Prediction",
    "CommitItem",
    "Window",
    "SeededSegmentation",
]

#: ``(y0, y1, x0, x1)`` half-open pixel window of the plane.
Window = tuple[int, int, int, int]

#: A lone click on a ``crop_to_prompt`` model is decoded in a window this many times the object
#: diameter estimated at the click (:func:`~napari_sam_micro.core.object_size.click_diameter`):
#: the models were trained on windows 1.6-2.6 x the object's box side, and the estimate is about
#: 0.87 x that side on nuclei.
CLICK_WINDOW_FACTOR = 2.4
#: Smallest window (pixels) for a lone click.
CLICK_WINDOW_MIN = 32
#: How many times a click's window is doubled when its first mask reaches the window's border.
CLICK_WINDOW_GROWTH = 2
#: The box derived from a click's first mask is padded by this fraction of its longer side.
CLICK_BOX_PAD = 0.1

#: Candidate box sides for ``points_as_boxes``, as fractions of the largest one (``max(window_min, min(H, W) / 8)``).
POINT_BOX_FRACTIONS = (0.125, 0.1875, 0.25, 0.375, 0.5, 0.75, 1.0)


class EmbeddingNotReady(RuntimeError):
    """:meth:`AnnotationSession.predict` needs embeddings that are not computed yet.

    Attributes
    ----------
    windows : list of Window or None
        What to encode (``None`` = the whole plane) with :meth:`AnnotationSession.embeddings_job`.
    """

    def __init__(self, windows: Sequence[Window | None]):
        self.windows = list(windows)
        super().__init__(f"{len(self.windows)} embedding(s) to compute first")


@dataclass(frozen=True)
class ObjectPreview:
    """The predicted mask of one object.

    Parameters
    ----------
    mask : (H, W) bool
        On the whole plane.
    predicted_iou, stability : float
        The model's IoU prediction and SAM's stability score of the chosen mask.
    kind : str
        ``"points"``, ``"box"`` or ``"box+points"``.
    low_res_logits : (1, 256, 256) float32
        Logits of the chosen mask in the model frame of ``window`` (refinement input).
    window : Window or None
        Crop the object was decoded in (None = the whole plane).
    """

    mask: np.ndarray
    predicted_iou: float
    stability: float
    kind: str
    low_res_logits: np.ndarray
    window: Window | None = None

    @property
    def area(self) -> int:
        """Pixels in the mask."""
        return int(np.count_nonzero(self.mask))


@dataclass(frozen=True)
class Prediction:
    """Preview of the current prompts: one :class:`ObjectPreview` per object."""

    objects: tuple[ObjectPreview, ...]
    prompts: Prompts
    generation: int
    warnings: tuple[str, ...] = ()

    @property
    def masks(self) -> np.ndarray:
        """``(K, H, W)`` bool."""
        return np.stack([o.mask for o in self.objects]) if self.objects else np.zeros((0, 0, 0), bool)

    def label_image(self, dtype=np.uint8) -> np.ndarray:
        """``(H, W)`` image with object ``k`` as label ``k + 1`` (earlier objects win overlaps)."""
        if not self.objects:
            raise ValueError("an empty prediction has no label image")
        out = np.zeros(self.objects[0].mask.shape, dtype=dtype)
        for k, obj in enumerate(self.objects):
            out[obj.mask & (out == 0)] = k + 1
        return out


@dataclass(frozen=True, eq=False)
class CommitItem:
    """One object to write into a labels array.

    Parameters
    ----------
    indices : tuple of (P,) intp arrays
        One per labels axis (leading plane indices, rows, cols): for ``Labels.data_setitem``.
    label_id : int
    row : dict
        Object-table row (:data:`~napari_sam_micro.core.labels.OBJECT_COLUMNS`).
    object_index : int
        Position of the object in the prediction.
    """

    indices: tuple
    label_id: int
    row: dict = field(default_factory=dict)
    object_index: int = 0


@dataclass(frozen=True, eq=False)
class SeededSegmentation:
    """Result of :meth:`AnnotationSession.segment_seeds_job`.

    Parameters
    ----------
    labels : (H, W) uint32
        Instance ids ``1..K`` (best first).
    table : dict of str to list
        Object table (:data:`~napari_sam_micro.core.labels.OBJECT_COLUMNS`), prompt ``"seed"``.
    seeds_rc : (N, 2) float64
        The seeds given, ``(row, col)``.
    generation : int
        Session generation the result belongs to.
    refill_rc : (M, 2) float64
        The second pass's seeds in uncovered foreground, ``(row, col)`` (none without ``refill``).
    """

    labels: np.ndarray
    table: dict
    seeds_rc: np.ndarray
    generation: int
    refill_rc: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))


def _window_covers(window: Window, hw: tuple[int, int]) -> bool:
    y0, y1, x0, x1 = window
    return y0 <= 0 and x0 <= 0 and y1 >= hw[0] and x1 >= hw[1]


def _reaches_window_border(mask: np.ndarray, window: Window, hw: tuple[int, int]) -> bool:
    """Whether ``mask`` (plane frame) touches a side of ``window`` that is not the plane's border."""
    y0, y1, x0, x1 = window
    sides = []
    if y0 > 0:
        sides.append(mask[y0, x0:x1])
    if y1 < hw[0]:
        sides.append(mask[y1 - 1, x0:x1])
    if x0 > 0:
        sides.append(mask[y0:y1, x0])
    if x1 < hw[1]:
        sides.append(mask[y0:y1, x1 - 1])
    return any(bool(side.any()) for side in sides)


def _prompt_bbox(obj: ObjectPrompt) -> np.ndarray:
    """``(x0, y0, x1, y1)`` of everything in an object prompt."""
    pts = []
    if obj.box is not None:
        pts.append(np.asarray(obj.box, np.float64).reshape(2, 2))
    if obj.point_coords is not None and len(obj.point_coords):
        pts.append(np.asarray(obj.point_coords, np.float64).reshape(-1, 2))
    allp = np.concatenate(pts, axis=0)
    return np.concatenate([allp.min(axis=0), allp.max(axis=0)])


class AnnotationSession:
    """Annotation state of one image plane (evented, no napari, no Qt).

    Parameters
    ----------
    model : PromptableModel
        Encoder + decoder.
    cache : EmbeddingCache, optional
        Shared cache (one per viewer); a private one when None.
    preprocess : PreprocessConfig, optional
        How planes are normalised (channels, RGB, percentiles).
    crop_to_prompt : bool
        Segment each object in a window around its prompt (256-px models).
    model_id : str, optional
        Identity of the model in cache keys (name plus checkpoint); default ``model.name``.
    window_scale, window_min : float, int
        Window side = ``window_scale`` × the prompt's extent, at least ``window_min`` pixels. A
        points-only prompt on a model that takes clicks gets at least ``CLICK_WINDOW_FACTOR`` × the
        object diameter estimated at its positive points (at least ``CLICK_WINDOW_MIN``), and a
        fresh one is decoded in two stages (:meth:`_decode_click`).
    points_as_boxes : bool
        For box-only models (LiteMedSAM was trained with boxes; its decoder returns empty masks for
        point prompts): click prompts are turned into square candidate boxes around the positive
        points (:data:`POINT_BOX_FRACTIONS` of ``max(window_min, min(H, W) / 8)``, in a window 1.5
        times that side), decoded in one batched call, and
        the candidate with the highest predicted IoU whose mask contains every positive point and
        no negative point is kept.

    Signals
    -------
    image_changed()
        A new plane, model or preprocessing (the generation changed).
    embedding_changed(object)
        The plane's embedding became available (an :class:`Embedding`) or was reset (None).
    preview_changed(object)
        A new :class:`Prediction`, or None when the preview was cleared.
    """

    image_changed = Signal()
    embedding_changed = Signal(object)
    preview_changed = Signal(object)

    def __init__(
        self,
        model: PromptableModel,
        cache: EmbeddingCache | None = None,
        preprocess: PreprocessConfig | None = None,
        *,
        crop_to_prompt: bool = False,
        model_id: str | None = None,
        window_scale: float = 2.0,
        window_min: int = 64,
        points_as_boxes: bool = False,
    ):
        self._lock = threading.Lock()
        self._model = model
        self._model_id = model_id or model.name
        self.cache = cache if cache is not None else EmbeddingCache()
        self._preprocess = preprocess or PreprocessConfig()
        self.crop_to_prompt = bool(crop_to_prompt)
        self.window_scale = float(window_scale)
        self.window_min = int(window_min)
        self.points_as_boxes = bool(points_as_boxes)
        self._generation = 0
        self._plane: np.ndarray | None = None
        self._digest: str | None = None
        self._normalized: tuple[int, np.ndarray] | None = None
        self._scale: tuple[int, tuple[float, float | None]] | None = None  # (generation, _object_scale())
        self._embedding: Embedding | None = None
        self._preview: Prediction | None = None

    @staticmethod
    def options_for(spec) -> dict:
        """Keyword options that follow from a model's registry spec (one rule for every caller).

        Parameters
        ----------
        spec : napari_sam_micro.models.registry.ModelSpec
            Its ``crop_to_prompt`` and ``point_prompts`` decide how prompts are decoded.

        Returns
        -------
        dict
            ``crop_to_prompt`` and ``points_as_boxes``, for the constructor or :meth:`set_model`.
        """
        return {"crop_to_prompt": bool(spec.crop_to_prompt), "points_as_boxes": not spec.point_prompts}

    # -- state ---------------------------------------------------------------------------
    @property
    def model(self) -> PromptableModel:
        return self._model

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def preprocess(self) -> PreprocessConfig:
        return self._preprocess

    @property
    def generation(self) -> int:
        """Incremented by every change of image, model or preprocessing."""
        return self._generation

    @property
    def has_image(self) -> bool:
        return self._plane is not None

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the current plane."""
        if self._plane is None:
            raise ImageError("No image plane is set.")
        return int(self._plane.shape[0]), int(self._plane.shape[1])

    @property
    def embedding(self) -> Embedding | None:
        """The embedding of the whole current plane, once accepted (or found in the cache)."""
        return self._embedding

    @property
    def preview(self) -> Prediction | None:
        """The last prediction (None after a change of image or :meth:`clear_preview`)."""
        return self._preview

    def _bump(self) -> None:
        with self._lock:
            self._generation += 1
            self._normalized = None
        had_embedding = self._embedding is not None
        self._embedding = None
        self._preview = None
        self.image_changed.emit()
        if had_embedding:
            self.embedding_changed.emit(None)
        self.preview_changed.emit(None)

    def set_image(self, plane: np.ndarray, preprocess: PreprocessConfig | None = None) -> bool:
        """Make ``plane`` the current image.

        Parameters
        ----------
        plane : np.ndarray
            ``(H, W)`` grey, ``(H, W, 3|4)`` RGB (``preprocess.rgb``), or ``(H, W, C)`` with
            ``preprocess.channel_axis = -1``. Raw values (any real dtype); NaN allowed.
        preprocess : PreprocessConfig, optional
            Replaces the current configuration.

        Returns
        -------
        bool
            True when something changed (same content and configuration: nothing happens).

        Raises
        ------
        ImageError
            Fewer than two dimensions, or a plane with no pixels.
        """
        plane = np.asarray(plane)
        if plane.ndim not in (2, 3) or plane.shape[0] < 1 or plane.shape[1] < 1:
            raise ImageError(f"Expected a 2D image plane (optionally with channels last), got shape {plane.shape}.")
        config = preprocess or self._preprocess
        digest = content_digest(plane)
        if digest == self._digest and config == self._preprocess and self._plane is not None:
            return False
        self._plane = plane
        self._digest = digest
        self._preprocess = config
        self._bump()
        self._adopt_cached()
        return True

    def reset(self) -> None:
        """Forget the current plane (the image changed or is no longer shown); bumps the generation."""
        self._plane = None
        self._digest = None
        self._bump()

    def set_model(
        self,
        model: PromptableModel,
        *,
        crop_to_prompt: bool | None = None,
        model_id: str | None = None,
        points_as_boxes: bool | None = None,
    ) -> None:
        """Switch model (the plane stays; its embedding for the new model may be cached)."""
        self._model = model
        self._model_id = model_id or model.name
        if crop_to_prompt is not None:
            self.crop_to_prompt = bool(crop_to_prompt)
        if points_as_boxes is not None:
            self.points_as_boxes = bool(points_as_boxes)
        self._bump()
        self._adopt_cached()

    def _adopt_cached(self) -> None:
        if self._plane is None:
            return
        emb = self.cache.get(self.embedding_key())
        if emb is not None:
            self._embedding = emb
            self.embedding_changed.emit(emb)

    # -- embeddings ----------------------------------------------------------------------
    def embedding_key(self, window: Window | None = None) -> str:
        """Cache key of the current plane's embedding (``window`` = a crop of it)."""
        if self._digest is None:
            raise ImageError("No image plane is set.")
        extra = "" if window is None else "crop=" + ",".join(str(int(v)) for v in window)
        return embedding_key(self._digest, self._model_id, self._preprocess.key(), extra)

    def is_cached(self, window: Window | None = None) -> bool:
        """Whether the (crop) embedding of the current plane is in the cache."""
        return self.embedding_key(window) in self.cache

    def _normalized_plane(self, generation: int | None = None) -> np.ndarray:
        """The current plane normalised to ``(H, W, 3)`` float32 (computed once per generation)."""
        with self._lock:
            gen = self._generation if generation is None else generation
            cached = self._normalized
            plane, config = self._plane, self._preprocess
        if cached is not None and cached[0] == gen:
            return cached[1]
        if plane is None:
            raise ImageError("No image plane is set.")
        image = normalize_image(plane, config)
        with self._lock:
            if self._generation == gen:
                self._normalized = (gen, image)
        return image

    def embedding_job(self, window: Window | None = None) -> Job[Embedding]:
        """Encode the current plane (or a crop of it); cached.

        The generation is captured when this is called; pass it to :meth:`accept_embedding`
        (``session.generation`` read right after creating the job).

        Yields
        ------
        Progress
            ``normalising`` → ``encoding`` → done (nothing but one report on a cache hit).

        Returns
        -------
        Embedding
        """
        if self._plane is None:
            raise ImageError("Choose an image before computing its embedding.")
        key = self.embedding_key(window)
        generation = self._generation
        model = self._model
        return self._embedding_gen(key, window, generation, model)

    def _embedding_gen(self, key, window, generation, model):
        embedding = self.cache.get(key)
        if embedding is not None:
            yield Progress(1, 1, "Embedding found in cache")
        else:
            what = "the image" if window is None else "the prompt window"
            yield Progress(0, 3, f"Preparing {what}")
            image = self._normalized_plane(generation)
            if window is not None:
                y0, y1, x0, x1 = window
                image = np.ascontiguousarray(image[y0:y1, x0:x1])
            yield Progress(1, 3, f"Encoding {what} with {model.name}")
            embedding = model.encode(image)
            self.cache.put(key, embedding)
            yield Progress(3, 3, "Embedding ready")
        if window is None and self._clicks_in_windows and generation == self._generation:
            # the first click's window needs the objects' scale: measured here, off the GUI thread
            try:
                self._object_scale(generation)
            except ImageError:  # the plane went away meanwhile: its embedding is stale anyway
                pass
        return embedding

    def embeddings_job(self, windows: Sequence[Window | None]) -> Job[int]:
        """Encode several windows (``None`` = whole plane) one after the other; returns how many."""
        jobs = [self.embedding_job(w) for w in windows]

        def run():
            for k, job in enumerate(jobs):
                for report in job:
                    done = k + (report.fraction if report.total else 0.0)
                    yield Progress(int(round(100 * done)), 100 * len(jobs), report.message)
            return len(jobs)

        return run()

    def segment_seeds_job(
        self,
        seeds_rc,
        *,
        iou_floor: float = SEED_IOU_FLOOR,
        nms_thresh: float = 0.5,
        fill_holes: bool = True,
        keep_largest: bool = True,
        min_area: int = 10,
        refill: bool = True,
    ) -> Job[SeededSegmentation]:
        """Seeded everything mode: segment one object per seed, as a centred click.

        Each seed is decoded like a single positive click through :meth:`predict`'s path (for
        ``crop_to_prompt`` models the two stages of a click: a window sized from the object
        diameter estimated at the seed, then the first mask's box; windows encoded and cached);
        of the three multimask outputs of the click the kept one follows
        :func:`~napari_sam_micro.core.seeds.choose_seed_mask` (most stable among predicted IoU >=
        ``iou_floor``). Masks are then cleaned, de-duplicated and painted by
        :func:`~napari_sam_micro.core.seeds.resolve_seeded_masks`. With ``refill``, a second pass
        seeds the foreground no mask covers (:func:`~napari_sam_micro.core.seeds.uncovered_seeds`:
        objects pressed against a neighbour often get no seed of their own) and adds the new
        objects it finds without touching the first pass's
        (:func:`~napari_sam_micro.core.seeds.add_uncovered_masks`). The preview is not touched.

        Parameters
        ----------
        seeds_rc : (N, 2) array-like
            ``(row, col)`` object centres on the current plane (e.g. :func:`~napari_sam_micro.core.seeds.find_seeds`).
        iou_floor, nms_thresh, fill_holes, keep_largest, min_area
            See :mod:`napari_sam_micro.core.seeds`.
        refill : bool
            Run the second pass on uncovered foreground (regions of at least
            ``REFILL_AREA_FRACTION`` x the first pass's median object area).

        Returns
        -------
        Job[SeededSegmentation]
        """
        if self._plane is None:
            raise ImageError("Choose an image before segmenting it.")
        hw = self.image_hw
        seeds = np.asarray(seeds_rc, dtype=np.float64).reshape(-1, 2)
        generation = self._generation
        model = self._model
        thr = float(model.mask_threshold)

        def choose(iou, logits):
            return choose_seed_mask(iou, stability_score(logits, thr), iou_floor)

        def decode_all(points, what):
            masks, pious, stabs = [], [], []
            n = len(points)
            for k in range(n):
                pts_xy, lab = points_from_napari(points[k : k + 1], [1], hw)
                obj = object_prompts(Prompts(points_xy=pts_xy, point_labels=lab))[0]
                window = self._window(obj, None)
                yield Progress(k, n, f"{what} {k + 1} of {n}: encoding its window")
                result = yield from self._with_embeddings(
                    lambda: self._decode_new_points(obj, window, choose=choose), generation
                )
                masks.append(result.mask)
                pious.append(result.predicted_iou)
                stabs.append(result.stability)
            return masks, pious, stabs

        def run():
            masks, pious, stabs = yield from decode_all(seeds, "Seed")
            yield Progress(len(seeds), len(seeds), "Resolving overlaps")
            labels_img, table = resolve_seeded_masks(
                masks, pious, stabs, hw, nms_thresh=nms_thresh, fill_holes=fill_holes, keep_largest=keep_largest, min_area=min_area
            )
            extra = np.zeros((0, 2), np.float64)
            if refill and table["area"]:
                foreground, _ = foreground_mask(self._normalized_plane(generation))
                area = max(min_area, int(REFILL_AREA_FRACTION * float(np.median(table["area"]))))
                extra = uncovered_seeds(foreground, labels_img, min_area=area)
                if len(extra):
                    masks, pious, stabs = yield from decode_all(extra, "Uncovered region")
                    labels_img, table = add_uncovered_masks(
                        labels_img, table, masks, pious, stabs, min_area=min_area, fill_holes=fill_holes
                    )
            return SeededSegmentation(labels_img, table, seeds, generation, extra)

        return run()

    def accept_embedding(self, embedding: Embedding, generation: int) -> bool:
        """Make ``embedding`` (of the whole plane) current unless the image changed since ``generation``.

        Returns
        -------
        bool
            False for a stale result (dropped).
        """
        if generation != self._generation or embedding is None or self._plane is None:
            return False
        if tuple(embedding.original_size) != self.image_hw:
            return False
        self._embedding = embedding
        self.embedding_changed.emit(embedding)
        return True

    def compute_embedding(self) -> Embedding:
        """Encode the whole plane synchronously (tests, scripts) and make it current."""
        generation = self._generation
        embedding = drain(self.embedding_job())
        self.accept_embedding(embedding, generation)
        return embedding

    # -- prediction ----------------------------------------------------------------------
    def _window(self, obj: ObjectPrompt, previous: ObjectPreview | None) -> Window | None:
        if not self.crop_to_prompt:
            return None
        hw = self.image_hw
        bbox = _prompt_bbox(obj)
        if previous is not None and previous.window is not None:
            # keep the window while the prompts stay well inside it: the crop embedding is
            # reused and the previous logits still refine the mask
            y0, y1, x0, x1 = previous.window
            my, mx = (y1 - y0) / 6.0, (x1 - x0) / 6.0
            if bbox[0] >= x0 + mx and bbox[2] <= x1 - mx and bbox[1] >= y0 + my and bbox[3] <= y1 - my:
                return previous.window
        source = bbox if obj.box is not None or (obj.point_coords is not None and len(obj.point_coords) > 1) else obj.point_coords
        min_size = self.window_min
        if obj.box is None and self._clicks_in_windows:
            # a click says where, not how big: the window follows the object size estimated there
            min_size = self._click_window_side(obj)
        if self.points_as_boxes and obj.box is None:
            # the object's size is unknown: candidate boxes up to the point-box scale, in a window
            # 1.5 times larger so that the largest candidate still has context around it
            min_size = int(round(1.5 * self._point_box_scale(hw)))
        window = prompt_window(source, hw, scale=self.window_scale, min_size=min_size)
        return None if _window_covers(window, hw) else tuple(int(v) for v in window)

    @property
    def _clicks_in_windows(self) -> bool:
        """Whether new clicks take the two-stage path of :meth:`_decode_click` (crop models that take clicks)."""
        return self.crop_to_prompt and not self.points_as_boxes

    def _decode_new_points(self, obj: ObjectPrompt, window: Window | None, choose=None) -> ObjectPreview:
        """Decode a points-only prompt with no previous mask to refine (a new click or a seed).

        Raises :class:`EmbeddingNotReady` for a window still to encode.
        """
        if self._clicks_in_windows:
            return self._decode_click(obj, window, self._get_embedding, choose=choose)
        return self._decode_object(obj, window, self._get_embedding(window), choose=choose)

    def _with_embeddings(self, decode: Callable[[], object], generation: int) -> Job:
        """Run ``decode()``, encoding (in this job) every window it asks for, until it succeeds; a job.

        Raises
        ------
        ImageError
            The image changed meanwhile.
        """
        for _ in range(8):
            if generation != self._generation:
                raise ImageError("The image changed while it was being segmented.")
            try:
                return decode()
            except EmbeddingNotReady as need:
                for missing in need.windows:
                    yield from self.embedding_job(missing)
        raise RuntimeError("the embeddings asked for do not stay in the cache (is it too small?)")

    def predict_job(self, prompts: Prompts) -> Job[Prediction]:
        """:meth:`predict`, first encoding every window it needs (scripts, tests, the evaluation)."""
        return self._with_embeddings(lambda: self.predict(prompts), self._generation)

    def _click_window_side(self, obj: ObjectPrompt) -> int:
        """Window side for a points-only prompt: ``CLICK_WINDOW_FACTOR`` x the diameter at its positive points."""
        pos = np.asarray(obj.point_coords, np.float64)[np.asarray(obj.point_labels) == 1]
        if len(pos) == 0:
            return self.window_min
        x, y = pos.mean(axis=0)
        image = self._normalized_plane()
        polarity, typical = self._object_scale()
        diameter = click_diameter(image, y, x, polarity)
        if typical is not None:
            diameter = float(np.clip(diameter, typical / 2.0, typical * 2.0))
        return int(max(CLICK_WINDOW_MIN, round(CLICK_WINDOW_FACTOR * diameter)))

    def _object_scale(self, generation: int | None = None) -> tuple[float, float | None]:
        """``(polarity, typical diameter or None)`` of the plane's objects (once per generation).

        See :func:`~napari_sam_micro.core.object_size.object_polarity` and
        :func:`~napari_sam_micro.core.object_size.typical_diameter`. The whole-plane embedding job
        computes it in its worker, so that the first click does not wait for it.
        """
        gen = self._generation if generation is None else generation
        cached = self._scale
        if cached is not None and cached[0] == gen:
            return cached[1]
        image = self._normalized_plane(gen)
        polarity = object_polarity(image)
        value = (polarity, typical_diameter(image, polarity))
        with self._lock:
            if self._generation == gen:
                self._scale = (gen, value)
        return value

    def _decode_click(self, obj: ObjectPrompt, window: Window | None, get_embedding, choose=None) -> ObjectPreview:
        """Decode a fresh points-only prompt on a ``crop_to_prompt`` model, in two stages.

        1. The points in ``window`` (sized from the object diameter estimated at the click); a
           single click uses the three-mask output and keeps ``choose(iou (3,), logits (3, h, w))``
           (default: the highest predicted IoU). While the mask reaches a border of the window that
           is not the image's, the window is doubled (at most ``CLICK_WINDOW_GROWTH`` times).
        2. The first mask's bounding box (padded by ``CLICK_BOX_PAD``) plus the points, decoded in
           the window a box prompt gets: the scale the models were trained on.

        ``get_embedding(window)`` returns the window's embedding or raises
        :class:`EmbeddingNotReady`; stage 2's window is only known after stage 1.
        """
        hw = self.image_hw
        first = None
        for attempt in range(CLICK_WINDOW_GROWTH + 1):
            emb = get_embedding(window)
            first = self._decode_object(obj, window, emb, choose=choose)
            if window is None or attempt == CLICK_WINDOW_GROWTH or not _reaches_window_border(first.mask, window, hw):
                break
            y0, y1, x0, x1 = window
            bigger = prompt_window(
                np.asarray([[(x0 + x1) / 2.0, (y0 + y1) / 2.0]]), hw, min_size=2 * max(y1 - y0, x1 - x0)
            )
            bigger = None if _window_covers(bigger, hw) else tuple(int(v) for v in bigger)
            if bigger == window:
                break
            window = bigger
        if first is None or not first.mask.any():
            return first
        x0, y0, x1, y1 = mask_to_box_xyxy(first.mask).astype(np.float64)
        pad = CLICK_BOX_PAD * max(x1 - x0, y1 - y0) + 1.0
        box = np.clip([x0 - pad, y0 - pad, x1 + pad, y1 + pad], 0, [hw[1] - 1, hw[0] - 1, hw[1] - 1, hw[0] - 1])
        boxed = ObjectPrompt(obj.point_coords, obj.point_labels, box.astype(np.float32), "box+points")
        window2 = self._window(boxed, None)
        second = self._decode_object(boxed, window2, get_embedding(window2))
        return replace(second, kind=obj.kind)

    def _decode_object(self, obj: ObjectPrompt, window: Window | None, emb: Embedding, mask_input=None, choose=None) -> ObjectPreview:
        """One decoder call for one object (points and/or box) in ``window``; the object's preview."""
        off = self._offset(window)
        coords, labels, box = obj.decoder_args()
        if coords is not None:
            coords = (coords - off[None, None, :]).astype(np.float32)
        if box is not None:
            box = (box - np.tile(off, 2)[None]).astype(np.float32)
        multimask = mask_input is None and box is None and coords is not None and coords.shape[1] == 1
        out = self._model.decode(
            emb, point_coords=coords, point_labels=labels, boxes=box, mask_input=mask_input, multimask_output=multimask
        )
        low_res, iou = out.low_res_logits, out.iou_predictions
        if multimask and choose is not None:
            up = self._model.upscale(emb, low_res[0][:, None])[:, 0]
            best = int(choose(iou[0], up))
            low_res, iou = low_res[:, [best]], iou[:, [best]]
        results: list[ObjectPreview | None] = [None]
        self._collect(results, [0], [obj], window, emb, low_res, iou, self.image_hw)
        return results[0]

    def plan_windows(self, prompts: Prompts) -> list[Window | None]:
        """Windows (None = whole plane) :meth:`predict` would decode ``prompts`` in."""
        objects = object_prompts(prompts)
        prev = self._refinable_previous(objects, prompts)
        return [self._window(obj, prev) for obj in objects]

    def missing_embeddings(self, prompts: Prompts) -> list[Window | None]:
        """Windows whose embedding :meth:`predict` needs and the cache lacks (no duplicates)."""
        missing = []
        for window in self.plan_windows(prompts):
            if window is None and self._embedding is not None:
                continue
            if window not in missing and not self.is_cached(window):
                missing.append(window)
        return missing

    def _refinable_previous(self, objects, prompts: Prompts) -> ObjectPreview | None:
        """The previous single-object preview when ``prompts`` only add points to its prompts."""
        prev = self._preview
        if prev is None or prev.generation != self._generation or len(prev.objects) != 1 or len(objects) != 1:
            return None
        old, new = prev.prompts, prompts
        if new.n_points <= old.n_points or new.n_boxes != old.n_boxes:
            return None
        if not np.array_equal(old.boxes_xyxy, new.boxes_xyxy):
            return None
        if not (
            np.array_equal(new.points_xy[: old.n_points], old.points_xy)
            and np.array_equal(new.point_labels[: old.n_points], old.point_labels)
        ):
            return None
        return prev.objects[0]

    def _get_embedding(self, window: Window | None) -> Embedding:
        if window is None and self._embedding is not None:
            return self._embedding
        emb = self.cache.get(self.embedding_key(window))
        if emb is None:
            raise EmbeddingNotReady([window])
        return emb

    def predict(self, prompts: Prompts) -> Prediction:
        """Decode ``prompts`` on the current plane and make the result the preview.

        Objects follow :func:`~napari_sam_micro.core.prompts.object_prompts`: points only → one
        object; each box → one object. Plain boxes sharing an embedding go through **one**
        batched decoder call. A single point uses SAM's three-mask output and keeps the mask with
        the highest predicted IoU; when points are added to the previous single-object prompt, the
        previous low-resolution logits are passed as ``mask_input`` (SAM's interactive refinement).

        Parameters
        ----------
        prompts : Prompts
            SAM ``(x, y)`` order, pixels of the plane.

        Returns
        -------
        Prediction

        Raises
        ------
        PromptError
            No prompts, only negative points …
        EmbeddingNotReady
            An embedding it needs is not computed (``.windows`` says which).
        """
        if self._plane is None:
            raise PromptError("Choose an image before adding prompts.")
        objects = object_prompts(prompts)
        previous = self._refinable_previous(objects, prompts)
        windows = [self._window(obj, previous) for obj in objects]
        missing = [w for w in dict.fromkeys(windows) if (w is not None or self._embedding is None) and not self.is_cached(w)]
        if missing:
            raise EmbeddingNotReady(missing)
        model = self._model
        hw = self.image_hw
        results: list[ObjectPreview | None] = [None] * len(objects)

        # plain boxes per window: one batched decoder call each
        groups: dict = {}
        for k, (obj, window) in enumerate(zip(objects, windows)):
            if obj.kind == "box":
                groups.setdefault(window, []).append(k)
        for window, ks in groups.items():
            emb = self._get_embedding(window)
            off = self._offset(window)
            boxes = np.stack([np.asarray(objects[k].box, np.float32) for k in ks]) - np.tile(off, 2)[None]
            out = model.decode(emb, boxes=boxes.astype(np.float32), multimask_output=False)
            self._collect(results, ks, objects, window, emb, out.low_res_logits, out.iou_predictions, hw)

        for k, (obj, window) in enumerate(zip(objects, windows)):
            if obj.kind == "box":
                continue
            if self.points_as_boxes:
                self._points_as_boxes(results, k, obj, window, self._get_embedding(window), hw)
                continue
            if obj.box is None and previous is None:  # a fresh click (two stages on crop models)
                results[k] = self._decode_new_points(obj, window)
                continue
            mask_input = None
            if previous is not None and previous.window == window:
                mask_input = previous.low_res_logits[None].astype(np.float32)
            results[k] = self._decode_object(obj, window, self._get_embedding(window), mask_input=mask_input)

        prediction = Prediction(tuple(results), prompts, self._generation, tuple(objects.warnings))
        self._preview = prediction
        self.preview_changed.emit(prediction)
        return prediction

    def _points_as_boxes(self, results, k, obj: ObjectPrompt, window, emb, hw) -> None:
        """Decode a click prompt on a box-only model (see ``points_as_boxes``)."""
        off = self._offset(window)
        if obj.box is not None:
            # box + points: the box is the prompt a box-only model understands
            out = self._model.decode(emb, boxes=(obj.box[None] - np.tile(off, 2)[None]).astype(np.float32), multimask_output=False)
            self._collect(results, [k], [obj], window, emb, out.low_res_logits, out.iou_predictions, hw, kinds=[obj.kind])
            return
        pts = np.asarray(obj.point_coords, np.float64) - off[None]
        lab = np.asarray(obj.point_labels)
        pos, neg = pts[lab == 1], pts[lab == 0]
        eh, ew = emb.original_size
        side = float(min(self._point_box_scale(self.image_hw), max(eh, ew)))
        x0, y0 = pos.min(axis=0)
        x1, y1 = pos.max(axis=0)
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        extent = max(x1 - x0, y1 - y0)
        boxes = []
        for frac in POINT_BOX_FRACTIONS:
            half = max(frac * side, extent + 4.0) / 2.0
            boxes.append([cx - half, cy - half, cx + half, cy + half])
        boxes = np.clip(np.asarray(boxes), 0, [ew - 1, eh - 1, ew - 1, eh - 1]).astype(np.float32)
        out = self._model.decode(emb, boxes=boxes, multimask_output=False)
        logits = self._model.upscale(emb, out.low_res_logits)[:, 0]
        masks = logits > float(self._model.mask_threshold)
        iou = out.iou_predictions[:, 0]

        def inside(mask, p):
            r = np.clip(np.round(p[:, 1]).astype(int), 0, eh - 1)
            c = np.clip(np.round(p[:, 0]).astype(int), 0, ew - 1)
            return mask[r, c]

        valid = [
            b
            for b, mask in enumerate(masks)
            if mask.any() and inside(mask, pos).all() and not (len(neg) and inside(mask, neg).any())
        ]
        best = max(valid, key=lambda b: iou[b]) if valid else int(np.argmax(iou))
        low_res, iou_out = out.low_res_logits[[best]], out.iou_predictions[[best]]
        self._collect(results, [k], [obj], window, emb, low_res, iou_out, hw, kinds=[obj.kind])

    def _point_box_scale(self, hw) -> float:
        """Side of the largest candidate box for a click (``points_as_boxes``), in pixels."""
        return float(max(self.window_min, min(hw) // 8))

    @staticmethod
    def _offset(window: Window | None) -> np.ndarray:
        if window is None:
            return np.zeros(2, np.float32)
        return np.array([window[2], window[0]], np.float32)  # (x0, y0)

    def _collect(self, results, ks, objects, window, emb, low_res, iou, hw, kinds=None) -> None:
        """Choose the best mask per object, upscale, paste into the plane."""
        best = np.argmax(iou, axis=1)
        chosen = low_res[np.arange(len(ks)), best][:, None]  # (B, 1, 256, 256)
        up = self._model.upscale(emb, chosen)[:, 0]  # (B, h, w) logits in the embedding frame
        thr = float(self._model.mask_threshold)
        stab = stability_score(up, thr)
        for b, k in enumerate(ks):
            crop = up[b] > thr
            if window is None:
                mask = crop
            else:
                y0, y1, x0, x1 = window
                mask = np.zeros(hw, dtype=bool)
                mask[y0:y1, x0:x1] = crop
            results[k] = ObjectPreview(
                mask=mask,
                predicted_iou=float(iou[b, best[b]]),
                stability=float(stab[b]),
                kind=kinds[b] if kinds is not None else objects[k].kind,
                low_res_logits=np.asarray(chosen[b], np.float32),
                window=window,
            )

    def clear_preview(self) -> None:
        """Forget the preview (after a commit or when the prompts were cleared)."""
        self._preview = None
        self.preview_changed.emit(None)

    # -- commit --------------------------------------------------------------------------
    def commit_plan(
        self,
        labels: np.ndarray,
        overwrite: bool = False,
        leading: Sequence[int] = (),
        prediction: Prediction | None = None,
    ) -> list[CommitItem]:
        """What committing the preview into ``labels`` would paint.

        Object ``k`` gets id ``next_free_id(labels) + k``. Without ``overwrite`` only background
        pixels are painted (objects committed together do not overwrite each other either);
        objects left with no pixel are skipped.

        Parameters
        ----------
        labels : np.ndarray
            ``(..., H, W)`` integer labels (not modified).
        overwrite : bool
            Paint over existing labels.
        leading : tuple of int
            Plane index along the leading axes of ``labels``.
        prediction : Prediction, optional
            Default: the current preview.

        Returns
        -------
        list of CommitItem

        Raises
        ------
        PromptError
            Nothing to commit.
        """
        prediction = prediction if prediction is not None else self._preview
        if prediction is None or not prediction.objects:
            raise PromptError("There is no mask to commit: add a point or a box first.")
        leading = tuple(int(i) for i in leading)
        if len(leading) != labels.ndim - 2:
            raise ValueError(f"labels of shape {labels.shape} need {labels.ndim - 2} leading indices, got {leading}")
        hw = tuple(int(s) for s in labels.shape[-2:])
        if hw != prediction.objects[0].mask.shape:
            raise ImageError(
                f"The labels layer plane is {hw[1]} × {hw[0]} pixels but the image is "
                f"{prediction.objects[0].mask.shape[1]} × {prediction.objects[0].mask.shape[0]}."
            )
        # read only the region the masks touch (a lazy volume is never loaded whole)
        rows, cols = np.nonzero(np.any([obj.mask for obj in prediction.objects], axis=0))
        r0, c0 = (int(rows.min()), int(cols.min())) if rows.size else (0, 0)
        region = (slice(r0, int(rows.max()) + 1 if rows.size else 0), slice(c0, int(cols.max()) + 1 if cols.size else 0))
        plane = np.array(labels[(*leading, *region)], copy=True)
        if isinstance(labels, np.ndarray):
            next_id = next_free_id(labels)
        else:  # lazy arrays reduce chunk by chunk (dask), else plane by plane
            top = labels.max() if hasattr(labels, "max") else max((np.asarray(p).max() for p in labels), default=0)
            next_id = max(int(top.compute() if hasattr(top, "compute") else top), 0) + 1
        items = []
        for k, obj in enumerate(prediction.objects):
            mask = obj.mask[region]
            sel = mask if overwrite else mask & (plane == 0)
            if not sel.any():
                continue
            label_id = next_id
            if np.issubdtype(labels.dtype, np.integer) and label_id > np.iinfo(labels.dtype).max:
                raise UserInputError(
                    f"The labels layer is full: its data type ({labels.dtype}) cannot hold label {label_id}. "
                    "Convert it to a larger type (e.g. uint32) to add more objects."
                )
            next_id += 1
            plane[sel] = label_id
            rr, cc = np.nonzero(sel)
            rr, cc = rr + r0, cc + c0
            indices = (*(np.full(rr.shape, i, dtype=np.intp) for i in leading), rr.astype(np.intp), cc.astype(np.intp))
            full = np.zeros(hw, bool)
            full[rr, cc] = True
            row = object_row(label_id, full, obj.predicted_iou, obj.stability, obj.kind)
            items.append(CommitItem(indices=indices, label_id=label_id, row=row, object_index=k))
        return items
