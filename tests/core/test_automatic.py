"""Automatic mask generation (core/automatic.py): faithfulness to SamAutomaticMaskGenerator, re-filtering,
progress, cancellation, NMS, SAM's small-region clean-up, label image and object table."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from napari_sam_micro.core.automatic import (
    AmgParams,
    AmgResult,
    _offsets,
    _small_regions_in_box,
    automatic_segmentation,
    box_bits,
    box_nms,
    crop_boxes,
    generate_candidates,
    point_grid,
    remove_small_regions,
)
from napari_sam_micro.core.errors import UserInputError
from napari_sam_micro.core.labels import OBJECT_COLUMNS
from napari_sam_micro.core.masks import mask_to_box_xyxy
from napari_sam_micro.core.progress import Progress, drain

H, W = 128, 160

#: Thresholds under which the random-weight tiny model yields a dozen or so distinct masks
#: (its predicted IoUs are about -0.2..0.3 and its logits about +-0.1).
TINY = dict(
    points_per_side=8,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.02,
    stability_score_offset=0.01,
    box_nms_thresh=0.9,
)


def structured_image() -> np.ndarray:
    """``(128, 160, 3)`` float32: colour gradients plus a few flat discs."""
    yy, xx = np.mgrid[:H, :W]
    img = np.stack([yy / H, xx / W, 0.5 + 0 * xx], axis=-1).astype(np.float32)
    rng = np.random.default_rng(3)
    for _ in range(4):
        cy, cx, r = rng.uniform(20, H - 20), rng.uniform(20, W - 20), rng.uniform(6, 14)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.2, 1.0, 3)
    return img


@pytest.fixture(scope="module")
def image():
    return structured_image()


def _install_fake_cv2(monkeypatch):
    """SAM's ``remove_small_regions`` imports cv2 (not installed): give it connectedComponentsWithStats
    from scikit-image (an implementation independent of ours, which uses scipy)."""
    skm = pytest.importorskip("skimage.measure")

    def connected_components_with_stats(image, connectivity):
        assert connectivity == 8
        lab = skm.label(np.asarray(image), connectivity=2, background=0)
        n = int(lab.max()) + 1
        stats = np.zeros((n, 5), dtype=np.int32)
        stats[:, -1] = np.bincount(lab.ravel(), minlength=n)
        return n, lab.astype(np.int32), stats, None

    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(connectedComponentsWithStats=connected_components_with_stats))


def _sam_reference(tiny_model, image, params: AmgParams):
    sam_amg = pytest.importorskip("segment_anything.automatic_mask_generator")
    kwargs = {
        name: getattr(params, name)
        for name in (
            "points_per_side",
            "pred_iou_thresh",
            "stability_score_thresh",
            "stability_score_offset",
            "box_nms_thresh",
            "crop_n_layers",
            "crop_nms_thresh",
            "crop_overlap_ratio",
            "crop_n_points_downscale_factor",
            "min_mask_region_area",
        )
    }
    generator = sam_amg.SamAutomaticMaskGenerator(tiny_model.net, output_mode="binary_mask", **kwargs)
    return generator.generate(np.round(image * 255).astype(np.uint8))


def _assert_same_records(ref: list[dict], ours: list[dict]):
    assert len(ours) == len(ref)
    for r, o in zip(ref, ours):  # same order as SAM, too
        np.testing.assert_array_equal(o["segmentation"], r["segmentation"])
        assert o["area"] == r["area"]
        assert o["bbox"] == [int(v) for v in r["bbox"]]
        assert o["crop_box"] == [int(v) for v in r["crop_box"]]
        np.testing.assert_allclose(o["point_coords"], r["point_coords"])
        # the adapter feeds point coordinates as float32 where SAM's AMG passes float64: the
        # predicted IoU may differ in the last bits (the masks above are identical anyway)
        assert o["predicted_iou"] == pytest.approx(r["predicted_iou"], abs=1e-5)
        assert o["stability_score"] == pytest.approx(r["stability_score"], abs=1e-6)


def test_same_masks_as_sam_automatic_mask_generator(tiny_model, image):
    params = AmgParams(**TINY)
    ref = _sam_reference(tiny_model, image, params)
    result = drain(automatic_segmentation(tiny_model, image, params))
    assert len(ref) >= 8, "the test parameters should give a useful number of masks"
    _assert_same_records(ref, result.to_sam_records())


@pytest.mark.slow
def test_same_masks_as_sam_with_crops_and_small_region_cleanup(tiny_model, image, monkeypatch):
    _install_fake_cv2(monkeypatch)
    params = AmgParams(
        **TINY, crop_n_layers=1, crop_overlap_ratio=0.1, crop_nms_thresh=0.9, min_mask_region_area=10
    )
    ref = _sam_reference(tiny_model, image, params)
    result = drain(automatic_segmentation(tiny_model, image, params))
    assert len({tuple(r["crop_box"]) for r in ref}) > 1, "masks from several crops expected"
    _assert_same_records(ref, result.to_sam_records())


def test_refilter_needs_no_model_run_and_equals_a_fresh_run(tiny_model, image, call_recorder):
    model = call_recorder(tiny_model)  # not an adapter: takes the numpy path
    candidates = drain(generate_candidates(model, image, AmgParams(**TINY)))
    calls = (len(model.encoded_shapes), len(model.decode_calls))
    assert calls[0] == 1 and calls[1] > 0
    stricter = AmgParams(**{**TINY, "stability_score_thresh": 0.05, "box_nms_thresh": 0.7})
    refiltered = candidates.filter(stricter)
    again = candidates.filter(box_nms_thresh=0.7, stability_score_thresh=0.05)
    assert (len(model.encoded_shapes), len(model.decode_calls)) == calls  # no model call
    fresh = drain(automatic_segmentation(tiny_model, image, stricter))
    assert len(refiltered) == len(fresh) == len(again) > 0
    assert len(refiltered) < len(candidates.filter())
    for a, b in zip(refiltered.to_sam_records(), fresh.to_sam_records()):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        # ``model`` takes the generic numpy path, ``tiny_model`` the two-phase decoder (another
        # summation order): float32 rounding only
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-6)


def test_filter_refuses_what_needs_a_model_run(tiny_model, image):
    candidates = drain(generate_candidates(tiny_model, image, AmgParams(**{**TINY, "points_per_side": 4})))
    with pytest.raises(UserInputError, match="points_per_side"):
        candidates.filter(points_per_side=8)
    with pytest.raises(UserInputError, match="stability"):
        candidates.filter(stability_score_thresh=0.01)


def test_default_floors_keep_candidates_for_lower_thresholds():
    params = AmgParams()
    assert params.pred_iou_thresh == 0.88 and params.stability_score_thresh == 0.95
    with pytest.raises(UserInputError):
        AmgParams(points_per_side=0)
    with pytest.raises(UserInputError):
        AmgParams(box_nms_thresh=1.5)


def test_progress_and_cancellation(tiny_model, image, call_recorder):
    model = call_recorder(tiny_model)
    params = AmgParams(**{**TINY, "points_per_side": 4, "points_per_batch": 2})  # 16 points: 8 batches
    job = generate_candidates(model, image, params)
    reports = [next(job) for _ in range(4)]
    assert all(isinstance(r, Progress) for r in reports)
    assert reports[-1].total == 1 + 8 and reports[-1].done == 3
    assert [r.done for r in reports] == sorted(r.done for r in reports)
    job.close()
    calls = len(model.decode_calls)
    assert calls == 2
    with pytest.raises(StopIteration):
        next(job)
    assert len(model.decode_calls) == calls

    seen = []
    drain(generate_candidates(model, image, params), on_progress=seen.append)
    assert seen[-1].done == seen[-1].total == 9


def test_cache_reuses_the_embedding(tiny_model, image, call_recorder):
    from napari_sam_micro.core.cache import EmbeddingCache

    model = call_recorder(tiny_model)
    cache = EmbeddingCache(max_bytes=1 << 26)
    params = AmgParams(**{**TINY, "points_per_side": 2})
    drain(generate_candidates(model, image, params, cache=cache, cache_key="k"))
    drain(generate_candidates(model, image, params, cache=cache, cache_key="k"))
    assert len(model.encoded_shapes) == 1 and "k" in cache


def test_grid_and_crops_match_segment_anything():
    amg = pytest.importorskip("segment_anything.utils.amg")
    for n in (1, 5, 32):
        np.testing.assert_array_equal(point_grid(n), amg.build_point_grid(n))
    for shape, layers, ratio in [((128, 160), 1, 512 / 1500), ((517, 389), 2, 0.3), ((64, 64), 3, 0.1)]:
        assert crop_boxes(shape, layers, ratio) == amg.generate_crop_boxes(shape, layers, ratio)


def test_box_nms_matches_torchvision():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 200))
        xy = rng.integers(0, 100, size=(n, 2))
        wh = rng.integers(0, 40, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.int64)
        scores = rng.integers(0, 5, size=n).astype(np.float32) / 4  # many ties
        thr = float(rng.choice([0.3, 0.5, 0.7, 0.9]))
        ref = ops.nms(torch.as_tensor(boxes).float(), torch.as_tensor(scores), thr).numpy()
        np.testing.assert_array_equal(box_nms(boxes, scores, thr), ref)


def _random_mask(rng, shape):
    from scipy import ndimage as ndi

    noise = ndi.gaussian_filter(rng.random(shape), 2.0)
    return noise > np.quantile(noise, rng.uniform(0.3, 0.9))


def test_small_regions_on_the_box_equal_the_full_image():
    rng = np.random.default_rng(1)
    for trial in range(60):
        shape = (int(rng.integers(8, 40)), int(rng.integers(8, 40)))
        full = np.zeros(shape, dtype=bool)
        # a blob somewhere, sometimes touching edges or spanning the image
        y0, x0 = int(rng.integers(0, shape[0] // 2)) * (trial % 3 != 0), int(rng.integers(0, shape[1] // 2)) * (trial % 4 != 0)
        y1 = shape[0] if trial % 5 == 0 else int(rng.integers(y0 + 2, shape[0] + 1))
        x1 = shape[1] if trial % 7 == 0 else int(rng.integers(x0 + 2, shape[1] + 1))
        full[y0:y1, x0:x1] = _random_mask(rng, (y1 - y0, x1 - x0))
        if not full.any():
            continue
        thresh = float(rng.choice([2, 5, 20, 200, shape[0] * shape[1]]))
        expected, ch1 = remove_small_regions(full, thresh, "holes")
        expected, ch2 = remove_small_regions(expected, thresh, "islands")
        box = mask_to_box_xyxy(full)
        piece = full[box[1] : box[3] + 1, box[0] : box[2] + 1]
        out, is_full, changed = _small_regions_in_box(piece, box, shape, thresh)
        got = np.zeros(shape, dtype=bool)
        if is_full:
            got = out
        else:
            got[box[1] : box[3] + 1, box[0] : box[2] + 1] = out
        np.testing.assert_array_equal(got, expected)
        assert changed == (ch1 or ch2)


def test_remove_small_regions_semantics():
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:9, 1:9] = True
    mask[4, 4] = False  # a one-pixel hole
    mask[10, 10] = True  # a one-pixel island
    filled, changed = remove_small_regions(mask, 3, "holes")
    assert changed and filled[4, 4] and filled.sum() == mask.sum() + 1
    cleaned, changed = remove_small_regions(filled, 3, "islands")
    assert changed and not cleaned[10, 10] and cleaned.sum() == 64
    same, changed = remove_small_regions(cleaned, 3, "islands")
    assert not changed and np.array_equal(same, cleaned)
    # every island small: the largest stays
    tiny = np.zeros((5, 5), dtype=bool)
    tiny[0, 0] = tiny[3, 3] = tiny[3, 4] = True
    kept, _ = remove_small_regions(tiny, 10, "islands")
    assert kept.sum() == 2 and kept[3, 3]


def test_box_bits_cut_masks_to_their_boxes():
    rng = np.random.default_rng(2)
    masks = rng.random((5, 9, 11)) > 0.7
    masks[3] = False
    boxes = mask_to_box_xyxy(masks)
    bits = box_bits(masks, boxes)
    offsets = _offsets(boxes)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        piece = bits[offsets[i] : offsets[i + 1]].reshape(y1 - y0 + 1, x1 - x0 + 1)
        np.testing.assert_array_equal(piece, masks[i, y0 : y1 + 1, x0 : x1 + 1])


def _result_from_masks(masks, ious) -> AmgResult:
    masks = np.asarray(masks, dtype=bool)
    boxes = mask_to_box_xyxy(masks)
    n = len(masks)
    return AmgResult(
        params=AmgParams(),
        image_shape=masks.shape[1:],
        predicted_iou=np.asarray(ious, dtype=np.float32),
        stability_score=np.ones(n, dtype=np.float32),
        boxes=boxes,
        areas=masks.sum(axis=(1, 2)),
        point_coords=np.zeros((n, 2)),
        crop_boxes=np.tile([0, 0, masks.shape[2], masks.shape[1]], (n, 1)),
        bits=box_bits(masks, boxes),
        offsets=_offsets(boxes),
    )


def test_label_image_and_object_table():
    masks = np.zeros((4, 20, 30), dtype=bool)
    masks[0, 2:10, 2:12] = True  # iou 0.8
    masks[1, 5:15, 8:20] = True  # iou 0.9, overlaps 0 and wins there
    masks[2, 6:8, 9:11] = True  # iou 0.5, inside 1: hidden completely
    masks[3, 16:19, 25:29] = True  # iou 0.7
    result = _result_from_masks(masks, [0.8, 0.9, 0.5, 0.7])
    assert len(result) == 4 and result.objects[1].bbox == (8, 5, 11, 9)
    np.testing.assert_array_equal(result.objects[3].segmentation, masks[3])
    labels = result.to_label_image()
    assert labels.dtype == np.uint32 and labels.shape == (20, 30)
    assert set(np.unique(labels)) == {0, 1, 2, 3}  # ids 1..K, the hidden object has none
    np.testing.assert_array_equal(labels == 1, masks[1])  # best object first, whole
    np.testing.assert_array_equal(labels == 2, masks[0] & ~masks[1])
    np.testing.assert_array_equal(labels == 3, masks[3])
    table = result.object_table()
    assert set(OBJECT_COLUMNS) <= set(table)
    assert table["index"] == [1, 2, 3]
    assert table["area"] == [int((labels == k).sum()) for k in (1, 2, 3)]
    assert table["predicted_iou"] == pytest.approx([0.9, 0.8, 0.7])
    assert (table["bbox_y0"][2], table["bbox_x0"][2], table["bbox_y1"][2], table["bbox_x1"][2]) == (16, 25, 19, 29)
    assert table["prompt"] == ["everything"] * 3


def test_microscopy_postprocessing_and_max_area(tiny_model, image):
    candidates = drain(generate_candidates(tiny_model, image, AmgParams(**TINY)))
    base = candidates.filter()
    limited = candidates.filter(max_mask_region_area=200)
    assert len(limited) < len(base) and all(limited.areas <= 200)
    cleaned = candidates.filter(fill_holes=True, keep_largest_component=True)
    from scipy import ndimage as ndi

    for i in range(len(cleaned)):
        mask = cleaned.mask(i)
        assert ndi.label(mask, structure=np.ones((3, 3)))[1] == 1
        np.testing.assert_array_equal(ndi.binary_fill_holes(mask), mask)
        assert cleaned.areas[i] == mask.sum()
        x0, y0, x1, y1 = cleaned.boxes[i]
        assert mask[y0 : y1 + 1, x0 : x1 + 1].sum() == mask.sum()


def test_rejects_images_that_are_not_normalised_rgb(tiny_model):
    from napari_sam_micro.core.errors import ImageError

    with pytest.raises(ImageError):
        drain(generate_candidates(tiny_model, np.zeros((10, 10), np.float32)))
