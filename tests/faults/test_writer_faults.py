"""Injected faults while saving a label image and its object table (issue 12, defect 4).

Each step of :func:`napari_sam_micro.core.export.write_labels` is made to fail in turn (disk full
while writing either temporary file, no hard links and no room for a backup, each ``os.replace``,
the roll-back itself). After every failure the previous image and table must be intact and
belong together, and no temporary file may be left behind.
"""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from napari_sam_micro.core import export
from napari_sam_micro.core.export import read_labels, read_table, write_labels

tifffile = pytest.importorskip("tifffile")


def _labels(n):
    data = np.zeros((20, 30), np.uint16)
    for k in range(1, n + 1):
        data[k : k + 2, 2 * k : 2 * k + 3] = k
    return data


def _table(n):
    return {"index": list(range(1, n + 1)), "area": [6] * n}


@pytest.fixture
def saved(tmp_path):
    """A folder with a good earlier save (2 objects); returns (path, image bytes, csv bytes)."""
    path = tmp_path / "cells.tif"
    write_labels(path, _labels(2), table=_table(2))
    return path, path.read_bytes(), path.with_suffix(".csv").read_bytes()


def _assert_untouched(saved):
    path, image, table = saved
    assert path.read_bytes() == image
    assert path.with_suffix(".csv").read_bytes() == table
    assert sorted(p.name for p in path.parent.iterdir()) == ["cells.csv", "cells.tif"]  # no temp, no backup
    assert len(read_table(path.with_suffix(".csv"))["index"]) == int(read_labels(path).max())


def _fail_nth(monkeypatch, name, n, exc=None):
    """Make ``os.<name>`` (as export calls it) raise on its n-th call (1-based) only."""
    real = getattr(os, name)
    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            raise exc or OSError(errno.EACCES, "file is locked (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(export.os, name, fake)
    return calls


def test_disk_full_while_writing_the_image(saved, monkeypatch):
    def full(fh, labels):
        fh.write(b"II*\0partial")
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setitem(export._WRITERS, ".tif", full)
    with pytest.raises(OSError, match="No space"):
        write_labels(saved[0], _labels(5), table=_table(5))
    _assert_untouched(saved)


def test_disk_full_while_writing_the_table(saved, monkeypatch):
    _fail_nth(monkeypatch, "fsync", 2, OSError(errno.ENOSPC, "No space left on device (injected)"))
    with pytest.raises(OSError, match="No space"):
        write_labels(saved[0], _labels(5), table=_table(5))
    _assert_untouched(saved)


def test_no_room_for_the_backup(saved, monkeypatch):
    monkeypatch.setattr(export.os, "link", lambda *a: (_ for _ in ()).throw(OSError(errno.EPERM, "no hard links")))

    def no_copy(src, dst, **kwargs):
        with open(dst, "wb") as fh:  # a partial copy, then the disk is full
            fh.write(b"II*\0")
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(export.shutil, "copy2", no_copy)
    with pytest.raises(OSError, match="No space"):
        write_labels(saved[0], _labels(5), table=_table(5))
    _assert_untouched(saved)


def test_backup_by_copy_when_hard_links_are_not_supported(saved, monkeypatch):
    monkeypatch.setattr(export.os, "link", lambda *a: (_ for _ in ()).throw(OSError(errno.EPERM, "no hard links")))
    _fail_nth(monkeypatch, "replace", 2)  # the table cannot replace its old version
    with pytest.raises(OSError, match="locked"):
        write_labels(saved[0], _labels(5), table=_table(5))
    _assert_untouched(saved)


def test_replacing_the_image_fails(saved, monkeypatch):
    _fail_nth(monkeypatch, "replace", 1)
    with pytest.raises(OSError, match="locked"):
        write_labels(saved[0], _labels(5), table=_table(5))
    _assert_untouched(saved)


def test_replacing_the_table_fails_rolls_the_image_back(saved, monkeypatch):
    """The defect: the image was replaced, the table was not, and ids and table disagreed."""
    _fail_nth(monkeypatch, "replace", 2)
    with pytest.raises(OSError, match="locked"):
        write_labels(saved[0], _labels(5), table=_table(5))
    _assert_untouched(saved)


def test_replacing_the_table_fails_on_a_first_save_leaves_nothing(tmp_path, monkeypatch):
    _fail_nth(monkeypatch, "replace", 2)
    with pytest.raises(OSError, match="locked"):
        write_labels(tmp_path / "new.tif", _labels(3), table=_table(3))
    assert list(tmp_path.iterdir()) == []


def test_failed_roll_back_names_the_kept_backup(saved, monkeypatch):
    real = os.replace
    calls = []

    def fake(src, dst):
        calls.append((src, dst))
        if len(calls) >= 2:  # the table's replace, then the restore of the image
            raise OSError(errno.EACCES, "file is locked (injected)")
        return real(src, dst)

    monkeypatch.setattr(export.os, "replace", fake)
    with pytest.raises(OSError, match=r"could not be put back.*previous version is kept as") as info:
        write_labels(saved[0], _labels(5), table=_table(5))
    backup = calls[-1][0]
    assert backup in str(info.value)
    assert open(backup, "rb").read() == saved[1]  # the old image survives, and the user is told where


def test_interrupted_save_keeps_the_previous_pair(saved, monkeypatch):
    _fail_nth(monkeypatch, "replace", 2, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        write_labels(saved[0], _labels(5), table=_table(5))
    _assert_untouched(saved)


def test_successful_save_after_faults_replaces_both(saved):
    write_labels(saved[0], _labels(4), table=_table(4))
    assert int(read_labels(saved[0]).max()) == 4
    assert read_table(saved[0].with_suffix(".csv"))["index"].tolist() == [1, 2, 3, 4]
    assert sorted(p.name for p in saved[0].parent.iterdir()) == ["cells.csv", "cells.tif"]


def test_read_only_folder(saved, monkeypatch):
    """What a read-only folder does (simulated: the tests may run as root, which ignores permissions)."""

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied (injected)", str(saved[0].parent))

    monkeypatch.setattr(export.tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError):
        write_labels(saved[0], _labels(5), table=_table(5))
    _assert_untouched(saved)
