"""Memory per pixel (issue 12, defect 7): compact storage, identical results, and the free-memory guard."""

from __future__ import annotations

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam_micro.core import memory as memory_module
from napari_sam_micro.core import seeds
from napari_sam_micro.core.errors import ImageError
from napari_sam_micro.core.labels import object_row
from napari_sam_micro.core.object_size import click_diameter, click_neighbourhood
from napari_sam_micro.core.preprocess import PlaneNormalizer, PreprocessConfig, normalize_image, normalize_plane, to_rgb
from napari_sam_micro.core.progress import drain
from napari_sam_micro.core.prompts import Prompts
from napari_sam_micro.session import PEAK_BYTES_PER_PIXEL, AnnotationSession


def _nuclei(size=256, spacing=48, radius=9, seed=0):
    """``(size, size)`` uint16: bright disks on a jittered grid over a noisy background."""
    rng = np.random.default_rng(seed)
    plane = rng.normal(3000, 300, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for r in range(spacing // 2, size - spacing // 2 + 1, spacing):
        for c in range(spacing // 2, size - spacing // 2 + 1, spacing):
            plane[(yy - r) ** 2 + (xx - c) ** 2 <= radius**2] = 30000
    return plane.clip(0, 65535).astype(np.uint16)


# -- normalisation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, config",
    [
        ((40, 50), None),
        ((40, 50, 3), PreprocessConfig(rgb=True)),
        ((40, 50, 2), PreprocessConfig(channel_axis=-1)),
        ((40, 50, 4), PreprocessConfig(channel_axis=-1, channels=(2,))),
    ],
)
def test_normalize_plane_is_normalize_image_without_the_grey_copies(shape, config):
    image = np.random.default_rng(1).integers(0, 4000, shape).astype(np.uint16)
    compact = normalize_plane(image, config)
    grey = len(shape) == 2 or (config.channels is not None and len(config.channels) == 1)
    assert compact.shape == (shape[:2] if grey else (*shape[:2], 3)) and compact.dtype == np.float32
    np.testing.assert_array_equal(to_rgb(compact), normalize_image(image, config))


@pytest.mark.parametrize(
    "image, config",
    [
        (np.random.default_rng(6).integers(0, 4000, (70, 90)).astype(np.uint16), None),
        (np.random.default_rng(6).normal(0, 1, (70, 90)).astype(np.float32), None),
        (np.random.default_rng(6).integers(0, 1000, (70, 90)).astype(np.int64) + 2**60, None),
        (np.random.default_rng(6).integers(0, 1000, (70, 90)).astype(np.uint64) + np.uint64(2**63), None),
        (np.random.default_rng(6).integers(0, 256, (70, 90, 4)).astype(np.uint8), PreprocessConfig(rgb=True)),
        (np.random.default_rng(6).integers(0, 9, (70, 90, 2)).astype(np.int32), PreprocessConfig(channel_axis=-1)),
    ],
)
def test_a_window_normalised_on_its_own_equals_the_crop_of_the_normalised_plane(image, config):
    if image.dtype == np.float32:
        image[3, 4] = np.nan
    normalizer = PlaneNormalizer(image, config)
    whole = normalize_plane(image, config)
    for window in [(0, 70, 0, 90), (10, 30, 5, 60), (69, 70, 0, 1)]:
        y0, y1, x0, x1 = window
        np.testing.assert_array_equal(normalizer.crop(window), whole[y0:y1, x0:x1])


def test_click_diameter_on_its_neighbourhood_equals_the_whole_plane():
    image = normalize_plane(_nuclei(512, spacing=96, radius=20))
    for r, c in [(48, 48), (240, 240), (0, 511), (300, 10)]:
        y0, y1, x0, x1 = click_neighbourhood(image.shape, r, c)
        assert (y1 - y0) * (x1 - x0) < image.size
        assert click_diameter(image[y0:y1, x0:x1], r - y0, c - x0) == click_diameter(image, r, c)


def test_integer_percentiles_without_a_float64_copy_are_unchanged():
    image = np.random.default_rng(2).integers(0, 65536, (300, 301)).astype(np.uint16)
    lo, hi = np.percentile(image.astype(np.float64), (1.0, 99.8))
    expected = np.clip((image.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo)), 0, 1)
    np.testing.assert_array_equal(normalize_plane(image), expected)


# -- seeds: same results from smaller temporaries -------------------------------------------------
def test_distance_to_background_equals_the_whole_plane_transform():
    rng = np.random.default_rng(3)
    for _ in range(30):
        h, w = rng.integers(2, 80, 2)
        mask = ndi.gaussian_filter(rng.random((h, w)), rng.uniform(0.5, 3.0)) > rng.uniform(0.35, 0.6)
        mask[0, 0] = False  # at least one background pixel
        np.testing.assert_array_equal(seeds.distance_to_background(mask), ndi.distance_transform_edt(mask))


def test_distance_to_background_of_overlapping_boxes_takes_one_transform():
    mask = np.zeros((60, 60), bool)
    for k in range(0, 60, 3):  # parallel diagonal lines: every box is nearly the whole plane
        mask[np.eye(60, k=k, dtype=bool) | np.eye(60, k=-k, dtype=bool)] = True
    np.testing.assert_array_equal(seeds.distance_to_background(mask), ndi.distance_transform_edt(mask))


def test_banded_gaussian_equals_the_whole_plane_filter():
    rng = np.random.default_rng(4)
    for h in (1, 7, 255, 256, 257, 700):
        image = rng.random((h, 33)) * 10
        out = image.copy()
        seeds._gaussian_in_place(out, 1.5)
        np.testing.assert_array_equal(out, ndi.gaussian_filter(image, 1.5))


def _otsu_one_pass(values, bins=256):
    """Otsu's threshold from one float64 copy of all finite values (the former implementation)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    hist, edges = np.histogram(v, bins=bins, range=(v.min(), v.max()))
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    between = w0 * w1 * (m0 / np.maximum(w0, 1) - (m0[-1] - m0) / np.maximum(w1, 1)) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_scikit_image_otsu_equals_the_one_pass_histogram(dtype):
    """``otsu_threshold`` is scikit-image's now: the former threshold up to float32 rounding, the same split."""
    values = (np.random.default_rng(5).gamma(2.0, 1.0, (200, 300)) * 1000).astype(dtype)
    if dtype == np.float32:
        values[5, 5] = np.nan
    ours, former = seeds.otsu_threshold(values), _otsu_one_pass(values)
    assert ours == pytest.approx(former, rel=1e-6)
    finite = values[np.isfinite(values)]
    assert np.count_nonzero(finite > ours) == np.count_nonzero(finite > former)


def test_gray_image_never_modifies_its_input():
    image = np.ones((5, 6), np.float32)
    image[2, 2] = np.nan
    gray = seeds.gray_image(image)
    assert np.isnan(image[2, 2]) and gray[2, 2] == 0.0


# -- previews are stored per window ------------------------------------------------------------------
@pytest.fixture
def windowed(disk_model):
    s = AnnotationSession(disk_model(8), crop_to_prompt=True)
    s.set_image(_nuclei(384))
    return s


def test_a_windowed_preview_keeps_only_its_window(windowed):
    pred = drain(windowed.predict_job(Prompts([[168.0, 168.0]], [1])))
    obj = pred.objects[0]
    y0, y1, x0, x1 = obj.window
    assert obj.crop.shape == (y1 - y0, x1 - x0) and (y1 - y0) * (x1 - x0) < 384 * 384 / 4
    full = obj.mask
    assert full.shape == (384, 384) and full[168, 168]
    np.testing.assert_array_equal(full[y0:y1, x0:x1], obj.crop)
    assert np.count_nonzero(full) == obj.area
    rows, cols = np.nonzero(full)
    assert obj.bbox() == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
    np.testing.assert_array_equal(obj.region(150, 384, 100, 170), full[150:384, 100:170])


def test_label_image_and_commit_plan_match_whole_plane_masks(windowed):
    pred = drain(windowed.predict_job(Prompts(boxes_xyxy=[[150, 150, 186, 186], [170, 160, 230, 200]])))
    masks = [o.mask for o in pred.objects]
    expected = np.zeros((384, 384), np.uint8)
    for k, m in enumerate(masks):
        expected[m & (expected == 0)] = k + 1
    np.testing.assert_array_equal(pred.label_image(), expected)
    labels = np.zeros((2, 384, 384), np.uint16)
    labels[1, 160:170, 160:170] = 5
    items = windowed.commit_plan(labels, leading=(1,), prediction=pred)
    painted = labels[1].copy()
    for item, mask in zip(items, masks):
        sel = mask & (painted == 0)
        assert item.row == object_row(item.label_id, sel, pred.objects[item.object_index].predicted_iou,
                                      pred.objects[item.object_index].stability, pred.objects[item.object_index].kind)
        np.testing.assert_array_equal(item.indices[1:], np.nonzero(sel))
        painted[sel] = item.label_id


# -- how much memory an annotation takes ----------------------------------------------------------
def test_a_click_on_a_large_plane_stays_within_the_guards_estimate(disk_model):
    plane = _nuclei(1024, spacing=64, radius=12)
    s = AnnotationSession(disk_model(12), crop_to_prompt=True)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        s.set_image(plane)
        pred = drain(s.predict_job(Prompts([[544.0, 544.0]], [1])))
        s.commit_plan(np.zeros(plane.shape, np.uint32), prediction=pred)
        held, peak = (v - base for v in tracemalloc.get_traced_memory())
    finally:
        tracemalloc.stop()
    assert pred.objects[0].mask[544, 544]
    # the guard's per-pixel figure is an upper bound; no whole-plane array stays afterwards (windows
    # are normalised on their own, previews keep their window's crop)
    assert peak < PEAK_BYTES_PER_PIXEL * plane.size
    assert held < 1 * plane.size


# -- the free-memory guard ------------------------------------------------------------------------
def test_a_plane_that_does_not_fit_in_free_memory_is_refused_with_a_message(monkeypatch, disk_model):
    monkeypatch.setattr(memory_module, "available_memory", lambda: 300 * 2**20)
    s = AnnotationSession(disk_model(12), crop_to_prompt=True)
    s.set_image(np.zeros((4096, 3000), np.uint8))  # choosing it costs nothing yet
    with pytest.raises(ImageError) as err:
        drain(s.predict_job(Prompts([[100.0, 100.0]], [1])))
    text = str(err.value)
    assert "3000 × 4096 pixels" in text and "GB" in text and "free" in text
    assert "Crop" in text and "downsample" in text
    assert s.has_image and s.preview is None  # nothing half-done
    # with enough memory the same plane is annotated
    monkeypatch.setattr(memory_module, "available_memory", lambda: 64 * 2**30)
    assert drain(s.predict_job(Prompts([[100.0, 100.0]], [1]))).objects


def test_the_guard_reads_psutil_and_is_skipped_without_it(monkeypatch):
    psutil = pytest.importorskip("psutil")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=10 * 2**20))
    with pytest.raises(ImageError, match="10 MB is free"):
        memory_module.check_memory((2000, 2000))
    monkeypatch.setattr(memory_module, "available_memory", lambda: None)
    memory_module.check_memory((100000, 100000))  # unknown free memory: no check


def test_a_whole_plane_encoder_is_refused_before_the_three_channel_copy(monkeypatch, tiny_model):
    s = AnnotationSession(tiny_model, crop_to_prompt=False)
    s.set_image(np.zeros((2048, 2048), np.uint16))
    need = memory_module.ENCODE_BYTES_PER_PIXEL * 2048 * 2048 + memory_module.MEMORY_MARGIN_BYTES
    monkeypatch.setattr(memory_module, "available_memory", lambda: need - 1)
    with pytest.raises(ImageError, match="2048 × 2048"):
        s.compute_embedding()
    assert s.embedding is None
    monkeypatch.setattr(memory_module, "available_memory", lambda: need)
    assert s.compute_embedding().original_size == (2048, 2048)
