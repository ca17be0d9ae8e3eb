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


def _disc(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_split_at_waists_cuts_stacked_nuclei_and_drops_one_plane_fragments():
    from napari_sam_micro.core.overlap import split_at_waists

    shape = (40, 40)
    # one linked id (5) for two nuclei stacked in z at the same place: radii 4 6 8 6 4 | 5 7 9 7 5,
    # and a stray one-plane fragment (id 9) on plane 2; a single wide nucleus (id 3) elsewhere
    radii = [4, 6, 8, 6, 4, 5, 7, 9, 7, 5]
    stack = np.zeros((len(radii), *shape), np.int32)
    for z, r in enumerate(radii):
        stack[z][_disc(shape, (12, 12), r)] = 5
        stack[z][_disc(shape, (30, 30), 6 if 2 <= z <= 7 else 0)] = 3 if 2 <= z <= 7 else 0
    stack[2][_disc(shape, (32, 8), 2)] = 9
    out = split_at_waists(stack, axis=0, ratio=0.85, min_planes=2)
    first, second = out[2][12, 12], out[7][12, 12]
    assert first and second and first != second
    assert set(np.unique(out[:5][stack[:5] == 5])) == {first} and set(np.unique(out[5:][stack[5:] == 5])) == {second}
    assert out[2][32, 8] == 0  # the one-plane fragment is gone
    assert len({int(out[z][30, 30]) for z in range(2, 8)}) == 1 and out[4][30, 30] not in (0, first, second)
    assert sorted(np.unique(out).tolist()) == [0, 1, 2, 3]
    # along another axis, and a shallow waist kept whole at a small ratio
    assert np.array_equal(np.moveaxis(split_at_waists(np.moveaxis(stack, 0, 2), axis=2, min_planes=2), 2, 0), out)
    kept = split_at_waists(stack, ratio=0.2)  # the waist is a quarter of the peaks: kept at 0.2
    assert len(np.unique(kept[stack == 5])) == 1 and kept[2][32, 8] != 0
