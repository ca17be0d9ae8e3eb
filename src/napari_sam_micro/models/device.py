"""Which torch device a model runs on, and the autocast dtype to use there.

Imports torch lazily (inside the functions) so that importing this module is cheap.
"""

from __future__ import annotations

from ..core.errors import ModelUnavailableError

__all__ = ["available_devices", "choose_device", "autocast_dtype"]

_KNOWN = ("cuda", "mps", "cpu")


def _torch():
    """torch, or None when it is not installed (the plain install runs on the CPU in ONNX Runtime)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _cuda_available() -> bool:
    torch = _torch()
    return torch is not None and bool(torch.cuda.is_available())


def _mps_available() -> bool:
    torch = _torch()
    if torch is None:
        return False
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Device types usable here, best first (a subset of ``["cuda", "mps", "cpu"]``)."""
    found = []
    if _cuda_available():
        found.append("cuda")
    if _mps_available():
        found.append("mps")
    found.append("cpu")
    return found


def choose_device(override: str | None = None) -> str:
    """The torch device to run a model on.

    Parameters
    ----------
    override : str, optional
        A device the user asked for (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``); ``None``,
        ``""`` or ``"auto"`` picks the best available one: ``"cuda"`` > ``"mps"`` > ``"cpu"``.

    Returns
    -------
    str
        A torch device string.

    Raises
    ------
    ModelUnavailableError
        ``override`` names a device that this machine does not have (or is not a device).
    """
    if override is None or str(override).strip().lower() in ("", "auto"):
        return available_devices()[0]
    wanted = str(override).strip().lower()
    kind, _, index = wanted.partition(":")
    if kind not in _KNOWN or (index and not index.isdigit()) or (index and kind != "cuda"):
        raise ModelUnavailableError(
            f"'{override}' is not a device the models can run on; choose one of "
            f"{', '.join(available_devices())} (or 'auto')."
        )
    if kind not in available_devices():
        raise ModelUnavailableError(
            f"The device '{override}' is not available on this computer (no working "
            f"{'NVIDIA GPU / CUDA' if kind == 'cuda' else 'Apple GPU (MPS)'} found by PyTorch). "
            f"Choose one of: {', '.join(available_devices())}."
        )
    if kind == "cuda" and index:
        import torch

        count = torch.cuda.device_count()
        if int(index) >= count:
            raise ModelUnavailableError(
                f"The device '{override}' does not exist: this computer has {count} CUDA GPU(s) "
                f"(cuda:0 … cuda:{count - 1})."
            )
    return wanted


def autocast_dtype(device: str):
    """Autocast dtype for the image encoder on ``device``.

    Returns
    -------
    torch.dtype or None
        ``torch.bfloat16`` on CUDA GPUs that support it, else ``torch.float16`` on CUDA;
        ``None`` (full float32 precision) on CPU and MPS.
    """
    if not str(device).startswith("cuda"):
        return None
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
