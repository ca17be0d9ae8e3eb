"""Keep numpy's BLAS off the cores while an inference runtime works.

numpy's OpenBLAS starts one worker thread per core on its first multi-threaded call, and the
workers busy-wait for a while after each call. The ONNX adapter's resizes are BLAS matrix
products (:mod:`~napari_sam_micro.models.onnx_runtime`); their spinning workers then compete with
ONNX Runtime's or OpenVINO's own threads on the next model call. Measured on 2 cores: the ONNX
decoder graph took 31-35 ms with BLAS on one thread and 43-100 ms (median ~65) without, in the
Annotator's path. The products here are small (a window's mask, a 256-px input), so one BLAS thread
costs them little.

:func:`blas_single_thread` limits BLAS to one thread for the duration of a model call with
threadpoolctl (a context manager: the user's own numpy outside the plugin keeps its threads).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext

__all__ = ["blas_single_thread"]

_controller = None
_controller_lock = threading.Lock()


def _get_controller():
    global _controller
    with _controller_lock:
        if _controller is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:  # an optional speed-up: without it, BLAS keeps its threads
                _controller = False
            else:
                _controller = ThreadpoolController()
        return _controller


@contextmanager
def blas_single_thread():
    """Context in which numpy's BLAS libraries run on one thread (no-op without threadpoolctl)."""
    controller = _get_controller()
    with controller.limit(limits=1, user_api="blas") if controller else nullcontext():
        yield
