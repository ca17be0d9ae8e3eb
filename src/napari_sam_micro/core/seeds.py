"""Object-centre seeds found by classical image analysis (for seeded everything mode).

Models fine-tuned on object-centred crops (``crop_to_prompt`` models such as ``micro-tiny``)
segment an object well from **one click near its centre**, decoded in a window about twice the
object's size, but badly from the points of a regular grid (most land off-centre or on background).
:func:`find_seeds` proposes such centres without a model:

1. ``gray`` = the mean over channels of the normalised image (``(H, W)`` or ``(H, W, C)`` in [0, 1]).
2. Polarity: Otsu's threshold splits the pixels in two classes; objects are the **smaller** class
   (bright nuclei on dark background in fluorescence, dark cells on bright background in
   brightfield/histology). With ``polarity="auto"`` the image is inverted when the bright class
   covers more than half of the pixels; ``"bright"``/``"dark"`` force it.
3. Background removed by a white top-hat wider than the objects (:func:`background_radius`,
   :mod:`~napari_sam_micro.core.background`; ``background=False`` skips it), then foreground =
   pixels above Otsu's threshold, small specks removed by an opening.
4. Score = the Euclidean distance transform of the foreground (large in the middle of each
   object, separating touching round objects), plus ``intensity_weight`` × the Gaussian-smoothed
   intensity (breaks ties on flat plateaus), then smoothed with ``sigma``.
5. Seeds = local maxima of the score inside the foreground at least ``min_distance`` pixels apart
   (a maximum filter of that radius, one peak per plateau, then a KD-tree spacing as in
   :func:`skimage.feature.peak_local_max`), whose distance-transform value is at least ``min_radius``.

numpy/scipy, with scikit-image's Otsu threshold; coordinates are returned in napari order ``(row, col)``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .automatic import box_nms
from .background import median_object_diameter, white_tophat_in_place
from .bands import bands, filter_in_place
from .labels import OBJECT_COLUMNS, instance_labels_from_masks, object_row
from .masks import mask_to_box_xyxy, postprocess_mask

__all__ = [
    "gray_image",
    "otsu_threshold",
    "foreground_mask",
    "foreground_threshold",
    "background_radius",
    "BACKGROUND_RADIUS_FLOOR",
    "BACKGROUND_RADIUS_FACTOR",
    "find_seeds",
    "everything_seeds",
    "distance_to_background",
    "uncovered_seeds",
    "choose_seed_mask",
    "resolve_seeded_masks",
    "add_uncovered_masks",
    "SEED_IOU_FLOOR",
    "REFILL_AREA_FRACTION",
]

#: Smallest radius (pixels) of the top-hat that removes the background before Otsu's threshold:
#: nuclei on a bright embryo body separate with 20, and with 40 the body's seeds come back
#: (:func:`background_radius`; training images, docs/models.md).
BACKGROUND_RADIUS_FLOOR = 20

#: The top-hat's radius is this many times the objects' median diameter (at least the floor), so
#: large nuclei are kept whole instead of cut into rings.
BACKGROUND_RADIUS_FACTOR = 1.25

#: Multimask outputs of a centred click whose predicted IoU is below this are not chosen (unless all are).
SEED_IOU_FLOOR = 0.4

#: Second pass: uncovered foreground regions smaller than this fraction of the first pass's median
#: object area are not seeded again (slivers along mask borders, debris).
REFILL_AREA_FRACTION = 0.25


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of finite ``values`` (any shape, real dtype): :func:`skimage.filters.threshold_otsu`.

    Non-finite values are left out first (scikit-image refuses them). On 80 DSB 2018 images the
    seeds are identical to those of the hand-written version this replaced (the thresholds
    differ in the eighth digit: bin centres in float32 instead of float64).

    Returns
    -------
    float
        The threshold maximising the between-class variance; the value itself when the input is
        constant (or NaN when there is no finite value).
    """
    from skimage.filters import threshold_otsu

    v = np.asarray(values).reshape(-1)
    if v.dtype.kind != "f":
        v = v.astype(np.float32)  # 256 bins over the range (scikit-image gives integers one bin per value)
    elif not np.isfinite(v).all():
        v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(threshold_otsu(v, nbins=int(bins)))


def gray_image(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 channel mean of an ``(H, W)`` or ``(H, W, C)`` image, NaN set to 0."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img.mean(axis=-1)
        return np.nan_to_num(img, nan=0.0, copy=False)  # a new array: cleaned in place
    if img.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {np.shape(image)}")
    # no copy of a large grey image unless it has NaN (the caller's array is never modified)
    return np.nan_to_num(img, nan=0.0) if np.isnan(img).any() else img


def _smoothed_gray(image: np.ndarray, polarity: str, sigma: float) -> np.ndarray:
    """The grey image smoothed by ``sigma`` (a new float array, free to modify), after checking ``polarity``."""
    if polarity not in ("auto", "bright", "dark"):
        raise ValueError(f"polarity must be 'auto', 'bright' or 'dark', got {polarity!r}")
    gray = gray_image(image)
    return ndi.gaussian_filter(gray, sigma) if sigma > 0 else np.array(gray, dtype=np.float32)


def _objects_polarity(signal: np.ndarray, polarity: str) -> str:
    """``"bright"`` or ``"dark"``: ``polarity`` unless ``"auto"``, then the smaller of Otsu's two classes."""
    if polarity != "auto":
        return polarity
    t = otsu_threshold(signal)
    return "dark" if np.count_nonzero(signal > t) > signal.size / 2 else "bright"


def background_radius(signal: np.ndarray, step: int = 1) -> int:
    """Radius of the top-hat that removes a plane's background but keeps its objects (full-resolution pixels).

    The objects are measured twice, by Otsu's threshold of the signal itself and of its top-hat
    with the smallest radius, :data:`BACKGROUND_RADIUS_FLOOR` (each opened by a 3 x 3 square);
    the radius is :data:`BACKGROUND_RADIUS_FACTOR` x their median equivalent diameter
    (:func:`~napari_sam_micro.core.background.median_object_diameter`: a blob of the first holding
    more than four pieces of the second is a bright body with nuclei on it, and its pieces are
    measured), at least the floor. Large nuclei (which the floor's square cuts into rings) get a
    radius wider than themselves; nuclei on an embryo's bright body keep about the floor, which
    removes the body.

    Parameters
    ----------
    signal : (H, W) float
        The smoothed grey plane with the objects bright (not modified).
    step : int
        ``signal`` is every ``step``-th row and column of the plane (:func:`foreground_threshold`).

    Returns
    -------
    int
    """
    step = max(1, int(step))
    eight = np.ones((3, 3), bool)
    th = np.array(signal, dtype=np.float32)
    white_tophat_in_place(th, max(1, int(round(BACKGROUND_RADIUS_FLOOR / step))))
    pieces = ndi.binary_opening(th > otsu_threshold(th), structure=eight)
    del th
    objects = ndi.binary_opening(signal > otsu_threshold(signal), structure=eight)
    diameter = median_object_diameter(objects, pieces, min_area=max(1, int(round(20 / step**2)))) * step
    return max(BACKGROUND_RADIUS_FLOOR, int(math.ceil(BACKGROUND_RADIUS_FACTOR * diameter)))


def foreground_threshold(
    image: np.ndarray, polarity: str = "auto", sigma: float = 1.0, background: bool = True, step: int = 1
) -> tuple[float, str, int]:
    """Otsu's threshold, the objects' polarity and the background radius of a plane, to share between its tiles.

    A tile thresholded on its own pixels gets its own Otsu threshold, so tiles disagree with each
    other and with the untiled plane about which dim objects exist (on a mosaic of four DSB fields
    the dimmest field's tile kept 3 of the whole plane's 7 seeds there; a tile of mostly dim field
    can also find more). The tiled everything mode measures this once on a subsample of the whole
    plane and passes it to every tile (:func:`foreground_mask`'s ``threshold``).

    Parameters
    ----------
    image : (H, W) or (H, W, C) float
        Normalised image (or a strided subsample of it).
    polarity, sigma, background
        As :func:`foreground_mask`.
    step : int
        ``image`` is every ``step``-th row and column of the plane (the radius is returned in the
        plane's pixels, and the sample's top-hat uses ``radius / step``).

    Returns
    -------
    threshold : float
        On the signal :func:`foreground_mask` thresholds: the smoothed grey image when
        ``radius`` is 0 (not inverted), else its top-hat with the objects bright.
    polarity : {"bright", "dark"}
    radius : int
        The background's top-hat radius (:func:`background_radius`); 0 without ``background``.
    """
    signal = _smoothed_gray(image, polarity, sigma)
    polarity = _objects_polarity(signal, polarity)
    if not background:
        return otsu_threshold(signal), polarity, 0
    radius = _remove_background(signal, polarity, step=step)
    return otsu_threshold(signal), polarity, radius


def _remove_background(signal: np.ndarray, polarity: str, radius: int | None = None, step: int = 1) -> int:
    """In place: the objects made bright (negated when dark), then the top-hat of ``radius``
    (default :func:`background_radius`) in plane pixels, ``signal`` being every ``step``-th pixel;
    returns the radius."""
    step = max(1, int(step))
    if polarity == "dark":
        np.negative(signal, out=signal)
    if radius is None:
        radius = background_radius(signal, step)
    white_tophat_in_place(signal, max(1, int(round(radius / step))))
    return radius


def foreground_mask(
    image: np.ndarray, polarity: str = "auto", sigma: float = 1.0, threshold: tuple | None = None,
    background: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Object pixels by Otsu's threshold (after removing the background), with the objects' polarity.

    Parameters
    ----------
    image : (H, W) or (H, W, C) float
        Normalised image (e.g. :func:`~napari_sam_micro.core.preprocess.normalize_image`).
    polarity : {"auto", "bright", "dark"}
        Objects brighter or darker than the background; ``"auto"``: the smaller Otsu class.
    sigma : float
        Gaussian smoothing (pixels) before thresholding.
    threshold : (float, str, int), optional
        ``(threshold, polarity, radius)`` measured on the whole plane (:func:`foreground_threshold`),
        for a tile of it; replaces ``polarity``, ``background`` and this image's own threshold and radius.
    background : bool
        Subtract the background first (a white top-hat of :func:`background_radius`,
        :mod:`~napari_sam_micro.core.background`); False: Otsu's threshold of the intensity itself.

    Returns
    -------
    mask : (H, W) bool
        Foreground (objects).
    signal : (H, W) float32
        The signal thresholded, objects bright: the smoothed grey image (inverted for dark objects),
        or its top-hat.
    """
    signal = _smoothed_gray(image, polarity, sigma)  # our own array: modified in place below
    if threshold is not None:
        t, polarity = float(threshold[0]), str(threshold[1])
        radius = int(threshold[2]) if len(threshold) > 2 else 0
    else:
        polarity = _objects_polarity(signal, polarity)
        radius = None if background else 0  # None: this image's own (_remove_background)
        t = None
    if radius != 0:
        _remove_background(signal, polarity, radius)
        mask = signal > (otsu_threshold(signal) if t is None else t)
    elif t is not None:
        mask = signal < t if polarity == "dark" else signal > t
        if polarity == "dark":
            np.subtract(signal.max(), signal, out=signal)
    else:
        if polarity == "dark":
            np.subtract(signal.max(), signal, out=signal)
        mask = signal > otsu_threshold(signal)
    mask = ndi.binary_opening(mask, structure=np.ones((3, 3), bool))
    return mask, signal.astype(np.float32, copy=False)


def find_seeds(
    image: np.ndarray,
    *,
    min_distance: int = 5,
    sigma: float = 1.5,
    polarity: str = "auto",
    min_radius: float = 2.0,
    intensity_weight: float = 2.0,
    max_seeds: int | None = None,
    h: float = 0.0,
    threshold: tuple | None = None,
    background: bool = True,
) -> np.ndarray:
    """Candidate object centres (see the module docstring for the algorithm).

    Parameters
    ----------
    image : (H, W) or (H, W, C) float
        Normalised image, values about [0, 1].
    min_distance : int
        Seeds are at least this many pixels apart (Chebyshev); about the smallest object radius.
    sigma : float
        Smoothing (pixels) of the seed score.
    polarity : {"auto", "bright", "dark"}
        See :func:`foreground_mask`.
    min_radius : float
        Ignore maxima whose distance to the background is below this (specks, thin debris).
    intensity_weight : float
        Weight of the smoothed intensity (objects bright, range about [0, 1]) added to the distance
        transform, in pixels per unit intensity.
    max_seeds : int, optional
        Keep at most this many, highest score first.
    h : float
        With ``h > 0``, the maxima are the score's h-maxima (:func:`skimage.morphology.h_maxima`):
        regional maxima that rise at least ``h`` (pixels of the score) above the saddle to any
        higher one, instead of the maxima of a ``min_distance`` maximum filter. Two touching nuclei
        joined by a narrow neck keep one seed each even when their centres are close, while the
        shallow bumps of one irregular nucleus give no second seed
        (:data:`~napari_sam_micro.core.touching.TOUCHING_H`). 0 (default): the maximum filter.

    threshold : (float, str, int), optional
        The whole plane's foreground threshold, polarity and background radius, for a tile of it
        (:func:`foreground_threshold`).
    background : bool
        Remove the background before thresholding (:func:`foreground_mask`). On 70 DSB
        fluorescence training images it gave 2,720 of 3,129 nuclei exactly one seed, against 2,476
        without (docs/models.md).

    Returns
    -------
    (N, 2) float64
        Seed ``(row, col)`` in pixels, highest score first.
    """
    mask, signal = foreground_mask(image, polarity=polarity, sigma=1.0, threshold=threshold, background=background)
    if not mask.any():
        return np.zeros((0, 2), dtype=np.float64)
    dist = distance_to_background(mask)
    allowed = mask & (dist >= float(min_radius))
    del mask
    # the score is built in place in ``dist`` and ``signal`` (same values as the plain expressions)
    lo, hi = float(signal.min()), float(signal.max())
    if hi > lo:
        signal -= lo
        signal /= hi - lo
        signal *= float(intensity_weight)
        dist += signal
    del signal
    if sigma > 0:
        _gaussian_in_place(dist, sigma)
    if h > 0:
        from .touching import h_maxima_seeds

        return h_maxima_seeds(dist, allowed, float(h), min_distance, max_seeds)
    return _maxima(dist, allowed, min_distance, max_seeds)


def everything_seeds(image: np.ndarray, *, threshold: tuple | None = None, **options) -> tuple[np.ndarray, tuple]:
    """Everything mode's seeds and the foreground threshold they were found with.

    The threshold (with its polarity and background radius, :func:`foreground_threshold`) is
    measured once and returned, so that the second pass's foreground
    (:func:`~napari_sam_micro.core.seeded.seeded_segmentation_job`'s ``foreground``) need not
    measure the background radius again; seeds and masks are those of the plane's own threshold.

    Parameters
    ----------
    image : (H, W) or (H, W, C) float
        Normalised plane.
    threshold : (float, str, int), optional
        The whole plane's, when ``image`` is a tile of it; default: measured on ``image``.
    **options
        As :func:`find_seeds` (``min_distance``, ``h``, ...).

    Returns
    -------
    seeds : (N, 2) float64
        ``(row, col)``, highest score first.
    threshold : (float, str, int)
    """
    threshold = threshold or foreground_threshold(
        image, polarity=options.get("polarity", "auto"), background=options.get("background", True)
    )
    return find_seeds(image, threshold=threshold, **options), threshold


def _gaussian_in_place(image: np.ndarray, sigma: float) -> None:
    """``image[...] = ndi.gaussian_filter(image, sigma)`` band by band (same values, no full-size copy).

    An output row depends on the input rows within the kernel's radius (``truncate`` = 4 σ).
    """
    filter_in_place(image, lambda rows: ndi.gaussian_filter(rows, sigma), int(4.0 * float(sigma) + 0.5))


#: :func:`distance_to_background` works object by object unless their boxes add up to more than this many planes.
_BOX_AREA_LIMIT = 4


def distance_to_background(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each foreground pixel to the nearest background pixel, object by object.

    Equal to ``scipy.ndimage.distance_transform_edt(mask)`` (an 8-connected object's nearest pixel
    outside it is background and lies within its bounding box grown by one pixel), but the
    transform's temporaries (about 40 bytes per pixel) are those of one object's box, not the plane's.

    Parameters
    ----------
    mask : (H, W) bool
        Foreground.

    Returns
    -------
    (H, W) float64
        0 on the background; like scipy, the outside of the image is not background.
    """
    mask = np.asarray(mask, bool)
    comp, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    h, w = mask.shape
    boxes = [
        (max(rows.start - 1, 0), min(rows.stop + 1, h), max(cols.start - 1, 0), min(cols.stop + 1, w))
        for rows, cols in ndi.find_objects(comp)
    ]
    if sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in boxes) > _BOX_AREA_LIMIT * mask.size:
        # objects whose boxes overlap a lot (long diagonal structures): one transform is faster
        return ndi.distance_transform_edt(mask)
    dist = np.zeros(mask.shape, np.float64)
    for k, (r0, r1, c0, c1) in enumerate(boxes, start=1):
        own = comp[r0:r1, c0:c1] == k
        # other objects in the box count as background: their pixels are never the nearest
        dist[r0:r1, c0:c1][own] = ndi.distance_transform_edt(own)[own]
    return dist


def _maxima(
    score: np.ndarray, allowed: np.ndarray, min_distance: int, max_peaks: int | None = None, centre_inside: bool = False
) -> np.ndarray:
    """Local maxima of ``score`` (H, W) inside ``allowed`` (H, W) bool, ``(row, col)`` float64, highest first.

    A maximum filter of radius ``min_distance``; one peak per connected plateau (its centre of
    mass; with ``centre_inside``, plateaus whose centre falls off ``allowed`` are dropped); peaks
    closer than ``min_distance`` (Chebyshev) to a higher one dropped; at most ``max_peaks``.
    """
    size = 2 * int(max(1, min_distance)) + 1
    peaks = np.zeros(score.shape, bool)
    for r0, r1, lo, hi in bands(score.shape[0], size // 2):
        top = ndi.maximum_filter(score[lo:hi], size=size, mode="nearest")[r0 - lo : r1 - lo]
        peaks[r0:r1] = score[r0:r1] == top
    peaks &= allowed
    return _peak_centres(score, peaks, allowed, min_distance, max_peaks, centre_inside)


def _peak_centres(
    score: np.ndarray, peaks: np.ndarray, allowed: np.ndarray, min_distance: int, max_peaks: int | None = None,
    centre_inside: bool = False,
) -> np.ndarray:
    """One ``(row, col)`` per connected plateau of ``peaks`` (H, W) bool, highest ``score`` first, spaced."""
    # plateaus give several equal maxima: keep one per connected plateau
    lab, n = ndi.label(peaks, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros((0, 2), dtype=np.float64)
    # centre of mass of each plateau from its pixels only (as ndi.center_of_mass, without
    # whole-image float64 coordinate grids)
    rr, cc = np.nonzero(peaks)
    which = lab[rr, cc]
    count = np.bincount(which, minlength=n + 1)[1:].astype(np.float64)
    centres = np.stack(
        [np.bincount(which, rr.astype(np.float64), n + 1)[1:] / count, np.bincount(which, cc.astype(np.float64), n + 1)[1:] / count],
        axis=1,
    )
    rows = np.clip(np.round(centres[:, 0]).astype(int), 0, score.shape[0] - 1)
    cols = np.clip(np.round(centres[:, 1]).astype(int), 0, score.shape[1] - 1)
    if centre_inside:
        inside = allowed[rows, cols]
        centres, rows, cols = centres[inside], rows[inside], cols[inside]
    values = score[rows, cols]
    order = np.argsort(-values, kind="stable")
    centres = centres[order]
    return centres[_spaced(centres, min_distance, max_peaks)]


def _spaced(points: np.ndarray, min_distance: float, max_points: int | None = None) -> np.ndarray:
    """Indices of ``points`` (``(N, 2)``, best first) kept greedily at least ``min_distance`` apart (Chebyshev).

    A point is kept unless it is closer than ``min_distance`` to a point kept before it (a point
    dropped drops nothing). The neighbours come from a KD-tree, as in
    :func:`skimage.feature.peak_local_max`, instead of comparing every point with every kept one.
    """
    from scipy.spatial import cKDTree

    if len(points) == 0:
        return np.zeros(0, dtype=np.intp)
    near = cKDTree(points).query_ball_point(points, r=float(min_distance), p=np.inf)
    dropped = np.zeros(len(points), bool)
    kept: list[int] = []
    for i in range(len(points)):
        if dropped[i]:
            continue
        kept.append(i)
        if max_points is not None and len(kept) >= max_points:
            break
        others = np.asarray(near[i], dtype=np.intp)
        # the ball includes points at exactly min_distance: those are far enough
        dropped[others[np.max(np.abs(points[others] - points[i]), axis=1) < min_distance]] = True
    return np.asarray(kept, dtype=np.intp)


def choose_seed_mask(predicted_iou, stability, iou_floor: float = SEED_IOU_FLOOR) -> int:
    """Which multimask output of a centred click to keep.

    Rule: the **most stable** mask among those with predicted IoU >= ``iou_floor`` (ties: higher
    predicted IoU); when none reaches the floor, the most stable of all. A fine-tuned 256-px
    decoder rates its good object mask only ~0.5-0.6 but it is stable (0.5-0.8), while the
    "whole region" output is a blob with stability near 0.

    Parameters
    ----------
    predicted_iou, stability : (M,) float

    Returns
    -------
    int
        Index into the M outputs.
    """
    piou = np.asarray(predicted_iou, dtype=np.float64).reshape(-1)
    stab = np.asarray(stability, dtype=np.float64).reshape(-1)
    if piou.size == 0 or piou.size != stab.size:
        raise ValueError("need as many predicted IoUs as stability scores (at least one)")
    ok = np.flatnonzero(piou >= float(iou_floor))
    pool = ok if ok.size else np.arange(piou.size)
    return int(pool[np.lexsort((-piou[pool], -stab[pool]))[0]])


def resolve_seeded_masks(
    masks,
    predicted_iou,
    stability,
    shape: tuple[int, int],
    *,
    nms_thresh: float = 0.5,
    fill_holes: bool = True,
    keep_largest: bool = True,
    min_area: int = 10,
    max_area_fraction: float = 0.25,
    prompt: str = "seed",
) -> tuple[np.ndarray, dict[str, list]]:
    """Turn one mask per seed into a non-overlapping instance label image and an object table.

    Each mask is post-processed (keep its largest component, fill holes), masks smaller than
    ``min_area`` or larger than ``max_area_fraction`` of the image are dropped, duplicates (two
    seeds on one object) are removed by greedy box NMS with score = predicted IoU × stability, and
    the survivors are painted best score first (a pixel belongs to the best mask covering it).

    Parameters
    ----------
    masks : sequence of (H, W) bool
    predicted_iou, stability : (N,) float
    shape : (H, W)
    nms_thresh : float
        Box IoU above which the lower-scored of two masks is dropped.
    fill_holes, keep_largest : bool
    min_area : int
    max_area_fraction : float
    prompt : str
        Value of the table's ``prompt`` column.

    Returns
    -------
    labels : (H, W) uint32
        Ids ``1..K`` by decreasing score.
    table : dict of str to list
        :data:`~napari_sam_micro.core.labels.OBJECT_COLUMNS` per id.
    """
    piou = np.asarray(predicted_iou, dtype=np.float64).reshape(-1)
    stab = np.asarray(stability, dtype=np.float64).reshape(-1)
    h, w = int(shape[0]), int(shape[1])
    cleaned, boxes, scores, keep_idx = [], [], [], []
    for i, m in enumerate(masks):
        out = postprocess_mask(np.asarray(m, bool), fill_holes=fill_holes, keep_largest=keep_largest)
        area = int(np.count_nonzero(out))
        if area < int(min_area) or area > float(max_area_fraction) * h * w:
            continue
        cleaned.append(out)
        boxes.append(mask_to_box_xyxy(out))
        scores.append(piou[i] * stab[i])
        keep_idx.append(i)
    if not cleaned:
        return np.zeros((h, w), np.uint32), {c: [] for c in OBJECT_COLUMNS}
    boxes_a = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores_a = np.asarray(scores, dtype=np.float32)
    order = box_nms(boxes_a, scores_a, float(nms_thresh))  # best first
    painted, present = instance_labels_from_masks([cleaned[j] for j in order], -np.arange(len(order), dtype=np.float64), (h, w))
    lut = np.zeros(len(order) + 1, dtype=np.uint32)
    rows = []
    for new_id, old in enumerate(present, start=1):
        lut[old] = new_id
        src = keep_idx[order[old - 1]]
        rows.append(object_row(new_id, painted == old, float(piou[src]), float(stab[src]), prompt))
    labels = lut[painted]
    table = {c: [r[c] for r in rows] for c in rows[0]} if rows else {c: [] for c in OBJECT_COLUMNS}
    return labels, table


def uncovered_seeds(
    foreground: np.ndarray,
    labels: np.ndarray,
    *,
    min_area: int = 30,
    min_radius: float = 2.0,
    min_distance: int = 5,
) -> np.ndarray:
    """Seeds for the foreground a first pass left unlabelled (second pass of the seeded everything mode).

    A nucleus pressed against a brighter neighbour often has no distance-transform maximum of its
    own, so :func:`find_seeds` gives it no seed; once the neighbour is segmented, the nucleus is
    foreground that no mask covers. Here: ``free = foreground & (labels == 0)``, opened with a 5 x 5
    disk (the thin rims a mask leaves along its object's border go), regions smaller than
    ``min_area`` dropped; seeds are the maxima of ``free``'s distance transform at least
    ``min_distance`` apart and at least ``min_radius`` from its border.

    Parameters
    ----------
    foreground : (H, W) bool
        E.g. the first output of :func:`foreground_mask`.
    labels : (H, W) int
        The first pass's instance labels (0 = not covered).
    min_area : int
        Smallest uncovered region (pixels, after the opening) that gets seeds.
    min_radius : float
    min_distance : int

    Returns
    -------
    (N, 2) float64
        Seed ``(row, col)``, deepest first.
    """
    fg = np.asarray(foreground, bool)
    lab = np.asarray(labels)
    if fg.shape != lab.shape:
        raise ValueError(f"foreground {fg.shape} and labels {lab.shape} differ in shape")
    yy, xx = np.mgrid[-2:3, -2:3]
    disk = (yy**2 + xx**2) <= 4
    free = ndi.binary_opening(fg & (lab == 0), structure=disk)
    if not free.any():
        return np.zeros((0, 2), dtype=np.float64)
    comp, n = ndi.label(free)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    sizes[0] = 0
    free = (sizes >= int(min_area))[comp]
    if not free.any():
        return np.zeros((0, 2), dtype=np.float64)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(free), 1.0)
    return _maxima(dist, free & (dist >= float(min_radius)), min_distance, centre_inside=True)


def add_uncovered_masks(
    labels: np.ndarray,
    table: dict,
    masks,
    predicted_iou,
    stability,
    *,
    min_new_fraction: float = 0.6,
    min_area: int = 10,
    fill_holes: bool = True,
    prompt: str = "seed",
) -> tuple[np.ndarray, dict]:
    """Add second-pass masks to a seeded segmentation, never changing the objects it has.

    Each mask (largest component, holes filled), best predicted IoU × stability first, keeps only
    its pixels still unlabelled; it becomes a new object when they are at least ``min_area`` and
    at least ``min_new_fraction`` of the mask (a mask mostly on an existing object is that object
    again, or two merged).

    Parameters
    ----------
    labels : (H, W) uint32
        Ids ``1..K`` of the first pass.
    table : dict of str to list
        Its object table (:data:`~napari_sam_micro.core.labels.OBJECT_COLUMNS`).
    masks : sequence of (H, W) bool
    predicted_iou, stability : (N,) float
    min_new_fraction : float
    min_area : int
    fill_holes : bool
    prompt : str
        Value of the new rows' ``prompt`` column.

    Returns
    -------
    labels : (H, W) uint32
        A new array: ids ``1..K`` unchanged, new objects ``K+1..``.
    table : dict of str to list
        A new table with the added rows.
    """
    out = np.array(labels, dtype=np.uint32, copy=True)
    rows = {c: list(table.get(c, [])) for c in OBJECT_COLUMNS}
    piou = np.asarray(predicted_iou, dtype=np.float64).reshape(-1)
    stab = np.asarray(stability, dtype=np.float64).reshape(-1)
    next_id = int(out.max()) + 1
    for i in np.argsort(-(piou * stab), kind="stable"):
        m = postprocess_mask(np.asarray(masks[i], bool), fill_holes=fill_holes, keep_largest=True)
        total = int(np.count_nonzero(m))
        new = postprocess_mask(m & (out == 0), keep_largest=True)
        area = int(np.count_nonzero(new))
        if total == 0 or area < int(min_area) or area < float(min_new_fraction) * total:
            continue
        out[new] = next_id
        row = object_row(next_id, new, float(piou[i]), float(stab[i]), prompt)
        for c in OBJECT_COLUMNS:
            rows[c].append(row[c])
        next_id += 1
    return out, rows
