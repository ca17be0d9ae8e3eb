"""Faults injected into the embedding cache's disk tier: each costs a re-encode, never a crash or a wrong embedding."""

import errno
import json
import logging
import os
import stat
import time

import numpy as np
import pytest

from napari_sam_micro.core import cache as cache_mod
from napari_sam_micro.core.cache import EmbeddingCache, embedding_key, load_secret, secret_path
from napari_sam_micro.core.model_api import Embedding


def _emb(value=0.5, hw=(30, 40), inp=(6, 8)):
    return Embedding(np.full((1, 4, 8, 8), value, np.float32), hw, inp, "m", extra={"k": 1})


def _disk(tmp_path):
    return tmp_path / "cache" / "embeddings"


def _file(tmp_path, key):
    return _disk(tmp_path) / f"{key}.npz"


def _rewrite(path, features=None, **meta_changes):
    """Rewrite a cache file as someone without the secret would (meta fields and/or features)."""
    with np.load(path) as d:
        meta = json.loads(str(d["meta"][()]))
        feats = np.array(d["features"])
    meta.update(meta_changes)
    np.savez(path, features=feats if features is None else features, meta=np.array(json.dumps(meta)))


def _sign_and_write(tmp_path, key, features, **meta_changes):
    """A file signed with the real secret but with contradicting metadata (a bug, not an attacker)."""
    path = _file(tmp_path, key)
    with np.load(path) as d:
        meta = json.loads(str(d["meta"][()]))
    meta.update(meta_changes)
    meta["mac"] = cache_mod._mac(load_secret(secret_path(_disk(tmp_path))), key, meta, features)
    np.savez(path, features=features, meta=np.array(json.dumps(meta)))


@pytest.fixture
def good(tmp_path):
    """A disk tier holding one good embedding; returns (key, embedding)."""
    key = embedding_key("img", "model@abc", "pct=1-99", "crop=0,30,10,50")
    emb = _emb()
    EmbeddingCache(disk_dir=_disk(tmp_path)).put(key, emb)
    assert _file(tmp_path, key).is_file()
    return key, emb


def _fresh_get(tmp_path, key):
    return EmbeddingCache(disk_dir=_disk(tmp_path)).get(key)


def test_the_secret_is_private_created_once_and_beside_the_folder(tmp_path, good):
    path = secret_path(_disk(tmp_path))
    assert path.parent == _disk(tmp_path).parent and path.is_file()
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    assert len(before) == 32 and load_secret(path) == before
    if os.name == "posix":  # readable by others: replaced, and what it signed becomes a miss
        path.chmod(0o644)
        assert load_secret(path) != before and stat.S_IMODE(path.stat().st_mode) == 0o600
        key, _ = good
        assert _fresh_get(tmp_path, key) is None


def test_a_good_file_round_trips(tmp_path, good):
    key, emb = good
    got = _fresh_get(tmp_path, key)
    np.testing.assert_array_equal(got.features, emb.features)
    assert got.original_size == emb.original_size and got.input_size == emb.input_size


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",
        "bit_flip",
        "features_and_digest_rewritten",
        "original_size_rewritten",
        "not_a_zip",
        "empty",
    ],
)
def test_a_damaged_file_is_a_miss_and_is_removed(tmp_path, good, damage):
    key, emb = good
    path = _file(tmp_path, key)
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "bit_flip":
        at = raw.index(np.float32(0.5).tobytes())  # inside the features
        path.write_bytes(raw[:at] + b"\x00\x00\x80\x7f" + raw[at + 4:])
    elif damage == "features_and_digest_rewritten":  # the old unkeyed digest could be recomputed
        feats = emb.features + 1
        _rewrite(path, features=feats, features_digest=cache_mod.content_digest(feats))
    elif damage == "original_size_rewritten":  # crashed predict before
        _rewrite(path, original_size=[3000, 4000])
    elif damage == "not_a_zip":
        path.write_bytes(b"hello" * 100)
    else:
        path.write_bytes(b"")
    assert _fresh_get(tmp_path, key) is None
    assert not path.exists()


def test_a_foreign_file_is_a_miss_and_is_removed(tmp_path, good):
    """Written by another installation (another secret) into a shared folder."""
    key, _ = good
    other = EmbeddingCache(disk_dir=_disk(tmp_path), secret_file=tmp_path / "other.key")
    other.put(key, _emb(value=0.25))
    assert _fresh_get(tmp_path, key) is None
    assert not _file(tmp_path, key).exists()


@pytest.mark.parametrize(
    "change, features",
    [
        ({"request": {"digest": "img", "model_id": "other-model", "preprocess": "pct=1-99", "extra": "crop=0,30,10,50"}}, None),
        ({"request": {"digest": "img", "model_id": "model@abc", "preprocess": "pct=0-100", "extra": "crop=0,30,10,50"}}, None),
        ({"original_size": [30, 400]}, None),  # input_size (6, 8) cannot come from it
        ({"original_size": [60, 80], "input_size": [6, 8]}, None),  # consistent, but not the 30 x 40 window
        ({}, np.full((1, 4, 8, 8), np.nan, np.float32)),
        ({}, np.zeros((4, 8, 8), np.float32)),
    ],
)
def test_metadata_contradicting_the_request_or_itself_is_a_miss(tmp_path, good, change, features):
    key, emb = good
    _sign_and_write(tmp_path, key, emb.features if features is None else features, **change)
    assert _fresh_get(tmp_path, key) is None
    assert not _file(tmp_path, key).exists()


def test_disk_full_keeps_memory_and_the_previous_files(tmp_path, good, monkeypatch, caplog):
    key, emb = good
    cache = EmbeddingCache(disk_dir=_disk(tmp_path))
    cache.get(key)  # the secret is loaded; now the disk fills up

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod.np, "savez", full)
    new_key = embedding_key("img2", "model@abc", "pct=1-99")
    with caplog.at_level(logging.WARNING, logger=cache_mod.__name__):
        cache.put(new_key, _emb(value=0.75))
        cache.put(embedding_key("img3", "model@abc", "pct=1-99"), _emb())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "disk is full" in warnings[0] and str(_disk(tmp_path)) in warnings[0]
    assert cache.get(new_key) is not None  # memory still works
    assert not list(_disk(tmp_path).glob(".*.tmp"))  # no half-written file left
    monkeypatch.undo()
    np.testing.assert_array_equal(_fresh_get(tmp_path, key).features, emb.features)


def test_read_only_folder_warns_once_and_works_from_memory(tmp_path, good, monkeypatch, caplog):
    key, emb = good
    cache = EmbeddingCache(disk_dir=_disk(tmp_path))
    cache.get(key)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cache_mod.tempfile, "mkstemp", denied)
    new_key = embedding_key("img2", "model@abc", "pct=1-99")
    with caplog.at_level(logging.WARNING, logger=cache_mod.__name__):
        cache.put(new_key, _emb())
    assert any("cannot be written" in r.getMessage() and "Permission denied" in r.getMessage() for r in caplog.records)
    assert cache.get(new_key) is not None and not _file(tmp_path, new_key).exists()
    monkeypatch.undo()
    np.testing.assert_array_equal(_fresh_get(tmp_path, key).features, emb.features)


def test_no_secret_possible_means_memory_only(tmp_path, monkeypatch, caplog):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache_mod, "load_secret", denied)
    cache = EmbeddingCache(disk_dir=_disk(tmp_path))
    key = embedding_key("img", "m", "p")
    with caplog.at_level(logging.WARNING, logger=cache_mod.__name__):
        cache.put(key, _emb())
    assert cache.get(key) is not None
    assert not _disk(tmp_path).exists()
    assert any("Read-only file system" in r.getMessage() for r in caplog.records)


def test_an_interrupted_write_leaves_the_previous_version(tmp_path, good, monkeypatch):
    key, emb = good
    real_savez = np.savez

    def crash(fh, **arrays):  # half the file written, then the process is interrupted
        real_savez(fh, **arrays)
        fh.truncate(fh.tell() // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        EmbeddingCache(disk_dir=_disk(tmp_path)).put(key, _emb(value=0.9))
    monkeypatch.undo()
    assert not list(_disk(tmp_path).glob(".*.tmp"))
    np.testing.assert_array_equal(_fresh_get(tmp_path, key).features, emb.features)


def test_temporary_files_of_a_killed_process_are_pruned(tmp_path, good):
    stale = _disk(tmp_path) / ".abc.123.tmp"
    recent = _disk(tmp_path) / ".def.456.tmp"  # maybe another process writing right now
    stale.write_bytes(b"x" * 100)
    recent.write_bytes(b"x" * 100)
    old = time.time() - 2 * cache_mod._STALE_TMP_S
    os.utime(stale, (old, old))
    EmbeddingCache(disk_dir=_disk(tmp_path), disk_max_bytes=1 << 30).put(embedding_key("x", "m", "p"), _emb())
    assert not stale.exists() and recent.exists()


def test_keep_recent_holds_the_working_set_beyond_the_budget():
    one = _emb().nbytes
    strict = EmbeddingCache(max_bytes=one)
    soft = EmbeddingCache(max_bytes=one, keep_recent=3)
    for k in "abcd":
        strict.put(k, _emb())
        soft.put(k, _emb())
    assert strict.keys() == ["d"]
    assert soft.keys() == ["b", "c", "d"]
    tiny = EmbeddingCache(max_bytes=1, keep_recent=2)
    tiny.put("a", _emb())
    assert tiny.get("a") is not None  # larger than the whole budget, still kept
