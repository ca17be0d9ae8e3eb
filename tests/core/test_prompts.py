import numpy as np
import pytest

from napari_sam_micro.core.errors import PromptError, UserInputError
from napari_sam_micro.core.prompts import (
    ObjectPrompt,
    Prompts,
    batch_boxes,
    boxes_from_napari_rectangles,
    object_prompts,
    points_from_napari,
    prompts_from_napari,
)

HW = (100, 200)  # 100 rows, 200 columns


def test_points_flip_row_col_to_xy():
    xy, lab = points_from_napari([[10, 150], [90.4, 3.5]], [True, False], HW)
    assert xy.dtype == np.float32 and lab.dtype == np.int32
    np.testing.assert_allclose(xy, [[150, 10], [3.5, 90.4]], rtol=1e-6)
    np.testing.assert_array_equal(lab, [1, 0])


def test_points_nd_use_last_two_axes_and_int_labels():
    xy, lab = points_from_napari(np.array([[4, 10, 20], [4, 30, 40]]), np.array([1, 0]), HW)
    np.testing.assert_allclose(xy, [[20, 10], [40, 30]])
    np.testing.assert_array_equal(lab, [1, 0])


def test_points_on_border_are_clipped_inside():
    xy, _ = points_from_napari([[-0.4, 199.4]], [1], HW)
    np.testing.assert_allclose(xy, [[199, 0]])


@pytest.mark.parametrize("point", [[100, 5], [5, 200], [-1, 5], [5, -3]])
def test_point_outside_raises_clear_message(point):
    with pytest.raises(PromptError) as err:
        points_from_napari([[1, 1], point], [1, 1], HW)
    msg = str(err.value)
    assert f"row {point[0]}" in msg and f"column {point[1]}" in msg
    assert "200 × 100 pixels" in msg
    assert isinstance(err.value, UserInputError)


def test_nan_point_rejected():
    with pytest.raises(PromptError, match="NaN"):
        points_from_napari([[np.nan, 3]], [1], HW)


def test_bad_labels():
    with pytest.raises(PromptError):
        points_from_napari([[1, 1]], [2], HW)
    with pytest.raises(ValueError):
        points_from_napari([[1, 1], [2, 2]], [1], HW)


def test_axis_aligned_rectangle():
    rect = np.array([[10, 20], [10, 60], [40, 60], [40, 20]], float)  # (row, col) vertices
    boxes = boxes_from_napari_rectangles([rect], HW)
    np.testing.assert_allclose(boxes, [[20, 10, 60, 40]])
    assert boxes.dtype == np.float32


def test_rotated_rectangle_uses_bounding_box_and_nd_vertices():
    # A square rotated by 45 degrees around (50, 100) with half-diagonal 20, plus a leading z axis.
    c = np.array([50.0, 100.0])
    verts = np.array([c + [-20, 0], c + [0, 20], c + [20, 0], c + [0, -20]])
    verts = np.concatenate([np.full((4, 1), 3.0), verts], axis=1)
    boxes = boxes_from_napari_rectangles(np.stack([verts]), HW)
    np.testing.assert_allclose(boxes, [[80, 30, 120, 70]])


def test_rectangle_clipped_to_image():
    rect = np.array([[-10, 180], [-10, 250], [30, 250], [30, 180]], float)
    np.testing.assert_allclose(boxes_from_napari_rectangles([rect], HW), [[180, 0, 199, 30]])


def test_rectangle_outside_or_without_area_rejected():
    outside = np.array([[120, 10], [120, 20], [130, 20], [130, 10]], float)
    with pytest.raises(PromptError, match="Box 2.*outside"):
        boxes_from_napari_rectangles([np.array([[0, 0], [0, 5], [5, 5], [5, 0]]), outside], HW)
    flat = np.array([[10, 10], [10, 30], [10, 30], [10, 10]], float)
    with pytest.raises(PromptError, match="no area"):
        boxes_from_napari_rectangles([flat], HW)


def test_prompts_validates_and_is_read_only():
    p = Prompts([[1, 2]], [1], np.zeros((0, 4)))
    assert p.points_xy.shape == (1, 2) and p.boxes_xyxy.shape == (0, 4)
    with pytest.raises(ValueError):
        p.points_xy[0, 0] = 5
    with pytest.raises(ValueError):
        Prompts([[1, 2]], [1, 0])
    mine = np.array([[1, 2]], np.float32)
    Prompts(mine, [1])
    mine[0, 0] = 3  # the caller's array stays writable


def test_object_prompts_empty_and_negative_only():
    with pytest.raises(PromptError, match="Add a point or draw a box first"):
        object_prompts(Prompts())
    with pytest.raises(PromptError, match="positive"):
        object_prompts(Prompts([[1, 2]], [0]))


def test_object_prompts_points_only():
    objs = object_prompts(Prompts([[1, 2], [3, 4]], [1, 0]))
    assert len(objs) == 1 and objs[0].kind == "points" and objs[0].box is None
    pc, pl, bx = objs[0].decoder_args()
    assert pc.shape == (1, 2, 2) and pl.shape == (1, 2) and bx is None
    assert objs.warnings == []


def test_object_prompts_single_box_with_points():
    objs = object_prompts(Prompts([[5, 5], [150, 90]], [1, 0], [[0, 0, 10, 10]]))
    assert len(objs) == 1 and objs[0].kind == "box+points"
    assert objs[0].point_coords.shape == (2, 2)  # every point, even outside the single box
    assert object_prompts(Prompts(boxes_xyxy=[[0, 0, 10, 10]]))[0].kind == "box"


def test_object_prompts_several_boxes_assign_points():
    boxes = [[0, 0, 50, 50], [10, 10, 20, 20], [100, 0, 150, 50]]
    pts = [[15, 15], [40, 40], [120, 10], [190, 90]]  # smallest box 1, box 0, box 2, none
    objs = object_prompts(Prompts(pts, [1, 0, 1, 1], boxes))
    assert [o.kind for o in objs] == ["box+points", "box+points", "box+points"]
    np.testing.assert_allclose(objs[0].point_coords, [[40, 40]])
    np.testing.assert_array_equal(objs[0].point_labels, [0])
    np.testing.assert_allclose(objs[1].point_coords, [[15, 15]])
    np.testing.assert_allclose(objs[2].point_coords, [[120, 10]])
    np.testing.assert_allclose(objs[2].box, boxes[2])
    assert len(objs.warnings) == 1 and "1 point" in objs.warnings[0]


def test_batch_boxes():
    objs = object_prompts(Prompts(boxes_xyxy=[[0, 0, 5, 5], [1, 1, 9, 9]]))
    b = batch_boxes(objs)
    assert b.shape == (2, 4) and b.dtype == np.float32
    with pytest.raises(ValueError):
        batch_boxes([ObjectPrompt(np.zeros((1, 2)), np.ones(1), None, "points")])


def test_prompts_from_napari_combines():
    p = prompts_from_napari([[10, 20]], [True], [np.array([[0, 0], [0, 50], [50, 50], [50, 0]])], HW)
    np.testing.assert_allclose(p.points_xy, [[20, 10]])
    np.testing.assert_allclose(p.boxes_xyxy, [[0, 0, 50, 50]])
    assert prompts_from_napari(None, None, None, HW).is_empty


def test_prompts_reject_nan_coordinates_with_a_message():
    """Issue 12.8: a NaN point reached the model and failed with a bare ValueError."""
    with pytest.raises(PromptError, match="NaN"):
        Prompts(points_xy=[[np.nan, 3.0]], point_labels=[1])
    with pytest.raises(PromptError, match="NaN"):
        Prompts(boxes_xyxy=[[0.0, 0.0, np.inf, 4.0]])


def test_prompts_check_inside():
    from napari_sam_micro.core.prompts import check_inside

    Prompts(points_xy=[[-0.5, 99.5]], point_labels=[1]).check_inside((100, 50))
    with pytest.raises(PromptError, match=r"\(row 3, column 5000\) is outside the image, which is 50 × 100"):
        Prompts(points_xy=[[5000.0, 3.0]], point_labels=[1]).check_inside((100, 50))
    with pytest.raises(PromptError, match="Box 2 .* completely outside"):
        check_inside((100, 50), boxes_xyxy=[[0, 0, 10, 10], [60, 0, 70, 10]])
    check_inside((100, 50), boxes_xyxy=[[40, 90, 70, 120]])  # partly on the image


def test_prompts_from_sam_are_napari_prompts_in_xy_order():
    from napari_sam_micro.core.prompts import prompts_from_napari, prompts_from_sam

    hw = (50, 80)
    sam = prompts_from_sam([[70.0, 10.0], [79.3, 49.2]], [1, 0], [[75, 45, 5, 2]], hw)
    nap = prompts_from_napari([[10.0, 70.0], [49.2, 79.3]], [1, 0], [[[45, 75], [2, 5]]], hw)
    np.testing.assert_array_equal(sam.points_xy, nap.points_xy)
    np.testing.assert_array_equal(sam.boxes_xyxy, [[5, 2, 75, 45]])  # corners in any order
    np.testing.assert_array_equal(sam.points_xy[1], [79, 49])  # within half a pixel: clipped inside
    with pytest.raises(PromptError, match=r"\(row 10, column 90\) is outside the image"):
        prompts_from_sam([[90, 10]], None, None, hw)
    with pytest.raises(PromptError, match="no area"):
        prompts_from_sam(None, None, [[5, 5, 5, 20]], hw)
