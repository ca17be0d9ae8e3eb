"""Commits into labels layers that cannot take them: a message, the layer and its undo history unchanged."""

from __future__ import annotations

import errno

import numpy as np
import pytest

pytest.importorskip("napari")
da = pytest.importorskip("dask.array")

from napari.components import ViewerModel  # noqa: E402

from napari_sam_micro._napari import commit as commit_mod  # noqa: E402
from napari_sam_micro._napari.commit import check_writable, commit_items  # noqa: E402
from napari_sam_micro.core.cache import EmbeddingCache  # noqa: E402
from napari_sam_micro.core.errors import ImageError  # noqa: E402
from napari_sam_micro.core.labels import object_row  # noqa: E402
from napari_sam_micro.core.prompts import Prompts  # noqa: E402
from napari_sam_micro.session import AnnotationSession, CommitItem  # noqa: E402


def _item(label_id, mask, leading=()):
    rr, cc = np.nonzero(mask)
    lead = tuple(np.full(rr.shape, i, np.intp) for i in leading)
    return CommitItem((*lead, rr, cc), label_id, object_row(label_id, mask, 0.9, 0.8, "box"))


def _masks(shape=(20, 30)):
    a = np.zeros(shape, bool)
    a[2:6, 3:9] = True
    b = np.zeros(shape, bool)
    b[10:15, 10:20] = True
    return a, b


def _staged(layer):
    return list(getattr(layer, "_staged_history", []))


def test_read_only_layer_is_refused_with_no_stale_undo_step():
    data = np.zeros((20, 30), np.uint16)
    data.flags.writeable = False
    layer = ViewerModel().add_labels(data, name="masks")
    a, _ = _masks()
    with pytest.raises(ImageError, match="'masks' is read-only"):
        commit_items(layer, [_item(1, a)])
    assert not layer.data.any() and not _staged(layer) and not layer._undo_history


def test_read_only_layer_refused_by_napari_itself_is_rolled_back(monkeypatch):
    """Without the early check, napari stages an undo step and then fails: it must not stay staged."""
    data = np.zeros((20, 30), np.uint16)
    data.flags.writeable = False
    layer = ViewerModel().add_labels(data, name="masks")
    monkeypatch.setattr(commit_mod, "check_writable", lambda layer: None)
    a, _ = _masks()
    with pytest.raises(ImageError, match="left unchanged"):
        commit_items(layer, [_item(1, a)])
    assert not _staged(layer) and not layer._undo_history and not layer.data.any()


def test_a_write_failing_half_way_is_rolled_back_and_the_previous_commit_kept(monkeypatch):
    layer = ViewerModel().add_labels(np.zeros((20, 30), np.uint16), name="masks")
    a, b = _masks()
    c = np.zeros((20, 30), bool)
    c[18:20, 0:3] = True
    commit_items(layer, [_item(1, c)])  # the previous good state
    before = layer.data.copy()
    real = type(layer).data_setitem
    calls = []

    def fail_second(self, indices, value, refresh=True):
        calls.append(value)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, indices, value, refresh=refresh)

    monkeypatch.setattr(type(layer), "data_setitem", fail_second)
    with pytest.raises(ImageError, match="No space left on device.*left unchanged"):
        commit_items(layer, [_item(2, a), _item(3, b)])
    monkeypatch.undo()
    np.testing.assert_array_equal(layer.data, before)
    assert not _staged(layer) and layer.features["index"].tolist() == [1]
    layer.undo()  # one undo step: the previous commit, nothing stale before it
    assert not layer.data.any()


def test_dask_layer_is_refused_before_anything_is_read():
    lazy = da.zeros((4, 20, 30), dtype=np.uint16, chunks=(1, 20, 30))
    layer = ViewerModel().add_labels(lazy, name="lazy")
    with pytest.raises(ImageError, match="lazily.*dask"):
        check_writable(layer)
    a, _ = _masks()
    with pytest.raises(ImageError, match="dask"):
        commit_items(layer, [_item(1, a, leading=(0,))])
    assert not _staged(layer) and not layer._undo_history


class _Recording:
    """A lazy labels volume that records what is read from it (like a dask or zarr array would load)."""

    def __init__(self, array):
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.reads = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self._array[key]

    def max(self):  # what a chunked reduction gives
        return self._array.max()


def _session_with_preview(disk_model, shape=(120, 160)):
    s = AnnotationSession(disk_model(radius=5), EmbeddingCache(), crop_to_prompt=False)
    s.set_image(np.zeros(shape, np.uint8))
    s.compute_embedding()
    s.predict(Prompts(boxes_xyxy=[[10, 20, 40, 50]]))
    return s


def test_commit_plan_reads_only_the_touched_region_of_a_lazy_volume(disk_model):
    s = _session_with_preview(disk_model)
    volume = np.zeros((5, 120, 160), np.uint16)
    volume[0, 0, 0] = 9  # an object on another plane: ids continue after it
    volume[2, 25:30, 15:20] = 4  # existing label inside the box region on this plane
    lazy = _Recording(volume)
    plan = s.commit_plan(lazy, overwrite=False, leading=(2,))
    assert lazy.reads and all(len(k) == 3 and k[0] == 2 for k in lazy.reads)
    rows, cols = lazy.reads[0][1], lazy.reads[0][2]
    assert (rows.stop - rows.start) * (cols.stop - cols.start) < 0.2 * 120 * 160
    expected = s.commit_plan(volume, overwrite=False, leading=(2,))
    assert [p.label_id for p in plan] == [p.label_id for p in expected] == [10]
    for got, want in zip(plan, expected):
        for g, w in zip(got.indices, want.indices):
            np.testing.assert_array_equal(g, w)
        assert got.row == want.row
    assert not (volume[2][plan[0].indices[1:]] != 0).any()  # existing label kept
    dask_plan = s.commit_plan(da.from_array(volume, chunks=(1, 120, 160)), leading=(2,))
    assert [p.label_id for p in dask_plan] == [10]


def test_the_annotator_warns_and_keeps_the_prompts(qtbot, monkeypatch, disk_test_model):
    import napari.utils.notifications as nn

    import napari_sam_micro._qt.annotator as annotator_module
    from napari_sam_micro._qt.annotator import AnnotatorWidget

    shown = []
    for kind in ("show_info", "show_warning", "show_error"):
        recorder = (lambda k: (lambda msg: shown.append((k, str(msg)))))(kind.split("_")[1])
        monkeypatch.setattr(nn, kind, recorder)
        if hasattr(annotator_module, kind):
            monkeypatch.setattr(annotator_module, kind, recorder)
    viewer = ViewerModel()
    viewer.add_image(np.random.default_rng(0).normal(100, 10, (96, 128)).astype(np.uint16), name="cells")
    widget = AnnotatorWidget(viewer, model="disk-test")
    qtbot.addWidget(widget)
    qtbot.waitUntil(lambda: not widget.is_busy() and widget.session is not None and widget.session.embedding is not None,
                    timeout=120_000)
    widget.layers.boxes.add_rectangles(np.array([[20, 30], [60, 70]]))
    qtbot.waitUntil(lambda: widget.session.preview is not None and not widget.is_busy(), timeout=120_000)
    out = widget.layers.output
    out.data.flags.writeable = False
    assert widget.commit() == []
    assert any(k == "warning" and "read-only" in m for k, m in shown), shown
    assert widget.layers.boxes.nshapes == 1 and not _staged(out) and not out._undo_history
    out.data = da.zeros(out.data.shape, dtype=out.data.dtype)
    assert widget.commit() == []
    assert any(k == "warning" and "dask" in m for k, m in shown), shown
