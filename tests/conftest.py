"""Shared fixtures: the tiny random-weight SAM, real data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

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
