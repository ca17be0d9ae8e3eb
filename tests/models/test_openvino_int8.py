"""micro-tiny's int8 encoder: the shipped files, closeness to fp32, the measured choice, runtime wiring."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from napari_sam_micro.models import onnx_runtime, openvino_int8, registry  # noqa: E402
from napari_sam_micro.models.micro import MICRO_NAME, WEIGHTS_PATH  # noqa: E402
from napari_sam_micro.models.onnx_encoder import OrtImageEncoder  # noqa: E402
from napari_sam_micro.models.openvino_encoder import OvImageEncoder  # noqa: E402

FOLDER = WEIGHTS_PATH.parent
NAMES = openvino_int8.int8_file_names(MICRO_NAME)
ENCODER_SHA = json.loads((FOLDER / f"{MICRO_NAME}.onnx.json").read_text())["encoder"]["sha256"]
# int8 features against fp32 on windows of nuclei: measured mean relative difference 0.12 (bfloat16:
# 0.02); masks barely move (docs/models.md: held-out mean IoU within 0.005). 0.2 leaves room for
# other CPUs' int8 kernels; a graph quantised with wrong ranges (random calibration: 0.33) fails.
INT8_MEAN_REL_DIFF = 0.2


@pytest.fixture(autouse=True)
def _private_choices(tmp_path, monkeypatch):
    """Measured choices go to a file of this test, never the user's cache."""
    monkeypatch.setenv(openvino_int8.CHOICES_DIR_ENV, str(tmp_path / "state"))


def _nuclei_windows(n=2, seed=0):
    """``(n, 3, 256, 256)`` encoder inputs of bright blobs on a dark, noisy background (as fluorescence nuclei)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256]
    out = np.empty((n, 3, 256, 256), np.float32)
    for k in range(n):
        image = 0.05 + 0.02 * rng.standard_normal((256, 256))
        for _ in range(12):
            cy, cx, r = rng.uniform(20, 236), rng.uniform(20, 236), rng.uniform(8, 20)
            image += rng.uniform(0.4, 0.8) * (np.hypot(yy - cy, xx - cx) < r)
        out[k] = np.clip(image, 0, 1)[None]
    return out


def test_the_shipped_int8_encoder_is_intact_and_made_from_the_shipped_encoder():
    path, why = openvino_int8.int8_status(FOLDER, MICRO_NAME, ENCODER_SHA)
    assert path == FOLDER / NAMES["xml"] and why == ""
    manifest = json.loads((FOLDER / NAMES["manifest"]).read_text())
    assert "training" in manifest["calibration"]["split"]  # never calibrated on held-out images
    path, why = openvino_int8.int8_status(FOLDER, MICRO_NAME, "0" * 64)
    assert path is None and "another encoder" in why


def test_a_damaged_or_missing_int8_file_is_refused(tmp_path):
    for name in NAMES.values():
        shutil.copy(FOLDER / name, tmp_path / name)
    assert openvino_int8.int8_status(tmp_path, MICRO_NAME, ENCODER_SHA)[0] is not None
    data = bytearray((tmp_path / NAMES["bin"]).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / NAMES["bin"]).write_bytes(bytes(data))
    path, why = openvino_int8.int8_status(tmp_path, MICRO_NAME, ENCODER_SHA)
    assert path is None and NAMES["bin"] in why and "damaged" in why
    (tmp_path / NAMES["manifest"]).write_text("{not json")
    path, why = openvino_int8.int8_status(tmp_path, MICRO_NAME, ENCODER_SHA)
    assert path is None and "cannot be read" in why
    (tmp_path / NAMES["manifest"]).write_text("[1, 2]")
    assert openvino_int8.int8_status(tmp_path, MICRO_NAME, ENCODER_SHA) == (None, f"{NAMES['manifest']} is not a manifest")


def test_a_manifest_without_digests_is_refused(tmp_path):
    """A missing SHA-256 is a damaged manifest, not a file to trust unchecked."""
    for name in NAMES.values():
        shutil.copy(FOLDER / name, tmp_path / name)
    manifest = json.loads((tmp_path / NAMES["manifest"]).read_text())
    del manifest["bin"]["sha256"]
    (tmp_path / NAMES["manifest"]).write_text(json.dumps(manifest))
    path, why = openvino_int8.int8_status(tmp_path, MICRO_NAME, ENCODER_SHA)
    assert path is None and NAMES["bin"] in why


def test_a_damaged_int8_file_leaves_the_model_on_fp32(tmp_path, caplog):
    for name in [*NAMES.values(), f"{MICRO_NAME}.onnx.json", f"{MICRO_NAME}.encoder.onnx", f"{MICRO_NAME}.decoder.onnx"]:
        shutil.copy(FOLDER / name, tmp_path / name)
    (tmp_path / NAMES["xml"]).write_text("<net/>")
    from napari_sam_micro.models.micro import WEIGHTS_SHA256

    with caplog.at_level(logging.WARNING, logger=onnx_runtime.__name__):
        model = onnx_runtime.load_shipped(tmp_path, MICRO_NAME, WEIGHTS_SHA256, MICRO_NAME)
    assert model.int8_encoder_path is None and not model.int8_pays_off()
    assert "int8 encoder of micro-tiny is not used" in caplog.text and NAMES["xml"] in caplog.text
    with pytest.raises(Exception, match="no intact int8 encoder"):
        model.set_runtime("openvino-int8")
    assert model.runtime == "onnxruntime"


def test_int8_features_stay_close_to_fp32():
    batch = _nuclei_windows()
    fp32 = OrtImageEncoder(FOLDER / f"{MICRO_NAME}.encoder.onnx")(batch)
    int8 = OvImageEncoder(FOLDER / NAMES["xml"], precision="f32")(batch)
    assert int8.shape == fp32.shape == (2, 256, 64, 64) and int8.dtype == np.float32
    rel = float(np.mean(np.abs(int8 - fp32)) / np.mean(np.abs(fp32)))
    assert 0 < rel <= INT8_MEAN_REL_DIFF, rel  # > 0: it really computed in int8


def _fake_measure(monkeypatch, int8_s, fp32_s, calls):
    """Make :func:`openvino_int8.measure_encoders` return fixed seconds (no timing in tests)."""

    def measure(encoders, repeats=3):
        calls.append(sorted(encoders))
        return {"int8": int8_s, "fp32": fp32_s}

    monkeypatch.setattr(openvino_int8, "measure_encoders", measure)


def _encoder(batch):
    return np.zeros((len(batch), 1), np.float32)


def test_measure_encoders_takes_turns_and_keeps_the_fastest_call():
    order = []

    def named(name):
        def encode(batch):
            order.append(name)
            return _encoder(batch)

        return encode

    seconds = openvino_int8.measure_encoders({"a": named("a"), "b": named("b")}, repeats=3)
    assert order == ["a", "b"] * 4  # a warm-up each, then three turns, alternating
    assert set(seconds) == {"a", "b"} and all(0 <= v < 1 for v in seconds.values())


def test_the_choice_is_measured_once_and_remembered(monkeypatch):
    xml = FOLDER / NAMES["xml"]
    calls = []
    _fake_measure(monkeypatch, 0.005, 0.02, calls)
    assert openvino_int8.int8_pays_off(xml, _encoder, 2, int8_encoder=_encoder)
    assert calls == [["fp32", "int8"]]
    saved = json.loads(openvino_int8.choices_file().read_text())
    (entry,) = saved.values()
    assert entry["int8"] is True and entry["int8_s"] < entry["fp32_s"]
    # remembered: not measured again, whatever a measurement would say now
    _fake_measure(monkeypatch, 0.05, 0.01, calls)
    assert openvino_int8.int8_pays_off(xml, _encoder, 2, int8_encoder=_encoder)
    assert len(calls) == 1
    # another thread count, or another instruction-set cap, is another measurement
    _fake_measure(monkeypatch, 0.009, 0.01, calls)  # 0.9 x: not worth it
    assert not openvino_int8.int8_pays_off(xml, _encoder, 1, int8_encoder=_encoder)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    _fake_measure(monkeypatch, 0.008, 0.01, calls)  # exactly the bar: taken
    assert openvino_int8.int8_pays_off(xml, _encoder, 2, int8_encoder=_encoder)
    assert len(calls) == 3 and len(json.loads(openvino_int8.choices_file().read_text())) == 3


def test_a_damaged_choices_file_is_measured_again(monkeypatch):
    openvino_int8.choices_file().parent.mkdir(parents=True)
    openvino_int8.choices_file().write_text("[1, 2")
    calls = []
    _fake_measure(monkeypatch, 0.005, 0.02, calls)
    assert openvino_int8.int8_pays_off(FOLDER / NAMES["xml"], _encoder, 2, int8_encoder=_encoder)
    assert len(calls) == 1 and isinstance(json.loads(openvino_int8.choices_file().read_text()), dict)


class _Model:
    supports_onnxruntime = True
    name = "stub"

    def __init__(self, pays):
        self.pays, self.asked = pays, 0

    def int8_pays_off(self):
        self.asked += 1
        return self.pays


def test_auto_takes_int8_only_where_it_measured_faster_and_openvino_is_allowed(monkeypatch):
    monkeypatch.delenv(registry.RUNTIME_ENV, raising=False)
    monkeypatch.setattr(registry, "_openvino_preferred", lambda: False)  # a CPU without bfloat16
    monkeypatch.delenv("NAPARI_SAM_MICRO_OPENVINO", raising=False)
    assert registry.choose_runtime(_Model(True), "cpu") == "openvino-int8"
    assert registry.choose_runtime(_Model(False), "cpu") == "onnxruntime"
    assert registry.choose_runtime(_Model(True), "cuda") == "torch"
    monkeypatch.setattr(registry, "_openvino_preferred", lambda: True)  # bfloat16 first: not measured
    model = _Model(True)
    assert registry.choose_runtime(model, "cpu") == "openvino" and model.asked == 0
    monkeypatch.setattr(registry, "_openvino_preferred", lambda: False)
    monkeypatch.setenv("NAPARI_SAM_MICRO_OPENVINO", "0")
    model = _Model(True)
    assert registry.choose_runtime(model, "cpu") == "onnxruntime" and model.asked == 0


def test_micro_tiny_runs_its_int8_encoder_and_finds_the_disc(monkeypatch):
    monkeypatch.delenv(registry.RUNTIME_ENV, raising=False)
    model = registry.load_model("micro-tiny", device="cpu", runtime="openvino-int8")
    assert model.runtime == "openvino-int8"
    yy, xx = np.mgrid[0:96, 0:96]
    blob = (np.hypot(yy - 50.0, xx - 44.0) < 20).astype(np.float32)
    image = np.repeat((0.1 + 0.8 * blob)[..., None], 3, axis=2)
    emb = model.encode(image)
    out = model.decode(emb, boxes=np.array([[22.0, 28.0, 66.0, 72.0]]), multimask_output=False)
    mask = model.upscale(emb, out.low_res_logits)[0, 0] > model.mask_threshold
    assert np.count_nonzero(mask & (blob > 0)) / np.count_nonzero(mask | (blob > 0)) > 0.8


def test_the_load_job_says_it_measures_and_falls_back_without_openvino(monkeypatch, caplog):
    import sys

    from napari_sam_micro.core.progress import drain

    monkeypatch.delenv(registry.RUNTIME_ENV, raising=False)
    monkeypatch.delenv("NAPARI_SAM_MICRO_OPENVINO", raising=False)
    monkeypatch.setattr(registry, "_openvino_preferred", lambda: False)
    messages = []
    model = drain(registry.load_model_job("micro-tiny", device="cpu"), lambda p: messages.append(p.message))
    assert any("Choosing the CPU runtime" in m for m in messages)
    (entry,) = json.loads(openvino_int8.choices_file().read_text()).values()  # it really timed both
    assert model.runtime == ("openvino-int8" if entry["int8"] else "onnxruntime")
    monkeypatch.setenv("NAPARI_SAM_MICRO_OPENVINO", "0")  # nothing to choose: no message
    messages.clear()
    drain(registry.load_model_job("micro-tiny", device="cpu"), lambda p: messages.append(p.message))
    assert not any("Choosing the CPU runtime" in m for m in messages)
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with caplog.at_level(logging.WARNING, logger=registry.__name__):
        model = registry.load_model("micro-tiny", device="cpu", runtime="openvino-int8")
    assert model.runtime == "onnxruntime" and "OpenVINO int8 is not used" in caplog.text
