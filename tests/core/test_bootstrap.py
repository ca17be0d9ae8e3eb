"""Bootstrap intervals clustered by image (core.bootstrap)."""

import numpy as np
import pytest

from napari_sam_micro.core.bootstrap import clustered_mean_ci, pooled_f1, pooled_f1_ci


def _images(n_images, per_image, rng):
    """IoU rows: each image has its own level (between-image spread) plus object noise."""
    levels = rng.uniform(0.6, 0.9, n_images)
    values = np.clip(np.repeat(levels, per_image) + rng.normal(0, 0.05, n_images * per_image), 0, 1)
    return values, np.repeat(np.arange(n_images), per_image)


def test_mean_interval_covers_the_mean_and_is_deterministic():
    values, images = _images(20, 5, np.random.default_rng(0))
    lo, hi = clustered_mean_ci(values, images)
    assert lo < values.mean() < hi
    assert (lo, hi) == clustered_mean_ci(values, images)
    assert clustered_mean_ci(values, images, seed=1) != (lo, hi)


def test_mean_interval_narrows_with_more_images():
    rng = np.random.default_rng(1)
    few = clustered_mean_ci(*_images(5, 5, rng))
    many = clustered_mean_ci(*_images(200, 5, rng))
    assert many[1] - many[0] < 0.5 * (few[1] - few[0])


def test_objects_of_one_image_are_not_counted_as_independent():
    """Clustering by image: the same objects split over fewer images give a wider interval."""
    values, _ = _images(40, 5, np.random.default_rng(2))
    per_object = clustered_mean_ci(values, np.arange(values.size))
    values = np.sort(values)  # similar values share an image: strong between-image spread
    per_image = clustered_mean_ci(values, np.repeat(np.arange(40), 5))
    assert per_image[1] - per_image[0] > per_object[1] - per_object[0]


def test_single_image_gives_no_interval():
    assert all(np.isnan(clustered_mean_ci([0.5, 0.7, 0.9], ["a", "a", "a"])))
    assert all(np.isnan(pooled_f1_ci([(5, 1, 2)])))
    with pytest.raises(ValueError):
        clustered_mean_ci([0.5, 0.7], ["a"])


def test_pooled_f1_interval():
    rng = np.random.default_rng(3)
    counts = [(int(tp), int(fp), int(fn)) for tp, fp, fn in rng.integers([20, 0, 0], [60, 10, 15], (30, 3))]
    f1 = pooled_f1(*np.sum(counts, axis=0))
    lo, hi = pooled_f1_ci(counts)
    assert lo < f1 < hi and 0.0 <= lo and hi <= 1.0
    identical = pooled_f1_ci([(10, 2, 3)] * 10)
    assert identical == pytest.approx((pooled_f1(10, 2, 3),) * 2)
    assert pooled_f1(0, 0, 0) == 1.0
