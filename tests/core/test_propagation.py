"""Propagation strategy: prompts from the previous plane's mask, stop rules, planes to visit."""

import numpy as np
import pytest

from napari_sam_micro.core.errors import UserInputError
from napari_sam_micro.core.propagation import (
    STOP_AREA_JUMP,
    STOP_LOW_IOU,
    STOP_VANISHED,
    STOP_WAIST,
    StopRules,
    next_prompt,
    plane_sequence,
    stop_reason,
)


def _rect(shape=(50, 80), rows=(10, 20), cols=(30, 60)):
    m = np.zeros(shape, bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


def test_box_prompt_is_the_padded_box_in_xy_order():
    obj = next_prompt(_rect(), "box", box_pad=0.1)
    # rows 10..19, cols 30..59: longer side 29 px -> pad 0.1 * 29 + 1 = 3.9
    np.testing.assert_allclose(obj.box, [30 - 3.9, 10 - 3.9, 59 + 3.9, 19 + 3.9], atol=1e-4)
    assert obj.kind == "box" and obj.point_coords is None


def test_box_is_clipped_to_the_plane():
    obj = next_prompt(_rect(rows=(0, 5), cols=(70, 80)), "box", box_pad=0.5)
    assert obj.box[1] == 0 and obj.box[2] == 79


def test_box_and_point_puts_a_positive_click_inside_the_mask():
    mask = _rect()
    obj = next_prompt(mask, "box+point")
    (x, y), = obj.point_coords
    assert mask[int(y), int(x)] and obj.point_labels.tolist() == [1] and obj.kind == "box+points"


def test_empty_mask_and_unknown_mode_are_refused():
    with pytest.raises(ValueError):
        next_prompt(np.zeros((5, 5), bool))
    with pytest.raises(ValueError):
        next_prompt(_rect(), "mask-only")


def test_stop_rules():
    rules = StopRules(min_iou=0.6, min_area=10, max_area_ratio=2.0)
    assert stop_reason(100, 120, 0.9, rules) is None
    assert stop_reason(100, 5, 0.9, rules) == STOP_VANISHED
    assert stop_reason(100, 120, 0.5, rules) == STOP_LOW_IOU
    assert stop_reason(100, 120, float("nan"), rules) == STOP_LOW_IOU
    assert stop_reason(100, 201, 0.9, rules) == STOP_AREA_JUMP
    assert stop_reason(100, 49, 0.9, rules) == STOP_AREA_JUMP
    for bad in ({"min_iou": 1.5}, {"min_area": 0}, {"max_area_ratio": 0.5}, {"box_pad": -1}, {"waist_ratio": 1.0}):
        with pytest.raises(UserInputError):
            StopRules(**bad)


def test_plane_sequence_directions_and_range():
    assert plane_sequence(3, 8) == ([4, 5, 6, 7], [2, 1, 0])
    assert plane_sequence(3, 8, "forward", 1, 5) == ([4, 5], [])
    assert plane_sequence(3, 8, "backward", 1, 5) == ([], [2, 1])
    assert plane_sequence(0, 3, "both", None, 99) == ([1, 2], [])
    with pytest.raises(UserInputError, match="outside the range"):
        plane_sequence(6, 8, "both", 0, 4)
    with pytest.raises(UserInputError):
        plane_sequence(1, 3, "up")


def test_waist_rule_stops_where_the_area_grows_again_after_narrowing():
    rules = StopRules(max_area_ratio=2.0, waist_ratio=0.7)
    assert stop_reason(60, 80, 0.9, rules, peak_area=100) == STOP_WAIST  # 60 < 0.7 * 100, then growing
    assert stop_reason(60, 50, 0.9, rules, peak_area=100) is None  # still narrowing: the pole
    assert stop_reason(80, 90, 0.9, rules, peak_area=100) is None  # 80 is no waist
    assert stop_reason(60, 80, 0.9, StopRules(max_area_ratio=2.0), peak_area=100) is None  # off by default
