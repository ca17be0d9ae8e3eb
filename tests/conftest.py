"""Shared fixtures: the tiny random-weight SAM, real data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Widget tests run offscreen; under Xvfb (DISPLAY set, the README's test command) every test uses the
# virtual screen, so the real-viewer tests can draw the canvas.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def pytest_collection_modifyitems(config, items):
    """Skip real-viewer tests (marker ``viewer``) when there is no screen (no DISPLAY)."""
    if os.environ.get("DISPLAY"):
        return
    skip = pytest.mark.skip(reason="needs a screen: run under xvfb-run -a")
    for item in items:
        if "viewer" in item.keywords:
            item.add_marker(skip)

#: ``../shared/data`` next to the project checkout (never committed; tests skip without it).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny random-weight SAM as a ``PromptableModel`` on the CPU (session-wide, read-only)."""
    pytest.importorskip("segment_anything")
    from napari_sam_micro.models.sam_family import SamAdapter
    from napari_sam_micro.models.tiny import build_tiny_sam

    return SamAdapter(build_tiny_sam(seed=0), "tiny-test", device="cpu")
