"""Per-object tables on napari Labels layers, and colouring objects by a per-object value.

A Labels layer's ``features`` is a ``pandas.DataFrame`` with one row per object. Its
``"index"`` column holds the label id (napari's convention: the status bar and
``Labels.get_status`` look rows up by it). The columns this plugin writes are
:data:`napari_sam_micro.core.labels.OBJECT_COLUMNS`:
``index, area, predicted_iou, stability_score, prompt, bbox_y0, bbox_x0, bbox_y1, bbox_x1``
(bounding boxes in ``(row, col)`` pixel order of the 2D plane, end exclusive).

``core`` works with plain column dicts (``{column: (N,) array}``) or row dicts; the functions
here convert between those and the layer's DataFrame, merge new rows by ``index`` and read the
table of whatever objects a layer holds (computing area and bounding box for objects painted by
hand, which have no row yet).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "BBOX_COLUMNS",
    "MEASURE_MAX_PIXELS",
    "present_ids",
    "table_to_frame",
    "frame_to_table",
    "merge_object_rows",
    "set_object_table",
    "read_object_table",
    "object_centroid",
    "focus_object",
    "value_ramp_rgba",
    "colormap_by_value",
    "review_colormap",
]

#: Bounding-box columns, ``(row, col)`` of the 2D plane, end exclusive.
BBOX_COLUMNS = ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")
#: Labels layers up to this many pixels are measured for the objects table; larger ones (a slide
#: scan's labels) list the rows of ``features`` whose objects are present (a whole-layer
#: measurement takes seconds per commit there).
MEASURE_MAX_PIXELS = 8192 * 8192

_TRANSPARENT = np.zeros(4, dtype=np.float32)


def _object_columns() -> tuple[str, ...]:
    try:
        from ..core.labels import OBJECT_COLUMNS
    except ImportError:  # pragma: no cover - core.labels always ships with the package
        return ("index", "area", "predicted_iou", "stability_score", "prompt", *BBOX_COLUMNS)
    return tuple(OBJECT_COLUMNS)


def table_to_frame(table: Any) -> pd.DataFrame:
    """Convert an object table to a DataFrame indexed ``0..N-1`` with an ``"index"`` column.

    Parameters
    ----------
    table : mapping of str to (N,) array, sequence of row mappings, DataFrame or None
        ``core``'s column dict (``{"index": ids, "area": ..., ...}``), a list of row dicts, or a
        DataFrame. Must have an ``"index"`` column holding label ids (unless empty).

    Returns
    -------
    pandas.DataFrame
        Rows sorted by ``"index"`` (``int64``), duplicate ids dropped (last one wins).
    """
    if table is None:
        return pd.DataFrame({"index": np.zeros(0, dtype=np.int64)})
    if isinstance(table, pd.DataFrame):
        frame = table.copy()
    elif isinstance(table, Mapping):
        frame = pd.DataFrame({key: np.asarray(value) for key, value in table.items()})
    elif isinstance(table, Sequence) and not isinstance(table, (str, bytes)):
        frame = pd.DataFrame(list(table))
    else:
        raise TypeError(f"cannot make an object table from {type(table).__name__}")
    if frame.shape[0] == 0 and "index" not in frame:
        frame["index"] = np.zeros(0, dtype=np.int64)
    if "index" not in frame:
        raise ValueError("an object table needs an 'index' column holding the label ids")
    frame["index"] = frame["index"].astype(np.int64)
    frame = frame.drop_duplicates(subset="index", keep="last").sort_values("index", kind="stable")
    return frame.reset_index(drop=True)


def frame_to_table(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Convert a features DataFrame to ``core``'s column dict ``{column: (N,) array}``."""
    return {str(column): frame[column].to_numpy() for column in frame.columns}


def merge_object_rows(features: pd.DataFrame | None, rows: Any, drop: Iterable[int] = ()) -> pd.DataFrame:
    """Merge new object rows into an existing features table by ``"index"``.

    Rows of ``rows`` replace the rows with the same id; columns missing on either side are
    filled with NaN (numbers) so that no existing information is lost.

    Parameters
    ----------
    features : DataFrame or None
        Current ``layer.features`` (may be empty, may lack ``"index"`` if empty).
    rows : table
        Anything :func:`table_to_frame` accepts.
    drop : iterable of int
        Ids whose rows are removed (objects that no longer exist).

    Returns
    -------
    pandas.DataFrame
        Sorted by ``"index"``, ``0..N-1`` row index.
    """
    new = table_to_frame(rows)
    old = table_to_frame(features if features is not None and "index" in features else None)
    removed = set(int(i) for i in drop) | set(new["index"].tolist())
    old = old[~old["index"].isin(list(removed))]
    columns = list(old.columns) + [c for c in new.columns if c not in old.columns]
    if old.shape[0] == 0:
        merged = new.reindex(columns=columns)
    elif new.shape[0] == 0:
        merged = old.reindex(columns=columns)
    else:
        merged = pd.concat([old, new], ignore_index=True, sort=False)
    return table_to_frame(merged)


def set_object_table(layer, table: Any, *, merge: bool = True, keep_only_present: bool = True) -> None:
    """Write an object table into ``layer.features``.

    Parameters
    ----------
    layer : napari.layers.Labels
        Target layer.
    table : table
        Anything :func:`table_to_frame` accepts.
    merge : bool
        Merge with the rows already there (True) or replace the whole table (False).
    keep_only_present : bool
        Drop rows whose id no longer occurs in ``layer.data``.
    """
    frame = merge_object_rows(layer.features, table) if merge else table_to_frame(table)
    if keep_only_present and frame.shape[0]:
        present = np.unique(np.asarray(layer.data))
        frame = frame[frame["index"].isin(present[present != 0])].reset_index(drop=True)
    layer.features = frame


def _measure(labels: np.ndarray) -> pd.DataFrame:
    """Area and 2D bounding box (last two axes) of every object in ``labels``.

    :func:`skimage.measure.regionprops_table` (one pass to find the objects, then each object's
    box only); the same values as the former bincount / ``find_objects`` code and faster with
    many objects (``benchmarks/bench_skimage.py``).
    """
    labels = np.asarray(labels)
    empty = pd.DataFrame({"index": np.zeros(0, np.int64), "area": np.zeros(0, np.int64)})
    if labels.size == 0 or not labels.any():
        return empty
    if labels.ndim < 2 or labels.dtype.kind not in "iu" or labels.min() < 0:
        return _measure_any(labels)
    from skimage.measure import regionprops_table

    nd = labels.ndim
    props = regionprops_table(labels, properties=("label", "area", "bbox"))
    frame = pd.DataFrame({"index": props["label"].astype(np.int64), "area": props["area"].astype(np.int64)})
    # bbox-k: starts of the nd axes, then their stops; the plane is the last two axes
    for column, key in zip(BBOX_COLUMNS, (nd - 2, nd - 1, 2 * nd - 2, 2 * nd - 1)):
        frame[column] = props[f"bbox-{key}"].astype(np.int64)
    return frame


def _measure_any(labels: np.ndarray) -> pd.DataFrame:
    """:func:`_measure` for what scikit-image does not take (1D, negative or non-integer ids)."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    boxes = np.full((ids.size, 4), 0, dtype=np.int64)
    areas = np.zeros(ids.size, np.int64)
    for k, i in enumerate(ids):
        where = np.nonzero(labels == i)
        areas[k] = where[0].size
        if labels.ndim >= 2:
            boxes[k] = [where[-2].min(), where[-1].min(), where[-2].max() + 1, where[-1].max() + 1]
    frame = pd.DataFrame({"index": ids.astype(np.int64), "area": areas})
    for k, column in enumerate(BBOX_COLUMNS):
        frame[column] = boxes[:, k]
    return frame


def read_object_table(layer, *, measure: bool = True) -> pd.DataFrame:
    """The object table of a Labels layer: one row per object present in its data.

    Parameters
    ----------
    layer : napari.layers.Labels
        The layer (``layer.data`` of any dimensionality, ``layer.features`` possibly empty).
    measure : bool
        Compute ``area`` and the bounding box from the data (they then reflect hand edits);
        other columns (predicted IoU, stability, prompt, ...) come from ``layer.features`` and
        are NaN / missing for objects without a row.

    Returns
    -------
    pandas.DataFrame
        Columns of :data:`~napari_sam_micro.core.labels.OBJECT_COLUMNS` that are known, then any
        other feature columns; sorted by ``"index"``.
    """
    features = layer.features
    frame = table_to_frame(features if "index" in features or features.shape[0] == 0 else None)
    if measure:
        measured = _measure(layer.data)
        stale = [c for c in ("area", *BBOX_COLUMNS) if c in frame.columns]
        frame = measured.merge(frame.drop(columns=stale), on="index", how="left")
    else:
        frame = frame[frame["index"].isin(present_ids(layer, frame["index"]))]
    known = [c for c in _object_columns() if c in frame.columns]
    rest = [c for c in frame.columns if c not in known]
    return frame[known + rest].reset_index(drop=True)


def present_ids(layer, ids: Sequence[int]) -> set[int]:
    """Those of ``ids`` that occur in ``layer.data``.

    An id with a bounding box in ``layer.features`` (``bbox_*`` of its plane) is looked for inside
    that box on every plane, which costs the box and not the layer (a 20k x 20k labels layer:
    ``np.unique`` of it takes seconds). Other ids are looked up in the whole layer.
    """
    ids = [int(i) for i in ids]
    if not ids:
        return set()
    data = layer.data
    boxes = _feature_boxes(layer.features)
    found, rest = set(), []
    for i in ids:
        box = boxes.get(i)
        if box is None:
            rest.append(i)
        elif np.any(np.asarray(data[..., box[0] : box[2], box[1] : box[3]]) == i):
            found.add(i)
    if rest:
        hit = np.isin(np.asarray(rest), np.unique(np.asarray(data)))
        found |= {i for i, h in zip(rest, hit) if h}
    return found


def _feature_boxes(features) -> dict[int, tuple[int, int, int, int]]:
    """``id -> (y0, x0, y1, x1)`` for the rows of ``features`` with a complete bounding box."""
    if "index" not in features or not all(c in features for c in BBOX_COLUMNS):
        return {}
    table = features[["index", *BBOX_COLUMNS]].dropna()
    return {int(r[0]): tuple(int(v) for v in r[1:]) for r in table.itertuples(index=False)}


def object_centroid(labels: np.ndarray, label_id: int) -> np.ndarray | None:
    """Centroid of one object in data coordinates (all axes), or None if it is absent.

    Parameters
    ----------
    labels : array-like
        ``(..., H, W)`` integer label image (numpy, dask or zarr).
    label_id : int
        The object.

    Returns
    -------
    np.ndarray or None
        ``(labels.ndim,)`` ``float64`` mean pixel coordinate ``(…, row, col)``.
    """
    coords = np.nonzero(np.asarray(labels) == int(label_id))
    if coords[0].size == 0:
        return None
    return np.array([c.mean() for c in coords], dtype=np.float64)


def focus_object(viewer, layer, label_id: int) -> bool:
    """Select object ``label_id`` of ``layer`` and bring it into view.

    Sets ``layer.selected_label``, moves the non-displayed dims sliders (nD data) to the
    object's centroid and centres ``viewer.camera`` on it, all in world coordinates (layer scale
    and translation applied). The zoom is left alone.

    Parameters
    ----------
    viewer : napari.Viewer or napari.components.ViewerModel
        The viewer showing ``layer``.
    layer : napari.layers.Labels
        The layer holding the object.
    label_id : int
        The object's id.

    Returns
    -------
    bool
        False when the object is not (any more) in the layer's data.
    """
    label_id = int(label_id)
    centroid = object_centroid(layer.data, label_id)
    if centroid is None:
        return False
    layer.selected_label = label_id
    world = np.asarray(layer.data_to_world(centroid), dtype=np.float64)
    point = np.asarray(viewer.dims.point, dtype=np.float64)
    # A layer with fewer dims than the viewer occupies the viewer's last axes.
    point[point.size - world.size :] = world
    for axis in viewer.dims.not_displayed:
        viewer.dims.set_point(axis, float(point[axis]))
    viewer.camera.center = tuple(float(point[axis]) for axis in viewer.dims.displayed)
    return True


# -- colours -------------------------------------------------------------------------------

#: Control points of the value ramp: red (0) -> orange -> yellow (0.5) -> yellow-green -> green (1).
_RAMP_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_COLOURS = np.array(
    [
        [0.84, 0.10, 0.11],
        [0.99, 0.55, 0.24],
        [1.00, 0.90, 0.30],
        [0.65, 0.85, 0.42],
        [0.10, 0.60, 0.31],
    ]
)


def value_ramp_rgba(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0, alpha: float = 1.0) -> np.ndarray:
    """Map values to a red → yellow → green ramp (low = red, high = green), no matplotlib.

    Parameters
    ----------
    values : (N,) array-like of float
        Values; NaN maps to mid grey.
    vmin, vmax : float
        Values at the red and green ends (clipped outside).
    alpha : float
        Opacity of every colour.

    Returns
    -------
    np.ndarray
        ``(N, 4)`` ``float32`` RGBA in ``[0, 1]``.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    span = vmax - vmin if vmax > vmin else 1.0
    t = np.clip((values - vmin) / span, 0.0, 1.0)
    rgb = np.stack([np.interp(t, _RAMP_STOPS, _RAMP_COLOURS[:, k]) for k in range(3)], axis=1)
    rgb[np.isnan(values)] = 0.5
    rgba = np.concatenate([rgb, np.full((values.size, 1), alpha)], axis=1)
    return rgba.astype(np.float32)


def _direct_colormap(colors: dict, default) -> Any:
    from napari.utils.colormaps import DirectLabelColormap

    color_dict = {None: np.asarray(default, dtype=np.float32), 0: _TRANSPARENT}
    color_dict.update(colors)
    return DirectLabelColormap(color_dict=color_dict)


def colormap_by_value(ids: Sequence[int], values: Sequence[float], vmin: float = 0.0, vmax: float = 1.0):
    """A napari ``DirectLabelColormap`` colouring object ``ids[i]`` by ``values[i]``.

    Objects not listed are drawn grey; background (0) is transparent.
    """
    rgba = value_ramp_rgba(np.asarray(values, dtype=np.float64), vmin, vmax)
    colors = {int(i): c for i, c in zip(ids, rgba)}
    return _direct_colormap(colors, default=(0.55, 0.55, 0.55, 1.0))


#: Colour of objects flagged for review (orange-red) and of the others (dim grey).
FLAG_RGBA = np.array([1.0, 0.27, 0.0, 1.0], dtype=np.float32)
GOOD_RGBA = np.array([0.6, 0.6, 0.6, 0.45], dtype=np.float32)


def review_colormap(ids: Iterable[int], flagged: Iterable[int]):
    """A ``DirectLabelColormap`` that shows ``flagged`` objects orange-red and the rest dim grey."""
    flagged = {int(i) for i in flagged}
    colors = {int(i): (FLAG_RGBA if int(i) in flagged else GOOD_RGBA) for i in ids}
    return _direct_colormap(colors, default=GOOD_RGBA)
