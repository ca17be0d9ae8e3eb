"""Training crops: objects of a labelled image cut in the windows the plugin encodes, augmented, encoded once.

:func:`sample_crop` cuts one crop (the window :func:`napari_sam_micro.core.preprocess.prompt_window`
gives the object's box or interior point, with scale / centre jitter, flips, rotations and
intensity jitter); :func:`precompute_crops_job` encodes many with the frozen image encoder and
stores them (:class:`CropSet`, memory-mapped), what :func:`napari_sam_micro.training.loop.train_job`
trains the decoder on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from ..core.masks import farthest_interior_point
from ..core.preprocess import prompt_window
from ..core.progress import Progress

__all__ = [
    "MODEL_SIDE",
    "TOKENS_FILE",
    "CropConfig",
    "CropSet",
    "CropBatch",
    "sample_crop",
    "precompute_crops_job",
    "load_crop_set",
    "concat_crop_sets",
]

#: Side of LiteMedSAM's input; crops and their labels are stored in this frame.
MODEL_SIDE = 256
#: File of :func:`~napari_sam_micro.training.encoder_split.encoder_tail_tokens_job` in a crop folder.
TOKENS_FILE = "tail_tokens.npy"


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
    from ..models.sam_family import resize_longest_side_shape

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
    from ..models.litemedsam import build_litemedsam, preprocess_litemedsam

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
class CropBatch:
    """One training step's crops: ``labels`` / ``centers`` per crop, and a way to get their inputs."""

    labels: list
    centers: list
    take: object  # take(what, positions) -> np.ndarray, what in {"inputs", "embeddings", "tokens"}


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
