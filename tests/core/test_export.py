import sys

import numpy as np
import pytest
import tifffile

from napari_sam_micro.core import export
from napari_sam_micro.core.errors import UserInputError
from napari_sam_micro.core.export import read_labels, read_table, table_path, write_labels
from napari_sam_micro.core.labels import OBJECT_COLUMNS, merge_rows, object_row


def _labels(shape=(20, 30), top=7, dtype=np.uint32):
    rng = np.random.default_rng(0)
    return rng.integers(0, top + 1, size=shape).astype(dtype)


def _table():
    m = np.zeros((5, 5), bool)
    m[1:3, 1:4] = True
    return merge_rows({}, [object_row(1, m, 0.875, 0.9, "box"), object_row(2, m[:, ::-1], float("nan"), 0.1, "points")])


def _no_temp(folder):
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".png", ".npy"])
def test_round_trip_exact(tmp_path, suffix):
    labels = _labels()
    written = write_labels(tmp_path / f"seg{suffix}", labels, _table())
    assert written == [tmp_path / f"seg{suffix}", tmp_path / "seg.csv"]
    back = read_labels(written[0])
    np.testing.assert_array_equal(back, labels)
    assert _no_temp(tmp_path)


def test_tiff_dtype_and_compression(tmp_path):
    small = _labels(top=65535)
    write_labels(tmp_path / "a.tif", small)
    with tifffile.TiffFile(tmp_path / "a.tif") as tf:
        assert tf.pages[0].dtype == np.uint16
        assert tf.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    big = small.astype(np.uint32)
    big[0, 0] = 70000
    write_labels(tmp_path / "b.tif", big)
    back = read_labels(tmp_path / "b.tif")
    assert back.dtype == np.uint32 and back[0, 0] == 70000
    np.testing.assert_array_equal(back, big)
    vol = _labels(shape=(3, 4, 5))
    write_labels(tmp_path / "v.tiff", vol)
    np.testing.assert_array_equal(read_labels(tmp_path / "v.tiff"), vol)


def test_png_refuses_nd_and_big_ids(tmp_path):
    with pytest.raises(UserInputError, match="TIFF"):
        write_labels(tmp_path / "a.png", _labels(shape=(2, 4, 4)))
    big = _labels()
    big[0, 0] = 65536
    with pytest.raises(UserInputError, match="65535"):
        write_labels(tmp_path / "a.png", big)
    assert not list(tmp_path.iterdir())
    img = read_labels(write_labels(tmp_path / "b.png", _labels(top=65535))[0])
    assert img.dtype == np.uint16


def test_bad_input(tmp_path):
    with pytest.raises(UserInputError, match=".jpg"):
        write_labels(tmp_path / "a.jpg", _labels())
    with pytest.raises(UserInputError, match="whole numbers"):
        write_labels(tmp_path / "a.tif", np.zeros((3, 3), np.float32))
    with pytest.raises(UserInputError, match="negative"):
        write_labels(tmp_path / "a.tif", -np.ones((3, 3), np.int32))
    with pytest.raises(UserInputError, match="does not exist"):
        write_labels(tmp_path / "missing" / "a.tif", _labels())


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failing_writer_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, exc):
    old = _labels(top=3)
    write_labels(tmp_path / "seg.tif", old, _table())
    old_bytes = (tmp_path / "seg.tif").read_bytes()
    old_csv = (tmp_path / "seg.csv").read_bytes()

    def broken(fh, labels):
        fh.write(b"II*\x00 half a tiff")
        raise exc

    monkeypatch.setitem(export._WRITERS, ".tif", broken)
    with pytest.raises(type(exc)):
        write_labels(tmp_path / "seg.tif", _labels(top=9), {"index": [5]})
    assert (tmp_path / "seg.tif").read_bytes() == old_bytes
    assert (tmp_path / "seg.csv").read_bytes() == old_csv
    assert _no_temp(tmp_path)
    np.testing.assert_array_equal(read_labels(tmp_path / "seg.tif"), old)


def test_failing_table_write_keeps_old_image(tmp_path, monkeypatch):
    write_labels(tmp_path / "seg.npy", _labels(top=3))
    old_bytes = (tmp_path / "seg.npy").read_bytes()
    real = export._write_temp

    def flaky(path, write):
        if path.suffix == ".csv":
            raise OSError("no space left")
        return real(path, write)

    monkeypatch.setattr(export, "_write_temp", flaky)
    with pytest.raises(OSError):
        write_labels(tmp_path / "seg.npy", _labels(top=9), _table())
    assert (tmp_path / "seg.npy").read_bytes() == old_bytes
    assert not (tmp_path / "seg.csv").exists()
    assert _no_temp(tmp_path)


def test_table_round_trip(tmp_path):
    table = _table()
    table["note"] = ['comma, "quoted"', None]
    write_labels(tmp_path / "x.npy", _labels(), table)
    back = read_table(table_path(tmp_path / "x.npy"))
    assert list(back)[: len(OBJECT_COLUMNS)] == list(OBJECT_COLUMNS)
    assert back["index"].dtype == np.int64
    np.testing.assert_array_equal(back["index"], [1, 2])
    np.testing.assert_array_equal(back["area"], table["area"])
    assert back["predicted_iou"][0] == 0.875 and np.isnan(back["predicted_iou"][1])
    assert back["stability_score"][1] == 0.1  # repr round trip is exact
    assert list(back["prompt"]) == ["box", "points"]
    assert list(back["note"]) == ['comma, "quoted"', ""]


def test_table_from_dataframe(tmp_path):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(_table())
    write_labels(tmp_path / "x.tif", _labels(), df)
    back = read_table(tmp_path / "x.csv")
    np.testing.assert_array_equal(back["bbox_x1"], df["bbox_x1"].to_numpy())


def test_export_does_not_import_pandas():
    assert "pandas" not in getattr(export, "__dict__", {})
    src = open(export.__file__).read()
    assert "import pandas" not in src
    assert sys.modules.get("napari_sam_micro.core.export") is export


def test_written_file_is_not_private(tmp_path):
    path = write_labels(tmp_path / "p.npy", _labels())[0]
    assert path.stat().st_mode & 0o044 == 0o044
