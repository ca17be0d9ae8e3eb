"""Model checkpoint files: where they live, downloading them safely, checking their checksum.

Downloads are jobs (generators yielding :class:`~napari_sam_micro.core.progress.Progress` in
bytes and returning the path). A download is written to a temporary ``<name>.<random>.part`` file
beside its destination, its SHA-256 checked, and only then renamed over the destination
(``os.replace``, atomic), so a file under the final name is always complete. The ``.part`` file is
removed when the download fails or is cancelled (the generator is closed).

Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import threading
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import ModelUnavailableError
from ..core.progress import Progress, drain

if TYPE_CHECKING:  # pragma: no cover
    from .registry import ModelSpec

__all__ = [
    "CACHE_ENV",
    "cache_dir",
    "checkpoint_path",
    "sha256_job",
    "file_sha256",
    "verify_sha256",
    "download_job",
    "ensure_checkpoint_job",
    "READ_ERRORS",
    "damaged_file_error",
]

#: Environment variable that overrides the checkpoint folder.
CACHE_ENV = "NAPARI_SAM_MICRO_CACHE"

_HASH_CHUNK = 1 << 20

# Digests of files already hashed, keyed by (resolved path, size, mtime_ns): a memo of file
# contents (not of loaded models), so large checkpoints are hashed once per process, not per load.
_digest_memo: dict[tuple[str, int, int], str] = {}
_digest_lock = threading.Lock()


#: What reading a damaged weights file raises (``zipfile.BadZipFile`` and "Bad CRC-32" are
#: ``BadZipFile``; a truncated member is ``EOFError``; a damaged deflate stream ``zlib.error``;
#: ``OSError`` for an unreadable disk; ``ValueError`` for a damaged ``.npy`` header).
READ_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError)


def damaged_file_error(path, err: BaseException, *, expected_sha256: str | None = None, restore: str | None = None):
    """A :class:`ModelUnavailableError` saying that the weights file ``path`` is damaged and how to restore it.

    Parameters
    ----------
    path : path-like
        The file.
    err : BaseException
        What reading it raised (named in the message, for a bug report).
    expected_sha256 : str, optional
        Checksum of the good file (shipped or downloaded weights), quoted so a copy can be checked.
    restore : str, optional
        How to get a good copy; default: replace it with a good copy or choose another file.
    """
    path = Path(path).expanduser()
    detail = str(err).splitlines()[0] if str(err) else ""
    if "pickle" in detail:  # numpy's guess for bytes that are no .npy/.npz at all; never load those
        detail = "not an .npz archive of weights"
    what = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
    check = f" A good copy has the SHA-256 checksum {expected_sha256}." if expected_sha256 else ""
    how = restore or "Replace it with a good copy (e.g. export or download it again), or choose another weights file."
    return ModelUnavailableError(
        f"The weights file {path} is damaged (or is not a weights file) and cannot be read ({what}). {how}{check}"
    )


def cache_dir() -> Path:
    """Folder of downloaded checkpoints.

    ``$NAPARI_SAM_MICRO_CACHE`` when set, else ``<user cache dir>/napari-sam-micro/checkpoints``
    (``platformdirs.user_cache_dir``). The folder is not created here.
    """
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-sam-micro")) / "checkpoints"


def checkpoint_path(spec: ModelSpec) -> Path | None:
    """Where the downloaded checkpoint of ``spec`` lives in :func:`cache_dir` (None if it has no URL)."""
    if spec.url is None:
        return None
    name = spec.filename or spec.url.rstrip("/").rsplit("/", 1)[-1]
    return cache_dir() / name


def _memo_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), int(st.st_size), int(st.st_mtime_ns))


def sha256_job(path: str | os.PathLike, chunk: int = _HASH_CHUNK) -> Generator[Progress, None, str]:
    """Hex SHA-256 of a file, as a job yielding bytes hashed (memoised by path, size and mtime)."""
    path = Path(path)
    key = _memo_key(path)
    with _digest_lock:
        known = _digest_memo.get(key)
    if known is not None:
        return known
    total = key[1]
    digest = hashlib.sha256()
    done = 0
    message = f"Checking {path.name}"
    yield Progress(0, total, message)
    try:
        with path.open("rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
                done += len(block)
                yield Progress(done, total, message)
    except OSError as err:  # permissions, a failing disk: say which file
        raise ModelUnavailableError(
            f"The file {path} cannot be read ({err.strerror or err}). Check that it is there and readable, "
            "or choose another file."
        ) from err
    hexdigest = digest.hexdigest()
    with _digest_lock:
        _digest_memo[key] = hexdigest
    return hexdigest


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (memoised by path, size and modification time)."""
    return drain(sha256_job(path))


def verify_sha256(path: str | os.PathLike, expected: str | None) -> bool:
    """Whether the file at ``path`` has the SHA-256 ``expected`` (hex, any case).

    ``expected=None`` means "no checksum known" and returns True for an existing file. A missing
    file returns False. The digest is computed once per (path, size, mtime).
    """
    path = Path(path)
    if not path.is_file():
        return False
    if expected is None:
        return True
    return file_sha256(path) == expected.strip().lower()


def _remember(path: Path, hexdigest: str) -> None:
    with _digest_lock:
        _digest_memo[_memo_key(path)] = hexdigest


def _manual_hint(url: str, dest: Path) -> str:
    return (
        f"download {url} on a computer with internet access and put the file at {dest.resolve()} "
        "(exactly this path and name), or choose a local checkpoint file in the widget."
    )


def _create_part_file(dest: Path) -> tuple[int, Path]:
    """Create ``dest``'s folder and a temporary ``<name>.<random>.part`` file beside it: (fd, path)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    except OSError as err:
        raise ModelUnavailableError(
            f"Cannot write the model checkpoint to {dest.parent.resolve()} ({err.strerror or err}). "
            f"Set the environment variable {CACHE_ENV} to a writable folder, or choose a local "
            "checkpoint file in the widget."
        ) from err
    return fd, Path(tmp_name)


def _open_url(url: str, dest: Path, timeout: float):
    """The response of ``urlopen(url)``; a refused or unreachable server is a :class:`ModelUnavailableError`."""
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (fixed model URLs)
    except urllib.error.HTTPError as err:
        raise ModelUnavailableError(
            f"The server refused the download of {url} (HTTP {err.code} {err.reason}). You can "
            + _manual_hint(url, dest)
        ) from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise ModelUnavailableError(
            f"Could not download {url}: this computer seems to be offline or cannot reach the "
            f"server ({reason}). You can " + _manual_hint(url, dest)
        ) from err


def _read_block(response, chunk: int, url: str, dest: Path, done: int) -> bytes:
    """The next ``chunk`` bytes of ``response`` (empty at the end); a dropped connection is an error."""
    try:
        return response.read(chunk)
    except (OSError, http.client.HTTPException) as err:
        raise ModelUnavailableError(
            f"The download of {url} was interrupted after {done} bytes ({err!r}); the "
            "network connection seems to have dropped. Try again, or "
            + _manual_hint(url, dest)
        ) from err


def _write_block(out, block: bytes, dest: Path) -> None:
    """Write ``block`` to the ``.part`` file ``out``; a full or failing disk is a :class:`ModelUnavailableError`."""
    try:
        out.write(block)
    except OSError as err:
        raise ModelUnavailableError(
            f"Cannot write the model checkpoint to {dest.parent.resolve()} ({err.strerror or err}; "
            f"is the disk full?). Set the environment variable {CACHE_ENV} to another folder, "
            "or choose a local checkpoint file in the widget."
        ) from err


def _copy_response(
    response, out, digest, url: str, dest: Path, size: int | None, chunk: int
) -> Generator[Progress, None, tuple[int, int]]:
    """Copy ``response`` into ``out`` and ``digest``, a job yielding bytes done; returns (done, announced length)."""
    message = f"Downloading {dest.name}"
    done = 0
    length = response.headers.get("Content-Length") if response.headers else None
    announced = int(length) if length and length.isdigit() else 0
    total = int(size) if size else announced
    yield Progress(0, total, message)
    while True:
        block = _read_block(response, chunk, url, dest, done)
        if not block:
            break
        _write_block(out, block, dest)
        digest.update(block)
        done += len(block)
        yield Progress(done, total, message)
    return done, announced


def _check_download(
    url: str, dest: Path, done: int, announced: int, size: int | None, hexdigest: str, sha256: str | None
) -> None:
    """Raise :class:`ModelUnavailableError` for a download short of its length or size, or a wrong checksum."""
    if announced and done != announced:
        raise ModelUnavailableError(
            f"The download of {url} was interrupted after {done} of {announced} bytes; the network "
            "connection seems to have dropped. Try again, or " + _manual_hint(url, dest)
        )
    if size is not None and done != int(size):
        raise ModelUnavailableError(
            f"The download of {url} is incomplete ({done} of {size} bytes). Try again, or "
            + _manual_hint(url, dest)
        )
    if sha256 is not None and hexdigest != sha256.strip().lower():
        raise ModelUnavailableError(
            f"The file downloaded from {url} is corrupt (SHA-256 {hexdigest[:12]}… instead of "
            f"{sha256[:12]}…); it was discarded. Try again, or " + _manual_hint(url, dest)
        )


def _discard(tmp: Path) -> None:
    """Remove the ``.part`` file ``tmp`` if it is still there."""
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass


def download_job(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    size: int | None = None,
    chunk: int = 1 << 20,
    timeout: float = 30.0,
) -> Generator[Progress, None, Path]:
    """Download ``url`` to ``dest`` atomically, checking its checksum.

    Parameters
    ----------
    url : str
        ``http(s)://`` or ``file://`` URL.
    dest : path
        Final file path; its folder is created.
    sha256 : str, optional
        Expected hex SHA-256; the download is rejected (and nothing is left at ``dest``) on mismatch.
    size : int, optional
        Expected size in bytes (progress total when the server sends no length; checked at the end).
    chunk : int
        Bytes read per step (one :class:`Progress` per chunk).
    timeout : float
        Seconds to wait for the connection / for each read.

    Yields
    ------
    Progress
        ``done`` and ``total`` in bytes (``total`` 0 when unknown).

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    ModelUnavailableError
        Offline / server unreachable, HTTP error, truncated download, checksum mismatch or an
        unwritable folder; the message says where to put the file by hand.
    """
    dest = Path(dest)
    fd, tmp = _create_part_file(dest)
    finished = False
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            response = _open_url(url, dest, timeout)
            with response:
                done, announced = yield from _copy_response(response, out, digest, url, dest, size, chunk)
        hexdigest = digest.hexdigest()
        _check_download(url, dest, done, announced, size, hexdigest, sha256)
        os.replace(tmp, dest)
        finished = True
        _remember(dest, hexdigest)
    finally:
        if not finished:
            _discard(tmp)
    return dest


def ensure_checkpoint_job(
    spec: ModelSpec, checkpoint: str | os.PathLike | None = None
) -> Generator[Progress, None, Path | None]:
    """The checkpoint file for ``spec``, downloading it into :func:`cache_dir` when needed.

    Parameters
    ----------
    spec : ModelSpec
        Model whose checkpoint is wanted.
    checkpoint : path, optional
        A local checkpoint the user chose; it overrides the download and is not checksummed
        (it may be a fine-tuned model), but it must exist.

    Returns
    -------
    pathlib.Path or None
        The checkpoint path, or None when the model has no downloadable checkpoint (bundled
        weights or random weights; the builder knows where they are).

    Raises
    ------
    ModelUnavailableError
        The chosen file does not exist, or the download failed. A cached file with a wrong
        checksum is re-downloaded once (the old file stays until the new one is verified); when
        that fails the message says the file is corrupt and should be deleted or replaced.
    """
    if checkpoint is not None and str(checkpoint) != "":
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(
                f"The checkpoint file {path.resolve()} does not exist (or is not a file). Choose an "
                f"existing checkpoint file for '{spec.display_name}'."
            )
        return path
    dest = checkpoint_path(spec)
    if dest is None:
        return None
    if dest.is_file():
        if spec.size_bytes is not None and dest.stat().st_size != spec.size_bytes:
            good = False
        elif spec.sha256 is None:
            good = True
        else:
            good = (yield from sha256_job(dest)) == spec.sha256.strip().lower()
        if good:
            return dest
        try:
            return (yield from download_job(spec.url, dest, sha256=spec.sha256, size=spec.size_bytes))
        except ModelUnavailableError as err:
            raise ModelUnavailableError(
                f"The checkpoint file {dest.resolve()} of '{spec.display_name}' is corrupt (wrong size or "
                "checksum) and a fresh copy could not be downloaded. Delete it (it will be "
                f"re-downloaded when this computer is online) or replace it with a good copy. {err}"
            ) from err
    return (yield from download_job(spec.url, dest, sha256=spec.sha256, size=spec.size_bytes))
