"""Everything mode on one plane through the shared high-level function."""

import numpy as np
import pytest

from napari_sam_micro.core.cache import EmbeddingCache
from napari_sam_micro.core.errors import UserInputError
from napari_sam_micro.core.progress import drain
from napari_sam_micro.models import registry
from napari_sam_micro.segmentation import EverythingOptions, everything_job, everything_mode_for


def _blobs(shape=(200, 240), centres=((50, 60), (140, 170), (60, 180)), radius=12):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 200, np.uint16)
    gt = np.zeros(shape, np.uint16)
    for k, (r, c) in enumerate(centres, 1):
        inside = (yy - r) ** 2 + (xx - c) ** 2 <= radius**2
        img[inside] = 3000
        gt[inside] = k
    return img, gt


def test_seeds_mode_finds_each_blob_once(disk_test_model):
    spec = registry.get_spec("disk-test")
    model = registry.load_model("disk-test")
    img, gt = _blobs()
    res = drain(everything_job(model, img, spec, options=EverythingOptions(iou_floor=0.0)))
    assert res.mode == "seeds" and res.labels.shape == img.shape
    assert len(res.table["index"]) == 3 and set(np.unique(res.labels)) == {0, 1, 2, 3}
    found = set()
    for k in range(1, 4):  # each blob is covered by one object of its own (the stand-in model's masks are disks / ellipses)
        ids = np.unique(res.labels[gt == k])
        assert len(ids) == 1 and ids[0] > 0
        assert np.logical_and(res.labels == ids[0], gt == k).sum() / (gt == k).sum() > 0.9
        found.add(int(ids[0]))
    assert len(found) == 3
    assert res.windows_encoded >= 1 and len(res.seeds_rc) >= 3


def test_second_run_with_the_same_cache_encodes_nothing(disk_test_model):
    spec = registry.get_spec("disk-test")
    model = registry.load_model("disk-test")
    img, _ = _blobs()
    cache = EmbeddingCache()
    first = drain(everything_job(model, img, spec, cache=cache))
    again = drain(everything_job(model, img, spec, cache=cache))
    assert first.windows_encoded > 0 and again.windows_encoded == 0
    np.testing.assert_array_equal(first.labels, again.labels)


def test_grid_mode_for_models_without_seeds():
    spec = registry.get_spec("tiny-test")
    assert everything_mode_for(spec) == ("seeds" if spec.seeded_everything else "grid")
    model = registry.load_model("tiny-test")
    img, _ = _blobs(shape=(64, 64), centres=((32, 32),), radius=8)
    opts = EverythingOptions(mode="grid", grid=registry_params())
    res = drain(everything_job(model, img, spec, options=opts))
    assert res.mode == "grid" and res.candidates is not None and res.labels.shape == (64, 64)
    ids = np.unique(res.labels)
    assert sorted(res.table["index"]) == ids[ids > 0].tolist()


def registry_params():
    from napari_sam_micro.core.automatic import AmgParams

    return AmgParams(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def test_bad_options_are_refused_with_a_message():
    with pytest.raises(UserInputError, match="seed spacing"):
        EverythingOptions(min_distance=0)
    with pytest.raises(UserInputError, match="'auto', 'seeds' or 'grid'"):
        EverythingOptions(mode="fast")
    sam_like = type("Spec", (), {"name": "vit_b", "seeded_everything": False})()
    with pytest.raises(UserInputError, match="no seeds mode"):
        everything_mode_for(sam_like, "seeds")


def test_split_touching_keeps_a_merging_mask_in_its_nucleus(wide_disk_model):
    assert EverythingOptions().split_touching is False
    model = registry.load_model("wide-disk")
    centres = ((100, 100), (100, 118))  # two radius-12 nuclei pressed together; a click's disk covers both
    img, gt = _blobs(centres=centres)
    at_centres = {}
    for split in (False, True):
        opts = EverythingOptions(iou_floor=0.0, split_touching=split)
        res = drain(everything_job(model, img, wide_disk_model, options=opts))
        at_centres[split] = [int(res.labels[c]) for c in centres]
        if split:
            first = res.labels == at_centres[split][0]
            assert np.sum(first & (gt == 2)) < 0.1 * np.sum(gt == 2)  # no longer reaches into the neighbour
    assert at_centres[False][0] == at_centres[False][1]  # without: the first mask took both nuclei
    assert 0 not in at_centres[True] and at_centres[True][0] != at_centres[True][1]


def test_fewer_windows_keeps_the_objects_and_encodes_fewer_windows(disk_test_model):
    assert EverythingOptions().fewer_windows is False
    spec = registry.get_spec("disk-test")
    model = registry.load_model("disk-test")
    img, gt = _blobs(centres=((60, 60), (60, 88), (150, 170)))  # the first two share a window
    runs = {}
    for fewer in (False, True):
        runs[fewer] = drain(everything_job(model, img, spec, options=EverythingOptions(iou_floor=0.0, fewer_windows=fewer)))
    assert runs[True].windows_encoded < runs[False].windows_encoded
    for res in runs.values():
        for k in range(1, 4):
            ids = np.unique(res.labels[gt == k])
            assert len(ids) == 1 and ids[0] > 0
            assert np.logical_and(res.labels == ids[0], gt == k).sum() / (gt == k).sum() > 0.9
