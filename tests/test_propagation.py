"""Propagation through planes and 3D everything mode, with the scripted disk model (exact plumbing).

Quality on real stacks with the pretrained model is in tests/test_propagation_data.py.
"""

import numpy as np
import pytest

from napari_sam_micro.core.cache import EmbeddingCache
from napari_sam_micro.core.errors import PromptError, UserInputError
from napari_sam_micro.core.progress import drain
from napari_sam_micro.core.propagation import STOP_END, STOP_LOW_IOU, StopRules
from napari_sam_micro.models import registry
from napari_sam_micro.propagation import (
    PropagationOptions,
    everything_stack_job,
    propagate_job,
    propagation_commit_plan,
    stack_planes,
)


def _disk(shape=(64, 64), centre=(30, 34), radius=10):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _stack(n=9, shape=(64, 64)):
    rng = np.random.default_rng(0)
    return (rng.normal(100, 5, (n, *shape)) + 300 * _disk(shape)[None]).astype(np.uint16)


# the box stays the mask's box (no padding): the disk model's ellipse in it is the same disk
RULES = StopRules(box_pad=0.0)


def _run(disk_test_model, options, start=(4,), masks=None, stack=None):
    spec = registry.get_spec("disk-test")
    model = registry.load_model("disk-test")
    stack = _stack() if stack is None else stack
    get, lead = stack_planes(stack)
    masks = {0: _disk()} if masks is None else masks
    return drain(propagate_job(model, spec, get, lead, start, masks, options, cache=EmbeddingCache()))


def test_both_directions_within_a_range(disk_test_model):
    (obj,) = _run(disk_test_model, PropagationOptions(first=2, last=7, rules=RULES))
    assert sorted(obj.planes) == [2, 3, 4, 5, 6, 7]
    assert obj.stopped == {"forward": (7, STOP_END), "backward": (2, STOP_END)}
    start = _disk()
    for p in (2, 3, 5, 6, 7):
        mask = obj.planes[p].preview.mask
        # each plane is prompted by the previous plane's box (+1 px a side): the scripted disk grows slowly
        assert (mask & start).sum() / (mask | start).sum() > 0.6 and mask[30, 34]
        assert obj.planes[p].index == (p,) and obj.planes[p].predicted_iou == pytest.approx(0.8)
    areas = [obj.planes[p].preview.area for p in (4, 5, 6, 7)]
    assert areas == sorted(areas)  # plane 5 from plane 4, 6 from 5 ...: chained, not all from the start
    assert obj.weakest_plane() == (2, pytest.approx(0.8))  # the start's IoU is unknown (NaN): not the weakest


def test_one_direction_and_the_iou_stop_rule(disk_test_model):
    (obj,) = _run(disk_test_model, PropagationOptions(direction="forward", rules=StopRules(min_iou=0.85, box_pad=0.0)))
    # the disk model predicts IoU 0.8 for a box: the first plane forward is refused
    assert sorted(obj.planes) == [4] and obj.stopped == {"forward": (5, STOP_LOW_IOU)}


def test_nothing_to_propagate_and_2d_images_are_refused(disk_test_model):
    with pytest.raises(PromptError):
        _run(disk_test_model, PropagationOptions(), masks={0: np.zeros((64, 64), bool)})
    spec, model = registry.get_spec("disk-test"), registry.load_model("disk-test")
    with pytest.raises(UserInputError, match="single plane"):
        drain(propagate_job(model, spec, lambda i: np.zeros((64, 64)), (), (), {0: _disk()}))


def test_commit_plan_one_id_per_object_keeps_other_labels(disk_test_model):
    objs = _run(disk_test_model, PropagationOptions(first=3, last=5, rules=RULES))
    labels = np.zeros((9, 64, 64), np.uint32)
    labels[5, 25:35, 20:30] = 7  # another object overlapping the disk on plane 5
    items, ious = propagation_commit_plan(objs, labels)
    assert {it.label_id for it in items} == {8} and sorted(it.object_index for it in items) == [3, 4, 5]
    out = labels.copy()
    for it in items:
        out[it.indices] = it.label_id
    assert (out == 7).sum() == (labels == 7).sum()  # kept
    assert set(np.unique(out[[3, 4, 5]])) == {0, 7, 8} and not out[[0, 1, 2, 6, 7, 8]].any() - 0
    row = items[0].row
    assert row["index"] == 8 and row["planes"] == 3 and row["prompt"] == "propagated"
    assert row["area"] == int((out == 8).sum()) and row["weakest_plane"] in (3, 5)
    assert sorted(ious[8]) == [3, 4, 5]
    # overwrite paints over label 7; a committed id (key > 0) keeps its id
    items, _ = propagation_commit_plan(objs, labels, overwrite=True, ids={0: 3})
    out = labels.copy()
    for it in items:
        out[it.indices] = it.label_id
    assert (out == 7).sum() < (labels == 7).sum() and {it.label_id for it in items} == {3}


def test_everything_in_3d_links_one_id_per_object(disk_test_model):
    spec, model = registry.get_spec("disk-test"), registry.load_model("disk-test")
    shape = (120, 140)
    stack = np.stack([(100 + 300 * (_disk(shape, (40, 40), 12) | _disk(shape, (80, 100), 12))) for _ in range(4)]).astype(np.uint16)
    res = drain(everything_stack_job(model, spec, lambda p: stack[p], range(4)))
    ids = np.unique(res.labels)
    assert res.labels.shape == stack.shape and ids.tolist() == [0, 1, 2]
    for gid in (1, 2):  # each object has one id on every plane
        assert all((res.labels[p] == gid).any() for p in range(4))
    assert res.table["index"] == [1, 2] and res.table["planes"] == [4, 4]
    assert res.table["area"] == [int((res.labels == 1).sum()), int((res.labels == 2).sum())]


def test_everything_in_3d_drops_one_plane_objects_from_labels_and_table(disk_test_model):
    spec, model = registry.get_spec("disk-test"), registry.load_model("disk-test")
    shape = (120, 140)
    planes = [_disk(shape, (40, 40), 12) for _ in range(3)]
    planes[2] = planes[2] | _disk(shape, (80, 100), 12)  # a second object on the last plane only
    stack = np.stack([100 + 300 * p for p in planes]).astype(np.uint16)
    res = drain(everything_stack_job(model, spec, lambda p: stack[p], range(3), kind="z"))
    assert np.unique(res.labels).tolist() == [0, 1] and res.table["index"] == [1]
    assert res.per_plane[2].max() == 2  # it was found on its plane, then dropped as a one-plane object
    res_t = drain(everything_stack_job(model, spec, lambda p: stack[p], range(3), kind="t"))
    assert res_t.table["index"] == [1, 2] and res_t.table["planes"] == [3, 1]
