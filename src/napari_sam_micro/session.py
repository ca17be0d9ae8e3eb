"""Annotation state of one 2D image plane: embeddings, prompts → masks, commit plans.

:class:`AnnotationSession` knows nothing about napari or Qt. It holds a model
(:class:`~napari_sam_micro.core.model_api.PromptableModel`), an
:class:`~napari_sam_micro.core.cache.EmbeddingCache`, the preprocessing configuration, the current
plane and the current preview, and tells listeners about changes through psygnal signals. How
prompts become masks (windows, click stages, points as boxes, seeded everything mode) is not the
session's: those are functions of :mod:`napari_sam_micro.core.decoding` and
:mod:`napari_sam_micro.core.seeded` that the session calls with a
:class:`~napari_sam_micro.core.decoding.DecodeContext` of its plane.

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
window around it: the crop of the normalised plane is encoded (cached too, the window is part of
the key), decoded there and pasted back. The session remembers which windows of its plane are
encoded, so that a later prompt whose object fits one of them is decoded there without encoding
(:func:`~napari_sam_micro.core.windows.fits`); :meth:`AnnotationSession.preencode_job` encodes the
windows around the plane's detected objects ahead of the user's prompts.

Stale results
-------------
Every change of image, model or preprocessing increments :attr:`AnnotationSession.generation`.
A job captures the generation when it is created; :meth:`accept_embedding` refuses an embedding
whose generation is no longer current, so an embedding finished for an image that changed
mid-way never becomes the session's embedding (it stays in the cache under its own key, which
cannot match the new image).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from psygnal import Signal

from .core.cache import EmbeddingCache, content_digest, embedding_key
from .core.decoding import (
    CLICK_BOX_PAD,
    CLICK_WINDOW_FACTOR,
    CLICK_WINDOW_GROWTH,
    CLICK_WINDOW_MIN,
    POINT_BOX_FRACTIONS,
    DecodeContext,
    EmbeddingNotReady,
    ObjectPreview,
    click_box,
    click_box_windows,
    decode_prompts,
    object_window,
)
from .core.errors import ImageError, PromptError, UserInputError
from .core.labels import next_free_id, object_row
from .core.model_api import Embedding, PromptableModel
from .core.object_size import click_diameter, click_neighbourhood, object_polarity, typical_diameter
from .core.preprocess import PlaneNormalizer, PreprocessConfig, to_rgb
from .core.progress import Job, Progress, drain
from .core.prompts import Prompts, object_prompts
from .core.refine import RefinedObject, refine_objects_job
from .core.seeded import SeededSegmentation, seeded_segmentation_job, with_embeddings
from .core.seeds import SEED_IOU_FLOOR, find_seeds
from .core.windows import Window, cover_objects

__all__ = [
    "AnnotationSession",
    "EmbeddingNotReady",
    "ObjectPreview",
    "Prediction",
    "CommitItem",
    "Window",
    "SeededSegmentation",
    "CLICK_WINDOW_FACTOR",
    "CLICK_WINDOW_MIN",
    "CLICK_WINDOW_GROWTH",
    "CLICK_BOX_PAD",
    "POINT_BOX_FRACTIONS",
]

#: Windows encoded together in one call by models that have ``encode_batch`` (a runtime that gains from batches).
ENCODE_BATCH = 4

#: Peak bytes per image pixel of annotating a grey plane (normalising it, measuring its objects'
#: scale, a click, a commit), measured by ``benchmarks/bench_memory.py`` (about 21) and rounded up;
#: the plane itself (the user's) not counted.
PEAK_BYTES_PER_PIXEL = 24

#: The same for RGB and multichannel planes (their normalised plane keeps three channels; about 29).
PEAK_BYTES_PER_PIXEL_COLOUR = 32

#: Bytes per pixel of handing the whole plane to an encoder (normalised, then its three-channel float32 copy).
ENCODE_BYTES_PER_PIXEL = 16

#: Allowance for everything that does not grow with the plane (model input, embedding, decoder).
MEMORY_MARGIN_BYTES = 256 * 2**20


def _available_memory() -> int | None:
    """Bytes of memory free for this process, or None when it cannot be known (no psutil)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        return int(psutil.virtual_memory().available)
    except Exception:  # an unsupported platform: no check rather than no annotation
        return None


def check_memory(hw: Sequence[int], bytes_per_pixel: float = PEAK_BYTES_PER_PIXEL) -> None:
    """Refuse a plane whose processing would not fit in the memory that is free.

    Skipped when the free memory cannot be known (psutil missing).

    Parameters
    ----------
    hw : (int, int)
        ``(H, W)`` of the plane.
    bytes_per_pixel : float
        What the step needs per pixel: :data:`PEAK_BYTES_PER_PIXEL` (or ``_COLOUR``) for annotating
        the plane, :data:`ENCODE_BYTES_PER_PIXEL` for handing it whole to an encoder.

    Raises
    ------
    ImageError
        Estimated need (``bytes_per_pixel`` x H x W + :data:`MEMORY_MARGIN_BYTES`) above the free memory.
    """
    free = _available_memory()
    if free is None:
        return
    h, w = int(hw[0]), int(hw[1])
    need = int(bytes_per_pixel * h * w) + MEMORY_MARGIN_BYTES
    if need <= free:
        return
    raise ImageError(
        f"This image plane is too large for the memory that is free: {w} × {h} pixels "
        f"({h * w / 1e6:.0f} megapixels) needs about {_gb(need)} to segment, but only {_gb(free)} is free. "
        "Crop the image to the region you want to annotate, downsample it (e.g. bin 2 × 2), or close "
        "other programs, then choose the image again."
    )


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


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
        out = np.zeros(self.objects[0].plane_hw, dtype=dtype)
        for k, obj in enumerate(self.objects):
            # painted inside the object's window only (no whole-plane mask per object)
            r, c = obj.offset
            h, w = obj.crop.shape
            sub = out[r : r + h, c : c + w]
            sub[obj.crop & (sub == 0)] = k + 1
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
        fresh one is decoded in two stages (:func:`~napari_sam_micro.core.decoding.decode_click`).
    points_as_boxes : bool
        For box-only models (LiteMedSAM was trained with boxes; its decoder returns empty masks for
        point prompts): click prompts become square candidate boxes around the positive points,
        decoded in one batched call (see :mod:`napari_sam_micro.core.decoding`).

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
        self._normalized: tuple[int, PlaneNormalizer] | None = None
        self._scale: tuple[int, tuple[float, float | None]] | None = None  # (generation, _object_scale())
        self._embedding: Embedding | None = None
        self._preview: Prediction | None = None
        self._windows: dict[str, dict[Window, None]] = {}  # plane key -> windows encoded for it
        self._object_windows: tuple[int, list] | None = None  # (generation, pre-encoding plan)

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

    def _normalizer(self, generation: int | None = None) -> PlaneNormalizer:
        """The current plane's :class:`~napari_sam_micro.core.preprocess.PlaneNormalizer` (measured once per generation)."""
        with self._lock:
            gen = self._generation if generation is None else generation
            cached = self._normalized
            plane, config = self._plane, self._preprocess
        if cached is not None and cached[0] == gen:
            return cached[1]
        if plane is None:
            raise ImageError("No image plane is set.")
        normalizer = PlaneNormalizer(plane, config)
        with self._lock:
            if self._generation == gen:
                self._normalized = (gen, normalizer)
        return normalizer

    def _normalized_plane(self, generation: int | None = None) -> np.ndarray:
        """The whole current plane normalised, for the steps that need all of it (object scale, seeds).

        Not kept: windows are normalised on their own (:meth:`_crop`), so that no whole-plane copy
        stays in memory. ``(H, W)`` float32 for grey planes, else ``(H, W, 3)``; see
        :func:`~napari_sam_micro.core.preprocess.normalize_plane`. Refused (:func:`check_memory`)
        when annotating the plane would not fit in the free memory.
        """
        normalizer = self._normalizer(generation)
        check_memory(normalizer.hw, PEAK_BYTES_PER_PIXEL if normalizer.grey else PEAK_BYTES_PER_PIXEL_COLOUR)
        return normalizer.crop()

    # -- embeddings ------------------------------------------------------------------------
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
        return self._embedding_gen(key, window, self._generation, self._model)

    def _embedding_gen(self, key, window, generation, model):
        embedding = self.cache.get(key)
        if embedding is not None:
            yield Progress(1, 1, "Embedding found in cache")
        else:
            what = "the image" if window is None else "the prompt window"
            yield Progress(0, 3, f"Preparing {what}")
            image = self._crop(window, generation)
            yield Progress(1, 3, f"Encoding {what} with {model.name}")
            embedding = model.encode(image)
            self.cache.put(key, embedding)
            yield Progress(3, 3, "Embedding ready")
        self._note_window(window, generation)
        if window is None and self._clicks_in_windows and generation == self._generation:
            # the first click's window needs the objects' scale: measured here, off the GUI thread
            try:
                self._object_scale(generation)
            except ImageError:  # the plane went away meanwhile: its embedding is stale anyway
                pass
        return embedding

    def _crop(self, window: Window | None, generation: int) -> np.ndarray:
        """The encoder's ``(h, w, 3)`` float32 input: the window normalised on its own, or the whole plane."""
        normalizer = self._normalizer(generation)
        if window is None:
            check_memory(normalizer.hw, ENCODE_BYTES_PER_PIXEL)
        return to_rgb(normalizer.crop(window))

    def _note_window(self, window: Window | None, generation: int) -> None:
        if window is not None and generation == self._generation:
            with self._lock:
                self._windows.setdefault(self.embedding_key(), {})[tuple(window)] = None

    def encoded_windows(self) -> list[Window]:
        """Windows of the current plane whose embeddings are in the cache (oldest first)."""
        if self._digest is None:
            return []
        with self._lock:
            known = list(self._windows.get(self.embedding_key(), {}))
        return [w for w in known if self.is_cached(w)]

    def embeddings_job(self, windows: Sequence[Window | None]) -> Job[int]:
        """Encode several windows (``None`` = whole plane); returns how many were asked for.

        Models with ``encode_batch`` (a runtime that gains from batches) encode up to
        :data:`ENCODE_BATCH` missing windows per call; cached ones cost nothing.
        """
        windows = list(dict.fromkeys(windows))
        generation, model = self._generation, self._model
        batched = hasattr(model, "encode_batch")

        def run():
            todo = [w for w in windows if not self.is_cached(w)]
            plain = [w for w in todo if w is None or not batched]
            crops = [w for w in todo if w is not None and batched]
            total = max(1, len(todo))
            done = 0
            for window in plain:
                yield from self._embedding_gen(self.embedding_key(window), window, generation, model)
                done += 1
                yield Progress(done, total, f"{done} of {total} window(s) encoded")
            for start in range(0, len(crops), ENCODE_BATCH):
                chunk = crops[start : start + ENCODE_BATCH]
                if generation != self._generation:
                    raise ImageError("The image changed while its windows were being encoded.")
                yield Progress(done, total, f"Encoding {len(chunk)} window(s) with {model.name}")
                embeddings = model.encode_batch([self._crop(w, generation) for w in chunk])
                for window, emb in zip(chunk, embeddings):
                    self.cache.put(self.embedding_key(window), emb)
                    self._note_window(window, generation)
                done += len(chunk)
                yield Progress(done, total, f"{done} of {total} window(s) encoded")
            for window in windows:
                if window is None or not self.is_cached(window):
                    continue
                self._note_window(window, generation)
            return len(windows)

        return run()

    def preencode_job(self, centre_rc: Sequence[float] | None = None, max_windows: int = 200) -> Job[int]:
        """Encode the windows around the plane's detected objects, nearest ``centre_rc`` first.

        Objects are found as in everything mode (:func:`~napari_sam_micro.core.seeds.find_seeds`),
        their boxes estimated from the diameter under each seed, and covered by few windows
        (:func:`~napari_sam_micro.core.windows.cover_objects`); a later click or box on such an
        object is decoded without encoding. Meant for an idle, cancellable, low-priority worker:
        it yields between windows and stops when the image changes. Nothing to do for models that
        decode on the whole plane.

        Parameters
        ----------
        centre_rc : (row, col), optional
            Where the user looks (view centre or cursor); default the plane's centre.
        max_windows : int
            At most this many windows are encoded.

        Returns
        -------
        int
            Windows encoded by this job.
        """
        if self._plane is None:
            raise ImageError("Choose an image before pre-encoding it.")
        generation = self._generation
        if not self._clicks_in_windows:
            return _done(0)

        def run():
            yield Progress(0, 0, "Finding objects to pre-encode")
            planned = self._cover_plane_objects(generation, centre_rc)[:max_windows]
            encoded = 0
            for k, (window, points_xy) in enumerate(planned):
                # the cover window (a click's first stage), then the box windows of its objects'
                # first masks (the second stage), so that a click there is decode-only
                todo = [window]
                while todo:
                    if generation != self._generation:
                        return encoded
                    current = todo.pop(0)
                    if current is not None and not self.is_cached(current):
                        yield from self._embedding_gen(self.embedding_key(current), current, generation, self._model)
                        encoded += 1
                    if current == window:
                        todo = [w for w in click_box_windows(self.decode_context(), points_xy, window) if w != window]
                yield Progress(k + 1, len(planned), f"Pre-encoded the objects of {k + 1} of {len(planned)} window(s)")
            return encoded

        return run()

    def _cover_plane_objects(self, generation: int, centre_rc) -> list[tuple[Window, np.ndarray]]:
        """Windows that fit the plane's detected objects with their ``(x, y)`` seeds (planned once per
        generation), nearest ``centre_rc`` first."""
        planned = self._object_windows
        if planned is None or planned[0] != generation:
            image = self._normalized_plane(generation)
            seeds_xy = find_seeds(image)[:, ::-1].reshape(-1, 2)
            ctx = self.decode_context()
            boxes = np.array([click_box(ctx, x, y)[0] for x, y in seeds_xy]).reshape(-1, 4)
            windows, assignment = cover_objects(boxes, self.image_hw, ctx.reuse_scale, min_side=CLICK_WINDOW_MIN) if len(boxes) else ([], [])
            pairs = [(ctx.plane_or(w), seeds_xy[np.asarray(assignment) == j]) for j, w in enumerate(windows)]
            planned = (generation, [(w, pts) for w, pts in pairs if w is not None])
            with self._lock:
                if generation == self._generation:
                    self._object_windows = planned
        cy, cx = (np.asarray(centre_rc, float) if centre_rc is not None else np.asarray(self.image_hw) / 2.0)[:2]
        return sorted(planned[1], key=lambda p: math.hypot((p[0][0] + p[0][1]) / 2.0 - cy, (p[0][2] + p[0][3]) / 2.0 - cx))

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
        """Seeded everything mode on the current plane: :func:`~napari_sam_micro.core.seeded.seeded_segmentation_job`.

        Windows are encoded (and cached) in this job; the preview is not touched.

        Parameters
        ----------
        seeds_rc : (N, 2) array-like
            ``(row, col)`` object centres on the current plane (e.g. :func:`~napari_sam_micro.core.seeds.find_seeds`).
        iou_floor, nms_thresh, fill_holes, keep_largest, min_area, refill
            See :func:`~napari_sam_micro.core.seeded.seeded_segmentation_job`.

        Returns
        -------
        Job[SeededSegmentation]
        """
        if self._plane is None:
            raise ImageError("Choose an image before segmenting it.")
        generation = self._generation
        return seeded_segmentation_job(
            self.decode_context(),
            seeds_rc,
            self._normalized_plane(generation),
            self.embeddings_job,
            generation=generation,
            check=lambda: self._check_generation(generation),
            iou_floor=iou_floor,
            nms_thresh=nms_thresh,
            fill_holes=fill_holes,
            keep_largest=keep_largest,
            min_area=min_area,
            refill=refill,
        )

    def refine_job(self, labels: np.ndarray, ids=None, **options) -> Job[list[RefinedObject]]:
        """Re-segment objects of a label plane of the current image: :func:`~napari_sam_micro.core.refine.refine_objects_job`.

        ``labels`` is ``(H, W)`` int (not modified); ``ids`` the objects (default all); ``options``
        ``strategy``, ``box_pad``, ``clicks``. Windows are encoded (and cached) in this job.
        """
        if self._plane is None:
            raise ImageError("Choose an image before refining its labels.")
        generation = self._generation
        check = lambda: self._check_generation(generation)  # noqa: E731
        return refine_objects_job(self.decode_context(), labels, self.embeddings_job, ids, check=check, **options)

    def _check_generation(self, generation: int) -> None:
        if generation != self._generation:
            raise ImageError("The image changed while it was being segmented.")

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
    @property
    def _clicks_in_windows(self) -> bool:
        """Whether new clicks are decoded in windows sized from the object (crop models that take clicks)."""
        return self.crop_to_prompt and not self.points_as_boxes

    def decode_context(self) -> DecodeContext:
        """The :class:`~napari_sam_micro.core.decoding.DecodeContext` of the current plane."""
        return DecodeContext(
            model=self._model,
            hw=self.image_hw,
            get_embedding=self._get_embedding,
            is_ready=self._is_ready,
            crop_to_prompt=self.crop_to_prompt,
            points_as_boxes=self.points_as_boxes,
            window_scale=self.window_scale,
            window_min=self.window_min,
            click_diameter=self._click_diameter,
            encoded=self.encoded_windows,
        )

    def _is_ready(self, window: Window | None) -> bool:
        return (window is None and self._embedding is not None) or self.is_cached(window)

    def _get_embedding(self, window: Window | None) -> Embedding:
        if window is None and self._embedding is not None:
            return self._embedding
        emb = self.cache.get(self.embedding_key(window))
        if emb is None:
            raise EmbeddingNotReady([window])
        return emb

    def plan_windows(self, prompts: Prompts) -> list[Window | None]:
        """Windows (None = whole plane) :meth:`predict` would decode ``prompts`` in (first stage)."""
        objects = object_prompts(prompts)
        ctx = self.decode_context()
        prev = self._refinable_previous(objects, prompts)
        return [object_window(ctx, obj, prev) for obj in objects]

    def missing_embeddings(self, prompts: Prompts) -> list[Window | None]:
        """Windows whose embedding :meth:`predict` needs first and the cache lacks (no duplicates)."""
        return [w for w in dict.fromkeys(self.plan_windows(prompts)) if not self._is_ready(w)]

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

    def predict(self, prompts: Prompts) -> Prediction:
        """Decode ``prompts`` on the current plane and make the result the preview.

        Objects follow :func:`~napari_sam_micro.core.prompts.object_prompts`: points only → one
        object; each box → one object. How each is decoded is
        :func:`~napari_sam_micro.core.decoding.decode_prompts`: plain boxes sharing a window in
        **one** batched decoder call; a single point with SAM's three-mask output (the highest
        predicted IoU is kept); points added to the previous single-object prompt refine it with
        the previous low-resolution logits as ``mask_input``.

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
        prompts.check_inside(self.image_hw)
        objects = object_prompts(prompts)
        previous = self._refinable_previous(objects, prompts)
        results = decode_prompts(self.decode_context(), objects, previous)
        prediction = Prediction(tuple(results), prompts, self._generation, tuple(objects.warnings))
        self._preview = prediction
        self.preview_changed.emit(prediction)
        return prediction

    def clear_preview(self) -> None:
        """Forget the preview (after a commit or when the prompts were cleared)."""
        self._preview = None
        self.preview_changed.emit(None)

    def predict_job(self, prompts: Prompts) -> Job[Prediction]:
        """:meth:`predict`, first encoding every window it needs (scripts, tests, the evaluation)."""
        generation = self._generation
        return with_embeddings(lambda: self.predict(prompts), self.embeddings_job, lambda: self._check_generation(generation))

    def _click_diameter(self, x: float, y: float) -> float:
        """Object diameter (pixels) estimated under a click at ``(x, y)``, kept near the plane's typical one."""
        polarity, typical = self._object_scale()
        # only the neighbourhood the estimate reads is normalised (same result as on the whole plane)
        h, w = self.image_hw
        r, c = int(np.clip(round(float(y)), 0, h - 1)), int(np.clip(round(float(x)), 0, w - 1))
        y0, y1, x0, x1 = click_neighbourhood((h, w), r, c)
        diameter = click_diameter(self._normalizer().crop((y0, y1, x0, x1)), r - y0, c - x0, polarity)
        if typical is not None:
            diameter = float(np.clip(diameter, typical / 2.0, typical * 2.0))
        return diameter

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
        image_hw = prediction.objects[0].plane_hw
        if hw != image_hw:
            raise ImageError(
                f"The labels layer plane is {hw[1]} × {hw[0]} pixels but the image is {image_hw[1]} × {image_hw[0]}."
            )
        # read only the region the masks touch (a lazy volume is never loaded whole); masks are
        # taken in that region only (no whole-plane array per object)
        boxes = [b for b in (obj.bbox() for obj in prediction.objects) if b is not None]
        r0, c0 = (min(b[0] for b in boxes), min(b[1] for b in boxes)) if boxes else (0, 0)
        r1, c1 = (max(b[2] for b in boxes), max(b[3] for b in boxes)) if boxes else (0, 0)
        region = (slice(r0, r1), slice(c0, c1))
        plane = np.array(labels[(*leading, *region)], copy=True)
        if isinstance(labels, np.ndarray):
            next_id = next_free_id(labels)
        else:  # lazy arrays reduce chunk by chunk (dask), else plane by plane
            top = labels.max() if hasattr(labels, "max") else max((np.asarray(p).max() for p in labels), default=0)
            next_id = max(int(top.compute() if hasattr(top, "compute") else top), 0) + 1
        items = []
        for k, obj in enumerate(prediction.objects):
            mask = obj.region(r0, r1, c0, c1)
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
            row = object_row(label_id, sel, obj.predicted_iou, obj.stability, obj.kind)
            for key, shift in (("bbox_y0", r0), ("bbox_x0", c0), ("bbox_y1", r0), ("bbox_x1", c0)):
                row[key] += shift  # region frame → plane
            items.append(CommitItem(indices=indices, label_id=label_id, row=row, object_index=k))
        return items


def _done(value):
    """A job that yields nothing and returns ``value``."""
    return value
    yield  # pragma: no cover - makes this a generator
