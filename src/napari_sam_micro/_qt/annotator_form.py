"""The Annotator's model and image form: model, checkpoint, device, channels, contrast percentiles."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLineEdit, QPushButton, QWidget, QComboBox

from .._napari.layers import ImageGeometry
from ..core.errors import UserInputError
from ..core.preprocess import PreprocessConfig
from .forms import model_combo

__all__ = ["ModelForm", "DEVICES"]

#: Device choices; "auto" picks CUDA, then MPS, then CPU.
DEVICES = ("auto", "cpu", "cuda", "mps")


def _percentile_spin(value: float, tooltip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(0.0, 100.0)
    spin.setDecimals(1)
    spin.setSingleStep(0.1)
    spin.setValue(value)
    spin.setSuffix(" %")
    spin.setToolTip(tooltip)
    return spin


class ModelForm(QWidget):
    """Model, checkpoint, device, channel axis, channels and contrast percentiles.

    Signals are those of the controls: the Annotator connects ``model_combo``, ``device_combo``,
    ``checkpoint_edit`` (model changed) and ``channel_combo``, ``channels_edit``, the percentile
    spins (image settings changed).
    """

    def __init__(self, model: str | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.model_combo = model_combo(self, model)
        self.checkpoint_edit = QLineEdit(self)
        self.checkpoint_edit.setPlaceholderText("default weights")
        self.checkpoint_edit.setToolTip("Optional local checkpoint file (e.g. sam_vit_b_01ec64.pth) used instead of downloading.")
        self.checkpoint_button = QPushButton("Local checkpoint…", self)
        self.device_combo = QComboBox(self)
        self.device_combo.addItems(DEVICES)
        self.device_combo.setToolTip("Where the model runs: auto = CUDA GPU, then Apple MPS, then CPU.")
        self.channel_combo = QComboBox(self)
        self.channel_combo.addItems(["none", "first axis"])
        self.channel_combo.setToolTip("For a multichannel image kept in one layer: the axis holding the channels (only the first axis).")
        self.channels_edit = QLineEdit(self)
        self.channels_edit.setPlaceholderText("all (up to 3), e.g. 0,2")
        self.channels_edit.setToolTip("Channels to segment on (indices along the channel axis), at most three.")
        low, high = PreprocessConfig().percentiles
        self.low_spin = _percentile_spin(low, "Intensities below this percentile of the plane become black (contrast stretch).")
        self.high_spin = _percentile_spin(high, "Intensities above this percentile of the plane become white (contrast stretch).")
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.form = form
        form.addRow("Model:", self.model_combo)
        ckpt = QHBoxLayout()
        ckpt.addWidget(self.checkpoint_edit, 1)
        ckpt.addWidget(self.checkpoint_button)
        form.addRow("Checkpoint:", ckpt)
        form.addRow("Device:", self.device_combo)
        form.addRow("Channel axis:", self.channel_combo)
        form.addRow("Channels:", self.channels_edit)
        pct = QHBoxLayout()
        pct.addWidget(self.low_spin)
        pct.addWidget(self.high_spin)
        form.addRow("Contrast percentiles:", pct)

    def controls(self) -> dict:
        """The controls kept in the settings file (not the checkpoint: a path of one machine)."""
        return {
            "model": self.model_combo, "device": self.device_combo, "channel_axis": self.channel_combo,
            "channels": self.channels_edit, "percentile_low": self.low_spin, "percentile_high": self.high_spin,
        }

    def model_name(self) -> str:
        return str(self.model_combo.currentData())

    def device(self) -> str | None:
        text = self.device_combo.currentText()
        return None if text == "auto" else text

    def checkpoint(self) -> str | None:
        text = self.checkpoint_edit.text().strip()
        return text or None

    def channel_axis(self) -> int | None:
        """The image's channel axis chosen (0 = the first axis), or None."""
        return 0 if self.channel_combo.currentIndex() == 1 else None

    def browse_checkpoint(self) -> bool:
        """Ask for a checkpoint file; True when one was chosen."""
        path, _ = QFileDialog.getOpenFileName(self, "Local checkpoint", str(Path.home()), "Checkpoints (*.pth *.pt *.ckpt);;All files (*)")
        if path:
            self.checkpoint_edit.setText(path)
        return bool(path)

    def preprocess_config(self, geometry: ImageGeometry) -> PreprocessConfig:
        """Normalisation of the planes of the current image (raises UserInputError on bad channels or percentiles)."""
        text = self.channels_edit.text().strip()
        channels = None
        if text and geometry.channel_axis is not None:
            try:
                channels = tuple(int(c) for c in text.replace(";", ",").split(",") if c.strip())
            except ValueError:
                raise UserInputError(f"Channels must be numbers separated by commas (e.g. 0,2), not '{text}'.") from None
        low, high = float(self.low_spin.value()), float(self.high_spin.value())
        if not low < high:
            raise UserInputError(f"The lower contrast percentile ({low:g} %) must be below the upper one ({high:g} %).")
        return PreprocessConfig(
            percentiles=(low, high), channels=channels, channel_axis=-1 if geometry.channel_axis is not None else None, rgb=geometry.rgb
        )
