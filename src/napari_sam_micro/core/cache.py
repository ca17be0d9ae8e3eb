"""Embedding cache: content-addressed keys, an in-memory LRU bounded in bytes, an optional disk tier.

Keys (:func:`embedding_key`) hash the image content (:func:`content_digest`), the model, the
preprocessing and the package version, so a changed image, model, normalisation or plugin
release never returns a stale embedding.

Disk files are ``<key>.npz`` written atomically (temporary file in the same folder, then
``os.replace``) with JSON metadata (key, model name, sizes, package version, digest of the
features). A file that cannot be read, or whose metadata or digest does not match, is ignored
and deleted: a damaged cache never crashes the plugin, it only costs a re-encode.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .. import __version__
from .model_api import Embedding

__all__ = ["content_digest", "embedding_key", "EmbeddingCache"]

_SAFE_KEY = re.compile(r"^[0-9A-Za-z_.-]{1,128}$")


def content_digest(array) -> str:
    """Hex blake2b digest (32 characters) of an array's dtype, shape and bytes.

    Parameters
    ----------
    array : array-like
        Any numpy array (copied only if not C-contiguous).
    """
    arr = np.asarray(array)
    h = hashlib.blake2b(digest_size=16)
    h.update(arr.dtype.str.encode())
    h.update(repr(tuple(int(s) for s in arr.shape)).encode())
    arr = np.ascontiguousarray(arr)
    if arr.dtype.hasobject:
        raise TypeError("content_digest needs a numeric array, got dtype object")
    if arr.size:
        h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


def embedding_key(digest: str, model_name: str, preprocess_key: str, extra: str = "") -> str:
    """Cache key (hex, 32 characters, safe as a file name) of one embedding.

    Parameters
    ----------
    digest : str
        :func:`content_digest` of the raw image plane (before normalisation).
    model_name : str
        Registry name of the model (include the checkpoint identity in ``extra`` if it can vary).
    preprocess_key : str
        :meth:`PreprocessConfig.key <napari_sam_micro.core.preprocess.PreprocessConfig.key>`.
    extra : str
        Anything else the embedding depends on (crop window, checkpoint hash, device precision …).
    """
    text = json.dumps(["napari-sam-micro", __version__, digest, model_name, preprocess_key, extra])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _features_digest(features: np.ndarray) -> str:
    return content_digest(features)


class EmbeddingCache:
    """Thread-safe LRU cache of :class:`~napari_sam_micro.core.model_api.Embedding` by key.

    Parameters
    ----------
    max_bytes : int
        Memory budget for the features (``Embedding.nbytes``); least recently used entries are
        evicted first. An embedding larger than the budget is not kept in memory (it still goes
        to disk when there is a disk tier).
    disk_dir : path-like, optional
        Folder for the disk tier (created on first write). None: memory only.
    disk_max_bytes : int, optional
        Budget of the disk tier; oldest files (by modification time) are removed after a write.
    """

    def __init__(self, max_bytes: int = 1 << 30, disk_dir=None, disk_max_bytes: int | None = None):
        self.max_bytes = int(max_bytes)
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self.disk_max_bytes = disk_max_bytes
        self._items: OrderedDict[str, Embedding] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    # -- memory tier ---------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held in memory."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[str]:
        """In-memory keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._items:
                return True
        path = self._path(key)
        return path is not None and path.is_file()

    def _put_memory(self, key: str, emb: Embedding) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            if emb.nbytes > self.max_bytes:
                return
            self._items[key] = emb
            self._nbytes += emb.nbytes
            while self._nbytes > self.max_bytes and self._items:
                _, evicted = self._items.popitem(last=False)
                self._nbytes -= evicted.nbytes

    def put(self, key: str, embedding: Embedding) -> None:
        """Store ``embedding`` under ``key`` (memory, and disk when configured)."""
        if not isinstance(embedding, Embedding):
            raise TypeError(f"expected an Embedding, got {type(embedding).__name__}")
        self._put_memory(key, embedding)
        if self.disk_dir is not None:
            self._write_disk(key, embedding)

    def get(self, key: str, default=None) -> Embedding | None:
        """The embedding for ``key`` (marks it most recently used), from memory or disk; else ``default``."""
        with self._lock:
            emb = self._items.get(key)
            if emb is not None:
                self._items.move_to_end(key)
                return emb
        emb = self._read_disk(key)
        if emb is None:
            return default
        self._put_memory(key, emb)
        return emb

    def pop(self, key: str, default=None) -> Embedding | None:
        """Remove ``key`` from memory (not from disk) and return it."""
        with self._lock:
            emb = self._items.pop(key, None)
            if emb is not None:
                self._nbytes -= emb.nbytes
        return default if emb is None else emb

    def clear(self, disk: bool = False) -> None:
        """Empty the memory tier (and the disk tier's ``.npz`` files when ``disk``)."""
        with self._lock:
            self._items.clear()
            self._nbytes = 0
        if disk and self.disk_dir is not None and self.disk_dir.is_dir():
            for f in self.disk_dir.glob("*.npz"):
                _unlink(f)

    # -- disk tier -----------------------------------------------------------------------
    def _path(self, key: str) -> Path | None:
        if self.disk_dir is None:
            return None
        name = key if _SAFE_KEY.match(key) else hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        return self.disk_dir / f"{name}.npz"

    def _write_disk(self, key: str, emb: Embedding) -> None:
        path = self._path(key)
        assert path is not None
        meta = {
            "key": key,
            "model_name": emb.model_name,
            "original_size": [int(s) for s in emb.original_size],
            "input_size": [int(s) for s in emb.input_size],
            "version": __version__,
            "features_digest": _features_digest(emb.features),
        }
        try:
            extra = json.loads(json.dumps(emb.extra))
        except (TypeError, ValueError):
            extra = {}
        meta["extra"] = extra
        tmp_name = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, features=np.ascontiguousarray(emb.features), meta=np.array(json.dumps(meta)))
            os.replace(tmp_name, path)
            tmp_name = None
        except OSError:
            # A full or read-only disk only costs the disk tier.
            pass
        finally:
            if tmp_name is not None:
                _unlink(Path(tmp_name))
        if self.disk_max_bytes is not None:
            self._prune_disk(keep=path)

    def _prune_disk(self, keep: Path) -> None:
        try:
            files = [(f.stat().st_mtime, f.stat().st_size, f) for f in self.disk_dir.glob("*.npz")]
        except OSError:
            return
        total = sum(s for _, s, _ in files)
        for _, size, f in sorted(files):
            if total <= self.disk_max_bytes:
                break
            if f == keep:
                continue
            _unlink(f)
            total -= size

    def _read_disk(self, key: str) -> Embedding | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"][()]))
                features = np.array(data["features"])
            ok = (
                meta.get("key") == key
                and meta.get("version") == __version__
                and meta.get("features_digest") == _features_digest(features)
                and features.ndim == 4
            )
            if not ok:
                raise ValueError("stale or mismatching cache file")
            return Embedding(
                features=features,
                original_size=tuple(int(s) for s in meta["original_size"]),
                input_size=tuple(int(s) for s in meta["input_size"]),
                model_name=str(meta["model_name"]),
                extra=dict(meta.get("extra") or {}),
            )
        except Exception:  # noqa: BLE001 - any damage means: ignore and delete the file
            _unlink(path)
            return None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
