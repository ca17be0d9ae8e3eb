import numpy as np
import pytest

from napari_sam_micro.core.metrics import iou_matrix
from napari_sam_micro.core.overlap import link_labels, link_stack, match_overlaps, overlaps


def _disk(shape, r, c, rad):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - r) ** 2 + (xx - c) ** 2 <= rad**2


def test_overlaps_agree_with_the_dense_iou_matrix():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 6, (40, 50))
    b = rng.integers(0, 5, (40, 50))
    ov = overlaps(a, b)
    ga, gb, iou = iou_matrix(a, b)
    score = ov.score("iou")
    for ia, ib, s in zip(ov.ids_a, ov.ids_b, score):
        assert s == pytest.approx(iou[list(ga).index(ia), list(gb).index(ib)])
    assert len(ov.ids_a) == np.count_nonzero(iou)


def test_match_is_one_to_one_and_best_first():
    shape = (60, 60)
    a = np.zeros(shape, int)
    b = np.zeros(shape, int)
    a[_disk(shape, 20, 20, 8)] = 3
    a[_disk(shape, 40, 40, 8)] = 7
    b[_disk(shape, 21, 21, 8)] = 1  # shifted copy of 3
    b[_disk(shape, 40, 44, 8)] = 2  # further shifted copy of 7
    b[_disk(shape, 5, 50, 3)] = 9  # new
    ids_a, ids_b, s = match_overlaps(a, b, min_score=0.3)
    assert dict(zip(ids_a.tolist(), ids_b.tolist())) == {3: 1, 7: 2}
    assert np.all(np.diff(s) <= 0) and s[0] > 0.7


def test_link_stack_keeps_ids_along_the_axis_and_numbers_new_objects():
    shape = (50, 50)
    planes = []
    for k in range(4):
        p = np.zeros(shape, np.uint16)
        p[_disk(shape, 15 + k, 15, 6)] = 5 if k % 2 else 1  # one object drifting, renumbered per plane
        if k >= 2:
            p[_disk(shape, 35, 35, 6)] = 2 if k == 2 else 8  # appears on plane 2
        planes.append(p)
    linked = link_stack(np.stack(planes, axis=1), axis=1)
    assert linked.shape == (50, 4, 50)
    first = [np.unique(linked[:, k][_disk(shape, 15 + k, 15, 5)]) for k in range(4)]
    assert all(len(f) == 1 and f[0] == first[0][0] for f in first)
    second = [np.unique(linked[:, k][_disk(shape, 35, 35, 5)]) for k in (2, 3)]
    assert second[0][0] == second[1][0] != first[0][0]
    assert set(np.unique(linked)) == {0, 1, 2}


def test_link_labels_without_overlap_gives_fresh_ids():
    prev = np.zeros((10, 10), int)
    prev[:3, :3] = 4
    cur = np.zeros((10, 10), int)
    cur[6:, 6:] = 1
    out, nxt = link_labels(prev, cur, next_id=5)
    assert set(np.unique(out)) == {0, 5} and nxt == 6
    empty, nxt2 = link_labels(prev, np.zeros_like(cur), next_id=5)
    assert not empty.any() and nxt2 == 5
