"""The README's "Use from Python" block runs as written, and micro-tiny's API gives the Annotator's masks.

The block reads a DSB 2018 image by its path relative to the checkout (``../shared/data``), so it
runs from the repository root in a fresh interpreter, as a user pasting it would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_python_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use from Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's 'Use from Python' section has no python block"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.data
def test_readme_python_block_runs_and_segments_the_nuclei(shared_data, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("tifffile")
    code = _readme_python_block()
    assert "segment_everything" in code and "../shared/data" in code
    checks = (
        "\nassert len(table) >= 5 and labels.max() == len(table), len(table)"
        "\nassert masks.shape[0] == 1 and masks[0].any() and 0.5 < float(scores[0]) <= 1.01"
        "\nassert instance_scores(truth, labels)['f1'] > 0.6"
        "\nprint('README-BLOCK-PASSED')\n"
    )
    env = dict(os.environ, MPLBACKEND="Agg", NAPARI_SAM_MICRO_ONNX_DIR=str(tmp_path / "onnx"))
    out = subprocess.run([sys.executable, "-c", code + checks], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "README-BLOCK-PASSED" in out.stdout


@pytest.mark.slow
@pytest.mark.data
def test_micro_tiny_predictor_gives_the_sessions_masks_on_a_dsb_image(shared_data):
    """The same boxes and click through ``Predictor.predict`` and ``AnnotationSession.predict_job``."""
    tifffile = pytest.importorskip("tifffile")
    from napari_sam_micro import load_predictor
    from napari_sam_micro.core.cache import EmbeddingCache
    from napari_sam_micro.core.masks import farthest_interior_point, mask_to_box_xyxy
    from napari_sam_micro.core.progress import drain
    from napari_sam_micro.core.prompts import Prompts
    from napari_sam_micro.evaluation import preprocess_config_for
    from napari_sam_micro.session import AnnotationSession

    image = tifffile.imread(shared_data / "dsb2018-train" / "images" / "2349e95ece2857c8.tif")
    truth = tifffile.imread(shared_data / "dsb2018-train" / "labels" / "2349e95ece2857c8.tif")
    ids = [i for i in np.unique(truth) if i and np.count_nonzero(truth == i) >= 60][:3]
    predictor = load_predictor("micro-tiny", device="cpu", progress=False).set_image(image)
    spec = predictor.spec
    config = preprocess_config_for(image)
    session = AnnotationSession(predictor.model, EmbeddingCache(1 << 30), config, model_id=spec.embedding_id,
                                **AnnotationSession.options_for(spec))
    session.set_image(image, config)
    for oid in ids:
        gt = truth == oid
        box = mask_to_box_xyxy(gt).astype(np.float32)
        r, c, _ = farthest_interior_point(gt)
        for kwargs, prompts in (
            (dict(boxes=[box]), Prompts(boxes_xyxy=[box])),
            (dict(point_coords=[[c, r]], point_labels=[1]), Prompts([[float(c), float(r)]], [1])),
        ):
            masks, scores, _ = predictor.predict(**kwargs)
            session.clear_preview()
            expected = drain(session.predict_job(prompts)).objects[0]
            assert np.array_equal(masks[0], expected.mask), (oid, kwargs)
            assert abs(float(scores[0]) - expected.predicted_iou) < 1e-6
            assert np.count_nonzero(masks[0] & gt) / np.count_nonzero(masks[0] | gt) > 0.5
