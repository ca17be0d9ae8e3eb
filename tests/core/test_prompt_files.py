"""Prompt files for ``segment --prompts``: CSV and GeoJSON boxes / points, grouping, image matching, errors."""

from __future__ import annotations

import json

import pytest

from napari_sam_micro.core.errors import UserInputError
from napari_sam_micro.core.prompt_files import prompts_for_image, read_prompt_file


def test_csv_boxes_points_and_objects(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text(
        "image,object,x0,y0,x1,y1,x,y,label\n"
        "a.tif,n1,10,20,30,44,,,\n"
        "a.tif,n1,,,,,15,25,1\n"      # a click refining n1's box
        "a.tif,n2,,,,,50,60,\n"        # label defaults to 1
        "a.tif,n2,,,,,52,61,0\n"       # a background click of the same object
        ",,70,70,90,95,,,\n"           # no image: every input; no object: its own
        "b,,1,2,3,4,,,\n"
    )
    objs = read_prompt_file(path)
    assert [o.name for o in objs] == ["n1", "n2", "row 6", "row 7"]
    n1, n2 = objs[:2]
    assert n1.box_xyxy == (10.0, 20.0, 30.0, 44.0) and n1.points_xy == ((15.0, 25.0),) and n1.describe() == "box+points"
    assert n2.box_xyxy is None and n2.labels == (1, 0) and n2.describe() == "points"
    assert [o.name for o in prompts_for_image(objs, tmp_path / "a.tif")] == ["n1", "n2", "row 6"]
    assert [o.name for o in prompts_for_image(objs, tmp_path / "b.ome.tif")] == ["row 6", "row 7"]


def test_geojson_polygons_are_boxes_and_points_are_clicks(tmp_path):
    path = tmp_path / "qupath.geojson"
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[5, 6], [25, 6], [25, 30], [5, 30], [5, 6]]]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [40.5, 41.5]}, "properties": {}},
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[60, 60], [66, 61]]},
         "properties": {"object": "cell", "image": "x.tif"}},
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    box, point, multi = read_prompt_file(path)
    assert box.box_xyxy == (5.0, 6.0, 25.0, 30.0) and box.describe() == "box"
    assert point.points_xy == ((40.5, 41.5),) and point.labels == (1,)
    assert multi.image == "x.tif" and multi.points_xy == ((60.0, 60.0), (66.0, 61.0))


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("p.csv", "a,b\n1,2\n", "needs the columns"),
        ("p.csv", "x0,y0,x1,y1\n10,10,5,20\n", "x1 > x0"),
        ("p.csv", "x,y\n3,abc\n", "line 2.*'y' must be a number"),
        ("p.csv", "x,y,label\n3,4,2\n", "'label' must be 1"),
        ("p.csv", "x,y,label\n3,4,0\n", "only background points"),
        ("p.csv", "x0,y0,x1,y1\n", "holds no box or point"),
        ("p.geojson", "{not json", "not valid JSON"),
        ("p.geojson", json.dumps({"type": "FeatureCollection", "features": [{"geometry": {"type": "LineString", "coordinates": []}}]}), "not a prompt"),
        ("p.txt", "x,y\n1,2\n", ".csv or .geojson"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserInputError, match=match):
        read_prompt_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        read_prompt_file(tmp_path / "none.csv")
