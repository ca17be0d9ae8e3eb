"""Background subtraction before the seed search (core.background, core.seeds.background_radius)."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam_micro.core import bands as bands_mod
from napari_sam_micro.core.background import median_object_diameter, white_tophat_in_place
from napari_sam_micro.core.seeds import BACKGROUND_RADIUS_FLOOR, background_radius, find_seeds


@pytest.mark.parametrize(("shape", "radius"), [((600, 90), 20), ((70, 40), 3), ((900, 50), 130)])
def test_banded_tophat_equals_scipys(shape, radius, monkeypatch):
    monkeypatch.setattr(bands_mod, "BAND_ROWS", 64)  # several bands even on small planes
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    y = x.copy()
    white_tophat_in_place(y, radius)
    np.testing.assert_array_equal(y, ndi.white_tophat(x, size=2 * radius + 1))


def _discs(shape, centres, radius):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for r, c in centres:
        mask |= (rr - r) ** 2 + (cc - c) ** 2 <= radius**2
    return mask


def test_median_object_diameter_counts_objects_or_the_pieces_of_a_body():
    discs = _discs((100, 200), [(50, 30), (50, 90), (50, 150)], 10)
    specks = discs.copy()
    specks[5, 5] = specks[95, 195] = True
    assert median_object_diameter(specks, discs) == pytest.approx(20.0, abs=1.0)
    # a large disc cut into 2 caps by a top-hat counts whole
    big = _discs((100, 100), [(50, 50)], 30)
    caps = big & ((np.abs(np.mgrid[:100, :100][0] - 50) > 22))
    assert median_object_diameter(big, caps) == pytest.approx(60.0, abs=2.0)
    # a body holding many small pieces: the pieces count
    body = np.zeros((100, 200), bool)
    body[10:90, 10:190] = True
    pieces = _discs((100, 200), [(30, c) for c in range(25, 190, 25)], 5)
    assert median_object_diameter(body, pieces) == pytest.approx(10.0, abs=1.0)
    # dim nuclei found only after the top-hat count too
    assert median_object_diameter(np.zeros((100, 200), bool), discs) == pytest.approx(20.0, abs=1.0)
    assert median_object_diameter(np.zeros((5, 5), bool), np.zeros((5, 5), bool)) == 0.0


def _nuclei_on_a_body(radius=5, spacing=16):
    """Small bright nuclei along the rim of a broad, bright oval body (an embryo's haze), and the centres."""
    h, w = 200, 320
    rr, cc = np.mgrid[:h, :w]
    body = ((rr - 100) / 66.0) ** 2 + ((cc - 160) / 120.0) ** 2 <= 1  # a third of the image
    img = np.where(body, 0.45, 0.05).astype(np.float32)
    img = ndi.gaussian_filter(img, 6)
    centres = [(100 + 58 * np.sin(t), 160 + 108 * np.cos(t)) for t in np.arange(0, 2 * np.pi, spacing / 85.0)]
    for r, c in centres:
        img[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = 0.95
    img += np.random.default_rng(0).normal(0, 0.02, img.shape).astype(np.float32)
    return np.clip(img, 0, 1), np.array(centres)


def _seeded(seeds, centres, tol=3.0):
    d = np.linalg.norm(seeds[:, None, :] - centres[None], axis=-1)
    return int((d.min(axis=0) <= tol).sum()) if len(seeds) else 0


def test_nuclei_on_a_bright_body_get_seeds_once_the_background_is_removed():
    img, centres = _nuclei_on_a_body()
    with_bg = _seeded(find_seeds(img), centres)
    without = _seeded(find_seeds(img, background=False), centres)
    assert with_bg >= 0.9 * len(centres)
    assert without <= 0.5 * len(centres)  # the body is one blob: its distance maxima are inside it


def test_large_nuclei_get_a_radius_wider_than_themselves_and_one_seed_each():
    rr, cc = np.mgrid[:240, :360]
    img = np.full((240, 360), 0.05, np.float32)
    centres = np.array([(70.0, 70.0), (70.0, 190.0), (170.0, 120.0), (170.0, 280.0)])
    for r, c in centres:
        img[(rr - r) ** 2 + (cc - c) ** 2 <= 35**2] = 0.8
    img += np.random.default_rng(0).normal(0, 0.02, img.shape).astype(np.float32)
    signal = ndi.gaussian_filter(img, 1.0)
    assert background_radius(signal) >= 70  # 1.25 x the ~70 px diameter, not the floor
    seeds = find_seeds(img)
    assert len(seeds) == 4 and _seeded(seeds, centres) == 4


def test_small_nuclei_keep_the_floor_radius():
    img, _ = _nuclei_on_a_body()
    assert background_radius(ndi.gaussian_filter(img, 1.0)) == BACKGROUND_RADIUS_FLOOR
