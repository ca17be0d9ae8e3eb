"""Shared fixtures: the tiny random-weight SAM, real data paths."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_sam_micro.core.model_api import DecoderOutput, Embedding

# Widget tests run offscreen; under Xvfb (DISPLAY set, the README's test command) every test uses the
# virtual screen, so the real-viewer tests can draw the canvas.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# Quality bars were set on fp32 encoders: ``Device: auto`` must not switch the suite to OpenVINO
# bfloat16 on CI machines whose CPU has it (subprocesses inherit this). The OpenVINO path has its
# own tests (tests/models/test_openvino_encoder.py), which ask for it explicitly.
os.environ.setdefault("NAPARI_SAM_MICRO_OPENVINO", "0")

#: Most test workers of ``pytest -n auto`` (pytest-xdist): each one loads its own models (~3 GB
#: held by the end of the suite), so more workers than this cost memory and gain little.
MAX_TEST_WORKERS = 4

# Workers of ``pytest -n N`` share the machine's cores: each gets its share of threads for ONNX
# Runtime (our budget variable), PyTorch and BLAS (read when they load), so that two workers on
# two cores do not run four busy-waiting threads. Subprocesses (the tutorial's kernel) inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _WORKERS > 1:
    _SHARE = str(max(1, (os.cpu_count() or 1) // _WORKERS))
    for _var in ("NAPARI_SAM_MICRO_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, _SHARE)


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per physical core, at most :data:`MAX_TEST_WORKERS`."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        cores = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    return max(1, min(cores, MAX_TEST_WORKERS))


@pytest.fixture(scope="session", autouse=True)
def _private_onnx_folder(tmp_path_factory):
    """Exported ONNX encoders go to a folder of the test run, never the user's cache."""
    if "NAPARI_SAM_MICRO_ONNX_DIR" in os.environ:
        yield
        return
    os.environ["NAPARI_SAM_MICRO_ONNX_DIR"] = str(tmp_path_factory.mktemp("onnx"))
    yield
    os.environ.pop("NAPARI_SAM_MICRO_ONNX_DIR", None)


@pytest.fixture(autouse=True)
def _private_settings(tmp_path, monkeypatch):
    """Widget settings go to a file of this test, never the user's config (and never leak between tests)."""
    monkeypatch.setenv("NAPARI_SAM_MICRO_SETTINGS", str(tmp_path / "settings.json"))


@pytest.fixture(autouse=True)
def _thread_budget_kept():
    """Tests that start a Dask ``LocalCluster`` themselves would leave ``OMP_NUM_THREADS=1`` (set by
    distributed's nanny) in this process: processes a later test starts (the tutorial's kernel, the
    memory benchmark's child) would run PyTorch and BLAS on one thread."""
    from napari_sam_micro.scaleout import restore_thread_env, thread_env

    saved = thread_env()
    yield
    restore_thread_env(saved)


def pytest_collection_modifyitems(config, items):
    """Slow tests first under pytest-xdist; skip real-viewer tests (marker ``viewer``) without a screen.

    With ``-n`` a minute-long test that starts last keeps one worker busy after the others have
    finished; started first, the short tests fill the other workers meanwhile.
    """
    if _WORKERS > 1:
        items.sort(key=lambda item: "slow" not in item.keywords)  # stable: file order otherwise
    if os.environ.get("DISPLAY"):
        return
    skip = pytest.mark.skip(reason="needs a screen: run under xvfb-run -a")
    for item in items:
        if "viewer" in item.keywords:
            item.add_marker(skip)

#: ``../shared/data`` next to the project checkout (never committed; tests skip without it).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("bench_cpu")``: a script of ``benchmarks/`` imported as a module (it is not a package)."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny random-weight SAM as a ``PromptableModel`` on the CPU (session-wide, read-only)."""
    pytest.importorskip("segment_anything")
    from napari_sam_micro.models.sam_family import SamAdapter
    from napari_sam_micro.models.tiny import build_tiny_sam

    return SamAdapter(build_tiny_sam(seed=0), "tiny-test", device="cpu")


class CallRecorder:
    """Wraps a PromptableModel and records what its encoder and decoder were given."""

    def __init__(self, model):
        self._model = model
        self.name = model.name
        self.image_size = model.image_size
        self.mask_threshold = model.mask_threshold
        self.device = model.device
        self.encoded_shapes: list[tuple] = []
        self.decode_calls: list[dict] = []

    def encode(self, image):
        self.encoded_shapes.append(tuple(image.shape))
        return self._model.encode(image)

    def decode(self, embedding, point_coords=None, point_labels=None, boxes=None, mask_input=None, multimask_output=True):
        self.decode_calls.append(
            {
                "points": None if point_coords is None else np.array(point_coords),
                "boxes": None if boxes is None else np.array(boxes),
                "mask_input": mask_input is not None,
                "multimask": multimask_output,
            }
        )
        return self._model.decode(embedding, point_coords, point_labels, boxes, mask_input, multimask_output)

    def upscale(self, embedding, low_res_logits):
        return self._model.upscale(embedding, low_res_logits)


class DiskModel:
    """A scripted 256-px model (``crop_to_prompt`` style), for exact expectations.

    Wrap it in :class:`CallRecorder` to see what it was asked. A points prompt gives a disk of ``radius`` plane pixels around its first positive point (three
    identical masks, predicted IoUs 0.5 / 0.9 / 0.7); a box gives the ellipse inscribed in it. Masks
    are made in the window's frame, so what the session pastes back can be checked exactly.
    """

    name = "disk"
    image_size = 256
    mask_threshold = 0.0
    device = "cpu"

    def __init__(self, radius: float):
        self.radius = float(radius)

    def encode(self, image):
        h, w = image.shape[:2]
        s = 256 / max(h, w)
        return Embedding(np.zeros((1, 4, 4), np.float32), (h, w), (round(h * s), round(w * s)), self.name)

    def decode(self, embedding, point_coords=None, point_labels=None, boxes=None, mask_input=None, multimask_output=True):
        h, w = embedding.original_size
        s = 256 / max(h, w)
        yy, xx = (np.mgrid[:256, :256] + 0.5) / s  # low-res pixel centres, window pixels
        n = len(boxes) if boxes is not None else len(point_coords)
        logits = np.empty((n, 256, 256), np.float32)
        for b in range(n):
            if boxes is not None:
                x0, y0, x1, y1 = boxes[b]
                inside = ((xx - (x0 + x1) / 2) / max((x1 - x0) / 2, 0.5)) ** 2 + ((yy - (y0 + y1) / 2) / max((y1 - y0) / 2, 0.5)) ** 2 <= 1
            else:
                cx, cy = point_coords[b][np.asarray(point_labels[b]) == 1][0]
                inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= self.radius**2
            logits[b] = np.where(inside, 10.0, -10.0)
        m = 3 if multimask_output else 1
        iou = np.tile(np.array([0.5, 0.9, 0.7] if m == 3 else [0.8], np.float32), (n, 1))
        return DecoderOutput(np.repeat(logits[:, None], m, axis=1), iou)

    def upscale(self, embedding, low_res_logits):
        h, w = embedding.original_size
        s = 256 / max(h, w)
        rows = np.minimum(((np.arange(h) + 0.5) * s).astype(int), 255)
        cols = np.minimum(((np.arange(w) + 0.5) * s).astype(int), 255)
        return np.asarray(low_res_logits)[:, :, rows][:, :, :, cols]


@pytest.fixture
def counted_plane():
    """The :class:`CountedPlane` class: a lazy plane that records which chunks were read."""
    return CountedPlane


@pytest.fixture
def call_recorder():
    """The :class:`CallRecorder` class."""
    return CallRecorder


@pytest.fixture
def disk_model():
    """``disk_model(radius)``: a :class:`DiskModel` behind a :class:`CallRecorder`."""
    return lambda radius: CallRecorder(DiskModel(radius))


@pytest.fixture
def disk_test_model():
    """A registered ``disk-test`` model (``crop_to_prompt``): :class:`DiskModel` with radius 12."""
    import dataclasses

    from napari_sam_micro.models import registry

    tiny = registry.get_spec("tiny-test")
    built = []

    def build(checkpoint, device):
        built.append(DiskModel(radius=12))
        return built[-1]

    registry.register(dataclasses.replace(tiny, name="disk-test", display_name="disk-test", builder=build))
    yield built
    registry.unregister("disk-test")


@pytest.fixture
def wide_disk_model():
    """``wide-disk``: :class:`DiskModel` with radius 20, larger than radius-12 nuclei (a click merges neighbours)."""
    import dataclasses

    from napari_sam_micro.models import registry

    tiny = registry.get_spec("tiny-test")
    registry.register(dataclasses.replace(tiny, name="wide-disk", display_name="wide-disk",
                                          builder=lambda checkpoint, device: DiskModel(radius=20)))
    yield registry.get_spec("wide-disk")
    registry.unregister("wide-disk")


class CountedPlane:
    """A lazy ``side`` x ``side`` uint16 dask plane: bright discs (radius 10) at ``discs`` (row, col) on a flat
    background, in ``chunk``-sided chunks that record when they are computed (``reads``)."""

    def __init__(self, side: int, chunk: int, discs):
        self.reads: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        self.discs = discs
        n = side // chunk
        self.chunks = n * n
        import dask.array as da

        self.array = da.map_blocks(self._block, chunks=((chunk,) * n, (chunk,) * n), dtype=np.uint16)

    def _block(self, block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        with self._lock:
            self.reads.append((y0, x0))
        out = np.full((y1 - y0, x1 - x0), 100, np.uint16)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        for cy, cx in self.discs:
            if y0 - 12 <= cy < y1 + 12 and x0 - 12 <= cx < x1 + 12:
                out[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = 1000
        return out

    @property
    def distinct(self) -> int:
        return len(set(self.reads))
