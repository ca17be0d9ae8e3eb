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
    for name in ("crop_index", "predicted_iou", "stability_score", "boxes", "areas", "point_coords", "bits", "offsets"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)


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
