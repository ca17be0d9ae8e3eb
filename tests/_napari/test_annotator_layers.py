"""napari glue of the annotator on a headless ViewerModel: layers, prompts, commits with undo."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402

from napari_sam_micro._napari.commit import commit_items  # noqa: E402
from napari_sam_micro._napari.layers import (  # noqa: E402
    META_KEY,
    current_plane_index,
    ensure_plugin_layers,
    find_plugin_layer,
    image_geometry,
    layer_role,
    plane_data,
)
from napari_sam_micro._napari.prompts import plane_prompts  # noqa: E402
from napari_sam_micro._napari.state import ViewerState  # noqa: E402
from napari_sam_micro.core.errors import ImageError, PromptError  # noqa: E402
from napari_sam_micro.core.labels import OBJECT_COLUMNS, object_row  # noqa: E402
from napari_sam_micro.session import CommitItem  # noqa: E402


@pytest.fixture
def viewer():
    return ViewerModel()


def _setup(viewer, data, **kwargs):
    image = viewer.add_image(data, name="cells", **kwargs)
    geometry = image_geometry(image)
    layers = ensure_plugin_layers(viewer, image, geometry)
    return image, geometry, layers


def test_plugin_layers_are_created_once_and_adopted(viewer):
    image, geometry, layers = _setup(viewer, np.zeros((40, 50), np.uint16), scale=(0.5, 0.25), translate=(3, 4))
    assert {layer_role(lyr) for lyr in viewer.layers} == {None, "prompts", "boxes", "preview", "output"}
    assert layers.output.data.shape == (40, 50) and layers.output.data.dtype == np.uint32
    np.testing.assert_allclose(layers.output.scale, (0.5, 0.25))
    np.testing.assert_allclose(layers.prompts.translate, (3, 4))
    assert layers.output.metadata[META_KEY] == {"role": "output", "image": "cells"}
    assert viewer.layers.selection.active is layers.prompts and layers.prompts.mode == "add"
    again = ensure_plugin_layers(viewer, image, geometry)
    assert again.output is layers.output and again.prompts is layers.prompts
    assert len(viewer.layers) == 5
    # a labels layer of another shape with the same metadata is not adopted
    assert find_plugin_layer(viewer.layers, "output", "other") is None


def test_geometry_of_rgb_multichannel_and_bad_layers(viewer):
    rgb = viewer.add_image(np.zeros((30, 40, 3), np.uint8), rgb=True)
    g = image_geometry(rgb)
    assert g.shape == (30, 40) and g.rgb
    multi = viewer.add_image(np.zeros((2, 30, 40), np.uint16), scale=(1, 2, 3))
    g = image_geometry(multi, channel_axis=0)
    assert g.shape == (30, 40) and g.scale == (2.0, 3.0) and g.channel_axis == 0
    plane = plane_data(multi, g, ())
    assert plane.shape == (30, 40, 2)
    with pytest.raises(ImageError):
        image_geometry(multi, channel_axis=1)
    with pytest.raises(ImageError):
        image_geometry(viewer.add_labels(np.zeros((5, 5), np.uint8)))
    with pytest.raises(ImageError):
        image_geometry(None)
    with pytest.raises(ImageError):
        image_geometry(viewer.add_image(np.zeros((1, 40))))


def test_points_and_boxes_become_xy_prompts_on_scaled_translated_layers(viewer):
    image, geometry, layers = _setup(viewer, np.zeros((40, 50)), scale=(2.0, 0.5), translate=(10.0, -5.0))
    # clicks arrive in world coordinates (world = pixel * scale + translate); napari's add mode
    # stores layer.world_to_data(position), as here
    def click(world, positive=True):
        layers.prompts.feature_defaults = {"positive": positive}
        layers.prompts.add(layers.prompts.world_to_data(np.asarray(world, float)))

    click((10 + 2 * 12, -5 + 0.5 * 30))
    click((10 + 2 * 5, -5 + 0.5 * 7), positive=False)
    corners = [(10 + 2 * 2, -5 + 0.5 * 3), (10 + 2 * 20, -5 + 0.5 * 25)]
    layers.boxes.add_rectangles(np.array([layers.boxes.world_to_data(np.asarray(c, float)) for c in corners]))
    prompts, notes = plane_prompts(layers.prompts, layers.boxes, image, geometry, ())
    np.testing.assert_allclose(prompts.points_xy, [[30, 12], [7, 5]])  # (x = col, y = row)
    np.testing.assert_array_equal(prompts.point_labels, [1, 0])
    np.testing.assert_allclose(prompts.boxes_xyxy, [[3, 2, 25, 20]])
    assert notes == []


def test_adopted_prompt_layer_with_its_own_transform(viewer):
    image = viewer.add_image(np.zeros((40, 50)), name="cells", scale=(2.0, 2.0))
    geometry = image_geometry(image)
    # a points layer in plain world units (scale 1) tagged for this image
    points = viewer.add_points(
        np.array([[20.0, 30.0]]), metadata={META_KEY: {"role": "prompts", "image": "cells"}}
    )
    layers = ensure_plugin_layers(viewer, image, geometry)
    assert layers.prompts is points
    prompts, _ = plane_prompts(layers.prompts, layers.boxes, image, geometry, ())
    np.testing.assert_allclose(prompts.points_xy, [[15, 10]])  # world (20, 30) / scale 2 -> (10, 15)
    np.testing.assert_array_equal(prompts.point_labels, [1])  # no 'positive' feature: positive


def test_nd_stack_uses_the_prompts_of_the_displayed_slice(viewer):
    stack = np.arange(3 * 20 * 30, dtype=np.float32).reshape(3, 20, 30)
    image, geometry, layers = _setup(viewer, stack)
    viewer.dims.set_current_step(0, 2)
    index = current_plane_index(viewer, image, geometry)
    assert index == (2,)
    np.testing.assert_array_equal(plane_data(image, geometry, index), stack[2])
    layers.prompts.add(np.array([[2, 5, 6], [1, 7, 8], [2, 9, 10]]))
    layers.boxes.add_rectangles(np.array([[1, 1, 1], [1, 1, 5], [1, 5, 5], [1, 5, 1]]))
    layers.boxes.add_rectangles(np.array([[2, 2, 3], [2, 2, 12], [2, 10, 12], [2, 10, 3]]))
    prompts, _ = plane_prompts(layers.prompts, layers.boxes, image, geometry, index)
    np.testing.assert_allclose(prompts.points_xy, [[6, 5], [10, 9]])
    np.testing.assert_allclose(prompts.boxes_xyxy, [[3, 2, 12, 10]])


def test_prompts_outside_or_nan_are_user_errors(viewer):
    image, geometry, layers = _setup(viewer, np.zeros((20, 30)))
    layers.prompts.add(np.array([[25.0, 5.0]]))
    with pytest.raises(PromptError, match="outside the image"):
        plane_prompts(layers.prompts, layers.boxes, image, geometry, ())


def test_non_rectangles_are_ignored_with_a_note(viewer):
    image, geometry, layers = _setup(viewer, np.zeros((20, 30)))
    layers.boxes.add_ellipses(np.array([[5, 5], [10, 10]]))
    layers.prompts.add(np.array([[5.0, 5.0]]))
    prompts, notes = plane_prompts(layers.prompts, layers.boxes, image, geometry, ())
    assert prompts.n_boxes == 0 and len(notes) == 1 and "rectangle" in notes[0]


def test_3d_view_and_transposed_axes_are_refused(viewer):
    image, geometry, _ = _setup(viewer, np.zeros((3, 20, 30)))
    viewer.dims.ndisplay = 3
    with pytest.raises(ImageError, match="2D"):
        current_plane_index(viewer, image, geometry)
    viewer.dims.ndisplay = 2
    viewer.dims.order = (1, 0, 2)
    with pytest.raises(ImageError, match="rows and columns"):
        current_plane_index(viewer, image, geometry)


def _item(label_id, mask, leading=(), kind="points"):
    rr, cc = np.nonzero(mask)
    lead = tuple(np.full(rr.shape, i, np.intp) for i in leading)
    return CommitItem((*lead, rr, cc), label_id, object_row(label_id, mask, 0.9, 0.8, kind))


def test_commit_is_one_undo_step_and_fills_features(viewer):
    image, geometry, layers = _setup(viewer, np.zeros((20, 30)))
    out = layers.output
    a = np.zeros((20, 30), bool)
    a[2:6, 3:9] = True
    b = np.zeros((20, 30), bool)
    b[10:15, 10:20] = True
    assert commit_items(out, [_item(1, a), _item(2, b, kind="box")]) == [1, 2]
    assert (out.data[a] == 1).all() and (out.data[b] == 2).all()
    assert list(out.features.columns[: len(OBJECT_COLUMNS)]) == list(OBJECT_COLUMNS)
    assert out.features["index"].tolist() == [1, 2]
    assert out.features["area"].tolist() == [24, 50]
    assert out.features["prompt"].tolist() == ["points", "box"]
    c = np.zeros((20, 30), bool)
    c[0, 0] = True
    commit_items(out, [_item(3, c)])
    out.undo()  # removes only the last commit
    assert out.data[0, 0] == 0 and (out.data[a] == 1).all()
    out.undo()  # both objects of the first commit at once
    assert not out.data.any()
    out.redo()
    assert (out.data[b] == 2).all()
    # a later commit drops the rows of objects that were undone
    d = np.zeros((20, 30), bool)
    d[18:20, 0:3] = True
    commit_items(out, [_item(4, d)])
    assert out.features["index"].tolist() == [1, 2, 4]


def test_commit_into_an_nd_layer_and_shape_mismatch(viewer):
    image, geometry, layers = _setup(viewer, np.zeros((3, 20, 30)))
    mask = np.zeros((20, 30), bool)
    mask[5:8, 5:8] = True
    commit_items(layers.output, [_item(1, mask, leading=(2,))])
    assert layers.output.data[2][mask].tolist() == [1] * 9 and not layers.output.data[:2].any()
    with pytest.raises(ImageError):
        commit_items(layers.output, [_item(2, mask)])  # planned for a 2D layer


def test_viewer_state_is_per_viewer():
    v1, v2 = ViewerModel(), ViewerModel()
    s1 = ViewerState.for_viewer(v1)
    assert ViewerState.for_viewer(v1) is s1
    s2 = ViewerState.for_viewer(v2)
    assert s2 is not s1 and s2.cache is not s1.cache and s2.models is not s1.models


def test_indices_on_plane(viewer):
    from napari_sam_micro._napari.prompts import indices_on_plane

    image, geometry, layers = _setup(viewer, np.zeros((3, 20, 30)))
    layers.prompts.add(np.array([[2, 5, 6], [1, 7, 8], [2, 9, 10]]))
    layers.boxes.add_rectangles(np.array([[1, 1, 1], [1, 1, 5], [1, 5, 5], [1, 5, 1]]))
    assert indices_on_plane(layers.prompts, image, geometry, (2,)) == [0, 2]
    assert indices_on_plane(layers.boxes, image, geometry, (2,)) == []
    assert indices_on_plane(layers.boxes, image, geometry, (1,)) == [0]
