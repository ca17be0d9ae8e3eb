"""Embedding cache: content-addressed keys, an in-memory LRU bounded in bytes, an optional disk tier.

Keys (:func:`embedding_key`) hash the image content (:func:`content_digest`), the model, the
preprocessing and the package version, so a changed image, model, normalisation or plugin
release never returns a stale embedding. A key is an :class:`EmbeddingKey` (a ``str``) that
also remembers what it was made from, so the disk tier can check a file against the request.

Disk files are ``<key>.npz`` written atomically (temporary file in the same folder, then
``os.replace``) with JSON metadata (key, what the key was made from, model name, sizes, package
version) and an HMAC-SHA256 of key, metadata and features under a per-install secret
(:func:`load_secret`: 32 random bytes in ``<disk folder>.key`` beside the folder, mode 0600,
created on first use). A file that cannot be read, whose MAC does not verify (damaged, written
by another install or edited), whose metadata contradict the request or themselves (sizes that
do not fit each other or the crop window, non-finite features) is a miss and is deleted: a
damaged or foreign cache never crashes the plugin, it only costs a re-encode. A disk tier that
cannot be written (full, read-only, no secret) logs one warning and the cache works from memory.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .. import __version__
from .model_api import Embedding

__all__ = ["content_digest", "embedding_key", "EmbeddingKey", "EmbeddingCache", "load_secret", "secret_path"]

_log = logging.getLogger(__name__)

_SAFE_KEY = re.compile(r"^[0-9A-Za-z_.-]{1,128}$")
_CROP = re.compile(r"^crop=(\d+),(\d+),(\d+),(\d+)$")
#: Layout of the disk files' metadata (older layouts are misses).
DISK_FORMAT = 2
_SECRET_BYTES = 32
#: Temporary files of interrupted writes older than this (seconds) are removed when pruning.
_STALE_TMP_S = 3600.0


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


class EmbeddingKey(str):
    """A cache key (``str``) that remembers what it was made from (``request``: a JSON-able dict)."""

    request: dict

    def __new__(cls, value: str, request: dict):
        obj = super().__new__(cls, value)
        obj.request = dict(request)
        return obj


def embedding_key(digest: str, model_name: str, preprocess_key: str, extra: str = "") -> EmbeddingKey:
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
        Anything else the embedding depends on (crop window ``crop=y0,y1,x0,x1``, checkpoint hash …).

    Returns
    -------
    EmbeddingKey
        Equal to (and usable as) the plain hex string.
    """
    text = json.dumps(["napari-sam-micro", __version__, digest, model_name, preprocess_key, extra])
    value = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    request = {"digest": str(digest), "model_id": str(model_name), "preprocess": str(preprocess_key), "extra": str(extra)}
    return EmbeddingKey(value, request)


def secret_path(disk_dir) -> Path:
    """Where the per-install secret of a disk tier lives: ``<disk_dir>.key`` in the folder's parent."""
    disk_dir = Path(disk_dir)
    return disk_dir.parent / f"{disk_dir.name}.key"


def load_secret(path) -> bytes:
    """The secret in ``path``, created (32 random bytes, mode 0600, atomically) when missing or unusable.

    A file of the wrong size, or readable by other users (POSIX), is replaced by a new secret
    (every file signed with the old one then becomes a miss).

    Raises
    ------
    OSError
        The secret can neither be read nor created (read-only folder …).
    """
    path = Path(path)
    try:
        st = path.stat()
        private = os.name != "posix" or not (st.st_mode & 0o077)
        if private and st.st_size == _SECRET_BYTES:
            data = path.read_bytes()
            if len(data) == _SECRET_BYTES:
                return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(_SECRET_BYTES)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        _unlink(Path(tmp))
        raise
    return data


def _mac(secret: bytes, key: str, meta: dict, features: np.ndarray) -> str:
    """HMAC-SHA256 (hex) of the key, the metadata (without ``mac``) and the features' dtype, shape and bytes."""
    h = hmac.new(secret, digestmod=hashlib.sha256)
    body = {k: v for k, v in meta.items() if k != "mac"}
    for part in (str(key), json.dumps(body, sort_keys=True), features.dtype.str, repr(features.shape)):
        h.update(part.encode())
        h.update(b"\0")
    h.update(np.ascontiguousarray(features).reshape(-1).view(np.uint8))
    return h.hexdigest()


def _sizes_consistent(original, inp) -> bool:
    """Whether ``input_size`` is ``original_size`` resized so its long side is ``max(input_size)`` (±1 px)."""
    if len(original) != 2 or len(inp) != 2 or min(original) < 1 or min(inp) < 1:
        return False
    scale = max(inp) / max(original)
    return all(abs(i - o * scale) <= 1.0 for o, i in zip(original, inp))


def _check_file(key: str, meta: dict, features: np.ndarray, secret: bytes) -> str | None:
    """Why a disk file does not serve ``key`` (None: it does)."""
    if meta.get("format") != DISK_FORMAT or meta.get("key") != str(key) or meta.get("version") != __version__:
        return "written for another key, layout or plugin version"
    if not hmac.compare_digest(str(meta.get("mac", "")), _mac(secret, key, meta, features)):
        return "signature does not verify (damaged, edited, or written by another installation)"
    request = getattr(key, "request", None)
    if request is not None and meta.get("request") != request:
        return "made for another image, model or normalisation"
    if features.ndim != 4 or features.shape[0] != 1 or not np.issubdtype(features.dtype, np.floating):
        return f"features of shape {features.shape} / dtype {features.dtype}"
    original, inp = [int(s) for s in meta["original_size"]], [int(s) for s in meta["input_size"]]
    if not _sizes_consistent(original, inp):
        return f"sizes {original} and {inp} do not fit each other"
    crop = _CROP.match(str((request or meta.get("request") or {}).get("extra", "")))
    if crop is not None:
        y0, y1, x0, x1 = (int(v) for v in crop.groups())
        if original != [y1 - y0, x1 - x0]:
            return f"size {original} does not fit its window {crop.group(0)}"
    if not np.isfinite(features).all():
        return "features are not finite"
    return None


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
    keep_recent : int
        The ``keep_recent`` most recently used embeddings are never evicted for size, so the
        windows one prediction needs stay together even in a small budget (the budget is then
        exceeded by at most that many embeddings). 0: the budget is strict.
    secret_file : path-like, optional
        The disk tier's HMAC secret; default :func:`secret_path` of ``disk_dir``.
    """

    def __init__(
        self,
        max_bytes: int = 1 << 30,
        disk_dir=None,
        disk_max_bytes: int | None = None,
        keep_recent: int = 0,
        secret_file=None,
    ):
        self.max_bytes = int(max_bytes)
        self.keep_recent = max(0, int(keep_recent))
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self.disk_max_bytes = disk_max_bytes
        self.secret_file = Path(secret_file) if secret_file is not None else (
            secret_path(self.disk_dir) if self.disk_dir is not None else None
        )
        self._secret: bytes | None = None
        self._secret_lock = threading.Lock()
        self._warned: set[str] = set()
        self._items: OrderedDict[str, Embedding] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def set_disk_tier(self, disk_dir=None, disk_max_bytes: int | None = None) -> None:
        """Turn the disk tier on (``disk_dir``, budget ``disk_max_bytes``) or off (``disk_dir`` None).

        What is in memory stays; files already in ``disk_dir`` are used again (their signatures
        are checked with the folder's secret, as at construction).
        """
        with self._secret_lock:
            self.disk_dir = Path(disk_dir) if disk_dir is not None else None
            self.disk_max_bytes = disk_max_bytes
            self.secret_file = secret_path(self.disk_dir) if self.disk_dir is not None else None
            self._secret = None

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
            if emb.nbytes > self.max_bytes and not self.keep_recent:
                return
            self._items[key] = emb
            self._nbytes += emb.nbytes
            while self._nbytes > self.max_bytes and len(self._items) > self.keep_recent:
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

    def _warn_once(self, what: str, err: OSError) -> None:
        """Log once per kind of failure: the disk tier is skipped, the memory tier still works."""
        reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or repr(err))
        if what not in self._warned:
            self._warned.add(what)
            _log.warning(
                "The embedding disk cache in %s cannot be %s (%s); embeddings are kept in memory only "
                "and images will be encoded again next time.", self.disk_dir, what, reason,
            )

    def _get_secret(self) -> bytes | None:
        with self._secret_lock:  # two workers must not create two secrets
            if self._secret is None:
                try:
                    self._secret = load_secret(self.secret_file)
                except OSError as err:
                    self._warn_once("used (its key file cannot be created)", err)
            return self._secret

    def _write_disk(self, key: str, emb: Embedding) -> None:
        path = self._path(key)
        secret = self._get_secret()
        if path is None or secret is None:
            return
        features = np.ascontiguousarray(emb.features)
        try:
            extra = json.loads(json.dumps(emb.extra))
        except (TypeError, ValueError):
            extra = {}
        meta = {
            "format": DISK_FORMAT,
            "key": str(key),
            "request": getattr(key, "request", None),
            "model_name": emb.model_name,
            "original_size": [int(s) for s in emb.original_size],
            "input_size": [int(s) for s in emb.input_size],
            "version": __version__,
            "extra": extra,
        }
        meta["mac"] = _mac(secret, key, meta, features)
        tmp_name = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, features=features, meta=np.array(json.dumps(meta)))
            os.replace(tmp_name, path)
            tmp_name = None
        except OSError as err:
            self._warn_once("written", err)
        finally:
            if tmp_name is not None:
                _unlink(Path(tmp_name))
        if self.disk_max_bytes is not None:
            self._prune_disk(keep=path)

    def _prune_disk(self, keep: Path) -> None:
        """Remove the oldest files beyond the budget, and temporary files of interrupted writes."""
        now = time.time()
        try:
            for tmp in self.disk_dir.glob(".*.tmp"):
                if now - tmp.stat().st_mtime > _STALE_TMP_S:
                    _unlink(tmp)
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
        secret = self._get_secret()
        if secret is None:
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"][()]))
                features = np.array(data["features"])
            why = _check_file(key, meta, features, secret)
            if why is not None:
                raise ValueError(why)
            return Embedding(
                features=features,
                original_size=tuple(int(s) for s in meta["original_size"]),
                input_size=tuple(int(s) for s in meta["input_size"]),
                model_name=str(meta["model_name"]),
                extra=dict(meta.get("extra") or {}),
            )
        except Exception as err:  # noqa: BLE001 - any damage means: ignore and delete the file
            _log.info("Ignoring and removing the cached embedding %s: %s", path, err)
            _unlink(path)
            return None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
