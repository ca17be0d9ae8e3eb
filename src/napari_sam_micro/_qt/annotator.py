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

from napari.layers import Image
from napari.utils.notifications import show_warning
from qtpy.QtCore import Qt  # noqa: F401 - tests click through it
from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from .._napari.layers import ImageGeometry
from .._napari.state import ViewerState
from ..core.errors import UserInputError
from ..core.preprocess import PreprocessConfig
from ..models.registry import get_spec
from ..session import AnnotationSession
from .annotator_form import DEVICES, ModelForm
from .annotator_layers import _HELP, KEY_CLEAR, KEY_COMMIT, KEY_NEGATIVE, KeysMixin, LayersMixin, make_unbinder
from .annotator_prompts import PromptsMixin
from .forms import check, form, spin
from .job_panel import JobPanel
from .propagate import PropagatePanel
from .layer_picker import LayerComboBox
from .objects_table import ObjectsTableWidget
from .preencode import PreEncoder
from .settings import PersistedControls
from .workers import notify_exception

__all__ = ["AnnotatorWidget", "KEY_COMMIT", "KEY_CLEAR", "KEY_NEGATIVE", "DEVICES"]

_log = logging.getLogger(__name__)




class AnnotatorWidget(PromptsMixin, LayersMixin, KeysMixin, QWidget):
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
        self._worker_kind = ""
        self._pending_preview = False
        self._image_layer = None
        self._geometry: ImageGeometry | None = None
        self._plane_key = None
        self._preview_pixels: tuple | None = None
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
        self._build(model)
        self._wire()
        self.bind_keys()
        self._on_image_changed(self.image_combo.current_layer())

    def _build(self, model) -> None:
        """Controls and layout; embedded panels are added below with :meth:`add_section`."""
        self.image_combo = LayerComboBox(self.viewer, Image, self)
        self.image_combo.setToolTip("Image layer to annotate (2D, RGB, multichannel or nD stack: the shown plane).")
        self.model_form = ModelForm(model, self)
        for name in ("model_combo", "checkpoint_edit", "checkpoint_button", "device_combo", "channel_combo", "channels_edit"):
            setattr(self, name, getattr(self.model_form, name))
        self.job_panel = JobPanel(
            "Compute embedding", "Encode the shown image plane now (otherwise done when you pick it or prompt).", "Pick an image.", self
        )
        panel = self.job_panel
        self.embed_button, self.cancel_button, self.progress, self.status = panel.run_button, panel.cancel_button, panel.progress, panel.status
        self.negative_check = check(
            "Negative points (N; Shift+click)", False, "New points mark background. Shift+click adds a negative point at any time."
        )
        self.overwrite_check = check(
            "Overwrite existing labels", False, "Off: committed masks only fill unlabelled pixels, existing objects are kept."
        )
        self.preencode_check = check(
            "Pre-encode objects while idle", True,
            "256-px models: encode the windows around the detected objects in the background, nearest the view "
            "centre first, so that a click or box on them is instant. Pauses whenever you prompt.",
        )
        self.preencoder = PreEncoder(enabled=True)
        self.commit_button = QPushButton("Commit (C)", self)
        self.commit_button.setToolTip("Write the preview into the labels layer as new object(s); Ctrl+Z there undoes.")
        self.clear_button = QPushButton("Clear prompts (Shift+C)", self)
        self.clear_button.setToolTip("Remove the points and boxes of the shown plane and the preview.")
        self.reset_button = QPushButton("Reset to defaults", self)
        self.reset_button.setToolTip("Put the model, device, channel and contrast settings back to their defaults.")
        self.objects = ObjectsTableWidget(self.viewer, parent=self)
        self.disk_cache_spin = spin(
            0, 1_000_000, self.state.disk_budget_mb,  # NAPARI_SAM_MICRO_DISK_CACHE_MB, else off
            "Keep embeddings on disk too (this size at most, oldest removed first): re-opening an image "
            "with the same model and contrast settings then needs no encoding. Off by default.",
            "Disk cache (MB, 0 = off):", step=256,
        )
        image_form = QFormLayout()
        image_form.addRow("Image:", self.image_combo)
        actions = QHBoxLayout()
        actions.addWidget(self.commit_button)
        actions.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.addLayout(image_form)
        layout.addWidget(self.model_form)
        layout.addWidget(self.job_panel)
        layout.addWidget(form(self.negative_check, self.overwrite_check, self.preencode_check, self.disk_cache_spin).native)
        layout.addLayout(actions)
        layout.addWidget(self.reset_button)
        layout.addWidget(self.objects, 1)
        self.propagate_panel = PropagatePanel(self)
        self.add_section(self.propagate_panel)
        self.setToolTip(_HELP)
        controls = {**self.model_form.controls(), "preencode": self.preencode_check, "overwrite": self.overwrite_check,
                    "disk_cache_mb": self.disk_cache_spin}
        self.settings = PersistedControls("annotator", controls, keep=("model",) if model else ())

    def add_section(self, widget: QWidget) -> None:
        """Embed a panel (e.g. propagation) below the commit buttons, above the objects table."""
        layout = self.layout()
        layout.insertWidget(layout.indexOf(self.objects), widget)

    def _wire(self) -> None:
        self.image_combo.layer_changed.connect(self._on_image_changed)
        self.preencode_check.changed.connect(self._on_preencode_toggled)
        self.model_combo.changed.connect(self._on_model_changed)
        self.device_combo.changed.connect(self._on_model_changed)
        self.checkpoint_edit.native.editingFinished.connect(self._on_model_changed)
        self.checkpoint_button.clicked.connect(self._browse_checkpoint)
        self.channel_combo.changed.connect(self._on_image_settings_changed)
        self.channels_edit.native.editingFinished.connect(self._on_image_settings_changed)
        self.model_form.low_spin.native.editingFinished.connect(self._on_image_settings_changed)
        self.model_form.high_spin.native.editingFinished.connect(self._on_image_settings_changed)
        self.embed_button.clicked.connect(self.compute_embedding)
        self.commit_button.clicked.connect(self.commit)
        self.clear_button.clicked.connect(self.clear_prompts)
        self.reset_button.clicked.connect(self._reset_settings)
        self.negative_check.changed.connect(self._on_negative_toggled)
        self.disk_cache_spin.changed.connect(self._on_disk_cache_changed)
        if self.disk_cache_spin.value != self.state.disk_budget_mb:  # restored from the settings file
            self._on_disk_cache_changed(self.disk_cache_spin.value)
        self._connect(self.viewer.dims.events.current_step, self._on_dims_changed)
        self._connect(self.viewer.dims.events.ndisplay, self._on_dims_changed)
        self._connect(self.state.image_chosen, self._on_image_chosen)
        unbind = make_unbinder(self.viewer, self._bound_keys)
        self.destroyed.connect(lambda: unbind())  # no argument: PyQt would wrap the half-destroyed object

    def _on_disk_cache_changed(self, megabytes: int) -> None:
        self.state.set_disk_budget(megabytes)
        if megabytes and self.state.disk_budget_mb != megabytes:  # below the minimum: show what is used
            self.disk_cache_spin.value = self.state.disk_budget_mb

    def _on_image_chosen(self, event) -> None:
        """Another widget (the image series) opened the image layer ``event.value``: annotate it."""
        layer = event.value
        if layer in self.viewer.layers and layer is not self.image_combo.current_layer():
            self.image_combo.set_layer(layer)

    def _reset_settings(self) -> None:
        self.settings.reset()
        self._on_image_settings_changed()

    @property
    def worker(self):
        """The running job's worker (model loading or encoding), or None."""
        return self.job_panel.worker

    # -- settings ----------------------------------------------------------------------------
    def model_name(self) -> str:
        return self.model_form.model_name()

    def device(self) -> str | None:
        return self.model_form.device()

    def checkpoint(self) -> str | None:
        return self.model_form.checkpoint()

    def _browse_checkpoint(self) -> None:
        if self.model_form.browse_checkpoint():
            self._on_model_changed()

    def preprocess_config(self, geometry: ImageGeometry) -> PreprocessConfig:
        """Normalisation of the planes of the current image (raises UserInputError on bad channels)."""
        return self.model_form.preprocess_config(geometry)

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
        if session.large_plane:  # read window by window: each prompt encodes its own window, nothing whole
            self.job_panel.reset_progress(1)
            h, w = session.image_hw
            self.status.setText(f"Large plane ({w} × {h}): each prompt is encoded in its window. " + _HELP)
            if self._current_prompt_count():
                self._update_preview()
            else:
                self.start_preencoding()
            return
        if session.embedding is not None:
            self.job_panel.reset_progress(1)
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
        if self._closed or self.is_busy() or session is None or (session.embedding is None and not session.large_plane):
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
        self.job_panel.start(
            job,
            on_result=on_result,
            on_error=lambda err: self._on_worker_error(err, context),
            on_finished=self._on_worker_finished,
            context=context,
        )

    def _on_worker_error(self, err, context: str) -> None:
        if self._closed:
            return
        self._pending_preview = False
        self._after_worker = None
        notify_exception(err, context)
        self.status.setText(str(err))

    def _on_worker_finished(self, aborted: bool) -> None:
        self._worker_kind = ""
        self.jobs_finished += 1
        if self._closed:
            return
        follow_up, self._after_worker = self._after_worker, None
        restart, self._restart_after_worker = self._restart_after_worker, False
        if restart:
            self.compute_embedding()
        elif aborted:
            self._pending_preview = False
        elif follow_up is not None:
            follow_up()
        elif self._pending_preview:
            self._update_preview()
        else:
            self.start_preencoding()

    def cancel(self) -> None:
        """Cancel the running job (its result is discarded)."""
        self.job_panel.cancel()
