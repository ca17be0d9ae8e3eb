"""LayerComboBox: a magicgui layer picker that follows a bare ViewerModel's layer list."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from magicgui.widgets import ComboBox  # noqa: E402
from napari.components import ViewerModel  # noqa: E402
from napari.layers import Image, Points  # noqa: E402

from napari_sam_micro._qt.layer_picker import LayerComboBox  # noqa: E402


def _texts(picker):
    return [picker.combo.native.itemText(i) for i in range(picker.combo.native.count())]


def test_follows_inserts_removals_moves_and_renames(qtbot):
    viewer = ViewerModel()
    first = viewer.add_image(np.zeros((4, 4)), name="first")
    viewer.add_labels(np.zeros((4, 4), np.uint8), name="not an image")
    picker = LayerComboBox(viewer, Image)
    qtbot.addWidget(picker)
    assert isinstance(picker.combo, ComboBox)
    seen = []
    picker.layer_changed.connect(seen.append)
    assert picker.layers() == [first] and picker.current_layer() is first
    second = viewer.add_image(np.ones((4, 4)), name="second")  # offered; the user's choice is kept
    assert picker.layers() == [first, second] and picker.current_layer() is first and seen == []
    picker.set_layer(second)
    picker.set_layer(first)
    assert seen == [second, first]
    first.name = "renamed"  # shown in the layer list's order, the choice kept
    assert _texts(picker) == ["renamed", "second"] and picker.current_layer() is first
    viewer.layers.move(viewer.layers.index(second), 0)
    assert _texts(picker) == ["second", "renamed"] and picker.current_layer() is first
    viewer.layers.remove(first)
    assert picker.current_layer() is second and seen[-1] is second
    with pytest.raises(ValueError, match="not offered"):
        picker.set_layer(viewer.layers["not an image"])


def test_optional_picker_starts_empty_and_offers_none(qtbot):
    viewer = ViewerModel()
    picker = LayerComboBox(viewer, Points, allow_none=True)
    qtbot.addWidget(picker)
    assert picker.layers() == [None] and picker.current_layer() is None
    points = viewer.add_points(np.zeros((1, 2)), name="clicks")
    # optional input: the empty choice stays until the user picks a layer
    assert picker.layers() == [None, points] and picker.current_layer() is None and picker.currentText() == ""
    picker.set_layer(points)
    assert picker.current_layer() is points and picker.currentText() == "clicks"
