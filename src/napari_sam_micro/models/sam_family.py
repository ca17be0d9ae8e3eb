"""Adapters that give ``core`` a SAM-family model as a :class:`~napari_sam_micro.core.model_api.PromptableModel`.

Every model here has SAM's prompt encoder and mask decoder (``segment_anything`` Sam, the tiny
random-weight test Sam, LiteMedSAM); they differ in the image encoder and its input
preprocessing. :class:`SamFamilyAdapter` holds the shared prompt-decoding half; subclasses
implement :meth:`SamFamilyAdapter._encode_tensor`.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from ..core.model_api import DecoderOutput, Embedding

__all__ = ["SamFamilyAdapter", "SamAdapter", "resize_longest_side_shape"]


def resize_longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """``(h, w)`` after scaling ``(height, width)`` so the longest side is ``target`` (SAM's rounding)."""
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class SamFamilyAdapter:
    """Prompt decoding shared by all SAM-family models.

    Parameters
    ----------
    net : torch.nn.Module
        Has ``prompt_encoder`` and ``mask_decoder`` with segment-anything's interfaces.
    name : str
        Registry name.
    image_size : int
        Side of the square model input.
    device : str
        Torch device.
    autocast_dtype : torch.dtype, optional
        Autocast dtype for the image encoder on GPU (bfloat16 / float16); None for full precision.
    """

    mask_threshold: float = 0.0

    def __init__(self, net, name: str, image_size: int, device: str = "cpu", autocast_dtype=None):
        self.net = net.eval().to(device)
        self.name = name
        self.image_size = int(image_size)
        self.device = str(device)
        self.autocast_dtype = autocast_dtype
        self._features_cache: tuple[int, torch.Tensor] | None = None
        #: What runs the image encoder: ``"torch"`` here; LiteMedSAM may switch to ``"onnxruntime"``.
        self.runtime = "torch"
        #: Images per image-encoder call in :meth:`encode_batch` (subclasses set what they measured).
        self.encode_batch_size = 1

    # -- encoder -------------------------------------------------------------------------
    def _encode_tensor(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Return ``(features (1, C, h, w), input_size (h, w))`` for a ``(H, W, 3)`` float image."""
        raise NotImplementedError

    def _encode_tensors(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """``(features (B, C, h, w), input sizes)`` of ``B`` images in one call; default: one at a time."""
        encoded = [self._encode_tensor(image) for image in images]
        return torch.cat([features for features, _ in encoded]), [size for _, size in encoded]

    def _autocast(self):
        if self.autocast_dtype is None or self.device == "cpu":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=self.autocast_dtype)

    def encode(self, image: np.ndarray) -> Embedding:
        """Encode a ``(H, W, 3)`` ``float32`` image in ``[0, 1]``; see ``PromptableModel.encode``."""
        return self.encode_batch([image])[0]

    @torch.inference_mode()
    def encode_batch(self, images) -> list[Embedding]:
        """Encode several images (e.g. windows), :attr:`encode_batch_size` per encoder call.

        Parameters
        ----------
        images : sequence of np.ndarray
            ``(H, W, 3)`` ``float32`` images in ``[0, 1]``; sizes may differ.

        Returns
        -------
        list of Embedding
            One per image, in order, each equal to :meth:`encode` of that image (features
            ``(1, C, h, w)`` ``float32``).
        """
        images = [np.asarray(image) for image in images]
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
        step = max(1, int(self.encode_batch_size))
        embeddings: list[Embedding] = []
        last = None
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            with self._autocast():
                features, input_sizes = self._encode_tensors(chunk)
            features = features.float()
            array = features.cpu().numpy()
            for i, (image, input_size) in enumerate(zip(chunk, input_sizes)):
                embeddings.append(
                    Embedding(
                        features=array[i : i + 1].copy() if len(chunk) > 1 else array,
                        original_size=(int(image.shape[0]), int(image.shape[1])),
                        input_size=input_size,
                        model_name=self.name,
                    )
                )
            last = features[len(chunk) - 1 :]
        self._features_cache = None
        if embeddings:
            # the last embedding is the likeliest to be decoded next: keep its tensor at hand
            self._features_cache = (id(embeddings[-1].features), last)
        return embeddings

    def _features(self, embedding: Embedding) -> torch.Tensor:
        cached = self._features_cache
        if cached is not None and cached[0] == id(embedding.features):
            return cached[1]
        features = torch.from_numpy(np.ascontiguousarray(embedding.features)).float().to(self.device)
        self._features_cache = (id(embedding.features), features)
        return features

    # -- decoder -------------------------------------------------------------------------
    def _scale_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """Map ``(..., 2)`` ``(x, y)`` pixel coordinates to the resized model frame (SAM's rule)."""
        old_h, old_w = original_size
        new_h, new_w = resize_longest_side_shape(old_h, old_w, self.image_size)
        coords = np.array(coords, dtype=np.float64, copy=True)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    @torch.inference_mode()
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
        tensors = self.decode_torch(
            self._features(embedding),
            embedding.original_size,
            point_coords,
            point_labels,
            boxes,
            mask_input,
            multimask_output,
        )
        low_res, iou = tensors
        return DecoderOutput(low_res.float().cpu().numpy(), iou.float().cpu().numpy())

    def decode_torch(
        self,
        features: torch.Tensor,
        original_size: tuple[int, int],
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        boxes: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`decode` but returns torch tensors on the model device (fast paths use it)."""
        dev = self.device
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels are required with point_coords")
            coords = torch.as_tensor(self._scale_coords(point_coords, original_size), dtype=torch.float, device=dev)
            labels = torch.as_tensor(np.asarray(point_labels), dtype=torch.int, device=dev)
            points = (coords, labels)
        box_t = None
        if boxes is not None:
            b = np.asarray(boxes, dtype=np.float64).reshape(-1, 2, 2)
            box_t = torch.as_tensor(self._scale_coords(b, original_size).reshape(-1, 4), dtype=torch.float, device=dev)
        mask_t = None
        if mask_input is not None:
            mask_t = torch.as_tensor(np.asarray(mask_input), dtype=torch.float, device=dev)
        sparse, dense = self.net.prompt_encoder(points=points, boxes=box_t, masks=mask_t)
        if mask_t is None and sparse.shape[0] > 1:
            # many prompts on one embedding (boxes of a window, seeds of everything mode): the
            # two-phase decoder computes the image-side projections once instead of per prompt
            two_phase = self.two_phase_decoder(features)
            if two_phase is not None:
                return two_phase.decode(sparse, multimask_output)
        low_res, iou = self.net.mask_decoder(
            image_embeddings=features,
            image_pe=self.net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
        return low_res, iou

    def two_phase_decoder(self, features: torch.Tensor):
        """The :class:`~napari_sam_micro.models.decoder_fastpath.TwoPhaseDecoder` of ``features`` (one kept), or None.

        None when the network does not have SAM's decoder layout. Its results equal the mask
        decoder's up to float32 rounding (``tests/models/test_decoder_fastpath.py``).
        """
        from .decoder_fastpath import TwoPhaseDecoder, supports_two_phase

        cached = getattr(self, "_two_phase_cache", None)
        if cached is not None and cached[0] is features:
            return cached[1]
        decoder = TwoPhaseDecoder(self.net, features) if supports_two_phase(self.net) else None
        self._two_phase_cache = (features, decoder)
        return decoder

    def upscale_torch(self, low_res: torch.Tensor, input_size, original_size) -> torch.Tensor:
        """SAM's ``postprocess_masks``: bilinear to the padded input, crop, bilinear to the original size."""
        masks = F.interpolate(low_res, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(int(s) for s in original_size), mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def upscale(self, embedding: Embedding, low_res_logits: np.ndarray) -> np.ndarray:
        """``(B, M, 256, 256)`` logits to ``(B, M, H, W)`` at ``embedding.original_size``."""
        low = torch.as_tensor(np.asarray(low_res_logits), dtype=torch.float, device=self.device)
        out = self.upscale_torch(low, embedding.input_size, embedding.original_size)
        return out.cpu().numpy()


class SamAdapter(SamFamilyAdapter):
    """A ``segment_anything`` :class:`~segment_anything.modeling.Sam` (``vit_b/l/h`` or the tiny test model).

    The image is quantised to 8 bit (what SAM was trained on and what ``SamPredictor`` takes), resized
    with SAM's ``ResizeLongestSide`` and normalised with the model's pixel mean and std, so the
    embedding equals ``SamPredictor.set_image`` on the same 8-bit image.
    """

    def __init__(self, sam, name: str, device: str = "cpu", autocast_dtype=None):
        super().__init__(sam, name, sam.image_encoder.img_size, device, autocast_dtype)
        self.mask_threshold = float(sam.mask_threshold)
        from segment_anything.utils.transforms import ResizeLongestSide

        self._transform = ResizeLongestSide(self.image_size)

    def _encode_tensor(self, image):
        image_u8 = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
        resized = self._transform.apply_image(image_u8)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None, :, :, :]
        input_size = (int(tensor.shape[-2]), int(tensor.shape[-1]))
        features = self.net.image_encoder(self.net.preprocess(tensor))
        return features, input_size


# Automatic mask generation uses a two-phase decoder for every SamFamilyAdapter: importing the
# module registers it with core.automatic (it needs SamFamilyAdapter, defined above).
from . import automatic_fastpath as _automatic_fastpath  # noqa: E402,F401
