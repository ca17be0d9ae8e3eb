"""Reproducible evaluation of promptable models on microscopy data with instance ground truth.

A simulated user prompts every ground-truth object of the evaluated images:

``point``
    One positive click at the object's interior point farthest from its border (maximum of the
    Euclidean distance transform; ties broken by the first pixel in row-major order).
``box``
    The object's bounding box ``(x0, y0, x1, y1)`` = ``(min col, min row, max col, max row)``
    (pixel indices, the convention of SAM's training boxes).
``box+clicks``
    The box, then up to ``n_clicks`` corrective clicks: each click goes to the pixel of the
    current error region farthest from that region's border, positive where the object was
    missed, negative where the prediction spilled over; the previous low-resolution logits are fed
    back as ``mask_input``. Clicking stops early once the prediction is perfect.

Every prompt goes through the plugin's own path, :class:`napari_sam_micro.session.AnnotationSession`
(``set_image`` on the raw plane, ``embeddings_job`` for the windows it asks for, ``predict``): the
same normalisation, crop-to-prompt windows (for models whose spec has ``crop_to_prompt``),
single-point multimask choice and ``mask_input`` refinement as in napari.

Scores: mean IoU per prompt kind and modality; with ``everything=True`` the automatic
("everything") segmentation of each image is matched against the ground truth
(:func:`napari_sam_micro.core.metrics.instance_scores`) and F1 at IoU 0.5 reported per modality.
The ``ellipse`` baseline (the ellipse inscribed in the box) is scored with every box.

Data layout (``../shared/data``): one folder per set with ``index.csv`` (name, modality, …),
``images/<name>.tif`` and ``labels/<name>.tif``. The validation split is made **by image**, per
modality, with a fixed seed (:data:`SPLIT_SEED`, :data:`VAL_FRACTION`): :func:`split_records`.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .core.bootstrap import CI_LEVEL, CI_SEED, N_RESAMPLES, clustered_mean_ci, pooled_f1, pooled_f1_ci
from .core.errors import UserInputError
from .core.masks import farthest_interior_point, mask_to_box_xyxy
from .core.metrics import check_label_image, instance_scores, mask_iou
from .core.preprocess import PreprocessConfig, normalize_image
from .core.progress import Progress
from .core.seeded import BOX_STAGE_REUSE
from .core.touching import is_crowded, touching_fraction
from .segmentation import EverythingOptions, seeds_mode_job

__all__ = [
    "SPLIT_SEED",
    "VAL_FRACTION",
    "PROMPT_KINDS",
    "ImageRecord",
    "read_index",
    "split_records",
    "source_group",
    "select_records",
    "LOCKED_GROUPS",
    "USIIGACI_BLOCKS",
    "SPLIT_BY",
    "load_raw",
    "load_record",
    "preprocess_config_for",
    "mask_box",
    "correction_click",
    "ellipse_in_box",
    "evaluate_job",
    "format_table",
]

#: Seed of the by-image validation split (recorded in docs/models.md and the model's metadata).
SPLIT_SEED = 20240611
#: Fraction of the images of each modality held out for validation.
VAL_FRACTION = 0.15
#: Prompt kinds of the simulated user.
PROMPT_KINDS = ("point", "box", "box+clicks")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a data set with instance labels.

    Parameters
    ----------
    dataset : str
        Folder name of the set (``"dsb2018-train"``).
    name : str
        Image name (file stem).
    modality : str
        ``"fluorescence"``, ``"histology"``, ``"brightfield"``, ``"phase-contrast"`` …
    image_path, labels_path : pathlib.Path
        TIFF files.
    group : str
        The acquisition (source) the image comes from, as well as the index tells
        (:func:`source_group`); images of one group are kept on one side of ``split_records(...,
        by="source")``. Empty when unknown.
    """

    dataset: str
    name: str
    modality: str
    image_path: Path
    labels_path: Path
    group: str = ""

    @property
    def key(self) -> str:
        """``dataset/name``, unique over sets."""
        return f"{self.dataset}/{self.name}"


def read_index(data_dir: str | Path) -> list[ImageRecord]:
    """Records of a data folder: one set (has ``index.csv``) or a folder of sets.

    Parameters
    ----------
    data_dir : path
        ``../shared/data`` or ``../shared/data/dsb2018-train``.

    Returns
    -------
    list of ImageRecord
        Sorted by ``(dataset, name)``.

    Raises
    ------
    UserInputError
        No ``index.csv`` found.
    """
    root = Path(data_dir).expanduser()
    indexes = [root / "index.csv"] if (root / "index.csv").is_file() else sorted(root.glob("*/index.csv"))
    if not indexes:
        raise UserInputError(f"No data set found in {root}: expected an index.csv there or in its sub-folders.")
    records = []
    for index in indexes:
        records.extend(_index_records(index))
    return sorted(records, key=lambda r: (r.dataset, r.name))


def _index_records(index: Path) -> list[ImageRecord]:
    """The records of one ``index.csv``; :class:`UserInputError` naming the file when it is unusable."""
    folder = index.parent
    try:
        with index.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("name", "modality") if c not in (reader.fieldnames or ())]
            if missing:
                raise UserInputError(
                    f"{index} has no '{missing[0]}' column: its first line must name the columns, "
                    "including 'name' (image file name without .tif) and 'modality'."
                )
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserInputError(f"Cannot read {index}: {err}.") from err
    records = []
    for line, row in enumerate(rows, start=2):
        name, modality = (row.get("name") or "").strip(), (row.get("modality") or "").strip()
        if not name or not modality:
            raise UserInputError(f"{index}, line {line}: the 'name' or 'modality' cell is empty.")
        records.append(ImageRecord(
            dataset=folder.name, name=name, modality=modality,
            image_path=folder / "images" / f"{name}.tif", labels_path=folder / "labels" / f"{name}.tif",
            group=source_group(folder.name, row),
        ))
    return records


#: Usiigaci's sets come in blocks of consecutive names from one experiment: the runs of similar
#: cell size (mean object area about 3,200-4,400 px for the large cells, 1,200-1,800 px for the
#: small ones, measured on the labels) mark where one block ends and the next begins.
USIIGACI_BLOCKS = ((1, 12), (13, 16), (17, 18), (19, 20), (21, 29), (30, 45))
#: Source groups kept out of every choice ("locked" test groups): in neither side of the source
#: split, evaluated only as ``--split test --split-by source``, once, after all choices are made.
LOCKED_GROUPS = (
    "dsb2018-train:fluorescence-603x1272-1ch-uint8",
    "usiigaci-train:set19-20",
)
#: Ways of splitting: by image (the split micro-tiny was trained on) or by source group.
SPLIT_BY = ("image", "source")


def source_group(dataset: str, row: dict) -> str:
    """The acquisition (source) group of one ``index.csv`` row, as ``"dataset:group"``.

    A ``group`` column wins where the index has one. Usiigaci's ``setNN`` images go by the blocks of
    :data:`USIIGACI_BLOCKS`. Otherwise images of one modality with the same height, width, channels and
    dtype are taken to come from one acquisition (DSB 2018's image groups); without those columns
    every image is its own group (the source split is then a split by image).
    """
    get = lambda col: (row.get(col) or "").strip()  # noqa: E731
    if get("group"):
        return f"{dataset}:{get('group')}"
    name = get("name")
    if dataset.startswith("usiigaci") and name.startswith("set") and name[3:].isdigit():
        number = int(name[3:])
        for first, last in USIIGACI_BLOCKS:
            if first <= number <= last:
                return f"{dataset}:set{first:02d}-{last:02d}"
    if get("height") and get("width"):
        return f"{dataset}:{get('modality')}-{get('height')}x{get('width')}-{get('channels') or '?'}ch-{get('dtype') or '?'}"
    return f"{dataset}:{name}"


def split_records(
    records: Sequence[ImageRecord], val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED,
    by: str = "image", locked: Iterable[str] = LOCKED_GROUPS,
) -> dict[str, list[ImageRecord]]:
    """Split per modality: ``{"train": [...], "val": [...], "test": [...]}``.

    ``by="image"`` (micro-tiny's training split): for each modality the records are sorted by key,
    permuted with ``numpy.random.default_rng([seed, i])`` (``i``: the modality's position in sorted
    order) and the first ``max(1, round(val_fraction * n))`` go to validation (none when a modality has
    a single image); ``"test"`` is empty.

    ``by="source"``: whole source groups (:attr:`ImageRecord.group`) go to one side. Images of the
    ``locked`` groups go to ``"test"``. The other groups of a modality are permuted with
    ``default_rng([seed, i, 1])`` and taken in that order into validation while it holds fewer than
    ``max(1, round(val_fraction * n))`` images, skipping a group that would make it more than twice
    that or leave no training image; a modality with a single group keeps it all for training.
    Deterministic for a given index, whatever the order of ``records``.
    """
    if by not in SPLIT_BY:
        raise UserInputError(f"Unknown split '{by}': split by {' or '.join(SPLIT_BY)}.")
    locked = set(locked) if by == "source" else set()
    by_mod: dict[str, list[ImageRecord]] = {}
    for rec in records:
        by_mod.setdefault(rec.modality, []).append(rec)
    out: dict[str, list[ImageRecord]] = {"train": [], "val": [], "test": []}
    for i, modality in enumerate(sorted(by_mod)):
        recs = sorted(by_mod[modality], key=lambda r: r.key)
        out["test"].extend(r for r in recs if r.group in locked)
        recs = [r for r in recs if r.group not in locked]
        val_keys = _val_by_image(recs, val_fraction, [seed, i]) if by == "image" else \
            _val_by_source(recs, val_fraction, [seed, i, 1])
        for rec in recs:
            out["val" if rec.key in val_keys else "train"].append(rec)
    return out


def _val_by_image(recs: list[ImageRecord], val_fraction: float, seed: list) -> set[str]:
    n = len(recs)
    n_val = 0 if n < 2 else max(1, int(round(val_fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    return {recs[j].key for j in order[:n_val].tolist()}


def _val_by_source(recs: list[ImageRecord], val_fraction: float, seed: list) -> set[str]:
    groups: dict[str, list[str]] = {}
    for rec in recs:
        groups.setdefault(rec.group or rec.key, []).append(rec.key)
    if len(groups) < 2:
        return set()
    names = sorted(groups)
    target = max(1, int(round(val_fraction * len(recs))))
    val: set[str] = set()
    for j in np.random.default_rng(seed).permutation(len(names)).tolist():
        if len(val) >= target:
            break
        size = len(groups[names[j]])
        if len(val) + size <= 2 * target and len(val) + size < len(recs):
            val.update(groups[names[j]])
    return val


def select_records(
    data_dir: str | Path,
    split: str = "val",
    limit: int | None = None,
    modalities: Iterable[str] | None = None,
    split_by: str = "image",
) -> list[ImageRecord]:
    """Records of ``split``, at most ``limit`` per modality.

    ``split``: ``"val"``, ``"train"``, ``"all"``, or (with ``split_by="source"``) ``"test"``, the
    locked groups (:data:`LOCKED_GROUPS`). ``split_by``: see :func:`split_records`.
    """
    records = read_index(data_dir)
    if split != "all":
        allowed = ("train", "val", "test") if split_by == "source" else ("train", "val")
        if split not in allowed:
            hint = " (the locked test groups exist only with the split by source)" if split == "test" else ""
            raise UserInputError(f"Unknown split '{split}': use {', '.join(allowed)} or all{hint}.")
        records = split_records(records, by=split_by)[split]
    if modalities is not None:
        wanted = set(modalities)
        records = [r for r in records if r.modality in wanted]
    if limit is not None:
        kept, seen = [], {}
        for rec in records:
            if seen.get(rec.modality, 0) < limit:
                kept.append(rec)
                seen[rec.modality] = seen.get(rec.modality, 0) + 1
        records = kept
    return records


def preprocess_config_for(raw: np.ndarray) -> PreprocessConfig:
    """The config the plugin uses for a raw image: napari marks ``(H, W, 3|4)`` images as RGB."""
    rgb = raw.ndim == 3 and raw.shape[-1] in (3, 4)
    return PreprocessConfig(rgb=rgb)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    if not path.is_file():
        raise UserInputError(f"The file {path} does not exist.")
    try:
        return np.asarray(tifffile.imread(path))
    except MemoryError:
        raise
    except Exception as err:  # a damaged file raises many types (TiffFileError, struct, zlib …)
        raise UserInputError(f"Cannot read {path}: the file is damaged or not a TIFF ({type(err).__name__}: {err}).") from err


def load_raw(record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
    """``(raw image (H, W) or (H, W, 3|4), labels (H, W) int32)`` as stored (channels last).

    Raises
    ------
    UserInputError
        A file is missing or damaged, the labels are not whole non-negative numbers (truncating
        fractional values would silently change the objects), or image and labels differ in
        height and width; the message names the file.
    """
    raw = _read_tiff(record.image_path)
    labels = check_label_image(_read_tiff(record.labels_path), str(record.labels_path))
    if raw.ndim == 3 and raw.shape[0] in (3, 4) and raw.shape[-1] not in (3, 4):
        raw = np.moveaxis(raw, 0, -1)
    if labels.ndim != 2:
        raise UserInputError(
            f"{record.labels_path} has shape {labels.shape}: the evaluation works on single 2D images "
            "(z or t stacks are not supported)."
        )
    if raw.shape[:2] != labels.shape:
        raise UserInputError(
            f"{record.labels_path} (shape {labels.shape}) does not match its image {record.image_path} "
            f"(shape {raw.shape}): the labels must be one 2D plane of the image's height and width."
        )
    if labels.size and int(labels.max()) > np.iinfo(np.int32).max:
        raise UserInputError(f"{record.labels_path} has label ids above {np.iinfo(np.int32).max}.")
    return raw, labels.astype(np.int32, copy=False)


def load_record(record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
    """``(image (H, W, 3) float32 in [0, 1], labels (H, W) int32)``: normalised as the plugin does."""
    raw, labels = load_raw(record)
    return normalize_image(raw, preprocess_config_for(raw)), labels


# -- simulated user ------------------------------------------------------------------------------


def mask_box(mask: np.ndarray) -> np.ndarray:
    """``(4,)`` float32 ``(x0, y0, x1, y1)`` = ``(min col, min row, max col, max row)`` of a mask."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("empty mask has no box")
    return mask_to_box_xyxy(mask).astype(np.float32)


def correction_click(pred: np.ndarray, gt: np.ndarray) -> tuple[tuple[int, int], int] | None:
    """The next corrective click: ``((row, col), label)`` or None when ``pred == gt``.

    The click goes to the error pixel farthest from the border of its error region (missed
    pixels ``gt & ~pred`` → label 1, extra pixels ``pred & ~gt`` → label 0), whichever of the
    two regions reaches deeper.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    best = None
    for region, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        if not region.any():
            continue
        row, col, depth = farthest_interior_point(region)
        if best is None or depth > best[0]:
            best = (depth, (row, col), label)
    if best is None:
        return None
    return best[1], best[2]


def ellipse_in_box(box_xyxy: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the ellipse inscribed in a box (the box-prompt baseline)."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    ry, rx = max((y1 - y0 + 1) / 2.0, 0.5), max((x1 - x0 + 1) / 2.0, 0.5)
    rr, cc = np.ogrid[: image_hw[0], : image_hw[1]]
    return ((rr - cy) / ry) ** 2 + ((cc - cx) / rx) ** 2 <= 1.0


# -- inference: the plugin's own path ------------------------------------------------------------


def _new_cache():
    from .core.cache import EmbeddingCache

    return EmbeddingCache(max_bytes=512 << 20)


class _PluginUser:
    """Prompts one image through :class:`napari_sam_micro.session.AnnotationSession` (the plugin's path).

    Embeddings (whole plane or prompt windows) are computed on demand and cached for the image.
    """

    def __init__(self, model, spec, raw: np.ndarray, config: PreprocessConfig, cache=None,
                 model_id: str | None = None):
        from .session import AnnotationSession

        self.session = AnnotationSession(
            model, cache if cache is not None else _new_cache(), config, model_id=model_id,
            **AnnotationSession.options_for(spec),
        )
        self.session.set_image(raw, config)

    def predict(self, points_xy=None, labels=None, box=None, fresh: bool = True) -> np.ndarray:
        """Mask ``(H, W)`` bool of one object; ``fresh=False`` refines the previous prediction."""
        from .core.progress import drain
        from .core.prompts import Prompts

        if fresh:
            self.session.clear_preview()
        prompts = Prompts(
            points_xy=np.zeros((0, 2), np.float32) if points_xy is None else np.asarray(points_xy, np.float32),
            point_labels=np.zeros(0, np.int32) if labels is None else np.asarray(labels, np.int32),
            boxes_xyxy=np.zeros((0, 4), np.float32) if box is None else np.asarray(box, np.float32)[None],
        )
        return drain(self.session.predict_job(prompts)).objects[0].mask


# -- the evaluation job ---------------------------------------------------------------------------


def _objects(labels: np.ndarray, min_area: int) -> list[tuple[int, tuple[slice, slice]]]:
    found = ndi.find_objects(labels)
    out = []
    for i, sl in enumerate(found, start=1):
        if sl is None:
            continue
        if np.count_nonzero(labels[sl] == i) >= min_area:
            out.append((i, sl))
    return out


def evaluate_job(
    model_name: str,
    data_dir: str | Path,
    prompt_kinds: Sequence[str] = PROMPT_KINDS,
    n_clicks: int = 3,
    everything: bool = True,
    subset: Sequence[ImageRecord] | None = None,
    split: str = "val",
    limit: int | None = None,
    max_objects: int | None = None,
    baselines: Sequence[str] = ("litemedsam", "ellipse"),
    min_area: int = 10,
    device: str | None = None,
    seed: int = 0,
    amg_params=None,
    everything_images: int | None = None,
    modalities: Sequence[str] | None = None,
    checkpoint: str | Path | None = None,
    on_image: Callable[[dict], None] | None = None,
    split_by: str = "image",
    split_touching: bool = False,
    fewer_windows: bool = BOX_STAGE_REUSE,
) -> Generator[Progress, None, dict]:
    """Evaluate ``model_name`` (and baselines) with a simulated user; a job.

    Parameters
    ----------
    model_name : str
        Registry name of the model under test.
    data_dir : path
        Folder of data sets (or one set), see :func:`read_index`.
    prompt_kinds : sequence of str
        Subset of :data:`PROMPT_KINDS`.
    n_clicks : int
        Corrective clicks after the box (``box+clicks``).
    everything : bool
        Also score automatic segmentation (F1 at IoU 0.5 per modality).
    subset : sequence of ImageRecord, optional
        Images to evaluate; default ``select_records(data_dir, split, limit)``.
    split, limit : str, int
        Used when ``subset`` is None (``limit`` images per modality).
    max_objects : int, optional
        At most this many objects per image (a fixed random sample, ``seed``), for quick runs.
    baselines : sequence of str
        Other registry models to score the same way, and ``"ellipse"`` (boxes only).
    min_area : int
        Objects smaller than this many pixels are skipped (annotation specks).
    device : str, optional
        Torch device for the models.
    seed : int
        Seed of the object sample (``max_objects``).
    amg_params : napari_sam_micro.core.automatic.AmgParams, optional
        Parameters of the grid everything mode (default ``AmgParams()``, SAM's defaults); models whose
        spec has ``seeded_everything`` (micro-tiny) are run in seeds mode, as the plugin runs them.
    everything_images : int, optional
        Run the everything mode on at most this many images per modality (it is slow on a CPU).
    modalities : sequence of str, optional
        Only these modalities (when ``subset`` is None).
    checkpoint : path, optional
        Weights of the model under test other than its default ones (a user's own fine-tune, e.g.
        a ``scripts/train_micro.py`` output for ``micro-tiny``); its embeddings are then never
        shared with a baseline's.
    on_image : callable, optional
        Called after every image with the result so far (same keys as the return value,
        ``"complete": False``), e.g. to save partial results as the run goes.
    split_by : str
        ``"image"`` (default, micro-tiny's training split) or ``"source"`` (whole acquisition groups
        held out; ``split="test"`` then gives the locked groups), see :func:`split_records`.
    split_touching : bool
        Seeds mode: run the everything mode with
        :attr:`napari_sam_micro.segmentation.EverythingOptions.split_touching`.
    fewer_windows : bool
        Seeds mode: run the everything mode with
        :attr:`napari_sam_micro.segmentation.EverythingOptions.fewer_windows`.

    Yields
    ------
    Progress
        One unit per (model, image).

    Returns
    -------
    dict
        ``{"models": [...], "split": ..., "images": [...keys], "n_objects": {modality: n},
        "iou": {model: {kind: {modality: mean IoU}}}, "f1": {model: {modality: F1@0.5}},
        "per_object": [...rows], "skipped": [{"image": key, "error": message}], "complete": True}``.
        An image that cannot be evaluated (damaged file, labels that are not whole numbers, image
        and labels of different sizes …) is skipped and listed in ``"skipped"``; the run goes on.
    """
    records = _records_to_evaluate(data_dir, prompt_kinds, subset, split, limit, modalities, split_by)
    model_names = [model_name] + [b for b in baselines if b != "ellipse" and b != model_name]
    total = len(records) * len(model_names)
    specs, models, embedding_ids = yield from _load_models(model_names, device, checkpoint, total)
    settings = {"prompt_kinds": list(prompt_kinds), "n_clicks": n_clicks, "max_objects": max_objects,
                "checkpoint": None if checkpoint is None else str(checkpoint),
                "min_area": min_area, "seed": seed, "everything_images": everything_images,
                "limit": limit, "split": split, "split_by": split_by, "split_touching": split_touching,
                "fewer_windows": fewer_windows}
    run = _Run(model_names, specs, models, embedding_ids, "ellipse" in baselines, tuple(prompt_kinds), n_clicks,
               min_area, max_objects, seed, everything, everything_images, amg_params,
               EverythingOptions(split_touching=split_touching, fewer_windows=fewer_windows))
    results = _Results(split, settings)
    done = 0
    for rec in records:
        yield from _evaluate_record(run, rec, results, (done, total))
        done += len(model_names)
        if on_image is not None:
            on_image(results.result(run, complete=False))
    yield Progress(total, total, "done")
    return results.result(run, complete=True)


def _records_to_evaluate(data_dir, prompt_kinds, subset, split, limit, modalities, split_by) -> list[ImageRecord]:
    """The images of an :func:`evaluate_job` run; :class:`UserInputError` for an unknown prompt kind or no image."""
    for kind in prompt_kinds:
        if kind not in PROMPT_KINDS:
            raise UserInputError(f"Unknown prompt kind '{kind}': use {', '.join(PROMPT_KINDS)}.")
    records = list(subset) if subset is not None else select_records(
        data_dir, split=split, limit=limit, modalities=modalities, split_by=split_by
    )
    if not records:
        raise UserInputError(f"No images to evaluate in {data_dir} (split '{split}').")
    return records


def _load_models(model_names: list, device, checkpoint, total: int):
    """Load the models (the first from ``checkpoint`` if given); a job returning ``(specs, models, embedding_ids)``."""
    from .models.registry import get_spec, load_model

    model_name = model_names[0]
    specs = {name: get_spec(name) for name in model_names}
    models = {}
    embedding_ids = {name: specs[name].embedding_id for name in model_names}
    if checkpoint is not None:
        embedding_ids[model_name] = f"{model_name}|{Path(checkpoint).expanduser().resolve()}"
    for name in model_names:
        yield Progress(0, total, f"loading {name}")
        models[name] = load_model(name, device=device, checkpoint=checkpoint if name == model_name else None)
    return specs, models, embedding_ids


@dataclass(frozen=True)
class _Run:
    """What every image of one :func:`evaluate_job` run is scored with."""

    model_names: list
    specs: dict
    models: dict
    embedding_ids: dict
    with_ellipse: bool
    prompt_kinds: tuple
    n_clicks: int
    min_area: int
    max_objects: int | None
    seed: int
    everything: bool
    everything_images: int | None
    amg_params: object
    #: Seeds mode's settings (the defaults but for ``split_touching`` and ``fewer_windows``).
    seed_options: EverythingOptions = field(default_factory=EverythingOptions)


@dataclass
class _Results:
    """What one :func:`evaluate_job` run has scored so far."""

    split: str
    settings: dict
    rows: list = field(default_factory=list)
    f1_rows: list = field(default_factory=list)
    n_objects: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    evaluated: list = field(default_factory=list)
    amg_done: dict = field(default_factory=dict)  # images run in everything mode, by (model, modality)

    def add(self, rec: ImageRecord, rows: list, f1_rows: list, n_objects: int) -> None:
        """Record one image evaluated to the end."""
        self.rows.extend(rows)
        self.f1_rows.extend(f1_rows)
        self.n_objects[rec.modality] = self.n_objects.get(rec.modality, 0) + n_objects
        self.evaluated.append(rec)

    def result(self, run: _Run, complete: bool) -> dict:
        """The result so far, with the keys of :func:`evaluate_job`'s return value."""
        result = _summarise(run.model_names, run.with_ellipse, self.evaluated, self.rows, self.f1_rows, self.split)
        result.update(n_objects=dict(self.n_objects), settings=self.settings, skipped=list(self.skipped),
                      complete=complete)
        return result


def _evaluate_record(run: _Run, rec: ImageRecord, results: _Results, progress: tuple[int, int]):
    """Score one image into ``results``; a job. An image that cannot be evaluated is reported and skipped."""
    done, total = progress
    try:
        image_rows, image_f1, n_image_objects = yield from _evaluate_image(run, rec, results.amg_done, progress)
    except UserInputError as err:  # a bad image is reported and skipped, the run goes on
        results.skipped.append({"image": rec.key, "error": str(err)})
        yield Progress(done, total, f"skipped {rec.key}: {err}")
    else:
        results.add(rec, image_rows, image_f1, n_image_objects)


def _evaluate_image(run: _Run, rec: ImageRecord, amg_done: dict, progress: tuple[int, int]):
    """Score every model on one image; a job returning ``(rows, everything rows, number of objects)``.

    Raises :class:`UserInputError` for an image that cannot be evaluated (files, labels, shape).
    """
    done, total = progress
    raw, labels = load_raw(rec)
    config = preprocess_config_for(raw)
    objects = _objects(labels, run.min_area)
    if run.max_objects is not None and len(objects) > run.max_objects:
        rng = np.random.default_rng([run.seed, zlib.crc32(rec.key.encode())])
        objects = [objects[i] for i in sorted(rng.choice(len(objects), run.max_objects, replace=False).tolist())]
    rows: list[dict] = []
    f1_rows: list[dict] = []
    if run.with_ellipse and any(k.startswith("box") for k in run.prompt_kinds):
        for oid, _sl in objects:
            gt = labels == oid
            rows.append(_row("ellipse", rec, oid, "box", mask_iou(ellipse_in_box(mask_box(gt), labels.shape), gt)))
    # models with the same image encoder and input path share embeddings (bit-identical)
    cache = _new_cache()
    counted = []
    for k, name in enumerate(run.model_names):
        yield Progress(done + k, total, f"{name}: {rec.key}")
        spec, model = run.specs[name], run.models[name]
        user = _PluginUser(model, spec, raw, config, cache, run.embedding_ids[name])
        rows.extend(_score_objects(user, name, rec, labels, objects, run.prompt_kinds, run.n_clicks))
        count = amg_done.get((name, rec.modality), 0)
        if run.everything and (run.everything_images is None or count < run.everything_images):
            counted.append((name, rec.modality))
            image = normalize_image(raw, config)
            f1_rows.append(_everything_row(user, spec, name, rec, image, labels, run.amg_params, run.seed_options))
    for key in counted:  # only an image evaluated to the end counts towards everything_images
        amg_done[key] = amg_done.get(key, 0) + 1
    return rows, f1_rows, len(objects)


def _row(model: str, rec: ImageRecord, oid: int, kind: str, iou: float, clicks: int = 0) -> dict:
    return {
        "model": model,
        "image": rec.key,
        "modality": rec.modality,
        "object": int(oid),
        "kind": kind,
        "iou": float(iou),
        "clicks": int(clicks),
    }


def _score_objects(user: _PluginUser, name, rec, labels, objects, kinds, n_clicks) -> list[dict]:
    rows = []
    for oid, _sl in objects:
        gt = labels == oid
        if "point" in kinds:
            r, c, _ = farthest_interior_point(gt)
            mask = user.predict(points_xy=[[c, r]], labels=[1])
            rows.append(_row(name, rec, oid, "point", mask_iou(mask, gt)))
        if "box" in kinds or "box+clicks" in kinds:
            box = mask_box(gt)
            mask = user.predict(box=box)
            iou = mask_iou(mask, gt)
            if "box" in kinds:
                rows.append(_row(name, rec, oid, "box", iou))
            if "box+clicks" in kinds:
                pts, lbls = [], []
                for _ in range(n_clicks):
                    click = correction_click(mask, gt)
                    if click is None:
                        break
                    (cr, cc), lab = click
                    pts.append([cc, cr])
                    lbls.append(lab)
                    mask = user.predict(points_xy=pts, labels=lbls, box=box, fresh=False)
                    iou = mask_iou(mask, gt)
                rows.append(_row(name, rec, oid, "box+clicks", iou, len(pts)))
    return rows


def _everything_row(user: _PluginUser, spec, name, rec, image, labels, params, seed_options: EverythingOptions) -> dict:
    """F1 of the everything mode the plugin runs for this model (seeds or SAM's grid)."""
    from .core.automatic import automatic_segmentation
    from .core.progress import drain

    if spec.seeded_everything:
        pred = drain(seeds_mode_job(user.session, image, seed_options)).labels
    else:
        pred = drain(automatic_segmentation(user.session.model, image, params)).to_label_image(labels.shape)
    scores = instance_scores(labels, pred)
    return {"model": name, "image": rec.key, "modality": rec.modality, "tp": scores["tp"], "fp": scores["fp"],
            "fn": scores["fn"], "f1": scores["f1"], "recall": scores["recall"],
            "touching": touching_fraction(labels), "crowded": is_crowded(labels)}


def _summarise(model_names, with_ellipse, records, rows, f1_rows, split) -> dict:
    """Means, pooled F1 and their bootstrap intervals (images resampled, :mod:`core.bootstrap`)."""
    names = list(model_names) + (["ellipse"] if with_ellipse else [])
    iou: dict = {}
    iou_ci: dict = {}
    for name in names:
        per_kind: dict = {}
        for row in rows:
            if row["model"] == name:
                per_kind.setdefault(row["kind"], {}).setdefault(row["modality"], []).append(row)
        iou[name], iou_ci[name] = {}, {}
        for kind, by_mod in per_kind.items():
            by_mod = dict(sorted(by_mod.items()))
            by_mod["all"] = [r for v in by_mod.values() for r in v]
            iou[name][kind] = {m: float(np.mean([r["iou"] for r in v])) for m, v in by_mod.items()}
            iou_ci[name][kind] = {m: list(clustered_mean_ci([r["iou"] for r in v], [r["image"] for r in v]))
                                  for m, v in by_mod.items()}
    f1: dict = {}
    f1_ci: dict = {}
    for name in model_names:
        per_mod: dict = {}
        for row in f1_rows:
            if row["model"] == name:
                per_mod.setdefault(row["modality"], []).append((row["tp"], row["fp"], row["fn"]))
        if per_mod:
            per_mod = dict(sorted(per_mod.items()))
            f1[name] = {m: pooled_f1(*np.sum(v, axis=0)) for m, v in per_mod.items()}
            f1_ci[name] = {m: list(pooled_f1_ci(v)) for m, v in per_mod.items()}
    return {
        "crowded": _crowded_summary(model_names, f1_rows),
        "models": names,
        "split": split,
        "images": [r.key for r in records],
        "iou": iou,
        "f1": f1,
        "ci": {"iou": iou_ci, "f1": f1_ci, "level": CI_LEVEL, "n_resamples": N_RESAMPLES, "seed": CI_SEED,
               "unit": "image (objects clustered by image; F1 pooled over the resampled images)"},
        "per_object": rows,
        "everything": f1_rows,
    }


def _crowded_summary(model_names, f1_rows) -> dict:
    """Everything mode on crowded images (:func:`~napari_sam_micro.core.touching.is_crowded`) and the others.

    ``{model: {"crowded" | "other": {"images", "tp", "fp", "fn", "recall", "f1", "f1_ci"}}}``, pooled.
    """
    out: dict = {}
    for name in model_names:
        for group in ("crowded", "other"):
            sel = [(r["tp"], r["fp"], r["fn"]) for r in f1_rows
                   if r["model"] == name and bool(r.get("crowded")) == (group == "crowded")]
            if not sel:
                continue
            tp, fp, fn = (int(v) for v in np.sum(sel, axis=0))
            out.setdefault(name, {})[group] = {
                "images": len(sel), "tp": tp, "fp": fp, "fn": fn, "recall": tp / (tp + fn) if tp + fn else 1.0,
                "f1": pooled_f1(tp, fp, fn), "f1_ci": list(pooled_f1_ci(sel)),
            }
    return out


def _cell(value: float | None, interval, width: int) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if interval is None or any(v is None or not np.isfinite(v) for v in interval):
        return f"{value:>{width}.3f}"
    return f"{f'{value:.3f} [{interval[0]:.2f}-{interval[1]:.2f}]':>{width}}"


def format_table(result: dict) -> str:
    """Plain-text table of a result of :func:`evaluate_job`: one row per model and prompt kind.

    Each cell: the score and, in brackets, its bootstrap interval (``result["ci"]``; none with a
    single image).
    """
    modalities = sorted({m for d in result["iou"].values() for k in d.values() for m in k if m != "all"}
                        | {m for d in result.get("f1", {}).values() for m in d})
    cols = modalities + ["all"]
    ci = result.get("ci", {})
    level = ci.get("level", CI_LEVEL)
    width = max([22] + [len(c) + 2 for c in cols])
    lines = [f"{'model':<14}{'prompt':<12}" + "".join(f"{c:>{width}}" for c in cols)]
    lines.append("-" * len(lines[0]))
    for name in result["models"]:
        for kind, per_mod in result["iou"].get(name, {}).items():
            kind_ci = ci.get("iou", {}).get(name, {}).get(kind, {})
            lines.append(f"{name:<14}{kind:<12}" + "".join(_cell(per_mod.get(c), kind_ci.get(c), width) for c in cols))
        if name in result.get("f1", {}):
            per_mod, mod_ci = result["f1"][name], ci.get("f1", {}).get(name, {})
            lines.append(f"{name:<14}{'F1@0.5':<12}" + "".join(_cell(per_mod.get(c), mod_ci.get(c), width) for c in cols))
    for name, groups in result.get("crowded", {}).items():
        for group, g in groups.items():
            cell = _cell(g["f1"], g["f1_ci"], 0).strip()
            lines.append(f"{name:<14}everything on {g['images']} {group} image(s): F1@0.5 {cell}, recall {g['recall']:.3f}")
    counts = ", ".join(f"{m}: {n}" for m, n in sorted(result.get("n_objects", {}).items()))
    lines.append(f"mean IoU per object (F1: automatic segmentation, pooled); [{level:.0%} bootstrap interval, "
                 f"images resampled]; objects: {counts}")
    return "\n".join(lines)
