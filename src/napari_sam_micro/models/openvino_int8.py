"""micro-tiny's image encoder in int8 (OpenVINO), and whether this CPU gains from it.

The int8 encoder is an OpenVINO IR (``<stem>.encoder-int8.xml`` / ``.bin``) that
``scripts/quantize_int8.py`` makes from the shipped fp32 ONNX encoder with NNCF's post-training
quantisation (transformer preset, calibrated on windows of training images of every modality,
never on held-out ones). It ships next to the ONNX graphs with a manifest
``<stem>.encoder-int8.json`` holding both files' SHA-256 and the SHA-256 of the ONNX encoder it
was made from: an IR of another encoder, or a damaged one, is never used.

int8 pays only on CPUs with int8 dot-product instructions (VNNI: Intel Ice Lake / Tiger Lake
laptops and later, Alder Lake and later, Xeon Cascade Lake and later; AMD Zen 4 and later). Without
them it was *slower* than ONNX Runtime fp32 (docs/benchmarks.md), and no portable call tells a
Python program whether a CPU has VNNI (AVX-VNNI is not in numpy's feature list, nor in OpenVINO's
capabilities). So :func:`int8_pays_off` measures both encoders on this CPU once and remembers the
answer in :func:`choices_file` under the CPU's name and both runtimes' versions.

Imports openvino lazily, inside the functions (``models`` is the only layer that may).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "INT8_MIN_GAIN",
    "int8_file_names",
    "int8_status",
    "choices_file",
    "measure_encoders",
    "int8_pays_off",
]

logger = logging.getLogger(__name__)

#: int8 is chosen when it encodes a window in at most this fraction of fp32's time. Measured on
#: one CPU with its instruction set capped by oneDNN (docs/benchmarks.md): 0.54-0.56 with VNNI,
#: 1.24 without; 0.8 leaves room for timing noise on a busy laptop.
INT8_MIN_GAIN = 0.8
#: Environment variable overriding :func:`choices_file`'s folder (tests point it elsewhere).
CHOICES_DIR_ENV = "NAPARI_SAM_MICRO_STATE_DIR"

_choices_lock = threading.Lock()


def int8_file_names(stem: str) -> dict[str, str]:
    """File names of a model's int8 encoder: ``xml``, ``bin`` and ``manifest``."""
    return {"xml": f"{stem}.encoder-int8.xml", "bin": f"{stem}.encoder-int8.bin", "manifest": f"{stem}.encoder-int8.json"}


def int8_status(folder: str | os.PathLike, stem: str, encoder_sha256: str | None) -> tuple[Path | None, str]:
    """``(xml path, "")`` when ``folder`` holds an intact int8 encoder made from the encoder ``encoder_sha256``; else ``(None, why)``."""
    from .checkpoints import verify_sha256

    folder = Path(folder)
    names = int8_file_names(stem)
    path = folder / names["manifest"]
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return None, f"{path.name} cannot be read ({err.__class__.__name__})"
    if not isinstance(manifest, dict):
        return None, f"{path.name} is not a manifest"
    if not encoder_sha256 or manifest.get("source_encoder_sha256") != encoder_sha256:
        return None, f"{path.name} was made from another encoder than the shipped one"
    for part in ("xml", "bin"):
        entry = manifest.get(part)
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        # a missing digest is a damaged manifest, never "no check" (verify_sha256 treats None so)
        if not isinstance(digest, str) or entry.get("file") != names[part] or not verify_sha256(folder / names[part], digest):
            return None, f"{names[part]} is missing or damaged (checksum mismatch)"
    return folder / names["xml"], ""


def choices_file() -> Path:
    """Where measured runtime choices are kept: ``$NAPARI_SAM_MICRO_STATE_DIR`` or the user cache folder."""
    env = os.environ.get(CHOICES_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser() / "cpu-runtimes.json"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-sam-micro")) / "cpu-runtimes.json"


def _read_choices(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_choices(path: Path, data: dict) -> None:
    """Atomic write (:mod:`~napari_sam_micro.models.onnx_encoder`'s writer); failures are only logged."""
    from .onnx_encoder import write_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError as err:
        logger.info("the runtime choice is not remembered (%s)", err)


def measure_encoders(encoders: dict[str, Callable[[np.ndarray], np.ndarray]], repeats: int = 3) -> dict[str, float]:
    """Seconds per window of each encoder: the fastest of ``repeats`` calls on one window, after a warm-up call.

    The encoders take turns, so a load that comes and goes during the measurement hits all of them.
    """
    window = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    for encode in encoders.values():
        encode(window)
    best = {name: float("inf") for name in encoders}
    for _ in range(max(1, int(repeats))):
        for name, encode in encoders.items():
            start = time.perf_counter()
            encode(window)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _cpu_key(int8_path: Path, threads: int) -> str:
    import onnxruntime
    import openvino as ov

    cpu = ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    from .checkpoints import file_sha256

    # oneDNN's instruction-set cap (benchmarks use it to stand in for other CPUs) changes the answer
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip() or "all"
    return (
        f"{cpu} | ISA {isa} | openvino {ov.__version__} | onnxruntime {onnxruntime.__version__}"
        f" | {threads} threads | {file_sha256(int8_path)[:16]}"
    )


def int8_pays_off(
    int8_path: str | os.PathLike,
    fp32_encoder: Callable[[np.ndarray], np.ndarray],
    threads: int,
    int8_encoder: Callable[[np.ndarray], np.ndarray] | None = None,
) -> bool:
    """Whether the int8 encoder at ``int8_path`` is worth running on this CPU instead of ``fp32_encoder``.

    Measured once per CPU, runtime versions, thread count and int8 file (:func:`measure_encoders`,
    a few seconds), then read from :func:`choices_file`. True when int8 takes at most
    :data:`INT8_MIN_GAIN` of fp32's time per window. False when OpenVINO cannot compile the file.
    ``int8_encoder``: the compiled int8 encoder when the caller has one (default: compiled here).
    """
    from .onnx_encoder import OnnxEncoderError
    from .openvino_encoder import OvImageEncoder

    int8_path = Path(int8_path)
    try:
        key = _cpu_key(int8_path, threads)
    except Exception as err:  # noqa: BLE001 - no OpenVINO CPU plugin: nothing to measure
        logger.info("int8 not measured (%s)", err)
        return False
    path = choices_file()
    with _choices_lock:
        known = _read_choices(path).get(key)
        if isinstance(known, dict) and isinstance(known.get("int8"), bool):
            return known["int8"]
        try:
            int8 = int8_encoder or OvImageEncoder(int8_path, threads, precision="f32")
        except OnnxEncoderError as err:
            logger.warning("the int8 encoder cannot be used (%s)", err)
            return False
        seconds = measure_encoders({"int8": int8, "fp32": fp32_encoder})
        chosen = seconds["int8"] <= INT8_MIN_GAIN * seconds["fp32"]
        logger.info("int8 encoder %.3f s vs fp32 %.3f s per window: %s", seconds["int8"], seconds["fp32"],
                    "int8" if chosen else "fp32")
        data = _read_choices(path)
        data[key] = {
            "int8": chosen,
            "int8_s": round(seconds["int8"], 4),
            "fp32_s": round(seconds["fp32"], 4),
            "measured": time.strftime("%Y-%m-%d"),
        }
        _write_choices(path, data)
        return chosen
