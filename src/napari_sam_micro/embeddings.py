"""The embeddings of one image plane: normalisation, encoded windows, cache keys, encoding jobs.

:class:`PlaneEmbeddings` is the part of an :class:`~napari_sam_micro.session.AnnotationSession`
that turns pixels into embeddings. It holds the plane, the model and the preprocessing, and the
generation counter that every change of them increments; it normalises the plane lazily (one
:class:`~napari_sam_micro.core.preprocess.PlaneNormalizer` per generation, windows normalised on
their own so no whole-plane float copy stays in memory), encodes the plane or windows of it
(batched where the runtime gains from it), caches them under
:func:`~napari_sam_micro.core.cache.embedding_key`, and remembers which windows of the plane are
encoded (the window-reuse rule of :mod:`napari_sam_micro.core.windows` needs them). It also
measures the plane's object scale, which sizes click windows.

No napari, no Qt, no signals: the session emits those.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from .core.cache import EmbeddingCache, content_digest, embedding_key
from .core.errors import ImageError
from .core.large_planes import block_sample, is_large_plane, large_plane_digest, read_window, region_around
from .core.memory import ENCODE_BYTES_PER_PIXEL, PEAK_BYTES_PER_PIXEL, PEAK_BYTES_PER_PIXEL_COLOUR, check_memory
from .core.model_api import Embedding, PromptableModel
from .core.object_size import click_diameter, click_neighbourhood, object_polarity, typical_diameter
from .core.preprocess import PlaneNormalizer, PreprocessConfig, measure_value_ranges, to_rgb
from .core.progress import Job, Progress
from .core.windows import Window

__all__ = ["PlaneEmbeddings", "ENCODE_BATCH"]

#: Windows encoded together in one call by models that have ``encode_batch`` (a runtime that gains from batches).
ENCODE_BATCH = 4


class PlaneEmbeddings:
    """Embeddings of the current plane and its windows for one model and preprocessing.

    Parameters
    ----------
    model : PromptableModel
    cache : EmbeddingCache
    preprocess : PreprocessConfig
    model_id : str
        Identity of the model in cache keys.
    measure_scale : bool
        Measure the objects' scale right after the whole plane is encoded (in that worker), for
        models whose clicks are decoded in windows sized from it.
    """

    def __init__(self, model: PromptableModel, cache: EmbeddingCache, preprocess: PreprocessConfig, model_id: str, measure_scale: bool = False):
        self.lock = threading.Lock()
        self.model = model
        self.model_id = model_id
        self.cache = cache
        self.preprocess = preprocess
        self.measure_scale = bool(measure_scale)
        self.plane: np.ndarray | None = None
        self.digest: str | None = None
        self.large = False  # read window by window (core.large_planes): never the whole plane
        # a large plane's preprocessing with the value ranges measured on its sample; None: each window its own
        self._stretch: PreprocessConfig | None = None
        self._window_digests: dict[tuple, str] = {}
        self.generation = 0
        self._normalized: tuple[int, PlaneNormalizer] | None = None
        self._scale: tuple[tuple, tuple[float, float | None]] | None = None  # ((generation, region), object_scale())
        self._windows: dict[str, dict[Window, None]] = {}  # plane key -> windows encoded for it
        self._object_windows: tuple[int, list] | None = None  # (generation, pre-encoding plan)
        self._plan_lock = threading.Lock()

    # -- state -------------------------------------------------------------------------------
    def bump(self) -> None:
        """A new generation: the plane, model or preprocessing changed."""
        with self.lock:
            self.generation += 1
            self._normalized = None
            self._window_digests = {}

    def set_plane(self, plane, preprocess: PreprocessConfig) -> bool:
        """Make ``plane`` current (None forgets it); False when content and preprocessing are unchanged.

        A plane of more than :data:`~napari_sam_micro.core.large_planes.LARGE_PLANE_PIXELS` is kept
        as given (numpy, dask, zarr …) and only ever read window by window; a smaller one is read
        into memory.
        """
        large = plane is not None and is_large_plane(plane.shape[:2])
        stretch = None
        if plane is None:
            digest = None
        elif large:
            sample = block_sample(plane)
            digest = large_plane_digest(plane, sample)
            stretch = measure_value_ranges(sample, preprocess, sample)
            if any(hi <= lo for lo, hi in stretch.value_ranges or ()):
                stretch = None  # the sample is flat (e.g. all background): windows are stretched on their own
        else:
            plane = np.asarray(plane)
            digest = content_digest(plane)
        same = digest == self.digest and (not large or _same_array(plane, self.plane))
        if plane is not None and same and preprocess == self.preprocess and self.plane is not None:
            return False
        self.plane, self.digest, self.preprocess = plane, digest, preprocess
        self.large, self._stretch = large, stretch
        self.bump()
        return True

    @property
    def hw(self) -> tuple[int, int]:
        """``(H, W)`` of the current plane."""
        if self.plane is None:
            raise ImageError("No image plane is set.")
        return int(self.plane.shape[0]), int(self.plane.shape[1])

    def key(self, window: Window | None = None) -> str:
        """Cache key of the current plane's embedding (``window`` = a crop of it)."""
        if self.digest is None:
            raise ImageError("No image plane is set.")
        extra = "" if window is None else "crop=" + ",".join(str(int(v)) for v in window)
        if self.large and window is not None:
            extra += ";pixels=" + self._window_digest(window)
        return embedding_key(self.digest, self.model_id, self.preprocess.key(), extra)

    def _window_digest(self, window: Window) -> str:
        """Digest of a large plane's raw pixels in ``window`` (read once per generation)."""
        window = tuple(int(v) for v in window)
        digest = self._window_digests.get(window)
        if digest is None:
            digest = content_digest(read_window(self.plane, window))
            self._window_digests[window] = digest
        return digest

    def is_cached(self, window: Window | None = None) -> bool:
        """Whether the (crop) embedding of the current plane is in the cache."""
        return self.key(window) in self.cache

    def check_generation(self, generation: int, what: str = "segmented") -> None:
        """Raise :class:`ImageError` when the plane changed since ``generation``."""
        if generation != self.generation:
            raise ImageError(f"The image changed while it was being {what}.")

    # -- normalisation ---------------------------------------------------------------------
    def normalizer(self, generation: int | None = None) -> PlaneNormalizer:
        """The plane's :class:`~napari_sam_micro.core.preprocess.PlaneNormalizer` (measured once per generation)."""
        with self.lock:
            gen = self.generation if generation is None else generation
            cached = self._normalized
            plane, config = self.plane, self.preprocess
        if cached is not None and cached[0] == gen:
            return cached[1]
        if plane is None:
            raise ImageError("No image plane is set.")
        normalizer = PlaneNormalizer(plane, self._stretch if self.large else config)
        with self.lock:
            if self.generation == gen:
                self._normalized = (gen, normalizer)
        return normalizer

    def normalized_plane(self, generation: int | None = None) -> np.ndarray:
        """The whole plane normalised, for the steps that need all of it (object scale, seeds); not kept.

        ``(H, W)`` float32 for grey planes, else ``(H, W, 3)``; refused (:func:`check_memory`) when
        annotating the plane would not fit in the free memory.
        """
        if self.large:
            h, w = self.hw
            raise ImageError(
                f"This plane ({w} × {h} pixels) is too large to process in one piece. Annotate it with boxes and "
                "clicks, or segment it with the everything mode, which works in tiles."
            )
        normalizer = self.normalizer(generation)
        check_memory(normalizer.hw, PEAK_BYTES_PER_PIXEL if normalizer.grey else PEAK_BYTES_PER_PIXEL_COLOUR)
        return normalizer.crop()

    def region_image(self, centre_rc=None, generation: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """The normalised plane, or for a large plane the region around ``centre_rc`` (row, col).

        Returns
        -------
        image : (h, w) or (h, w, 3) float32
        offset : (row, col)
            Of the image's first pixel in the plane.
        """
        if not self.large:
            return self.normalized_plane(generation), (0, 0)
        region = region_around(self.hw, centre_rc)
        return self.normalized_window(region, generation), (region[0], region[2])

    def normalized_window(self, window: Window, generation: int | None = None) -> np.ndarray:
        """``(h, w)`` or ``(h, w, 3)`` float32: the plane's ``window`` normalised (as a crop of the normalised plane).

        On a large plane whose sample had no contrast, the window is stretched on its own pixels.
        """
        if self.large and self._stretch is None:
            return PlaneNormalizer(read_window(self.plane, window), self.preprocess).crop()
        return self.normalizer(generation).crop(window)

    def crop(self, window: Window | None, generation: int) -> np.ndarray:
        """The encoder's ``(h, w, 3)`` float32 input: the window normalised on its own, or the whole plane."""
        if window is not None:
            return to_rgb(self.normalized_window(window, generation))
        if self.large:
            h, w = self.hw
            raise ImageError(
                f"This plane ({w} × {h} pixels) is read window by window; {self.model.name} encodes whole "
                "images. Choose a model that segments around each prompt (micro-tiny, LiteMedSAM) or crop the image."
            )
        normalizer = self.normalizer(generation)
        check_memory(normalizer.hw, ENCODE_BYTES_PER_PIXEL)
        return to_rgb(normalizer.crop())

    # -- encoding ------------------------------------------------------------------------------
    def embedding_job(self, window: Window | None = None) -> Job[Embedding]:
        """Encode the plane (or a crop of it) unless cached; yields :class:`Progress`, returns the embedding."""
        if self.plane is None:
            raise ImageError("Choose an image before computing its embedding.")
        return self._embed(self.key(window), window, self.generation, self.model)

    def _embed(self, key, window, generation, model):
        embedding = self.cache.get(key)
        if embedding is not None:
            yield Progress(1, 1, "Embedding found in cache")
        else:
            what = "the image" if window is None else "the prompt window"
            yield Progress(0, 3, f"Preparing {what}")
            image = self.crop(window, generation)
            yield Progress(1, 3, f"Encoding {what} with {model.name}")
            embedding = model.encode(image)
            self.cache.put(key, embedding)
            yield Progress(3, 3, "Embedding ready")
        self._note_window(window, generation)
        if window is None and self.measure_scale and generation == self.generation:
            # the first click's window needs the objects' scale: measured here, off the GUI thread
            try:
                self.object_scale(generation)
            except ImageError:  # the plane went away meanwhile: its embedding is stale anyway
                pass
        return embedding

    def _note_window(self, window: Window | None, generation: int) -> None:
        if window is not None and generation == self.generation:
            with self.lock:
                self._windows.setdefault(self.key(), {})[tuple(window)] = None

    def encoded_windows(self) -> list[Window]:
        """Windows of the current plane whose embeddings are in the cache (oldest first)."""
        if self.digest is None:
            return []
        with self.lock:
            known = list(self._windows.get(self.key(), {}))
        return [w for w in known if self.is_cached(w)]

    def embeddings_job(self, windows: Sequence[Window | None]) -> Job[int]:
        """Encode several windows (``None`` = whole plane); returns how many were asked for.

        Models with ``encode_batch`` encode up to :data:`ENCODE_BATCH` missing windows per call;
        cached ones cost nothing.
        """
        return self._embeddings(list(dict.fromkeys(windows)), self.generation, self.model)

    def _embeddings(self, windows, generation, model):
        batched = hasattr(model, "encode_batch")
        todo = [w for w in windows if not self.is_cached(w)]
        crops = [w for w in todo if w is not None and batched]
        total, done = max(1, len(todo)), 0
        for window in (w for w in todo if w is None or not batched):
            yield from self._embed(self.key(window), window, generation, model)
            done += 1
            yield Progress(done, total, f"{done} of {total} window(s) encoded")
        for start in range(0, len(crops), ENCODE_BATCH):
            chunk = crops[start : start + ENCODE_BATCH]
            self.check_generation(generation, "encoded")
            yield Progress(done, total, f"Encoding {len(chunk)} window(s) with {model.name}")
            for window, emb in zip(chunk, model.encode_batch([self.crop(w, generation) for w in chunk])):
                self.cache.put(self.key(window), emb)
                self._note_window(window, generation)
            done += len(chunk)
            yield Progress(done, total, f"{done} of {total} window(s) encoded")
        for window in windows:
            if window is not None and self.is_cached(window):
                self._note_window(window, generation)
        return len(windows)

    def ensure_job(self, window: Window | None, generation: int) -> Job[Embedding]:
        """:meth:`embedding_job` for a generation captured earlier (pre-encoding)."""
        return self._embed(self.key(window), window, generation, self.model)

    # -- object scale -------------------------------------------------------------------------
    def object_windows(self, generation: int, plan):
        """The plane's pre-encoding plan, made once per generation by ``plan()`` (thread-safe; a stale plan is not kept)."""
        cached = self._object_windows
        if cached is not None and cached[0] == generation:
            return cached[1]
        planned = plan()
        with self._plan_lock:
            if generation == self.generation:
                self._object_windows = (generation, planned)
        return planned

    def object_scale(self, generation: int | None = None, centre_rc=None) -> tuple[float, float | None]:
        """``(polarity, typical diameter or None)`` of the plane's objects (once per generation).

        Measured on the whole plane, or on a large plane in the region around ``centre_rc``
        (:meth:`region_image`; once per region). See
        :func:`~napari_sam_micro.core.object_size.object_polarity` and
        :func:`~napari_sam_micro.core.object_size.typical_diameter`.
        """
        gen = self.generation if generation is None else generation
        where = (gen, region_around(self.hw, centre_rc) if self.large else None)
        cached = self._scale
        if cached is not None and cached[0] == where:
            return cached[1]
        image, _ = self.region_image(centre_rc, gen)
        polarity = object_polarity(image)
        value = (polarity, typical_diameter(image, polarity))
        with self.lock:
            if self.generation == gen:
                self._scale = (where, value)
        return value

    def click_diameter(self, x: float, y: float) -> float:
        """Object diameter (pixels) estimated under a click at ``(x, y)``, kept near the plane's typical one."""
        h, w = self.hw
        r, c = int(np.clip(round(float(y)), 0, h - 1)), int(np.clip(round(float(x)), 0, w - 1))
        polarity, typical = self.object_scale(centre_rc=(r, c))
        # only the neighbourhood the estimate reads is normalised (same result as on the whole plane)
        y0, y1, x0, x1 = click_neighbourhood((h, w), r, c)
        diameter = click_diameter(self.normalized_window((y0, y1, x0, x1)), r - y0, c - x0, polarity)
        if typical is not None:
            diameter = float(np.clip(diameter, typical / 2.0, typical * 2.0))
        return diameter


def _same_array(a, b) -> bool:
    """Whether two lazy planes are one array (the same object, or dask arrays of one graph): their
    digest covers a sample only, so equal digests alone do not make them the same plane."""
    if a is b:
        return True
    name = getattr(a, "name", None)
    return isinstance(name, str) and name == getattr(b, "name", None)
