"""Crops drawn afresh at every step (full fine-tuning, on a GPU): an image bank and a crop stream.

:func:`pack_image_bank` stores the normalised training images once (``uint8`` lossless WebP,
small enough to carry to a GPU machine); :class:`CropStream` draws fresh augmented crops from them
in background processes (:func:`stream_crops`) for
:func:`napari_sam_micro.training.loop.train_job` with ``TrainConfig.train_encoder``.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.progress import Progress
from .crops import MODEL_SIDE, CropBatch, CropConfig, _labels_to_model_frame, _objects, sample_crop

__all__ = ["ImageBank", "pack_image_bank", "load_image_bank", "stream_crops", "CropStream"]


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
    from ..models.litemedsam import preprocess_litemedsam

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
