"""Window reuse rule and cover planning (core.windows)."""

from __future__ import annotations

import numpy as np

from napari_sam_micro.core.windows import (
    EVERYTHING_SCALE_RANGE,
    REUSE_MARGIN,
    cover_objects,
    fits,
    reaches_border,
    reuse_window,
    square_window,
)

HW = (500, 600)


def test_fits_needs_a_trained_scale():
    box = [100, 100, 119, 119]  # 20-px object
    assert fits(box, (70, 130, 80, 140), HW)  # 60 px = 3.0 x: fits
    assert not fits(box, (50, 170, 50, 170), HW)  # 120 px = 6 x: too small in the window
    assert fits(box, (60, 140, 70, 150), HW, scale_range=EVERYTHING_SCALE_RANGE)  # 80 px = 4 x
    assert not fits(box, (60, 140, 70, 150), HW)
    assert not fits(box, (95, 125, 95, 125), HW)  # 30 px = 1.5 x: the object fills the window


def test_fits_needs_a_margin_except_at_the_image_border():
    window = (70, 130, 80, 140)  # 60 px
    margin = REUSE_MARGIN * 60
    assert fits([100, 100, 119, 119], window, HW)
    # pressed against the right side of the window (gap below the margin)
    assert not fits([118, 100, 137, 119], window, HW)
    assert fits([140 - 1 - 19 - int(np.ceil(margin)), 100, 140 - 1 - int(np.ceil(margin)), 119], window, HW)
    # cut by the window
    assert not fits([130, 100, 149, 119], window, HW)
    # at the image border the margin is not needed
    assert fits([0, 0, 19, 19], (0, 60, 0, 60), HW)


def test_reuse_window_prefers_the_centred_scale_two_window():
    box = [100, 100, 119, 119]
    off = (80, 140, 95, 155)  # fits, object off-centre, 3 x
    centred = (90, 130, 90, 130)  # 2 x, centred
    assert reuse_window(box, [off, centred], HW) == centred
    assert reuse_window(box, [off], HW) == off
    assert reuse_window(box, [(300, 360, 300, 360), None], HW) is None


def test_cover_objects_puts_neighbours_in_shared_windows_and_fits_every_object():
    rng = np.random.default_rng(0)
    centres = rng.uniform(20, 480, (60, 2))
    boxes = np.concatenate([centres - 8, centres + 8], axis=1)  # 17-px objects
    for scale_range in ((1.6, 3.0), EVERYTHING_SCALE_RANGE):
        windows, assignment = cover_objects(boxes, HW, scale_range)
        assert assignment.shape == (60,) and assignment.min() >= 0
        for box, a in zip(boxes, assignment):
            assert fits(box, windows[a], HW, scale_range)
        assert len(windows) < 60  # dense: several objects per window
    few, _ = cover_objects(boxes, HW, EVERYTHING_SCALE_RANGE)
    many, _ = cover_objects(boxes, HW, (1.6, 3.0))
    assert len(few) < len(many)


def test_cover_objects_gives_an_oversized_object_its_own_window():
    boxes = np.array([[0, 0, 590, 490], [10, 10, 20, 20]], float)
    windows, assignment = cover_objects(boxes, HW)
    assert len(windows) == 2 and assignment.tolist() == [0, 1]
    assert windows[0] == (0, 500, 0, 600)


def test_square_window_is_shifted_into_the_plane_and_reaches_border():
    assert square_window(5, 5, 40, HW) == (0, 40, 0, 40)
    assert square_window(595, 495, 40, HW) == (460, 500, 560, 600)
    mask = np.zeros(HW, bool)
    mask[10:20, 10:20] = True
    assert not reaches_border(mask, (0, 40, 0, 40), HW)  # touches only the image border side
    assert reaches_border(mask, (15, 55, 0, 40), HW)


def test_as_trained_needs_the_training_scale_and_centring():
    from napari_sam_micro.core.windows import as_trained

    box = [100, 100, 119, 119]  # 20 px, centre 109.5
    assert as_trained(box, (90, 130, 90, 130), HW)  # 2 x, centred
    assert not as_trained(box, (80, 140, 80, 140), HW)  # 3 x: fits, but not a training scale
    assert not as_trained(box, (94, 134, 94, 134), HW)  # 2 x, centre 4 px (> 0.15 x 20) off
    assert as_trained(box, (92, 132, 92, 132), HW)  # 2 px off: within the jitter
    # shifted by the plane's border, as the plugin's own windows are
    assert as_trained([0, 100, 19, 119], (90, 130, 0, 40), HW)
