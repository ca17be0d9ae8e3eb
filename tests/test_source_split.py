"""Split by acquisition (source group) and the locked test groups (evaluation.split_records)."""

import csv
from pathlib import Path

import pytest

from napari_sam_micro.core.errors import UserInputError
from napari_sam_micro.evaluation import (
    LOCKED_GROUPS,
    ImageRecord,
    format_table,
    read_index,
    select_records,
    source_group,
    split_records,
)


def _rec(dataset, name, modality, group):
    return ImageRecord(dataset, name, modality, Path("i"), Path("l"), group=group)


def _synthetic_records():
    """Fluorescence in groups of very different sizes, phase contrast in blocks, one locked group."""
    recs = []
    for g, size in enumerate((120, 40, 30, 12, 6, 3, 1)):
        recs += [_rec("dsb", f"f{g}-{i:03d}", "fluorescence", f"dsb:g{g}") for i in range(size)]
    for first, last in ((1, 12), (13, 16), (17, 18), (19, 20), (21, 29), (30, 45)):
        recs += [_rec("usi", f"set{i:02d}", "phase-contrast", f"usi:set{first:02d}-{last:02d}")
                 for i in range(first, last + 1)]
    recs += [_rec("dsb", f"h{i:02d}", "histology", "dsb:h") for i in range(20)]
    recs += [_rec("dsb", f"x{i}", "fluorescence", "dsb:locked") for i in range(4)]
    return recs


def test_source_split_keeps_each_group_on_one_side_and_assigns_every_image():
    recs = _synthetic_records()
    split = split_records(recs, by="source", locked=("dsb:locked",))
    sides = {side: {r.key for r in v} for side, v in split.items()}
    assert sum(len(v) for v in sides.values()) == len(recs)
    assert set().union(*sides.values()) == {r.key for r in recs}
    groups = {side: {r.group for r in v} for side, v in split.items()}
    assert not groups["train"] & groups["val"]
    assert not (groups["train"] | groups["val"]) & groups["test"]
    assert groups["test"] == {"dsb:locked"}
    for modality in ("fluorescence", "phase-contrast"):
        n = sum(r.modality == modality and r.group != "dsb:locked" for r in recs)
        n_val = sum(r.modality == modality for r in split["val"])
        assert 0 < n_val <= 2 * round(0.15 * n)
        assert any(r.modality == modality for r in split["train"])
    # a modality with a single source cannot be held out by source: all of it trains
    assert not any(r.modality == "histology" for r in split["val"])


def test_source_split_is_deterministic_and_depends_on_the_seed():
    recs = _synthetic_records()
    a = split_records(recs, by="source")
    b = split_records(list(reversed(recs)), by="source")
    assert [r.key for r in a["val"]] == [r.key for r in b["val"]]
    vals = {tuple(sorted({r.group for r in split_records(recs, by="source", seed=s)["val"]})) for s in range(8)}
    assert len(vals) > 1


def test_image_split_is_unchanged_by_groups():
    recs = _synthetic_records()
    plain = [ImageRecord(r.dataset, r.name, r.modality, r.image_path, r.labels_path) for r in recs]
    assert [r.key for r in split_records(recs)["val"]] == [r.key for r in split_records(plain)["val"]]
    assert split_records(recs)["test"] == []
    with pytest.raises(UserInputError):
        split_records(recs, by="folder")


def test_source_group_rules():
    row = {"name": "abc", "modality": "fluorescence", "height": "256", "width": "320", "channels": "1",
           "dtype": "uint8"}
    assert source_group("dsb2018-train", row) == "dsb2018-train:fluorescence-256x320-1ch-uint8"
    assert source_group("dsb2018-train", {**row, "group": "plate 3"}) == "dsb2018-train:plate 3"
    assert source_group("usiigaci-train", {"name": "set14"}) == "usiigaci-train:set13-16"
    assert source_group("usiigaci-train", {"name": "set03"}) == "usiigaci-train:set01-12"
    assert source_group("mine", {"name": "img7", "modality": "x"}) == "mine:img7"


def _write_index(folder: Path, rows):
    folder.mkdir(parents=True)
    with (folder / "index.csv").open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["name", "modality", "height", "width", "channels", "dtype"])
        w.writerows(rows)


def test_select_records_by_source_from_an_index(tmp_path):
    rows = [(f"a{i}", "fluorescence", 256, 256, 1, "uint8") for i in range(30)]
    rows += [(f"b{i}", "fluorescence", 520, 696, 1, "uint8") for i in range(6)]
    rows += [(f"c{i}", "fluorescence", 603, 1272, 1, "uint8") for i in range(2)]
    _write_index(tmp_path / "dsb2018-train", rows)
    recs = read_index(tmp_path)
    assert {r.group for r in recs} == {"dsb2018-train:fluorescence-256x256-1ch-uint8",
                                       "dsb2018-train:fluorescence-520x696-1ch-uint8",
                                       "dsb2018-train:fluorescence-603x1272-1ch-uint8"}
    assert "dsb2018-train:fluorescence-603x1272-1ch-uint8" in LOCKED_GROUPS
    test = select_records(tmp_path, "test", split_by="source")
    assert sorted(r.name for r in test) == ["c0", "c1"]
    val = select_records(tmp_path, "val", split_by="source")
    assert sorted(r.name for r in val) == [f"b{i}" for i in range(6)]
    with pytest.raises(UserInputError, match="source"):
        select_records(tmp_path, "test")


def _row(image, iou, kind="box"):
    return {"model": "m", "image": image, "modality": "fluorescence", "object": 1, "kind": kind, "iou": iou,
            "clicks": 0}


def test_summary_and_table_carry_intervals():
    from napari_sam_micro.evaluation import _summarise

    rows = [_row(f"img{i}", 0.6 + 0.03 * i) for i in range(10) for _ in range(3)]
    f1_rows = [{"model": "m", "image": f"img{i}", "modality": "fluorescence", "tp": 8 + i, "fp": 1, "fn": 2,
                "f1": 0.0} for i in range(5)]
    result = _summarise(["m"], False, [], rows, f1_rows, "val")
    lo, hi = result["ci"]["iou"]["m"]["box"]["fluorescence"]
    assert lo < result["iou"]["m"]["box"]["fluorescence"] < hi
    lo, hi = result["ci"]["f1"]["m"]["fluorescence"]
    assert lo < result["f1"]["m"]["fluorescence"] < hi
    table = format_table(result)
    assert f"{result['iou']['m']['box']['fluorescence']:.3f} [" in table and "bootstrap" in table
    single = _summarise(["m"], False, [], [_row("only", 0.7)], [], "val")
    assert "0.700 [" not in format_table(single) and "0.700" in format_table(single)


def test_crowded_images_are_reported_on_their_own():
    from napari_sam_micro.evaluation import _summarise

    def row(i, tp, fp, fn, crowded):
        return {"model": "m", "image": f"img{i}", "modality": "fluorescence", "tp": tp, "fp": fp, "fn": fn,
                "f1": 0.0, "crowded": crowded}

    f1_rows = [row(0, 28, 2, 31, True), row(1, 50, 5, 20, True), row(2, 30, 1, 1, False), row(3, 20, 0, 2, False)]
    result = _summarise(["m"], False, [], [], f1_rows, "val")
    crowded, other = result["crowded"]["m"]["crowded"], result["crowded"]["m"]["other"]
    assert (crowded["images"], crowded["tp"], crowded["fn"]) == (2, 78, 51)
    assert crowded["recall"] == pytest.approx(78 / 129) and other["recall"] == pytest.approx(50 / 53)
    assert crowded["f1_ci"][0] <= crowded["f1"] <= crowded["f1_ci"][1]
    assert "2 crowded image(s)" in format_table({**result, "n_objects": {}})
