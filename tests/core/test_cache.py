import threading

import numpy as np
import pytest

import napari_sam_micro
from napari_sam_micro.core import cache as cache_mod
from napari_sam_micro.core.cache import EmbeddingCache, content_digest, embedding_key
from napari_sam_micro.core.model_api import Embedding


def _emb(n_channels=4, side=8, value=0.0, name="tiny-test"):
    feats = np.full((1, n_channels, side, side), value, np.float32)
    return Embedding(feats, (30, 40), (6, 8), name)


def test_content_digest():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert content_digest(a) == content_digest(a.copy())
    assert content_digest(a) == content_digest(np.asfortranarray(a))
    assert content_digest(a) != content_digest(a.reshape(4, 3))  # shape matters
    assert content_digest(a) != content_digest(a.astype(np.int16))  # dtype matters
    b = a.copy()
    b[2, 3] += 1
    assert content_digest(a) != content_digest(b)
    assert content_digest(a[:, ::2]) == content_digest(np.ascontiguousarray(a[:, ::2]))
    assert len(content_digest(np.zeros((0, 3)))) == 32


def test_embedding_key(monkeypatch):
    k = embedding_key("d", "vit_b", "p")
    assert k == embedding_key("d", "vit_b", "p")
    assert len({k, embedding_key("e", "vit_b", "p"), embedding_key("d", "vit_l", "p"),
                embedding_key("d", "vit_b", "q"), embedding_key("d", "vit_b", "p", "crop")}) == 5
    monkeypatch.setattr(cache_mod, "__version__", "99.0")
    assert embedding_key("d", "vit_b", "p") != k


def test_lru_eviction_by_bytes():
    one = _emb().nbytes  # 1 * 4 * 8 * 8 * 4 bytes
    c = EmbeddingCache(max_bytes=3 * one)
    for k in "abc":
        c.put(k, _emb())
    assert len(c) == 3 and c.nbytes == 3 * one
    assert c.get("a") is not None  # a becomes most recent: order b, c, a
    c.put("d", _emb())
    assert "b" not in c and c.keys() == ["c", "a", "d"]
    c.put("big", _emb(n_channels=8))  # 2 units: evicts c and a
    assert c.keys() == ["d", "big"] and c.nbytes == 3 * one
    c.put("huge", _emb(n_channels=16))  # larger than the budget: not kept
    assert "huge" not in c and c.keys() == ["d", "big"]
    c.put("d", _emb(value=1.0))  # replace: bytes not double counted
    assert c.nbytes == 3 * one and c.get("d").features[0, 0, 0, 0] == 1.0
    assert c.pop("d") is not None and c.nbytes == 2 * one
    c.clear()
    assert len(c) == 0 and c.nbytes == 0 and c.get("big") is None


def test_put_rejects_non_embeddings():
    with pytest.raises(TypeError):
        EmbeddingCache().put("k", np.zeros(3))


def test_thread_safety():
    one = _emb().nbytes
    c = EmbeddingCache(max_bytes=10 * one)

    def work(i):
        for j in range(200):
            c.put(f"{i}-{j % 15}", _emb())
            c.get(f"{(i + 1) % 4}-{j % 15}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(c) == 10 and c.nbytes == 10 * one


def test_disk_round_trip(tmp_path):
    emb = Embedding(np.random.default_rng(0).random((1, 4, 8, 8)).astype(np.float16), (30, 40), (6, 8), "m",
                    extra={"window": [1, 2, 3, 4]})
    c = EmbeddingCache(max_bytes=1 << 20, disk_dir=tmp_path / "cache")
    key = embedding_key("digest", "m", "p")
    c.put(key, emb)
    assert (tmp_path / "cache" / f"{key}.npz").is_file()
    assert not list((tmp_path / "cache").glob("*.tmp"))
    fresh = EmbeddingCache(max_bytes=1 << 20, disk_dir=tmp_path / "cache")
    assert key in fresh and len(fresh) == 0
    got = fresh.get(key)
    assert got is not None and len(fresh) == 1
    np.testing.assert_array_equal(got.features, emb.features)
    assert got.features.dtype == np.float16
    assert got.original_size == (30, 40) and got.input_size == (6, 8) and got.model_name == "m"
    assert got.extra == {"window": [1, 2, 3, 4]}
    fresh.clear(disk=True)
    assert key not in fresh


def test_corrupted_disk_file_is_ignored_and_removed(tmp_path):
    tmp_path = tmp_path / "cache"  # the disk tier's secret goes beside the folder
    c = EmbeddingCache(disk_dir=tmp_path)
    key = embedding_key("x", "m", "p")
    c.put(key, _emb())
    path = tmp_path / f"{key}.npz"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    fresh = EmbeddingCache(disk_dir=tmp_path)
    assert fresh.get(key) is None
    assert not path.exists()


def test_mismatching_disk_file_is_ignored(tmp_path, monkeypatch):
    tmp_path = tmp_path / "cache"  # the disk tier's secret goes beside the folder
    c = EmbeddingCache(disk_dir=tmp_path)
    k1, k2 = embedding_key("a", "m", "p"), embedding_key("b", "m", "p")
    c.put(k1, _emb())
    # A file holding another key's embedding (e.g. renamed) is rejected.
    (tmp_path / f"{k1}.npz").rename(tmp_path / f"{k2}.npz")
    assert EmbeddingCache(disk_dir=tmp_path).get(k2) is None
    assert not (tmp_path / f"{k2}.npz").exists()
    # A file written by another package version is rejected.
    c.put(k1, _emb())
    monkeypatch.setattr(cache_mod, "__version__", napari_sam_micro.__version__ + ".post1")
    assert EmbeddingCache(disk_dir=tmp_path).get(k1) is None


def test_tampered_features_fail_digest(tmp_path):
    tmp_path = tmp_path / "cache"  # the disk tier's secret goes beside the folder
    c = EmbeddingCache(disk_dir=tmp_path)
    key = embedding_key("a", "m", "p")
    c.put(key, _emb())
    path = tmp_path / f"{key}.npz"
    with np.load(path) as d:
        meta = d["meta"]
        feats = d["features"] + 1
    np.savez(path, features=feats, meta=meta)
    assert EmbeddingCache(disk_dir=tmp_path).get(key) is None


def test_disk_budget_prunes_oldest(tmp_path):
    tmp_path = tmp_path / "cache"  # the disk tier's secret goes beside the folder
    one = _emb().nbytes
    c = EmbeddingCache(disk_dir=tmp_path, disk_max_bytes=int(2.5 * (one + 1000)))
    import os
    for i, k in enumerate(["a", "b", "c"]):
        c.put(k, _emb())
        os.utime(tmp_path / f"{k}.npz", (1000 + i, 1000 + i))
    c.put("d", _emb())
    names = sorted(p.stem for p in tmp_path.glob("*.npz"))
    assert "a" not in names and "d" in names
