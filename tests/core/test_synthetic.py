"""The procedural sample: deterministic, nuclei-like, and its labels are exactly the bright blobs."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_sam_micro.core.synthetic import synthetic_nuclei


def test_same_seed_same_sample_other_seed_other_sample():
    image, labels = synthetic_nuclei(seed=0)
    image2, labels2 = synthetic_nuclei(seed=0)
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(labels, labels2)
    other, other_labels = synthetic_nuclei(seed=1)
    assert not np.array_equal(labels, other_labels) and not np.array_equal(image, other)


def test_shape_types_and_varied_nuclei():
    image, labels = synthetic_nuclei(seed=0)
    assert image.shape == labels.shape == (512, 512)
    assert image.dtype == np.uint16 and labels.dtype == np.uint16
    ids = np.unique(labels)[1:]
    assert ids.tolist() == list(range(1, 71))  # 70 nuclei, ids 1..K
    areas = np.bincount(labels.ravel())[1:]
    assert areas.max() > 5 * areas.min()  # small and large
    means = ndi.mean(image, labels, ids)
    assert means.max() > 2 * means.min()  # dim and bright
    # every id is one connected nucleus
    for i in ids:
        assert ndi.label(labels == i)[1] == 1
    # some nuclei touch (a shared border between two different ids)
    a, b = labels[:, 1:], labels[:, :-1]
    touching = (a != b) & (a > 0) & (b > 0)
    assert len(set(zip(a[touching].tolist(), b[touching].tolist()))) >= 5


def test_labels_are_the_bright_blobs():
    image, labels = synthetic_nuclei(seed=0)
    smooth = ndi.gaussian_filter(image.astype(np.float64), 1.0)
    nuclei = labels > 0
    inside = ndi.binary_erosion(nuclei)  # the PSF blurs the outermost pixel
    away = ~ndi.binary_dilation(nuclei, iterations=3)
    # every nucleus pixel is brighter than all of the background a few pixels away ...
    threshold = smooth[away].max()
    assert smooth[inside].min() > threshold
    # ... and every bright blob above that level lies on a labelled nucleus
    blobs, n = ndi.label(smooth > threshold)
    on_nuclei = ndi.maximum(nuclei, blobs, np.arange(1, n + 1))
    assert n > 0 and np.all(on_nuclei)
    # the background is camera-like: an offset with noise, far below the nuclei
    assert 150 < np.median(image[away]) < 400 and image[away].std() > 5
