"""Tile plans and stitching (core.tiles): pure numpy, exact expectations."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_micro.core.preprocess import PreprocessConfig, PlaneNormalizer, measure_value_ranges, normalize_image
from napari_sam_micro.core.tiles import TileStitcher, core_object_ids, plan_tiles


def test_plan_partitions_the_plane_with_clipped_halo():
    tiles = plan_tiles((1000, 450), tile=300, halo=20)
    cover = np.zeros((1000, 450), int)
    for t in tiles:
        y0, y1, x0, x1 = t.core
        assert y1 - y0 <= 300 and x1 - x0 <= 300
        cover[y0:y1, x0:x1] += 1
        oy0, oy1, ox0, ox1 = t.outer
        assert (oy0, ox0) == (max(0, y0 - 20), max(0, x0 - 20))
        assert (oy1, ox1) == (min(1000, y1 + 20), min(450, x1 + 20))
    assert (cover == 1).all()
    assert len(tiles) == 4 * 2
    assert plan_tiles((100, 80), tile=512, halo=64)[0].outer == (0, 100, 0, 80)


def _disks(shape, centres, r):
    yy, xx = np.indices(shape)
    lab = np.zeros(shape, np.uint32)
    for k, (cy, cx) in enumerate(centres, start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return lab


def _tile_view(truth, tile, perturb=None):
    """What a tile 'segments': the truth in its outer window, renumbered, objects cut at its border."""
    sl = tile.slices
    lab = truth[sl].copy()
    ids = np.unique(lab)[1:]
    lut = np.zeros(int(truth.max()) + 1, np.uint32)
    lut[ids] = np.arange(len(ids), 0, -1)  # reversed numbering: ids differ from the truth's
    return lut[lab]


def test_core_object_ids_keeps_centroids_in_core():
    truth = _disks((200, 200), [(50, 95), (50, 105), (150, 150)], 4)
    tiles = plan_tiles((200, 200), tile=100, halo=20)
    t0 = tiles[0]  # core rows 0-100, cols 0-100
    lab = truth[t0.slices]
    kept = core_object_ids(lab, t0)
    assert sorted(kept.tolist()) == [1]  # (50, 105) has its centre in the right neighbour's core


def test_stitching_matches_truth_exactly_without_splits():
    rng = np.random.default_rng(1)
    centres = rng.uniform(8, 392, (60, 2))
    truth = _disks((400, 400), centres, 7)
    canvas = np.zeros(truth.shape, np.uint32)
    st = TileStitcher(canvas)
    for t in plan_tiles(truth.shape, tile=90, halo=16):
        st.add(t, _tile_view(truth, t))
    # same pixels labelled, and a one-to-one id correspondence (no object split or merged)
    assert ((canvas > 0) == (truth > 0)).all()
    pairs = np.unique(np.stack([truth[truth > 0], canvas[truth > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
    assert st.cut == 0
    table = st.table()
    assert table["index"] == list(range(1, int(canvas.max()) + 1))
    for i, a, y0, x0, y1, x1 in zip(*(table[c] for c in ("index", "area", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"))):
        ys, xs = np.nonzero(canvas == i)
        assert a == ys.size and (y0, x0, y1, x1) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)


def test_duplicate_in_halo_is_one_object():
    """Two tiles that both keep one object (centroids on either side of the core border) give one id."""
    tiles = plan_tiles((100, 200), tile=100, halo=30)
    left, right = tiles
    truth = _disks((100, 200), [(50, 99)], 10)
    st = TileStitcher(np.zeros((100, 200), np.uint32))
    lab_left = truth[left.slices].copy()
    st.add(left, lab_left, {"index": [1], "predicted_iou": [0.9], "point_x": [99.0], "point_y": [50.0]})
    lab_right = np.roll(truth, 2, axis=1)[right.slices].copy()  # the right tile sees it 2 px further right
    added = st.add(right, lab_right, {"index": [1], "predicted_iou": [0.8], "point_x": [31.0], "point_y": [50.0]})
    assert added == 0 and st.merged == 1
    assert np.unique(st.canvas).tolist() == [0, 1]
    table = st.table()
    assert table["index"] == [1] and table["predicted_iou"] == [0.9] and table["point_x"] == [99.0]
    assert table["area"] == [int(np.count_nonzero(st.canvas))]
    assert table["bbox_x1"] == [99 + 10 + 2 + 1]


def test_tile_coordinates_shift_to_plane():
    tiles = plan_tiles((100, 200), tile=100, halo=10)
    right = tiles[1]  # outer cols 90-200
    lab = np.zeros(right.shape, np.uint32)
    lab[40:50, 30:40] = 1
    st = TileStitcher(np.zeros((100, 200), np.uint32))
    st.add(right, lab, {"index": [1], "point_x": [35.0], "point_y": [45.0], "bbox_x0": [30], "prompt": ["seed"]})
    t = st.table()
    assert (t["bbox_y0"], t["bbox_x0"], t["bbox_y1"], t["bbox_x1"]) == ([40], [120], [50], [130])
    assert t["point_x"] == [125.0] and t["point_y"] == [45.0] and t["prompt"] == ["seed"]


def test_object_larger_than_halo_is_reported_cut():
    tiles = plan_tiles((100, 200), tile=100, halo=5)
    lab = np.zeros(tiles[0].shape, np.uint32)
    lab[40:60, 80:105] = 1  # reaches the outer border at col 104 (inner side)
    st = TileStitcher(np.zeros((100, 200), np.uint32))
    st.add(tiles[0], lab)
    assert st.cut == 1


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_measured_value_ranges_equal_the_whole_plane_stretch(monkeypatch, dtype):
    """Tiles normalised with the subsample's ranges equal crops of the normalised whole plane."""
    import napari_sam_micro.core.preprocess as pp

    monkeypatch.setattr(pp, "PERCENTILE_MAX_SAMPLES", 5000)  # force the strided subsample
    rng = np.random.default_rng(3)
    plane = (rng.gamma(2.0, 300.0, (300, 260))).astype(dtype)
    config = measure_value_ranges(plane)
    assert config.value_ranges is not None and config.key() != PreprocessConfig().key()
    whole = normalize_image(plane)
    tile = normalize_image(plane[100:200, 50:180], config)
    np.testing.assert_array_equal(tile, whole[100:200, 50:180])
    assert PlaneNormalizer(plane, config).value_ranges == config.value_ranges


def test_value_ranges_per_channel_checked():
    with pytest.raises(Exception, match="2 intensity ranges given for 3 channels"):
        PlaneNormalizer(np.zeros((10, 10, 3), np.uint16), PreprocessConfig(channel_axis=-1, value_ranges=((0, 1), (0, 2))))
