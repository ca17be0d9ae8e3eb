"""npe2 sample data: *File → Open Sample → SAM Micro → Synthetic nuclei (with ground truth)*.

The image and its ground truth are generated on the spot by
:func:`napari_sam_micro.core.synthetic.synthetic_nuclei` (deterministic, offline, well under a
second), so nothing is downloaded and no data file ships with the package. The labels layer's name
contains "ground truth", which the Evaluation widget picks as its reference.
"""

from __future__ import annotations

__all__ = ["synthetic_nuclei_sample", "SAMPLE_IMAGE_NAME", "SAMPLE_LABELS_NAME"]

#: Layer names of the sample.
SAMPLE_IMAGE_NAME = "synthetic nuclei"
SAMPLE_LABELS_NAME = "synthetic nuclei ground truth"


def synthetic_nuclei_sample() -> list[tuple]:
    """The sample as napari layer data: a 512 x 512 uint16 Image and its ground-truth Labels.

    Returns
    -------
    list of (data, kwargs, layer_type)
        ``(image, {...}, "image")`` and ``(labels, {...}, "labels")``; the labels start hidden
        so that the image is what one sees and prompts on.
    """
    from ..core.synthetic import synthetic_nuclei

    image, labels = synthetic_nuclei(seed=0)
    return [
        (image, {"name": SAMPLE_IMAGE_NAME, "colormap": "gray"}, "image"),
        (labels, {"name": SAMPLE_LABELS_NAME, "opacity": 0.5, "visible": False}, "labels"),
    ]
