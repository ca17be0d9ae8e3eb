"""Widget settings survive a new widget instance, reset to defaults, and a damaged file is ignored."""

from __future__ import annotations

import json
import logging
import os

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.components import ViewerModel  # noqa: E402

from napari_sam_micro._qt.everything import EverythingWidget  # noqa: E402
from napari_sam_micro._qt.refine import RefineWidget  # noqa: E402
from napari_sam_micro._qt.settings import SETTINGS_ENV, load_section, settings_path  # noqa: E402


def test_tests_never_touch_the_users_settings(tmp_path):
    assert settings_path() == tmp_path / "settings.json"
    assert os.environ[SETTINGS_ENV] == str(tmp_path / "settings.json")


def test_everything_settings_are_restored_in_a_new_widget_and_reset(qtbot):
    viewer = ViewerModel()
    first = EverythingWidget(viewer)
    qtbot.addWidget(first)
    defaults = first.settings.values()
    first.iou_slider.value = 0.5
    first.points_spin.value = 12
    first.fill_holes_check.value = True
    assert first.seed_options().fewer_windows is False
    first.fewer_windows_check.value = True
    assert first.seed_options().fewer_windows is True  # what the seeds-mode run gets
    first.mode_combo.value = "grid"
    stored = load_section("everything")
    assert stored["iou"] == pytest.approx(0.5) and stored["points"] == 12 and stored["fill_holes"] is True
    assert stored["fewer_windows"] is True

    second = EverythingWidget(viewer)
    qtbot.addWidget(second)
    assert second.iou_slider.value == pytest.approx(0.5)
    assert second.points_spin.value == 12 and second.fill_holes_check.value
    assert second.fewer_windows_check.value
    assert second.mode_combo.value == "grid"

    second.reset_button.click()
    assert second.settings.values() == defaults
    assert load_section("everything") == {}
    third = EverythingWidget(viewer)
    qtbot.addWidget(third)
    assert third.settings.values() == defaults


def test_an_explicit_model_wins_and_unknown_values_are_skipped(qtbot, tmp_path):
    settings_path().write_text(json.dumps({"refine": {"model": "no-such-model", "strategy": "box+mask", "overwrite": True}}))
    viewer = ViewerModel()
    widget = RefineWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.strategy_combo.value == "box+mask" and widget.overwrite_check.value
    assert widget.model_name() != "no-such-model"  # not installed: the default stays
    widget.model_combo.value = "tiny-test"
    explicit = RefineWidget(viewer, model=widget.model_combo.choices[0])
    qtbot.addWidget(explicit)
    assert explicit.model_name() == widget.model_combo.choices[0]


def test_a_damaged_settings_file_gives_the_defaults_with_a_warning(qtbot, caplog):
    viewer = ViewerModel()
    fresh = EverythingWidget(viewer)
    qtbot.addWidget(fresh)
    defaults = fresh.settings.values()
    settings_path().write_text("{ not json")
    with caplog.at_level(logging.WARNING):
        widget = EverythingWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.settings.values() == defaults
    assert any("damaged" in r.getMessage() for r in caplog.records)
    widget.points_spin.value = 20  # the next change rewrites a valid file
    assert load_section("everything")["points"] == 20


def test_annotator_settings_are_restored_and_reset(qtbot):
    from napari_sam_micro._qt.annotator import AnnotatorWidget

    viewer = ViewerModel()
    first = AnnotatorWidget(viewer, auto_embed=False)
    qtbot.addWidget(first)
    defaults = first.settings.values()
    first.device_combo.value = "cpu"
    first.channel_combo.value = "first axis"
    first.channels_edit.value = "0,2"
    first.channels_edit.native.editingFinished.emit()
    first.model_form.low_spin.value = 2.0
    first.model_form.high_spin.value = 99.0
    first.preencode_check.value = False

    second = AnnotatorWidget(viewer, auto_embed=False)
    qtbot.addWidget(second)
    assert second.device() == "cpu" and second.model_form.channel_axis() == 0
    assert second.channels_edit.value == "0,2" and not second.preencode_check.value
    assert (second.model_form.low_spin.value, second.model_form.high_spin.value) == (2.0, 99.0)
    second.reset_button.click()
    assert second.settings.values() == defaults
    for w in (first, second):
        w.shutdown()


def test_every_remembered_control_is_a_magicgui_widget(qtbot):
    """One value API for all settings: magicgui value widgets, saved on their `changed` signal."""
    from magicgui.widgets.bases import ValueWidget

    from napari_sam_micro._qt.annotator import AnnotatorWidget

    viewer = ViewerModel()
    widgets = [AnnotatorWidget(viewer, auto_embed=False), EverythingWidget(viewer), RefineWidget(viewer)]
    for widget in widgets:
        qtbot.addWidget(widget)
        assert widget.settings.controls
        for name, control in widget.settings.controls.items():
            assert isinstance(control, ValueWidget), name
    widgets[0].shutdown()
