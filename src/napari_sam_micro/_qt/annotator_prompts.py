"""The Annotator's prompts → preview → commit path (a mixin of :class:`~._qt.annotator.AnnotatorWidget`).

Prompts of the shown plane are decoded on the GUI thread from cached embeddings; a missing window
is encoded in the widget's job and the preview follows when it is ready. Notifications go through
``napari.utils.notifications`` (looked up at call time).
"""

from __future__ import annotations

from napari.utils import notifications

from .._napari.commit import check_writable, commit_items
from .._napari.preview import clear_preview, paint_preview
from .._napari.prompts import indices_on_plane, plane_prompts
from ..core.errors import ImageError, UserInputError
from ..session import EmbeddingNotReady, Prediction

__all__ = ["PromptsMixin"]


class PromptsMixin:
    """Prompt handling, preview layer, commit and clear of the Annotator."""

    # -- prompts → preview -------------------------------------------------------------------
    def _on_prompt_press(self, layer, event):
        """Before napari's add mode adds the point (on release): Shift (or the toggle) makes it negative."""
        if event.type == "mouse_press" and layer.mode == "add":
            negative = "Shift" in event.modifiers or self.negative_check.value
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
            layers.prompts.feature_defaults = {"positive": not self.negative_check.value}
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
            notifications.show_warning(str(err))
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
            notifications.show_warning(str(err))
            self._clear_preview_layer()
            return None
        for note in (*notes, *prediction.warnings):
            notifications.show_info(note)
        self._show_prediction(prediction, index)
        self.start_preencoding()
        ious = ", ".join(f"{o.predicted_iou:.2f}" for o in prediction.objects)
        self.status.setText(
            f"{len(prediction.objects)} object(s) in the preview (predicted IoU {ious}). "
            "C commits, Shift+C clears."
        )
        return prediction

    def _show_prediction(self, prediction: Prediction, index: tuple) -> None:
        preview = self.layers.preview
        self._clear_preview_layer()
        # object pixels only, refreshed where they changed: no whole-plane image per prompt
        self._preview_pixels = paint_preview(preview, prediction.objects, index)

    def _clear_preview_layer(self) -> None:
        layers = self.layers
        pixels, self._preview_pixels = self._preview_pixels, None
        if layers is not None and layers.preview in self.viewer.layers:
            clear_preview(layers.preview, pixels)

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
                notifications.show_info("The mask is still being computed; commit again when the preview appears.")
            else:
                notifications.show_warning("There is nothing to commit: add a point or draw a box on the object first.")
            return []
        layers = self._attach_plugin_layers()
        try:
            index, _ = self._target()
            output = layers.output
            check_writable(output)  # before planning: a lazy volume is not read for nothing
            items = session.commit_plan(
                output.data, overwrite=self.overwrite_check.value, leading=index, prediction=prediction
            )
            if not items:
                if not any(obj is not None and obj.crop.any() for obj in prediction.objects):
                    notifications.show_warning(
                        "The model found no object at these prompts (the mask is empty), so nothing was "
                        "added. Click nearer the object's centre or draw a box around it."
                    )
                else:
                    notifications.show_warning(
                        "The mask lies entirely on existing labels, so nothing was added. "
                        "Tick 'Overwrite existing labels' to replace them."
                    )
                return []
            ids = commit_items(output, items)
        except UserInputError as err:
            notifications.show_warning(str(err))
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
