"""The torch fast path of automatic mask generation equals the generic numpy path."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from napari_sam_micro.core import automatic  # noqa: E402
from napari_sam_micro.core.automatic import AmgParams, find_fast_path, generate_candidates  # noqa: E402
from napari_sam_micro.core.progress import drain  # noqa: E402
from napari_sam_micro.models import automatic_fastpath  # noqa: E402


def _image():
    yy, xx = np.mgrid[:96, :120]
    img = np.stack([yy / 96, xx / 120, 0.5 + 0 * xx], axis=-1).astype(np.float32)
    img[30:50, 40:70] = (0.9, 0.2, 0.4)
    return img


def test_fast_path_is_registered_for_sam_family_adapters(tiny_model):
    assert find_fast_path(tiny_model) is automatic_fastpath.sam_family_batch

    class NotAnAdapter:
        name = "something-else"

    assert find_fast_path(NotAnAdapter()) is None
    sentinel = lambda *a: None  # noqa: E731
    automatic.register_fast_path("something-else", sentinel)
    try:
        assert find_fast_path(NotAnAdapter()) is sentinel
    finally:
        automatic.unregister_fast_path("something-else")
    assert find_fast_path(NotAnAdapter()) is None


@pytest.mark.parametrize("floors", [(0.0, 0.0), (0.01, 0.02)])
def test_fast_path_gives_the_numpy_path_candidates(tiny_model, floors):
    params = AmgParams(points_per_side=6, pred_iou_thresh=floors[0], stability_score_thresh=floors[1], stability_score_offset=0.01)
    image = _image()
    fast = drain(generate_candidates(tiny_model, image, params, use_fast_path=True))
    slow = drain(generate_candidates(tiny_model, image, params, use_fast_path=False))
    assert len(fast) == len(slow) > 0
    for name in ("crop_index", "boxes", "areas", "point_coords", "bits", "offsets"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
    # the two-phase decoder sums in another order: float32 rounding differences only
    np.testing.assert_allclose(fast.predicted_iou, slow.predicted_iou, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.stability_score, slow.stability_score, rtol=0, atol=1e-6)


def test_torch_boxes_and_bits_match_numpy():
    import torch

    from napari_sam_micro.core.automatic import box_bits
    from napari_sam_micro.core.masks import mask_to_box_xyxy

    rng = np.random.default_rng(0)
    masks = rng.random((6, 13, 17)) > 0.8
    masks[2] = False
    boxes = automatic_fastpath.masks_to_boxes_torch(torch.from_numpy(masks))
    np.testing.assert_array_equal(boxes.numpy(), mask_to_box_xyxy(masks))
    bits = automatic_fastpath.box_bits_torch(torch.from_numpy(masks), boxes)
    np.testing.assert_array_equal(bits.numpy(), box_bits(masks, mask_to_box_xyxy(masks)))


def test_fast_path_batch_size_is_used_when_points_per_batch_is_none(tiny_model, monkeypatch):
    sizes = []
    real = automatic_fastpath.sam_family_batch

    def spy(model, embedding, points, settings):
        sizes.append(len(points))
        return real(model, embedding, points, settings)

    automatic.register_fast_path(type(tiny_model), spy, batch_size=lambda model: 10)
    try:
        drain(generate_candidates(tiny_model, _image(), AmgParams(points_per_side=5)))
        assert sizes == [10, 10, 5]
        sizes.clear()
        drain(generate_candidates(tiny_model, _image(), AmgParams(points_per_side=5, points_per_batch=7)))
        assert sizes == [7, 7, 7, 4]
    finally:
        automatic.register_fast_path(
            automatic_fastpath.SamFamilyAdapter, real, batch_size=automatic_fastpath.preferred_batch_size
        )
        automatic.unregister_fast_path(type(tiny_model))
    assert find_fast_path(tiny_model) is real
    assert automatic_fastpath.preferred_batch_size(tiny_model) == 256  # (1, 32, 64, 64) tokens
