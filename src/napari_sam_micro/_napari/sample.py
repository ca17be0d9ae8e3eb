"""npe2 sample data (*File → Open Sample → SAM Micro*): an image with its ground truth, offline.

* **DSB 2018 nuclei**: a real fluorescence image of the 2018 Data Science Bowl (CC0) with its 125
  annotated nuclei, shipped in the package (``sample_data/dsb2018_nuclei.npz``, 240 kB; its
  provenance and licence are in ``sample_data/README.md``). It is a crop of an image in
  micro-tiny's training split: a demonstration, not a benchmark.
* **Synthetic nuclei**: generated on the spot by
  :func:`napari_sam_micro.core.synthetic.synthetic_nuclei` (deterministic, well under a second),
  with exact labels.

Each labels layer's name contains "ground truth", which the Evaluation widget picks as its
reference; it starts hidden so that the image is what one sees and prompts on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "dsb2018_nuclei_sample",
    "load_dsb2018_nuclei",
    "synthetic_nuclei_sample",
    "DSB_IMAGE_NAME",
    "DSB_LABELS_NAME",
    "SAMPLE_IMAGE_NAME",
    "SAMPLE_LABELS_NAME",
]

#: Layer names of the DSB 2018 sample.
DSB_IMAGE_NAME = "DSB 2018 nuclei"
DSB_LABELS_NAME = "DSB 2018 nuclei ground truth"
#: Layer names of the synthetic sample.
SAMPLE_IMAGE_NAME = "synthetic nuclei"
SAMPLE_LABELS_NAME = "synthetic nuclei ground truth"

_DSB_FILE = Path(__file__).parent / "sample_data" / "dsb2018_nuclei.npz"


def load_dsb2018_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """The shipped DSB 2018 image and its ground truth.

    Returns
    -------
    image : (512, 512) uint16
        Fluorescence nuclei (values 0-235).
    labels : (512, 512) uint16
        125 nuclei numbered 1..125, 0 = background.
    """
    with np.load(_DSB_FILE, allow_pickle=False) as data:
        return data["image"], data["labels"]


def _layers(image: np.ndarray, labels: np.ndarray, image_name: str, labels_name: str) -> list[tuple]:
    return [
        (image, {"name": image_name, "colormap": "gray"}, "image"),
        (labels, {"name": labels_name, "opacity": 0.5, "visible": False}, "labels"),
    ]


def dsb2018_nuclei_sample() -> list[tuple]:
    """The DSB 2018 sample as napari layer data: ``(image, kwargs, "image")``, ``(labels, kwargs, "labels")``."""
    image, labels = load_dsb2018_nuclei()
    return _layers(image, labels, DSB_IMAGE_NAME, DSB_LABELS_NAME)


def synthetic_nuclei_sample() -> list[tuple]:
    """The synthetic sample as napari layer data: a 512 x 512 uint16 Image and its ground-truth Labels.

    Returns
    -------
    list of (data, kwargs, layer_type)
        ``(image, {...}, "image")`` and ``(labels, {...}, "labels")``.
    """
    from ..core.synthetic import synthetic_nuclei

    image, labels = synthetic_nuclei(seed=0)
    return _layers(image, labels, SAMPLE_IMAGE_NAME, SAMPLE_LABELS_NAME)
