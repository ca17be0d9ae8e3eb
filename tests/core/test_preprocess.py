import numpy as np
import pytest

from napari_sam_micro.core import preprocess
from napari_sam_micro.core.errors import ImageError
from napari_sam_micro.core.preprocess import (
    PreprocessConfig,
    normalize_channel,
    normalize_image,
    plane_from_nd,
    prompt_window,
)


def _check_out(out, hw):
    assert out.shape == (*hw, 3)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0


def test_config_key_is_stable_and_distinct():
    a = PreprocessConfig()
    assert a.key() == PreprocessConfig(percentiles=(1, 99.8)).key()
    keys = {
        a.key(),
        PreprocessConfig(percentiles=(0.5, 99.8)).key(),
        PreprocessConfig(channels=(0, 1), channel_axis=0).key(),
        PreprocessConfig(channels=(1, 0), channel_axis=0).key(),
        PreprocessConfig(rgb=True).key(),
    }
    assert len(keys) == 5
    with pytest.raises(ValueError):
        PreprocessConfig(percentiles=(50, 10))


def test_uint16_hot_pixel_is_ignored():
    rng = np.random.default_rng(0)
    img = rng.integers(1000, 3000, size=(200, 200)).astype(np.uint16)
    img[17, 33] = 65535
    out = normalize_image(img)
    _check_out(out, img.shape)
    # The hot pixel saturates; the rest of the image keeps its contrast (a min/max stretch would
    # put everything below 0.05).
    assert out[17, 33, 0] == 1.0
    others = np.delete(out[..., 0].ravel(), 17 * 200 + 33)
    assert np.median(others) == pytest.approx(0.5, abs=0.05)
    assert np.percentile(others, 99) > 0.9
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_percentile_values_exact():
    img = np.arange(9999, dtype=np.float64).reshape(101, 99)
    out = normalize_channel(img, (1.0, 99.0))
    lo, hi = np.percentile(img, (1.0, 99.0))
    np.testing.assert_allclose(out, np.clip((img - lo) / (hi - lo), 0, 1), rtol=1e-5, atol=1e-6)


def test_nan_and_inf_pixels():
    img = np.linspace(0, 1, 64 * 64).reshape(64, 64).astype(np.float32)
    img[0, :10] = np.nan
    img[1, :5] = np.inf
    img[2, :5] = -np.inf
    ref = img.copy()
    ref[~np.isfinite(ref)] = np.nan
    lo, hi = np.nanpercentile(ref, (1.0, 99.8))
    out = normalize_image(img)
    _check_out(out, img.shape)
    assert np.all(out[0, :10] == 0) and np.all(out[1, :5] == 0)
    np.testing.assert_allclose(out[10:, :, 0], np.clip((img[10:] - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_all_nan_raises_and_constant_is_zero():
    with pytest.raises(ImageError, match="no valid pixel"):
        normalize_image(np.full((8, 8), np.nan))
    out = normalize_image(np.full((8, 8), 7, np.uint16))
    _check_out(out, (8, 8))
    assert not out.any()


def test_sparse_image_falls_back_to_min_max():
    img = np.zeros((100, 100), np.uint8)
    img[5, 5] = 200  # 99.8th percentile is still 0
    out = normalize_image(img)
    assert out[5, 5, 0] == 1.0 and out.sum() == 3.0


def test_bool_and_int_images():
    b = np.zeros((10, 10), bool)
    b[2:5, 2:5] = True
    out = normalize_image(b)
    np.testing.assert_array_equal(out[..., 1] > 0.5, b)
    _check_out(normalize_image(np.arange(-50, 50).reshape(10, 10).astype(np.int32)), (10, 10))


def test_rgb_uint8_and_rgba():
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, size=(12, 9, 4)).astype(np.uint8)
    out = normalize_image(rgba, PreprocessConfig(rgb=True))
    _check_out(out, (12, 9))
    np.testing.assert_allclose(out, rgba[..., :3] / 255.0, atol=1e-7)


def test_rgb_uint16_per_channel():
    img = np.zeros((20, 20, 3), np.uint16)
    img[..., 0] = np.arange(400).reshape(20, 20)
    img[..., 1] = np.arange(400).reshape(20, 20) * 100
    out = normalize_image(img, PreprocessConfig(rgb=True))
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)  # each channel stretched alone
    assert not out[..., 2].any()


def test_3d_without_rgb_or_channel_axis_raises():
    with pytest.raises(ImageError, match="2D image plane"):
        normalize_image(np.zeros((4, 5, 6)))


def test_multichannel_rules():
    rng = np.random.default_rng(2)
    img = rng.random((5, 16, 16)).astype(np.float32)  # channels first
    with pytest.raises(ImageError, match="Pick the channels"):
        normalize_image(img, PreprocessConfig(channel_axis=0))
    one = normalize_image(img, PreprocessConfig(channels=(3,), channel_axis=0))
    c3 = normalize_channel(img[3])
    for k in range(3):
        np.testing.assert_allclose(one[..., k], c3)
    two = normalize_image(img, PreprocessConfig(channels=(1, 4), channel_axis=0))
    c1, c4 = normalize_channel(img[1]), normalize_channel(img[4])
    np.testing.assert_allclose(two[..., 0], c1)
    np.testing.assert_allclose(two[..., 1], c4)
    np.testing.assert_allclose(two[..., 2], (c1 + c4) / 2, atol=1e-6)
    three = normalize_image(img[:3], PreprocessConfig(channel_axis=0))
    np.testing.assert_allclose(three[..., 2], normalize_channel(img[2]))
    with pytest.raises(ImageError, match="does not exist"):
        normalize_image(img, PreprocessConfig(channels=(7,), channel_axis=0))


def test_large_image_uses_subsample(monkeypatch):
    monkeypatch.setattr(preprocess, "PERCENTILE_MAX_SAMPLES", 1000)
    rng = np.random.default_rng(3)
    img = rng.normal(100, 10, size=(300, 300)).astype(np.float32)
    seen = []
    real = np.percentile

    def spy(a, q, *args, **kwargs):
        seen.append(np.size(a))
        return real(a, q, *args, **kwargs)

    monkeypatch.setattr(preprocess.np, "percentile", spy)
    out = normalize_image(img)
    assert seen and max(seen) <= 1000
    # Close to the full-image result.
    lo, hi = real(img, (1.0, 99.8))
    ref = np.clip((img - lo) / (hi - lo), 0, 1)
    assert np.abs(out[..., 0] - ref).mean() < 0.02


def test_plane_from_nd():
    data = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(plane_from_nd(data, (1, 2)), data[1, 2])
    np.testing.assert_array_equal(plane_from_nd(data, (1, 2, 0, 0)), data[1, 2])  # full dims step
    rgb = np.zeros((3, 4, 5, 3))
    rgb[2, ..., 1] = 1
    assert plane_from_nd(rgb, (2,), rgb=True).shape == (4, 5, 3)
    assert plane_from_nd(rgb, (2,), rgb=True)[..., 1].all()
    # Channel axis 1 of (t, c, y, x): plane comes back (y, x, c).
    p = plane_from_nd(data, (1,), channel_axis=1)
    assert p.shape == (4, 5, 3)
    np.testing.assert_array_equal(p[..., 2], data[1, 2])
    with pytest.raises(ImageError):
        plane_from_nd(data, (5, 0))
    with pytest.raises(ValueError):
        plane_from_nd(data, (1,))


def test_prompt_window():
    hw = (1000, 800)
    y0, y1, x0, x1 = prompt_window([100, 200, 140, 220], hw)  # 40 x 20 box
    assert (y1 - y0, x1 - x0) == (80, 80)
    assert y0 <= 200 and y1 >= 220 and x0 <= 100 and x1 >= 140
    assert abs((y0 + y1) / 2 - 210) <= 1 and abs((x0 + x1) / 2 - 120) <= 1
    # A single point gets the minimum size.
    y0, y1, x0, x1 = prompt_window(np.array([[400.0, 500.0]]), hw, min_size=64)
    assert (y1 - y0, x1 - x0) == (64, 64) and y0 <= 500 < y1 and x0 <= 400 < x1
    # Near a corner the window is shifted inside, not shrunk.
    assert prompt_window([0, 0, 10, 10], hw, min_size=64) == (0, 64, 0, 64)
    assert prompt_window([790, 990, 799, 999], hw, min_size=64) == (936, 1000, 736, 800)
    # Never larger than the image.
    assert prompt_window([0, 0, 700, 900], hw) == (0, 1000, 0, 800)


@pytest.mark.data
def test_real_uint16_phase_contrast(shared_data):
    tifffile = pytest.importorskip("tifffile")
    img = tifffile.imread(shared_data / "usiigaci-train" / "images" / "set01.tif")
    assert img.dtype == np.uint16
    out = normalize_image(img)
    _check_out(out, img.shape[:2])
    gray = out[..., 0]
    # A usable stretch: the bulk of the image spans a good part of [0, 1] (raw uint16 / 65535
    # would sit in a narrow band), and at most ~1 % of pixels clip at either end.
    p5, p95 = np.percentile(gray, (5, 95))
    assert p95 - p5 > 0.2
    assert np.mean(gray == 0.0) < 0.02 and np.mean(gray == 1.0) < 0.01
    # Adding a hot pixel does not change the result elsewhere by more than the clipped band.
    hot = img.copy()
    hot[0, 0] = 65535
    np.testing.assert_allclose(normalize_image(hot)[1:, :, 0], gray[1:], atol=1e-3)


@pytest.mark.parametrize("offset", [2**60, 2**63, 2**64 - 2000])
def test_uint64_with_a_large_offset_keeps_its_contrast(offset):
    """Issue 12.8: float64 holds 53 bits; near 2**60 the contrast was lost, near 2**63 the image was black."""
    ramp = np.arange(1000, dtype=np.uint64).reshape(20, 50)
    expected = normalize_channel(ramp)
    out = normalize_channel(ramp + np.uint64(offset))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert len(np.unique(out)) > 900


def test_int64_spanning_the_whole_range_is_exact():
    data = np.array([[-(2**63), 0], [2**62, 2**63 - 1]], dtype=np.int64)
    out = normalize_channel(data, (0.0, 100.0))
    np.testing.assert_allclose(out, [[0.0, 0.5], [0.75, 1.0]], atol=1e-6)
    assert data[0, 0] == -(2**63)  # the caller's array is not changed


@pytest.mark.parametrize("axis", [3, -4, 10])
def test_plane_from_nd_rejects_a_channel_axis_that_does_not_exist(axis):
    """Issue 12.8: ``channel_axis % ndim`` wrapped 3 to 0 and segmented the wrong axis as channels."""
    data = np.zeros((2, 8, 9), np.uint8)
    with pytest.raises(ImageError, match=f"Channel axis {axis} does not exist.*3 axes"):
        plane_from_nd(data, (), channel_axis=axis)
    assert plane_from_nd(data, (), channel_axis=-3).shape == (8, 9, 2)


def test_prompt_window_rejects_prompts_off_the_image():
    from napari_sam_micro.core.errors import PromptError

    with pytest.raises(PromptError, match="outside the image"):
        prompt_window(np.array([[5000.0, 10.0]]), (100, 200))
    with pytest.raises(PromptError, match="completely outside"):
        prompt_window([300, 10, 320, 30], (100, 200))
    with pytest.raises(PromptError, match="NaN"):
        prompt_window(np.array([[np.nan, 10.0]]), (100, 200))
    assert prompt_window([190, 90, 230, 130], (100, 200), min_size=16)  # partly outside is fine (training jitter)
