"""Widget settings that survive napari: a small JSON file in the user's config folder.

Each widget keeps its controls' values under its own section (``"annotator"``, ``"everything"``,
``"refine"``) of one JSON file: ``<user config dir>/napari-sam-micro/settings.json``
(:func:`platformdirs.user_config_dir`), or the file named by ``NAPARI_SAM_MICRO_SETTINGS`` (the
tests point it at a temporary file, so they never touch the user's). A damaged file is ignored
with a warning (the defaults are used and the next change rewrites it); values a control does not
accept any more (a model that is no longer installed) are skipped.

:class:`PersistedControls` binds a widget's controls to its section: the values are restored when
the widget is built, saved on every change, and *Reset to defaults* puts back the values the
controls had before restoring.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from magicgui.widgets import LineEdit
from magicgui.widgets.bases import ValueWidget

__all__ = ["SETTINGS_ENV", "settings_path", "load_section", "save_section", "PersistedControls"]

_log = logging.getLogger(__name__)
_LOCK = threading.Lock()

#: Environment variable naming the settings file (tests, several profiles).
SETTINGS_ENV = "NAPARI_SAM_MICRO_SETTINGS"


def settings_path() -> Path:
    """The settings file: ``$NAPARI_SAM_MICRO_SETTINGS``, else the user config folder's ``settings.json``."""
    override = os.environ.get(SETTINGS_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-sam-micro", appauthor=False)) / "settings.json"


def _warn(message: str) -> None:
    _log.warning(message)
    try:
        from napari.utils.notifications import show_warning

        show_warning(message)
    except Exception:  # noqa: BLE001 - no notification manager: the log has it
        pass


def _read_all(path: Path, warn: bool = True) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as err:
        if warn:
            _warn(f"The settings file {path} is damaged ({err}); the default settings are used.")
        return {}


def load_section(section: str) -> dict:
    """The stored values of one widget (empty when none, or when the file is damaged: a warning)."""
    values = _read_all(settings_path()).get(section, {})
    return values if isinstance(values, dict) else {}


def save_section(section: str, values: dict | None) -> None:
    """Store (or with None remove) one widget's values; written atomically, failures only logged."""
    path = settings_path()
    with _LOCK:
        data = _read_all(path, warn=False)
        if values is None:
            data.pop(section, None)
        else:
            data[section] = values
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as err:  # a read-only home: settings are a convenience, never an error
            _log.warning("could not save the settings to %s: %s", path, err)


def _set_value(control: ValueWidget, value: Any) -> bool:
    """Apply a stored value; False when the control does not accept it (left as it is)."""
    try:
        control.value = value
    except (TypeError, ValueError):
        return False
    if isinstance(control, LineEdit):  # the widgets read text when editing finishes, not on each key
        control.native.editingFinished.emit()
    return True


class PersistedControls:
    """Keep some controls of a widget in the settings file under ``section``.

    Parameters
    ----------
    section : str
        The widget's key in the file.
    controls : dict of str to magicgui.widgets.bases.ValueWidget
        The controls (:mod:`.forms`): their ``value`` is stored, their ``changed`` signal saves.
    keep : iterable of str
        Names not restored this time (e.g. a model the caller asked for explicitly); still saved.
    """

    def __init__(self, section: str, controls: dict[str, ValueWidget], keep=()):
        self.section = section
        self.controls = dict(controls)
        self.defaults = self.values()
        self._restoring = False
        self.restore(skip=set(keep))
        for control in self.controls.values():
            control.changed.connect(self.save)

    def values(self) -> dict:
        """The controls' current values."""
        return {name: c.value for name, c in self.controls.items()}

    def restore(self, skip=frozenset()) -> None:
        """Apply the stored values (unknown names and refused values are ignored)."""
        stored = load_section(self.section)
        self._apply({k: v for k, v in stored.items() if k in self.controls and k not in skip})

    def _apply(self, values: dict) -> None:
        self._restoring = True
        try:
            for name, value in values.items():
                if not _set_value(self.controls[name], value):
                    _log.info("setting %s.%s=%r is not offered any more; kept %r", self.section, name, value, self.controls[name].value)
        finally:
            self._restoring = False

    def save(self, *_args) -> None:
        """Store the current values (called on every change)."""
        if not self._restoring:
            save_section(self.section, self.values())

    def reset(self) -> None:
        """Put the defaults back and forget the stored values."""
        self._apply(self.defaults)
        save_section(self.section, None)
