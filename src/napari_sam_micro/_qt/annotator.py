"""The Annotator dock widget: click / box prompts → Segment Anything masks → labels.

How to use (also in the widget's tooltips)
------------------------------------------
1. Pick the image layer and a model; the image embedding is computed in the background (progress
   bar, *Cancel*). The same image and model again reuse the cached embedding.
2. Click on the image to add a **positive** point; **Shift+click** (or tick *Negative points*,
   key **N**) adds a **negative** point. Draw rectangles in the "SAM boxes" layer (key R there)
   for box prompts; several boxes segment several objects at once.
3. The preview ("SAM preview" layer) follows every change of the prompts.
4. **C** (or *Commit*) writes the object(s) into the "SAM labels" layer with the next free ids,
   without touching existing labels unless *Overwrite existing labels* is ticked. Ctrl+Z in that
   layer undoes a commit. **Shift+C** (or *Clear prompts*) discards the prompts.

The widget is thin: segmentation state lives in :class:`~napari_sam_micro.session.AnnotationSession`,
layer handling in :mod:`napari_sam_micro._napari`, background work in :mod:`._qt.workers`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .._napari.commit import check_writable, commit_items
from .._napari.layers import (
    ImageGeometry,
    current_plane_index,
    ensure_plugin_layers,
    image_geometry,
    plane_data,
)
from .._napari.prompts import indices_on_plane, plane_prompts
from .._napari.state import ViewerState, embedding_model_id
from ..core.errors import ImageError, UserInputError
from ..core.preprocess import PreprocessConfig
from ..models.registry import available_models, default_model_name, get_spec
from ..session import AnnotationSession, EmbeddingNotReady, Prediction
from .preencode import PreEncoder
from .propagate import PropagatePanel
from .objects_table import LayerComboBox, ObjectsTableWidget
from .workers import notify_exception, start_job

__all__ = ["AnnotatorWidget", "KEY_COMMIT", "KEY_CLEAR", "KEY_NEGATIVE", "DEVICES"]

_log = logging.getLogger(__name__)

#: Key bindings active while the widget lives (bound on the viewer).
KEY_COMMIT = "C"
KEY_CLEAR = "Shift-C"
KEY_NEGATIVE = "N"

#: Device choices; "auto" picks CUDA, then MPS, then CPU.
DEVICES = ("auto", "cpu", "cuda", "mps")

_HELP = (
    "Click on the image: positive point. Shift+click (or 'Negative points', key N): negative point.\n"
    "Draw rectangles in the 'SAM boxes' layer for box prompts (several boxes = several objects).\n"
    "C: commit the preview into the labels layer (Ctrl+Z there undoes). Shift+C: clear prompts."
)


class AnnotatorWidget(QWidget):
    """Dock widget for prompt-based annotation with Segment Anything.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).
    model : str, optional
        Initial model name (default :func:`~napari_sam_micro.models.registry.default_model_name`).
    auto_embed : bool
        Compute the embedding as soon as an image and model are chosen (else on the first prompt
        or the *Compute embedding* button).
    """

    def __init__(self, napari_viewer, model: str | None = None, auto_embed: bool = True, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = ViewerState.for_viewer(napari_viewer)
        self.auto_embed = bool(auto_embed)
        self.session: AnnotationSession | None = None
        self.layers = None  # PluginLayers of the current image
        self.worker = None
        self._worker_kind = ""
        self._pending_preview = False
        self._image_layer = None
        self._geometry: ImageGeometry | None = None
        self._plane_key = None
        self._preview_index: tuple | None = None
        self._clearing = False
        self._bound_keys: dict = {}
        self._connected: list = []
        self._closed = False
        self._after_worker = None
        self._restart_after_worker = False
        self._job_target = None
        #: embeddings dropped because the image changed while they were computed (for tests / status)
        self.dropped_results = 0
        #: background jobs finished (any outcome)
        self.jobs_finished = 0

        # -- controls ---------------------------------------------------------------------
        self.image_combo = LayerComboBox(napari_viewer, Image, self)
        self.image_combo.setToolTip("Image layer to annotate (2D, RGB, multichannel or nD stack: the shown plane).")
        self.model_combo = QComboBox(self)
        for name in available_models():
            spec = get_spec(name)
            self.model_combo.addItem(spec.display_name, name)
            self.model_combo.setItemData(self.model_combo.count() - 1, spec.description, Qt.ToolTipRole)
        self.model_combo.setToolTip("Segmentation model. LiteMedSAM works offline; SAM ViT-B/L/H download on first use.")
        self.checkpoint_edit = QLineEdit(self)
        self.checkpoint_edit.setPlaceholderText("default weights")
        self.checkpoint_edit.setToolTip(
            "Optional local checkpoint file (e.g. sam_vit_b_01ec64.pth) used instead of downloading."
        )
        self.checkpoint_button = QPushButton("Local checkpoint…", self)
        self.device_combo = QComboBox(self)
        self.device_combo.addItems(DEVICES)
        self.device_combo.setToolTip("Where the model runs: auto = CUDA GPU, then Apple MPS, then CPU.")
        self.channel_combo = QComboBox(self)
        self.channel_combo.addItems(["none", "first axis"])
        self.channel_combo.setToolTip(
            "For a multichannel image kept in one layer: the axis holding the channels (only the first axis)."
        )
        self.channels_edit = QLineEdit(self)
        self.channels_edit.setPlaceholderText("all (up to 3), e.g. 0,2")
        self.channels_edit.setToolTip("Channels to segment on (indices along the channel axis), at most three.")

        self.embed_button = QPushButton("Compute embedding", self)
        self.embed_button.setToolTip("Encode the shown image plane now (otherwise done when you pick it or prompt).")
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("Pick an image.", self)
        self.status.setWordWrap(True)

        self.negative_check = QCheckBox("Negative points (N; Shift+click)", self)
        self.negative_check.setToolTip("New points mark background. Shift+click adds a negative point at any time.")
        self.overwrite_check = QCheckBox("Overwrite existing labels", self)
        self.overwrite_check.setToolTip("Off: committed masks only fill unlabelled pixels, existing objects are kept.")
        self.preencode_check = QCheckBox("Pre-encode objects while idle", self)
        self.preencode_check.setChecked(True)
        self.preencode_check.setToolTip(
            "256-px models: encode the windows around the detected objects in the background, nearest the view "
            "centre first, so that a click or box on them is instant. Pauses whenever you prompt."
        )
        self.preencoder = PreEncoder(enabled=True)
        self.commit_button = QPushButton("Commit (C)", self)
        self.commit_button.setToolTip("Write the preview into the labels layer as new object(s); Ctrl+Z there undoes.")
        self.clear_button = QPushButton("Clear prompts (Shift+C)", self)
        self.clear_button.setToolTip("Remove the points and boxes of the shown plane and the preview.")

        self.objects = ObjectsTableWidget(napari_viewer, parent=self)

        form = QFormLayout()
        form.addRow("Image:", self.image_combo)
        form.addRow("Model:", self.model_combo)
        ckpt = QHBoxLayout()
        ckpt.addWidget(self.checkpoint_edit, 1)
        ckpt.addWidget(self.checkpoint_button)
        form.addRow("Checkpoint:", ckpt)
        form.addRow("Device:", self.device_combo)
        form.addRow("Channel axis:", self.channel_combo)
        form.addRow("Channels:", self.channels_edit)
        run = QHBoxLayout()
        run.addWidget(self.embed_button)
        run.addWidget(self.cancel_button)
        actions = QHBoxLayout()
        actions.addWidget(self.commit_button)
        actions.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(run)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.negative_check)
        layout.addWidget(self.overwrite_check)
        layout.addWidget(self.preencode_check)
        layout.addLayout(actions)
        layout.addWidget(PropagatePanel(self))
        layout.addWidget(self.objects, 1)
        self.setToolTip(_HELP)

        initial = model or default_model_name()
        index = self.model_combo.findData(initial)
        if index < 0:
            index = self.model_combo.findData(default_model_name())
        self.model_combo.setCurrentIndex(max(index, 0))

        # -- wiring -----------------------------------------------------------------------
        self.image_combo.layer_changed.connect(self._on_image_changed)
        self.preencode_check.toggled.connect(self._on_preencode_toggled)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.device_combo.currentIndexChanged.connect(self._on_model_changed)
        self.checkpoint_edit.editingFinished.connect(self._on_model_changed)
        self.checkpoint_button.clicked.connect(self._browse_checkpoint)
        self.channel_combo.currentIndexChanged.connect(self._on_image_settings_changed)
        self.channels_edit.editingFinished.connect(self._on_image_settings_changed)
        self.embed_button.clicked.connect(self.compute_embedding)
        self.cancel_button.clicked.connect(self.cancel)
        self.commit_button.clicked.connect(self.commit)
        self.clear_button.clicked.connect(self.clear_prompts)
        self.negative_check.toggled.connect(self._on_negative_toggled)
        self._connect(napari_viewer.dims.events.current_step, self._on_dims_changed)
        self._connect(napari_viewer.dims.events.ndisplay, self._on_dims_changed)
        self.destroyed.connect(_make_unbinder(napari_viewer, self._bound_keys))
        self.bind_keys()
        self._on_image_changed(self.image_combo.current_layer())

    # -- key bindings ------------------------------------------------------------------------
    def bind_keys(self) -> None:
        """Bind C (commit), Shift+C (clear prompts) and N (negative points) on the viewer."""
        if self._bound_keys or self._closed:
            return
        for key, func in (
            (KEY_COMMIT, lambda viewer: self.commit()),
            (KEY_CLEAR, lambda viewer: self.clear_prompts()),
            (KEY_NEGATIVE, lambda viewer: self.negative_check.toggle()),
        ):
            previous = self.viewer.bind_key(key, func, overwrite=True)
            self._bound_keys[key] = (func, previous)

    def unbind_keys(self) -> None:
        """Release the keys (restoring what they were bound to before)."""
        _make_unbinder(self.viewer, self._bound_keys)()

    def showEvent(self, event):  # noqa: N802 - Qt API
        super().showEvent(event)
        self.bind_keys()

    def hideEvent(self, event):  # noqa: N802 - Qt API
        if not event.spontaneous():
            self.unbind_keys()
        super().hideEvent(event)

    def closeEvent(self, event):  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Release keys, mouse callbacks and event connections; cancel the worker."""
        self._closed = True
        self.unbind_keys()
        self.cancel()
        self.preencoder.stop()
        self._detach_layers()
        for emitter, callback in self._connected:
            try:
                emitter.disconnect(callback)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._connected.clear()

    def _connect(self, emitter, callback) -> None:
        emitter.connect(callback)
        self._connected.append((emitter, callback))

    # -- settings ----------------------------------------------------------------------------
    def model_name(self) -> str:
        return str(self.model_combo.currentData())

    def device(self) -> str | None:
        text = self.device_combo.currentText()
        return None if text == "auto" else text

    def checkpoint(self) -> str | None:
        text = self.checkpoint_edit.text().strip()
        return text or None

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Local checkpoint", str(Path.home()), "Checkpoints (*.pth *.pt *.ckpt);;All files (*)")
        if path:
            self.checkpoint_edit.setText(path)
            self._on_model_changed()

    def preprocess_config(self, geometry: ImageGeometry) -> PreprocessConfig:
        """Normalisation of the planes of the current image (raises UserInputError on bad channels)."""
        text = self.channels_edit.text().strip()
        channels = None
        if text and geometry.channel_axis is not None:
            try:
                channels = tuple(int(c) for c in text.replace(";", ",").split(",") if c.strip())
            except ValueError:
                raise UserInputError(f"Channels must be numbers separated by commas (e.g. 0,2), not '{text}'.") from None
        return PreprocessConfig(
            channels=channels,
            channel_axis=-1 if geometry.channel_axis is not None else None,
            rgb=geometry.rgb,
        )

    # -- image / layers ----------------------------------------------------------------------
    def _detach_layers(self) -> None:
        layers = self.layers
        if layers is not None:
            for emitter, cb in (
                (layers.prompts.events.data, self._on_prompts_changed),
                (layers.boxes.events.data, self._on_prompts_changed),
            ):
                try:
                    emitter.disconnect(cb)
                except (TypeError, ValueError, RuntimeError):
                    pass
            try:
                layers.prompts.mouse_drag_callbacks.remove(self._on_prompt_press)
            except ValueError:
                pass
        if self._image_layer is not None:
            try:
                self._image_layer.events.data.disconnect(self._on_image_data)
            except (TypeError, ValueError, RuntimeError):
                pass
        self.layers = None
        self._image_layer = None
        self._geometry = None
        self._plane_key = None
        self._preview_index = None

    def _on_image_changed(self, layer=None) -> None:
        if self._closed:
            return
        self._invalidate()
        self._detach_layers()
        self.preencoder.stop()
        if self.is_busy() and self._worker_kind == "embedding":
            self.cancel()  # its result would be for the previous image
        if layer is None:
            self.status.setText("Open or pick an image layer to annotate.")
            return
        try:
            geometry = image_geometry(layer, 0 if self.channel_combo.currentIndex() == 1 else None)
        except UserInputError as err:
            show_warning(str(err))
            self.status.setText(str(err))
            return
        self._image_layer = layer
        self._geometry = geometry
        layer.events.data.connect(self._on_image_data)
        self._attach_plugin_layers()
        self.status.setText(_HELP)
        if self.auto_embed:
            self.compute_embedding()

    def _attach_plugin_layers(self):
        """Make sure the prompt / preview / output layers exist (recreated if the user deleted one)."""
        layer, geometry = self._image_layer, self._geometry
        if layer is None or geometry is None:
            return None
        current = self.layers
        if current is not None and all(
            lyr in self.viewer.layers for lyr in (current.prompts, current.boxes, current.preview, current.output)
        ):
            return current
        if current is not None:
            for emitter in (current.prompts.events.data, current.boxes.events.data):
                try:
                    emitter.disconnect(self._on_prompts_changed)
                except (TypeError, ValueError, RuntimeError):
                    pass
        select = current is None
        layers = ensure_plugin_layers(self.viewer, layer, geometry, select_prompts=select)
        self.layers = layers
        layers.prompts.events.data.connect(self._on_prompts_changed)
        layers.boxes.events.data.connect(self._on_prompts_changed)
        if self._on_prompt_press not in layers.prompts.mouse_drag_callbacks:
            layers.prompts.mouse_drag_callbacks.insert(0, self._on_prompt_press)
        layers.prompts.feature_defaults = {"positive": not self.negative_check.isChecked()}
        try:
            self.objects.set_layer(layers.output)
        except ValueError:
            pass
        return layers

    def _on_image_settings_changed(self, *_):
        self._on_image_changed(self.image_combo.current_layer())

    def _invalidate(self) -> None:
        """The displayed plane, image, model or settings changed: drop the preview, mark results stale."""
        self._plane_key = None
        self._clear_preview_layer()
        if self.session is not None:
            self.session.reset()

    def _on_image_data(self, event=None) -> None:
        """The image's data changed: a running or finished embedding of the old data is stale."""
        self._invalidate()
        if self.is_busy() and self._worker_kind == "embedding":
            self._restart_after_worker = self.auto_embed
            self.cancel()
        elif self.auto_embed:
            self.compute_embedding()

    def _on_dims_changed(self, event=None) -> None:
        """Another plane is shown: its embedding is computed when it is first prompted."""
        if self._image_layer is None:
            return
        self._invalidate()
        if self.is_busy() and self._worker_kind == "embedding":
            self.cancel()

    def _target(self):
        """``(index, config)`` of the displayed plane; raises UserInputError."""
        layer, geometry = self._image_layer, self._geometry
        if layer is None or geometry is None:
            raise ImageError("Pick an image layer to annotate first.")
        if layer not in self.viewer.layers:
            raise ImageError(f"The image layer '{layer.name}' was removed from the viewer.")
        index = current_plane_index(self.viewer, layer, geometry)
        config = self.preprocess_config(geometry)
        return index, config

    def _model_id(self) -> str:
        # the embeddings' identity (weights checksum, checkpoint file): keys of a disk cache too
        return embedding_model_id(self.model_name(), self.checkpoint())

    def _sync_session(self, model) -> tuple:
        """Point the session at the displayed plane with ``model``; returns the plane index."""
        index, config = self._target()
        spec = get_spec(self.model_name())
        model_id = self._model_id()
        options = AnnotationSession.options_for(spec)
        if self.session is None:
            self.session = AnnotationSession(model, self.state.cache, config, model_id=model_id, **options)
        elif self.session.model is not model or self.session.model_id != model_id:
            self.session.set_model(model, model_id=model_id, **options)
        key = (id(self._image_layer), index, config)
        if key != self._plane_key or not self.session.has_image:
            plane = plane_data(self._image_layer, self._geometry, index)
            self.session.set_image(plane, config)
            self._plane_key = key
        return index

    # -- model + embedding -------------------------------------------------------------------
    def _on_model_changed(self, *_):
        self._invalidate()
        if self.is_busy():
            self._restart_after_worker = self.auto_embed and self._image_layer is not None
            self.cancel()
        elif self.auto_embed and self._image_layer is not None:
            self.compute_embedding()

    def _loaded_model(self):
        """The memoised model for the current choice, or None when it must be loaded first."""
        store = self.state.models
        key = store.key(self.model_name(), self.device(), self.checkpoint())
        if key in store:
            return store.get(self.model_name(), self.device(), self.checkpoint())
        return None

    def is_busy(self) -> bool:
        """A background job (model loading or encoding) is running."""
        return self.worker is not None

    def compute_embedding(self) -> None:
        """Load the model if needed and encode the displayed plane in the background (cached)."""
        if self._closed:
            return
        if self.is_busy():
            # a job for an older choice: cancel it and start again when it has stopped
            if self._worker_kind == "embedding" and self._job_target != self._current_target():
                self._restart_after_worker = True
                self.cancel()
            return
        try:
            model = self._loaded_model()
        except Exception as err:  # noqa: BLE001 - unknown model / device: tell the user
            notify_exception(err, "Choosing the model")
            return
        if model is None:
            self._start_model_load()
            return
        try:
            self._sync_session(model)
        except UserInputError as err:
            show_warning(str(err))
            self.status.setText(str(err))
            return
        session = self.session
        if session.embedding is not None:
            self._set_progress(1, 1)
            self.status.setText("Embedding ready (from the cache). " + _HELP)
            if self._current_prompt_count():
                self._update_preview()
            return
        generation = session.generation
        job = session.embedding_job()
        self._start_worker(
            "embedding",
            job,
            on_result=lambda emb: self._on_embedding_done(emb, generation),
            context="Computing the image embedding",
        )
        self._job_target = self._current_target()
        self.status.setText(f"Computing the embedding with {get_spec(self.model_name()).display_name}…")

    def start_preencoding(self) -> bool:
        """Pre-encode the shown plane's object windows in the background (256-px models, when idle)."""
        session = self.session
        if self._closed or self.is_busy() or session is None or session.embedding is None:
            return False
        if not self.preencoder.resume():
            return self.preencoder.start(session, self._view_centre())
        return True

    def _view_centre(self):
        """``(row, col)`` of the view centre in the image's data coordinates, or None."""
        try:
            return tuple(float(v) for v in self._image_layer.world_to_data(self.viewer.camera.center)[-2:])
        except Exception:  # noqa: BLE001 - any viewer geometry problem: start from the plane's centre
            return None

    def _on_preencode_toggled(self, checked: bool) -> None:
        self.preencoder.enabled = bool(checked)
        if checked:
            self.start_preencoding()
        else:
            self.preencoder.stop()

    def _current_target(self):
        return (self._model_id(), self.device(), self._plane_key)

    def _start_model_load(self) -> None:
        name, device, checkpoint = self.model_name(), self.device(), self.checkpoint()
        job = self.state.models.get_job(name, device=device, checkpoint=checkpoint)
        self._start_worker("model", job, on_result=self._on_model_loaded, context=f"Loading the model '{name}'")
        self.status.setText(f"Loading {get_spec(name).display_name}…")

    def _on_model_loaded(self, model) -> None:
        self._after_worker = self.compute_embedding

    def _on_embedding_done(self, embedding, generation: int) -> None:
        if self._closed:
            return
        session = self.session
        if session is None or not session.accept_embedding(embedding, generation):
            self.dropped_results += 1
            _log.info("dropped an embedding computed for an image plane that is no longer shown")
            return
        self.status.setText("Embedding ready. " + _HELP)
        self._pending_preview = self._current_prompt_count() > 0
        if not self._pending_preview:
            self._after_worker = self.start_preencoding

    def _start_worker(self, kind: str, job, on_result, context: str) -> None:
        self._worker_kind = kind
        self._after_worker = None
        self._restart_after_worker = False
        self._job_target = None
        self.cancel_button.setEnabled(True)
        self.embed_button.setEnabled(False)
        self._set_progress(0, 0)
        self.worker = start_job(
            job,
            on_progress=self._on_progress,
            on_result=on_result,
            on_error=lambda err: self._on_worker_error(err, context),
            on_finished=self._on_worker_finished,
            context=context,
        )

    def _on_progress(self, report) -> None:
        if self._closed:
            return
        self._set_progress(report.done, report.total)
        if report.message:
            self.progress.setFormat(f"{report.message} %p%")

    def _set_progress(self, done: int, total: int) -> None:
        if total <= 0:
            self.progress.setRange(0, 0)  # busy indicator
        else:
            self.progress.setRange(0, int(total))
            self.progress.setValue(int(done))

    def _on_worker_error(self, err, context: str) -> None:
        if self._closed:
            return
        self._pending_preview = False
        self._after_worker = None
        notify_exception(err, context)
        self.status.setText(str(err))

    def _on_worker_finished(self) -> None:
        aborted = self.worker is not None and self.worker.abort_requested
        self.worker = None
        self._worker_kind = ""
        self.jobs_finished += 1
        if self._closed:
            return
        self.cancel_button.setEnabled(False)
        self.embed_button.setEnabled(True)
        self.progress.setRange(0, 1)
        self.progress.setValue(0 if aborted else 1)
        self.progress.setFormat("%p%")
        follow_up, self._after_worker = self._after_worker, None
        restart, self._restart_after_worker = self._restart_after_worker, False
        if restart:
            self.compute_embedding()
        elif aborted:
            self.status.setText("Cancelled.")
            self._pending_preview = False
        elif follow_up is not None:
            follow_up()
        elif self._pending_preview:
            self._update_preview()
        else:
            self.start_preencoding()

    def cancel(self) -> None:
        """Cancel the running job (its result is discarded)."""
        if self.worker is not None:
            self.worker.quit()
            self.status.setText("Cancelling…")

    # -- prompts → preview -------------------------------------------------------------------
    def _on_prompt_press(self, layer, event):
        """Before napari's add mode adds the point (on release): Shift (or the toggle) makes it negative."""
        if event.type == "mouse_press" and layer.mode == "add":
            negative = "Shift" in event.modifiers or self.negative_check.isChecked()
            layer.feature_defaults = {"positive": not negative}

    def _on_negative_toggled(self, checked: bool) -> None:
        if self.layers is not None:
            self.layers.prompts.feature_defaults = {"positive": not checked}

    def _on_prompts_changed(self, event=None) -> None:
        action = getattr(event, "action", None)
        action = str(action).lower().split(".")[-1]
        if self._clearing or action in ("adding", "removing", "changing"):
            return
        layers = self.layers
        if action == "added" and layers is not None and getattr(event, "source", None) is layers.prompts:
            # a Shift+click made only that point negative; new points follow the toggle again
            layers.prompts.feature_defaults = {"positive": not self.negative_check.isChecked()}
        self._update_preview()

    def _current_prompt_count(self) -> int:
        layers = self.layers
        if layers is None:
            return 0
        return len(layers.prompts.data) + layers.boxes.nshapes

    def current_prompts(self):
        """Prompts of the displayed plane (SAM order) and notes for the user; raises UserInputError."""
        layers = self._attach_plugin_layers()
        if layers is None:
            raise ImageError("Pick an image layer to annotate first.")
        index, _ = self._target()
        prompts, notes = plane_prompts(layers.prompts, layers.boxes, self._image_layer, self._geometry, index)
        return prompts, notes, index

    def _update_preview(self) -> Prediction | None:
        """Decode the current prompts (on the GUI thread, from cached embeddings) and show the preview."""
        self._pending_preview = False
        if self._closed or self._image_layer is None:
            return None
        try:
            prompts, notes, index = self.current_prompts()
        except UserInputError as err:
            show_warning(str(err))
            self._clear_preview_layer()
            return None
        if prompts.is_empty:
            self._clear_preview_layer()
            if self.session is not None:
                self.session.clear_preview()
            return None
        self.preencoder.pause()  # a prompt never waits behind the pre-encoding queue
        if self.is_busy():
            self._pending_preview = True
            return None
        model = self._loaded_model()
        if model is None or self.session is None:
            self._pending_preview = True
            self.compute_embedding()
            return None
        try:
            self._sync_session(model)
            prediction = self.session.predict(prompts)
        except EmbeddingNotReady as need:
            self._pending_preview = True
            session = self.session
            if None in need.windows and session.embedding is None:
                self.compute_embedding()
                return None
            job = session.embeddings_job(need.windows)
            self._start_worker("embedding", job, on_result=lambda _n: None, context="Encoding the prompt window")
            self.status.setText("Encoding the region around the prompt…")
            return None
        except UserInputError as err:
            show_warning(str(err))
            self._clear_preview_layer()
            return None
        for note in (*notes, *prediction.warnings):
            show_info(note)
        self._show_prediction(prediction, index)
        self.start_preencoding()
        ious = ", ".join(f"{o.predicted_iou:.2f}" for o in prediction.objects)
        self.status.setText(
            f"{len(prediction.objects)} object(s) in the preview (predicted IoU {ious}). "
            "C commits, Shift+C clears."
        )
        return prediction

    def _show_prediction(self, prediction: Prediction, index: tuple) -> None:
        layers = self.layers
        preview = layers.preview
        image = prediction.label_image(dtype=preview.data.dtype)
        self._clear_preview_layer(refresh=False)
        if index:
            preview.data[index] = image
        else:
            preview.data[...] = image
        self._preview_index = index
        preview.refresh()

    def _clear_preview_layer(self, refresh: bool = True) -> None:
        layers = self.layers
        if layers is None or self._preview_index is None or layers.preview not in self.viewer.layers:
            return
        index = self._preview_index
        if index:
            layers.preview.data[index] = 0
        else:
            layers.preview.data[...] = 0
        self._preview_index = None
        if refresh:
            layers.preview.refresh()

    # -- commit / clear ----------------------------------------------------------------------
    def commit(self) -> list[int]:
        """Write the preview into the output labels layer (one undo step); returns the new ids."""
        if self._closed:
            return []
        session = self.session
        prediction = session.preview if session is not None else None
        if prediction is None or prediction.generation != session.generation:
            prediction = self._update_preview()
        if prediction is None:
            if self.is_busy() or self._pending_preview:
                show_info("The mask is still being computed; commit again when the preview appears.")
            else:
                show_warning("There is nothing to commit: add a point or draw a box on the object first.")
            return []
        layers = self._attach_plugin_layers()
        try:
            index, _ = self._target()
            output = layers.output
            check_writable(output)  # before planning: a lazy volume is not read for nothing
            items = session.commit_plan(
                output.data, overwrite=self.overwrite_check.isChecked(), leading=index, prediction=prediction
            )
            if not items:
                if not any(obj is not None and obj.mask.any() for obj in prediction.objects):
                    show_warning(
                        "The model found no object at these prompts (the mask is empty), so nothing was "
                        "added. Click nearer the object's centre or draw a box around it."
                    )
                else:
                    show_warning(
                        "The mask lies entirely on existing labels, so nothing was added. "
                        "Tick 'Overwrite existing labels' to replace them."
                    )
                return []
            ids = commit_items(output, items)
        except UserInputError as err:
            show_warning(str(err))
            return []
        self.clear_prompts()
        self.objects.refresh()
        self.status.setText(f"Committed object(s) {', '.join(map(str, ids))}. Ctrl+Z in the labels layer undoes.")
        return ids

    def clear_prompts(self) -> None:
        """Remove the points and boxes of the displayed plane and the preview."""
        layers = self.layers
        if layers is None:
            return
        self._clearing = True
        try:
            try:
                index, _ = self._target()
            except UserInputError:
                index = None
            for layer in (layers.prompts, layers.boxes):
                if index is None:
                    on_plane = list(range(len(layer.data)))
                else:
                    on_plane = indices_on_plane(layer, self._image_layer, self._geometry, index)
                if on_plane:
                    layer.selected_data = set(on_plane)
                    layer.remove_selected()
        finally:
            self._clearing = False
        self._clear_preview_layer()
        if self.session is not None:
            self.session.clear_preview()


def _make_unbinder(viewer, bound: dict):
    """A callable releasing ``bound`` keys of ``viewer`` (safe from ``destroyed`` handlers)."""

    def unbind(*_args):
        from napari.utils.key_bindings import coerce_keybinding

        for key, (func, previous) in list(bound.items()):
            try:
                current = viewer.keymap.get(coerce_keybinding(key))
                if current is func:
                    viewer.bind_key(key, previous if previous is not None else None, overwrite=True)
            except Exception:  # noqa: BLE001 - the viewer may be gone already
                pass
            bound.pop(key, None)

    return unbind
