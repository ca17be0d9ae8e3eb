"""Per-viewer state shared by the plugin's widgets: loaded models and the embedding cache.

There is no process-wide singleton: each viewer gets its own :class:`ViewerState`, kept in a
:class:`weakref.WeakKeyDictionary` so that it goes away with the viewer. The annotator and the
everything-mode widget of one viewer share it (a model loaded or an image encoded by one is
reused by the other).
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field

from ..core.cache import EmbeddingCache
from ..models.registry import ModelStore

__all__ = ["ViewerState", "DEFAULT_CACHE_BYTES"]

#: Memory budget of a viewer's embedding cache (bytes); ``NAPARI_SAM_MICRO_CACHE_MB`` overrides it.
DEFAULT_CACHE_BYTES = 1 << 30

_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _cache_bytes() -> int:
    value = os.environ.get("NAPARI_SAM_MICRO_CACHE_MB")
    try:
        return int(float(value) * (1 << 20)) if value else DEFAULT_CACHE_BYTES
    except ValueError:
        return DEFAULT_CACHE_BYTES


@dataclass
class ViewerState:
    """Models and embeddings of one viewer.

    Attributes
    ----------
    models : ModelStore
        Loaded models, memoised by ``(name, device, checkpoint)``.
    cache : EmbeddingCache
        Embeddings by content key (memory only; budget :data:`DEFAULT_CACHE_BYTES`).
    """

    models: ModelStore = field(default_factory=ModelStore)
    cache: EmbeddingCache = field(default_factory=lambda: EmbeddingCache(max_bytes=_cache_bytes()))

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
