"""LiteMedSAM's image encoder split before its last stage, so that stage and the neck train on a CPU.

:func:`encoder_tail_tokens_job` caches :func:`encoder_head` of every stored crop; training then
runs only :func:`encoder_tail` (``TrainConfig.train_encoder_tail``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np
import torch

from ..core.progress import Progress
from ..models.weights_io import ENCODER_TAIL_PARTS
from .crops import TOKENS_FILE, load_crop_set

__all__ = ["encoder_head", "encoder_tail", "encoder_tail_tokens_job", "encoder_tail_parts"]


def encoder_head(encoder, images: torch.Tensor) -> torch.Tensor:
    """TinyViT up to (not including) its last stage: ``(B, 3, 256, 256)`` -> tokens ``(B, 4096, C)``."""
    x = encoder.layers[0](encoder.patch_embed(images))
    for layer in encoder.layers[1:-1]:
        x = layer(x)
    return x


def encoder_tail(encoder, tokens: torch.Tensor) -> torch.Tensor:
    """TinyViT's last stage and neck: tokens ``(B, 4096, C)`` -> embeddings ``(B, 256, 64, 64)``.

    ``encoder_tail(enc, encoder_head(enc, x))`` equals ``enc(x)``.
    """
    x = encoder.layers[-1](tokens)
    b, n, c = x.shape
    side = int(round(math.sqrt(n)))
    return encoder.neck(x.view(b, side, side, c).permute(0, 3, 1, 2))


def encoder_tail_tokens_job(
    crop_dir: str | Path, net=None, device: str = "cpu", batch_size: int = 4
) -> Generator[Progress, None, Path]:
    """Cache :func:`encoder_head` of every crop's stored input as ``crop_dir/tail_tokens.npy``.

    Written ``(N, 4096, C)`` float16 (``C`` = 320 for LiteMedSAM), N = the crops finished in
    ``crop_dir``; returns the file's path. ``net`` defaults to the bundled LiteMedSAM.
    """
    from ..models.litemedsam import build_litemedsam

    crops = load_crop_set(crop_dir)
    if net is None:
        net = build_litemedsam(device=device).net
    enc = net.image_encoder.eval()
    n = len(crops)
    out = Path(crop_dir) / TOKENS_FILE
    tmp = out.with_suffix(".tmp.npy")
    tokens = None
    t0 = time.time()
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        x = torch.from_numpy(np.asarray(crops.inputs[start:stop], np.float32)).permute(0, 3, 1, 2).to(device)
        with torch.inference_mode():
            t = encoder_head(enc, x).float().cpu().numpy().astype(np.float16)
        if tokens is None:
            tokens = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, *t.shape[1:]))
        tokens[start:stop] = t
        rate = (time.time() - t0) / stop
        yield Progress(stop, n, f"encoder head {stop}/{n} crops ({rate:.1f} s/crop)")
    if tokens is None:
        raise ValueError(f"no crops in {crop_dir}")
    tokens.flush()
    del tokens
    tmp.replace(out)
    return out


def encoder_tail_parts(net) -> list:
    """The modules of :data:`ENCODER_TAIL_PARTS` (the image encoder's last stage and neck)."""
    return [net.get_submodule(name) for name in ENCODER_TAIL_PARTS]
