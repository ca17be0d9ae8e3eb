"""npe2 sample data: offline, an Image plus its ground-truth Labels that the Evaluation widget picks."""

from __future__ import annotations

import socket

import numpy as np
import pytest

pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402

from napari_sam_micro._napari.sample import SAMPLE_IMAGE_NAME, SAMPLE_LABELS_NAME, synthetic_nuclei_sample  # noqa: E402
from napari_sam_micro.core.synthetic import synthetic_nuclei  # noqa: E402


def test_sample_is_made_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the sample must not use the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    (image, image_kw, image_type), (labels, labels_kw, labels_type) = synthetic_nuclei_sample()
    assert (image_type, labels_type) == ("image", "labels")
    assert image_kw["name"] == SAMPLE_IMAGE_NAME and labels_kw["name"] == SAMPLE_LABELS_NAME
    expected_image, expected_labels = synthetic_nuclei(seed=0)
    np.testing.assert_array_equal(image, expected_image)
    np.testing.assert_array_equal(labels, expected_labels)


def test_open_sample_through_npe2():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    try:
        manager.get_manifest("napari-sam-micro")
    except KeyError:
        pytest.skip("the package is not installed (no napari.manifest entry point)")
    viewer = ViewerModel()
    viewer.open_sample("napari-sam-micro", "synthetic-nuclei")
    assert [layer.name for layer in viewer.layers] == [SAMPLE_IMAGE_NAME, SAMPLE_LABELS_NAME]
    assert viewer.layers[SAMPLE_LABELS_NAME].data.max() == 70


def test_evaluation_widget_takes_the_ground_truth_as_reference(qtbot):
    pytest.importorskip("qtpy")
    from napari_sam_micro._qt.evaluation import EvaluationWidget

    viewer = ViewerModel()
    for data, kwargs, layer_type in synthetic_nuclei_sample():
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    viewer.add_labels(np.zeros((512, 512), np.uint32), name="prediction")
    widget = EvaluationWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.reference_combo.current_layer().name == SAMPLE_LABELS_NAME
