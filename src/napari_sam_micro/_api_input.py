"""Input handling of the Python API (:mod:`napari_sam_micro.api`): image layout, prompts, progress.

Kept apart from :mod:`napari_sam_micro.api` so that the public module reads as its functions. No
napari, no Qt, no torch.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import numpy as np

from .core.errors import ImageError, PromptError
from .core.preprocess import PreprocessConfig, plane_from_nd
from .core.progress import drain
from .core.prompts import Prompts, prompts_from_napari, prompts_from_sam

__all__ = ["ImageLayout", "image_layout", "make_prompts", "run_job", "COORDS"]

#: Coordinate orders the API takes: SAM's ``(x, y)`` (default) or numpy / napari ``(row, col)``.
COORDS = ("xy", "rc")


@dataclass(frozen=True, eq=False)
class ImageLayout:
    """Where the planes, rows, columns and channels of a user's image are.

    Attributes
    ----------
    data : array
        The image with the stepped axes (``axis``) moved to the front (a view for numpy arrays).
    leading : tuple of int
        Shape of the stepped axes (``()`` for a single plane).
    rgb : bool
        The last axis of ``data`` is RGB(A).
    channel_axis : int or None
        Axis of ``data`` holding channels.
    config : PreprocessConfig
        How each plane is normalised (channels last after :meth:`plane`).
    out_perm : tuple of int
        ``labels.transpose(out_perm)`` turns a ``leading + (H, W)`` label array into the axis order
        of the user's image (channels dropped).
    """

    data: object
    leading: tuple
    rgb: bool
    channel_axis: int | None
    config: PreprocessConfig
    out_perm: tuple

    def plane(self, index=()) -> np.ndarray:
        """``(H, W)`` or ``(H, W, C)`` plane at ``index`` along the stepped axes (channels last)."""
        return plane_from_nd(self.data, index, rgb=self.rgb, channel_axis=self.channel_axis)

    @property
    def hw(self) -> tuple[int, int]:
        shape = self.data.shape
        spatial = [a for a in range(len(self.leading), len(shape)) if a != self.channel_axis and not (self.rgb and a == len(shape) - 1)]
        return int(shape[spatial[0]]), int(shape[spatial[1]])


def _as_array(image):
    if hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__"):
        return image  # numpy, dask, zarr: planes are read one at a time
    try:
        return np.asarray(image)
    except Exception as err:  # ragged lists and the like
        raise ImageError(f"The image could not be read as an array of numbers ({err}).") from err


def _axis(value, ndim: int, what: str) -> int:
    try:
        ax = int(value)
    except (TypeError, ValueError) as err:
        raise ImageError(f"{what} must be a whole number (an axis index), not {value!r}.") from err
    if not -ndim <= ax < ndim:
        raise ImageError(f"{what}={value} does not exist: the image has {ndim} axes (0 to {ndim - 1}, or -1 for the last).")
    return ax % ndim


def _stepped_axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return ()
    values = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    steps = tuple(_axis(a, ndim, "axis") for a in values)
    if len(set(steps)) != len(steps):
        raise ImageError(f"axis={axis} names an axis twice.")
    return steps


def _guidance(shape, n_spatial: int, single_plane: bool) -> str:
    if n_spatial > 2 and single_plane:
        return (
            f"This takes one 2D plane, but the image has shape {tuple(shape)}, which leaves {n_spatial} axes for "
            "rows and columns. Pass one plane (image[z]), say where the channels are (channel_axis=..., or "
            "rgb=True for colour photographs), or segment a whole stack with segment_everything(image, axis=0)."
        )
    if n_spatial > 2:
        return (
            f"The image has shape {tuple(shape)}, which leaves {n_spatial} axes for rows and columns. Say which "
            "axis holds the planes (axis=0 for a z-stack (Z, Y, X); several with axis=(0, 1)) and, for "
            "channels, channel_axis=... (or rgb=True for colour photographs)."
        )
    return (
        f"The image has shape {tuple(shape)}, which leaves {n_spatial} axis for rows and columns once the "
        "planes (axis) and channels (channel_axis / rgb) are taken out: an image needs rows and columns."
    )


def _check_channels(shape, channel_axis, rgb: bool, channels) -> None:
    if rgb and shape[-1] not in (3, 4):
        raise ImageError(f"rgb=True needs 3 or 4 values on the last axis; the image has shape {tuple(shape)}.")
    if channel_axis is None:
        if channels is not None:
            raise ImageError("channels=... needs channel_axis=... (the axis that holds the channels).")
        return
    n = int(shape[channel_axis])
    if channels is None and n > 3:
        raise ImageError(
            f"The image has {n} channels on axis {channel_axis}: choose up to three with channels=(0, 2) "
            "(SAM sees three colour channels)."
        )
    for c in channels or ():
        if not -n <= int(c) < n:
            raise ImageError(f"Channel {c} does not exist: axis {channel_axis} has {n} channels (0 to {n - 1}).")


def image_layout(image, *, axis=None, channel_axis=None, channels=None, rgb=None, percentiles=(1.0, 99.8),
                 single_plane: bool = False) -> ImageLayout:
    """Check a user's image and say where its planes, rows, columns and channels are.

    Parameters
    ----------
    image : array-like
        Numbers (any integer, float or bool dtype), numpy axis order: rows before columns.
    axis : int or tuple of int, optional
        Axes stepped through plane by plane (e.g. ``0`` for a ``(Z, Y, X)`` stack).
    channel_axis : int, optional
        Axis holding channels (e.g. ``0`` for ``(C, Y, X)``).
    channels : tuple of int, optional
        Channels to use (at most three); default all (at most three).
    rgb : bool, optional
        The last axis is RGB(A). Default: True for an ``(H, W, 3|4)`` image without ``axis`` and
        ``channel_axis``.
    percentiles : (float, float)
        Intensity stretch of each plane (see :class:`~napari_sam_micro.core.preprocess.PreprocessConfig`).
    single_plane : bool
        The caller takes one plane (no ``axis``): the message for a stack says so.

    Raises
    ------
    ImageError
        Not numbers, too few or too many axes for the arguments, a bad axis or channel.
    """
    data = _as_array(image)
    shape, ndim = tuple(data.shape), len(data.shape)
    if np.dtype(data.dtype).kind not in "biuf":
        raise ImageError(f"The image must hold numbers (integers or floats), not {data.dtype} values.")
    if ndim < 2 or min(shape) < 1:
        raise ImageError(f"Expected an image with rows and columns, got an array of shape {shape}.")
    steps = _stepped_axes(axis, ndim)
    ca = None if channel_axis is None else _axis(channel_axis, ndim, "channel_axis")
    if ca is not None and ca in steps:
        raise ImageError(f"Axis {ca} cannot be both the channel axis and a plane axis.")
    if rgb and ca is not None:
        raise ImageError("Give either rgb=True (colour on the last axis) or channel_axis=..., not both.")
    if rgb is None:
        rgb = ca is None and not steps and ndim == 3 and shape[-1] in (3, 4)
    rgb = bool(rgb)
    if rgb and ndim - 1 in steps:
        raise ImageError("The last axis cannot be both the colour (rgb) axis and a plane axis.")
    n_spatial = ndim - len(steps) - (ca is not None) - int(rgb)
    if n_spatial != 2:
        raise ImageError(_guidance(shape, n_spatial, single_plane))
    _check_channels(shape, ca, rgb, channels)
    order = list(steps) + [a for a in range(ndim) if a not in steps]
    moved = data.transpose(order) if order != list(range(ndim)) else data
    moved_ca = None if ca is None else order.index(ca)
    kept = [a for a in order if a != ca and not (rgb and a == ndim - 1)]
    out_perm = tuple(kept.index(a) for a in sorted(kept))
    config = PreprocessConfig(
        percentiles=tuple(percentiles), channels=None if channels is None else tuple(channels),
        channel_axis=-1 if ca is not None else None, rgb=rgb,
    )
    leading = tuple(int(shape[a]) for a in steps)
    return ImageLayout(moved, leading, rgb, moved_ca, config, out_perm)


def _points_array(points, name: str, coords: str) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.size == 0:
        return pts.reshape(0, 2)
    if pts.ndim == 1 and pts.shape[0] == 2:
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != 2:
        order = "(x, y)" if coords == "xy" else "(row, col)"
        raise PromptError(f"{name} must be N points of two coordinates {order}: an array of shape (N, 2), got shape {pts.shape}.")
    return pts


def _boxes_array(boxes, coords: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:  # e.g. no objects selected: no box, as with None
        return arr.reshape(0, 4)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        order = "(x0, y0, x1, y1)" if coords == "xy" else "(row0, col0, row1, col1)"
        raise PromptError(f"boxes must be K boxes {order}: an array of shape (K, 4), got shape {arr.shape}.")
    return arr


def make_prompts(points=None, labels=None, boxes=None, *, hw, coords: str = "xy") -> Prompts:
    """The plugin's :class:`~napari_sam_micro.core.prompts.Prompts` from a user's arrays.

    Parameters
    ----------
    points : (N, 2) array-like, optional
        ``(x, y)`` with ``coords="xy"`` (SAM), ``(row, col)`` with ``coords="rc"`` (numpy, napari).
    labels : (N,) array-like or scalar, optional
        1 / True = object, 0 / False = background; default all 1.
    boxes : (4,) or (K, 4) array-like, optional
        ``(x0, y0, x1, y1)`` (``"xy"``) or ``(row0, col0, row1, col1)`` (``"rc"``).
    hw : (int, int)
        ``(H, W)`` of the plane.

    Raises
    ------
    PromptError
        Wrong shapes, labels other than 0 / 1, prompts off the image, boxes with no area.
    ValueError
        ``coords`` not ``"xy"`` or ``"rc"``.
    """
    if coords not in COORDS:
        raise ValueError(f"coords must be 'xy' (SAM order: x = column, y = row) or 'rc' (row, column), not {coords!r}.")
    pts = None if points is None else _points_array(points, "points", coords)
    if pts is not None and len(pts) == 0:
        pts = None
    if pts is None and labels is not None and np.size(labels):
        raise PromptError("labels were given without points.")
    box_arr = None if boxes is None else _boxes_array(boxes, coords)
    if box_arr is not None and len(box_arr) == 0:
        box_arr = None
    if pts is not None and labels is not None and np.ndim(labels) and np.size(labels) != len(pts):
        raise PromptError(f"{len(pts)} points but {np.size(labels)} labels: give one label per point (1 object, 0 background).")
    if coords == "xy":
        return prompts_from_sam(pts, labels, box_arr, hw)
    rects = None if box_arr is None else box_arr.reshape(-1, 2, 2)
    return prompts_from_napari(pts, labels, rects, hw)


#: Percent of the current stage, elapsed time and the stage's message (no rate: stages differ).
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}{postfix}]"


def _progress_bar(desc: str):
    """A tqdm bar (a widget in Jupyter when ipywidgets is installed), or None without tqdm."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tqdm's "IProgress not found" / experimental warnings
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        options = {"total": 100, "desc": desc, "leave": False, "bar_format": _BAR_FORMAT}
        try:
            return tqdm(**options)
        except ImportError:  # Jupyter without ipywidgets: the text bar
            from tqdm.std import tqdm as text_tqdm

            return text_tqdm(file=sys.stderr, **options)


def run_job(job, progress: bool, desc: str):
    """Drain a :mod:`~napari_sam_micro.core.progress` job, with a progress bar unless ``progress`` is False."""
    bar = _progress_bar(desc) if progress else None
    if bar is None:
        return drain(job)

    def show(report) -> None:
        if report.total:  # a job has stages of their own lengths: the bar shows the current one's fraction
            bar.n = int(round(100 * report.fraction))
        if report.message:
            bar.set_postfix_str(report.message[:70], refresh=False)
        bar.refresh()

    try:
        return drain(job, show)
    finally:
        bar.close()
