"""A LiteMedSAM-family model run entirely by ONNX Runtime: no torch (the plain ``pip install``).

:class:`OnnxSamAdapter` implements :class:`~napari_sam_micro.core.model_api.PromptableModel` with
two graphs exported by :mod:`napari_sam_micro.models.onnx_export` (shipped for micro-tiny next to
its weights, see :func:`load_shipped`): the image encoder and the prompt encoder + mask decoder.
Preprocessing and upscaling are done here in numpy, equal to the torch adapter's
(:func:`~napari_sam_micro.models.litemedsam.preprocess_litemedsam`: longest side to 256 with
torch's antialiased bilinear filter, min-max to ``[0, 1]``, zero padding; SAM's
``postprocess_masks``: bilinear to the padded input, crop, bilinear to the original size). Prompts
become the token sequence torch's prompt encoder builds (points, then a box's two corners or else
one padding point), so masks, predicted IoUs and stability scores equal the torch adapter's up to
float32 rounding (``tests/models/test_onnx_runtime.py``).

Imports numpy and (inside functions) onnxruntime only.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import numpy as np

from ..core.errors import ModelUnavailableError
from ..core.model_api import DecoderOutput, Embedding
from .cpu_threads import blas_single_thread

__all__ = [
    "OnnxSamAdapter",
    "OrtPromptDecoder",
    "ort_session",
    "resize_weights",
    "preprocess_numpy",
    "shipped_onnx_status",
    "load_shipped",
]

logger = logging.getLogger(__name__)

#: Low-resolution mask side of SAM-family decoders.
_LOW_RES = 256


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session of ``path`` (all graph optimisations, one inter-op thread).

    Raises
    ------
    ModelUnavailableError
        onnxruntime is not installed or cannot load the file.
    """
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ModelUnavailableError(
            "The offline model needs the Python package 'onnxruntime' (pip install onnxruntime), "
            "or PyTorch (pip install 'napari-sam-micro[torch]')."
        ) from err
    from .onnx_encoder import ort_session_options

    options = ort_session_options(threads)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types for bad files
        raise ModelUnavailableError(f"ONNX Runtime cannot load {path}: {err}") from err


# -- numpy resampling equal to torch's F.interpolate ---------------------------------------------


@functools.lru_cache(maxsize=64)
def resize_weights(in_size: int, out_size: int, antialias: bool) -> np.ndarray:
    """``(out_size, in_size)`` ``float32`` matrix of torch's bilinear resize along one axis (read-only, cached).

    ``align_corners=False``; with ``antialias`` torch's antialiased kernel (a triangle filter
    widened by the downscaling factor, normalised per output pixel), else plain bilinear
    (source index clamped at 0, the next pixel clamped at the edge). Cached because every window
    and every decoded mask asks for a few of them again (64 at most: a few MB each for large windows).
    """
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    if not antialias:
        # float32 source positions, as torch computes them for float32 tensors
        src = np.maximum(np.float32(scale) * (rows.astype(np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
        i0 = np.minimum(src.astype(np.int64), in_size - 1)
        i1 = np.minimum(i0 + 1, in_size - 1)
        frac = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float64)
        np.add.at(weights, (rows, i0), 1.0 - frac)
        np.add.at(weights, (rows, i1), frac)
    else:
        support = scale if scale >= 1.0 else 1.0
        invscale = 1.0 / scale if scale >= 1.0 else 1.0
        center = scale * (rows + 0.5)
        lo = np.maximum((center - support + 0.5).astype(np.int64), 0)
        hi = np.minimum((center + support + 0.5).astype(np.int64), in_size)
        taps = np.arange(in_size)[None, :]
        inside = (taps >= lo[:, None]) & (taps < hi[:, None])
        w = np.where(inside, np.maximum(0.0, 1.0 - np.abs((taps - center[:, None] + 0.5) * invscale)), 0.0)
        total = w.sum(axis=1, keepdims=True)
        weights = np.divide(w, total, out=w, where=total > 0)
    out = weights.astype(np.float32)
    out.flags.writeable = False
    return out


def _resize_longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess_numpy(image: np.ndarray, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """LiteMedSAM's input of an image, as the torch adapter makes it.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W, 3)`` float image.
    image_size : int
        Side of the square model input.

    Returns
    -------
    batch : np.ndarray
        ``(1, 3, image_size, image_size)`` ``float32``: longest side resized to ``image_size``
        (antialiased bilinear), min-max normalised to ``[0, 1]``, zero-padded bottom / right.
    input_size : tuple of int
        ``(h, w)`` before padding.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    height, width = image.shape[:2]
    new_h, new_w = _resize_longest_side_shape(height, width, image_size)
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    if (new_h, new_w) != (height, width):
        wy = resize_weights(height, new_h, antialias=True)
        wx = resize_weights(width, new_w, antialias=True)
        chw = wy @ chw @ wx.T
    lo, hi = float(chw.min()), float(chw.max())
    chw = (chw - lo) / max(hi - lo, 1e-8)
    out = np.zeros((1, 3, image_size, image_size), np.float32)
    out[0, :, :new_h, :new_w] = chw
    return out, (int(new_h), int(new_w))


# -- the decoder graph ---------------------------------------------------------------------------


class OrtPromptDecoder:
    """The prompt encoder + mask decoder graph (:mod:`~napari_sam_micro.models.onnx_export`) in ONNX Runtime."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        self.session = ort_session(path, threads)
        self.path = Path(path)

    def __call__(self, features, coords, labels, mask_input=None):
        """All mask tokens: ``(B, T, 256, 256)`` logits and ``(B, T)`` IoU predictions.

        ``coords`` ``(B, N, 2)`` in the model frame, ``labels`` ``(B, N)`` (-1 / 0 / 1 / 2 / 3),
        ``mask_input`` ``(B, 1, 256, 256)`` or None.
        """
        has_mask = mask_input is not None
        if mask_input is None:
            mask_input = np.zeros((1, 1, _LOW_RES, _LOW_RES), np.float32)
        feed = {
            "image_embeddings": np.ascontiguousarray(features, np.float32),
            "point_coords": np.ascontiguousarray(coords, np.float32),
            "point_labels": np.ascontiguousarray(labels, np.float32),
            "mask_input": np.ascontiguousarray(mask_input, np.float32),
            "has_mask_input": np.array([1.0 if has_mask else 0.0], np.float32),
        }
        low, iou = self.session.run(None, feed)
        return low, iou


class OnnxSamAdapter:
    """A LiteMedSAM-family model (256-px input) run by ONNX Runtime; a ``PromptableModel``.

    Parameters
    ----------
    encoder_path, decoder_path : path
        The graphs written by :func:`napari_sam_micro.models.onnx_export.export_model_onnx`.
    name : str
        Registry name.
    image_size : int
        Side of the square model input.
    threads : int, optional
        Intra-op threads of both sessions; default: the physical cores.
    int8_encoder_path : path, optional
        The encoder quantised to int8 (OpenVINO IR, :mod:`~napari_sam_micro.models.openvino_int8`),
        for the ``"openvino-int8"`` runtime; None when not shipped or not intact.
    """

    mask_threshold: float = 0.0
    #: The image encoder's runtime can be chosen (:meth:`set_runtime`: ONNX Runtime or OpenVINO).
    supports_onnxruntime = True
    #: Windows per encoder call in :meth:`encode_batch` (the torch adapter's measured choice).
    ENCODE_BATCH_SIZE = 4

    def __init__(
        self, encoder_path, decoder_path, name: str, image_size: int = 256, threads: int | None = None, int8_encoder_path=None
    ):
        from .onnx_encoder import OnnxEncoderError, OrtImageEncoder

        try:
            self._encoder = OrtImageEncoder(encoder_path, threads)
        except OnnxEncoderError as err:
            raise ModelUnavailableError(str(err)) from err
        self._decoder = OrtPromptDecoder(decoder_path, threads)
        self.encoder_path = Path(encoder_path)
        self.int8_encoder_path = None if int8_encoder_path is None else Path(int8_encoder_path)
        self.threads = threads
        self.name = name
        self.image_size = int(image_size)
        self.device = "cpu"
        self.runtime = "onnxruntime"
        self.encode_batch_size = self.ENCODE_BATCH_SIZE

    def set_runtime(self, runtime: str, encoder_id: str | None = None) -> None:
        """Run the image encoder in ``"onnxruntime"`` (fp32), ``"openvino"`` or ``"openvino-int8"``; the decoder stays in ONNX Runtime.

        ``"openvino-int8"`` runs :attr:`int8_encoder_path` (the rest of its graph in fp32).
        ``encoder_id`` is accepted for the registry's call and unused (the graph is the shipped one).

        Raises
        ------
        ValueError
            Another runtime (this adapter has no torch).
        napari_sam_micro.models.onnx_encoder.OnnxEncoderError
            OpenVINO missing, no intact int8 encoder, or a graph OpenVINO cannot compile; the
            adapter keeps its encoder.
        """
        if runtime == self.runtime:
            return
        from .onnx_encoder import OnnxEncoderError, OrtImageEncoder

        if runtime == "onnxruntime":
            self._encoder = OrtImageEncoder(self.encoder_path, self.threads)
        elif runtime == "openvino":
            from .openvino_encoder import OvImageEncoder

            self._encoder = OvImageEncoder(self.encoder_path, self.threads)
        elif runtime == "openvino-int8":
            from .openvino_encoder import OvImageEncoder

            if self.int8_encoder_path is None:
                raise OnnxEncoderError(f"{self.name} has no intact int8 encoder")
            self._encoder = OvImageEncoder(self.int8_encoder_path, self.threads, precision="f32")
        else:
            raise ValueError(f"{self.name} in ONNX runs its encoder in 'onnxruntime', 'openvino' or 'openvino-int8', not {runtime!r}")
        self.runtime = runtime

    def int8_pays_off(self) -> bool:
        """Whether this CPU encodes clearly faster with the int8 encoder than with ONNX Runtime fp32 (measured once, remembered).

        False without an intact int8 encoder; see :func:`~napari_sam_micro.models.openvino_int8.int8_pays_off`.
        """
        if self.int8_encoder_path is None:
            return False
        from .onnx_encoder import OrtImageEncoder, physical_cores
        from .openvino_int8 import int8_pays_off

        threads = physical_cores() if self.threads is None else int(self.threads)
        fp32 = self._encoder if self.runtime == "onnxruntime" else OrtImageEncoder(self.encoder_path, self.threads)
        with blas_single_thread():
            return int8_pays_off(self.int8_encoder_path, fp32, threads)

    # -- encoder -------------------------------------------------------------------------
    def encode(self, image: np.ndarray) -> Embedding:
        """Encode a ``(H, W, 3)`` ``float32`` image in ``[0, 1]``; see ``PromptableModel.encode``."""
        return self.encode_batch([image])[0]

    def encode_batch(self, images) -> list[Embedding]:
        """Encode several images, :attr:`encode_batch_size` per encoder call; one ``Embedding`` each, in order."""
        with blas_single_thread():
            return self._encode_batch(images)

    def _encode_batch(self, images) -> list[Embedding]:
        images = [np.asarray(image) for image in images]
        out: list[Embedding] = []
        step = max(1, int(self.encode_batch_size))
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            prepared = [preprocess_numpy(image, self.image_size) for image in chunk]
            features = self._encoder(np.concatenate([batch for batch, _ in prepared]))
            for i, (image, (_, input_size)) in enumerate(zip(chunk, prepared)):
                out.append(
                    Embedding(
                        features=np.ascontiguousarray(features[i : i + 1], np.float32),
                        original_size=(int(image.shape[0]), int(image.shape[1])),
                        input_size=input_size,
                        model_name=self.name,
                    )
                )
        return out

    # -- decoder -------------------------------------------------------------------------
    def _scale_coords(self, coords: np.ndarray, original_size) -> np.ndarray:
        """``(..., 2)`` ``(x, y)`` pixels to the resized model frame (SAM's rule)."""
        old_h, old_w = original_size
        new_h, new_w = _resize_longest_side_shape(old_h, old_w, self.image_size)
        coords = np.array(coords, dtype=np.float64, copy=True)
        coords[..., 0] *= new_w / old_w
        coords[..., 1] *= new_h / old_h
        return coords

    def prompt_tokens(self, original_size, point_coords=None, point_labels=None, boxes=None):
        """``(coords (B, N, 2), labels (B, N))`` in the model frame: torch's token sequence.

        Points (with their labels, -1 padding kept), then each box's two corners (labels 2, 3);
        without a box one padding point ``(0, 0)`` with label -1, as SAM's prompt encoder adds.
        """
        parts_xy, parts_lab = [], []
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels are required with point_coords")
            xy = self._scale_coords(np.asarray(point_coords, np.float64), original_size)
            parts_xy.append(xy.reshape(xy.shape[0], -1, 2))
            parts_lab.append(np.asarray(point_labels, np.float64).reshape(xy.shape[0], -1))
        if boxes is not None:
            corners = self._scale_coords(np.asarray(boxes, np.float64).reshape(-1, 2, 2), original_size)
            parts_xy.append(corners)
            parts_lab.append(np.broadcast_to(np.array([2.0, 3.0]), corners.shape[:2]))
        elif parts_xy:
            b = parts_xy[0].shape[0]
            parts_xy.append(np.zeros((b, 1, 2)))
            parts_lab.append(-np.ones((b, 1)))
        if not parts_xy:
            raise ValueError("decode needs point or box prompts")
        return np.concatenate(parts_xy, axis=1), np.concatenate(parts_lab, axis=1)

    def decode(
        self,
        embedding: Embedding,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> DecoderOutput:
        """Batched prompt decoding; see ``PromptableModel.decode`` for shapes and coordinates."""
        coords, labels = self.prompt_tokens(embedding.original_size, point_coords, point_labels, boxes)
        with blas_single_thread():
            low, iou = self._decoder(embedding.features, coords, labels, mask_input)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return DecoderOutput(np.ascontiguousarray(low[:, sl], np.float32), np.ascontiguousarray(iou[:, sl], np.float32))

    def upscale(self, embedding: Embedding, low_res_logits: np.ndarray) -> np.ndarray:
        """``(B, M, 256, 256)`` logits to ``(B, M, H, W)`` at ``embedding.original_size`` (SAM's ``postprocess_masks``)."""
        with blas_single_thread():
            return self._upscale(embedding, low_res_logits)

    def _upscale(self, embedding: Embedding, low_res_logits: np.ndarray) -> np.ndarray:
        low = np.asarray(low_res_logits, np.float32)
        side = self.image_size
        if low.shape[-1] != side or low.shape[-2] != side:  # to the padded input (identity at 256)
            low = resize_weights(low.shape[-2], side, antialias=False) @ low @ resize_weights(low.shape[-1], side, antialias=False).T
        h, w = embedding.input_size
        low = low[..., :h, :w]
        out_h, out_w = (int(s) for s in embedding.original_size)
        wy = resize_weights(h, out_h, antialias=False)
        wx = resize_weights(w, out_w, antialias=False)
        return np.ascontiguousarray(wy @ low @ wx.T, np.float32)


# -- shipped graphs ------------------------------------------------------------------------------


def shipped_onnx_status(folder: Path, stem: str, weights_sha256: str) -> tuple[dict | None, str]:
    """``(manifest, "")`` when ``folder`` holds both graphs of ``stem`` made from these weights, intact; else ``(None, why)``."""
    from .checkpoints import verify_sha256

    manifest_path = folder / f"{stem}.onnx.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return None, f"{manifest_path} cannot be read ({err})"
    if manifest.get("weights_sha256") != weights_sha256:
        return None, f"{manifest_path} was exported from other weights than the shipped ones"
    for part in ("encoder", "decoder"):
        entry = manifest.get(part) or {}
        path = folder / str(entry.get("file", ""))
        if not entry.get("file") or not verify_sha256(path, entry.get("sha256")):
            return None, f"the {part} graph {path} is missing or damaged (checksum mismatch)"
    return manifest, ""


def load_shipped(folder: Path, stem: str, weights_sha256: str, name: str) -> OnnxSamAdapter:
    """The :class:`OnnxSamAdapter` of the graphs shipped in ``folder`` for the weights ``weights_sha256``.

    Raises
    ------
    ModelUnavailableError
        Graphs missing, damaged or of other weights (the message says which), or onnxruntime missing.
    """
    manifest, why = shipped_onnx_status(folder, stem, weights_sha256)
    if manifest is None:
        raise ModelUnavailableError(
            f"The ONNX files of {name} cannot be used: {why}. Reinstall the plugin to restore them: "
            "pip install --force-reinstall napari-sam-micro."
        )
    from .openvino_int8 import int8_file_names, int8_status

    int8_path, why = int8_status(folder, stem, manifest["encoder"].get("sha256"))
    if int8_path is None and (folder / int8_file_names(stem)["manifest"]).exists():
        logger.warning("The int8 encoder of %s is not used: %s", name, why)
    return OnnxSamAdapter(
        folder / manifest["encoder"]["file"],
        folder / manifest["decoder"]["file"],
        name=name,
        image_size=int(manifest.get("image_size", 256)),
        int8_encoder_path=int8_path,
    )
