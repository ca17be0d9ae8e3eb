"""Checkpoint downloads: atomic, checksummed, cancellable, with offline messages that help."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from napari_sam_micro.core.errors import ModelUnavailableError
from napari_sam_micro.core.progress import Progress, drain
from napari_sam_micro.models import checkpoints
from napari_sam_micro.models.checkpoints import (
    cache_dir,
    checkpoint_path,
    download_job,
    ensure_checkpoint_job,
    file_sha256,
    verify_sha256,
)
from napari_sam_micro.models.registry import ModelSpec


def _payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _spec(url, data=None, **kw):
    return ModelSpec(
        name="fake",
        display_name="Fake model",
        family="tiny",
        image_size=256,
        offline=False,
        crop_to_prompt=True,
        url=url,
        sha256=None if data is None else _sha(data),
        size_bytes=None if data is None else len(data),
        builder=lambda checkpoint, device: None,
        **kw,
    )


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_MICRO_CACHE", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("NAPARI_SAM_MICRO_CACHE")
    default = cache_dir()
    assert default.name == "checkpoints" and "napari-sam-micro" in str(default)


def test_checkpoint_path_uses_filename_or_url(cache):
    assert checkpoint_path(_spec("http://h/a/b/model_123.pth")) == cache / "model_123.pth"
    assert checkpoint_path(_spec("http://h/a/b/x.pth", filename="y.pth")) == cache / "y.pth"
    assert checkpoint_path(_spec(None)) is None


def test_download_good_file_reports_bytes(http_files, tmp_path):
    data = _payload(300_000)
    (http_files.root / "m.pth").write_bytes(data)
    dest = tmp_path / "out" / "m.pth"
    reports: list[Progress] = []
    result = drain(download_job(http_files.url("m.pth"), dest, sha256=_sha(data), chunk=65536), reports.append)
    assert result == dest
    assert dest.read_bytes() == data
    assert [p.done for p in reports][-1] == len(data)
    assert all(p.total == len(data) for p in reports)
    assert [p.done for p in reports] == sorted(p.done for p in reports)
    assert len(reports) >= 5  # one per chunk
    assert sorted(os.listdir(dest.parent)) == ["m.pth"]
    assert verify_sha256(dest, _sha(data))


def test_wrong_checksum_leaves_nothing(http_files, tmp_path):
    (http_files.root / "m.pth").write_bytes(_payload(10_000))
    dest = tmp_path / "out" / "m.pth"
    with pytest.raises(ModelUnavailableError, match="corrupt"):
        drain(download_job(http_files.url("m.pth"), dest, sha256="0" * 64))
    assert os.listdir(dest.parent) == []


def test_truncated_download_is_rejected(http_files, tmp_path):
    data = _payload(5000)
    (http_files.root / "m.pth").write_bytes(data)
    dest = tmp_path / "m.pth"
    with pytest.raises(ModelUnavailableError, match="incomplete"):
        drain(download_job(http_files.url("m.pth"), dest, size=len(data) + 10))
    assert not dest.exists() and list(tmp_path.glob("*.part")) == []


def test_offline_message_says_where_to_put_the_file(refused_url, tmp_path):
    dest = tmp_path / "sub" / "model.pth"
    with pytest.raises(ModelUnavailableError) as info:
        drain(download_job(refused_url, dest))
    message = str(info.value)
    assert "offline" in message
    assert str(dest.resolve()) in message
    assert "local checkpoint" in message
    assert os.listdir(dest.parent) == []


def test_http_error_is_reported(http_files, tmp_path):
    with pytest.raises(ModelUnavailableError, match="HTTP 404"):
        drain(download_job(http_files.url("missing.pth"), tmp_path / "out" / "missing.pth"))
    assert list((tmp_path / "out").iterdir()) == []


def test_cancel_mid_download_leaves_no_file(http_files, tmp_path):
    data = _payload(1 << 20)
    (http_files.root / "big.pth").write_bytes(data)
    dest = tmp_path / "out" / "big.pth"
    job = download_job(http_files.url("big.pth"), dest, sha256=_sha(data), chunk=32768)
    for _ in range(4):
        report = next(job)
    assert 0 < report.done < len(data)
    assert len(list(dest.parent.glob("*.part"))) == 1  # the download really was in progress
    job.close()  # what cancelling a worker does
    assert os.listdir(dest.parent) == []


def test_sha256_is_memoised_by_path_size_mtime(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    calls = []
    real = checkpoints.hashlib.sha256
    abc, abcd = _sha(b"abc"), _sha(b"abcd")

    def counting(*a):
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(checkpoints.hashlib, "sha256", counting)
    assert file_sha256(path) == abc
    assert verify_sha256(path, abc.upper())
    assert len(calls) == 1
    path.write_bytes(b"abcd")  # new size -> hashed again
    assert not verify_sha256(path, abc)
    assert verify_sha256(path, abcd)
    assert len(calls) == 2
    assert not verify_sha256(tmp_path / "missing", None)
    assert verify_sha256(path, None)


def test_ensure_downloads_into_cache(http_files, cache):
    data = _payload(70_000)
    (http_files.root / "w.pth").write_bytes(data)
    spec = _spec(http_files.url("w.pth"), data)
    reports = []
    path = drain(ensure_checkpoint_job(spec), reports.append)
    assert path == cache / "w.pth" and path.read_bytes() == data
    assert reports
    # second call: already there, verified (memoised), no download
    again = []
    assert drain(ensure_checkpoint_job(spec), again.append) == path
    assert not any("Downloading" in p.message for p in again)


def test_ensure_user_checkpoint_overrides(tmp_path, refused_url, cache):
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"weights")
    assert drain(ensure_checkpoint_job(_spec(refused_url, b"other"), mine)) == mine
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        drain(ensure_checkpoint_job(_spec(refused_url), tmp_path / "nope.pth"))


def test_ensure_without_url_is_none(cache):
    assert drain(ensure_checkpoint_job(_spec(None))) is None


def test_corrupt_cached_file_is_redownloaded(http_files, cache):
    data = _payload(50_000, seed=3)
    (http_files.root / "w.pth").write_bytes(data)
    cache.mkdir()
    (cache / "w.pth").write_bytes(_payload(50_000, seed=4))  # same size, wrong content
    path = drain(ensure_checkpoint_job(_spec(http_files.url("w.pth"), data)))
    assert path.read_bytes() == data
    assert sorted(os.listdir(cache)) == ["w.pth"]


def test_corrupt_cached_file_offline_keeps_it_and_says_corrupt(refused_url, cache):
    cache.mkdir()
    bad = _payload(1000)
    (cache / "model.pth").write_bytes(bad)
    with pytest.raises(ModelUnavailableError) as info:
        drain(ensure_checkpoint_job(_spec(refused_url, _payload(1000, seed=9))))
    message = str(info.value)
    assert "corrupt" in message and "Delete it" in message and str((cache / "model.pth").resolve()) in message
    assert (cache / "model.pth").read_bytes() == bad
    assert sorted(os.listdir(cache)) == ["model.pth"]


def test_missing_file_offline(refused_url, cache):
    with pytest.raises(ModelUnavailableError, match="offline"):
        drain(ensure_checkpoint_job(_spec(refused_url, b"x")))
    assert not Path(cache / "model.pth").exists()


def test_connection_dropped_mid_download(tmp_path):
    """A server that promises more bytes than it sends: an 'interrupted' error and no file left."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def serve_once():
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n" + b"x" * 1000)

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    dest = tmp_path / "out" / "m.pth"
    try:
        with pytest.raises(ModelUnavailableError, match="interrupted") as info:
            drain(download_job(f"http://127.0.0.1:{port}/m.pth", dest, chunk=4096))
    finally:
        thread.join(5)
        server.close()
    assert str(dest.resolve()) in str(info.value)
    assert os.listdir(dest.parent) == []
