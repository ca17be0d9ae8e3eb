"""Points / Shapes layers → :class:`~napari_sam_micro.core.prompts.Prompts` of the displayed plane.

Prompt layers may have their own scale and translation (an adopted layer): every vertex goes
layer data → world (``layer.data_to_world``) → image data (``image_layer.world_to_data``), so the
prompts land on the image's pixels whatever the transforms. For nD images only the prompts whose
leading coordinates round to the displayed plane are used. The flip from napari's ``(row, col)``
to SAM's ``(x, y)`` happens in :mod:`napari_sam_micro.core.prompts`, not here.
"""

from __future__ import annotations

import numpy as np

from ..core.prompts import Prompts, prompts_from_napari
from .layers import ImageGeometry

__all__ = [
    "layer_to_image_coords",
    "plane_points",
    "plane_rectangles",
    "plane_prompts",
    "indices_on_plane",
    "POSITIVE_FEATURE",
]

#: Feature of the prompts Points layer: True = positive point, False = negative point.
POSITIVE_FEATURE = "positive"


def layer_to_image_coords(layer, coords: np.ndarray, image_layer, geometry: ImageGeometry, index) -> np.ndarray:
    """Map ``(N, D)`` data coordinates of ``layer`` to the image's spatial data frame.

    Parameters
    ----------
    layer : napari layer
        Points or Shapes layer holding ``coords``.
    coords : (N, D) array
        Vertices in ``layer``'s data frame (``D = layer.ndim``).
    image_layer : napari.layers.Image
        The image being annotated.
    geometry : ImageGeometry
        Its spatial geometry.
    index : tuple of int
        The displayed plane; fills the leading axes a lower-dimensional prompt layer lacks
        (its prompts then apply to every plane).

    Returns
    -------
    np.ndarray
        ``(N, geometry.ndim)`` ``float64``: ``(..., row, col)`` in image pixels.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, layer.ndim)
    n = geometry.ndim
    out = np.empty((coords.shape[0], n), dtype=np.float64)
    lead_fill = np.asarray(index, dtype=np.float64)
    for k, vertex in enumerate(coords):
        world = np.asarray(layer.data_to_world(vertex), dtype=np.float64)
        if geometry.channel_axis is not None:
            # the image has one more (leading) axis than its label / prompt layers
            world_img = np.concatenate([[0.0], world[-n:]]) if world.size >= n else None
        else:
            world_img = world[-n:] if world.size >= n else None
        if world_img is None:
            # a prompt layer with fewer axes than the image: its points apply to every plane
            data = np.asarray(image_layer.world_to_data(np.concatenate([np.zeros(image_layer.ndim - world.size), world])))
            data = data[-n:]
            data[: n - world.size] = lead_fill[: n - world.size]
        else:
            data = np.asarray(image_layer.world_to_data(world_img), dtype=np.float64)
            if geometry.channel_axis is not None:
                data = data[1:]
        out[k] = data[-n:]
    return out


def _on_plane(coords: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """Rows of ``(N, n)`` coordinates whose leading axes round to ``index``."""
    if not index:
        return np.ones(coords.shape[0], dtype=bool)
    lead = coords[:, : len(index)]
    with np.errstate(invalid="ignore"):
        return np.all(np.round(lead) == np.asarray(index, dtype=np.float64)[None, :], axis=1)


def plane_points(points_layer, image_layer, geometry: ImageGeometry, index) -> tuple[np.ndarray, np.ndarray]:
    """Points of the displayed plane: ``(rows_cols (N, 2) float64, positive (N,) bool)``."""
    if points_layer is None or len(points_layer.data) == 0:
        return np.zeros((0, 2)), np.zeros(0, dtype=bool)
    coords = layer_to_image_coords(points_layer, points_layer.data, image_layer, geometry, index)
    features = points_layer.features
    if POSITIVE_FEATURE in features and len(features) == coords.shape[0]:
        positive = features[POSITIVE_FEATURE].to_numpy().astype(bool)
    else:
        positive = np.ones(coords.shape[0], dtype=bool)
    # a NaN row / column stays in (core.prompts reports it); a NaN slice coordinate is on no plane
    keep = _on_plane(coords, tuple(index))
    return coords[keep][:, -2:], positive[keep]


def plane_rectangles(shapes_layer, image_layer, geometry: ImageGeometry, index) -> tuple[list[np.ndarray], int]:
    """Rectangles of the displayed plane as ``(4, 2)`` ``(row, col)`` arrays, and how many other shapes were skipped."""
    if shapes_layer is None or shapes_layer.nshapes == 0:
        return [], 0
    rects, skipped = [], 0
    for data, kind in zip(shapes_layer.data, shapes_layer.shape_type):
        coords = layer_to_image_coords(shapes_layer, data, image_layer, geometry, index)
        if not _on_plane(coords, tuple(index)).all():
            continue
        if kind != "rectangle":
            skipped += 1
            continue
        rects.append(coords[:, -2:])
    return rects, skipped


def plane_prompts(points_layer, shapes_layer, image_layer, geometry: ImageGeometry, index) -> tuple[Prompts, list[str]]:
    """All prompts of the displayed plane, in SAM order.

    Returns
    -------
    prompts : Prompts
        Points ``(x, y)`` with labels, and boxes ``(x0, y0, x1, y1)``, in pixels of the plane.
    notes : list of str
        Sentences for the user (shapes that are not rectangles were ignored …).

    Raises
    ------
    napari_sam_micro.core.errors.PromptError
        A point or box outside the image or with a NaN coordinate.
    """
    points_rc, positive = plane_points(points_layer, image_layer, geometry, index)
    rects, skipped = plane_rectangles(shapes_layer, image_layer, geometry, index)
    notes = []
    if skipped:
        notes.append(
            f"{skipped} shape{'s' if skipped > 1 else ''} that {'are' if skipped > 1 else 'is'} not a rectangle "
            f"{'were' if skipped > 1 else 'was'} ignored: draw boxes with the rectangle tool."
        )
    prompts = prompts_from_napari(points_rc, positive, rects, geometry.plane_hw)
    return prompts, notes


def indices_on_plane(layer, image_layer, geometry: ImageGeometry, index) -> list[int]:
    """Indices of the points / shapes of ``layer`` lying on the plane ``index`` (all of them for 2D)."""
    n = len(layer.data)
    if n == 0:
        return []
    index = tuple(index)
    if not index:
        return list(range(n))
    is_points = not isinstance(layer.data, list)
    out = []
    for k in range(n):
        coords = layer.data[k : k + 1] if is_points else layer.data[k]
        img = layer_to_image_coords(layer, coords, image_layer, geometry, index)
        if _on_plane(img, index).all():
            out.append(k)
    return out
