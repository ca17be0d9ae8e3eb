"""benchmarks/bench_cpu.py still measures through the plugin's current API (not a timing test).

The benchmark reaches into the session's plane embeddings and the everything-mode functions; a
rename there once broke it silently until the next benchmark run. Here its measuring functions run
on a small synthetic plane with micro-tiny and must give masks that match the objects.
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_cpu")


@pytest.fixture(scope="module")
def micro_tiny_and_plane():
    from napari_sam_micro.core.synthetic import synthetic_nuclei
    from napari_sam_micro.models.registry import get_spec, load_model

    image, labels = synthetic_nuclei((128, 128), n_nuclei=5, seed=3, touching=0.0)
    return load_model("micro-tiny", device="cpu"), get_spec("micro-tiny"), [(None, image, labels)]


@pytest.mark.parametrize("kind", ["box", "click"])
def test_fresh_and_preencoded_prompts_are_measured(bench, micro_tiny_and_plane, kind):
    model, spec, data = micro_tiny_and_plane
    secs, ious = bench.bench_fresh(model, spec, data, 1, kind)
    assert len(secs) == len(ious) == 1 and secs[0] > 0
    assert min(ious) > 0.6
    secs, ious, share = bench.bench_preencoded(model, spec, data, 2, kind)
    assert 0.0 <= share <= 1.0 and len(secs) == len(ious) == round(share * 2)
    assert not ious or min(ious) > 0.6


def test_everything_mode_is_measured(bench, micro_tiny_and_plane, monkeypatch):
    from napari_sam_micro import segmentation

    model, spec, data = micro_tiny_and_plane
    asked = []
    real = segmentation.seeds_mode_job

    def spy(session, image, options):
        asked.append(options.fewer_windows)
        return real(session, image, options)

    monkeypatch.setattr(segmentation, "seeds_mode_job", spy)
    for fewer in (False, True):
        per_object, f1, windows, n_gt = bench.bench_everything(model, spec, data, fewer_windows=fewer)
        assert n_gt == len(np.unique(data[0][2])) - 1 and per_object > 0
        assert windows >= 1 and f1 > 0.7
    assert asked == [False, True]  # the option's row runs the option
