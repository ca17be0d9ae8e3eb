"""An image series: the list of images to annotate, where each one's labels are saved, and where the user is.

The series state lives in its output folder as ``series.json`` (written atomically): the items
(image file paths, or names of open image layers), the current position, and the labels file of
each item (``<output>/<stem>_labels.tif`` with its ``.csv`` object table beside it, written by
:func:`~napari_sam_micro.core.export.write_labels`). Opening the same output folder again resumes
at the saved position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserInputError
from .export import table_path, write_text_atomic

__all__ = ["IMAGE_SUFFIXES", "STATE_FILE", "SeriesState", "list_images"]

#: Image files a folder series lists.
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
#: The state file in the output folder.
STATE_FILE = "series.json"


def list_images(folder) -> list[Path]:
    """Image files of ``folder`` (not recursive), sorted by name; labels files written by a series are left out.

    Raises
    ------
    UserInputError
        The folder does not exist or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"The folder {folder} does not exist.")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_labels")
    )
    if not files:
        raise UserInputError(f"The folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}).")
    return files


@dataclass
class SeriesState:
    """The series: items, position and output folder.

    Parameters
    ----------
    items : list of str
        Image paths (folder series) or image layer names (open layers).
    output : Path
        Folder of the labels files and ``series.json``.
    index : int
        The current item.
    kind : {"folder", "layers"}
    """

    items: list = field(default_factory=list)
    output: Path = Path(".")
    index: int = 0
    kind: str = "folder"

    def __post_init__(self):
        self.output = Path(self.output)
        self.items = [str(i) for i in self.items]
        if not self.items:
            raise UserInputError("The series is empty: choose a folder with images, or open image layers first.")
        self.index = min(max(int(self.index), 0), len(self.items) - 1)

    @property
    def current(self) -> str:
        return self.items[self.index]

    def stem(self, k: int | None = None) -> str:
        """A file-name stem for item ``k`` (unique: its position is added where two items share a name)."""
        k = self.index if k is None else int(k)
        name = Path(self.items[k]).stem if self.kind == "folder" else self.items[k]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "image"
        clash = sum(1 for i, other in enumerate(self.items) if (Path(other).stem if self.kind == "folder" else other) == name and i != k)
        return f"{safe}_{k:04d}" if clash else safe

    def labels_path(self, k: int | None = None) -> Path:
        """Where item ``k``'s labels are saved (``.tif``; the object table is the ``.csv`` beside it)."""
        return self.output / f"{self.stem(k)}_labels.tif"

    def table_path(self, k: int | None = None) -> Path:
        return table_path(self.labels_path(k))

    def step(self, delta: int) -> int:
        """Move by ``delta`` items (clamped to the series); returns the new index."""
        self.index = min(max(self.index + int(delta), 0), len(self.items) - 1)
        return self.index

    def save(self) -> Path:
        """Write ``series.json`` atomically (the output folder is created when missing)."""
        self.output.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"kind": self.kind, "items": self.items, "index": self.index}, indent=1)
        return write_text_atomic(self.output / STATE_FILE, text)

    @classmethod
    def load(cls, output) -> SeriesState | None:
        """The series saved in ``output`` (None when there is none or it cannot be read)."""
        path = Path(output) / STATE_FILE
        try:
            data = json.loads(path.read_text("utf-8"))
            return cls(list(data["items"]), Path(output), int(data.get("index", 0)), str(data.get("kind", "folder")))
        except (OSError, ValueError, KeyError, TypeError, UserInputError):
            return None
