"""core.refine: prompts from old objects, mask input in the model frame, batched decoding, edits."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_micro.core.cache import EmbeddingCache
from napari_sam_micro.core.degrade import best_match_iou, degrade_labels, dilate_labels, erode_labels, merge_touching_pairs
from napari_sam_micro.core.errors import UserInputError
from napari_sam_micro.core.progress import drain
from napari_sam_micro.core.refine import (
    MASK_LOGIT,
    ObjectClicks,
    apply_refinements,
    assign_clicks,
    label_objects,
    mask_logits,
    refine_prompt,
    refinement_edits,
)
from napari_sam_micro.plane_jobs import refine_job
from napari_sam_micro.session import AnnotationSession


def _plane():
    labels = np.zeros((120, 160), np.int32)
    labels[20:40, 20:44] = 1  # 20 x 24 rectangle
    labels[60:90, 100:130] = 2
    labels[60:90, 130:140] = 3  # touches 2
    return labels


def test_refine_prompt_is_the_padded_box_plus_interior_point_and_clicks():
    mask = np.zeros((10, 20), bool)
    mask[2:8, 4:16] = True
    p = refine_prompt(mask, (100, 50), (300, 300), "box", box_pad=0.0)
    np.testing.assert_array_equal(p.box, [54, 102, 65, 107])  # inclusive (x0, y0, x1, y1) on the plane
    assert p.point_coords is None and p.kind == "box"
    p = refine_prompt(mask, (100, 50), (300, 300), "box+point", box_pad=0.1)
    np.testing.assert_allclose(p.box, [54 - 2.1, 102 - 2.1, 65 + 2.1, 107 + 2.1], atol=1e-5)
    assert p.point_labels.tolist() == [1]
    x, y = p.point_coords[0]
    assert 54 + 2 <= x <= 65 - 2 and 102 + 2 <= y <= 107 - 2
    clicks = ObjectClicks(np.array([[60.0, 104.0]], np.float32), np.array([0], np.int32))
    p = refine_prompt(mask, (100, 50), (300, 300), "box", clicks=clicks)
    assert p.kind == "box+points" and p.point_labels.tolist() == [0]
    with pytest.raises(ValueError):
        refine_prompt(mask, (0, 0), (300, 300), "lasso")


def test_mask_logits_map_the_mask_into_the_windows_model_frame():
    # window 64 rows x 128 cols at (y0=10, x0=20): its longer side spans 256 low-res pixels (2 per
    # window pixel), so rows 0..127 hold the window and the rest is padding
    mask = np.zeros((20, 20), bool)
    mask[:, :] = True  # plane rows 30..49, cols 40..59 (offset (30, 40))
    out = mask_logits(mask, (30, 40), (10, 74, 20, 148), (200, 200))
    assert out.shape == (1, 256, 256) and out.dtype == np.float32
    inside = out[0] > 0
    rows, cols = np.nonzero(inside)
    # window rows / cols 20..39 -> low-res 40..79
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (40, 79, 40, 79)
    assert out[0, 128:, :].max() == -MASK_LOGIT  # the padding below the window is "outside"
    assert np.abs(out).min() == pytest.approx(MASK_LOGIT)


def test_label_objects_and_user_errors():
    labels = _plane()
    assert [i for i, _ in label_objects(labels)] == [1, 2, 3]
    assert [i for i, _ in label_objects(labels, [3, 9])] == [3]
    with pytest.raises(UserInputError, match="no object with id"):
        label_objects(labels, [9])
    with pytest.raises(UserInputError, match="2D"):
        label_objects(labels[None])


def test_clicks_attach_to_the_object_under_them_or_nearby():
    labels = _plane()
    got = assign_clicks(labels, np.array([[30.0, 30.0], [45.0, 32.0], [5.0, 150.0]]), np.array([True, False, True]))
    assert set(got) == {1}  # the far background click belongs to nobody
    np.testing.assert_allclose(got[1].points_xy, [[30, 30], [32, 45]])
    assert got[1].labels.tolist() == [1, 0]


def _refine(disk_model, labels, **kw):
    model = disk_model(radius=5)
    s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True)
    image = np.where(labels > 0, 1000, 100).astype(np.uint16)
    s.set_image(image)
    return model, drain(refine_job(s, labels, **kw))


def test_each_object_becomes_the_masks_its_box_gives_batched_per_window(disk_model):
    labels = _plane()
    model, refined = _refine(disk_model, labels, box_pad=0.0)
    assert [r.label_id for r in refined] == [1, 2, 3]
    # the disk model answers a box with its inscribed ellipse: a rectangle's refinement is smaller
    r1 = refined[0]
    assert r1.old_area == 20 * 24 and 0.6 < r1.new_area / r1.old_area < 0.9
    assert 0.6 < r1.iou_old_new < 0.9
    y0, x0, y1, x1 = r1.new.bbox()
    assert (y0, x0) >= (20, 20) and (y1, x1) <= (40, 44)
    # one decoder call per window, all boxes of a window together, no mask input with "box"
    calls = model.decode_calls
    assert sum(len(c["boxes"]) for c in calls) == 3 and not any(c["mask_input"] for c in calls)
    _, refined_mask = _refine(disk_model, labels, strategy="box+mask")
    assert len(refined_mask) == 3


def test_only_the_chosen_ids_and_a_mask_input_per_object(disk_model):
    labels = _plane()
    model, refined = _refine(disk_model, labels, ids=[2], strategy="box+mask+point")
    assert [r.label_id for r in refined] == [2]
    (call,) = model.decode_calls
    assert call["mask_input"] and call["points"].shape == (1, 1, 2)


def test_edits_keep_ids_clear_lost_pixels_and_spare_neighbours(disk_model):
    labels = _plane()
    _, refined = _refine(disk_model, labels, box_pad=0.3)
    out = apply_refinements(labels, refined)
    assert set(np.unique(out)) == {0, 1, 2, 3}
    # without overwrite an object never takes its neighbour's pixels
    for obj in refined:
        grown = (out == obj.label_id) & (labels != obj.label_id)
        assert not (labels[grown] > 0).any()
    # every pixel that changed belongs to an edit of its object
    for value, rr, cc in refinement_edits(labels, refined):
        assert value in (0, 1, 2, 3)
        assert (out[rr, cc] == value).all()
    over = apply_refinements(labels, refined, overwrite=True)
    assert (over != out).any()  # the padded ellipses of 2 and 3 overlap: overwrite lets 3 take pixels of 2


def test_refine_rejects_labels_of_another_size(disk_model):
    with pytest.raises(UserInputError, match="labels plane"):
        model = disk_model(radius=5)
        s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True)
        s.set_image(np.zeros((50, 50), np.uint16))
        drain(refine_job(s, _plane()))


def test_degradations_spoil_the_labels_as_named():
    labels = _plane()
    eroded, dilated = erode_labels(labels), dilate_labels(labels)
    for i in (1, 2, 3):
        assert (eroded == i).sum() < (labels == i).sum()
        assert (eroded == i)[labels != i].sum() == 0
    assert (dilated == 1).sum() > (labels == 1).sum()
    merged, pairs = merge_touching_pairs(labels)
    assert pairs == 1 and set(np.unique(merged)) == {0, 1, 2}
    assert best_match_iou(labels, degrade_labels(labels, "none")).tolist() == [1.0, 1.0, 1.0]
    iou = best_match_iou(labels, merged)
    assert iou[0] == 1.0 and iou[1] < 1.0 and iou[2] < 1.0
    with pytest.raises(ValueError):
        degrade_labels(labels, "blur")


def test_point_strategy_takes_the_place_not_the_extent_of_the_old_object(disk_model):
    labels = _plane()
    _, clean = _refine(disk_model, labels, strategy="point")
    _, loose = _refine(disk_model, dilate_labels(labels, 0.3), strategy="point")
    _, boxed = _refine(disk_model, dilate_labels(labels, 0.3), strategy="box")
    assert [r.label_id for r in clean] == [1, 2, 3]
    for a, b in zip(clean, loose):  # the interior click finds the same object however loose the label
        assert abs(a.new_area - b.new_area) <= 0.2 * a.new_area
        ca, cb = (np.argwhere(r.new.mask).mean(axis=0) for r in (a, b))
        assert np.hypot(*(ca - cb)) <= 3.0
    # the box prompt follows the loose label instead
    assert sum(r.new_area for r in boxed) > sum(r.new_area for r in loose)


def test_refining_more_objects_than_the_cache_holds(disk_model):
    """313 nuclei once evicted the first windows' embeddings before their turn (EmbeddingNotReady)."""
    from napari_sam_micro.core.refine import REFINE_CHUNK

    labels = np.zeros((120, 40 * (REFINE_CHUNK + 4)), np.int32)
    n = REFINE_CHUNK + 4
    for k in range(n):  # one object per window, far apart
        labels[50:62, 40 * k + 14 : 40 * k + 26] = k + 1
    model = disk_model(6)
    one = model.encode(np.zeros((64, 64, 3), np.float32)).nbytes
    s = AnnotationSession(model, EmbeddingCache(max_bytes=3 * one), crop_to_prompt=True)
    s.set_image(np.where(labels > 0, 1000, 100).astype(np.uint16))
    refined = drain(refine_job(s, labels))
    assert [r.label_id for r in refined] == list(range(1, n + 1))
    assert all(r.new is not None and r.new_area > 0 for r in refined)
