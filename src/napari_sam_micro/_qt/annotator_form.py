"""The Annotator's model and image form: model, checkpoint, device, channels, contrast percentiles.

The controls are magicgui widgets (:mod:`.forms`) in one magicgui form.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import PushButton
from qtpy.QtWidgets import QFileDialog, QVBoxLayout, QWidget

from .._napari.layers import ImageGeometry
from ..core.errors import UserInputError
from ..core.preprocess import PreprocessConfig
from .forms import choice, form, model_combo, percent_spin, text

__all__ = ["ModelForm", "DEVICES", "CHANNEL_AXES"]

#: Device choices; "auto" picks CUDA, then MPS, then CPU.
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Channel axis choices: none, or the first axis of the layer's data.
CHANNEL_AXES = ("none", "first axis")


class ModelForm(QWidget):
    """Model, checkpoint, device, channel axis, channels and contrast percentiles.

    Signals are those of the controls: the Annotator connects ``model_combo``, ``device_combo``,
    ``checkpoint_edit`` (model changed) and ``channel_combo``, ``channels_edit``, the percentile
    spins (image settings changed). Line edits and spins are read when editing finishes
    (``native.editingFinished``), not on each key.
    """

    def __init__(self, model: str | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.model_combo = model_combo(model)
        self.checkpoint_edit = text(
            "default weights", "Optional local checkpoint file (e.g. sam_vit_b_01ec64.pth) used instead of downloading.", "Checkpoint:"
        )
        self.checkpoint_button = PushButton(text="Local checkpoint…", tooltip="Choose a checkpoint file on this computer.")
        self.device_combo = choice(DEVICES, tooltip="Where the model runs: auto = CUDA GPU, then Apple MPS, then CPU.", label="Device:")
        self.channel_combo = choice(
            CHANNEL_AXES, tooltip="For a multichannel image kept in one layer: the axis holding the channels (only the first axis).",
            label="Channel axis:",
        )
        self.channels_edit = text(
            "all (up to 3), e.g. 0,2", "Channels to segment on (indices along the channel axis), at most three.", "Channels:"
        )
        low, high = PreprocessConfig().percentiles
        self.low_spin = percent_spin(low, "Intensities below this percentile of the plane become black (contrast stretch).", "Contrast low:")
        self.high_spin = percent_spin(high, "Intensities above this percentile of the plane become white (contrast stretch).", "Contrast high:")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        controls = (self.model_combo, self.checkpoint_edit, self.checkpoint_button, self.device_combo, self.channel_combo,
                    self.channels_edit, self.low_spin, self.high_spin)
        layout.addWidget(form(*controls).native)

    def controls(self) -> dict:
        """The controls kept in the settings file (not the checkpoint: a path of one machine)."""
        return {
            "model": self.model_combo, "device": self.device_combo, "channel_axis": self.channel_combo,
            "channels": self.channels_edit, "percentile_low": self.low_spin, "percentile_high": self.high_spin,
        }

    def model_name(self) -> str:
        return str(self.model_combo.value)

    def device(self) -> str | None:
        device = str(self.device_combo.value)
        return None if device == "auto" else device

    def checkpoint(self) -> str | None:
        path = self.checkpoint_edit.value.strip()
        return path or None

    def channel_axis(self) -> int | None:
        """The image's channel axis chosen (0 = the first axis), or None."""
        return 0 if self.channel_combo.value == CHANNEL_AXES[1] else None

    def browse_checkpoint(self) -> bool:
        """Ask for a checkpoint file; True when one was chosen."""
        path, _ = QFileDialog.getOpenFileName(self, "Local checkpoint", str(Path.home()), "Checkpoints (*.pth *.pt *.ckpt);;All files (*)")
        if path:
            self.checkpoint_edit.value = path
        return bool(path)

    def preprocess_config(self, geometry: ImageGeometry) -> PreprocessConfig:
        """Normalisation of the planes of the current image (raises UserInputError on bad channels or percentiles)."""
        text = self.channels_edit.value.strip()
        channels = None
        if text and geometry.channel_axis is not None:
            try:
                channels = tuple(int(c) for c in text.replace(";", ",").split(",") if c.strip())
            except ValueError:
                raise UserInputError(f"Channels must be numbers separated by commas (e.g. 0,2), not '{text}'.") from None
        low, high = float(self.low_spin.value), float(self.high_spin.value)
        if not low < high:
            raise UserInputError(f"The lower contrast percentile ({low:g} %) must be below the upper one ({high:g} %).")
        return PreprocessConfig(
            percentiles=(low, high), channels=channels, channel_axis=-1 if geometry.channel_axis is not None else None, rgb=geometry.rgb
        )
