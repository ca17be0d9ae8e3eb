"""Propagation and 3D / time everything mode on real stacks (../shared/data/nd) with the pretrained micro-tiny.

Each test uses a few objects and a sub-range of planes so that it stays around a minute or two on
a loaded 2-core CPU; the embeddings of the planes are shared through one cache (a plane encoded for
one test is a cache hit for the next).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_micro.core.cache import EmbeddingCache
from napari_sam_micro.core.metrics import instance_scores
from napari_sam_micro.core.overlap import link_stack
from napari_sam_micro.core.progress import drain
from napari_sam_micro.core.propagation import WAIST_STOP, StopRules
from napari_sam_micro.propagation import PropagationOptions, everything_stack_job, propagate_job, stack_planes

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("onnxruntime")

pytestmark = [pytest.mark.data, pytest.mark.slow]

#: Synthetic nuclei: the planes used and the objects propagated (every one lies within these planes).
Z_RANGE = (0, 17)
Z_OBJECTS = (59, 23, 5)
#: CHO time-lapse: the z-slice, the frames and the cells (ground-truth ids) followed.
CHO_Z, T_RANGE, T_CELLS = 2, (0, 9), (1, 4)
#: Synthetic nuclei: the slices of the 3D everything-mode test.
SLAB = (12, 16)


@pytest.fixture(scope="module")
def micro():
    from napari_sam_micro.models import registry

    if "micro-tiny" not in registry.available_models():
        pytest.skip("micro-tiny is not available")
    return registry.load_model("micro-tiny"), registry.get_spec("micro-tiny"), EmbeddingCache()


def _read(shared_data, name):
    root = shared_data / "nd"
    return tifffile.imread(root / "images" / f"{name}.tif"), tifffile.imread(root / "labels" / f"{name}.tif")


def test_box_propagated_through_z_matches_the_3d_nuclei(micro, shared_data):
    """Mean 3D IoU per nucleus of one propagation from each nucleus's largest slice.

    The range is the nucleus's slices ±1 (what a user sets by looking at the stack). Bar: 0.6.
    Measured (micro-tiny, box + interior point, default stop rules): 0.688 / 0.791 / 0.709, mean
    0.729 for nuclei 59 / 23 / 5. The loss is mostly the slice beyond each pole and the poles
    themselves, where the blurred image shows more than the synthetic label. Without the range
    (slices 0-17) the mean falls to 0.470: the propagation runs on into the nucleus above or below
    (the synthetic nuclei are packed in z and the model sees one blob). With box-only prompts two of
    these nuclei scored 0.46 / 0.39 (±6 slices; the mask grows plane after plane) against 0.64 /
    0.69 with box + point, and a wrong axis or a misplaced mask scores < 0.2: 0.6 separates them.
    """
    model, spec, cache = micro
    image, gt = _read(shared_data, "stardist-synthetic-zyx")
    lo, hi = Z_RANGE
    sub, truth = image[lo : hi + 1], gt[lo : hi + 1]
    get, lead = stack_planes(sub)
    scores = []
    for oid in Z_OBJECTS:
        obj = truth == oid
        z0 = int(np.argmax(obj.sum(axis=(1, 2))))
        zs = np.flatnonzero(obj.any(axis=(1, 2)))
        # the user sets the range to the slices where the nucleus is seen, give or take one
        options = PropagationOptions(first=int(zs[0]) - 1, last=int(zs[-1]) + 1)
        (res,) = drain(propagate_job(model, spec, get, lead, (z0,), {oid: obj[z0]}, options, cache=cache))
        pred = np.zeros_like(obj)
        for p, plane in res.planes.items():
            pred[p] = plane.preview.mask
        iou = float((pred & obj).sum() / (pred | obj).sum())
        scores.append(iou)
        print(f"nucleus {oid}: slices {sorted(res.planes)[0]}-{sorted(res.planes)[-1]} (truth "
              f"{np.flatnonzero(obj.any(axis=(1, 2)))[[0, -1]].tolist()}), 3D IoU {iou:.3f}, stopped {res.stopped}")
    print(f"mean 3D IoU over {len(scores)} nuclei: {np.mean(scores):.3f}")
    assert np.mean(scores) > 0.6


def test_waist_rule_stops_packed_nuclei_without_a_range(micro, shared_data):
    """Mean 3D IoU of the same nuclei propagated over the whole sub-stack, no range set.

    Without a range the propagation runs on into the nucleus above or below (measured 0.470 off).
    With "Stop between stacked objects" (``StopRules(waist_ratio=WAIST_STOP)``, chosen on 8 other
    nuclei of this stack) it stops where the cross-section narrows and widens again. Measured
    (micro-tiny, ORT fp32): 0.471 / 0.500 / 0.437 off (mean 0.470), 0.732 / 0.649 / 0.791 on (mean
    0.724, as good as the user's range); on 8 nuclei of the whole stack the mean went from 0.16 to
    0.54, and with the range from 0.64 to 0.69 (docs/models.md). Bar: 0.6 and at least 0.1
    above the rule off, which a rule that never fires or stops too early would not reach.
    """
    model, spec, cache = micro
    image, gt = _read(shared_data, "stardist-synthetic-zyx")
    lo, hi = Z_RANGE
    sub, truth = image[lo : hi + 1], gt[lo : hi + 1]
    get, lead = stack_planes(sub)
    means = {}
    for ratio in (None, WAIST_STOP):
        scores = []
        for oid in Z_OBJECTS:
            obj = truth == oid
            z0 = int(np.argmax(obj.sum(axis=(1, 2))))
            options = PropagationOptions(rules=StopRules(waist_ratio=ratio))
            (res,) = drain(propagate_job(model, spec, get, lead, (z0,), {oid: obj[z0]}, options, cache=cache))
            pred = np.zeros_like(obj)
            for p, plane in res.planes.items():
                pred[p] = plane.preview.mask
            scores.append(float((pred & obj).sum() / (pred | obj).sum()))
        means[ratio] = float(np.mean(scores))
        print(f"waist ratio {ratio}: 3D IoU {[round(v, 3) for v in scores]}, mean {means[ratio]:.3f}")
    assert means[WAIST_STOP] > 0.6 and means[WAIST_STOP] >= means[None] + 0.1


def test_cells_keep_their_id_through_time(micro, shared_data):
    """Frames on which the propagated cell is still the same cell (IoU ≥ 0.5 with it).

    "The same cell" is the challenge segmentation's cell linked over time by overlap
    (:func:`~napari_sam_micro.core.overlap.link_stack`): the supplied ids are not kept on every
    frame (cell 4 of z-slice 2 jumps to another nucleus on frames 2, 8 and 9, IoU 0 with its
    previous frame), so comparing ids would count the labels' swaps as ours.
    Bar: 90 % of the frames. Measured (micro-tiny, box + interior point, frames 1-9 from the
    segmentation of frame 0): 17 of 18; IoU 0.82-0.89 on every frame but frame 2, a dim frame
    (half the intensity) where the supplied segmentation itself shrinks by a third: 0.58 and 0.50
    there. A propagation that jumps to a neighbour or drifts off the cell fails every later frame.
    """
    model, spec, cache = micro
    image, gt = _read(shared_data, "ctc-cho-tzyx")
    t0, t1 = T_RANGE
    frames = image[t0 : t1 + 1, CHO_Z]
    tracks = link_stack(gt[t0 : t1 + 1, CHO_Z], axis=0)
    get, lead = stack_planes(frames)
    kept = total = 0
    for cell in T_CELLS:
        start = gt[t0, CHO_Z] == cell
        track = int(np.bincount(tracks[0][start]).argmax())
        (res,) = drain(propagate_job(model, spec, get, lead, (0,), {cell: start}, PropagationOptions(direction="forward"), cache=cache))
        ious = []
        for t in range(1, len(frames)):
            total += 1
            mask = res.planes[t].preview.mask if t in res.planes else np.zeros_like(start)
            ref = tracks[t] == track
            ious.append(float((mask & ref).sum() / max((mask | ref).sum(), 1)))
            kept += ious[-1] >= 0.5
        print(f"cell {cell}: frames {sorted(res.planes)}, stopped {res.stopped}, IoU per frame {[round(v, 2) for v in ious]}")
    print(f"frames keeping the right cell: {kept} of {total}")
    assert kept >= 0.9 * total


def test_everything_in_3d_on_a_slab(micro, shared_data):
    """F1 at IoU 0.5 of 3D everything mode (per-plane everything mode linked in z) on slices 12-16.

    Bar: 0.4, and above linking by overlap alone on the same per-plane labels. Measured
    (micro-tiny, seeds after background removal): 0.516 (13 objects for 18 nuclei pieces in the
    slab) against 0.457 linked only. On slices 13-15 the rules and linking alone are within one
    object of each other (0.48 against 0.50; before the seeds' background removal 0.50 against
    0.40), too few slices for the rules to show, hence five. A wrong axis, ids not linked between
    planes (every plane's objects counted on their own) or a misplaced mask fall well below 0.4.
    The whole stack (31 slices, docs/models.md) takes a quarter of an hour on a 2-core CPU without
    bf16: too long for the suite; the rules' own effect is checked on every slice by
    :func:`test_z_rules_recover_the_3d_nuclei_from_exact_planes`.
    """
    model, spec, cache = micro
    image, gt = _read(shared_data, "stardist-synthetic-zyx")
    sub, truth = image[SLAB[0] : SLAB[1] + 1], gt[SLAB[0] : SLAB[1] + 1]
    res = drain(everything_stack_job(model, spec, lambda p: sub[p], list(range(len(sub))), cache=cache, kind="z"))
    scores = instance_scores(truth, res.labels)
    linked_only = instance_scores(truth, link_stack(res.per_plane, axis=0))
    print(f"3D everything on slices {SLAB}: F1@0.5 {scores['f1']:.3f} (precision {scores['precision']:.3f}, "
          f"recall {scores['recall']:.3f}, {scores['n_pred']} objects for {scores['n_gt']}); linked only {linked_only['f1']:.3f}")
    assert scores["f1"] >= 0.4 and scores["f1"] > linked_only["f1"]


def test_z_rules_recover_the_3d_nuclei_from_exact_planes(shared_data):
    """The z rules of 3D everything mode on every slice of the synthetic stack, from exact 2D labels.

    Each slice's ground truth is renumbered on its own (what per-plane everything mode gives at
    best). Linking by overlap alone joins nuclei stacked in z and keeps one-slice poles apart:
    F1 0.712 (67 objects for 51). With the cut at waists and one-slice objects dropped
    (``split_at_waists``, the ratio 3D everything mode uses) every nucleus is found: F1 1.0.
    Bars: linked only ≤ 0.8, with the rules ≥ 0.95.
    """
    from napari_sam_micro.core.overlap import split_at_waists
    from napari_sam_micro.propagation import WAIST_RATIO

    _, gt = _read(shared_data, "stardist-synthetic-zyx")
    rng = np.random.default_rng(0)
    per_plane = np.zeros(gt.shape, np.uint32)
    for k, plane in enumerate(gt):
        ids = np.unique(plane[plane > 0])
        lut = np.zeros(int(plane.max()) + 1, np.uint32)
        lut[ids] = rng.permutation(len(ids)) + 1
        per_plane[k] = lut[plane]
    linked = link_stack(per_plane, axis=0)
    ruled = split_at_waists(linked, axis=0, ratio=WAIST_RATIO, min_planes=2)
    f1_linked, f1_ruled = instance_scores(gt, linked)["f1"], instance_scores(gt, ruled)["f1"]
    print(f"exact planes: linked only {f1_linked:.3f}, with the z rules {f1_ruled:.3f}")
    assert f1_linked <= 0.8 and f1_ruled >= 0.95
