"""Parameter controls shared by the widgets, as magicgui widgets.

Every setting a widget remembers is a magicgui value widget: one ``.value`` to read and set, one
``.changed`` signal, whatever the control (so :mod:`.settings` needs no per-type code). The
widgets place them in forms with :func:`form` (a magicgui ``Container`` with labels) and add its
``.native`` to their Qt layouts.
"""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, FloatSpinBox, LineEdit, SpinBox
from qtpy.QtCore import Qt

from ..models.registry import available_models, default_model_name, get_spec

__all__ = ["choice", "check", "form", "model_combo", "percent_spin", "slider", "spin", "text"]


def choice(choices, value=None, tooltip: str = "", label: str = "", item_tooltips: dict | None = None) -> ComboBox:
    """A combo box; ``choices`` are values or ``(text shown, value)`` pairs; ``item_tooltips`` by value."""
    combo = ComboBox(choices=list(choices), label=label, tooltip=tooltip)
    if value is not None:
        combo.value = value
    for index, data in enumerate(combo.choices):
        if item_tooltips and data in item_tooltips:
            combo.native.setItemData(index, item_tooltips[data], Qt.ToolTipRole)
    return combo


def model_combo(initial: str | None = None) -> ComboBox:
    """The registered models (display name shown, registry name as value); ``initial`` when registered."""
    names = available_models()
    combo = choice(
        [(get_spec(name).display_name, name) for name in names],
        tooltip="Segmentation model. Models marked offline need no download; SAM ViT-B/L/H download on first use.",
        label="Model:", item_tooltips={name: get_spec(name).description for name in names},
    )
    combo.value = initial if initial in names else default_model_name()
    return combo


def slider(minimum: float, maximum: float, value: float, step: float, tooltip: str, label: str = "") -> FloatSlider:
    """A horizontal slider with its value shown beside it."""
    return FloatSlider(value=value, min=minimum, max=maximum, step=step, tooltip=tooltip, label=label)


def spin(minimum: int, maximum: int, value: int, tooltip: str, label: str = "", step: int = 1) -> SpinBox:
    """An integer spin box (say in ``label`` what the minimum means when it is special, e.g. "0 = off")."""
    return SpinBox(value=value, min=minimum, max=maximum, step=step, tooltip=tooltip, label=label)


def percent_spin(value: float, tooltip: str, label: str = "") -> FloatSpinBox:
    """A spin box of percent, one decimal."""
    widget = FloatSpinBox(value=value, min=0.0, max=100.0, step=0.1, tooltip=tooltip, label=label)
    widget.native.setDecimals(1)
    widget.native.setSuffix(" %")
    return widget


def check(text: str, value: bool, tooltip: str) -> CheckBox:
    """A check box with its text beside it."""
    return CheckBox(text=text, value=value, tooltip=tooltip)


def text(placeholder: str, tooltip: str, label: str = "") -> LineEdit:
    """A line of text (e.g. ids, channels); read it on ``native.editingFinished``, not on each key."""
    widget = LineEdit(value="", tooltip=tooltip, label=label)
    widget.native.setPlaceholderText(placeholder)
    return widget


def form(*widgets, labels: bool = True) -> Container:
    """A magicgui form of ``widgets`` (labels beside them); place ``.native`` in a Qt layout."""
    container = Container(widgets=list(widgets), labels=labels)
    container.margins = (0, 0, 0, 0)
    return container
