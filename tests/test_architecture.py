"""The package's shape: import layers, a light package root, a valid npe2 manifest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_layers_hold():
    """``lint-imports`` checks the layer and forbidden-import contracts in pyproject.toml."""
    pytest.importorskip("importlinter")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(no_cache=True, no_logo=True))"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower() or "0 broken" in result.stdout.lower()


def test_package_root_is_light():
    """Importing the package (and core) pulls in neither torch, napari nor Qt."""
    code = (
        "import sys, napari_sam_micro, napari_sam_micro.core.model_api, napari_sam_micro.core.progress; "
        "heavy = [m for m in ('torch', 'napari', 'qtpy', 'PyQt5', 'segment_anything') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def test_npe2_manifest_validates_with_imports():
    """The manifest is valid and every ``python_name`` it names imports."""
    npe2 = pytest.importorskip("npe2")
    del npe2
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-sam-micro", "--imports"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in (result.stdout + result.stderr).lower()
