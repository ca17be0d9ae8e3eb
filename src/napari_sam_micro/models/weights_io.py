"""The ``.npz`` weights format of fine-tuned LiteMedSAM parts (micro-tiny): write and load.

A file holds the state dict of some modules of a LiteMedSAM network (always the prompt encoder
and mask decoder, :data:`DECODER_PARTS`; optionally the image encoder's last stage and neck or
all of it), float tensors as float16, no pickle. :mod:`napari_sam_micro.models.micro` loads the
shipped file with :func:`load_exported`; :mod:`napari_sam_micro.training` writes new ones with
:func:`export_weights`. This module never imports the training code (checked by an
import-linter contract), and imports torch only inside :func:`load_exported`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.errors import ModelUnavailableError

__all__ = [
    "DECODER_PARTS",
    "ENCODER_HEAD_PARTS",
    "ENCODER_TAIL_PARTS",
    "trainable_state",
    "export_weights",
    "load_exported",
]

#: The prompt encoder and mask decoder: in every weights file.
DECODER_PARTS = ("prompt_encoder", "mask_decoder")
#: Modules trained besides the prompt encoder and mask decoder when the encoder's tail is tuned.
ENCODER_TAIL_PARTS = ("image_encoder.layers.3", "image_encoder.neck")
#: The image encoder before its last stage; with :data:`ENCODER_TAIL_PARTS`, all of it.
ENCODER_HEAD_PARTS = ("image_encoder.patch_embed", "image_encoder.layers.0", "image_encoder.layers.1",
                      "image_encoder.layers.2")


def trainable_state(net, parts: Sequence[str] = DECODER_PARTS) -> dict:
    """State dict of the modules ``parts`` (dotted paths), keys prefixed with the path."""
    state = {}
    for part in parts:
        for k, v in net.get_submodule(part).state_dict().items():
            state[f"{part}.{k}"] = v
    return state


def export_weights(net, path: str | Path, metadata: dict | None = None, parts: Sequence[str] = DECODER_PARTS) -> str:
    """Write the modules ``parts`` as ``.npz`` (no pickle; float16, integer buffers unchanged); returns its SHA-256.

    ``metadata`` (JSON-serialisable) is written beside it as ``<stem>.json`` with the checksum.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        # floating tensors as float16; integer buffers (batch-norm counters, > float16's range) as they are
        k: v.detach().cpu().float().numpy().astype(np.float16) if v.is_floating_point() else v.detach().cpu().numpy()
        for k, v in trainable_state(net, parts).items()
    }
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if metadata is not None:
        meta = dict(metadata)
        meta["sha256"] = digest
        meta["size_bytes"] = path.stat().st_size
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return digest


def load_exported(net, path: str | Path, require_decoder: bool = True) -> tuple[str, ...]:
    """Load weights written by :func:`export_weights` into a LiteMedSAM network; returns the parts loaded.

    The prompt encoder and mask decoder must be complete (unless ``require_decoder`` is False: a
    file of other parts only); other keys (the image encoder's tail, or all of it) must name
    existing parameters of the same shape.

    Raises
    ------
    ModelUnavailableError
        The file is missing, damaged or not an ``.npz`` (the message names it; ``BadZipFile``,
        ``EOFError`` … never escape).
    KeyError
        Decoder keys missing, or keys that are not LiteMedSAM parameters.
    RuntimeError
        A shape mismatch.
    """
    import torch

    from .checkpoints import READ_ERRORS, damaged_file_error

    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a plain .npy: one array, not named weights
            raise ValueError("a single array, not an .npz of named weights")
        with data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError as err:
        raise ModelUnavailableError(f"The weights file {Path(path).expanduser()} does not exist.") from err
    except READ_ERRORS as err:
        raise damaged_file_error(path, err) from err
    state = net.state_dict()
    unknown = sorted(set(arrays) - set(state))
    if unknown:
        raise KeyError(f"not LiteMedSAM parameters: {unknown[:3]}")
    missing = sorted(k for k in trainable_state(net) if k not in arrays) if require_decoder else []
    if missing:
        raise KeyError(f"missing prompt encoder / mask decoder weights: {missing[:3]}")
    for k, v in arrays.items():
        state[k] = torch.from_numpy(v.astype(np.float32) if v.dtype == np.float16 else v).to(state[k].dtype)
    net.load_state_dict(state, strict=True)
    return tuple(
        p for p in DECODER_PARTS + ENCODER_HEAD_PARTS + ENCODER_TAIL_PARTS if any(k.startswith(p + ".") for k in arrays)
    )
