"""The Python API runs the plugin's own path: same masks as AnnotationSession / everything_job."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from napari_sam_micro import api  # noqa: E402
from napari_sam_micro.core.cache import EmbeddingCache  # noqa: E402
from napari_sam_micro.core.errors import ImageError, PromptError, UserInputError  # noqa: E402
from napari_sam_micro.core.preprocess import PreprocessConfig  # noqa: E402
from napari_sam_micro.core.progress import drain  # noqa: E402
from napari_sam_micro.core.prompts import Prompts  # noqa: E402
from napari_sam_micro.models import registry  # noqa: E402
from napari_sam_micro.segmentation import EverythingOptions, everything_job  # noqa: E402
from napari_sam_micro.session import AnnotationSession  # noqa: E402

CENTRES = ((40, 50), (110, 150), (50, 170))


def _blobs(shape=(160, 220), centres=CENTRES, radius=12, dtype=np.uint16, shift=0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 200, dtype)
    for r, c in centres:
        img[(yy - r) ** 2 + (xx - c - shift) ** 2 <= radius**2] = 3000 if dtype == np.uint16 else 200 + 50
    return img


@pytest.fixture
def disk_whole(disk_test_model):
    """``disk-whole``: the scripted disk model decoding on the whole image (like SAM ViT)."""
    spec = dataclasses.replace(registry.get_spec("disk-test"), name="disk-whole", display_name="disk-whole", crop_to_prompt=False)
    registry.register(spec)
    yield spec
    registry.unregister("disk-whole")


def _plugin_session(predictor, plane, config=None):
    spec = predictor.spec
    session = AnnotationSession(predictor.model, EmbeddingCache(), config, model_id=spec.embedding_id, **AnnotationSession.options_for(spec))
    session.set_image(plane, config)
    return session


def _plugin_prediction(predictor, plane, prompts, config=None, session=None):
    """The Annotator's path with the predictor's model: a session's predict_job (a fresh session by default)."""
    session = session if session is not None else _plugin_session(predictor, plane, config)
    session.clear_preview()
    return drain(session.predict_job(prompts))


@pytest.mark.parametrize("name", ["disk-test", "disk-whole"])
def test_predict_gives_the_sessions_masks(name, disk_whole):
    predictor = api.load_predictor(name, progress=False)
    img = _blobs()
    predictor.set_image(img)
    session = _plugin_session(predictor, img)  # the same prompts in the same order: the same windows reused
    cases = [
        dict(points=[[50, 40]], labels=[1]),
        dict(points=[[50, 40], [150, 110]], labels=[1, 0]),
        dict(boxes=[[36, 26, 64, 54], [136, 96, 164, 124]]),
        dict(points=[[150, 110]], boxes=[[136, 96, 164, 124]]),
    ]
    for case in cases:
        out = predictor.predict(**case)
        pts = np.asarray(case.get("points", np.zeros((0, 2))), np.float32)
        prompts = Prompts(pts, np.asarray(case.get("labels", [1] * len(pts))), np.asarray(case.get("boxes", np.zeros((0, 4))), np.float32))
        ref = _plugin_prediction(predictor, img, prompts, session=session)
        np.testing.assert_array_equal(out.masks, ref.masks)
        np.testing.assert_allclose(out.iou_predictions, [o.predicted_iou for o in ref.objects])
        np.testing.assert_allclose(out.stability_scores, [o.stability for o in ref.objects])
        assert out.masks.dtype == bool and out.masks.shape == (len(ref.objects), *img.shape)
        assert out.masks.any(axis=(1, 2)).all()
    if name == "disk-test":  # 256-px models decode in a window around the object
        assert all(w is not None for w in out.windows)


def test_xy_and_rc_coordinates_agree_and_unpack_like_sam(disk_test_model):
    predictor = api.load_predictor("disk-test", progress=False).set_image(_blobs())
    xy = predictor.predict(points=[[50, 40]], boxes=[[136, 96, 164, 124], [36, 26, 64, 54]])
    rc = predictor.predict(points=[[40, 50]], boxes=[[96, 136, 124, 164], [26, 36, 54, 64]], coords="rc")
    np.testing.assert_array_equal(xy.masks, rc.masks)
    masks, scores, logits = predictor.predict(point_coords=np.array([[50.0, 40.0]]), point_labels=np.array([1]))
    assert masks.shape == (1, 160, 220) and scores.shape == (1,) and logits.shape == (1, 256, 256)
    # the disk is centred on the click (x = column 50, y = row 40)
    assert masks[0, 40, 50] and not masks[0, 110, 150]


def test_multimask_returns_the_decoders_three_candidates(disk_test_model):
    predictor = api.load_predictor("disk-test", progress=False).set_image(_blobs())
    out = predictor.predict(points=[[50, 40]], multimask=True)
    assert out.masks.shape == (3, 160, 220)
    np.testing.assert_allclose(out.iou_predictions, [0.5, 0.9, 0.7])  # decoder order, not only the best
    assert predictor.predict(point_coords=[[50, 40]], multimask_output=True).masks.shape[0] == 3
    with pytest.raises(PromptError, match="several boxes"):
        predictor.predict(boxes=[[36, 26, 64, 54], [136, 96, 164, 124]], multimask=True)


def test_refine_uses_the_previous_mask_only_when_asked(disk_test_model, disk_model):
    model = disk_model(12)  # records what the decoder is given
    predictor = api.Predictor(model, registry.get_spec("disk-test"), progress=False).set_image(_blobs())
    for refine in (False, True):
        predictor.predict(points=[[50, 40]])
        model.decode_calls.clear()
        out = predictor.predict(points=[[50, 40], [53, 42]], labels=[1, 1], refine=refine)
        assert any(call["mask_input"] for call in model.decode_calls) == refine
        assert out.masks.shape == (1, 160, 220)
    predictor = api.Predictor(model, registry.get_spec("disk-test"), progress=False).set_image(_blobs())
    fresh = predictor.predict(points=[[50, 40], [53, 42]], labels=[1, 1])
    ref = _plugin_prediction(predictor, _blobs(), Prompts([[50, 40], [53, 42]], [1, 1]))
    np.testing.assert_array_equal(fresh.masks, ref.masks)


def test_segment_everything_is_the_plugins_everything_job(disk_test_model):
    predictor = api.load_predictor("disk-test", progress=False)
    img = _blobs()
    labels, table = api.segment_everything(img, model=predictor, min_distance=5)
    ref = drain(everything_job(predictor.model, img, predictor.spec, options=EverythingOptions(min_distance=5)))
    np.testing.assert_array_equal(labels, ref.labels)
    assert isinstance(table, pd.DataFrame) and list(table["index"]) == list(ref.table["index"])
    assert table.index.name == "id" and (table.index == table["index"]).all()
    for col in ("area", "predicted_iou", "stability_score", "prompt", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"):
        assert list(table[col]) == list(ref.table[col])
    assert len(table) == 3 and labels.dtype == np.uint32


def test_planes_over_1024_px_go_through_the_tiled_everything_mode(disk_test_model):
    predictor = api.load_predictor("disk-test", progress=False)
    centres = ((40, 60), (90, 1020), (60, 1900))  # one object across the first tile border (1024)
    img = _blobs(shape=(140, 2048), centres=centres)
    labels, table = api.segment_everything(img, model=predictor, min_distance=5)
    assert labels.shape == img.shape and len(table) == 3
    for r, c in centres:  # each blob is one object, the one on the border too
        ids = np.unique(labels[r - 8 : r + 8, c - 8 : c + 8])
        assert len(ids) == 1 and ids[0] > 0
    assert set(np.unique(labels)) - {0} == set(table["index"])


def test_grid_mode_takes_sam_generator_names():
    predictor = api.load_predictor("tiny-test", progress=False)
    img = _blobs(shape=(64, 64), centres=((32, 32),), radius=8)
    labels, table = api.segment_everything(
        img, model=predictor, mode="grid", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    from napari_sam_micro.core.automatic import AmgParams

    params = AmgParams(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    ref = drain(everything_job(predictor.model, img, predictor.spec, options=EverythingOptions(mode="grid", grid=params)))
    np.testing.assert_array_equal(labels, ref.labels)
    assert sorted(table["index"]) == sorted(ref.table["index"])


def test_stack_is_segmented_plane_by_plane_along_axis(disk_test_model):
    predictor = api.load_predictor("disk-test", progress=False)
    planes = [_blobs(), _blobs(shift=6), _blobs(centres=CENTRES[:2])]
    stack = np.stack(planes)  # (Z, Y, X)
    labels, table = api.segment_everything(stack, model=predictor, axis=0)
    assert labels.shape == stack.shape and "axis_0" in table.columns
    top = 0
    for z, plane in enumerate(planes):
        ref, _ = api.segment_everything(plane, model=predictor)
        np.testing.assert_array_equal(labels[z], np.where(ref > 0, ref + top, 0))
        assert sorted(table.loc[table["axis_0"] == z, "index"]) == sorted(np.unique(labels[z][labels[z] > 0]))
        top += int(ref.max())
    assert len(table) == top == 8  # ids unique over the stack
    # the plane axis last: labels come back in the image's own axis order
    moved, _ = api.segment_everything(np.moveaxis(stack, 0, -1), model=predictor, axis=-1)
    np.testing.assert_array_equal(moved, np.moveaxis(labels, 0, -1))


def test_channels_and_16_bit_follow_the_plugins_preprocessing(disk_test_model):
    predictor = api.load_predictor("disk-test", progress=False)
    nuclei = _blobs()
    other = _blobs(centres=((120, 40),))
    stack = np.stack([nuclei, other])  # (C, Y, X), 16-bit
    one, _ = api.segment_everything(stack, model=predictor, channel_axis=0, channels=(0,))
    alone, _ = api.segment_everything(nuclei, model=predictor)
    np.testing.assert_array_equal(one, alone)
    both, _ = api.segment_everything(stack, model=predictor, channel_axis=0)
    config = PreprocessConfig(channel_axis=-1)
    ref = drain(everything_job(predictor.model, np.moveaxis(stack, 0, -1), predictor.spec, preprocess=config))
    np.testing.assert_array_equal(both, ref.labels)
    assert both.shape == nuclei.shape and both.max() == 4  # the second channel's object too
    # prompts on a multichannel plane: the session gets the same plane and configuration
    predictor.set_image(stack, channel_axis=0)
    out = predictor.predict(boxes=[[26, 106, 54, 134]])
    ref = _plugin_prediction(predictor, np.moveaxis(stack, 0, -1), Prompts(boxes_xyxy=[[26, 106, 54, 134]]), config)
    np.testing.assert_array_equal(out.masks, ref.masks)


def test_rgb_is_recognised_and_bgr_is_flipped(disk_test_model):
    predictor = api.load_predictor("disk-test", progress=False)
    grey = _blobs(dtype=np.uint8)
    rgb = np.stack([grey, grey // 2, np.zeros_like(grey)], axis=-1)
    predictor.set_image(rgb)
    assert predictor.session.preprocess.rgb
    plane = predictor.session._plane
    predictor.set_image(rgb[..., ::-1], image_format="BGR")
    np.testing.assert_array_equal(predictor.session._plane, plane)


def test_segment_prompts_paints_like_a_commit(disk_test_model):
    predictor = api.load_predictor("disk-test", progress=False)
    img = _blobs()
    boxes = [[36, 26, 64, 54], [136, 96, 164, 124]]
    labels = api.segment_prompts(img, boxes=boxes, model=predictor)
    ref = _plugin_prediction(predictor, img, Prompts(boxes_xyxy=boxes))
    assert labels.dtype == np.uint32 and sorted(np.unique(labels)) == [0, 1, 2]
    np.testing.assert_array_equal(labels == 1, ref.masks[0])
    np.testing.assert_array_equal(labels == 2, ref.masks[1] & ~ref.masks[0])
    clicks = np.array([[50, 40], [150, 110], [170, 50]], float)[:, None]  # one object per click
    per_click = api.segment_prompts(img, points=clicks, model=predictor)
    assert sorted(np.unique(per_click)) == [0, 1, 2, 3]
    for k, (x, y) in enumerate(clicks[:, 0], 1):
        assert per_click[int(y), int(x)] == k


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(image=np.zeros((3, 40, 50))), ImageError, "axis=0"),
        (dict(image=np.zeros((40, 50)), channel_axis=2), ImageError, "channel_axis=2 does not exist"),
        (dict(image=np.zeros((5, 40, 50)), channel_axis=0), ImageError, "channels=\\(0, 2\\)"),
        (dict(image=np.zeros((40, 50)), channels=(0,)), ImageError, "needs channel_axis"),
        (dict(image=np.array([["a", "b"], ["c", "d"]])), ImageError, "numbers"),
        (dict(image=np.zeros(40)), ImageError, "rows and columns"),
        (dict(image=np.zeros((3, 40, 50)), axis=0, channel_axis=0), ImageError, "both the channel axis"),
    ],
)
def test_bad_images_are_refused_with_a_message(kwargs, error, match, disk_test_model):
    image = kwargs.pop("image")
    with pytest.raises(error, match=match):
        api.segment_everything(image, model=api.load_predictor("disk-test", progress=False), **kwargs)


def test_bad_prompts_are_refused_with_a_message(disk_test_model):
    predictor = api.load_predictor("disk-test", progress=False)
    with pytest.raises(ImageError, match="set_image"):
        predictor.predict(points=[[1, 1]])
    predictor.set_image(_blobs())
    cases = [
        (dict(points=[1, 2, 3]), "shape \\(N, 2\\)"),
        (dict(points=[[50, 40], [60, 40]], labels=[1]), "2 points but 1 labels"),
        (dict(points=[[500, 40]]), "outside the image"),
        (dict(points=[[50, 40]], labels=[0]), "Only negative"),
        (dict(points=[[50, 40]], labels=[2]), "positive \\(1\\) or negative \\(0\\)"),
        (dict(boxes=[[10, 10, 10, 30]]), "no area"),
        (dict(boxes=[1, 2, 3]), "shape \\(K, 4\\)"),
        (dict(), "nothing to segment"),
        (dict(points=[], boxes=np.zeros(0)), "nothing to segment"),  # e.g. no object selected
    ]
    for kwargs, match in cases:
        with pytest.raises(PromptError, match=match):
            predictor.predict(**kwargs)
    assert issubclass(PromptError, ValueError) and issubclass(UserInputError, ValueError)
    with pytest.raises(ValueError, match="coords must be 'xy'"):
        predictor.predict(points=[[50, 40]], coords="yx")
    with pytest.raises(ValueError, match="not both"):
        predictor.predict(points=[[50, 40]], point_coords=[[50, 40]])
    with pytest.raises(ImageError, match="one 2D plane.*image\\[z\\]"):
        predictor.set_image(np.zeros((3, 40, 50)), rgb=False)


def test_everything_settings_are_checked(disk_test_model):
    spec = registry.get_spec("disk-test")
    with pytest.raises(ValueError, match="Unknown everything-mode setting.*pred_iou_thresold"):
        api.everything_options(spec, filters={"pred_iou_thresold": 0.8})
    with pytest.warns(UserWarning, match="seeds mode: points_per_side ignored"):
        options = api.everything_options(spec, filters={"points_per_side": 8, "min_area": 30})
    assert options.min_area == 30
    assert api.everything_options(spec, filters={"fewer_windows": True}).fewer_windows is True
    with pytest.raises(UserInputError, match="no seeds mode"):
        api.everything_options(registry.get_spec("vit_b"), mode="seeds")
    with pytest.raises(ValueError, match="model name"):
        api.segment_everything(np.zeros((8, 8)), model=3)


def test_progress_bar_goes_to_stderr_and_can_be_silenced(disk_test_model, capsys):
    pytest.importorskip("tqdm")
    predictor = api.load_predictor("disk-test", progress=True)
    api.segment_everything(_blobs(), model=predictor)
    assert "Segmenting everything" in capsys.readouterr().err
    api.segment_everything(_blobs(), model=predictor, progress=False)
    assert capsys.readouterr().err == "" and predictor.progress


def test_display_helpers_draw(disk_test_model, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from napari_sam_micro import display

    predictor = api.load_predictor("disk-test", progress=False).set_image(_blobs())
    out = predictor.predict(points=[[50, 40], [60, 70]], labels=[1, 0], boxes=[[36, 26, 64, 54]])
    ax = display.show_masks(_blobs(), out.masks, scores=out.iou_predictions, points=[[50, 40], [60, 70]], labels=[1, 0], boxes=[[36, 26, 64, 54]])
    assert len(ax.images) == 2 and len(ax.patches) == 1 and len(ax.texts) == 1
    labels, table = api.segment_everything(_blobs(), model=predictor)
    ax = display.show_masks(_blobs(), labels, scores=table)
    assert len(ax.texts) == len(table)
    gt = labels.copy()
    gt[gt == 1] = 0  # one missed object in the "prediction" below, one false positive
    ids, best = display.prediction_iou(gt, labels)
    assert list(ids) == sorted(table["index"]) and best[0] == 0.0 and (best[1:] == 1.0).all()
    ax = display.show_comparison(_blobs(), gt, labels)
    ax.figure.savefig(tmp_path / "comparison.png")
    assert (tmp_path / "comparison.png").stat().st_size > 1000


def test_package_root_exports_the_api_lazily():
    code = (
        "import sys, napari_sam_micro as n; before = 'napari_sam_micro.api' in sys.modules; "
        "f = n.segment_everything; print(before, f.__module__, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["False", "napari_sam_micro.api", "False"]


NO_NAPARI = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "magicgui", "npe2")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import matplotlib
    matplotlib.use("Agg")
    import napari_sam_micro
    from napari_sam_micro import load_predictor, segment_everything, segment_prompts
    from napari_sam_micro.display import show_masks

    img = np.zeros((64, 64), np.uint8)
    img[20:40, 20:40] = 200
    predictor = load_predictor("tiny-test", progress=False)
    labels, table = segment_everything(img, model=predictor, mode="grid", points_per_side=2,
                                       pred_iou_thresh=0, stability_score_thresh=0)
    predictor.set_image(img)
    masks, scores, _ = predictor.predict(boxes=[[18, 18, 42, 42]])
    show_masks(img, masks, scores=scores)
    loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    print("OK", masks.shape, labels.shape, loaded)
    """
)


def test_the_api_works_without_napari_or_qt(tmp_path):
    """A fresh interpreter where napari and every Qt binding fail to import (as when not installed)."""
    pytest.importorskip("segment_anything")
    pytest.importorskip("matplotlib")
    script = tmp_path / "no_napari.py"
    script.write_text(NO_NAPARI)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(api.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    env.pop("DISPLAY", None)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "OK (1, 64, 64) (64, 64) []"
