"""Object diameter at a click (scale-normalised LoG) and object polarity."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_micro.core.object_size import DIAMETER_RANGE, click_diameter, object_polarity


def _disks(shape=(300, 300), disks=(((150, 150), 10),), bright=True, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 0.1)
    for (r, c), rad in disks:
        img[(rr - r) ** 2 + (cc - c) ** 2 <= rad**2] = 0.8
    if not bright:
        img = 0.9 - img
    return (img + rng.normal(0, noise, shape)).astype(np.float32)


@pytest.mark.parametrize("diameter", [8, 14, 24, 40, 70, 110])
def test_click_diameter_matches_disks_of_every_size(diameter):
    img = _disks(disks=(((150, 150), diameter / 2),))
    est = click_diameter(img, 150, 150, polarity=1.0)
    assert 0.75 * diameter <= est <= 1.3 * diameter


def test_click_diameter_dark_objects_need_the_dark_polarity():
    img = _disks(disks=(((150, 150), 15),), bright=False)
    assert object_polarity(img) == -1.0
    assert 22 <= click_diameter(img, 150, 150, polarity=-1.0) <= 39


def test_click_diameter_sees_the_object_under_the_click_not_its_neighbours():
    img = _disks(disks=(((60, 60), 6), ((200, 200), 30)))
    small = click_diameter(img, 60, 60, 1.0)
    large = click_diameter(img, 200, 200, 1.0)
    assert small < 18 and large > 45


def test_click_near_the_border_and_rgb_input():
    img = _disks(disks=(((3, 4), 10),))
    est = click_diameter(img, 3, 4, 1.0)
    assert DIAMETER_RANGE[0] <= est <= DIAMETER_RANGE[1] and 12 <= est <= 30
    rgb = np.repeat(_disks(disks=(((150, 150), 12),))[..., None], 3, axis=2)
    assert 18 <= click_diameter(rgb, 150, 150, 1.0) <= 32
    # clicks outside the plane are clamped to it, not an error
    assert DIAMETER_RANGE[0] <= click_diameter(img, -5, 500, 1.0) <= DIAMETER_RANGE[1]


def test_polarity_of_bright_objects_flat_and_nan_images():
    assert object_polarity(_disks(disks=(((150, 150), 20), ((60, 60), 10)))) == 1.0
    assert object_polarity(np.zeros((40, 40), np.float32)) == 1.0
    img = _disks(disks=(((150, 150), 20),))
    img[:5] = np.nan
    assert object_polarity(img) == 1.0
    assert np.isfinite(click_diameter(img, 150, 150, 1.0))


def test_typical_diameter_is_the_median_over_object_centres():
    centres = [(40 + 60 * i, 40 + 60 * j) for i in range(4) for j in range(4)]
    img = _disks(disks=tuple((c, 9) for c in centres))
    typical = click_diameter(img, *centres[0], 1.0)
    from napari_sam_micro.core.object_size import typical_diameter

    est = typical_diameter(img, 1.0)
    assert est is not None and 14 <= est <= 26 and abs(est - typical) <= 0.2 * typical
    assert typical_diameter(_disks(disks=(((150, 150), 10),)), 1.0) is None  # too few objects



@pytest.mark.data
def test_typical_diameter_ignores_centres_with_no_blob_at_any_scale(shared_data):
    """Two small DSB fields side by side, the first cropped through a bright region: 20 of the 27
    centres lie along the cut edge, where no scale tried finds a blob (160 px, the range's top).
    Their 160 px was the prior, so untiled windows were ten times too large; the nuclei are 13-16 px."""
    import csv

    tifffile = pytest.importorskip("tifffile")
    from napari_sam_micro.core.object_size import object_polarity, typical_diameter
    from napari_sam_micro.core.preprocess import normalize_image

    root = shared_data / "dsb2018-train"
    with open(root / "index.csv") as fh:
        names = [r["name"] for r in csv.DictReader(fh) if r["modality"] == "fluorescence" and r["height"] == r["width"] == "256"
                 and r["channels"] == "1" and 5 <= int(r["instances"]) <= 6][:2]
    image = normalize_image(np.concatenate([tifffile.imread(root / "images" / f"{n}.tif") for n in names], axis=1)[:, 140:])
    d = typical_diameter(image, object_polarity(image))
    assert d is not None and 8 <= d <= 25, d
