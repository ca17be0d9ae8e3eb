"""How much memory annotating a plane needs, and the check that refuses planes that would not fit.

The figures are measured by ``benchmarks/bench_memory.py`` (peak bytes per image pixel above what
the user's own arrays hold) and rounded up.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ImageError

__all__ = [
    "PEAK_BYTES_PER_PIXEL",
    "PEAK_BYTES_PER_PIXEL_COLOUR",
    "ENCODE_BYTES_PER_PIXEL",
    "MEMORY_MARGIN_BYTES",
    "available_memory",
    "check_memory",
]

#: Peak bytes per image pixel of annotating a grey plane (normalising it, measuring its objects'
#: scale, a click, a commit), measured by ``benchmarks/bench_memory.py`` (about 21) and rounded up;
#: the plane itself (the user's) not counted.
PEAK_BYTES_PER_PIXEL = 24

#: The same for RGB and multichannel planes (their normalised plane keeps three channels; about 29).
PEAK_BYTES_PER_PIXEL_COLOUR = 32

#: Bytes per pixel of handing the whole plane to an encoder (normalised, then its three-channel float32 copy).
ENCODE_BYTES_PER_PIXEL = 16

#: Allowance for everything that does not grow with the plane (model input, embedding, decoder).
MEMORY_MARGIN_BYTES = 256 * 2**20


def available_memory() -> int | None:
    """Bytes of memory free for this process, or None when it cannot be known (no psutil)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        return int(psutil.virtual_memory().available)
    except Exception:  # an unsupported platform: no check rather than no annotation
        return None


def check_memory(hw: Sequence[int], bytes_per_pixel: float = PEAK_BYTES_PER_PIXEL) -> None:
    """Refuse a plane whose processing would not fit in the memory that is free.

    Skipped when the free memory cannot be known (psutil missing).

    Parameters
    ----------
    hw : (int, int)
        ``(H, W)`` of the plane.
    bytes_per_pixel : float
        What the step needs per pixel: :data:`PEAK_BYTES_PER_PIXEL` (or ``_COLOUR``) for annotating
        the plane, :data:`ENCODE_BYTES_PER_PIXEL` for handing it whole to an encoder.

    Raises
    ------
    ImageError
        Estimated need (``bytes_per_pixel`` x H x W + :data:`MEMORY_MARGIN_BYTES`) above the free memory.
    """
    free = available_memory()
    if free is None:
        return
    h, w = int(hw[0]), int(hw[1])
    need = int(bytes_per_pixel * h * w) + MEMORY_MARGIN_BYTES
    if need <= free:
        return
    raise ImageError(
        f"This image plane is too large for the memory that is free: {w} × {h} pixels "
        f"({h * w / 1e6:.0f} megapixels) needs about {_gb(need)} to segment, but only {_gb(free)} is free. "
        "Crop the image to the region you want to annotate, downsample it (e.g. bin 2 × 2), or close "
        "other programs, then choose the image again."
    )


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"
