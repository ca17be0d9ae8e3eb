"""The viewer's embedding cache settings (issue 12.1) and its disk tier wired into the plugin (issue 11.6)."""

import logging
from pathlib import Path

import numpy as np
import pytest

from napari_sam_micro._napari import state as state_mod
from napari_sam_micro._napari.state import (
    DEFAULT_CACHE_BYTES,
    KEEP_RECENT,
    MIN_CACHE_MB,
    ViewerState,
    cache_settings,
    embedding_model_id,
)
from napari_sam_micro.core.cache import EmbeddingCache
from napari_sam_micro.core.preprocess import PreprocessConfig
from napari_sam_micro.core.progress import drain
from napari_sam_micro.core.prompts import Prompts
from napari_sam_micro.models.registry import get_spec, available_models
from napari_sam_micro.session import AnnotationSession


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in (state_mod.CACHE_ENV, state_mod.DISK_CACHE_ENV, state_mod.DISK_DIR_ENV):
        monkeypatch.delenv(name, raising=False)


def test_default_is_one_gib_in_memory_and_no_disk():
    kwargs, warnings = cache_settings()
    assert kwargs["max_bytes"] == DEFAULT_CACHE_BYTES and "disk_dir" not in kwargs and not warnings
    assert ViewerState().cache.disk_dir is None


@pytest.mark.parametrize("value", ["6", "0", "0.5", "1e-9"])
def test_a_too_small_memory_budget_is_raised_to_the_minimum(monkeypatch, caplog, value):
    monkeypatch.setenv(state_mod.CACHE_ENV, value)
    with caplog.at_level(logging.WARNING, logger=state_mod.__name__):
        cache = ViewerState().cache
    assert cache.max_bytes == MIN_CACHE_MB << 20 and cache.keep_recent == KEEP_RECENT
    assert any(f"using {MIN_CACHE_MB} MB" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-5", "lots", "1GB"])
def test_a_nonsense_memory_budget_is_refused_with_a_message(monkeypatch, caplog, value):
    monkeypatch.setenv(state_mod.CACHE_ENV, value)
    with caplog.at_level(logging.WARNING, logger=state_mod.__name__):
        cache = ViewerState().cache
    assert cache.max_bytes == DEFAULT_CACHE_BYTES
    assert any("is not a size in megabytes" in r.getMessage() and repr(value) in r.getMessage() for r in caplog.records)


def test_a_valid_memory_budget_is_used(monkeypatch):
    monkeypatch.setenv(state_mod.CACHE_ENV, "300")
    kwargs, warnings = cache_settings()
    assert kwargs["max_bytes"] == 300 << 20 and not warnings


def test_disk_tier_settings(monkeypatch, tmp_path):
    monkeypatch.setenv(state_mod.DISK_CACHE_ENV, "0")
    assert "disk_dir" not in cache_settings()[0]
    monkeypatch.setenv(state_mod.DISK_CACHE_ENV, "junk")
    kwargs, warnings = cache_settings()
    assert "disk_dir" not in kwargs and len(warnings) == 1
    monkeypatch.setenv(state_mod.DISK_CACHE_ENV, "10")  # too small: the minimum
    kwargs, warnings = cache_settings()
    assert kwargs["disk_max_bytes"] == MIN_CACHE_MB << 20 and len(warnings) == 1
    # default folder: the user cache dir
    from platformdirs import user_cache_dir

    assert kwargs["disk_dir"] == Path(user_cache_dir("napari-sam-micro")) / "embeddings"
    monkeypatch.setenv(state_mod.DISK_DIR_ENV, str(tmp_path / "emb"))
    monkeypatch.setenv(state_mod.DISK_CACHE_ENV, "500")
    cache = ViewerState().cache
    assert cache.disk_dir == tmp_path / "emb" and cache.disk_max_bytes == 500 << 20


def test_a_prediction_with_many_windows_finishes_in_a_tiny_cache(disk_model):
    """The windows of one prediction stay cached together (no endless re-encoding)."""
    plane = np.zeros((300, 400), np.uint8)
    boxes = [[20 * k, 10, 20 * k + 15, 25] for k in range(20)]  # 20 boxes: 20 windows
    strict = AnnotationSession(disk_model(radius=5), EmbeddingCache(max_bytes=1), crop_to_prompt=True)
    strict.set_image(plane)
    with pytest.raises(RuntimeError, match="too small"):  # what the keep-recent rule prevents
        drain(strict.predict_job(Prompts(boxes_xyxy=boxes)))
    model = disk_model(radius=5)
    s = AnnotationSession(model, EmbeddingCache(max_bytes=1, keep_recent=KEEP_RECENT), crop_to_prompt=True)
    s.set_image(plane)
    pred = drain(s.predict_job(Prompts(boxes_xyxy=boxes)))
    assert len(pred.objects) == 20
    assert len(model.encoded_shapes) == len({o.window for o in pred.objects})  # each window once


def _session(model, cache, config=None):
    options = AnnotationSession.options_for(get_spec("tiny-test"))
    return AnnotationSession(model, cache, config, model_id=embedding_model_id("tiny-test"), **options)


def test_reopening_an_image_with_the_disk_tier_encodes_nothing(monkeypatch, tmp_path, tiny_model, call_recorder):
    monkeypatch.setenv(state_mod.DISK_CACHE_ENV, "100")
    monkeypatch.setenv(state_mod.DISK_DIR_ENV, str(tmp_path / "embeddings"))
    plane = np.random.default_rng(0).integers(0, 255, (96, 128), dtype=np.uint8)
    prompts = Prompts(boxes_xyxy=[[20, 30, 60, 70]])
    masks, encoded = [], []
    for _ in range(2):  # two viewers: separate memory caches, one disk folder
        model = call_recorder(tiny_model)
        s = _session(model, ViewerState().cache)
        s.set_image(plane)
        masks.append(drain(s.predict_job(prompts)).objects[0].mask)
        encoded.append(len(model.encoded_shapes))
    assert encoded[0] >= 1 and encoded[1] == 0
    np.testing.assert_array_equal(masks[0], masks[1])
    # another normalisation is another embedding
    model = call_recorder(tiny_model)
    s = _session(model, ViewerState().cache, PreprocessConfig(percentiles=(0.0, 100.0)))
    s.set_image(plane)
    drain(s.predict_job(prompts))
    assert len(model.encoded_shapes) >= 1


def test_a_damaged_disk_file_is_re_encoded_and_replaced(monkeypatch, tmp_path, tiny_model, call_recorder):
    folder = tmp_path / "embeddings"
    monkeypatch.setenv(state_mod.DISK_CACHE_ENV, "100")
    monkeypatch.setenv(state_mod.DISK_DIR_ENV, str(folder))
    plane = np.random.default_rng(1).integers(0, 255, (96, 128), dtype=np.uint8)
    prompts = Prompts(boxes_xyxy=[[20, 30, 60, 70]])
    s = _session(call_recorder(tiny_model), ViewerState().cache)
    s.set_image(plane)
    first = drain(s.predict_job(prompts)).objects[0].mask
    files = sorted(folder.glob("*.npz"))
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[:200])
    model = call_recorder(tiny_model)
    s = _session(model, ViewerState().cache)
    s.set_image(plane)
    np.testing.assert_array_equal(drain(s.predict_job(prompts)).objects[0].mask, first)
    assert len(model.encoded_shapes) == len(files)
    assert all(f.stat().st_size > 200 for f in folder.glob("*.npz"))


def test_the_embedding_identity_carries_the_weights_and_the_checkpoint_file(tmp_path):
    if "micro-tiny" in available_models():
        from napari_sam_micro.models import micro

        if micro.tunes_image_encoder():
            assert micro.WEIGHTS_SHA256[:16] in embedding_model_id("micro-tiny")
    assert embedding_model_id("tiny-test") == get_spec("tiny-test").embedding_id
    ckpt = tmp_path / "mine.pth"
    ckpt.write_bytes(b"a")
    before = embedding_model_id("vit_b", ckpt)
    assert str(ckpt.resolve()) in before
    ckpt.write_bytes(b"ab")  # retrained into the same file: other embeddings
    assert embedding_model_id("vit_b", ckpt) != before



def test_the_annotator_opens_with_a_nonsense_budget(qtbot, monkeypatch, caplog):
    """``inf`` crashed the widget on opening."""
    from napari.components import ViewerModel

    from napari_sam_micro._qt.annotator import AnnotatorWidget

    monkeypatch.setenv(state_mod.CACHE_ENV, "inf")
    with caplog.at_level(logging.WARNING, logger=state_mod.__name__):
        widget = AnnotatorWidget(ViewerModel(), model="tiny-test")
    qtbot.addWidget(widget)
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=120_000)
    assert widget.state.cache.max_bytes == DEFAULT_CACHE_BYTES
    assert any("'inf'" in r.getMessage() for r in caplog.records)
