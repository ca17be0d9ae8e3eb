"""Prompts read from files: a CSV table or GeoJSON (e.g. QuPath annotations) of boxes and points.

Used by ``napari-sam-micro segment --prompts FILE``: each object prompt becomes one object of the
output labels. Coordinates are pixels in ``(x, y)`` = (column, row) order, as in SAM, QuPath's
GeoJSON and ImageJ tables; :class:`~napari_sam_micro.core.prompts.Prompts` takes them as they are.

**CSV**: a header, then one row per box or point. Columns:

* ``x0, y0, x1, y1``: a box (one object), or
* ``x, y``: a point, with ``label`` (1 = object, the default; 0 = background);
* ``object`` (optional): rows with the same value are one object (a box and the points that
  refine it, or several clicks); without it every row is its own object;
* ``image`` (optional): the input file the row belongs to (its name or its stem, e.g.
  ``field_01.tif`` or ``field_01``); empty or missing = every input.

**GeoJSON**: a ``FeatureCollection`` (or a list of features). A ``Polygon`` / ``MultiPolygon``
(QuPath's rectangles and outlines) gives its bounding box, a ``Point`` one click, a ``MultiPoint``
several clicks of one object. ``properties`` may hold ``label`` (0 / 1, points), ``object`` and
``image``, as in the CSV.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import UserInputError

__all__ = ["ObjectPrompt", "read_prompt_file", "prompts_for_image"]

_BOX = ("x0", "y0", "x1", "y1")


@dataclass(frozen=True)
class ObjectPrompt:
    """The prompts of one object read from a file.

    Attributes
    ----------
    image : str
        Input name or stem it belongs to; ``""`` = every input.
    name : str
        Its ``object`` value, or where it was read (``row 3``, ``feature 2``).
    box_xyxy : tuple of 4 float or None
        ``(x0, y0, x1, y1)`` pixels.
    points_xy : tuple of (x, y)
    labels : tuple of int
        1 = object, 0 = background, one per point.
    """

    image: str
    name: str
    box_xyxy: tuple[float, float, float, float] | None = None
    points_xy: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()

    def describe(self) -> str:
        """``box`` / ``box+points`` / ``points`` (the table's ``prompt`` column)."""
        if self.box_xyxy is not None:
            return "box+points" if self.points_xy else "box"
        return "points"


def _number(value, where: str, column: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{where}: '{column}' must be a number, got {value!r}.") from None
    if not math.isfinite(out):
        raise UserInputError(f"{where}: '{column}' must be a finite number, got {value!r}.")
    return out


def _label(value, where: str) -> int:
    if value in (None, ""):
        return 1
    number = _number(value, where, "label")
    if number not in (0.0, 1.0):
        raise UserInputError(f"{where}: 'label' must be 1 (object) or 0 (background), got {value!r}.")
    return int(number)


class _Objects:
    """Rows merged into objects by (image, object name), in the order they first appear."""

    def __init__(self):
        self.items: dict[tuple[str, str], dict] = {}

    def get(self, image: str, name: str) -> dict:
        return self.items.setdefault((image, name), {"box": None, "points": [], "labels": []})

    def add_box(self, image: str, name: str, box, where: str) -> None:
        x0, y0, x1, y1 = box
        if not (x1 > x0 and y1 > y0):
            raise UserInputError(f"{where}: a box needs x1 > x0 and y1 > y0, got {box}.")
        obj = self.get(image, name)
        if obj["box"] is not None:
            raise UserInputError(f"{where}: object {name!r} already has a box (one box per object).")
        obj["box"] = tuple(float(v) for v in box)

    def add_point(self, image: str, name: str, xy, label: int) -> None:
        obj = self.get(image, name)
        obj["points"].append((float(xy[0]), float(xy[1])))
        obj["labels"].append(int(label))

    def result(self, source: str) -> list[ObjectPrompt]:
        out = []
        for (image, name), obj in self.items.items():
            if obj["box"] is None and not any(obj["labels"]):
                raise UserInputError(f"{source}: object {name!r} has only background points (add a box or a positive point).")
            out.append(ObjectPrompt(image, name, obj["box"], tuple(obj["points"]), tuple(obj["labels"])))
        if not out:
            raise UserInputError(f"{source} holds no box or point.")
        return out


def _read_csv(path: Path) -> list[ObjectPrompt]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip().lower(): c for c in (reader.fieldnames or []) if c}
        has_box, has_point = all(c in columns for c in _BOX), all(c in columns for c in ("x", "y"))
        if not (has_box or has_point):
            raise UserInputError(f"{path}: a prompt table needs the columns x0, y0, x1, y1 (boxes) or x, y (points); "
                                 f"it has {', '.join(columns) or 'none'}.")
        objects = _Objects()
        for k, row in enumerate(reader, start=2):
            get = {c: (row.get(orig) or "").strip() for c, orig in columns.items()}
            where = f"{path.name} line {k}"
            image, name = get.get("image", ""), get.get("object", "") or f"row {k}"
            if has_box and any(get[c] for c in _BOX):
                objects.add_box(image, name, [_number(get[c], where, c) for c in _BOX], where)
            elif has_point and (get["x"] or get["y"]):
                xy = (_number(get["x"], where, "x"), _number(get["y"], where, "y"))
                objects.add_point(image, name, xy, _label(get.get("label"), where))
            elif any(get.values()):
                raise UserInputError(f"{where}: the row has neither a box (x0, y0, x1, y1) nor a point (x, y).")
    return objects.result(str(path))


def _rings(geometry) -> list:
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        return [coords[0]] if coords else []
    return [poly[0] for poly in coords or [] if poly]  # MultiPolygon: outer rings


def _read_geojson(path: Path) -> list[ObjectPrompt]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise UserInputError(f"{path} is not valid JSON: {err}") from None
    features = data.get("features") if isinstance(data, dict) else data
    if isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    if not isinstance(features, list):
        raise UserInputError(f"{path}: expected a GeoJSON FeatureCollection or a list of features.")
    objects = _Objects()
    for k, feature in enumerate(features, start=1):
        where = f"{path.name} feature {k}"
        geometry = (feature or {}).get("geometry") or {}
        props = (feature or {}).get("properties") or {}
        image, name = str(props.get("image") or ""), str(props.get("object") or "") or f"feature {k}"
        kind = geometry.get("type")
        try:
            if kind in ("Polygon", "MultiPolygon"):
                xs = [_number(p[0], where, "x") for ring in _rings(geometry) for p in ring]
                ys = [_number(p[1], where, "y") for ring in _rings(geometry) for p in ring]
                if not xs:
                    raise UserInputError(f"{where}: an empty polygon.")
                objects.add_box(image, name, (min(xs), min(ys), max(xs), max(ys)), where)
            elif kind in ("Point", "MultiPoint"):
                points = [geometry["coordinates"]] if kind == "Point" else list(geometry["coordinates"])
                for p in points:
                    objects.add_point(image, name, (_number(p[0], where, "x"), _number(p[1], where, "y")),
                                      _label(props.get("label"), where))
            else:
                raise UserInputError(f"{where}: geometry {kind!r} is not a prompt (Polygon, MultiPolygon, Point, MultiPoint).")
        except (KeyError, IndexError, TypeError) as err:
            raise UserInputError(f"{where}: malformed coordinates ({err!r}).") from None
    return objects.result(str(path))


def read_prompt_file(path) -> list[ObjectPrompt]:
    """Object prompts of a ``.csv`` or ``.geojson`` / ``.json`` file (see the module's docstring).

    Raises
    ------
    UserInputError
        Missing or unreadable file, unknown format, missing columns, bad numbers (the message names
        the line or feature).
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"The prompt file {path} does not exist.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return _read_csv(path)
        if suffix in (".geojson", ".json"):
            return _read_geojson(path)
    except (OSError, csv.Error) as err:
        raise UserInputError(f"{path} cannot be read: {err}") from None
    raise UserInputError(f"{path}: prompts are read from .csv or .geojson files, not {suffix or 'a file without a suffix'}.")


def prompts_for_image(prompts, image_path) -> list[ObjectPrompt]:
    """The prompts of ``image_path``: those naming its file name or stem, and those naming no image."""
    path = Path(image_path)
    names = {path.name, path.stem, path.name.split(".")[0]}
    return [p for p in prompts if not p.image or p.image in names]
