"""A layer picker that follows a viewer's layer list (a magicgui ``ComboBox``)."""

from __future__ import annotations

from magicgui.widgets import ComboBox
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QWidget

__all__ = ["LayerComboBox"]


class LayerComboBox(QWidget):
    """A layer picker (a magicgui ``ComboBox``) listing the viewer's layers of one type, kept in sync with ``viewer.layers``.

    magicgui's own napari layer choices find the ``napari.Viewer`` among the widget's Qt parents,
    which a widget built on a bare ``ViewerModel`` (the offscreen tests) does not have; this one
    is given its viewer and rebuilds the magicgui choices on the layer list's events (inserted,
    removed, moved, renamed), keeps the chosen layer through them, and chooses a newly added
    layer of its type when the chosen one is gone.

    Parameters
    ----------
    viewer : napari.Viewer or ViewerModel
        Viewer whose layer list is followed.
    layer_type : type
        ``napari.layers.Image`` or ``napari.layers.Labels`` …
    allow_none : bool
        Offer an empty entry (no layer).

    Attributes
    ----------
    combo : magicgui.widgets.ComboBox
        The picker; its ``value`` is the chosen layer (or None).

    Signals
    -------
    layer_changed(object)
        The chosen layer (or None).
    """

    layer_changed = Signal(object)

    def __init__(self, viewer, layer_type, parent=None, allow_none: bool = False):
        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self._allow_none = allow_none
        self._layers: list = []
        self._last = None
        self.combo = ComboBox(choices=[])
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo.native)
        events = viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            getattr(events, name).connect(self._refresh)
        self.combo.changed.connect(self._on_index)
        self._refresh()

    def layers(self) -> list:
        """Layers currently offered, in list order (None for the empty entry)."""
        return list(self._layers)

    def current_layer(self):
        """The chosen layer, or None."""
        return self.combo.value if self._layers else None

    def currentText(self) -> str:  # noqa: N802 - the QComboBox name, kept for callers
        """The chosen layer's name ("" for none)."""
        return self.combo.native.currentText()

    def set_layer(self, layer) -> None:
        """Choose ``layer`` (must be in the viewer and of the right type)."""
        if not any(candidate is layer for candidate in self._layers):
            raise ValueError(f"layer {getattr(layer, 'name', layer)!r} is not offered by this list")
        self.combo.value = layer

    def _refresh(self, event=None) -> None:
        try:
            current = self.current_layer()
        except RuntimeError:  # the Qt object was deleted; the viewer outlived us
            return
        for layer in self._layers:
            if layer is not None:
                layer.events.name.disconnect(self._refresh)
        layers = [layer for layer in self._viewer.layers if isinstance(layer, self._type)]
        if self._allow_none:
            layers = [None, *layers]
        self._layers = layers
        with self.combo.changed.blocked():
            self.combo.choices = []  # rebuilt in the layer list's order (magicgui appends new choices)
            self.combo.choices = [("" if layer is None else layer.name, layer) for layer in layers]
            for layer in layers:
                if layer is not None:
                    layer.events.name.connect(self._refresh)
            if any(layer is current for layer in layers):
                self.combo.value = current
            elif event is not None and getattr(event, "type", "") == "inserted" and isinstance(event.value, self._type):
                self.combo.value = event.value
            elif layers:
                self.combo.value = layers[-1] if not self._allow_none else None
        self._on_index()

    def _on_index(self, *_args) -> None:
        layer = self.current_layer()
        if layer is not self._last:
            self._last = layer
            self.layer_changed.emit(layer)
