"""Device choice and autocast dtype."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from napari_sam_micro.core.errors import ModelUnavailableError  # noqa: E402
from napari_sam_micro.models import device as device_mod  # noqa: E402
from napari_sam_micro.models.device import autocast_dtype, available_devices, choose_device  # noqa: E402


def test_auto_picks_best_available():
    best = available_devices()[0]
    assert choose_device() == best
    assert choose_device("auto") == best
    assert choose_device("") == best
    assert available_devices()[-1] == "cpu"


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_preference_order(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(device_mod, "_cuda_available", lambda: cuda)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: mps)
    assert choose_device(None) == expected


def test_cpu_override_always_works():
    assert choose_device("cpu") == "cpu"
    assert choose_device(" CPU ") == "cpu"


def test_unavailable_override_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(device_mod, "_cuda_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: False)
    with pytest.raises(ModelUnavailableError, match="not available on this computer.*cpu"):
        choose_device("cuda")
    with pytest.raises(ModelUnavailableError, match="Apple GPU"):
        choose_device("mps")


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "cpu:1", "gpu"])
def test_nonsense_device_is_rejected(bad):
    with pytest.raises(ModelUnavailableError, match="not a device"):
        choose_device(bad)


def test_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(device_mod, "_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert choose_device("cuda:0") == "cuda:0"
    with pytest.raises(ModelUnavailableError, match="1 CUDA GPU"):
        choose_device("cuda:3")


def test_autocast_dtype(monkeypatch):
    assert autocast_dtype("cpu") is None
    assert autocast_dtype("mps") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("cuda") is torch.bfloat16
    assert autocast_dtype("cuda:1") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("cuda") is torch.float16
