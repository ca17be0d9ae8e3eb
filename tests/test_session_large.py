"""Annotating planes too large to hold: a lazy plane is read window by window, never whole.

A 20480 x 20480 dask plane whose chunks count their reads stands for a slide scan; the masks are
checked against the in-memory path on a real DSB image placed in a large plane.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_micro.core.errors import ImageError
from napari_sam_micro.core.large_planes import is_large_plane
from napari_sam_micro.core.preprocess import PreprocessConfig
from napari_sam_micro.core.progress import drain
from napari_sam_micro.core.prompts import Prompts
from napari_sam_micro.plane_jobs import preencode_job, segment_seeds_job
from napari_sam_micro.session import AnnotationSession

da = pytest.importorskip("dask.array")

SIDE, CHUNK = 20480, 1024
DISCS = ((15000, 17000), (15040, 17060), (300, 400))  # (row, col) of bright discs of radius 10


def _session(model, **kwargs):
    return AnnotationSession(model, crop_to_prompt=True, **kwargs)


def test_a_box_on_a_20k_lazy_plane_reads_its_window_and_a_fixed_sample(disk_model, counted_plane):
    plane = counted_plane(SIDE, CHUNK, DISCS)
    session = _session(disk_model(12))
    session.set_image(plane.array)
    assert session.large_plane and session.image_hw == (SIDE, SIDE)
    sampled = plane.distinct
    assert sampled <= 36  # the grid of blocks the stretch is measured on, whatever the plane's size
    cy, cx = DISCS[0]
    prediction = drain(session.predict_job(Prompts(boxes_xyxy=[[cx - 11, cy - 11, cx + 11, cy + 11]])))
    obj = prediction.objects[0]
    (y0, y1, x0, x1), crop = obj.window, obj.crop
    rr, cc = np.nonzero(crop)
    assert abs(rr.mean() + y0 - cy) < 1 and abs(cc.mean() + x0 - cx) < 1  # the disc, where it lies
    assert y1 - y0 < 200 and x1 - x0 < 200
    # the window's chunks only, on top of the sample: 400 chunks of 1024 x 1024 in all
    assert plane.distinct <= sampled + 4
    with pytest.raises(ImageError, match="too large to process in one piece"):
        drain(segment_seeds_job(session, np.array([[cy, cx]])))


def test_a_click_on_a_large_plane_measures_the_object_scale_around_it(disk_model, counted_plane):
    plane = counted_plane(SIDE, CHUNK, DISCS)
    session = _session(disk_model(12))
    session.set_image(plane.array)
    sampled = plane.distinct
    cy, cx = DISCS[0]
    prediction = drain(session.predict_job(Prompts([[float(cx), float(cy)]], [1])))
    obj = prediction.objects[0]
    rr, cc = np.nonzero(obj.crop)
    assert abs(rr.mean() + obj.window[0] - cy) < 2 and abs(cc.mean() + obj.window[2] - cx) < 2
    # the 2048 x 2048 region around the click (the objects' scale) plus the click's windows
    assert plane.distinct <= sampled + 9
    assert plane.distinct <= plane.chunks // 10


def test_pre_encoding_a_large_plane_plans_around_the_view_centre(disk_model, counted_plane):
    plane = counted_plane(SIDE, CHUNK, DISCS)
    model = disk_model(12)
    session = _session(model)
    session.set_image(plane.array)
    encoded = drain(preencode_job(session, centre_rc=DISCS[0], max_windows=5))
    assert encoded >= 1
    windows = session.encoded_windows()
    cy, cx = DISCS[0]
    assert any(y0 <= cy < y1 and x0 <= cx < x1 for y0, y1, x0, x1 in windows)
    assert plane.distinct <= plane.chunks // 10


def test_two_large_planes_equal_on_the_sample_never_share_a_window(disk_model, counted_plane):
    """The plane key is built from a sample; every window key adds the window's own pixels."""
    a, b = counted_plane(SIDE, CHUNK, DISCS), counted_plane(SIDE, CHUNK, DISCS[:1] + ((15040, 17200),))
    session = _session(disk_model(12))
    session.set_image(a.array)
    window = (14900, 15156, 16900, 17156)
    key_a = session.embedding_key(window)
    session.set_image(b.array)
    assert session.embedding_key(window) != key_a
    assert session.embedding_key((0, 256, 0, 256)) != key_a


def test_whole_image_models_are_refused_on_a_large_plane(disk_model, counted_plane):
    session = AnnotationSession(disk_model(12))  # not crop_to_prompt: it would encode the whole plane
    session.set_image(counted_plane(SIDE, CHUNK, DISCS).array)
    with pytest.raises(ImageError, match="read window by window"):
        drain(session.embedding_job())


@pytest.mark.slow
@pytest.mark.data
def test_a_dsb_nucleus_in_a_large_plane_gets_the_in_memory_mask(shared_data):
    """micro-tiny on a DSB image placed in a 4200 x 4200 lazy plane: the in-memory box and click masks."""
    tifffile = pytest.importorskip("tifffile")
    from napari_sam_micro.core.masks import farthest_interior_point, mask_to_box_xyxy
    from napari_sam_micro.core.preprocess import PlaneNormalizer
    from napari_sam_micro.models.registry import get_spec, load_model

    name = "2349e95ece2857c8"
    image = tifffile.imread(shared_data / "dsb2018-train" / "images" / f"{name}.tif")
    truth = tifffile.imread(shared_data / "dsb2018-train" / "labels" / f"{name}.tif")
    if image.ndim == 3:
        image = image[..., 0]
    # a nucleus away from the image's border: its windows lie inside the image in both planes
    h, w = truth.shape
    ids = [i for i in np.unique(truth)[1:] if np.count_nonzero(truth == i) >= 60]
    oid = min(ids, key=lambda i: np.hypot(*(np.argwhere(truth == i).mean(0) - (h / 2, w / 2))))
    gt = truth == oid
    config = PreprocessConfig(value_ranges=PlaneNormalizer(image).value_ranges)  # one stretch for both planes
    r0, c0 = 3000, 3500
    big = np.full((4200, 4200), np.median(image), dtype=image.dtype)
    big[r0 : r0 + h, c0 : c0 + w] = image
    lazy = da.from_array(big, chunks=512)
    assert is_large_plane(lazy.shape)
    spec = get_spec("micro-tiny")
    model = load_model("micro-tiny", device="cpu")
    box = mask_to_box_xyxy(gt).astype(np.float32)
    r, c, _ = farthest_interior_point(gt)
    for prompts, shifted in (
        (Prompts(boxes_xyxy=[box]), Prompts(boxes_xyxy=[box + [c0, r0, c0, r0]])),
        (Prompts([[float(c), float(r)]], [1]), Prompts([[float(c + c0), float(r + r0)]], [1])),
    ):
        small = AnnotationSession(model, preprocess=config, model_id=spec.embedding_id, **AnnotationSession.options_for(spec))
        small.set_image(image)
        large = AnnotationSession(model, preprocess=config, model_id=spec.embedding_id, **AnnotationSession.options_for(spec))
        large.set_image(lazy)
        assert large.large_plane and not small.large_plane
        expected = drain(small.predict_job(prompts)).objects[0].mask
        got = drain(large.predict_job(shifted)).objects[0].mask[r0 : r0 + h, c0 : c0 + w]
        overlap = np.count_nonzero(got & expected) / max(1, np.count_nonzero(got | expected))
        assert overlap > 0.98, overlap
        assert np.count_nonzero(got & gt) / np.count_nonzero(got | gt) > 0.7
