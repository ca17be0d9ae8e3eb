"""Fine-tuning LiteMedSAM for microscopy ("micro-tiny"): decoder, prompt encoder, image encoder's tail.

Pipeline
--------
1. :func:`precompute_crops_job`: for sampled objects of the training images, cut the window the
   plugin encodes for that prompt (:func:`napari_sam_micro.core.preprocess.prompt_window` around
   the object's box, or around its interior point), from the image normalised exactly as the plugin
   does, with augmentation (flip, rot90, intensity jitter, window-scale and centre jitter), and
   encode it with the frozen LiteMedSAM image encoder through
   :func:`~napari_sam_micro.models.litemedsam.preprocess_litemedsam` (the adapter's own input
   path). Stored: embeddings ``(N, 256, 64, 64)`` float16, the encoder inputs
   ``(N, 256, 256, 3)`` float16 (for full fine-tuning), label crops in the model frame
   ``(N, 256, 256)`` int32 and the id of the prompted object.
   :func:`encoder_tail_tokens_job` adds the input of the image encoder's last stage
   (``(N, 4096, 320)`` float16), so that the last stage and the neck can be trained on a CPU.
2. :func:`train_job`: AdamW on the prompt encoder and mask decoder (``TrainConfig.train_encoder``
   also trains the image encoder from the stored inputs, meant for a GPU;
   ``TrainConfig.train_encoder_tail`` trains its last stage + neck from the cached tokens). Each sample is
   prompted with a box (jittered) or a point (the interior point or a random interior pixel),
   then one or more corrective clicks sampled in the error region of the previous prediction,
   with the previous low-res logits fed back as ``mask_input``. Loss: BCE + Dice on the
   ``256 x 256`` low-res logits (single-mask token, plus the best of the three multimask tokens),
   and MSE of the IoU head against the real IoU of every token's mask.
3. :func:`export_weights`: the trained parts' state dict as float16 ``.npz`` (loaded on top of
   the bundled LiteMedSAM by :mod:`napari_sam_micro.models.micro`).

Full fine-tuning (a GPU) does without stored crops: :func:`pack_image_bank` stores the normalised
training images once (``uint8`` lossless WebP, small enough to carry to a GPU machine),
:class:`CropStream` draws fresh augmented crops from them at every step in background processes
(:func:`stream_crops`), and :func:`train_job` trains the whole network on them
(``TrainConfig.train_encoder``, bfloat16 autocast, a time budget).

The split of images into train / validation is made by the caller
(:func:`napari_sam_micro.evaluation.split_records`); nothing here sees validation images.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..core.errors import ModelUnavailableError
from ..core.masks import border_distance, farthest_interior_point, mask_to_box_xyxy
from ..core.preprocess import prompt_window
from ..core.progress import Progress

__all__ = [
    "CropConfig",
    "TrainConfig",
    "CropSet",
    "sample_crop",
    "precompute_crops_job",
    "encoder_tail_tokens_job",
    "encoder_head",
    "encoder_tail",
    "load_crop_set",
    "concat_crop_sets",
    "ImageBank",
    "pack_image_bank",
    "load_image_bank",
    "stream_crops",
    "CropStream",
    "train_job",
    "trainable_state",
    "export_weights",
    "load_exported",
    "encoder_tail_parts",
    "DECODER_PARTS",
    "ENCODER_HEAD_PARTS",
    "ENCODER_TAIL_PARTS",
    "dice_loss",
]

MODEL_SIDE = 256


@dataclass
class CropConfig:
    """How training crops are sampled.

    Parameters
    ----------
    crops_per_modality : dict
        Number of crops per modality (a crop = one encoder pass).
    point_window_fraction : float
        Fraction of crops cut with the window of a single point prompt (the object's interior
        point) instead of its box.
    scale_range : (float, float)
        Window side / longer box side, uniform (the plugin uses 2.0).
    center_jitter : float
        Window centre shift, uniform in ``± center_jitter × box side``.
    gamma_range, gain_range, offset_range : (float, float)
        Intensity jitter of the normalised crop: ``clip(gain * x ** gamma + offset, 0, 1)``.
    min_area : int
        Smallest object (pixels) used as a crop centre.
    seed : int
    """

    crops_per_modality: dict = field(
        default_factory=lambda: {"fluorescence": 110, "histology": 90, "brightfield": 50, "phase-contrast": 110}
    )
    point_window_fraction: float = 0.25
    scale_range: tuple[float, float] = (1.6, 2.6)
    center_jitter: float = 0.15
    gamma_range: tuple[float, float] = (0.7, 1.4)
    gain_range: tuple[float, float] = (0.8, 1.15)
    offset_range: tuple[float, float] = (-0.05, 0.05)
    min_area: int = 15
    seed: int = 0


@dataclass
class TrainConfig:
    """Optimisation settings of :func:`train_job`.

    ``train_encoder`` trains the whole image encoder from the stored inputs or a
    :class:`CropStream` (for a GPU); ``train_encoder_tail`` its last stage + neck from cached
    tokens (:func:`encoder_tail_tokens_job`); either at ``encoder_lr_scale`` x ``lr``. With
    ``time_budget_s`` training ends at ``steps`` or when the time is spent, whichever comes first,
    and the warm-up + cosine schedule runs over that fraction.
    """

    steps: int = 300
    batch_size: int = 4
    lr: float = 8e-5
    weight_decay: float = 0.01
    warmup: int = 15
    n_clicks: int = 1
    box_fraction: float = 0.5
    box_point_fraction: float = 0.0
    loose_box_jitter: float = 0.15
    loose_box_pad: float = 0.1
    center_object_fraction: float = 0.6
    box_jitter: float = 0.08
    iou_loss_weight: float = 1.0
    multimask_loss_weight: float = 0.5
    train_encoder: bool = False
    train_encoder_tail: bool = False
    encoder_lr_scale: float = 0.5
    device: str = "cpu"
    seed: int = 0
    log_every: int = 10
    #: Stop after this many seconds (the learning-rate schedule follows elapsed time) when set.
    time_budget_s: float | None = None
    #: Keep the image encoder's batch-norm statistics fixed when it is trained.
    freeze_batchnorm: bool = True
    #: bfloat16 autocast for the network's forward pass (CUDA only).
    autocast: bool = False


# -- crops -------------------------------------------------------------------------------------


def _objects(labels: np.ndarray, min_area: int) -> list[tuple[int, np.ndarray]]:
    out = []
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        m = labels[sl] == i
        if m.sum() >= min_area:
            rows = np.flatnonzero(m.any(1)) + sl[0].start
            cols = np.flatnonzero(m.any(0)) + sl[1].start
            out.append((i, np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float64)))
    return out


def _jitter_window(box, image_hw, rng, cfg: CropConfig, point=None):
    """The window the plugin would use (``prompt_window``) with scale / centre jitter."""
    if point is not None:
        return prompt_window(np.asarray([point], np.float64), image_hw)
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    scale = rng.uniform(*cfg.scale_range)
    shift = rng.uniform(-cfg.center_jitter, cfg.center_jitter, 2) * side
    jittered = np.array([x0 + shift[0], y0 + shift[1], x1 + shift[0], y1 + shift[1]])
    return prompt_window(jittered, image_hw, scale=scale)


def sample_crop(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, cfg: CropConfig, objects=None):
    """One augmented training crop of a normalised image, or None when it has no usable object.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W, 3)`` or ``(H, W)`` float in ``[0, 1]`` (the plugin's normalisation), or the same
        as ``uint8`` (``x 255``, as stored by :func:`pack_image_bank`).
    labels : np.ndarray
        ``(H, W)`` instance labels.
    objects : list, optional
        ``_objects(labels, cfg.min_area)`` when the caller caches it.

    Returns
    -------
    dict
        ``crop`` (h, w, 3) float32 (what the adapter would encode), ``labels`` (h, w) int32,
        ``center`` id of the prompted object, ``window`` (y0, y1, x0, x1), ``point_window`` bool.
    """
    if objects is None:
        objects = _objects(labels, cfg.min_area)
    if not objects:
        return None
    oid, box = objects[int(rng.integers(len(objects)))]
    point_window = bool(rng.random() < cfg.point_window_fraction)
    point = None
    if point_window:
        r, c, _ = farthest_interior_point(labels == oid)
        point = (float(c), float(r))
    y0, y1, x0, x1 = _jitter_window(box, labels.shape, rng, cfg, point)
    crop = image[y0:y1, x0:x1].astype(np.float32, copy=True)
    if image.dtype == np.uint8:
        crop /= 255.0
    if crop.ndim == 2:
        crop = np.repeat(crop[..., None], 3, axis=2)
    lab = labels[y0:y1, x0:x1].astype(np.int32, copy=True)
    # geometric augmentation
    k = int(rng.integers(4))
    crop, lab = np.rot90(crop, k), np.rot90(lab, k)
    if rng.random() < 0.5:
        crop, lab = crop[:, ::-1], lab[:, ::-1]
    # intensity augmentation
    gamma = rng.uniform(*cfg.gamma_range)
    gain = rng.uniform(*cfg.gain_range)
    offset = rng.uniform(*cfg.offset_range)
    crop = np.clip(gain * np.power(np.clip(crop, 0, 1), gamma) + offset, 0.0, 1.0).astype(np.float32)
    return {
        "crop": np.ascontiguousarray(crop),
        "labels": np.ascontiguousarray(lab),
        "center": int(oid),
        "window": (int(y0), int(y1), int(x0), int(x1)),
        "point_window": point_window,
    }


def _labels_to_model_frame(lab: np.ndarray) -> np.ndarray:
    """Labels of a crop resized (nearest) to LiteMedSAM's resized-and-padded 256 frame."""
    from .sam_family import resize_longest_side_shape

    h, w = lab.shape
    nh, nw = resize_longest_side_shape(h, w, MODEL_SIDE)
    rows = np.minimum(((np.arange(nh) + 0.5) * h / nh).astype(int), h - 1)
    cols = np.minimum(((np.arange(nw) + 0.5) * w / nw).astype(int), w - 1)
    out = np.zeros((MODEL_SIDE, MODEL_SIDE), np.int32)
    out[:nh, :nw] = lab[rows][:, cols]
    return out


def precompute_crops_job(
    records: Sequence[tuple[str, str, np.ndarray, np.ndarray]] | Sequence,
    out_dir: str | Path,
    cfg: CropConfig | None = None,
    net=None,
    device: str = "cpu",
    load=None,
) -> Generator[Progress, None, Path]:
    """Sample, augment and encode training crops; a job returning ``out_dir``.

    Parameters
    ----------
    records : sequence
        Training images; each has ``.modality`` (any object accepted by ``load``).
    out_dir : path
        Written: ``embeddings.npy`` (N, 256, 64, 64) float16, ``inputs.npy`` (N, 256, 256, 3)
        float16, ``labels.npy`` (N, 256, 256) int32, ``meta.json``.
    cfg : CropConfig
    net : MedSAMLite, optional
        Network whose ``image_encoder`` is used (default: bundled LiteMedSAM).
    load : callable
        ``load(record) -> (image (H, W, 3) float32, labels (H, W) int)``, the plugin's
        normalisation (:func:`napari_sam_micro.evaluation.load_record`).
    """
    from .litemedsam import build_litemedsam, preprocess_litemedsam

    cfg = cfg or CropConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if net is None:
        net = build_litemedsam(device=device).net
    net.eval()
    rng = np.random.default_rng(cfg.seed)
    by_mod: dict[str, list] = {}
    for rec in records:
        by_mod.setdefault(rec.modality, []).append(rec)
    plan = []
    for modality in sorted(by_mod):
        n = int(cfg.crops_per_modality.get(modality, 0))
        recs = by_mod[modality]
        plan.extend((modality, recs[int(i)]) for i in rng.integers(len(recs), size=n))
    total = len(plan)
    emb = np.lib.format.open_memmap(out / "embeddings.npy", mode="w+", dtype=np.float16, shape=(total, 256, 64, 64))
    inputs = np.lib.format.open_memmap(out / "inputs.npy", mode="w+", dtype=np.float16, shape=(total, 256, 256, 3))
    labels_out = np.lib.format.open_memmap(out / "labels.npy", mode="w+", dtype=np.int32, shape=(total, 256, 256))
    meta = {"config": asdict(cfg), "items": []}
    cache: dict = {}
    t0 = time.time()
    for i, (modality, rec) in enumerate(plan):
        key = getattr(rec, "key", id(rec))
        if key not in cache:
            cache.clear()
            cache[key] = load(rec)
        image, labels = cache[key]
        sample = None
        while sample is None:
            sample = sample_crop(image, labels, rng, cfg)
            if sample is None:
                image, labels = load(by_mod[modality][int(rng.integers(len(by_mod[modality])))])
        tensor, _ = preprocess_litemedsam(sample["crop"], MODEL_SIDE, device)
        with torch.inference_mode():
            features = net.image_encoder(tensor)
        emb[i] = features[0].float().cpu().numpy().astype(np.float16)
        inputs[i] = tensor[0].permute(1, 2, 0).cpu().numpy().astype(np.float16)
        labels_out[i] = _labels_to_model_frame(sample["labels"])
        meta["items"].append(
            {"image": str(key), "modality": modality, "center": sample["center"], "window": sample["window"],
             "point_window": sample["point_window"], "crop_hw": list(sample["crop"].shape[:2])}
        )
        if (i + 1) % 10 == 0 or i + 1 == total:
            emb.flush()
            inputs.flush()
            labels_out.flush()
            meta["done"] = i + 1
            (out / "meta.json").write_text(json.dumps(meta))
        rate = (time.time() - t0) / (i + 1)
        yield Progress(i + 1, total, f"encoded {i + 1}/{total} crops ({rate:.1f} s/crop)")
    meta["done"] = total
    (out / "meta.json").write_text(json.dumps(meta))
    return out


@dataclass
class CropSet:
    """Precomputed crops (memory-mapped)."""

    embeddings: np.ndarray
    inputs: np.ndarray
    labels: np.ndarray
    centers: np.ndarray
    modalities: list
    #: Input of the image encoder's last stage, ``(N, 4096, 320)`` float16, when cached.
    tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.centers.shape[0])

    def draw(self, rng, batch_size: int) -> CropBatch:
        """``batch_size`` stored crops drawn uniformly with replacement."""
        idx = rng.integers(len(self), size=batch_size)

        def take(what, positions):
            return np.asarray(getattr(self, what)[idx[np.asarray(positions)]], np.float32)

        return CropBatch([np.asarray(self.labels[i]) for i in idx], [int(self.centers[i]) for i in idx], take)


def load_crop_set(path: str | Path) -> CropSet:
    """Open a folder written by :func:`precompute_crops_job` (only the crops finished so far)."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    n = int(meta.get("done", len(meta["items"])))
    items = meta["items"][:n]
    tokens = None
    if (path / TOKENS_FILE).is_file():
        tokens = np.load(path / TOKENS_FILE, mmap_mode="r")
        tokens = tokens[:n] if tokens.shape[0] >= n else None
    return CropSet(
        embeddings=np.load(path / "embeddings.npy", mmap_mode="r")[:n],
        inputs=np.load(path / "inputs.npy", mmap_mode="r")[:n],
        labels=np.load(path / "labels.npy", mmap_mode="r")[:n],
        centers=np.array([it["center"] for it in items], np.int64),
        modalities=[it["modality"] for it in items],
        tokens=tokens,
    )


def concat_crop_sets(sets: Sequence[CropSet]) -> CropSet:
    """One :class:`CropSet` of several (a single set is returned as is, still memory-mapped)."""
    sets = list(sets)
    if len(sets) == 1:
        return sets[0]
    return CropSet(
        embeddings=np.concatenate([s.embeddings for s in sets]),
        inputs=np.concatenate([s.inputs for s in sets]),
        labels=np.concatenate([s.labels for s in sets]),
        centers=np.concatenate([s.centers for s in sets]),
        modalities=[m for s in sets for m in s.modalities],
        tokens=np.concatenate([s.tokens for s in sets]) if all(s.tokens is not None for s in sets) else None,
    )


# -- crops drawn afresh at every step (full fine-tuning) -----------------------------------------


@dataclass
class ImageBank:
    """Training images held in memory, normalised as the plugin normalises them.

    ``images[i]`` is ``(H, W)`` (grey) or ``(H, W, 3)`` ``uint8`` (the plugin's ``[0, 1]``
    normalisation x 255), ``labels[i]`` ``(H, W)`` instance ids, ``modalities[i]`` and
    ``keys[i]`` name the image.
    """

    images: list
    labels: list
    modalities: list
    keys: list

    def __len__(self) -> int:
        return len(self.images)


def _encode_image(image: np.ndarray) -> np.ndarray:
    """Lossless WebP bytes of a ``uint8`` grey or RGB image (a third of zlib's size on micrographs)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="WEBP", lossless=True, quality=100, method=6)
    return np.frombuffer(buf.getvalue(), np.uint8)


def _decode_image(data: np.ndarray) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data.tobytes())) as im:
        return np.asarray(im)


def _pack_one(image, labels):
    import lzma

    q = np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)
    if q.ndim == 3 and (q == q[..., :1]).all():
        q = q[..., 0]
    lab = np.ascontiguousarray(labels, np.int32)
    return _encode_image(q), np.frombuffer(lzma.compress(lab.tobytes(), preset=6), np.uint8), q.shape


def pack_image_bank(records: Sequence, path: str | Path, load, workers: int = 1) -> Generator[Progress, None, Path]:
    """Normalise training images once and store them in one ``.npz``; a job returning ``path``.

    ``load(record) -> (image (H, W, 3) float32 in [0, 1], labels (H, W))`` is the plugin's
    normalisation (:func:`napari_sam_micro.evaluation.load_record`). Images are quantised to
    ``uint8`` (``x 255``; grey when the three channels are equal) and stored as lossless WebP,
    labels as LZMA-compressed ``int32``: the file is what a GPU machine, which gets 64 MiB, needs
    to train. ``workers`` processes encode in parallel.
    """
    from concurrent.futures import ProcessPoolExecutor

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, index = {}, []
    with ProcessPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(_pack_one, *load(rec)) for rec in records]
        for i, (rec, fut) in enumerate(zip(records, futures)):
            image_bytes, label_bytes, shape = fut.result()
            arrays[f"image_{i}"] = image_bytes
            arrays[f"labels_{i}"] = label_bytes
            index.append({"key": getattr(rec, "key", str(i)), "modality": rec.modality, "shape": list(shape)})
            yield Progress(i + 1, len(records), f"packed {i + 1}/{len(records)} images")
    arrays["index"] = np.frombuffer(json.dumps(index).encode(), np.uint8)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def load_image_bank(path: str | Path) -> ImageBank:
    """Read a file written by :func:`pack_image_bank`."""
    import lzma

    images, labels = [], []
    with np.load(path, allow_pickle=False) as data:
        index = json.loads(bytes(data["index"]).decode())
        for i, item in enumerate(index):
            image = _decode_image(data[f"image_{i}"])
            if len(item["shape"]) == 2 and image.ndim == 3:  # WebP holds grey as RGB
                image = image[..., 0]
            if list(image.shape) != item["shape"]:
                raise ValueError(f"{path}: image {i} decoded as {image.shape}, stored {item['shape']}")
            images.append(image)
            labels.append(np.frombuffer(lzma.decompress(data[f"labels_{i}"].tobytes()), np.int32).reshape(image.shape[:2]))
    return ImageBank(images, labels, [it["modality"] for it in index], [it["key"] for it in index])


def stream_crops(bank: ImageBank, cfg: CropConfig, seed) -> Generator[dict, None, None]:
    """Endless augmented crops of ``bank`` in the model frame, drawn afresh each time.

    Modalities are drawn with weights ``cfg.crops_per_modality``, then an image of that modality
    uniformly, then :func:`sample_crop`. Yields dicts: ``input`` ``(256, 256, 3)`` float16 (the
    adapter's input, :func:`~napari_sam_micro.models.litemedsam.preprocess_litemedsam`),
    ``labels`` ``(256, 256)`` int32 in the same frame, ``center`` the prompted object's id.
    """
    from .litemedsam import preprocess_litemedsam

    rng = np.random.default_rng(seed)
    by_mod: dict[str, list[int]] = {}
    for i, m in enumerate(bank.modalities):
        by_mod.setdefault(m, []).append(i)
    mods = [m for m in sorted(by_mod) if cfg.crops_per_modality.get(m, 0) > 0]
    if not mods:
        raise ValueError("no image of a modality with a positive weight in crops_per_modality")
    weights = np.array([cfg.crops_per_modality[m] for m in mods], np.float64)
    weights /= weights.sum()
    objects: dict[int, list] = {}
    while True:
        members = by_mod[mods[int(rng.choice(len(mods), p=weights))]]
        i = members[int(rng.integers(len(members)))]
        if i not in objects:
            objects[i] = _objects(bank.labels[i], cfg.min_area)
        sample = sample_crop(bank.images[i], bank.labels[i], rng, cfg, objects=objects[i])
        if sample is None:
            continue
        tensor, _ = preprocess_litemedsam(sample["crop"], MODEL_SIDE, "cpu")
        yield {
            "input": tensor[0].permute(1, 2, 0).numpy().astype(np.float16),
            "labels": _labels_to_model_frame(sample["labels"]),
            "center": sample["center"],
        }


@dataclass
class CropBatch:
    """One training step's crops: ``labels`` / ``centers`` per crop, and a way to get their inputs."""

    labels: list
    centers: list
    take: object  # take(what, positions) -> np.ndarray, what in {"inputs", "embeddings", "tokens"}


class CropStream:
    """Fresh augmented crops of an :class:`ImageBank`, made by ``workers`` background processes.

    Used in place of a :class:`CropSet` by :func:`train_job` (``TrainConfig.train_encoder`` only:
    a stream has the encoder's inputs, not its outputs). ``workers=0`` draws in the calling
    process (tests, CPU). Each worker draws from its own seed ``(seed, worker id)``.
    """

    def __init__(self, bank: ImageBank, cfg: CropConfig | None = None, workers: int = 0, seed: int = 0):
        self.bank, self.cfg, self.workers, self.seed = bank, cfg or CropConfig(), int(workers), seed
        self._iters: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.bank)

    def _batches(self, batch_size: int):
        if self.workers == 0:
            stream = stream_crops(self.bank, self.cfg, [self.seed, 0])
            while True:
                yield _collate([next(stream) for _ in range(batch_size)])
        loader = torch.utils.data.DataLoader(
            _StreamDataset(self.bank, self.cfg, self.seed), batch_size=batch_size,
            num_workers=self.workers, collate_fn=_collate, prefetch_factor=4, persistent_workers=True,
        )
        yield from loader

    def draw(self, rng, batch_size: int) -> CropBatch:
        if batch_size not in self._iters:
            self._iters[batch_size] = self._batches(batch_size)
        inputs, labels, centers = next(self._iters[batch_size])

        def take(what, positions):
            if what != "inputs":
                raise ValueError("a CropStream has only the encoder's inputs: train with train_encoder=True")
            return inputs[np.asarray(positions)]

        return CropBatch(list(labels), list(centers), take)


def _collate(samples):
    return (
        np.stack([s["input"] for s in samples]),  # float16: half the bytes between processes
        np.stack([s["labels"] for s in samples]),
        [int(s["center"]) for s in samples],
    )


class _StreamDataset(torch.utils.data.IterableDataset):
    def __init__(self, bank, cfg, seed):
        super().__init__()
        self.bank, self.cfg, self.seed = bank, cfg, seed

    def __iter__(self):
        torch.set_num_threads(1)
        info = torch.utils.data.get_worker_info()
        return stream_crops(self.bank, self.cfg, [self.seed, 0 if info is None else info.id])


# -- the image encoder split before its last stage ----------------------------------------------

#: File of :func:`encoder_tail_tokens_job` in a crop folder.
TOKENS_FILE = "tail_tokens.npy"


def encoder_head(encoder, images: torch.Tensor) -> torch.Tensor:
    """TinyViT up to (not including) its last stage: ``(B, 3, 256, 256)`` -> tokens ``(B, 4096, C)``."""
    x = encoder.layers[0](encoder.patch_embed(images))
    for layer in encoder.layers[1:-1]:
        x = layer(x)
    return x


def encoder_tail(encoder, tokens: torch.Tensor) -> torch.Tensor:
    """TinyViT's last stage and neck: tokens ``(B, 4096, C)`` -> embeddings ``(B, 256, 64, 64)``.

    ``encoder_tail(enc, encoder_head(enc, x))`` equals ``enc(x)``.
    """
    x = encoder.layers[-1](tokens)
    b, n, c = x.shape
    side = int(round(math.sqrt(n)))
    return encoder.neck(x.view(b, side, side, c).permute(0, 3, 1, 2))


def encoder_tail_tokens_job(
    crop_dir: str | Path, net=None, device: str = "cpu", batch_size: int = 4
) -> Generator[Progress, None, Path]:
    """Cache :func:`encoder_head` of every crop's stored input as ``crop_dir/tail_tokens.npy``.

    Written ``(N, 4096, C)`` float16 (``C`` = 320 for LiteMedSAM), N = the crops finished in
    ``crop_dir``; returns the file's path. ``net`` defaults to the bundled LiteMedSAM.
    """
    from .litemedsam import build_litemedsam

    crops = load_crop_set(crop_dir)
    if net is None:
        net = build_litemedsam(device=device).net
    enc = net.image_encoder.eval()
    n = len(crops)
    out = Path(crop_dir) / TOKENS_FILE
    tmp = out.with_suffix(".tmp.npy")
    tokens = None
    t0 = time.time()
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        x = torch.from_numpy(np.asarray(crops.inputs[start:stop], np.float32)).permute(0, 3, 1, 2).to(device)
        with torch.inference_mode():
            t = encoder_head(enc, x).float().cpu().numpy().astype(np.float16)
        if tokens is None:
            tokens = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, *t.shape[1:]))
        tokens[start:stop] = t
        rate = (time.time() - t0) / stop
        yield Progress(stop, n, f"encoder head {stop}/{n} crops ({rate:.1f} s/crop)")
    if tokens is None:
        raise ValueError(f"no crops in {crop_dir}")
    tokens.flush()
    del tokens
    tmp.replace(out)
    return out


# -- prompts in the 256 model frame ------------------------------------------------------------


def _choose_target(lab: np.ndarray, center: int, rng, cfg: TrainConfig) -> np.ndarray | None:
    ids, counts = np.unique(lab, return_counts=True)
    ok = [(i, c) for i, c in zip(ids, counts) if i != 0 and c >= 12]
    if rng.random() >= cfg.center_object_fraction and len(ok) > 1:
        # an object not touching the crop border (a complete object)
        inner = np.unique(lab[1:-1, 1:-1])
        border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])).tolist())
        cand = [i for i, _ in ok if i not in border and i in inner]
        if cand:
            return lab == cand[int(rng.integers(len(cand)))]
    if any(i == center for i, _ in ok):
        return lab == center
    if ok:
        return lab == ok[int(rng.integers(len(ok)))][0]
    return None


def _box_prompt(mask: np.ndarray, rng, jitter: float, pad: float = 0.0) -> np.ndarray:
    """The mask's box, each side moved by up to ``jitter`` x the box size, then grown by ``pad`` x its longer side."""
    box = mask_to_box_xyxy(mask).astype(np.float64)
    side = np.tile(box[2:] - box[:2] + 1, 2)
    box = box + rng.uniform(-jitter, jitter, 4) * side
    if pad:
        grow = pad * float(side.max())
        box = box + np.array([-grow, -grow, grow, grow])
    return np.clip(box, 0, MODEL_SIDE - 1)


def _point_prompt(mask: np.ndarray, rng) -> np.ndarray:
    if rng.random() < 0.5:
        r, c, _ = farthest_interior_point(mask)
    else:
        dist = border_distance(mask)
        rr, cc = np.nonzero(dist >= max(1.0, dist.max() / 3.0))
        j = int(rng.integers(rr.size))
        r, c = rr[j], cc[j]
    return np.array([[c, r]], np.float64)


def _click(pred: np.ndarray, gt: np.ndarray, rng) -> tuple[np.ndarray, int] | None:
    """A corrective click in the error region: farthest-from-border (half the time) or random."""
    fn, fp = gt & ~pred, pred & ~gt
    regions = [(r, lab) for r, lab in ((fn, 1), (fp, 0)) if r.any()]
    if not regions:
        return None
    if rng.random() < 0.5:
        best = max(((farthest_interior_point(r), lab) for r, lab in regions), key=lambda t: t[0][2])
        (r, c, _), lab = best
    else:
        sizes = np.array([reg.sum() for reg, _ in regions], np.float64)
        reg, lab = regions[int(rng.choice(len(regions), p=sizes / sizes.sum()))]
        rr, cc = np.nonzero(reg)
        j = int(rng.integers(rr.size))
        r, c = rr[j], cc[j]
    return np.array([c, r], np.float64), lab


# -- losses ------------------------------------------------------------------------------------


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per sample, ``(B,)``, of ``(B, H, W)`` logits against a binary target."""
    probs = torch.sigmoid(logits)
    inter = (probs * target).sum((-2, -1))
    union = probs.sum((-2, -1)) + target.sum((-2, -1))
    return 1.0 - (2.0 * inter + eps) / (union + eps)


def _mask_losses(masks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + Dice of each token's mask: ``(B, M)``."""
    b, m = masks.shape[:2]
    tgt = target[:, None].expand(b, m, *target.shape[-2:])
    bce = F.binary_cross_entropy_with_logits(masks, tgt, reduction="none").mean((-2, -1))
    return bce + dice_loss(masks, tgt)


def _real_iou(masks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = masks.detach() > 0
    tgt = target[:, None].bool()
    inter = (pred & tgt).sum((-2, -1)).float()
    union = (pred | tgt).sum((-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


# -- training ----------------------------------------------------------------------------------


#: Modules trained besides the prompt encoder and mask decoder when the encoder's tail is tuned.
ENCODER_TAIL_PARTS = ("image_encoder.layers.3", "image_encoder.neck")
DECODER_PARTS = ("prompt_encoder", "mask_decoder")
#: The image encoder before its last stage; with :data:`ENCODER_TAIL_PARTS`, all of it.
ENCODER_HEAD_PARTS = ("image_encoder.patch_embed", "image_encoder.layers.0", "image_encoder.layers.1",
                      "image_encoder.layers.2")


def encoder_tail_parts(net) -> list:
    """The modules of :data:`ENCODER_TAIL_PARTS` (the image encoder's last stage and neck)."""
    return [net.get_submodule(name) for name in ENCODER_TAIL_PARTS]


def trainable_state(net, parts: Sequence[str] = DECODER_PARTS) -> dict:
    """State dict of the modules ``parts`` (dotted paths), keys prefixed with the path."""
    state = {}
    for part in parts:
        for k, v in net.get_submodule(part).state_dict().items():
            state[f"{part}.{k}"] = v
    return state


def _decode(net, features, coords, labels, boxes, mask_input):
    """All four mask tokens: ``(B, 4, 256, 256)`` logits and ``(B, 4)`` IoU predictions."""
    points = None if coords is None else (coords, labels)
    sparse, dense = net.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    return net.mask_decoder.predict_masks(
        image_embeddings=features,
        image_pe=net.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )


def _group_loss(masks, ious, target, cfg: TrainConfig, multimask: bool):
    losses = _mask_losses(masks, target)
    single = losses[:, 0]
    best_multi = losses[:, 1:].min(dim=1).values
    loss = single + cfg.multimask_loss_weight * best_multi if not multimask else best_multi + cfg.multimask_loss_weight * single
    iou_loss = F.mse_loss(ious, _real_iou(masks, target), reduction="none").mean(1)
    return loss + cfg.iou_loss_weight * iou_loss


def train_job(
    crops: CropSet | CropStream,
    cfg: TrainConfig | None = None,
    net=None,
    log=None,
    checkpoint=None,
    checkpoint_every_s: float = 120.0,
) -> Generator[Progress, None, dict]:
    """Fine-tune on precomputed crops or a stream of fresh ones; a job returning ``{"net", "history"}``.

    Parameters
    ----------
    crops : CropSet or CropStream
    cfg : TrainConfig
    net : MedSAMLite, optional
        Start point (default: bundled LiteMedSAM). Trained in place.
    log : callable, optional
        ``log(dict)`` every ``cfg.log_every`` steps (step, loss, mean IoU, seconds).
    checkpoint : callable, optional
        ``checkpoint(net, step)`` every ``checkpoint_every_s`` seconds (a long run that is cut
        short still leaves weights).
    """
    from .litemedsam import build_litemedsam

    cfg = cfg or TrainConfig()
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if net is None:
        net = build_litemedsam(device="cpu").net
    net = net.to(dev)
    net.train()
    params = list(net.prompt_encoder.parameters()) + list(net.mask_decoder.parameters())
    groups = [{"params": params}]
    if cfg.train_encoder:
        encoder_params = list(net.image_encoder.parameters())
        groups.append({"params": encoder_params, "lr": cfg.lr * cfg.encoder_lr_scale})
        params = params + encoder_params
        if cfg.freeze_batchnorm:
            for module in net.image_encoder.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
    else:
        net.image_encoder.eval()  # also keeps its batch-norm statistics fixed
        for p in net.image_encoder.parameters():
            p.requires_grad_(False)
        if cfg.train_encoder_tail:
            if crops.tokens is None:
                raise ValueError("train_encoder_tail needs the cached tokens of encoder_tail_tokens_job")
            tail = [p for part in encoder_tail_parts(net) for p in part.parameters()]
            for p in tail:
                p.requires_grad_(True)
            groups.append({"params": tail, "lr": cfg.lr * cfg.encoder_lr_scale})
            params = params + tail
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    warmup_fraction = cfg.warmup / max(1, cfg.steps)

    def lr_factor(step, elapsed):
        """Warm-up then cosine over the run's progress (steps, or elapsed time with a budget)."""
        done = step / max(1, cfg.steps)
        if cfg.time_budget_s:
            done = max(done, elapsed / cfg.time_budget_s)
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (done - warmup_fraction) / max(1e-9, 1 - warmup_fraction))))

    history = []
    t0 = last_checkpoint = time.time()
    if len(crops) == 0:
        raise ValueError("no training crops")
    if isinstance(crops, CropStream) and not cfg.train_encoder:
        raise ValueError("a CropStream has only the encoder's inputs: train with train_encoder=True")
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.autocast and dev.type == "cuda")
    run_loss, run_iou, run_n = 0.0, 0.0, 0
    step = empty_draws = 0
    while step < cfg.steps and not (cfg.time_budget_s and time.time() - t0 >= cfg.time_budget_s):
        factor = lr_factor(step, time.time() - t0)
        for group, base in zip(opt.param_groups, base_lrs):
            group["lr"] = base * factor
        batch = crops.draw(rng, cfg.batch_size)
        targets, chosen = [], []
        for j, (lab, center) in enumerate(zip(batch.labels, batch.centers)):
            t = _choose_target(np.asarray(lab), int(center), rng, cfg)
            if t is not None:
                targets.append(t)
                chosen.append(j)
        if not chosen:
            empty_draws += 1
            if empty_draws >= 100:
                raise ValueError("no usable object in 100 batches of crops")
            continue
        empty_draws = 0
        with autocast:
            if cfg.train_encoder:
                imgs = torch.from_numpy(batch.take("inputs", chosen)).permute(0, 3, 1, 2).to(dev).float()
                feats = net.image_encoder(imgs)
            elif cfg.train_encoder_tail:
                feats = encoder_tail(net.image_encoder, torch.from_numpy(batch.take("tokens", chosen)).to(dev))
            else:
                feats = torch.from_numpy(batch.take("embeddings", chosen)).to(dev)
        # prompt kind per sample: 0 box, 1 lone click, 2 loose box + click (a click's second stage)
        p_point = max(0.0, 1.0 - cfg.box_fraction - cfg.box_point_fraction)
        kinds = rng.choice(3, size=len(chosen), p=np.array([cfg.box_fraction, p_point, cfg.box_point_fraction]) / (cfg.box_fraction + p_point + cfg.box_point_fraction))
        total_loss = torch.zeros((), device=dev)
        ious_seen = []
        for kind in (0, 1, 2):
            sel = np.flatnonzero(kinds == kind)
            if sel.size == 0:
                continue
            group_box = kind != 1
            gts = [targets[j] for j in sel]
            target = torch.from_numpy(np.stack(gts).astype(np.float32)).to(dev)
            f = feats[torch.as_tensor(sel, device=dev)]
            if kind == 0:
                boxes = torch.as_tensor(np.stack([_box_prompt(g, rng, cfg.box_jitter) for g in gts]), dtype=torch.float, device=dev)
                pts = np.zeros((len(sel), 0, 2))
                lbl = np.zeros((len(sel), 0), np.int64)
            elif kind == 1:
                boxes = None
                pts = np.stack([_point_prompt(g, rng) for g in gts])
                lbl = np.ones((len(sel), 1), np.int64)
            else:
                loose = [_box_prompt(g, rng, cfg.loose_box_jitter, pad=cfg.loose_box_pad) for g in gts]
                boxes = torch.as_tensor(np.stack(loose), dtype=torch.float, device=dev)
                pts = np.stack([_point_prompt(g, rng) for g in gts])
                lbl = np.ones((len(sel), 1), np.int64)
            coords_t = torch.as_tensor(pts, dtype=torch.float, device=dev) if pts.shape[1] else None
            labels_t = torch.as_tensor(lbl, dtype=torch.int, device=dev) if pts.shape[1] else None
            with autocast:
                masks, ious = _decode(net, f, coords_t, labels_t, boxes, None)
            masks, ious = masks.float(), ious.float()
            total_loss = total_loss + _group_loss(masks, ious, target, cfg, multimask=not group_box).sum()
            # previous prediction: single token for boxes, best predicted multimask token for points
            if group_box:
                prev = masks[:, 0:1]
            else:
                k = ious[:, 1:].argmax(1) + 1
                prev = masks[torch.arange(masks.shape[0]), k][:, None]
            for _ in range(cfg.n_clicks):
                pred_np = (prev.detach()[:, 0] > 0).cpu().numpy()
                new_pts, new_lbl = [], []
                for j, g in enumerate(gts):
                    click = _click(pred_np[j], g, rng)
                    if click is None:  # perfect: repeat a positive click at the interior point
                        r, c, _ = farthest_interior_point(g)
                        click = (np.array([c, r], np.float64), 1)
                    new_pts.append(click[0])
                    new_lbl.append(click[1])
                pts = np.concatenate([pts, np.array(new_pts)[:, None]], axis=1)
                lbl = np.concatenate([lbl, np.array(new_lbl)[:, None]], axis=1)
                coords_t = torch.as_tensor(pts, dtype=torch.float, device=dev)
                labels_t = torch.as_tensor(lbl, dtype=torch.int, device=dev)
                with autocast:
                    masks, ious = _decode(net, f, coords_t, labels_t, boxes, prev.detach())
                masks, ious = masks.float(), ious.float()
                total_loss = total_loss + _group_loss(masks, ious, target, cfg, multimask=False).sum()
                prev = masks[:, 0:1]
            ious_seen.extend(_real_iou(masks[:, 0:1], target)[:, 0].tolist())
        loss = total_loss / len(chosen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        run_loss += float(loss.detach())
        run_iou += float(np.mean(ious_seen))
        run_n += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            entry = {"step": step, "loss": run_loss / run_n, "train_iou_after_click": run_iou / run_n,
                     "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 1)}
            history.append(entry)
            if log is not None:
                log(entry)
            run_loss, run_iou, run_n = 0.0, 0.0, 0
        if checkpoint is not None and time.time() - last_checkpoint >= checkpoint_every_s:
            checkpoint(net, step)
            last_checkpoint = time.time()
        yield Progress(step, cfg.steps, f"step {step}/{cfg.steps}")
    if run_n:
        history.append({"step": step, "loss": run_loss / run_n, "train_iou_after_click": run_iou / run_n,
                        "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 1)})
    net.eval()
    return {"net": net, "history": history}


# -- export ------------------------------------------------------------------------------------


def export_weights(net, path: str | Path, metadata: dict | None = None, parts: Sequence[str] = DECODER_PARTS) -> str:
    """Write the modules ``parts`` as ``.npz`` (no pickle; float16, integer buffers unchanged); returns its SHA-256.

    ``metadata`` (JSON-serialisable) is written beside it as ``<stem>.json`` with the checksum.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        # floating tensors as float16; integer buffers (batch-norm counters, > float16's range) as they are
        k: v.detach().cpu().float().numpy().astype(np.float16) if v.is_floating_point() else v.detach().cpu().numpy()
        for k, v in trainable_state(net, parts).items()
    }
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if metadata is not None:
        meta = dict(metadata)
        meta["sha256"] = digest
        meta["size_bytes"] = path.stat().st_size
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return digest


def load_exported(net, path: str | Path, require_decoder: bool = True) -> tuple[str, ...]:
    """Load weights written by :func:`export_weights` into a LiteMedSAM network; returns the parts loaded.

    The prompt encoder and mask decoder must be complete (unless ``require_decoder`` is False: a
    file of other parts only); other keys (the image encoder's tail, or all of it) must name
    existing parameters of the same shape.

    Raises
    ------
    ModelUnavailableError
        The file is missing, damaged or not an ``.npz`` (the message names it; ``BadZipFile``,
        ``EOFError`` … never escape).
    KeyError
        Decoder keys missing, or keys that are not LiteMedSAM parameters.
    RuntimeError
        A shape mismatch.
    """
    from .checkpoints import READ_ERRORS, damaged_file_error

    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a plain .npy: one array, not named weights
            raise ValueError("a single array, not an .npz of named weights")
        with data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError as err:
        raise ModelUnavailableError(f"The weights file {Path(path).expanduser()} does not exist.") from err
    except READ_ERRORS as err:
        raise damaged_file_error(path, err) from err
    state = net.state_dict()
    unknown = sorted(set(arrays) - set(state))
    if unknown:
        raise KeyError(f"not LiteMedSAM parameters: {unknown[:3]}")
    missing = sorted(k for k in trainable_state(net) if k not in arrays) if require_decoder else []
    if missing:
        raise KeyError(f"missing prompt encoder / mask decoder weights: {missing[:3]}")
    for k, v in arrays.items():
        state[k] = torch.from_numpy(v.astype(np.float32) if v.dtype == np.float16 else v).to(state[k].dtype)
    net.load_state_dict(state, strict=True)
    return tuple(
        p for p in DECODER_PARTS + ENCODER_HEAD_PARTS + ENCODER_TAIL_PARTS if any(k.startswith(p + ".") for k in arrays)
    )
