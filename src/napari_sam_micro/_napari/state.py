"""Per-viewer state shared by the plugin's widgets: loaded models and the embedding cache.

There is no process-wide singleton: each viewer gets its own :class:`ViewerState`, kept in a
:class:`weakref.WeakKeyDictionary` so that it goes away with the viewer. The annotator and the
everything-mode widget of one viewer share it (a model loaded or an image encoded by one is
reused by the other).

Cache settings (environment variables, read when a viewer's state is created):

``NAPARI_SAM_MICRO_CACHE_MB``
    Memory budget of the embeddings (default 1024). Below :data:`MIN_CACHE_MB` it is raised to
    that minimum; a value that is not a finite positive number is ignored (default used). Either
    way a warning says so.
``NAPARI_SAM_MICRO_DISK_CACHE_MB``
    Budget of the disk tier; unset or 0: no disk tier (the default). With one, re-opening an
    image with the same model and normalisation does not encode it again.
``NAPARI_SAM_MICRO_DISK_CACHE_DIR``
    Folder of the disk tier; default ``platformdirs.user_cache_dir("napari-sam-micro")/embeddings``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from napari.utils.events import EventEmitter

from ..core.cache import EmbeddingCache
from ..models.registry import ModelStore, get_spec

__all__ = [
    "ViewerState",
    "DEFAULT_CACHE_BYTES",
    "MIN_CACHE_MB",
    "KEEP_RECENT",
    "cache_settings",
    "disk_cache_dir",
    "embedding_model_id",
]

_log = logging.getLogger(__name__)

#: Memory budget of a viewer's embedding cache (bytes); ``NAPARI_SAM_MICRO_CACHE_MB`` overrides it.
DEFAULT_CACHE_BYTES = 1 << 30
#: Smallest memory (and disk) budget accepted, in MB: 16 embeddings of a 256-px model
#: (1 x 256 x 64 x 64 float32 = 4 MiB each, whole plane or window).
MIN_CACHE_MB = 64
#: Embeddings always kept in memory whatever the budget: the windows of one prediction (a box per
#: object plus the whole plane) must stay cached together, or it would encode them forever.
KEEP_RECENT = 32

CACHE_ENV = "NAPARI_SAM_MICRO_CACHE_MB"
DISK_CACHE_ENV = "NAPARI_SAM_MICRO_DISK_CACHE_MB"
DISK_DIR_ENV = "NAPARI_SAM_MICRO_DISK_CACHE_DIR"

_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _megabytes(name: str, default_mb: float, allow_zero: bool) -> tuple[float, str | None]:
    """``(MB, warning or None)`` from the environment variable ``name``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default_mb, None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        return default_mb, (
            f"{name}={raw!r} is not a size in megabytes (a finite number, at least {MIN_CACHE_MB}); "
            f"using the default ({default_mb:g} MB)."
        )
    if value == 0 and allow_zero:
        return 0.0, None
    if value < MIN_CACHE_MB:
        return float(MIN_CACHE_MB), (
            f"{name}={raw!r} is too small to hold the embeddings of one image; using {MIN_CACHE_MB} MB instead."
        )
    return value, None


def disk_cache_dir() -> Path:
    """Folder of the disk tier: ``$NAPARI_SAM_MICRO_DISK_CACHE_DIR``, else ``<user cache dir>/embeddings``."""
    env = os.environ.get(DISK_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-sam-micro")) / "embeddings"


def cache_settings() -> tuple[dict, list[str]]:
    """``(EmbeddingCache keyword arguments, warnings)`` from the environment (module docstring)."""
    memory_mb, warn_memory = _megabytes(CACHE_ENV, DEFAULT_CACHE_BYTES / (1 << 20), allow_zero=False)
    disk_mb, warn_disk = _megabytes(DISK_CACHE_ENV, 0.0, allow_zero=True)
    kwargs = {"max_bytes": int(memory_mb * (1 << 20)), "keep_recent": KEEP_RECENT}
    if disk_mb > 0:
        kwargs.update(disk_dir=disk_cache_dir(), disk_max_bytes=int(disk_mb * (1 << 20)))
    return kwargs, [w for w in (warn_memory, warn_disk) if w]


def _new_cache() -> EmbeddingCache:
    kwargs, warnings = cache_settings()
    for message in warnings:
        _log.warning(message)
        try:
            from napari.utils.notifications import show_warning

            show_warning(message)
        except Exception:  # noqa: BLE001 - no notification manager: the log has it
            pass
    return EmbeddingCache(**kwargs)


def embedding_model_id(model_name: str, checkpoint=None) -> str:
    """Identity of a model's embeddings in cache keys (safe for a disk cache across releases).

    The spec's :attr:`~napari_sam_micro.models.registry.ModelSpec.embedding_id` (for micro-tiny it
    carries the weights' checksum when its image encoder is tuned), plus the path, size and
    modification time of a checkpoint the user chose (a file rewritten in place is another model).
    """
    try:
        base = get_spec(model_name).embedding_id
    except Exception:  # noqa: BLE001 - an unknown name fails later, where the model is loaded
        base = model_name
    if checkpoint is None or str(checkpoint) == "":
        return base
    path = Path(checkpoint).expanduser().resolve()
    try:
        st = path.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    return f"{base}|{path}|{stamp}"


@dataclass
class ViewerState:
    """Models and embeddings of one viewer.

    Attributes
    ----------
    models : ModelStore
        Loaded models, memoised by ``(name, device, checkpoint)``.
    cache : EmbeddingCache
        Embeddings by content key (:func:`cache_settings`: memory, and disk when enabled).
    image_chosen : napari.utils.events.EventEmitter
        Emitted with ``value=`` an image layer another widget opened for annotation (the image
        series); the Annotator switches to it.
    """

    models: ModelStore = field(default_factory=ModelStore)
    cache: EmbeddingCache = field(default_factory=_new_cache)
    image_chosen: EventEmitter = field(default_factory=lambda: EventEmitter(source=None, type_name="image_chosen"))

    @property
    def disk_budget_mb(self) -> int:
        """Budget of the cache's disk tier in MB; 0 when there is none."""
        if self.cache.disk_dir is None or not self.cache.disk_max_bytes:
            return 0
        return int(self.cache.disk_max_bytes) >> 20

    def set_disk_budget(self, megabytes: float) -> None:
        """Turn the disk tier on with ``megabytes`` (in :func:`disk_cache_dir`), or off with 0.

        The Annotator's *Disk cache* setting; it overrides ``NAPARI_SAM_MICRO_DISK_CACHE_MB``.
        Budgets below :data:`MIN_CACHE_MB` are raised to it.
        """
        mb = float(megabytes)
        if not math.isfinite(mb) or mb <= 0:
            self.cache.set_disk_tier(None, None)
            return
        mb = max(mb, float(MIN_CACHE_MB))
        self.cache.set_disk_tier(disk_cache_dir(), int(mb * (1 << 20)))

    @classmethod
    def for_viewer(cls, viewer) -> ViewerState:
        """The state of ``viewer`` (a ``napari.Viewer`` or ``ViewerModel``), created on first use."""
        with _LOCK:
            state = _STATES.get(viewer)
            if state is None:
                state = cls()
                _STATES[viewer] = state
            return state

    @classmethod
    def forget(cls, viewer) -> None:
        """Drop the state of ``viewer`` (frees its models and embeddings)."""
        with _LOCK:
            _STATES.pop(viewer, None)
