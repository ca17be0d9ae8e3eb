import numpy as np
import pytest

from napari_sam_micro.core.masks import (
    farthest_interior_point,
    fill_holes,
    keep_largest_component,
    mask_to_box_xyxy,
    postprocess_mask,
    remove_small_fragments,
    stability_score,
)


def test_stability_score_definition():
    logits = np.zeros((2, 3, 4, 4), np.float32)
    logits[0, 0] = [[3, 3, 0.5, -2], [3, 0.5, 0.5, -2], [-2] * 4, [-2] * 4]
    # > 1: 3 pixels; > -1: 6 pixels
    s = stability_score(logits, 0.0, 1.0)
    assert s.shape == (2, 3) and s.dtype == np.float32
    assert s[0, 0] == pytest.approx(3 / 6)
    assert s[0, 1] == 0.0  # all zeros: > -1 everywhere but > 1 nowhere
    # threshold shifts the bands
    assert stability_score(logits[0, 0], mask_threshold=2.5, offset=1.0) == pytest.approx(0.0)
    assert stability_score(logits[0, 0], mask_threshold=1.0, offset=0.4) == pytest.approx(3 / 3)
    # empty even at the low threshold -> 0
    assert stability_score(np.full((3, 3), -9.0)) == 0.0


def test_stability_score_random_matches_direct_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 16, 16))
    s = stability_score(logits, 0.0, 0.5)
    for k in range(5):
        assert s[k] == pytest.approx(np.sum(logits[k] > 0.5) / np.sum(logits[k] > -0.5), rel=1e-6)


def test_mask_to_box():
    m = np.zeros((3, 10, 12), bool)
    m[0, 2:5, 3:9] = True
    m[1, 9, 11] = True
    boxes = mask_to_box_xyxy(m)
    np.testing.assert_array_equal(boxes, [[3, 2, 8, 4], [11, 9, 11, 9], [0, 0, 0, 0]])
    np.testing.assert_array_equal(mask_to_box_xyxy(m[0]), [3, 2, 8, 4])


def test_fill_holes():
    m = np.zeros((7, 7), bool)
    m[1:6, 1:6] = True
    m[3, 3] = False
    out = fill_holes(m)
    assert out[3, 3] and out.sum() == 25
    assert not fill_holes(np.zeros((3, 3), bool)).any()


def _two_blobs():
    m = np.zeros((12, 12), bool)
    m[0:5, 0:5] = True  # 25 px
    m[8:10, 8:10] = True  # 4 px
    m[7, 7] = True  # diagonal neighbour of the small blob: same 8-connected fragment (5 px)
    return m


def test_remove_small_fragments():
    m = _two_blobs()
    out = remove_small_fragments(m, 6)
    assert out.sum() == 25 and not out[8, 8]
    out = remove_small_fragments(m, 5)  # 8-connectivity: the 5-px fragment stays
    assert out.sum() == 30
    out = remove_small_fragments(m, 100)  # all small -> keep the largest
    assert out.sum() == 25
    assert not remove_small_fragments(m, 100, keep_one=False).any()
    np.testing.assert_array_equal(remove_small_fragments(m, 0), m)


def test_keep_largest():
    out = keep_largest_component(_two_blobs())
    assert out.sum() == 25 and out[0, 0]
    assert not keep_largest_component(np.zeros((4, 4), bool)).any()


def test_postprocess_mask_order_and_copy():
    m = _two_blobs()
    m[2, 2] = False  # hole in the big blob
    out = postprocess_mask(m, fill_holes=True, keep_largest=True)
    assert out.sum() == 25 and not out[8, 8]
    plain = postprocess_mask(m)
    np.testing.assert_array_equal(plain, m)
    assert plain is not m
    out = postprocess_mask(m, min_fragment_area=6)
    assert out.sum() == 24 and not out[2, 2]


def test_farthest_interior_point_is_the_deepest_pixel_and_the_edge_counts_as_border():
    mask = np.zeros((40, 50), bool)
    mask[10:21, 5:36] = True  # 11 rows x 31 cols
    r, c, depth = farthest_interior_point(mask)
    assert mask[r, c] and r == 15 and 10 <= c <= 30 and depth == 6.0  # 6 px from the border (the best possible)
    edge = np.zeros((10, 10), bool)
    edge[:, :4] = True  # touches the image's left edge: column 0 is 1 px deep, not 5
    r, c, depth = farthest_interior_point(edge)
    assert c in (1, 2) and depth == 2.0
    with pytest.raises(ValueError):
        farthest_interior_point(np.zeros((4, 4), bool))
