"""What ``core`` needs from a promptable segmentation model, in numpy terms.

``core`` never imports torch. A model adapter (``napari_sam_micro.models``) implements
:class:`PromptableModel`; everything above it (prompt decoding, automatic segmentation, the
session) talks to this protocol only.

Coordinate conventions
----------------------
* Images are ``(H, W, 3)`` ``float32`` in ``[0, 1]``, already normalised by
  :mod:`napari_sam_micro.core.preprocess` (percentiles, channels, NaN handling).
* Point and box prompts given to :meth:`PromptableModel.decode` are in **SAM order**:
  ``x`` = column, ``y`` = row, in pixel units of the encoded image (``original_size``).
  The only place that flips napari's ``(row, col)`` to ``(x, y)`` is
  :mod:`napari_sam_micro.core.prompts`.
* Boxes are ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedding", "DecoderOutput", "PromptableModel", "LOW_RES_SIZE"]

#: Side of SAM's low-resolution mask logits (``(B, M, 256, 256)``) for every SAM-family model.
LOW_RES_SIZE = 256


@dataclass(frozen=True)
class Embedding:
    """Image features of one encoded image.

    Parameters
    ----------
    features : np.ndarray
        ``(1, C, h, w)`` ``float32`` (``float16`` allowed) image embedding, e.g. ``(1, 256, 64, 64)``.
    original_size : tuple of int
        ``(H, W)`` of the image that was encoded, in pixels.
    input_size : tuple of int
        ``(h, w)`` of the image after resizing its longest side to the model's input size,
        before padding.
    model_name : str
        Registry name of the model that produced it.
    """

    features: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_name: str
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def nbytes(self) -> int:
        """Memory held by the features, in bytes."""
        return int(self.features.nbytes)


@dataclass(frozen=True)
class DecoderOutput:
    """Result of one batched decoder call.

    Parameters
    ----------
    low_res_logits : np.ndarray
        ``(B, M, 256, 256)`` ``float32`` mask logits in the padded model frame
        (``M`` = 3 with multimask output, else 1).
    iou_predictions : np.ndarray
        ``(B, M)`` ``float32``: the model's predicted IoU of each mask.
    """

    low_res_logits: np.ndarray
    iou_predictions: np.ndarray


@runtime_checkable
class PromptableModel(Protocol):
    """An encoder + prompt decoder pair with SAM's interface (numpy in, numpy out).

    Attributes
    ----------
    name : str
        Registry name (``"vit_b"``, ``"litemedsam"``, ``"tiny-test"`` …).
    image_size : int
        Side of the square model input (1024 for SAM, 256 for LiteMedSAM).
    mask_threshold : float
        Logit threshold that binarises masks (0.0 for SAM).
    device : str
        Torch device the model runs on (``"cpu"``, ``"cuda"``, ``"mps"``).
    """

    name: str
    image_size: int
    mask_threshold: float
    device: str

    def encode(self, image: np.ndarray) -> Embedding:
        """Encode a ``(H, W, 3)`` ``float32`` image in ``[0, 1]``."""

    def decode(
        self,
        embedding: Embedding,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> DecoderOutput:
        """Run the prompt encoder and mask decoder on a batch of prompts.

        Parameters
        ----------
        embedding : Embedding
            From :meth:`encode`.
        point_coords : np.ndarray, optional
            ``(B, N, 2)`` ``float32`` ``(x, y)`` pixel coordinates in ``embedding.original_size``.
        point_labels : np.ndarray, optional
            ``(B, N)`` ``int``: 1 positive, 0 negative, -1 padding.
        boxes : np.ndarray, optional
            ``(B, 4)`` ``float32`` ``(x0, y0, x1, y1)`` in ``embedding.original_size`` pixels.
        mask_input : np.ndarray, optional
            ``(B, 1, 256, 256)`` ``float32`` low-resolution logits of a previous prediction.
        multimask_output : bool
            Three masks per prompt (True) or one (False).
        """

    def upscale(self, embedding: Embedding, low_res_logits: np.ndarray) -> np.ndarray:
        """Upsample ``(B, M, 256, 256)`` logits to ``(B, M, H, W)`` at ``embedding.original_size``.

        Uses SAM's own post-processing (bilinear to the padded input, crop, bilinear to the
        original size) so that thresholding at :attr:`mask_threshold` gives SAM's masks.
        """
