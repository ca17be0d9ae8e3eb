"""EverythingWidget: one model run, instant re-filtering, one output layer, undo, cancel."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytest.importorskip("segment_anything")

from napari.components import ViewerModel  # noqa: E402

from napari_sam_micro._qt.everything import (  # noqa: E402
    EverythingWidget,
    find_everything_layer,
    labels_from_result,
    write_plane_labels,
)
from napari_sam_micro.models import registry  # noqa: E402

RUN_TIMEOUT_MS = 120_000


class CountingModel:
    """Wraps a PromptableModel and counts calls into it."""

    def __init__(self, inner):
        self._inner = inner
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def encode(self, image):
        self.calls += 1
        return self._inner.encode(image)

    def decode(self, *args, **kwargs):
        self.calls += 1
        return self._inner.decode(*args, **kwargs)

    def upscale(self, *args, **kwargs):
        self.calls += 1
        return self._inner.upscale(*args, **kwargs)


def _register_counting(name: str, crop_to_prompt: bool):
    """Register the tiny test SAM behind a call counter as ``name``; returns the list of built models."""
    built = []
    tiny = registry.get_spec("tiny-test")

    def build(checkpoint, device):
        model = CountingModel(tiny.builder(checkpoint, "cpu"))
        built.append(model)
        return model

    registry.register(
        dataclasses.replace(tiny, name=name, display_name=name, builder=build, crop_to_prompt=crop_to_prompt)
    )
    return built


@pytest.fixture
def counting_model():
    """A registered 'counting-tiny' model: the tiny test SAM behind a call counter."""
    # crop_to_prompt=False: a SAM-like model, for which the widget offers the grid mode only
    yield _register_counting("counting-tiny", crop_to_prompt=False)
    registry.unregister("counting-tiny")


def _image(shape=(64, 80)):
    image = np.full(shape, 200, dtype=np.uint16)
    image[..., 8:28, 10:30] = 3000
    image[..., 36:58, 40:72] = 1800
    return image


def _widget(qtbot, viewer):
    widget = EverythingWidget(viewer, model="counting-tiny")
    qtbot.addWidget(widget)
    widget.points_spin.value = 8
    # The random-weight model's scores are low: start with the score filters off.
    widget.iou_slider.value = 0.0
    widget.stability_slider.value = 0.0
    return widget


def _run(qtbot, widget):
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=RUN_TIMEOUT_MS)


def test_run_writes_instance_labels_and_refilters_without_the_model(qtbot, counting_model):
    viewer = ViewerModel()
    viewer.add_image(_image(), name="cells")
    widget = _widget(qtbot, viewer)
    n_layers = len(viewer.layers)
    _run(qtbot, widget)

    layer = widget.output_layer
    assert layer is not None and layer in viewer.layers and len(viewer.layers) == n_layers + 1
    assert find_everything_layer(viewer, "cells", (64, 80)) is layer
    assert widget.result is not None and len(widget.result) > 0
    expected, table = labels_from_result(widget.result)
    np.testing.assert_array_equal(layer.data, expected)
    ids = np.unique(layer.data)
    ids = ids[ids > 0]
    features = layer.features
    assert features["index"].tolist() == ids.tolist()
    for column in ("area", "predicted_iou", "stability_score", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"):
        assert column in features
    assert features["area"].tolist() == [int((layer.data == i).sum()) for i in ids]
    np.testing.assert_allclose(features["predicted_iou"], table["predicted_iou"], rtol=1e-6)
    # Overlaps were resolved by score: ids are ordered by decreasing predicted IoU.
    assert np.all(np.diff(features["predicted_iou"].to_numpy()) <= 1e-7)

    model = counting_model[0]
    calls = model.calls
    assert calls > 0
    before = layer.data.copy()
    n_before = len(widget.result)

    # Instant re-filter: fewer objects with strict duplicate removal, no model call, same layer.
    widget.nms_slider.value = 0.05
    qtbot.waitUntil(lambda: len(widget.result) < n_before, timeout=5000)
    assert model.calls == calls
    assert widget.output_layer is layer and len(viewer.layers) == n_layers + 1
    np.testing.assert_array_equal(layer.data, labels_from_result(widget.result)[0])
    assert layer.features["index"].tolist() == sorted(set(np.unique(layer.data)) - {0})

    widget.nms_slider.value = 0.7
    qtbot.waitUntil(lambda: len(widget.result) == n_before, timeout=5000)
    np.testing.assert_array_equal(layer.data, before)

    # A min-area filter removes the smallest objects; the replacement is one undo step.
    smallest = int(layer.features["area"].min())
    widget.min_area_spin.value = smallest + 1
    qtbot.waitUntil(lambda: smallest not in layer.features["area"].tolist(), timeout=5000)
    assert model.calls == calls
    assert not np.array_equal(layer.data, before)
    assert (layer.data[before == 0] == 0).all()  # only removed, nothing added
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)

    # A new run (cached embedding) writes into the same layer.
    _run(qtbot, widget)
    assert widget.output_layer is layer and len(viewer.layers) == n_layers + 1


def test_thresholds_below_the_run_floor_ask_for_a_new_run(qtbot, counting_model):
    viewer = ViewerModel()
    viewer.add_image(_image(), name="cells")
    widget = _widget(qtbot, viewer)
    widget.iou_slider.value = 0.6
    widget.stability_slider.value = 0.6
    _run(qtbot, widget)
    assert widget.candidates is not None and widget.candidates.iou_floor == pytest.approx(0.5)
    widget.iou_slider.value = 0.2
    qtbot.waitUntil(lambda: "again" in widget.status.text(), timeout=5000)
    widget.points_spin.value = 9
    assert "again" in widget.status.text()


def test_cancel_leaves_labels_untouched(qtbot, counting_model):
    viewer = ViewerModel()
    viewer.add_image(_image(), name="cells")
    widget = _widget(qtbot, viewer)
    widget.points_spin.value = 32
    worker = widget.run()
    with qtbot.waitSignal(worker.aborted, timeout=RUN_TIMEOUT_MS):
        widget.cancel()
    qtbot.waitUntil(lambda: not widget.is_busy(), timeout=RUN_TIMEOUT_MS)
    assert widget.output_layer is None and widget.candidates is None
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image"]
    assert widget.run_button.isEnabled()


def test_run_without_an_image_explains(qtbot, counting_model):
    widget = _widget(qtbot, ViewerModel())
    assert widget.run() is None
    assert "image" in widget.status.text().lower()


def test_write_plane_labels_keeps_ids_unique_across_planes():
    viewer = ViewerModel()
    layer = viewer.add_labels(np.zeros((3, 6, 6), dtype=np.uint32))
    plane = np.zeros((6, 6), dtype=np.uint32)
    plane[0:2, 0:2] = 1
    plane[3:5, 3:5] = 2
    table = {"index": [1, 2], "area": [4, 4], "predicted_iou": [0.9, 0.8]}
    assert write_plane_labels(layer, (1,), plane, table).tolist() == [1, 2]
    ids = write_plane_labels(layer, (0,), plane, table)
    assert ids.tolist() == [3, 4]  # above the ids of plane 1
    assert set(np.unique(layer.data[0])) == {0, 3, 4}
    assert layer.features["index"].tolist() == [1, 2, 3, 4]
    # Re-writing plane 1 with one object replaces its objects and their rows.
    single = np.where(plane == 1, 1, 0).astype(np.uint32)
    write_plane_labels(layer, (1,), single, {"index": [1], "area": [4], "predicted_iou": [0.95]})
    assert set(np.unique(layer.data[1])) == {0, 5}
    assert layer.features["index"].tolist() == [3, 4, 5]
    assert layer.features.set_index("index").loc[5, "predicted_iou"] == 0.95


@pytest.fixture
def crop_model():
    """A registered 'crop-tiny': the tiny test SAM flagged ``crop_to_prompt`` (seeds mode offered)."""
    yield _register_counting("crop-tiny", crop_to_prompt=True)
    registry.unregister("crop-tiny")


def test_seeds_mode_is_offered_for_crop_models_and_writes_labels(qtbot, crop_model, counting_model):
    from napari_sam_micro._qt.everything import MODE_GRID, MODE_SEEDS

    viewer = ViewerModel()
    image = np.full((96, 112), 200, dtype=np.uint16)
    rr, cc = np.mgrid[:96, :112]
    for r, c in [(25, 30), (30, 80), (70, 50)]:
        image[(rr - r) ** 2 + (cc - c) ** 2 <= 64] = 3000
    viewer.add_image(image, name="blobs")
    widget = EverythingWidget(viewer, model="counting-tiny")
    qtbot.addWidget(widget)
    # a plain SAM model: grid only
    assert not widget.seeds_available() and widget.mode() == MODE_GRID and not widget.mode_combo.enabled
    widget.model_combo.value = "crop-tiny"
    assert widget.seeds_available() and widget.mode() == MODE_SEEDS and widget.mode_combo.enabled
    assert not widget._seed_box.isHidden() and all(box.isHidden() for box in widget._grid_boxes)
    _run(qtbot, widget)
    result = widget.seeded
    assert result is not None, widget.status.text()
    # one seed per blob (the model is random: how many objects survive is not asserted)
    seeds = np.round(result.seeds_rc).astype(int)
    assert sorted(map(tuple, seeds)) == [(25, 30), (30, 80), (70, 50)]
    layer = widget.output_layer
    assert layer is not None and layer.data.shape == image.shape
    np.testing.assert_array_equal(layer.data, result.labels)
    ids = np.unique(layer.data)
    assert layer.features["index"].tolist() == ids[ids > 0].tolist()
    assert "seeds" in widget.status.text()
    assert crop_model and crop_model[0].calls >= 3 * 3  # encode, decode, upscale per seed
    widget.mode_combo.value = MODE_GRID
    assert widget._seed_box.isHidden() and not any(box.isHidden() for box in widget._grid_boxes)


def test_open_batch_results_adds_the_labels_with_their_table(qtbot, tmp_path):
    from napari_sam_micro.core.export import write_labels

    viewer = ViewerModel()
    widget = _widget(qtbot, viewer)
    labels = np.zeros((20, 30), np.uint16)
    labels[2:5, 3:9] = 1
    write_labels(tmp_path / "field1_labels.tif", labels, {"index": [1], "area": [18], "predicted_iou": [0.9]})
    (layer,) = widget.open_results(tmp_path)
    assert layer in viewer.layers and layer.features["predicted_iou"].tolist() == [0.9]
    assert "Opened 1 labels layer" in widget.status.text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert widget.open_results(empty) == [] and "Could not open" in widget.status.text()
    assert len(viewer.layers) == 1  # nothing else added


def test_large_planes_are_segmented_in_tiles(qtbot, disk_test_model):
    from napari_sam_micro._qt.everything import MODE_SEEDS

    viewer = ViewerModel()
    yy, xx = np.mgrid[:120, :2100]
    img = np.full((120, 2100), 200, np.uint16)
    for r, c in ((50, 300), (60, 1030), (40, 1800)):  # the middle one on a tile border
        img[(yy - r) ** 2 + (xx - c) ** 2 <= 12**2] = 3000
    viewer.add_image(img, name="mosaic")
    widget = EverythingWidget(viewer, model="disk-test")
    qtbot.addWidget(widget)
    widget.mode_combo.value = MODE_SEEDS
    _run(qtbot, widget)
    out = widget.output_layer.data
    assert len(np.unique(out)) - 1 == 3 and len(widget.seeded.table["index"]) == 3


def _stack_of_blobs():
    """(5, 80, 110) uint16: blob A on planes 0-3, blob B on planes 2-4, blob C on plane 4 only."""
    stack = np.full((5, 80, 110), 200, np.uint16)
    rr, cc = np.mgrid[:80, :110]
    for planes, (r, c) in (((0, 1, 2, 3), (30, 30)), ((2, 3, 4), (50, 80)), ((4,), (15, 90))):
        for p in planes:
            stack[p][(rr - r) ** 2 + (cc - c) ** 2 <= 10**2] = 3000
    return stack


@pytest.mark.parametrize("kind, n_objects", [("z", 2), ("t", 3)])
def test_whole_stack_links_the_planes_into_one_id_per_object(qtbot, disk_test_model, kind, n_objects):
    from napari_sam_micro._qt.everything import MODE_SEEDS

    viewer = ViewerModel()
    viewer.add_image(_stack_of_blobs(), name="stack")
    viewer.dims.set_current_step(0, 2)
    widget = EverythingWidget(viewer, model="disk-test")
    qtbot.addWidget(widget)
    widget.mode_combo.value = MODE_SEEDS
    widget.planes_combo.value = kind
    _run(qtbot, widget)
    assert widget.stack is not None, widget.status.text()
    out = np.asarray(widget.output_layer.data)
    assert out.shape == (5, 80, 110)
    # z: the one-plane blob C is dropped (not a 3D object); t: it is a one-frame track
    ids = np.unique(out[out > 0])
    assert len(ids) == n_objects and f"{n_objects} " in widget.status.text()
    assert len(np.unique(out[0:4, 30, 30])) == 1 and out[0, 30, 30] > 0  # A: one id on planes 0-3
    assert len(np.unique(out[2:5, 50, 80])) == 1 and out[2, 50, 80] > 0  # B: one id on planes 2-4
    assert out[3, 30, 30] != out[3, 50, 80]
    table = widget.output_layer.features.set_index("index")
    assert sorted(table.index) == ids.tolist()
    assert table.loc[out[0, 30, 30], "planes"] == 4 and table.loc[out[2, 50, 80], "first_plane"] == 2
    widget.output_layer.undo()  # the whole stack was one step
    assert not np.asarray(widget.output_layer.data).any()


def test_whole_stack_of_a_2d_image_explains(qtbot, disk_test_model):
    viewer = ViewerModel()
    viewer.add_image(_stack_of_blobs()[2], name="plane")
    widget = EverythingWidget(viewer, model="disk-test")
    qtbot.addWidget(widget)
    widget.planes_combo.value = "z"
    assert widget.run() is None and "one plane" in widget.status.text()
    assert len(viewer.layers) == 1


def test_write_stack_labels_replaces_one_stack_and_keeps_ids_unique():
    from napari_sam_micro._napari.everything import write_stack_labels

    viewer = ViewerModel()
    data = np.zeros((2, 3, 6, 6), np.uint32)  # (t, z, y, x)
    data[1, :, 0:2, 0:2] = 7  # an object of t = 1, outside the stack written below
    layer = viewer.add_labels(data)
    stack = np.zeros((3, 6, 6), np.uint32)
    stack[:, 3:5, 3:5] = 1
    stack[2, 0:1, 5:6] = 2
    ids = write_stack_labels(layer, (0, 1), 1, stack, {"index": [1, 2], "area": [12, 1], "planes": [3, 1]})
    assert ids.tolist() == [8, 9]  # above id 7 used outside the stack
    np.testing.assert_array_equal(layer.data[0], np.where(stack > 0, stack + 7, 0))
    assert (layer.data[1, :, 0:2, 0:2] == 7).all()  # the other frame is untouched
    assert layer.features["index"].tolist() == [8, 9] and layer.features["planes"].tolist() == [3, 1]
    layer.undo()
    np.testing.assert_array_equal(layer.data, data)


def test_a_large_lazy_layer_is_segmented_tile_by_tile(qtbot, disk_test_model, counted_plane):
    """A 4608 x 4608 multiscale layer: the seeds mode reads level 0 in tiles; the grid mode says why it cannot run."""
    from napari_sam_micro._qt.everything import MODE_GRID, MODE_SEEDS

    viewer = ViewerModel()
    discs = ((3000, 3500), (700, 4000))
    plane = counted_plane(4608, 512, discs)
    viewer.add_image([plane.array, np.full((576, 576), 100, np.uint16)], multiscale=True, name="slide")
    widget = EverythingWidget(viewer, model="disk-test")
    qtbot.addWidget(widget)
    widget.mode_combo.value = MODE_GRID
    assert widget.run() is None and "seeds mode" in widget.status.text()
    assert plane.reads == []  # refused before reading anything
    widget.mode_combo.value = MODE_SEEDS
    _run(qtbot, widget)
    out = widget.output_layer.data
    assert len(widget.seeded.table["index"]) == 2
    assert [out[r, c] > 0 for r, c in discs] == [True, True]
