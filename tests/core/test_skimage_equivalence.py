"""scikit-image replaced hand-written Otsu, peak spacing and region measurement: same results on real images.

The former implementations live in ``benchmarks/bench_skimage.py`` (the benchmark's reference);
these tests load them from there and compare on DSB 2018 images of all three modalities
(``../shared/data``; skipped without it).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from napari_sam_micro.core import seeds
from napari_sam_micro.core.preprocess import PreprocessConfig, normalize_image

pytestmark = pytest.mark.data


@pytest.fixture(scope="module")
def former(load_benchmark):
    return load_benchmark("bench_skimage")


def _dsb_images(shared_data: Path, per_modality: int = 4):
    tifffile = pytest.importorskip("tifffile")
    root = shared_data / "dsb2018-train"
    with open(root / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked = []
    for modality in ("fluorescence", "histology", "brightfield"):
        of_kind = [r for r in rows if r["modality"] == modality]
        step = max(1, len(of_kind) // per_modality)
        picked += of_kind[::step][:per_modality]
    for row in picked:
        yield row["name"], tifffile.imread(root / "images" / f"{row['name']}.tif"), tifffile.imread(root / "labels" / f"{row['name']}.tif")


def test_seeds_are_identical_to_the_hand_written_otsu_and_spacing(shared_data, former, monkeypatch):
    n_seeds = 0
    for name, image, _ in _dsb_images(shared_data):
        norm = normalize_image(image, PreprocessConfig(rgb=image.ndim == 3))
        new = seeds.find_seeds(norm)
        with monkeypatch.context() as m:
            m.setattr(seeds, "otsu_threshold", former.former_otsu_threshold)
            m.setattr(seeds, "_spaced", former.former_spaced)
            old = seeds.find_seeds(norm)
            old_capped = seeds.find_seeds(norm, max_seeds=7, min_distance=9)
        np.testing.assert_array_equal(new, old, err_msg=name)
        np.testing.assert_array_equal(seeds.find_seeds(norm, max_seeds=7, min_distance=9), old_capped, err_msg=name)
        n_seeds += len(new)
    assert n_seeds > 100  # the comparison covered real seeds


def test_foreground_split_is_identical(shared_data, former):
    from scipy import ndimage as ndi

    for name, image, _ in _dsb_images(shared_data, per_modality=3):
        signal = ndi.gaussian_filter(seeds.gray_image(normalize_image(image, PreprocessConfig(rgb=image.ndim == 3))), 1.0)
        new, old = seeds.otsu_threshold(signal), former.former_otsu_threshold(signal)
        assert new == pytest.approx(old, rel=1e-6), name
        np.testing.assert_array_equal(signal > new, signal > old, err_msg=name)


def test_region_measurement_is_identical(shared_data, former):
    pytest.importorskip("pandas")
    from napari_sam_micro._napari.features import BBOX_COLUMNS, _measure

    for name, _, labels in _dsb_images(shared_data, per_modality=3):
        for data in (labels, np.stack([labels, np.zeros_like(labels)])):  # 2D and a (2, H, W) stack
            new, old = _measure(data), former.former_measure(data)
            np.testing.assert_array_equal(new["index"].to_numpy(), old["index"], err_msg=name)
            np.testing.assert_array_equal(new["area"].to_numpy(), old["area"], err_msg=name)
            np.testing.assert_array_equal(new[list(BBOX_COLUMNS)].to_numpy(), old["bbox"], err_msg=name)
