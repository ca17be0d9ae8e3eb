import itertools

import numpy as np
import pytest

from napari_sam_micro.core.metrics import (
    DEFAULT_THRESHOLDS,
    instance_scores,
    iou_matrix,
    mask_iou,
    match_instances,
)


def _hand_made():
    gt = np.zeros((70, 70), np.uint16)
    pred = np.zeros((70, 70), np.uint16)
    gt[0:10, 0:10] = 1  # area 100
    pred[0:10, 0:5] = 5  # inside gt 1, area 50 -> IoU 0.5
    gt[20:30, 20:30] = 2  # area 100
    pred[20:30, 21:30] = 7  # area 90 -> IoU 0.9
    gt[40:50, 40:50] = 3  # missed
    pred[60:62, 60:62] = 9  # false positive
    return gt, pred


def _brute_iou(gt, pred):
    g_ids = [i for i in np.unique(gt) if i]
    p_ids = [j for j in np.unique(pred) if j]
    out = np.zeros((len(g_ids), len(p_ids)))
    for a, g in enumerate(g_ids):
        for b, p in enumerate(p_ids):
            inter = np.sum((gt == g) & (pred == p))
            union = np.sum((gt == g) | (pred == p))
            out[a, b] = inter / union
    return np.array(g_ids), np.array(p_ids), out


def test_iou_matrix_hand_made():
    gt, pred = _hand_made()
    g, p, iou = iou_matrix(gt, pred)
    np.testing.assert_array_equal(g, [1, 2, 3])
    np.testing.assert_array_equal(p, [5, 7, 9])
    expected = np.zeros((3, 3))
    expected[0, 0] = 50 / 100
    expected[1, 1] = 90 / 100
    np.testing.assert_allclose(iou, expected)


@pytest.mark.parametrize("offset", [0, 10**9])
def test_iou_matrix_matches_brute_force_random(offset):
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 6, size=(40, 30)).astype(np.int64)
    pred = rng.integers(0, 5, size=(40, 30)).astype(np.int64)
    # Sparse huge ids take the np.unique path.
    gt = np.where(gt > 0, gt + offset, 0)
    g, p, iou = iou_matrix(gt, pred)
    bg, bp, biou = _brute_iou(gt, pred)
    np.testing.assert_array_equal(g, bg)
    np.testing.assert_array_equal(p, bp)
    np.testing.assert_allclose(iou, biou)


def test_iou_matrix_3d_and_shape_mismatch():
    gt = np.zeros((2, 5, 5), np.uint8)
    gt[0, :2] = 1
    gt[1, :2] = 1
    pred = gt.copy()
    pred[1] = 0
    _, _, iou = iou_matrix(gt, pred)
    assert iou[0, 0] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        iou_matrix(gt, pred[0])


def test_match_maximises_number_of_pairs():
    iou = np.array([[0.6, 0.5], [0.55, 0.0]])
    gi, pj = match_instances(iou, threshold=0.3)
    assert sorted(zip(gi.tolist(), pj.tolist())) == [(0, 1), (1, 0)]


def test_match_against_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(20):
        iou = rng.random((4, 3)) * (rng.random((4, 3)) > 0.4)
        thr = 0.3
        gi, pj = match_instances(iou, thr)
        assert len(set(gi.tolist())) == gi.size and len(set(pj.tolist())) == pj.size
        assert np.all(iou[gi, pj] >= thr)
        best = (0, 0.0)
        for perm in itertools.permutations(range(4), 3):
            pairs = [(perm[c], c) for c in range(3) if iou[perm[c], c] >= thr]
            score = (len(pairs), sum(iou[r, c] for r, c in pairs))
            best = max(best, score)
        assert gi.size == best[0]
        assert iou[gi, pj].sum() == pytest.approx(best[1])


def test_match_empty():
    gi, pj = match_instances(np.zeros((0, 3)), 0.5)
    assert gi.size == 0 and pj.size == 0
    gi, pj = match_instances(np.full((2, 2), 0.2), 0.5)
    assert gi.size == 0


def test_instance_scores_hand_made():
    gt, pred = _hand_made()
    s = instance_scores(gt, pred)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 1)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert s["per_object_iou"] == pytest.approx({1: 0.5, 2: 0.9})
    assert s["best_iou"] == pytest.approx({1: 0.5, 2: 0.9, 3: 0.0})
    assert s["mean_matched_iou"] == pytest.approx(0.7)
    assert sorted(s["ap"]) == list(DEFAULT_THRESHOLDS)
    assert s["ap"][0.5] == pytest.approx(2 / 4)
    for t in DEFAULT_THRESHOLDS[1:-1]:  # 0.55 .. 0.9: only the IoU 0.9 pair
        assert s["ap"][t] == pytest.approx(1 / 5), t
    assert s["ap"][0.95] == 0.0
    assert s["map"] == pytest.approx((0.5 + 8 * 0.2 + 0.0) / 10)
    assert [m[:2] for m in s["matches"]] == [(1, 5), (2, 7)]


def test_instance_scores_perfect_and_empty():
    gt, _ = _hand_made()
    s = instance_scores(gt, gt * 3)
    assert s["f1"] == 1.0 and s["map"] == 1.0 and s["mean_matched_iou"] == 1.0
    empty = np.zeros_like(gt)
    s = instance_scores(empty, empty)
    assert (s["tp"], s["fp"], s["fn"], s["f1"], s["map"]) == (0, 0, 0, 1.0, 1.0)
    assert np.isnan(s["mean_matched_iou"])
    s = instance_scores(gt, empty)
    assert (s["tp"], s["fn"], s["precision"], s["recall"], s["f1"], s["map"]) == (0, 3, 0.0, 0.0, 0.0, 0.0)
    s = instance_scores(empty, gt)
    assert (s["fp"], s["f1"], s["map"]) == (3, 0.0, 0.0)


def test_mask_iou():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert mask_iou(a, b) == 1.0
    a[:2] = True
    b[:, :2] = True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    with pytest.raises(ValueError):
        mask_iou(a, b[:2])


@pytest.mark.data
def test_real_labels(shared_data):
    tifffile = pytest.importorskip("tifffile")
    gt = tifffile.imread(shared_data / "dsb2018-train" / "labels" / "00071198d059ba7f.tif")
    n = len(np.unique(gt)) - 1
    s = instance_scores(gt, gt)
    assert s["n_gt"] == n and s["tp"] == n and s["map"] == 1.0
    # Shift the prediction by two pixels: objects still match at 0.5 but IoUs drop below 1,
    # and the per-object IoUs agree with a direct computation.
    pred = np.roll(gt, 2, axis=1)
    s = instance_scores(gt, pred)
    assert 0 < s["mean_matched_iou"] < 1 and s["map"] < 1
    for g, p, v in s["matches"][:5]:
        assert v == pytest.approx(mask_iou(gt == g, pred == p))


def test_check_label_image_rejects_what_truncation_would_corrupt():
    from napari_sam_micro.core.errors import UserInputError
    from napari_sam_micro.core.metrics import check_label_image

    assert check_label_image(np.array([[0.0, 2.0]], np.float32)).dtype == np.int64
    assert check_label_image(np.array([[True, False]])).dtype == np.uint8
    for bad, match in [
        (np.array([[0.0, 1.5]]), r"gt\.tif is not a label image: .*1\.5"),
        (np.array([[0.0, np.nan]]), "not a label image"),
        (np.array([[0.0, np.inf]]), "not a label image"),
        (np.array([[0, -3]]), "negative values .*-3"),
        (np.array([["a"]]), "not a label image"),
    ]:
        with pytest.raises(UserInputError, match=match):
            check_label_image(bad, "gt.tif")
    with pytest.raises(UserInputError, match="predicted label image .*not a label image"):
        instance_scores(np.zeros((3, 3), np.uint8), np.full((3, 3), 0.25))
