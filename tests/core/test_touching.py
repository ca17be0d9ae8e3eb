"""Touching nuclei: h-maxima seeds and masks clipped to their watershed basin (core.touching)."""

import numpy as np

from napari_sam_micro.core.seeds import find_seeds
from napari_sam_micro.core.touching import TOUCHING_H, clip_merged_masks, seed_basins, touching_fraction


def _disk(shape, centre, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def _touching_pairs(shape=(160, 200), radius=10, gap=17):
    """Pairs of equal disks whose centres are ``gap`` px apart (overlapping: one foreground blob each)."""
    labels = np.zeros(shape, np.int32)
    centres = []
    for k, (r, c) in enumerate([(40, 40), (40, 120), (115, 60), (115, 140)]):
        for j, centre in enumerate([(r, c), (r, c + gap)] if k % 2 == 0 else [(r, c), (r + gap, c)]):
            labels[_disk(shape, centre, radius) & (labels == 0)] = 2 * k + j + 1
            centres.append(centre)
    image = np.where(labels > 0, 0.8, 0.1).astype(np.float32)
    image += np.random.default_rng(0).normal(0, 0.01, shape).astype(np.float32)
    return image, labels, np.array(centres, float)


def test_touching_pairs_get_one_seed_per_disk():
    image, labels, _ = _touching_pairs()
    seeds = find_seeds(image, h=TOUCHING_H)
    hit = labels[np.round(seeds[:, 0]).astype(int), np.round(seeds[:, 1]).astype(int)]
    assert sorted(hit.tolist()) == list(range(1, 9))


def test_h_maxima_drop_the_bumps_of_one_irregular_nucleus():
    shape = (120, 120)
    blob = _disk(shape, (60, 60), 20) | _disk(shape, (60, 80), 7)  # a disk with a shallow bump
    image = np.where(blob, 0.8, 0.1).astype(np.float32)
    assert len(find_seeds(image, h=TOUCHING_H)) == 1


def test_merged_mask_is_clipped_to_its_basin():
    image, labels, centres = _touching_pairs()
    seeds = centres[:2]
    fg = labels > 0
    basins = seed_basins(fg, seeds)
    merged = (labels == 1) | (labels == 2)
    alone = labels == 2
    out = clip_merged_masks([merged, alone], seeds, basins)
    iou = np.count_nonzero(out[0] & (labels == 1)) / np.count_nonzero(out[0] | (labels == 1))
    assert iou > 0.9
    assert out[1] is alone  # a mask covering no other seed is left as it is
    assert basins[tuple(centres[0].astype(int))] == 1 and basins[tuple(centres[1].astype(int))] == 2
    assert not basins[~fg].any()


def test_touching_fraction():
    _, labels, _ = _touching_pairs()
    assert touching_fraction(labels) == 1.0
    apart = np.zeros((50, 50), np.int32)
    apart[5:10, 5:10] = 1
    apart[20:30, 20:30] = 2
    assert touching_fraction(apart) == 0.0
    assert touching_fraction(np.zeros((5, 5), np.int32)) == 0.0
