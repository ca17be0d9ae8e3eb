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
(:func:`~napari_sam_micro.core.windows.fits`); :func:`napari_sam_micro.plane_jobs.preencode_job` encodes the
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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from psygnal import Signal

from .core.cache import EmbeddingCache
from .core.commit_plan import CommitItem, plan_commit
from .core.decoding import (
    CLICK_BOX_PAD,
    CLICK_WINDOW_FACTOR,
    CLICK_WINDOW_GROWTH,
    CLICK_WINDOW_MIN,
    POINT_BOX_FRACTIONS,
    DecodeContext,
    EmbeddingNotReady,
    ObjectPreview,
    decode_prompts,
    object_window,
    refinable_previous,
)
from .core.errors import ImageError, PromptError
from .core.memory import PEAK_BYTES_PER_PIXEL, check_memory
from .core.model_api import Embedding, PromptableModel
from .core.preprocess import PreprocessConfig
from .core.progress import Job, drain
from .core.prompts import Prompts, object_prompts
from .core.seeded import SeededSegmentation, with_embeddings
from .core.windows import Window
from .embeddings import ENCODE_BATCH, PlaneEmbeddings

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
    "ENCODE_BATCH",
    "PEAK_BYTES_PER_PIXEL",
    "check_memory",
]


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
        self.cache = cache if cache is not None else EmbeddingCache()
        self.crop_to_prompt = bool(crop_to_prompt)
        self.window_scale = float(window_scale)
        self.window_min = int(window_min)
        self.points_as_boxes = bool(points_as_boxes)
        self._planes = PlaneEmbeddings(model, self.cache, preprocess or PreprocessConfig(), model_id or model.name)
        self._planes.measure_scale = self.clicks_in_windows
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
        return self._planes.model

    @property
    def model_id(self) -> str:
        return self._planes.model_id

    @property
    def preprocess(self) -> PreprocessConfig:
        return self._planes.preprocess

    @property
    def generation(self) -> int:
        """Incremented by every change of image, model or preprocessing."""
        return self._planes.generation

    @property
    def _generation(self) -> int:
        return self._planes.generation

    @property
    def _plane(self) -> np.ndarray | None:
        return self._planes.plane

    @property
    def plane_embeddings(self) -> PlaneEmbeddings:
        """The plane's :class:`~napari_sam_micro.embeddings.PlaneEmbeddings` (normalisation, windows, encoding)."""
        return self._planes

    @property
    def has_image(self) -> bool:
        return self._planes.plane is not None

    @property
    def large_plane(self) -> bool:
        """Whether the plane is read window by window (:mod:`~napari_sam_micro.core.large_planes`): no whole-plane embedding."""
        return self._planes.plane is not None and self._planes.large

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the current plane."""
        return self._planes.hw

    @property
    def embedding(self) -> Embedding | None:
        """The embedding of the whole current plane, once accepted (or found in the cache)."""
        return self._embedding

    @property
    def preview(self) -> Prediction | None:
        """The last prediction (None after a change of image or :meth:`clear_preview`)."""
        return self._preview

    def _bump(self) -> None:
        self._planes.bump()
        self._changed()

    def _changed(self) -> None:
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
        plane : array-like
            ``(H, W)`` grey, ``(H, W, 3|4)`` RGB (``preprocess.rgb``), or ``(H, W, C)`` with
            ``preprocess.channel_axis = -1``. Raw values (any real dtype); NaN allowed. numpy, or a
            lazy array (dask, zarr): a plane larger than
            :data:`~napari_sam_micro.core.large_planes.LARGE_PLANE_PIXELS` is only read window by
            window, a smaller one is read whole.
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
        if not hasattr(plane, "shape"):
            plane = np.asarray(plane)
        if len(plane.shape) not in (2, 3) or plane.shape[0] < 1 or plane.shape[1] < 1:
            raise ImageError(f"Expected a 2D image plane (optionally with channels last), got shape {plane.shape}.")
        if not self._planes.set_plane(plane, preprocess or self._planes.preprocess):
            return False
        self._changed()
        self._adopt_cached()
        return True

    def reset(self) -> None:
        """Forget the current plane (the image changed or is no longer shown); bumps the generation."""
        self._planes.set_plane(None, self._planes.preprocess)
        self._changed()

    def set_model(
        self,
        model: PromptableModel,
        *,
        crop_to_prompt: bool | None = None,
        model_id: str | None = None,
        points_as_boxes: bool | None = None,
    ) -> None:
        """Switch model (the plane stays; its embedding for the new model may be cached)."""
        self._planes.model = model
        self._planes.model_id = model_id or model.name
        if crop_to_prompt is not None:
            self.crop_to_prompt = bool(crop_to_prompt)
        if points_as_boxes is not None:
            self.points_as_boxes = bool(points_as_boxes)
        self._planes.measure_scale = self.clicks_in_windows
        self._bump()
        self._adopt_cached()

    def _adopt_cached(self) -> None:
        if self._planes.plane is None:
            return
        emb = self.cache.get(self.embedding_key())
        if emb is not None:
            self._embedding = emb
            self.embedding_changed.emit(emb)

    # -- embeddings (see PlaneEmbeddings) ---------------------------------------------------
    def embedding_key(self, window: Window | None = None) -> str:
        """Cache key of the current plane's embedding (``window`` = a crop of it)."""
        return self._planes.key(window)

    def is_cached(self, window: Window | None = None) -> bool:
        """Whether the (crop) embedding of the current plane is in the cache."""
        return self._planes.is_cached(window)

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
        return self._planes.embedding_job(window)

    def encoded_windows(self) -> list[Window]:
        """Windows of the current plane whose embeddings are in the cache (oldest first)."""
        return self._planes.encoded_windows()

    def embeddings_job(self, windows: Sequence[Window | None]) -> Job[int]:
        """Encode several windows (``None`` = whole plane), batched where the model gains; returns how many were asked for."""
        return self._planes.embeddings_job(windows)

    def _check_generation(self, generation: int) -> None:
        self._planes.check_generation(generation)

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
    def clicks_in_windows(self) -> bool:
        """Whether new clicks are decoded in windows sized from the object (crop models that take clicks)."""
        return self.crop_to_prompt and not self.points_as_boxes

    def decode_context(self) -> DecodeContext:
        """The :class:`~napari_sam_micro.core.decoding.DecodeContext` of the current plane."""
        return DecodeContext(
            model=self._planes.model,
            hw=self.image_hw,
            get_embedding=self._get_embedding,
            is_ready=self._is_ready,
            crop_to_prompt=self.crop_to_prompt,
            points_as_boxes=self.points_as_boxes,
            window_scale=self.window_scale,
            window_min=self.window_min,
            click_diameter=self._planes.click_diameter,
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
        prev = self._preview
        if prev is None or prev.generation != self._generation:
            return None
        return refinable_previous(prev.objects, prev.prompts, objects, prompts)

    def predict(self, prompts: Prompts) -> Prediction:
        """Decode ``prompts`` (SAM ``(x, y)`` order, plane pixels) and make the result the preview.

        One object per box, or one for points only (:func:`~napari_sam_micro.core.prompts.object_prompts`),
        decoded by :func:`~napari_sam_micro.core.decoding.decode_prompts`; points added to the
        previous single-object prompt refine it. Raises ``PromptError`` for unusable prompts and
        ``EmbeddingNotReady`` (``.windows``) when an embedding it needs is not computed.
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

    # -- commit --------------------------------------------------------------------------
    def commit_plan(
        self,
        labels: np.ndarray,
        overwrite: bool = False,
        leading: Sequence[int] = (),
        prediction: Prediction | None = None,
    ) -> list[CommitItem]:
        """What committing ``prediction`` (default the preview) into ``labels`` would paint.

        :func:`~napari_sam_micro.core.commit_plan.plan_commit` of its objects: object ``k`` gets
        id ``next_free_id(labels) + k``; without ``overwrite`` only background pixels are painted;
        ``leading`` is the plane's index along the leading axes of ``labels`` (not modified).
        """
        prediction = prediction if prediction is not None else self._preview
        return plan_commit(prediction.objects if prediction is not None else (), labels, overwrite, leading)

