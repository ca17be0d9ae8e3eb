"""Small form builders shared by the widgets (model choice, sliders, spin boxes)."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QSpinBox
from superqt import QLabeledDoubleSlider

from ..models.registry import available_models, default_model_name, get_spec

__all__ = ["model_combo", "select_data", "slider", "spin"]


def model_combo(parent=None, initial: str | None = None) -> QComboBox:
    """A combo box of the registered models (display name shown, registry name as item data)."""
    combo = QComboBox(parent)
    for name in available_models():
        spec = get_spec(name)
        combo.addItem(spec.display_name, name)
        combo.setItemData(combo.count() - 1, spec.description, Qt.ToolTipRole)
    combo.setToolTip("Segmentation model. Models marked offline need no download; SAM ViT-B/L/H download on first use.")
    if not select_data(combo, initial or default_model_name()):
        select_data(combo, default_model_name())
    return combo


def select_data(combo: QComboBox, data) -> bool:
    """Choose the item whose data is ``data``; False (nothing changed) when there is none."""
    index = combo.findData(data)
    if index < 0:
        return False
    combo.setCurrentIndex(index)
    return True


def slider(minimum: float, maximum: float, value: float, step: float, tooltip: str) -> QLabeledDoubleSlider:
    """A labelled horizontal slider with two decimals."""
    widget = QLabeledDoubleSlider(Qt.Horizontal)
    widget.setRange(minimum, maximum)
    widget.setSingleStep(step)
    widget.setDecimals(2)
    widget.setValue(value)
    widget.setToolTip(tooltip)
    return widget


def spin(minimum: int, maximum: int, value: int, tooltip: str, suffix: str = "", special: str = "") -> QSpinBox:
    """An integer spin box (``special`` is shown at the minimum, e.g. "off")."""
    widget = QSpinBox()
    widget.setRange(minimum, maximum)
    widget.setValue(value)
    widget.setToolTip(tooltip)
    if suffix:
        widget.setSuffix(suffix)
    if special:
        widget.setSpecialValueText(special)
    return widget
