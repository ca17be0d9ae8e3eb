"""AnnotatorWidget with the tiny random-weight model: workers, cancel, stale results, commit/undo, keys, errors.

Every wait has a timeout. The tiny model's masks are meaningless, so the tests check plumbing
(where masks go, ids, undo, notifications), not segmentation quality (tests/viewer does that).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytest.importorskip("segment_anything")

from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks  # noqa: E402
from napari.utils.key_bindings import coerce_keybinding  # noqa: E402

import napari_sam_micro._qt.annotator as annotator_module  # noqa: E402
import napari_sam_micro._qt.workers as workers_module  # noqa: E402
from napari_sam_micro._napari.state import ViewerState  # noqa: E402
from napari_sam_micro._qt.annotator import KEY_CLEAR, KEY_COMMIT, KEY_NEGATIVE, AnnotatorWidget  # noqa: E402

WAIT_MS = 120_000  # the CI machine can be slow; every wait is bounded


def _image(seed=0, shape=(96, 128)):
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 10, shape)
    img[30:60, 40:80] += 120
    return img.astype(np.uint16)


@pytest.fixture
def notes(monkeypatch):
    """Record napari notifications shown by the plugin (kind, message)."""
    shown: list[tuple[str, str]] = []
    import napari.utils.notifications as nn

    for kind in ("show_info", "show_warning", "show_error"):
        recorder = (lambda k: (lambda msg: shown.append((k, str(msg)))))(kind.split("_")[1])
        monkeypatch.setattr(nn, kind, recorder)
        if hasattr(annotator_module, kind):
            monkeypatch.setattr(annotator_module, kind, recorder)
    return shown


@pytest.fixture
def viewer(request):
    """napari's ``make_napari_viewer`` under a display (xvfb-run); a headless ViewerModel offscreen.

    The offscreen Qt platform has no OpenGL, so a real ``napari.Viewer`` cannot be built there;
    the widget only needs the viewer model (layers, dims, keymap).
    """
    if os.environ.get("DISPLAY"):
        return request.getfixturevalue("make_napari_viewer")()
    from napari.components import ViewerModel

    return ViewerModel()


def _widget(qtbot, viewer, **kwargs):
    kwargs.setdefault("model", "tiny-test")
    widget = AnnotatorWidget(viewer, **kwargs)
    qtbot.addWidget(widget)
    return widget


def _idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=WAIT_MS)


def _ready(qtbot, widget):
    qtbot.waitUntil(
        lambda: not widget.is_busy() and widget.session is not None and widget.session.embedding is not None,
        timeout=WAIT_MS,
    )


def _click(layer, data_rc, shift=False):
    """A left click through napari's mouse-callback path (what the canvas calls)."""
    from napari.utils._proxies import ReadOnlyWrapper

    class Event:
        def __init__(self, type_):
            self.type = type_
            self.is_dragging = False
            self.modifiers = ["Shift"] if shift else []
            self.position = tuple(layer.data_to_world(np.asarray(data_rc, float)))
            self.pos = np.zeros(2)
            self.view_direction = None
            self.up_direction = None
            self.dims_displayed = [layer.ndim - 2, layer.ndim - 1]
            self.handled = False

    mouse_press_callbacks(layer, ReadOnlyWrapper(Event("mouse_press"), exceptions=("handled",)))
    mouse_release_callbacks(layer, ReadOnlyWrapper(Event("mouse_release"), exceptions=("handled",)))


def _slow_model(widget, monkeypatch, delay=1.5):
    """Load the tiny model now and make its encoder slow (to act while a job runs)."""
    model = ViewerState.for_viewer(widget.viewer).models.get("tiny-test", None, None)
    original = model.encode
    started = []  # one entry per encode call, appended when it starts (the worker is really running)

    def slow_encode(image):
        started.append(image.shape)
        time.sleep(delay)
        return original(image)

    monkeypatch.setattr(model, "encode", slow_encode)
    monkeypatch.setattr(model, "encode_started", started, raising=False)
    return model


def test_embedding_worker_finishes_and_is_reused_from_cache(qtbot, viewer):
    viewer.add_image(_image(), name="cells")
    widget = _widget(qtbot, viewer)
    _ready(qtbot, widget)
    emb = widget.session.embedding
    assert emb.original_size == (96, 128)
    assert widget.progress.value() == widget.progress.maximum()
    names = [layer.name for layer in viewer.layers]
    assert "cells [SAM labels]" in names and "cells [SAM points]" in names
    # picking the same image and model again: no new job, cached embedding
    finished = widget.jobs_finished
    widget.compute_embedding()
    assert not widget.is_busy() and widget.jobs_finished == finished
    assert widget.session.embedding is emb


def test_disk_cache_setting_turns_the_disk_tier_on_and_is_remembered(qtbot, viewer, monkeypatch, tmp_path):
    """The Annotator's *Disk cache (MB)*: off by default; a budget puts embeddings on disk, and a new
    widget (napari restarted) starts with it."""
    from napari.components import ViewerModel

    from napari_sam_micro._napari import state as state_mod
    from napari_sam_micro._napari.state import MIN_CACHE_MB

    monkeypatch.delenv(state_mod.DISK_CACHE_ENV, raising=False)
    monkeypatch.setenv(state_mod.DISK_DIR_ENV, str(tmp_path / "emb"))
    viewer.add_image(_image(), name="cells")
    widget = _widget(qtbot, viewer)
    assert widget.disk_cache_spin.value == 0 and widget.state.cache.disk_dir is None
    widget.disk_cache_spin.value = 512
    assert widget.state.cache.disk_dir == tmp_path / "emb" and widget.state.cache.disk_max_bytes == 512 << 20
    _ready(qtbot, widget)
    assert list((tmp_path / "emb").glob("*.npz")), "the plane's embedding was not written to disk"

    other = ViewerModel()  # a new session of napari: its own cache, the saved setting
    again = _widget(qtbot, other)
    assert again.disk_cache_spin.value == 512 and again.state.cache.disk_dir == tmp_path / "emb"
    again.disk_cache_spin.value = 10  # below the minimum: raised, and the box says so
    assert again.disk_cache_spin.value == MIN_CACHE_MB and again.state.disk_budget_mb == MIN_CACHE_MB
    again.disk_cache_spin.value = 0
    assert again.state.cache.disk_dir is None and again.state.disk_budget_mb == 0
    again.close()


def test_click_preview_commit_undo_and_next_object(qtbot, viewer, notes, disk_test_model):
    viewer.add_image(_image(), name="cells")
    widget = _widget(qtbot, viewer, model="disk-test")
    _ready(qtbot, widget)
    layers = widget.layers
    _click(layers.prompts, (45, 60))
    assert layers.prompts.features["positive"].tolist() == [True]
    qtbot.waitUntil(lambda: widget.session.preview is not None and not widget.is_busy(), timeout=WAIT_MS)
    preview_mask = widget.session.preview.objects[0].mask
    # the scripted model's click: a disk, then the ellipse in its (padded) box, around the click
    assert preview_mask[45, 60] and 0.6 * np.pi * 12**2 < preview_mask.sum() < 2.0 * np.pi * 12**2
    np.testing.assert_array_equal(layers.preview.data > 0, preview_mask)
    ids = widget.commit()
    assert ids == [1]
    out = layers.output
    np.testing.assert_array_equal(out.data == 1, preview_mask)
    assert out.features["index"].tolist() == [1]
    assert out.features["prompt"].tolist() == ["points"]
    assert out.features["area"].tolist() == [int(preview_mask.sum())]
    # prompts and preview are cleared for the next object
    assert len(layers.prompts.data) == 0 and not layers.preview.data.any()
    assert widget.objects.object_ids() == [1]
    # Ctrl+Z in the labels layer
    out.undo()
    assert not out.data.any()
    assert not [n for n in notes if n[0] == "error"]


def test_shift_click_adds_a_negative_point_and_toggle(qtbot, viewer):
    viewer.add_image(_image(), name="cells")
    widget = _widget(qtbot, viewer, auto_embed=False)
    layers = widget.layers
    _click(layers.prompts, (10, 10), shift=True)
    _click(layers.prompts, (20, 20))
    widget.negative_check.value = True
    _click(layers.prompts, (30, 30))
    assert layers.prompts.features["positive"].tolist() == [False, True, False]
    _idle(qtbot, widget)


def test_boxes_commit_several_objects_without_overwriting(qtbot, viewer, notes):
    viewer.add_image(_image(), name="cells")
    widget = _widget(qtbot, viewer)
    _ready(qtbot, widget)
    out = widget.layers.output
    existing = np.zeros(out.data.shape, bool)
    existing[:, :30] = True
    out.data[existing] = 7
    widget.layers.boxes.add_rectangles(np.array([[5, 5], [40, 50]]))
    widget.layers.boxes.add_rectangles(np.array([[50, 60], [90, 120]]))
    qtbot.waitUntil(
        lambda: widget.session.preview is not None and len(widget.session.preview.objects) == 2 and not widget.is_busy(),
        timeout=WAIT_MS,
    )
    ids = widget.commit()
    assert ids and ids[0] == 8 and ids == list(range(8, 8 + len(ids)))
    assert (out.data[existing] == 7).all()  # existing labels kept
    assert widget.layers.boxes.nshapes == 0
    assert set(out.features["prompt"]) == {"box"}


def test_overwrite_off_warns_when_nothing_would_change(qtbot, viewer, notes, disk_test_model):
    viewer.add_image(_image(), name="cells")
    widget = _widget(qtbot, viewer, model="disk-test")
    _ready(qtbot, widget)
    widget.layers.output.data[...] = 3
    _click(widget.layers.prompts, (45, 60))
    qtbot.waitUntil(lambda: widget.session.preview is not None and not widget.is_busy(), timeout=WAIT_MS)
    assert widget.commit() == []
    assert any(kind == "warning" and "Overwrite" in msg for kind, msg in notes)
    assert (widget.layers.output.data == 3).all()
    assert len(widget.layers.prompts.data) == 1  # prompts kept to try again
    widget.overwrite_check.value = True
    assert widget.commit() == [4]


def test_empty_mask_is_not_reported_as_lying_on_existing_labels(qtbot, viewer, notes, disk_test_model, monkeypatch):
    """Issue 12.8: a click where the model finds nothing was reported as "lies entirely on existing labels"."""
    from napari_sam_micro.core.model_api import DecoderOutput

    viewer.add_image(_image(), name="cells")
    widget = _widget(qtbot, viewer, model="disk-test")
    _ready(qtbot, widget)
    model = disk_test_model[-1]
    real_decode = model.decode

    def nothing(*args, **kwargs):  # the model finds no object: every logit negative
        out = real_decode(*args, **kwargs)
        return DecoderOutput(-np.abs(out.low_res_logits) - 1.0, out.iou_predictions)

    monkeypatch.setattr(model, "decode", nothing)
    _click(widget.layers.prompts, (45, 60))
    qtbot.waitUntil(lambda: widget.session.preview is not None and not widget.is_busy(), timeout=WAIT_MS)
    assert widget.commit() == []
    warnings = [msg for kind, msg in notes if kind == "warning"]
    assert any("found no object" in msg for msg in warnings), warnings
    assert not any("existing labels" in msg for msg in warnings)
    assert not widget.layers.output.data.any()


def test_cancel_stops_the_embedding(qtbot, viewer, monkeypatch):
    viewer.add_image(_image(), name="cells")
    widget = _widget(qtbot, viewer, auto_embed=False)
    _slow_model(widget, monkeypatch)
    widget.compute_embedding()
    assert widget.is_busy() and widget.cancel_button.isEnabled()
    qtbot.mouseClick(widget.cancel_button, annotator_module.Qt.LeftButton)
    _idle(qtbot, widget)
    assert widget.session.embedding is None
    assert "Cancelled" in widget.status.text()
    assert not widget.cancel_button.isEnabled() and widget.embed_button.isEnabled()


def test_stale_embedding_is_dropped_when_the_image_changes_mid_way(qtbot, viewer, monkeypatch):
    image = viewer.add_image(_image(), name="cells")
    widget = _widget(qtbot, viewer, auto_embed=False)
    model = _slow_model(widget, monkeypatch, delay=1.0)
    _idle(qtbot, widget)  # nothing else running (a model load would embed the new data afterwards)
    widget.compute_embedding()
    assert widget.is_busy() and widget._worker_kind == "embedding"
    # the worker thread is encoding the old data (under load it can start late, after the change below)
    qtbot.waitUntil(lambda: len(model.encode_started) == 1, timeout=WAIT_MS)
    # the job cannot be stopped in time (as if it finished just before the change)
    monkeypatch.setattr(widget, "cancel", lambda: None)
    new = _image(seed=3)
    image.data = new
    _idle(qtbot, widget)
    assert widget.dropped_results == 1
    widget.auto_embed = True
    widget.compute_embedding()
    _ready(qtbot, widget)
    # the accepted embedding is the one of the new data
    state = ViewerState.for_viewer(viewer)
    assert widget.session.embedding is state.cache.get(widget.session.embedding_key())
    np.testing.assert_array_equal(widget.session._plane, new)


def test_keys_bound_while_alive_and_released_on_close(qtbot, viewer):
    viewer.add_image(_image(), name="cells")
    before = dict(viewer.keymap)
    widget = _widget(qtbot, viewer, auto_embed=False)
    for key in (KEY_COMMIT, KEY_CLEAR, KEY_NEGATIVE):
        assert coerce_keybinding(key) in viewer.keymap
    # the N key toggles negative points through the viewer keymap
    viewer.keymap[coerce_keybinding(KEY_NEGATIVE)](viewer)
    assert widget.negative_check.value
    prompts = widget.layers.prompts
    assert widget._on_prompt_press in prompts.mouse_drag_callbacks
    widget.close()
    for key in (KEY_COMMIT, KEY_CLEAR, KEY_NEGATIVE):
        assert coerce_keybinding(key) not in viewer.keymap or coerce_keybinding(key) in before
    assert widget._on_prompt_press not in prompts.mouse_drag_callbacks


def test_commit_key_commits(qtbot, viewer, disk_test_model):
    viewer.add_image(_image(), name="cells")
    widget = _widget(qtbot, viewer, model="disk-test")
    _ready(qtbot, widget)
    _click(widget.layers.prompts, (45, 60))
    qtbot.waitUntil(lambda: widget.session.preview is not None and not widget.is_busy(), timeout=WAIT_MS)
    viewer.keymap[coerce_keybinding(KEY_COMMIT)](viewer)
    assert widget.layers.output.data.max() == 1
    _click(widget.layers.prompts, (10, 10))
    viewer.keymap[coerce_keybinding(KEY_CLEAR)](viewer)
    assert len(widget.layers.prompts.data) == 0


def test_bad_input_gives_notifications_not_crashes(qtbot, viewer, notes, tmp_path):
    widget = _widget(qtbot, viewer, auto_embed=False)
    # no image at all
    assert widget.commit() == []
    assert notes and notes[-1][0] == "warning"
    # a point outside the image
    viewer.add_image(_image(), name="cells")
    widget.compute_embedding()
    _ready(qtbot, widget)
    widget.layers.prompts.add(np.array([[500.0, 500.0]]))
    assert any(kind == "warning" and "outside the image" in msg for kind, msg in notes)
    # a labels layer picked as image is not offered; RGB / multichannel need the right settings
    viewer.add_image(np.zeros((4, 40, 50), np.uint16), name="multi")
    widget.image_combo.set_layer(viewer.layers["multi"])
    widget.channel_combo.value = "first axis"
    widget.channels_edit.value = "0,9"
    widget.channels_edit.native.editingFinished.emit()
    widget.compute_embedding()
    _idle(qtbot, widget)
    assert any("Channel 9 does not exist" in msg or "channels" in msg.lower() for _, msg in notes)
    # a model that cannot load (unreadable checkpoint)
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    widget.image_combo.set_layer(viewer.layers["cells"])
    widget.channel_combo.value = "none"
    widget.checkpoint_edit.value = str(bad)
    widget.compute_embedding()
    _idle(qtbot, widget)
    assert any(kind == "error" and "broken.pth" in msg for kind, msg in notes)
    assert widget.layers is not None  # the widget still works
    assert not [msg for kind, msg in notes if "failed:" in msg]  # no unexpected exception


def _nuclei(shape=(200, 260), centres=((60, 60), (60, 190), (150, 120))):
    rng = np.random.default_rng(1)
    img = rng.normal(100, 5, shape)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    for r, c in centres:
        img[(rr - r) ** 2 + (cc - c) ** 2 <= 10**2] += 400
    return img.astype(np.uint16)


def test_objects_are_pre_encoded_while_idle_and_a_click_on_one_is_decode_only(qtbot, viewer, notes, disk_test_model):
    viewer.add_image(_nuclei(), name="nuclei")
    widget = _widget(qtbot, viewer, model="disk-test")
    _ready(qtbot, widget)
    qtbot.waitUntil(lambda: widget.preencoder.windows_encoded >= 3 and not widget.preencoder.running, timeout=WAIT_MS)
    windows = widget.session.encoded_windows()
    assert len(windows) >= 3
    # every nucleus lies inside a pre-encoded window
    for r, c in ((60, 60), (60, 190), (150, 120)):
        assert any(y0 < r < y1 and x0 < c < x1 for y0, y1, x0, x1 in windows)
    jobs = widget.jobs_finished
    _click(widget.layers.prompts, (60, 190))
    # decoded on the GUI thread from a pre-encoded window: no worker, the preview is there at once
    assert not widget.is_busy() and widget.jobs_finished == jobs
    preview = widget.session.preview
    assert preview is not None and preview.objects[0].window in windows and preview.objects[0].mask[60, 190]
    assert not [n for n in notes if n[0] == "error"]


def test_pre_encoding_can_be_switched_off(qtbot, viewer, disk_test_model):
    viewer.add_image(_nuclei(), name="nuclei")
    widget = _widget(qtbot, viewer, model="disk-test")
    widget.preencode_check.value = False
    _ready(qtbot, widget)
    qtbot.wait(300)
    assert widget.preencoder.windows_encoded == 0 and widget.session.encoded_windows() == []


def test_a_large_lazy_layer_is_annotated_window_by_window(qtbot, viewer, notes, disk_test_model, counted_plane):
    """A 4608 x 4608 multiscale layer (lazy full resolution): box → preview → commit read windows only."""
    pytest.importorskip("dask")
    cy, cx = 3000, 3500
    plane = counted_plane(4608, 512, ((cy, cx),))
    low = np.full((576, 576), 100, np.uint16)  # napari shows this level; the plugin reads level 0
    viewer.add_image([plane.array, low], multiscale=True, name="slide")
    widget = _widget(qtbot, viewer, model="disk-test")
    qtbot.waitUntil(lambda: widget.session is not None and widget.session.large_plane and not widget.is_busy(), timeout=WAIT_MS)
    assert "Large plane" in widget.status.text()
    widget.layers.boxes.add_rectangles(np.array([[cy - 11, cx - 11], [cy + 11, cx + 11]]))
    qtbot.waitUntil(lambda: widget.session.preview is not None and not widget.is_busy(), timeout=WAIT_MS)
    preview = widget.layers.preview.data
    assert preview[cy, cx] == 1 and 250 < np.count_nonzero(preview) < 500  # the ellipse in the box
    assert widget.commit() == [1]
    out = widget.layers.output.data
    rr, cc = np.nonzero(out[cy - 100 : cy + 100, cx - 100 : cx + 100] == 1)
    assert abs(rr.mean() - 100) < 1 and abs(cc.mean() - 100) < 1
    assert np.count_nonzero(out) == rr.size and not widget.layers.preview.data.any()
    _idle(qtbot, widget)
    qtbot.waitUntil(lambda: not widget.preencoder.running, timeout=WAIT_MS)
    # the sample (36 blocks), the pre-encoded region around the view centre and the box's window
    assert plane.distinct <= 60 < plane.chunks
    assert not [n for n in notes if n[0] in ("warning", "error")]
