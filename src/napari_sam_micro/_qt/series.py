"""Image series: step through a folder of images (or the open image layers), saving each one's labels.

*Plugins → SAM Micro → Image series*. Choose a folder of images (or **Use open image layers**)
and an output folder, then **Start**: the first image (or the one where you stopped last time:
the position is kept in ``<output>/series.json``) is opened; annotate it with the Annotator (its
labels layer is the plugin's ``[SAM labels]`` layer of that image). **Next** / **Previous** (keys
**PageDown** / **PageUp**) save the labels and their object table atomically
(``<output>/<name>_labels.tif`` + ``.csv``, :func:`~napari_sam_micro.core.export.write_labels`)
and move on; an image annotated before opens with its saved labels and table. Edits are also saved
a moment after each change, so nothing is lost if napari closes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from .._napari.features import frame_to_table, table_to_frame
from .._napari.layers import META_KEY, find_plugin_layer
from .._napari.state import ViewerState
from ..core.errors import UserInputError
from ..core.export import read_labels, read_table, write_labels
from ..core.series import SeriesState, list_images

__all__ = ["SeriesWidget", "KEY_NEXT", "KEY_PREVIOUS", "AUTOSAVE_MS"]

KEY_NEXT = "PageDown"
KEY_PREVIOUS = "PageUp"
#: Labels are saved this long after the last edit.
AUTOSAVE_MS = 2000


def _read_image(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    import imageio.v3 as iio

    return iio.imread(path)


class SeriesWidget(QWidget):
    """Dock widget stepping through an image series with atomic saving and resume.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state: SeriesState | None = None
        self._layer = None  # the shown item's image layer
        self._watched = None  # its labels layer (autosave)
        self._bound: dict = {}
        self.folder_edit = QLineEdit(self)
        self.folder_edit.setPlaceholderText("folder of images")
        self.folder_button = QPushButton("Folder…", self)
        self.layers_button = QPushButton("Use open image layers", self)
        self.output_edit = QLineEdit(self)
        self.output_edit.setPlaceholderText("output folder (default: <images>/labels)")
        self.output_button = QPushButton("Output…", self)
        self.start_button = QPushButton("Start / resume", self)
        self.previous_button = QPushButton(f"◀ Previous ({KEY_PREVIOUS})", self)
        self.next_button = QPushButton(f"Next ({KEY_NEXT}) ▶", self)
        self.status = QLabel("Choose a folder of images or use the open image layers.", self)
        self.status.setWordWrap(True)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTOSAVE_MS)
        self._timer.timeout.connect(self.save_current)
        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.folder_edit, 1)
        row.addWidget(self.folder_button)
        form.addRow("Images:", row)
        row = QHBoxLayout()
        row.addWidget(self.output_edit, 1)
        row.addWidget(self.output_button)
        form.addRow("Save to:", row)
        steps = QHBoxLayout()
        steps.addWidget(self.previous_button)
        steps.addWidget(self.next_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.layers_button)
        layout.addWidget(self.start_button)
        layout.addLayout(steps)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.folder_button.clicked.connect(self._browse_folder)
        self.output_button.clicked.connect(self._browse_output)
        self.layers_button.clicked.connect(self.use_open_layers)
        self.start_button.clicked.connect(self.start)
        self.next_button.clicked.connect(self.next)
        self.previous_button.clicked.connect(self.previous)
        self.destroyed.connect(lambda: self._unbind())  # no argument: PyQt would wrap the half-destroyed object
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        for key, func in ((KEY_NEXT, lambda v: self.next()), (KEY_PREVIOUS, lambda v: self.previous())):
            self._bound[key] = (func, self.viewer.bind_key(key, func, overwrite=True))

    # -- choosing the series --------------------------------------------------------------------
    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of images", str(Path.home()))
        if path:
            self.folder_edit.setText(path)

    def _browse_output(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder", str(Path.home()))
        if path:
            self.output_edit.setText(path)

    def _output(self, default: Path | None) -> Path:
        text = self.output_edit.text().strip()
        if text:
            return Path(text)
        if default is None:
            raise UserInputError("Choose an output folder for the labels (Save to…).")
        return default

    def start(self) -> bool:
        """Open the folder's series (resuming a saved one in the output folder) at its saved position."""
        try:
            folder = Path(self.folder_edit.text().strip())
            files = list_images(folder)
            output = self._output(folder / "labels")
            saved = SeriesState.load(output)
            index = saved.index if saved is not None and saved.kind == "folder" and saved.items == [str(f) for f in files] else 0
            self.state = SeriesState([str(f) for f in files], output, index, "folder")
            self.state.save()
        except (UserInputError, OSError) as err:
            return self._refuse(err)
        self._open(self.state.index)
        return True

    def use_open_layers(self) -> bool:
        """Make the open image layers the series (resuming a saved position in the output folder)."""
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        try:
            output = self._output(None)
            saved = SeriesState.load(output)
            index = saved.index if saved is not None and saved.kind == "layers" and saved.items == names else 0
            self.state = SeriesState(names, output, index, "layers")
            self.state.save()
        except (UserInputError, OSError) as err:
            return self._refuse(err)
        self._open(self.state.index)
        return True

    def _refuse(self, err) -> bool:
        show_warning(str(err))
        self.status.setText(str(err))
        return False

    # -- stepping ---------------------------------------------------------------------------
    def next(self) -> bool:
        return self.go(+1)

    def previous(self) -> bool:
        return self.go(-1)

    def go(self, delta: int) -> bool:
        """Save the shown image's labels, then show the item ``delta`` away (False at the ends or on error)."""
        state = self.state
        if state is None:
            return self._refuse(UserInputError("Start a series first (a folder of images, or the open image layers)."))
        if not 0 <= state.index + delta < len(state.items):
            self.status.setText("This is the " + ("last" if delta > 0 else "first") + " image of the series.")
            return False
        if not self.save_current():
            return False
        state.step(delta)
        state.save()
        self._open(state.index)
        return True

    def labels_layer(self):
        """The plugin's labels layer of the shown image (None before anything was annotated)."""
        if self._layer is None:
            return None
        return find_plugin_layer(self.viewer.layers, "output", self._layer.name)

    def save_current(self) -> bool:
        """Write the shown image's labels and object table (atomically); True when saved or nothing to save."""
        self._timer.stop()
        layer = self.labels_layer()
        if self.state is None or layer is None:
            return True
        table = frame_to_table(table_to_frame(layer.features)) if "index" in layer.features else None
        try:
            self.state.output.mkdir(parents=True, exist_ok=True)
            write_labels(self.state.labels_path(), np.asarray(layer.data), table=table)
        except (UserInputError, OSError) as err:
            return self._refuse(UserInputError(f"The labels could not be saved ({err}); the image was not changed."))
        return True

    def _open(self, k: int) -> None:
        state = self.state
        if state.kind == "folder":
            self._open_file(Path(state.items[k]))
        else:
            self._open_layer(state.items[k])
        self._watch(self.labels_layer())
        ViewerState.for_viewer(self.viewer).image_chosen(value=self._layer)  # the Annotator follows
        self.status.setText(f"Image {k + 1} of {len(state.items)}: {Path(state.items[k]).name}. Labels: {state.labels_path()}")

    def _open_file(self, path: Path) -> None:
        """Replace the previous item's layers by this image (with its saved labels, added first so the Annotator adopts them)."""
        old = self._layer
        stale = [lyr for lyr in self.viewer.layers if old is not None and (lyr is old or (lyr.metadata or {}).get(META_KEY, {}).get("image") == old.name)]
        image = _read_image(path)
        name = path.stem
        saved = self.state.labels_path()
        if saved.is_file():
            labels = read_labels(saved)
            features = read_table(self.state.table_path()) if self.state.table_path().is_file() else None
            layer = self.viewer.add_labels(labels.astype(np.uint32, copy=False), name=f"{name} [SAM labels]", metadata={META_KEY: {"role": "output", "image": name}})
            if features:
                layer.features = table_to_frame(features)
        rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
        self._layer = self.viewer.add_image(image, name=name, rgb=rgb)
        for lyr in stale:
            if lyr in self.viewer.layers:
                self.viewer.layers.remove(lyr)

    def _open_layer(self, name: str) -> None:
        """Show only this image layer (and its plugin layers) and select it."""
        target = None
        for layer in self.viewer.layers:
            if isinstance(layer, Image):
                layer.visible = layer.name == name
                target = layer if layer.name == name else target
        if target is None:
            raise UserInputError(f"The image layer '{name}' is no longer open.")
        for layer in self.viewer.layers:
            owner = (layer.metadata or {}).get(META_KEY, {}).get("image")
            if owner is not None:
                layer.visible = owner == name
        self._layer = target
        self.viewer.layers.selection.active = target

    # -- autosave ---------------------------------------------------------------------------
    def _watch(self, layer) -> None:
        if self._watched is not None:
            for emitter in (self._watched.events.data, self._watched.events.features, self._watched.events.paint):
                try:
                    emitter.disconnect(self._schedule_save)
                except (TypeError, ValueError, RuntimeError):
                    pass
        self._watched = layer
        if layer is not None:
            for emitter in (layer.events.data, layer.events.features, layer.events.paint):
                emitter.connect(self._schedule_save)

    def _on_inserted(self, event=None) -> None:
        """The Annotator made the shown image's labels layer: save its edits too."""
        layer = self.labels_layer()
        if layer is not None and layer is not self._watched:
            self._watch(layer)

    def _schedule_save(self, event=None) -> None:
        self._timer.start()

    def closeEvent(self, event):  # noqa: N802 - Qt API
        self.save_current()
        self._unbind()
        super().closeEvent(event)

    def _unbind(self) -> None:
        try:
            self.viewer.layers.events.inserted.disconnect(self._on_inserted)
        except (TypeError, ValueError, RuntimeError):
            pass
        bound, self._bound = self._bound, {}
        for key, (_func, previous) in bound.items():
            try:
                self.viewer.bind_key(key, previous, overwrite=True)
            except Exception:  # noqa: BLE001 - the viewer is closing
                pass
