"""The Annotator's image and plugin layers: attach, detach, follow the shown plane (a mixin).

Also the key bindings (C, Shift+C, N) bound on the viewer while the widget is shown.
"""

from __future__ import annotations

from napari.utils import notifications

from .._napari.layers import current_plane_index, ensure_plugin_layers, image_geometry, plane_data
from .._napari.state import embedding_model_id
from ..core.errors import ImageError, UserInputError
from ..models.registry import get_spec
from ..session import AnnotationSession

__all__ = ["_HELP", "LayersMixin", "KeysMixin", "make_unbinder", "KEY_COMMIT", "KEY_CLEAR", "KEY_NEGATIVE"]

#: Key bindings active while the widget lives (bound on the viewer).
KEY_COMMIT = "C"
KEY_CLEAR = "Shift-C"
KEY_NEGATIVE = "N"

_HELP = (
    "Click on the image: positive point. Shift+click (or 'Negative points', key N): negative point.\n"
    "Draw rectangles in the 'SAM boxes' layer for box prompts (several boxes = several objects).\n"
    "C: commit the preview into the labels layer (Ctrl+Z there undoes). Shift+C: clear prompts."
)


class KeysMixin:
    """Key bindings, show / hide / close and the release of every connection."""

    # -- key bindings ------------------------------------------------------------------------
    def bind_keys(self) -> None:
        """Bind C (commit), Shift+C (clear prompts) and N (negative points) on the viewer."""
        if self._bound_keys or self._closed:
            return
        for key, func in (
            (KEY_COMMIT, lambda viewer: self.commit()),
            (KEY_CLEAR, lambda viewer: self.clear_prompts()),
            (KEY_NEGATIVE, lambda viewer: setattr(self.negative_check, "value", not self.negative_check.value)),
        ):
            previous = self.viewer.bind_key(key, func, overwrite=True)
            self._bound_keys[key] = (func, previous)

    def unbind_keys(self) -> None:
        """Release the keys (restoring what they were bound to before)."""
        make_unbinder(self.viewer, self._bound_keys)()

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
        panel = getattr(self, "propagate_panel", None)
        if panel is not None:
            panel.shutdown()
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


class LayersMixin:
    """The image layer, its plane, the prompt / preview / output layers and the session's plane."""

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
        self._preview_pixels = None

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
            geometry = image_geometry(layer, self.model_form.channel_axis())
        except UserInputError as err:
            notifications.show_warning(str(err))
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
        layers.prompts.feature_defaults = {"positive": not self.negative_check.value}
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


def make_unbinder(viewer, bound: dict):
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
