"""Object outlines as polygons in image ``(x, y)`` coordinates (for COCO and GeoJSON exports).

Coordinates follow the *pixel-corner* convention of COCO and QuPath: pixel ``(row r, col c)``
covers ``x`` in ``[c, c + 1)`` and ``y`` in ``[r, r + 1)``, so a one-pixel square object at
``(r, c)`` has corners ``(c, r)`` and ``(c + 1, r + 1)``. Outlines are
:func:`skimage.measure.find_contours` iso-lines at 0.5 (through the middle of the boundary edges,
corners cut by half a pixel), shifted by half a pixel into that convention: a polygon rasterised
back (pixel centres inside it) gives the object again, up to single pixels at sharp corners.

Objects are split into their 4-connected pieces (the background is then 8-connected, the rule
``find_contours`` follows); each piece gives one exterior ring and one ring per hole.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["mask_polygons", "ring_area", "simplify_ring"]

_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def ring_area(ring: np.ndarray) -> float:
    """Signed area (shoelace) of a closed ring ``(N, 2)`` of ``(x, y)``; positive when counter-clockwise in x-right, y-up axes."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def simplify_ring(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """Fewer vertices (Douglas-Peucker, :func:`skimage.measure.approximate_polygon`); ``tolerance`` in pixels, 0 = unchanged."""
    if tolerance <= 0 or len(ring) <= 4:
        return ring
    from skimage.measure import approximate_polygon

    out = approximate_polygon(ring, tolerance=float(tolerance))
    return out if len(out) >= 4 else ring


def _oriented(ring: np.ndarray, counter_clockwise: bool) -> np.ndarray:
    if (ring_area(ring) > 0) != counter_clockwise:
        ring = ring[::-1]
    return ring


def mask_polygons(mask: np.ndarray, tolerance: float = 0.0, offset: tuple[int, int] = (0, 0)) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Polygons of a 2D object mask, one per 4-connected piece, largest piece first.

    Parameters
    ----------
    mask : (H, W) bool
        The object's pixels.
    tolerance : float
        Douglas-Peucker simplification (pixels); 0 keeps every contour vertex.
    offset : (row, col)
        Where ``mask[0, 0]`` lies in the image (``mask`` is a crop); added to the coordinates.

    Returns
    -------
    list of (exterior, holes)
        ``exterior``: ``(N, 2)`` float64 closed ring (first vertex repeated last) of ``(x, y)``
        in the pixel-corner convention, counter-clockwise in x-right / y-up axes (the right-hand
        rule of GeoJSON, RFC 7946); ``holes``: list of such rings, clockwise. Empty for an
        empty mask.
    """
    from skimage.measure import find_contours

    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask.shape}")
    pieces, n = ndi.label(mask, structure=_FOUR)
    if n == 0:
        return []
    out = []
    for k, box in enumerate(ndi.find_objects(pieces), start=1):
        r0, c0 = box[0].start + int(offset[0]), box[1].start + int(offset[1])
        # one pixel of background around the piece so that every contour closes
        own = np.pad(pieces[box] == k, 1)
        rings = []
        for contour in find_contours(own.astype(np.float32), 0.5):
            # (row, col) of the padded crop -> (x, y) of the image, pixel corners
            ring = np.column_stack([contour[:, 1] + c0 - 0.5, contour[:, 0] + r0 - 0.5])
            ring = simplify_ring(ring, tolerance)
            if not np.array_equal(ring[0], ring[-1]):
                ring = np.vstack([ring, ring[:1]])
            rings.append(ring)
        if not rings:
            continue
        areas = [abs(ring_area(r)) for r in rings]
        outer = int(np.argmax(areas))  # the exterior encloses every hole of its piece
        exterior = _oriented(rings[outer], counter_clockwise=True)
        holes = [_oriented(r, counter_clockwise=False) for i, r in enumerate(rings) if i != outer]
        out.append((exterior, holes, int(np.count_nonzero(own))))
    out.sort(key=lambda item: -item[2])
    return [(exterior, holes) for exterior, holes, _ in out]
