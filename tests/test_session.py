"""AnnotationSession: embeddings (cached, stale-safe), prompts → masks, commit plans (tiny random model)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_micro.core.cache import EmbeddingCache
from napari_sam_micro.core.errors import ImageError, PromptError, UserInputError
from napari_sam_micro.core.preprocess import PreprocessConfig
from napari_sam_micro.core.progress import Progress, drain
from napari_sam_micro.core.prompts import Prompts
from napari_sam_micro.plane_jobs import preencode_job, segment_seeds_job
from napari_sam_micro.session import AnnotationSession, EmbeddingNotReady


def _image(seed=0, shape=(120, 160)):
    rng = np.random.default_rng(seed)
    img = rng.normal(1000, 50, shape)
    img[30:70, 40:90] += 2000  # a bright object
    return img.astype(np.uint16)


@pytest.fixture
def model(tiny_model, call_recorder):
    return call_recorder(tiny_model)


@pytest.fixture
def session(model):
    s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=False)
    s.set_image(_image())
    return s


def test_embedding_job_yields_progress_and_is_cached(session, model):
    reports = []
    generation = session.generation
    emb = drain(session.embedding_job(), reports.append)
    assert all(isinstance(r, Progress) for r in reports) and len(reports) >= 2
    assert emb.original_size == (120, 160)
    assert session.accept_embedding(emb, generation)
    assert session.embedding is emb
    assert model.encoded_shapes == [(120, 160, 3)]
    # same image + model again: cache hit, no encoder call
    again = drain(session.embedding_job())
    assert again is emb
    assert len(model.encoded_shapes) == 1


def test_cache_hit_for_a_new_session_on_the_same_image_and_model(model):
    cache = EmbeddingCache()
    first = AnnotationSession(model, cache)
    first.set_image(_image())
    emb = first.compute_embedding()
    second = AnnotationSession(model, cache)
    got = []
    second.embedding_changed.connect(got.append)
    second.set_image(_image())  # same content, new array
    assert second.embedding is emb and got == [emb]
    assert len(model.encoded_shapes) == 1
    # other content or other preprocessing: a new embedding is needed
    second.set_image(_image(seed=1))
    assert second.embedding is None
    second.set_image(_image(), PreprocessConfig(percentiles=(0.5, 99.5)))
    assert second.embedding is None


def test_stale_embedding_is_dropped_when_the_image_changes_mid_way(session, model):
    generation = session.generation
    job = session.embedding_job()
    next(job)  # started
    session.set_image(_image(seed=5))  # the user switched images
    emb = drain(job)
    assert emb.original_size == (120, 160)
    assert not session.accept_embedding(emb, generation)
    assert session.embedding is None
    # a fresh job for the new image is accepted
    generation = session.generation
    assert session.accept_embedding(drain(session.embedding_job()), generation)


def test_reset_makes_a_running_job_stale(session):
    generation = session.generation
    emb = drain(session.embedding_job())
    session.reset()
    assert not session.accept_embedding(emb, generation)


def test_predict_needs_the_embedding(session):
    with pytest.raises(EmbeddingNotReady) as info:
        session.predict(Prompts([[60, 50]], [1]))
    assert info.value.windows == [None]


def test_predict_single_point_multimask_then_refine(session, model):
    session.compute_embedding()
    previews = []
    session.preview_changed.connect(previews.append)
    first = session.predict(Prompts([[60, 50]], [1]))
    assert len(first.objects) == 1
    obj = first.objects[0]
    assert obj.mask.shape == (120, 160) and obj.mask.dtype == bool
    assert obj.kind == "points"
    assert 0.0 <= obj.stability <= 1.0
    assert obj.low_res_logits.shape == (1, 256, 256)
    assert model.decode_calls[-1]["multimask"] and not model.decode_calls[-1]["mask_input"]
    # adding a negative point refines with the previous logits, single-mask output
    second = session.predict(Prompts([[60, 50], [10, 10]], [1, 0]))
    assert model.decode_calls[-1]["mask_input"] and not model.decode_calls[-1]["multimask"]
    assert previews == [first, second] and session.preview is second
    # a point moved (not added): no refinement
    session.predict(Prompts([[62, 50]], [1]))
    assert not model.decode_calls[-1]["mask_input"]


def test_point_coordinates_reach_the_decoder_in_xy_order(session, model):
    session.compute_embedding()
    session.predict(Prompts([[150.0, 20.0]], [1]))  # x = 150 (column), y = 20 (row)
    np.testing.assert_allclose(model.decode_calls[-1]["points"], [[[150.0, 20.0]]])


def test_several_boxes_are_decoded_in_one_batched_call(session, model):
    session.compute_embedding()
    boxes = [[10, 10, 50, 40], [80, 20, 150, 100], [5, 60, 30, 110]]
    before = len(model.decode_calls)
    pred = session.predict(Prompts(boxes_xyxy=boxes))
    assert len(model.decode_calls) == before + 1
    np.testing.assert_allclose(model.decode_calls[-1]["boxes"], np.asarray(boxes, np.float32))
    assert [o.kind for o in pred.objects] == ["box"] * 3
    assert pred.masks.shape == (3, 120, 160)
    labels = pred.label_image()
    assert set(np.unique(labels)) <= {0, 1, 2, 3}


def test_box_with_points_is_one_object(session):
    session.compute_embedding()
    pred = session.predict(Prompts([[60, 50]], [1], [[40, 30, 90, 70]]))
    assert [o.kind for o in pred.objects] == ["box+points"]


def test_bad_prompts_raise_prompt_errors(session):
    session.compute_embedding()
    with pytest.raises(PromptError):
        session.predict(Prompts())
    with pytest.raises(PromptError):
        session.predict(Prompts([[10, 10]], [0]))  # only negative points


def _blobs(shape=(300, 400), blobs=(((100, 100), 10), ((150, 280), 30))):
    """uint16 image with bright disks ``((row, col), radius)`` on a noisy background."""
    rng = np.random.default_rng(0)
    img = rng.normal(1000, 20, shape)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    for (r, c), rad in blobs:
        img[(rr - r) ** 2 + (cc - c) ** 2 <= rad**2] += 3000
    return img.astype(np.uint16)


def _predict_all(s, prompts):
    """predict(), computing every embedding it asks for; returns (prediction, windows encoded)."""
    asked = []
    for _ in range(6):
        try:
            return s.predict(prompts), asked
        except EmbeddingNotReady as need:
            asked.append(need.windows)
            drain(s.embeddings_job(need.windows))
    raise AssertionError("predict kept asking for embeddings")


def test_a_click_window_follows_the_object_size_under_it(disk_model):
    s = AnnotationSession(disk_model(radius=5), EmbeddingCache(), crop_to_prompt=True)
    s.set_image(_blobs())
    sides = []
    for (r, c), diameter in (((100, 100), 20), ((150, 280), 60)):
        (window,) = s.missing_embeddings(Prompts([[c, r]], [1]))
        y0, y1, x0, x1 = window
        assert y0 <= r < y1 and x0 <= c < x1
        assert y1 - y0 == x1 - x0
        assert 1.6 * diameter <= y1 - y0 <= 3.2 * diameter
        sides.append(y1 - y0)
    assert sides[1] > 2 * sides[0]


def test_a_click_is_decoded_in_two_stages_in_one_window_and_pasted_back(disk_model):
    model = disk_model(radius=8)
    s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True)
    s.set_image(_blobs())
    prompts = Prompts([[100, 100]], [1])  # (x, y) on the small blob
    (first,) = s.missing_embeddings(prompts)
    pred, asked = _predict_all(s, prompts)
    # stage 2 (the first mask's box) fits the click's window: one window per click
    assert asked == [[first]] and len(model.encoded_shapes) == 1
    click, boxed = model.decode_calls[-2:]
    y0, y1, x0, x1 = first
    np.testing.assert_allclose(click["points"], [[[100 - x0, 100 - y0]]])
    assert click["multimask"] and click["boxes"] is None
    assert not boxed["multimask"] and boxed["points"] is not None
    # the box is the first mask's bounding box (a radius-8 disk) padded by CLICK_BOX_PAD, same window
    bx0, by0, bx1, by1 = boxed["boxes"][0] + [x0, y0, x0, y0]
    assert bx0 < 92 < 108 < bx1 and by0 < 92 < 108 < by1
    assert bx1 - bx0 < 16 * (1 + 2 * 0.1) + 4
    obj = pred.objects[0]
    assert obj.window == first and obj.kind == "points" and obj.predicted_iou == pytest.approx(0.8)
    assert obj.mask.shape == (300, 400) and obj.mask[100, 100]
    outside = np.ones_like(obj.mask)
    outside[y0:y1, x0:x1] = False
    assert not obj.mask[outside].any()
    # a second point refines in the same window: nothing new is encoded, previous logits are used
    pred2 = s.predict(Prompts([[100, 100], [103, 101]], [1, 1]))
    assert pred2.objects[0].window == first and len(model.encoded_shapes) == 1
    assert model.decode_calls[-1]["mask_input"]


def test_a_click_whose_box_does_not_fit_its_window_takes_a_box_window(disk_model):
    model = disk_model(radius=14)  # the mask is larger than the 20-px blob the window was sized for
    s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True)
    s.set_image(_blobs())
    prompts = Prompts([[100, 100]], [1])
    (first,) = s.missing_embeddings(prompts)
    pred, asked = _predict_all(s, prompts)
    assert asked[0] == [first] and len(asked) == 2 and asked[1] != [first]
    assert pred.objects[0].window == asked[1][0]


def test_a_prompt_on_an_object_inside_an_encoded_window_is_decoded_there(disk_model):
    model = disk_model(radius=12)
    s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True)
    s.set_image(_blobs(blobs=(((110, 100), 12), ((110, 130), 12), ((250, 350), 12))))
    wide = (74, 146, 80, 152)  # 72 px: 2.9 x the 25-px boxes of both left blobs, with margins
    drain(s.embeddings_job([wide]))
    assert s.encoded_windows() == [wide]
    n = len(model.encoded_shapes)
    box = Prompts(boxes_xyxy=[[88, 98, 112, 122]])
    assert s.missing_embeddings(box) == []
    pred = s.predict(box)
    assert pred.objects[0].window == wide and len(model.encoded_shapes) == n
    # a click's first stage is decoded there too; its box stage wants the window a box gets
    click = Prompts([[130, 110]], [1])
    s.clear_preview()
    assert s.missing_embeddings(click) == []
    with pytest.raises(EmbeddingNotReady) as need:
        s.predict(click)
    (box_window,) = need.value.windows
    assert box_window != wide and len(model.encoded_shapes) == n
    # an object near the window's border or outside it needs its own window
    assert s.missing_embeddings(Prompts(boxes_xyxy=[[338, 238, 362, 262]])) != []
    assert s.missing_embeddings(Prompts(boxes_xyxy=[[126, 98, 151, 122]])) != []
    drain(s.embeddings_job([box_window]))
    assert s.predict(click).objects[0].window == box_window


def test_a_click_window_grows_while_the_mask_reaches_its_border(disk_model):
    model = disk_model(radius=40)  # far larger than the 20-px blob clicked on
    s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True)
    s.set_image(_blobs())
    (first,) = s.missing_embeddings(Prompts([[100, 100]], [1]))
    side = first[1] - first[0]
    _predict_all(s, Prompts([[100, 100]], [1]))
    sides = [shape[0] for shape in model.encoded_shapes]
    assert sides[:2] == [side, 2 * side]
    assert s.preview.objects[0].mask.sum() > 0.7 * np.pi * 40**2


def test_commit_plan_uses_next_free_ids_and_keeps_existing_labels(session):
    session.compute_embedding()
    pred = session.predict(Prompts(boxes_xyxy=[[10, 10, 60, 60], [70, 10, 150, 110]]))
    labels = np.zeros((120, 160), np.uint16)
    labels[0:40, 0:40] = 7
    plan = session.commit_plan(labels, overwrite=False)
    assert [item.label_id for item in plan] == list(range(8, 8 + len(plan)))
    painted = np.zeros_like(labels)
    for item in plan:
        assert not (labels[item.indices] != 0).any()  # only background is painted
        assert not (painted[item.indices] != 0).any()  # objects of one commit do not overlap
        painted[item.indices] = item.label_id
        assert item.row["index"] == item.label_id
        assert item.row["area"] == item.indices[0].size
        assert item.row["prompt"] == "box"
        assert item.row["predicted_iou"] == pytest.approx(pred.objects[item.object_index].predicted_iou)
    assert labels is not None and (labels[0:40, 0:40] == 7).all()  # not modified


def test_commit_plan_overwrite_and_nd_indices(session):
    session.compute_embedding()
    pred = session.predict(Prompts(boxes_xyxy=[[0, 0, 159, 119]]))
    mask = pred.objects[0].mask
    assert mask.any()
    labels = np.zeros((3, 120, 160), np.uint32)
    labels[1][mask] = 4
    (keep,) = session.commit_plan(labels, overwrite=True, leading=(1,)) or (None,)
    assert keep is not None and keep.label_id == 5
    assert len(keep.indices) == 3 and (keep.indices[0] == 1).all()
    assert keep.indices[1].size == mask.sum()
    assert session.commit_plan(labels, overwrite=False, leading=(1,)) == []


def test_commit_plan_without_preview_or_with_full_dtype(session):
    with pytest.raises(PromptError):
        session.commit_plan(np.zeros((120, 160), np.uint8))
    session.compute_embedding()
    session.predict(Prompts(boxes_xyxy=[[10, 10, 60, 60]]))
    full = np.zeros((120, 160), np.uint8)
    full[0, 0] = 255
    with pytest.raises(UserInputError):
        session.commit_plan(full)


def test_set_image_rejects_non_planes(session):
    with pytest.raises(ImageError):
        session.set_image(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ImageError):
        session.set_image(np.zeros(10))


def test_points_as_boxes_for_box_only_models(model):
    """A click on a box-only model becomes one batched decode of candidate boxes around it."""
    s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True, points_as_boxes=True)
    s.set_image(_image(shape=(300, 400)))
    prompts = Prompts([[200, 150], [230, 150]], [1, 0])
    drain(s.embeddings_job(s.missing_embeddings(prompts)))
    pred = s.predict(prompts)
    call = model.decode_calls[-1]
    assert call["points"] is None and call["boxes"].shape == (7, 4)
    y0, y1, x0, x1 = pred.objects[0].window
    centre = (call["boxes"][:, :2] + call["boxes"][:, 2:]) / 2
    # boxes are centred on the positive point (window frame) unless clipped by the window
    unclipped = (call["boxes"][:, 0] > 0) & (call["boxes"][:, 2] < x1 - x0 - 1)
    np.testing.assert_allclose(centre[unclipped, 0], 200 - x0)
    sides = call["boxes"][unclipped, 2] - call["boxes"][unclipped, 0]
    assert np.all(np.diff(sides) > 0)  # growing candidates
    assert pred.objects[0].kind == "points" and pred.objects[0].mask.shape == (300, 400)


def test_segment_seeds_job_decodes_the_seeds_of_a_window_in_two_batched_calls(disk_model):
    model = disk_model(radius=6)
    s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True)
    s.set_image(_blobs(blobs=(((50, 60), 8), ((150, 180), 8))))
    seeds_rc = np.array([[50.0, 60.0], [150.0, 180.0], [150.0, 182.0]])
    result = drain(segment_seeds_job(s, seeds_rc, iou_floor=0.0, min_area=0))
    # two first-stage windows (the two close seeds share one), one multimask call each with all
    # its clicks (again once their box windows are encoded); then each first mask's padded box plus
    # its click, batched per box window
    clicks = [c for c in model.decode_calls if c["boxes"] is None]
    boxed = [c for c in model.decode_calls if c["boxes"] is not None]
    assert sorted(len(c["points"]) for c in clicks) in ([1, 2], [1, 1, 2], [1, 2, 2], [1, 1, 2, 2])
    assert all(c["multimask"] and c["points"].shape[1:] == (1, 2) for c in clicks)
    assert sum(len(c["boxes"]) for c in boxed) == 3 and not any(c["multimask"] for c in boxed)
    assert result.windows_encoded == len(model.encoded_shapes) <= 2 + 3
    windows = s.encoded_windows()
    for (r, c) in seeds_rc:  # every seed lies well inside one of the windows
        assert any(y0 + 5 < r < y1 - 5 and x0 + 5 < c < x1 - 5 for y0, y1, x0, x1 in windows)
    assert result.labels.shape == (300, 400) and result.labels.dtype == np.uint32
    ids = np.unique(result.labels)
    ids = ids[ids > 0]
    # the two seeds on one object give one object (duplicates removed)
    assert result.table["index"] == ids.tolist() == [1, 2]
    assert all(p == "seed" for p in result.table["prompt"])
    for r, c in seeds_rc:
        assert result.labels[int(r), int(c)] > 0
    assert not result.labels[:30].any() and not result.labels[80:130].any()
    assert result.generation == s.generation
    # every window is cached: a second run encodes nothing new
    n_enc = len(model.encoded_shapes)
    drain(segment_seeds_job(s, seeds_rc))
    assert len(model.encoded_shapes) == n_enc


def _seeded_runs(disk_model, radius, blobs, seeds_rc):
    runs = {}
    for reuse in (True, False):
        model = disk_model(radius=radius)
        s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True)
        s.set_image(_blobs(blobs=blobs))
        result = drain(segment_seeds_job(s, seeds_rc, iou_floor=0.0, min_area=0, box_stage_reuse=reuse))
        boxed = [c for c in model.decode_calls if c["boxes"] is not None]
        runs[reuse] = (result, len(model.encoded_shapes), boxed)
    return runs


def test_everything_mode_decodes_the_box_stage_in_the_seeds_window_where_a_box_would_be(disk_model):
    """With ``box_stage_reuse`` a seed's box stage reuses its first-stage window when a box prompt would (off by default)."""
    seeds_rc = np.array([[50.0, 60.0], [150.0, 180.0], [150.0, 182.0]])
    runs = _seeded_runs(disk_model, 6, (((50, 60), 8), ((150, 180), 8)), seeds_rc)
    reuse_result, reuse_encoded, reuse_boxed = runs[True]
    own_result, own_encoded, _ = runs[False]
    # the two first-stage windows only (the close seeds share one), each window's box stages in one call
    assert reuse_result.windows_encoded == reuse_encoded == 2 < own_encoded
    assert len(reuse_boxed) == 2 and sum(len(c["boxes"]) for c in reuse_boxed) == 3
    assert reuse_result.table["index"] == own_result.table["index"] == [1, 2]
    for oid in (1, 2):
        a, b = reuse_result.labels == oid, own_result.labels == oid
        assert (a & b).sum() / (a | b).sum() > 0.9


def test_a_box_too_small_for_the_seeds_window_gets_the_window_of_its_own(disk_model):
    # the blobs say "large objects" (large first-stage windows), the model answers with small disks:
    # a box under a third of the window's side is not decoded there, with or without the rule
    seeds_rc = np.array([[60.0, 70.0], [180.0, 220.0]])
    runs = _seeded_runs(disk_model, 4, (((60, 70), 18), ((180, 220), 18)), seeds_rc)
    reuse_result, reuse_encoded, _ = runs[True]
    own_result, own_encoded, _ = runs[False]
    assert reuse_encoded == own_encoded > 2
    np.testing.assert_array_equal(reuse_result.labels, own_result.labels)


def test_segment_seeds_job_second_pass_segments_foreground_left_without_a_seed(disk_model):
    model = disk_model(radius=8)
    blobs = (((50, 60), 8), ((150, 180), 8), ((240, 320), 8))
    s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True)
    s.set_image(_blobs(blobs=blobs))
    seeds_rc = np.array([[50.0, 60.0], [150.0, 180.0]])  # the third object got no seed
    first = drain(segment_seeds_job(s, seeds_rc, iou_floor=0.0, refill=False))
    assert first.table["index"] == [1, 2] and first.labels[240, 320] == 0
    both = drain(segment_seeds_job(s, seeds_rc, iou_floor=0.0))
    assert both.table["index"] == [1, 2, 3]
    assert np.array_equal(both.labels[first.labels > 0], first.labels[first.labels > 0])
    assert len(first.refill_rc) == 0 and np.array_equal(both.seeds_rc, seeds_rc)
    assert np.array_equal(both.refill_rc, [[240, 320]])
    # the new object is decoded like a first-pass seed: object 1's mask, moved to the third disc
    third = both.labels == 3
    assert np.array_equal(third, np.roll(both.labels == 1, (190, 260), axis=(0, 1)))
    assert both.table["area"][2] == int(third.sum())


def test_predict_job_encodes_every_stage_and_the_plane_job_measures_object_sizes(disk_model, monkeypatch):
    import napari_sam_micro.embeddings as session_module

    calls = []
    original = session_module.typical_diameter

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(session_module, "typical_diameter", counted)
    model = disk_model(radius=8)
    s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True)
    s.set_image(_blobs())
    drain(s.embedding_job())  # the whole-plane job (a worker in napari) also measures the objects' scale
    assert len(calls) == 1
    pred = drain(s.predict_job(Prompts([[100, 100]], [1])))
    assert len(calls) == 1  # the click found it measured
    assert len(model.encoded_shapes) == 2  # the plane, then the click's one window
    assert pred.objects[0].mask[100, 100] and pred.objects[0].window is not None


def _three_blobs(shape=(240, 300)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 100, np.uint16)
    centres = [(60, 70), (170, 220), (60, 230)]
    for r, c in centres:
        img[(yy - r) ** 2 + (xx - c) ** 2 <= 12**2] = 3000
    return img, centres


def test_preencode_job_makes_clicks_on_the_plane_objects_decode_only(disk_model):
    model = disk_model(radius=12)
    s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True)
    img, centres = _three_blobs()
    s.set_image(img)
    s.compute_embedding()
    reports = []
    encoded = drain(preencode_job(s, centre_rc=centres[1]), reports.append)
    assert encoded >= 1 and len(model.encoded_shapes) == encoded + 1  # + the plane
    assert reports[-1].done == reports[-1].total  # every planned window done
    # the window nearest the given centre came first (the second encode; the first was the plane)
    first = s.encoded_windows()[0]
    assert first[0] <= centres[1][0] <= first[1] and first[2] <= centres[1][1] <= first[3]
    before = len(model.encoded_shapes)
    for r, c in centres:
        pred = s.predict(Prompts([[float(c), float(r)]], [1]))  # raises EmbeddingNotReady if not pre-encoded
        assert pred.objects[0].mask[r, c]
    assert len(model.encoded_shapes) == before
    assert drain(preencode_job(s)) == 0  # all done: nothing more to encode


def test_preencode_job_stops_when_the_image_changes(disk_model):
    model = disk_model(radius=12)
    s = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=True)
    img, _ = _three_blobs()
    s.set_image(img)
    job = preencode_job(s)
    next(job)  # planning starts
    s.set_image(img[::-1].copy())
    assert drain(job) == 0
