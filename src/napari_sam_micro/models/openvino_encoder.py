"""Image encoders run by OpenVINO on the CPU, in bfloat16 where the CPU computes it natively.

OpenVINO reads the same ONNX graph ONNX Runtime runs (the shipped ``micro-tiny.encoder.onnx`` or
the checked export of :mod:`~napari_sam_micro.models.onnx_encoder`), so no second export exists.
On CPUs with native bfloat16 (AVX512-BF16 or AMX: AMD Zen 4 and later, Intel Xeon 4th generation
and later) its default inference precision is bfloat16, which ran micro-tiny's encoder 1.9 x faster
than ONNX Runtime fp32 on the development machine (docs/benchmarks.md). Without bfloat16 (most
Intel laptops, Apple silicon) OpenVINO fp32 was slower than ONNX Runtime fp32 in the performance
issue's measurement, so :func:`openvino_preferred` is false there; ``Device: auto`` then takes
micro-tiny's int8 encoder where it measured faster (:mod:`~napari_sam_micro.models.openvino_int8`,
compiled by :class:`OvImageEncoder` from its OpenVINO IR), else ONNX Runtime.

bfloat16 keeps 8 bits of mantissa: features differ from fp32 by about 1.6 % (mean relative);
``tests/models/test_openvino_encoder.py`` bounds the cost in mask IoU on held-out images.

Imports openvino lazily, inside the functions (``models`` is the only layer that may).
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import numpy as np

__all__ = [
    "OPENVINO_ENV",
    "PRECISIONS",
    "OvImageEncoder",
    "openvino_installed",
    "openvino_allowed",
    "cpu_has_bf16",
    "openvino_preferred",
]

#: Environment variable: ``0`` / ``off`` keeps ``Device: auto`` off OpenVINO (fp32 ONNX Runtime
#: everywhere, e.g. for results that must not depend on the CPU); an explicit runtime still works.
OPENVINO_ENV = "NAPARI_SAM_MICRO_OPENVINO"
#: Inference precisions: ``"auto"`` (OpenVINO's default for the CPU: bfloat16 where native, else
#: fp32), ``"f32"``, ``"bf16"``.
PRECISIONS = ("auto", "f32", "bf16")


def openvino_installed() -> bool:
    """Whether the Python package ``openvino`` can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether OpenVINO reports native bfloat16 on this CPU (False when OpenVINO is missing)."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - no openvino, or a CPU plugin that cannot start: not preferred
        return False


def openvino_allowed() -> bool:
    """Whether ``Device: auto`` may use OpenVINO at all: installed and not turned off (:data:`OPENVINO_ENV`)."""
    if os.environ.get(OPENVINO_ENV, "").strip().lower() in ("0", "off", "false", "no"):
        return False
    return openvino_installed()


def openvino_preferred() -> bool:
    """Whether ``Device: auto`` runs image encoders in OpenVINO bfloat16: allowed (:func:`openvino_allowed`) and the CPU has bfloat16."""
    return openvino_allowed() and cpu_has_bf16()


class OvImageEncoder:
    """An ONNX image encoder compiled by OpenVINO for the CPU.

    Parameters
    ----------
    path : path
        The ``.onnx`` file or OpenVINO IR ``.xml`` (``image (B, 3, S, S) float32 -> features (B, C, h, w) float32``).
    threads : int, optional
        Inference threads; default the physical cores
        (:func:`~napari_sam_micro.models.onnx_encoder.physical_cores`).
    precision : {"auto", "f32", "bf16"}
        Inference precision; ``"auto"`` is OpenVINO's default for the CPU.

    Attributes
    ----------
    precision : str
        The precision OpenVINO compiled with (``"bf16"`` or ``"f32"``).

    Raises
    ------
    napari_sam_micro.models.onnx_encoder.OnnxEncoderError
        OpenVINO is missing or cannot read / compile the file.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, precision: str = "auto"):
        from .onnx_encoder import OnnxEncoderError, physical_cores

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
        try:
            import openvino as ov
        except ImportError as err:
            raise OnnxEncoderError("the Python package 'openvino' is not installed") from err
        config = {"PERFORMANCE_HINT": "LATENCY"}
        threads = physical_cores() if threads is None else int(threads)
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        if precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            core = ov.Core()
            self.compiled = core.compile_model(_batch_of_one(core.read_model(str(path))), "CPU", config)
            hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
            self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint).lower()
        except Exception as err:  # OpenVINO raises RuntimeError subclasses of its own for bad files
            raise OnnxEncoderError(f"OpenVINO cannot compile {path}: {err}") from err
        self.path = Path(path)
        # An infer request is not thread-safe: one per thread, so the pre-encoding worker and a
        # prompt's encode never share one (the compiled model is shared).
        self._local = threading.local()

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``(B, 3, S, S)`` ``float32`` -> ``(B, C, h, w)`` ``float32`` features (thread-safe).

        Images go through the batch-of-one graph one at a time (see :func:`_batch_of_one`).
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        request = self._request()
        # np.array copies: the request reuses its output buffer on the next call
        return np.concatenate([np.array(request.infer({0: batch[i : i + 1]})[0], dtype=np.float32) for i in range(len(batch))])


def _batch_of_one(model):
    """``model`` with its dynamic batch axis fixed to 1 (when the other axes are static).

    OpenVINO compiles a static shape into faster kernels, and batching did not pay on the CPU:
    micro-tiny's encoder, bfloat16, 2 cores, per window: static batch 1 192 ms, dynamic batch
    1 / 2 / 4 / 8 219 / 217 / 228 / 233 ms, static batch 4 214 ms.
    """
    shape = model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or any(dim.is_dynamic for dim in list(shape)[1:]):
        return model
    model.reshape([1] + [dim.get_length() for dim in list(shape)[1:]])
    return model
