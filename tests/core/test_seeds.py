"""core.seeds: object-centre seeds by classical means, mask choice, overlap resolution."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_micro.core.labels import OBJECT_COLUMNS, object_row
from napari_sam_micro.core.seeds import (
    add_uncovered_masks,
    choose_seed_mask,
    everything_seeds,
    find_seeds,
    foreground_mask,
    foreground_threshold,
    otsu_threshold,
    resolve_seeded_masks,
    uncovered_seeds,
)

CENTRES = [(20, 20), (20, 60), (55, 30), (60, 75)]


def _blobs(shape=(80, 96), radius=7, bright=True, touching=False, seed=0):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    centres = list(CENTRES)
    if touching:
        centres += [(20, 20 + 2 * radius - 2)]  # overlaps the first disc
    img = np.zeros(shape, np.float32)
    for r, c in centres:
        img[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = 0.8
    img += np.random.default_rng(seed).normal(0, 0.03, shape).astype(np.float32)
    img = np.clip(img + 0.1, 0, 1)
    return (img if bright else 1 - img), centres


def _matched(seeds, centres, tol=3.0):
    d = np.linalg.norm(seeds[:, None, :] - np.asarray(centres, float)[None], axis=-1)
    return d.min(axis=0) <= tol, d.min(axis=1) <= tol


@pytest.mark.parametrize("bright", [True, False])
def test_one_seed_per_blob_near_its_centre_for_both_polarities(bright):
    img, centres = _blobs(bright=bright)
    seeds = find_seeds(img)
    assert seeds.shape == (len(centres), 2)
    found, genuine = _matched(seeds, centres, tol=1.5)
    assert found.all() and genuine.all()


def test_rgb_input_and_forced_wrong_polarity():
    img, centres = _blobs()
    seeds = find_seeds(np.repeat(img[..., None], 3, axis=-1))
    assert _matched(seeds, centres, tol=1.5)[0].all()
    # forcing "dark" on bright blobs seeds the background, not the blobs
    wrong = find_seeds(img, polarity="dark")
    assert all(img[r, c] < 0.5 for r, c in np.round(wrong).astype(int))


def test_touching_blobs_get_two_seeds_and_min_distance_merges_them():
    img, centres = _blobs(touching=True)
    seeds = find_seeds(img, min_distance=5)
    found, _ = _matched(seeds, centres, tol=3.0)
    assert found.all()
    merged = find_seeds(img, min_distance=20)
    assert len(merged) < len(seeds)
    d = np.max(np.abs(merged[:, None] - merged[None]), axis=-1) + np.eye(len(merged)) * 1e9
    assert d.min() >= 20


@pytest.mark.parametrize("bright", [True, False])
def test_everything_seeds_measure_the_threshold_once_and_return_it(bright, monkeypatch):
    import napari_sam_micro.core.seeds as seeds_mod

    img, centres = _blobs(bright=bright)
    own = foreground_threshold(img)
    calls = []
    measure = seeds_mod.background_radius
    monkeypatch.setattr(seeds_mod, "background_radius", lambda *a, **k: calls.append(1) or measure(*a, **k))
    seeds, threshold = everything_seeds(img, min_distance=4)
    assert threshold == own and len(calls) == 1
    # the same seeds and second-pass foreground as with the image's own threshold, radius not measured again
    np.testing.assert_array_equal(seeds, find_seeds(img, min_distance=4))
    calls.clear()
    np.testing.assert_array_equal(foreground_mask(img, threshold=threshold)[0], foreground_mask(img)[0])
    assert len(calls) == 1  # only the call without the threshold measured it
    # a tile's caller passes the whole plane's threshold through
    given = (10.0, own[1], own[2])  # above every pixel: nothing is foreground
    none, passed = everything_seeds(img, threshold=given)
    assert passed == given and len(none) == 0
    # the threshold is measured with the caller's polarity and background options, as find_seeds would
    for options in ({"polarity": "dark"}, {"background": False}):
        np.testing.assert_array_equal(everything_seeds(img, **options)[0], find_seeds(img, **options))


def test_empty_and_constant_images_have_no_seeds():
    assert find_seeds(np.zeros((32, 32), np.float32)).shape == (0, 2)
    assert find_seeds(np.full((32, 32), 0.5, np.float32)).shape == (0, 2)


def test_otsu_and_foreground():
    v = np.concatenate([np.full(100, 0.1), np.full(30, 0.9)])
    t = otsu_threshold(v)
    assert 0.1 < t < 0.9
    img, _ = _blobs()
    mask, signal = foreground_mask(img)
    assert mask.mean() < 0.5 and signal.shape == img.shape
    with pytest.raises(ValueError):
        foreground_mask(img, polarity="up")


def test_choose_seed_mask_prefers_stable_masks_above_the_floor():
    # a stable object mask rated 0.55, an unstable blob rated 0.9 is still chosen when only it passes
    assert choose_seed_mask([0.55, 0.5, 0.9], [0.8, 0.6, 0.03], iou_floor=0.4) == 0
    assert choose_seed_mask([0.3, 0.5, 0.9], [0.8, 0.6, 0.03], iou_floor=0.4) == 1
    assert choose_seed_mask([0.1, 0.2, 0.3], [0.2, 0.9, 0.1], iou_floor=0.4) == 1  # none passes: most stable
    assert choose_seed_mask([0.6, 0.5], [0.7, 0.7]) == 0  # tie on stability: higher predicted IoU
    with pytest.raises(ValueError):
        choose_seed_mask([], [])


def test_resolve_seeded_masks_removes_duplicates_and_cleans():
    shape = (40, 40)
    a = np.zeros(shape, bool)
    a[5:15, 5:15] = True
    a[9:11, 9:11] = False  # a hole
    a[30, 30] = True  # a speck away from it
    dup = np.zeros(shape, bool)
    dup[5:15, 6:15] = True
    b = np.zeros(shape, bool)
    b[20:30, 20:35] = True
    tiny = np.zeros(shape, bool)
    tiny[0, 0] = True
    labels, table = resolve_seeded_masks([a, dup, b, tiny], [0.9, 0.5, 0.8, 0.9], [0.9, 0.9, 0.9, 0.9], shape, min_area=5)
    assert labels.dtype == np.uint32 and labels.shape == shape
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert table["index"] == [1, 2]
    one = labels == 1
    assert one[5:15, 5:15].all() and not one[30, 30]  # holes filled, speck dropped
    assert (labels == 2).sum() == 150
    assert table["area"] == [100, 150] and table["prompt"] == ["seed", "seed"]
    empty, t2 = resolve_seeded_masks([], [], [], shape)
    assert not empty.any() and t2["index"] == []


def _disc(shape, centre, radius):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def test_uncovered_seeds_find_the_unlabelled_object_and_ignore_rims_of_labelled_ones():
    shape = (80, 96)
    objects = [((20, 20), 8), ((20, 36), 8), ((60, 70), 6)]  # the first two touch
    foreground = np.zeros(shape, bool)
    for c, r in objects:
        foreground |= _disc(shape, c, r)
    labels = np.zeros(shape, np.uint32)
    labels[_disc(shape, (20, 20), 7)] = 1  # one pixel short of its object all round: a rim is left
    labels[_disc(shape, (60, 70), 6)] = 2
    seeds = uncovered_seeds(foreground, labels, min_area=30)
    assert seeds.shape == (1, 2)
    assert np.linalg.norm(seeds[0] - [20, 37]) <= 2.5  # inside the uncovered disc, away from the labelled one
    # everything covered (or too small to count): no seeds
    labels[_disc(shape, (20, 36), 8) & (labels == 0)] = 3
    assert uncovered_seeds(foreground, labels, min_area=30).shape == (0, 2)
    small = np.zeros(shape, np.uint32)
    assert uncovered_seeds(foreground, small, min_area=500).shape == (0, 2)  # each disc < 500 px
    with pytest.raises(ValueError):
        uncovered_seeds(foreground, labels[:10])


def test_add_uncovered_masks_adds_new_objects_and_never_changes_existing_ones():
    shape = (60, 60)
    labels = np.zeros(shape, np.uint32)
    labels[_disc(shape, (15, 15), 6)] = 1
    labels[_disc(shape, (45, 45), 6)] = 2
    first = [object_row(i, labels == i, 0.9, 0.9, "seed") for i in (1, 2)]
    table = {c: [r[c] for r in first] for c in OBJECT_COLUMNS}
    new = _disc(shape, (15, 27), 6)  # touches object 1: a few pixels overlap it
    again = _disc(shape, (45, 45), 7)  # object 2 once more
    speck = _disc(shape, (45, 10), 1)
    out, rows = add_uncovered_masks(labels, table, [again, new, speck], [0.9, 0.8, 0.9], [0.9, 0.9, 0.9], min_area=10)
    assert out is not labels and labels.max() == 2  # the input is not modified
    assert np.array_equal(out[labels > 0], labels[labels > 0])  # first-pass objects untouched
    assert out.max() == 3 and np.array_equal(out == 3, new & (labels == 0))
    assert rows["index"] == [1, 2, 3] and rows["area"][2] == int((out == 3).sum())
    assert rows["prompt"][2] == "seed" and rows["predicted_iou"][2] == pytest.approx(0.8)
    assert len(table["index"]) == 2  # the input table is not modified
    # nothing to add
    out2, rows2 = add_uncovered_masks(labels, table, [], [], [])
    assert np.array_equal(out2, labels) and rows2["index"] == [1, 2]


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("bright", [True, False])
def test_a_tile_with_the_planes_threshold_finds_the_planes_seeds(bright, background):
    """Two bright fields and a dim one: a tile of mostly the dim field, thresholded on its own, finds
    objects the whole plane does not (so tiled and untiled results disagree); with the plane's
    threshold (and background radius) it finds the plane's seeds and foreground."""
    img, _ = _blobs(bright=True)
    dim = 0.1 + 0.4 * (img - 0.1)  # the same objects, 0.4 x as bright above the background
    plane = np.concatenate([img, img, dim], axis=1)  # (80, 288)
    if not bright:
        plane = 1 - plane
    threshold = foreground_threshold(plane, background=background)
    assert threshold[1] == ("bright" if bright else "dark")
    assert (threshold[2] > 0) == background
    x0 = 96  # the tile: the second bright field and the dim field
    tile = plane[:, x0:]

    def inside(seeds, offset, start=x0 + 8):
        return seeds[seeds[:, 1] + offset >= start]

    whole = find_seeds(plane, background=background)
    if not background:  # what the shared threshold is for (with the background removed the tile agrees anyway)
        assert len(inside(find_seeds(tile, background=False), x0, 192)) != len(inside(whole, 0, 192))
    shared = find_seeds(tile, threshold=threshold)
    assert len(inside(whole, 0)) >= 4
    np.testing.assert_allclose(inside(shared, x0) + [0, x0], inside(whole, 0), atol=1.0)
    mask, _ = foreground_mask(tile, threshold=threshold)
    np.testing.assert_array_equal(mask[:, 192 - x0 + 8:], foreground_mask(plane, background=background)[0][:, 200:])