"""Prompts a script or a stray click can produce, through the session (issue 12, defect 8).

A point far outside the image used to give a confident mask of whatever the shifted window held;
a NaN point failed with a bare ``ValueError``. Both must be a :class:`PromptError` with a message.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_micro.core.cache import EmbeddingCache
from napari_sam_micro.core.errors import PromptError
from napari_sam_micro.core.progress import drain
from napari_sam_micro.core.prompts import Prompts
from napari_sam_micro.session import AnnotationSession


def _session(model, crop_to_prompt):
    session = AnnotationSession(model, EmbeddingCache(), crop_to_prompt=crop_to_prompt)
    image = np.full((120, 160), 100, np.uint16)
    image[30:70, 40:90] = 3000
    session.set_image(image)
    return session


@pytest.mark.parametrize("xy", [[5000.0, 40.0], [60.0, -30.0]])
def test_point_far_outside_the_image_is_refused(disk_model, xy):
    session = _session(disk_model(radius=5), crop_to_prompt=True)
    with pytest.raises(PromptError, match="outside the image, which is 160 × 120"):
        drain(session.predict_job(Prompts(points_xy=[xy], point_labels=[1])))
    assert session.preview is None


def test_box_outside_the_image_is_refused(disk_model):
    session = _session(disk_model(radius=5), crop_to_prompt=True)
    with pytest.raises(PromptError, match="completely outside"):
        drain(session.predict_job(Prompts(boxes_xyxy=[[400, 10, 420, 30]])))


def test_nan_point_is_a_prompt_error(disk_model):
    session = _session(disk_model(radius=5), crop_to_prompt=True)
    with pytest.raises(PromptError, match="NaN"):
        session.predict(Prompts(points_xy=[[np.nan, 10.0]], point_labels=[1]))


def test_point_outside_is_refused_on_whole_image_models(disk_model):
    session = _session(disk_model(radius=5), crop_to_prompt=False)
    drain(session.embedding_job())
    with pytest.raises(PromptError, match="outside the image"):
        session.predict(Prompts(points_xy=[[5000.0, 40.0]], point_labels=[1]))
