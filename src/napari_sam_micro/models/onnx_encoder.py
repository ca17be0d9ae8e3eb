"""Image encoders run by ONNX Runtime on the CPU (LiteMedSAM-family TinyViT).

The torch image encoder is exported to ONNX once, on first use, into :func:`onnx_dir`; later loads
reuse the file. The file name carries the encoder's identity, a digest of its weights, the torch
version, the opset and :data:`EXPORT_VERSION`, so new weights or a new exporter never reuse a stale
graph. Files are published atomically (temporary file in the same folder + ``os.replace``) with a
sidecar JSON holding the ``.onnx`` file's SHA-256; a file whose digest does not match (truncated,
foreign, half-written) is exported again, never trusted.

Every export is checked before it is published: ONNX Runtime's output on a random batch of two
must equal torch's within :data:`EXPORT_ATOL`, so a graph that baked in the batch size or drifted
numerically is refused (the caller then stays on torch).

Imports torch and onnxruntime lazily, inside the functions (``models`` is the only layer that may).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = [
    "ONNX_DIR_ENV",
    "OPSET",
    "EXPORT_VERSION",
    "EXPORT_ATOL",
    "OnnxEncoderError",
    "OrtImageEncoder",
    "onnx_dir",
    "weights_digest",
    "onnx_file_name",
    "export_encoder",
    "is_valid_export",
    "ensure_onnx_encoder",
    "load_ort_encoder",
    "physical_cores",
    "write_atomic",
]

logger = logging.getLogger(__name__)

#: Environment variable that overrides :func:`onnx_dir` (tests point it at a temporary folder).
ONNX_DIR_ENV = "NAPARI_SAM_MICRO_ONNX_DIR"
#: ONNX opset of the exported graphs.
OPSET = 17
#: Version of this module's export recipe; bump it when the exported graph changes for the same weights.
EXPORT_VERSION = 1
#: Largest absolute difference between ORT and torch features accepted when an export is checked
#: (fp32 exports of TinyViT differ by ~1e-6 to 1e-5; features are O(1)).
EXPORT_ATOL = 1e-3

_INPUT = "image"
_OUTPUT = "features"
_export_locks: dict[str, threading.Lock] = {}
_export_locks_guard = threading.Lock()


class OnnxEncoderError(RuntimeError):
    """The encoder could not be exported to ONNX or loaded by ONNX Runtime (callers fall back to torch)."""


def onnx_dir() -> Path:
    """Folder of exported encoders: ``$NAPARI_SAM_MICRO_ONNX_DIR``, else ``<user cache dir>/napari-sam-micro/onnx``."""
    env = os.environ.get(ONNX_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-sam-micro")) / "onnx"


def weights_digest(module) -> str:
    """Hex SHA-256 of a torch module's state dict (names, dtypes, shapes and values, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", str(text)).strip("_") or "encoder"


def onnx_file_name(encoder_id: str, digest: str) -> str:
    """File name of an export: encoder identity, weights digest, torch version, opset, recipe version."""
    import torch

    return f"{_slug(encoder_id)}-{digest[:16]}-torch{_slug(torch.__version__)}-op{OPSET}-v{EXPORT_VERSION}.onnx"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_valid_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists and its SHA-256 is the one recorded in its sidecar JSON."""
    path = Path(path)
    try:
        meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        return isinstance(meta, dict) and path.is_file() and _file_sha256(path) == meta.get("sha256")
    except (OSError, ValueError):
        return False


@contextmanager
def _batch_agnostic(module):
    """Make TinyViT traceable with a dynamic batch.

    ``PatchMerging.forward`` reshapes its ``(B, L, C)`` tokens with ``B = len(x)``, which the
    tracer records as a constant. A forward pre-hook hands it the ``(B, C, H, W)`` map instead
    (built with ``x.shape[0]``, which is traced symbolically), so that branch is never taken.
    """

    def to_map(mod, args):
        x = args[0]
        if x.ndim != 3:
            return None
        height, width = mod.input_resolution
        return (x.reshape(x.shape[0], height, width, x.shape[2]).permute(0, 3, 1, 2),) + tuple(args[1:])

    handles = [
        m.register_forward_pre_hook(to_map)
        for m in module.modules()
        if type(m).__name__ == "PatchMerging" and hasattr(m, "input_resolution")
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_export(module, path: Path, example_shape: tuple[int, ...]) -> float:
    """Max abs difference between torch and ORT on a random batch of two; raises when too large."""
    import torch

    batch = torch.rand((2, *example_shape[1:]), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = module(batch).float().numpy()
    got = OrtImageEncoder(path)(batch.numpy())
    if got.shape != expected.shape:
        raise OnnxEncoderError(f"the exported encoder returns shape {got.shape}, torch {expected.shape}")
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= EXPORT_ATOL:
        raise OnnxEncoderError(f"the exported encoder differs from torch by {diff:.3g} (limit {EXPORT_ATOL})")
    return diff


def export_encoder(module, path: str | os.PathLike, example_shape=(1, 3, 256, 256), meta: dict | None = None) -> Path:
    """Export ``module`` (image ``(B, 3, S, S)`` -> features) to ``path``, checked, atomically.

    Parameters
    ----------
    module : torch.nn.Module
        An image encoder on the CPU in ``float32``.
    path : path
        Destination ``.onnx``; its sidecar ``<path>.json`` is written after it.
    example_shape : tuple of int
        Shape of the example input ``(1, C, H, W)``; the batch axis is exported as dynamic.
    meta : dict, optional
        Extra fields for the sidecar JSON.

    Raises
    ------
    OnnxEncoderError
        The exporter failed, or ORT's output on the new file does not match torch's.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        module = module.eval()
        example = torch.zeros(example_shape, dtype=torch.float32)
        with warnings.catch_warnings(), _batch_agnostic(module), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer chatter about shapes we make dynamic on purpose
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                opset_version=OPSET,
                dynamo=False,
                input_names=[_INPUT],
                output_names=[_OUTPUT],
                dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}},
            )
        diff = _check_export(module, tmp, tuple(example_shape))
        record = dict(meta or {}, sha256=_file_sha256(tmp), opset=OPSET, export_version=EXPORT_VERSION,
                      torch=torch.__version__, max_abs_diff_vs_torch=diff)
        os.replace(tmp, path)
        write_atomic(_sidecar(path), json.dumps(record, indent=1))
    except OnnxEncoderError:
        raise
    except Exception as err:  # exporter / ORT errors have many types; all mean "no ONNX encoder"
        raise OnnxEncoderError(f"exporting the image encoder to ONNX failed: {err!r}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace`` (removed on failure)."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _lock_for(path: Path) -> threading.Lock:
    with _export_locks_guard:
        return _export_locks.setdefault(str(path), threading.Lock())


def ensure_onnx_encoder(module, encoder_id: str, example_shape=(1, 3, 256, 256), folder=None) -> Path:
    """Path of a verified ONNX export of ``module``, exporting it first when needed.

    Parameters
    ----------
    module : torch.nn.Module
        The image encoder (CPU, ``float32``).
    encoder_id : str
        Identity of the encoder (``ModelSpec.embedding_id``); with the weights digest it names the file.
    example_shape : tuple of int
        ``(1, C, H, W)`` input shape.
    folder : path, optional
        Default :func:`onnx_dir`.

    Raises
    ------
    OnnxEncoderError
        Export failed or did not match torch.
    """
    digest = weights_digest(module)
    path = Path(folder) if folder is not None else onnx_dir()
    path = path / onnx_file_name(encoder_id, digest)
    with _lock_for(path):
        if is_valid_export(path):
            return path
        if path.exists():
            logger.warning("ONNX encoder %s is damaged or foreign; exporting it again", path)
        logger.info("Exporting the %s image encoder to ONNX (%s)", encoder_id, path)
        return export_encoder(module, path, example_shape, meta={"encoder_id": encoder_id, "weights_sha256": digest})


#: Environment variable capping the runtimes' threads (set by ``segment --workers N`` for its workers).
THREADS_ENV = "NAPARI_SAM_MICRO_THREADS"


def physical_cores() -> int:
    """Compute threads for the runtimes: physical CPU cores usable by this process, at most :data:`THREADS_ENV`.

    0 when unknown (the runtime then picks its default). ``NAPARI_SAM_MICRO_THREADS`` caps it: a
    worker of ``segment --workers N`` gets ``cores // N`` so that N workers do not run N x cores
    threads on the machine's cores. Our own variable rather than ``OMP_NUM_THREADS``: Dask's nanny
    writes ``OMP_NUM_THREADS=1`` into the environment of the process that starts workers, which
    would leave that process's later models on one thread.
    """
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or 0
    except ImportError:
        cores = 0
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0))) if cores else len(os.sched_getaffinity(0))
    budget = os.environ.get(THREADS_ENV, "").strip()
    if budget.isdigit() and int(budget) > 0:
        cores = min(cores, int(budget)) if cores else int(budget)
    return int(cores)


def ort_session_options(threads: int | None = None):
    """ONNX Runtime session options of every graph of the plugin (the encoders and the decoder).

    All graph optimisations, sequential execution (the graphs are chains), ``threads`` intra-op
    threads (default :func:`physical_cores`: hyper-threads do not speed these kernels up), errors
    only in the log.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = physical_cores() if threads is None else int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


class OrtImageEncoder:
    """An exported image encoder run by ONNX Runtime's CPU execution provider.

    Parameters
    ----------
    path : path
        The ``.onnx`` file (``image (B, 3, S, S) float32 -> features (B, C, h, w) float32``).
    threads : int, optional
        Intra-op threads; default :func:`physical_cores` (hyper-threads do not speed up these
        kernels). One inter-op thread, sequential execution: the graph is a chain.

    Raises
    ------
    OnnxEncoderError
        ONNX Runtime is missing or cannot load the file.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise OnnxEncoderError("the Python package 'onnxruntime' is not installed") from err
        options = ort_session_options(threads)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types for bad files
            raise OnnxEncoderError(f"ONNX Runtime cannot load {path}: {err}") from err
        self.path = Path(path)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """``(B, 3, S, S)`` ``float32`` -> ``(B, C, h, w)`` ``float32`` features (thread-safe)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self.input_name: batch})[0]


def load_ort_encoder(module, encoder_id: str, example_shape=(1, 3, 256, 256), folder=None) -> OrtImageEncoder:
    """:func:`ensure_onnx_encoder` then :class:`OrtImageEncoder`; a file ORT cannot load is exported again once.

    Raises
    ------
    OnnxEncoderError
        Export failed, or even a fresh export cannot be loaded.
    """
    path = ensure_onnx_encoder(module, encoder_id, example_shape, folder)
    try:
        return OrtImageEncoder(path)
    except OnnxEncoderError as err:
        logger.warning("%s; exporting it again", err)
        _sidecar(path).unlink(missing_ok=True)  # invalidates it for ensure_onnx_encoder
        return OrtImageEncoder(ensure_onnx_encoder(module, encoder_id, example_shape, folder))
