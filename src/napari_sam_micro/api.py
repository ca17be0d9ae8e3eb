"""Segment Anything on microscopy images from Python: notebooks, scripts, Colab.

The functions here run the plugin's own path (the same normalisation, windows, model runtimes and
embedding cache as the napari widgets), without napari or Qt::

    import tifffile
    from napari_sam_micro import load_predictor, segment_everything, segment_prompts

    image = tifffile.imread("nuclei.tif")                    # (H, W) grey, 8 or 16 bit
    predictor = load_predictor("micro-tiny")                 # offline, CPU or GPU ("auto")
    labels, table = segment_everything(image, model=predictor)   # label image + pandas DataFrame

    predictor.set_image(image)
    masks, scores, logits = predictor.predict(points=[[120, 64]], labels=[1])  # (x, y), like SamPredictor
    labels = segment_prompts(image, boxes=[[100, 40, 140, 90]], model=predictor)

Coordinates
-----------
Images are numpy arrays, **rows first**: ``(H, W)`` grey, ``(H, W, 3|4)`` RGB, channels on any
axis (``channel_axis``), planes on any axis (``axis``). Prompts follow segment-anything's
``SamPredictor`` by default (``coords="xy"``): a point is ``(x, y)`` = ``(column, row)`` and a box
is ``(x0, y0, x1, y1)``. With ``coords="rc"`` points are ``(row, col)`` and boxes
``(row0, col0, row1, col1)``, as numpy indexing and napari layers give them. Either way the prompts
go through :mod:`napari_sam_micro.core.prompts` (the one place that flips napari's order to SAM's),
with the plugin's checks and messages. Label images and tables are in numpy order (``bbox_y0`` is
a row).

See ``docs/api.md`` for the mapping from ``SamPredictor`` / ``SamAutomaticMaskGenerator``.
"""

from __future__ import annotations

import dataclasses
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ._api_input import ImageLayout, image_layout, make_prompts, run_job
from .core.automatic import AmgParams
from .core.cache import EmbeddingCache
from .core.decoding import decode_multimask
from .core.errors import ImageError, PromptError, UserInputError
from .core.model_api import PromptableModel
from .core.prompts import Prompts, object_prompts
from .segmentation import EverythingOptions, EverythingResult, everything_job, everything_mode_for, paint_objects
from .session import AnnotationSession, Prediction
from .tiling import needs_tiling, tiled_everything_job

__all__ = [
    "Predictor",
    "PredictOutput",
    "load_predictor",
    "segment_everything",
    "segment_prompts",
    "everything_options",
    "UserInputError",
]

#: The model used when none is named.
DEFAULT_MODEL = "micro-tiny"


@dataclass(frozen=True, eq=False)
class PredictOutput:
    """Masks of one :meth:`Predictor.predict` call.

    Unpacks like ``SamPredictor.predict``: ``masks, scores, logits = predictor.predict(...)``.

    Attributes
    ----------
    masks : (K, H, W) bool
        One mask per object (``multimask=False``: one per box, or one for points only), or SAM's
        three candidates of one prompt (``multimask=True``).
    iou_predictions : (K,) float32
        The model's predicted IoU of each mask.
    stability_scores : (K,) float32
        SAM's stability score of each mask (how little it changes with the logit threshold).
    low_res_logits : (K, 256, 256) float32
        Logits of each mask in the frame of the window it was decoded in (``windows``).
    kinds : tuple of str
        ``"points"``, ``"box"`` or ``"box+points"`` per mask.
    windows : tuple
        ``(y0, y1, x0, x1)`` of the image window each mask was decoded in (None: the whole image).
    warnings : tuple of str
        Notes on the prompts (e.g. points outside every box, ignored).
    """

    masks: np.ndarray
    iou_predictions: np.ndarray
    stability_scores: np.ndarray
    low_res_logits: np.ndarray
    kinds: tuple = ()
    windows: tuple = ()
    warnings: tuple = ()

    def __iter__(self):
        return iter((self.masks, self.iou_predictions, self.low_res_logits))

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def from_objects(cls, objects, hw, notes=()) -> PredictOutput:
        """From the plugin's :class:`~napari_sam_micro.core.decoding.ObjectPreview` objects."""
        masks = np.stack([o.mask for o in objects]) if objects else np.zeros((0, *hw), bool)
        return cls(
            masks=masks,
            iou_predictions=np.array([o.predicted_iou for o in objects], np.float32),
            stability_scores=np.array([o.stability for o in objects], np.float32),
            low_res_logits=np.concatenate([o.low_res_logits for o in objects]) if objects else np.zeros((0, 256, 256), np.float32),
            kinds=tuple(o.kind for o in objects),
            windows=tuple(o.window for o in objects),
            warnings=tuple(notes),
        )


class Predictor:
    """A model and one image, prompted like segment-anything's ``SamPredictor``.

    Made by :func:`load_predictor`. Wraps the plugin's
    :class:`~napari_sam_micro.session.AnnotationSession` (the Annotator's state of one plane): the
    same normalisation, prompt windows (256-px models encode a window around each object), model
    runtime and embedding cache, so a prompt gives the mask the Annotator would show.

    Parameters
    ----------
    model : PromptableModel
        A loaded model (:func:`~napari_sam_micro.models.registry.load_model`).
    spec : ModelSpec
        Its registry entry (how prompts are decoded, the everything mode).
    cache : EmbeddingCache, optional
        Where embeddings are kept (a new one by default); shared by :func:`segment_everything`.
    progress : bool
        Show a progress bar (tqdm) while encoding.
    """

    def __init__(self, model: PromptableModel, spec, *, cache: EmbeddingCache | None = None, progress: bool = True):
        self.model = model
        self.spec = spec
        self.cache = cache if cache is not None else EmbeddingCache()
        self.progress = bool(progress)
        self.session = AnnotationSession(
            model, self.cache, model_id=spec.embedding_id, **AnnotationSession.options_for(spec)
        )

    def __repr__(self) -> str:
        return f"Predictor(model={self.spec.name!r}, device={self.device!r}, runtime={self.runtime!r})"

    @property
    def model_name(self) -> str:
        return self.spec.name

    @property
    def device(self) -> str:
        return str(self.model.device)

    @property
    def runtime(self) -> str:
        """What runs the image encoder: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``"openvino-int8"``."""
        return str(getattr(self.model, "runtime", "torch"))

    @property
    def is_image_set(self) -> bool:
        return self.session.has_image

    @property
    def image_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the image set by :meth:`set_image`."""
        if not self.session.has_image:
            raise ImageError("Call predictor.set_image(image) first.")
        return self.session.image_hw

    def set_image(self, image, *, channel_axis=None, channels=None, rgb=None, percentiles=(1.0, 99.8), image_format: str = "RGB") -> Predictor:
        """Make ``image`` the image that :meth:`predict` segments.

        Models that decode on the whole image (SAM ViT) encode it here, as ``SamPredictor.set_image``
        does; 256-px models (``micro-tiny``, ``litemedsam``) encode a window around each object when
        it is first prompted (cached: a second prompt nearby is decoded without encoding).

        Parameters
        ----------
        image : array-like
            One plane: ``(H, W)`` grey, ``(H, W, 3|4)`` RGB, or with channels on ``channel_axis``;
            any integer or float dtype (16-bit and NaN are fine), rows first. For a stack pass one
            plane (``image[z]``) or use :func:`segment_everything` with ``axis``.
        channel_axis : int, optional
            Axis holding channels (e.g. 0 for ``(C, H, W)``).
        channels : tuple of int, optional
            Up to three channels to use (default: all, at most three).
        rgb : bool, optional
            The last axis is RGB(A); default True for ``(H, W, 3|4)``.
        percentiles : (float, float)
            Intensity stretch (low, high percentile), per channel; default ``(1, 99.8)``.
        image_format : {"RGB", "BGR"}
            Channel order of an RGB image (``"BGR"`` for OpenCV's ``imread``), as in ``SamPredictor``.

        Returns
        -------
        Predictor
            Itself.

        Raises
        ------
        ImageError
            Not a single plane, too many channels, not numbers ...
        """
        layout = image_layout(image, channel_axis=channel_axis, channels=channels, rgb=rgb, percentiles=percentiles, single_plane=True)
        self._set_plane(_bgr_to_rgb(layout, image_format), layout.config)
        return self

    def _set_plane(self, plane: np.ndarray, config) -> None:
        session = self.session
        session.set_image(plane, config)
        if not self.spec.crop_to_prompt and session.embedding is None:
            generation = session.generation
            embedding = run_job(session.embedding_job(), self.progress, f"Encoding ({self.model_name})")
            session.accept_embedding(embedding, generation)

    def reset_image(self) -> None:
        """Forget the image (as ``SamPredictor.reset_image``); cached embeddings stay in :attr:`cache`."""
        self.session.reset()

    def predict(self, points=None, labels=None, boxes=None, *, multimask: bool = False, refine: bool = False,
                coords: str = "xy", point_coords=None, point_labels=None, box=None, multimask_output=None) -> PredictOutput:
        """Masks for prompts on the image of :meth:`set_image`.

        Objects follow the Annotator's rules: points only → one object; each box → one object
        (several boxes are decoded in one batched call); a point inside boxes refines the smallest
        box that holds it.

        Parameters
        ----------
        points : (N, 2) array-like, optional
            ``(x, y)`` = ``(column, row)`` (``coords="xy"``, SAM's order) or ``(row, col)`` (``coords="rc"``).
        labels : (N,) array-like, optional
            1 = object, 0 = background; default all 1.
        boxes : (4,) or (K, 4) array-like, optional
            ``(x0, y0, x1, y1)`` (``"xy"``) or ``(row0, col0, row1, col1)`` (``"rc"``).
        multimask : bool
            False (default): one mask per object, exactly what the Annotator shows. True: SAM's
            three candidates for an ambiguous prompt of one object, decoded once in the object's
            window (``SamPredictor``'s ``multimask_output=True``).
        refine : bool
            When the prompts only add points to the previous call's single object, refine its mask
            (its logits are the decoder's mask input), as corrective clicks do in the Annotator.
            Default False: every call starts afresh.
        coords : {"xy", "rc"}
        point_coords, point_labels, box, multimask_output
            ``SamPredictor``'s names for ``points``, ``labels``, ``boxes``, ``multimask``.

        Returns
        -------
        PredictOutput
            ``masks (K, H, W)``, ``iou_predictions (K,)``, ``stability_scores (K,)`` ...; unpacks as
            ``masks, iou_predictions, low_res_logits``.

        Raises
        ------
        PromptError
            No prompt, only background points, prompts off the image, wrong shapes.
        """
        points = _alias(points, point_coords, "points", "point_coords")
        labels = _alias(labels, point_labels, "labels", "point_labels")
        boxes = _alias(boxes, box, "boxes", "box")
        multimask = bool(_alias(multimask or None, multimask_output, "multimask", "multimask_output"))
        prompts = make_prompts(points, labels, boxes, hw=self.image_hw, coords=coords)
        if multimask:
            return self._predict_multimask(prompts)
        prediction = self._prediction(prompts, refine=refine)
        for note in prediction.warnings:
            warnings.warn(note, stacklevel=2)
        return PredictOutput.from_objects(prediction.objects, self.image_hw, prediction.warnings)

    def _prediction(self, prompts: Prompts, refine: bool = False) -> Prediction:
        """The session's prediction, encoding the windows it needs first (the plugin's ``predict_job``)."""
        if not refine:
            self.session.clear_preview()
        return run_job(self.session.predict_job(prompts), self.progress, f"Segmenting ({self.model_name})")

    def _predict_multimask(self, prompts: Prompts) -> PredictOutput:
        objects = object_prompts(prompts)
        if len(objects) != 1:
            raise PromptError(
                f"multimask=True answers one object's prompt with SAM's three candidate masks; these prompts "
                f"describe {len(objects)} objects (one per box). Use multimask=False for several boxes."
            )
        self.session.clear_preview()
        window = self.session.plan_windows(prompts)[0]
        run_job(self.session.embeddings_job([window]), self.progress, f"Encoding ({self.model_name})")
        previews = decode_multimask(self.session.decode_context(), objects[0], window)
        return PredictOutput.from_objects(previews, self.image_hw, objects.warnings)


def _alias(value, sam_value, name: str, sam_name: str):
    if sam_value is None:
        return value
    if value is not None:
        raise ValueError(f"Give {name}= or {sam_name}= (its segment-anything name), not both.")
    return sam_value


def _bgr_to_rgb(layout: ImageLayout, image_format: str) -> np.ndarray:
    plane = layout.plane(())
    fmt = str(image_format).upper()
    if fmt not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', not {image_format!r}.")
    if fmt == "BGR":
        if not layout.rgb:
            raise ImageError("image_format='BGR' applies to colour (RGB) images only.")
        plane = plane[..., [2, 1, 0, *range(3, plane.shape[-1])]]
    return plane


def load_predictor(model: str | None = DEFAULT_MODEL, device: str | None = "auto", *, checkpoint=None,
                   runtime: str | None = None, progress: bool = True) -> Predictor:
    """Load a model and return a :class:`Predictor` (the ``sam_model_registry`` + ``SamPredictor`` step).

    Parameters
    ----------
    model : str
        Registry name: ``"micro-tiny"`` (default; offline, trained on microscopy), ``"litemedsam"``,
        ``"vit_b"`` / ``"vit_l"`` / ``"vit_h"`` (Segment Anything; downloaded on first use), ``"tiny-test"``.
    device : str
        ``"auto"`` (CUDA, then Apple MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    checkpoint : path, optional
        A local weights file for that model (e.g. ``sam_vit_b_01ec64.pth`` or your fine-tune).
    runtime : {"auto", "torch", "onnxruntime", "openvino", "openvino-int8"}, optional
        What runs the image encoder (on the CPU the 256-px models default to OpenVINO bfloat16
        where the CPU has it and OpenVINO is installed, else micro-tiny's int8 encoder in OpenVINO
        where it measured clearly faster on this CPU, else ONNX Runtime fp32).
    progress : bool
        Progress bars (download, export, encoding); False for none.

    Raises
    ------
    ModelUnavailableError
        Unknown model or device, a download that failed, a missing package.
    """
    from .models.registry import default_model_name, get_spec, load_model_job

    name = default_model_name() if model is None else str(model)
    spec = get_spec(name)
    loaded = run_job(load_model_job(name, device=device, checkpoint=checkpoint, runtime=runtime), progress, f"Loading {name}")
    return Predictor(loaded, spec, progress=progress)


@contextmanager
def _predictor(model, device, progress: bool | None):
    """The :class:`Predictor` of a call (loaded for a name), its progress setting overridden while in use."""
    if isinstance(model, Predictor):
        predictor = model
    elif model is None or isinstance(model, str):
        predictor = load_predictor(model, device, progress=True if progress is None else bool(progress))
    else:
        raise ValueError(f"model must be a model name (e.g. 'micro-tiny') or a Predictor from load_predictor(), not {type(model).__name__}.")
    saved = predictor.progress
    predictor.progress = saved if progress is None else bool(progress)
    try:
        yield predictor
    finally:
        predictor.progress = saved


# -- everything mode ---------------------------------------------------------------------------

_SEED_KEYS = {f.name for f in dataclasses.fields(EverythingOptions)} - {"mode", "grid"}
_GRID_KEYS = {f.name for f in dataclasses.fields(AmgParams)}


def everything_options(spec, mode: str = "auto", filters: dict | None = None) -> EverythingOptions:
    """:class:`~napari_sam_micro.segmentation.EverythingOptions` from keyword filters.

    Seeds-mode names are :class:`~napari_sam_micro.segmentation.EverythingOptions`'s
    (``min_distance``, ``iou_floor``, ``min_area``, ``fill_holes`` ...); grid-mode names are
    ``SamAutomaticMaskGenerator``'s (:class:`~napari_sam_micro.core.automatic.AmgParams`:
    ``points_per_side``, ``pred_iou_thresh``, ``stability_score_thresh`` ...). ``min_area`` applies
    to both. A name of the other mode is ignored with a warning.

    Raises
    ------
    ValueError
        A name of neither mode.
    """
    filters = dict(filters or {})
    resolved = everything_mode_for(spec, mode)
    unknown = sorted(k for k in filters if k not in _SEED_KEYS | _GRID_KEYS)
    if unknown:
        raise ValueError(
            f"Unknown everything-mode setting(s): {', '.join(unknown)}. Seeds mode takes {', '.join(sorted(_SEED_KEYS))}; "
            f"grid mode (SAM models) takes {', '.join(sorted(_GRID_KEYS))}."
        )
    own = _GRID_KEYS | {"min_area"} if resolved == "grid" else _SEED_KEYS
    ignored = sorted(k for k in filters if k not in own)
    if ignored:
        warnings.warn(
            f"{spec.name} runs the {resolved} mode: {', '.join(ignored)} ignored (they apply to the other mode).",
            stacklevel=3,
        )
    seed_kw = {k: v for k, v in filters.items() if k in _SEED_KEYS and (resolved == "seeds" or k == "min_area")}
    grid_kw = {k: v for k, v in filters.items() if k in _GRID_KEYS and resolved == "grid"}
    return EverythingOptions(mode=mode, grid=AmgParams(**grid_kw), **seed_kw)


def _everything_plane(predictor: Predictor, plane: np.ndarray, config, options: EverythingOptions, label: str) -> EverythingResult:
    """Everything mode on one plane: the plugin's ``everything_job``, tiled (``tiled_everything_job``) above 1024 px a side."""
    if needs_tiling(plane.shape[:2]):
        job = tiled_everything_job(predictor.model, plane, predictor.spec, preprocess=config, options=options,
                                   model_id=predictor.spec.embedding_id)
        tiled = run_job(job, predictor.progress, label)
        return EverythingResult(np.asarray(tiled.labels), tiled.table, tiled.mode)
    job = everything_job(predictor.model, plane, predictor.spec, preprocess=config, options=options,
                         cache=predictor.cache, model_id=predictor.spec.embedding_id)
    return run_job(job, predictor.progress, label)


def segment_everything(image, model=DEFAULT_MODEL, *, device: str | None = "auto", axis=None, channel_axis=None,
                       channels=None, rgb=None, percentiles=(1.0, 99.8), mode: str = "auto", progress: bool | None = None,
                       **filters):
    """Segment every object of an image (``SamAutomaticMaskGenerator.generate``, as a label image).

    Runs the plugin's everything mode (:func:`~napari_sam_micro.segmentation.everything_job`):
    object centres as prompts for the 256-px models (``micro-tiny``), SAM's grid of points for SAM
    ViT models. Stacks are segmented plane by plane along ``axis``.

    Parameters
    ----------
    image : array-like
        ``(H, W)`` grey, ``(H, W, 3|4)`` RGB, channels on ``channel_axis``, planes along ``axis``;
        any integer or float dtype, rows first.
    model : str or Predictor
        A model name, or a :class:`Predictor` from :func:`load_predictor` (reuses its loaded model
        and embedding cache: pass one when you segment several images).
    device : str
        For a model name: ``"auto"``, ``"cpu"``, ``"cuda"`` ...
    axis : int or tuple of int, optional
        Plane axis (axes) of a stack, e.g. ``0`` for ``(Z, Y, X)``; each plane is segmented on its own.
    channel_axis, channels, rgb, percentiles
        As in :meth:`Predictor.set_image`.
    mode : {"auto", "seeds", "grid"}
        ``auto``: seeds where the model supports them, else grid.
    progress : bool, optional
        Progress bar; default the predictor's setting (True for a model name).
    **filters
        Settings of the mode, see :func:`everything_options` (e.g. ``min_area=30``,
        ``pred_iou_thresh=0.88``, ``points_per_side=16``).

    Returns
    -------
    labels : ndarray of uint32
        The image's shape without its channel axis; 0 = background, objects ``1..K`` (unique over
        the whole stack).
    table : pandas.DataFrame
        One row per object, indexed by its id: ``index`` (the id, napari's ``features`` column),
        ``area``, ``predicted_iou``, ``stability_score``, ``prompt``, bounding box ``bbox_y0``,
        ``bbox_x0``, ``bbox_y1``, ``bbox_x1`` (half-open, pixels), and for stacks ``axis_<n>``:
        the object's plane.
    """
    layout = image_layout(image, axis=axis, channel_axis=channel_axis, channels=channels, rgb=rgb, percentiles=percentiles)
    with _predictor(model, device, progress) as predictor:
        options = everything_options(predictor.spec, mode, filters)
        planes = list(np.ndindex(*layout.leading)) if layout.leading else [()]
        labels = np.zeros(layout.leading + layout.hw, np.uint32)
        rows, top = [], 0
        for k, index in enumerate(planes):
            label = "Segmenting everything" + (f" (plane {k + 1} of {len(planes)})" if index else "")
            result = _everything_plane(predictor, layout.plane(index), layout.config, options, label)
            ids = np.asarray(result.labels)
            labels[index] = np.where(ids > 0, ids + top, 0)  # ids unique over the stack
            rows.extend(_rows(result.table, top, dict(zip(_axis_names(image, axis), index))))
            top += max(int(ids.max(initial=0)), max(result.table.get("index", []), default=0))
    return labels.transpose(layout.out_perm), _frame(rows, _axis_names(image, axis))


def _axis_names(image, axis) -> list[str]:
    if axis is None:
        return []
    ndim = len(image.shape) if hasattr(image, "shape") else np.ndim(image)
    values = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    return [f"axis_{int(a) % ndim}" for a in values]


def _rows(table: dict, offset: int, plane: dict) -> list[dict]:
    n = len(table.get("index", []))
    out = []
    for i in range(n):
        row = {key: values[i] for key, values in table.items()}
        row["index"] = int(row["index"]) + offset
        row.update({k: int(v) for k, v in plane.items()})
        out.append(row)
    return out


def _pandas():
    try:
        import pandas
    except ImportError as err:  # pragma: no cover - pandas ships with the napari and notebook extras
        raise ImportError("The object table needs pandas: pip install 'napari-sam-micro[notebook]'.") from err
    return pandas


def _frame(rows: list[dict], extra: list[str] = ()):
    from .core.labels import OBJECT_COLUMNS

    pd = _pandas()
    frame = pd.DataFrame(rows, columns=list(dict.fromkeys([*OBJECT_COLUMNS, *(k for r in rows for k in r), *extra])))
    frame.index = pd.Index(frame["index"].astype("int64"), name="id")
    return frame


# -- prompts to a label image ------------------------------------------------------------------

def segment_prompts(image, boxes=None, points=None, labels=None, *, model=DEFAULT_MODEL, device: str | None = "auto",
                    coords: str = "xy", channel_axis=None, channels=None, rgb=None, percentiles=(1.0, 99.8),
                    progress: bool | None = None) -> np.ndarray:
    """A label image of the objects that boxes and points describe (the Annotator's commit).

    Each box is one object (all boxes are decoded in one batched call); points inside a box refine
    it. Points without boxes are one object, or one object per group with ``points`` of shape
    ``(K, N, 2)`` (``labels`` ``(K, N)``): e.g. one click per cell is ``points[:, None]``.
    Objects are painted in order; a later object never overwrites an earlier one.

    Parameters
    ----------
    image : array-like
        One plane, as in :meth:`Predictor.set_image`.
    boxes : (K, 4) array-like, optional
        ``(x0, y0, x1, y1)`` (``coords="xy"``) or ``(row0, col0, row1, col1)`` (``coords="rc"``).
    points : (N, 2) or (K, N, 2) array-like, optional
        ``(x, y)`` or ``(row, col)`` (see ``coords``).
    labels : (N,) or (K, N) array-like, optional
        1 = object, 0 = background; default all 1.
    model, device, channel_axis, channels, rgb, percentiles, progress
        As in :func:`segment_everything`.

    Returns
    -------
    ndarray of uint32, (H, W)
        0 = background, objects ``1..K`` in prompt order (an object whose mask is empty, or
        entirely under earlier objects, gets no id).

    Raises
    ------
    PromptError
        No prompt, prompts off the image, wrong shapes.
    """
    groups = _prompt_groups(points, labels, boxes)
    with _predictor(model, device, progress) as predictor:
        predictor.set_image(image, channel_axis=channel_axis, channels=channels, rgb=rgb, percentiles=percentiles)
        objects = []
        for pts, lab, bxs in groups:
            prompts = make_prompts(pts, lab, bxs, hw=predictor.image_hw, coords=coords)
            prediction = predictor._prediction(prompts)
            for note in prediction.warnings:
                warnings.warn(note, stacklevel=2)
            objects.extend(prediction.objects)
        return paint_objects(objects, predictor.session.image_hw)[0]


def _prompt_groups(points, labels, boxes) -> list[tuple]:
    """``(points, labels, boxes)`` per decoder request: points of shape (K, N, 2) are K objects."""
    if points is None or np.ndim(points) != 3:
        return [(points, labels, boxes)]
    pts = np.asarray(points, np.float64)
    if boxes is not None and np.size(boxes):
        raise PromptError("Points of shape (K, N, 2) are K objects of their own: give boxes in a separate call.")
    lab = np.ones(pts.shape[:2], np.int32) if labels is None else np.asarray(labels)
    if lab.shape != pts.shape[:2]:
        raise PromptError(f"points of shape {pts.shape} need labels of shape {pts.shape[:2]}, got {lab.shape}.")
    return [(pts[k], lab[k], None) for k in range(pts.shape[0])]
