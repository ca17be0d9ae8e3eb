"""Turn any microscopy plane into the ``(H, W, 3)`` ``float32`` ``[0, 1]`` image SAM encodes.

Rules
-----
* **Grey 2D** (``uint8``, ``uint16``, other ints, floats, bool): per-image percentile stretch
  (``config.percentiles``, default 1 % – 99.8 %), clipped to ``[0, 1]`` and replicated to 3
  channels. Percentiles use finite values only, so NaN / inf pixels neither shift the range nor
  survive (they become 0). A single hot pixel (e.g. 65535 in a uint16 image) does not squash the
  image. If the two percentiles coincide (a mostly flat image) the finite min / max is used; a
  constant image becomes all zeros; an image without a finite value raises :class:`ImageError`.
* **RGB(A)** (``config.rgb``, last axis 3 or 4): ``uint8`` is divided by 255 (no stretch, SAM was
  trained on 8-bit photographs); other dtypes are stretched per channel. Alpha is dropped.
* **Multichannel** (``config.channel_axis`` set): ``config.channels`` picks up to three channels
  (all of them when there are at most three), each stretched on its own, then
  1 channel → grey (replicated), 2 channels → ``(c0, c1, (c0 + c1) / 2)`` (the mean keeps
  structures of either channel visible in every SAM input channel), 3 channels → RGB. More than
  three channels without a choice raises :class:`ImageError` asking the user to pick.
* **64-bit integers** are shifted to start at 0 (exactly, in integer arithmetic) before the
  stretch, so a large offset (e.g. ``uint64`` values near 2**63) keeps its contrast.
* **Speed**: for planes larger than :data:`PERCENTILE_MAX_SAMPLES` pixels the percentiles are
  computed on a regular strided subsample (every ``s``-th row and column, ``s`` chosen so that
  about that many pixels are used); the normalisation itself is applied to every pixel.
* **Fixed ranges** (``config.value_ranges``): the stretch of each used channel is given instead of
  measured, so that the tiles of a large plane are normalised alike (the ranges are measured once
  on the plane's strided subsample, :func:`sample_plane` and :func:`measure_value_ranges`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ImageError
from .prompts import check_inside
from .windows import square_window

__all__ = [
    "PreprocessConfig",
    "PERCENTILE_MAX_SAMPLES",
    "normalize_image",
    "normalize_plane",
    "PlaneNormalizer",
    "ChannelStretch",
    "to_rgb",
    "normalize_channel",
    "plane_from_nd",
    "prompt_window",
    "sample_step",
    "sample_plane",
    "measure_value_ranges",
]

#: Above this many pixels, percentiles are computed on a strided subsample.
PERCENTILE_MAX_SAMPLES = 1 << 22


@dataclass(frozen=True)
class PreprocessConfig:
    """How a plane is normalised (part of the embedding cache key).

    Parameters
    ----------
    percentiles : (float, float)
        Lower and upper percentile of the intensity stretch, ``0 <= lo < hi <= 100``.
    channels : tuple of int, optional
        Channels to use (indices along ``channel_axis``), at most three.
    channel_axis : int, optional
        Axis of the image handed to :func:`normalize_image` that holds channels (``-1`` for the
        planes returned by :func:`plane_from_nd`).
    rgb : bool
        The image is RGB(A) with channels on the last axis (napari's ``Image.rgb``).
    value_ranges : tuple of (float, float), optional
        ``(lo, hi)`` raw values mapped to 0 and 1, one pair per used channel (in the order of
        ``channels``): replaces measuring the percentiles on the image (tiles of a large plane).
    """

    percentiles: tuple[float, float] = (1.0, 99.8)
    channels: tuple[int, ...] | None = None
    channel_axis: int | None = None
    rgb: bool = False
    value_ranges: tuple[tuple[float, float], ...] | None = None

    def __post_init__(self):
        lo, hi = (float(p) for p in self.percentiles)
        if not (0.0 <= lo < hi <= 100.0):
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        object.__setattr__(self, "percentiles", (lo, hi))
        if self.channels is not None:
            chans = tuple(int(c) for c in self.channels)
            if not 1 <= len(chans) <= 3:
                raise ImageError(f"Choose between one and three channels (got {len(chans)}).")
            object.__setattr__(self, "channels", chans)
        if self.channel_axis is not None:
            object.__setattr__(self, "channel_axis", int(self.channel_axis))
        object.__setattr__(self, "rgb", bool(self.rgb))
        if self.value_ranges is not None:
            ranges = tuple((float(lo), float(hi)) for lo, hi in self.value_ranges)
            object.__setattr__(self, "value_ranges", ranges)

    def key(self) -> str:
        """Stable text identifying this configuration (used in cache keys)."""
        lo, hi = self.percentiles
        chans = "all" if self.channels is None else ",".join(map(str, self.channels))
        axis = "none" if self.channel_axis is None else str(self.channel_axis)
        key = f"pct={lo!r}-{hi!r};ch={chans};axis={axis};rgb={int(self.rgb)}"
        if self.value_ranges is not None:  # (absent otherwise: keys of earlier caches stay valid)
            key += ";ranges=" + ",".join(f"{a!r}:{b!r}" for a, b in self.value_ranges)
        return key


def sample_step(shape_hw, max_samples: int | None = None) -> int:
    """Stride of the regular subsample on which the percentiles of an ``(H, W)`` plane are measured
    (``max_samples`` default: :data:`PERCENTILE_MAX_SAMPLES`)."""
    max_samples = PERCENTILE_MAX_SAMPLES if max_samples is None else int(max_samples)
    n = int(shape_hw[0]) * int(shape_hw[1])
    if n <= max_samples:
        return 1
    return int(math.ceil(math.sqrt(n / max_samples)))


def _sample(channel: np.ndarray) -> np.ndarray:
    step = sample_step(channel.shape[:2])
    return channel if step == 1 else channel[::step, ::step]


def sample_plane(plane, max_samples: int | None = None) -> np.ndarray:
    """The strided subsample of a (lazy) plane on which its percentiles are measured.

    Reads every ``s``-th row and column only (:func:`sample_step`), so a dask or zarr plane of any
    size costs about ``max_samples`` pixels of memory (plus the chunks being read).

    Parameters
    ----------
    plane : (H, W) or (H, W, C) array-like
        numpy, dask or zarr; channels last.
    """
    step = sample_step(plane.shape[:2], max_samples)
    sel = (slice(None, None, step), slice(None, None, step))
    part = plane[sel] if step > 1 else plane
    if hasattr(part, "compute"):  # dask
        part = part.compute()
    return np.asarray(part)


def measure_value_ranges(plane, config: PreprocessConfig | None = None, sample: np.ndarray | None = None) -> PreprocessConfig:
    """``config`` with the ``value_ranges`` the whole plane would be normalised with.

    Measured on :func:`sample_plane` (the same pixels :func:`normalize_image` uses for a large
    plane), so tiles normalised with the result match crops of the whole normalised plane.

    Parameters
    ----------
    plane : (H, W) or (H, W, C) array-like
        numpy, dask or zarr; channels last (``config.channel_axis`` -1 or ``config.rgb``).
    config : PreprocessConfig, optional
    sample : np.ndarray, optional
        ``sample_plane(plane)`` when the caller has read it already (a lazy plane is read once).
    """
    import dataclasses

    config = config or PreprocessConfig()
    if config.value_ranges is not None:
        return config
    normalizer = PlaneNormalizer(sample_plane(plane) if sample is None else sample, config)
    return dataclasses.replace(config, value_ranges=normalizer.value_ranges)


def _shift_to_zero(channel: np.ndarray, low: int) -> np.ndarray:
    """64-bit integers minus ``low`` (their minimum), as ``uint64`` (exact, no overflow).

    float64 holds 53 bits: near 2**60 neighbouring values collapse (contrast lost) and
    ``uint64`` values near 2**63 all round to one number (a black image). The differences to
    the minimum are small in real data, so they convert to float64 exactly.
    """
    # modular uint64 arithmetic gives the exact difference for int64 too (max - min < 2**64)
    out = channel.astype(np.uint64)  # a copy: the caller's array is left alone
    out -= np.uint64(low)
    return out


def _as_number(channel) -> np.ndarray:
    channel = np.asarray(channel)
    if channel.dtype == bool:
        channel = channel.astype(np.uint8)
    if not (np.issubdtype(channel.dtype, np.integer) or np.issubdtype(channel.dtype, np.floating)):
        raise ImageError(f"Images of type {channel.dtype} cannot be segmented; convert to a number type.")
    return channel


@dataclass(frozen=True)
class ChannelStretch:
    """The percentile stretch of one channel, measured once on the whole channel, applied to any crop.

    Parameters
    ----------
    lo, hi : float
        Values mapped to 0 and 1 (after ``offset``); ``hi <= lo``: a flat channel (all zeros).
    offset : int, optional
        64-bit integers: their minimum, subtracted first (exactly, in ``uint64``).
    """

    lo: float
    hi: float
    offset: int | None = None

    @classmethod
    def measure(cls, channel: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8)) -> ChannelStretch:
        """The stretch of a whole ``(H, W)`` channel (rules in the module docstring)."""
        channel = _as_number(channel)
        is_float = np.issubdtype(channel.dtype, np.floating)
        offset = None
        sample = _sample(channel)
        if channel.dtype.itemsize == 8 and not is_float:
            # the uint64 view of a large offset starts at 0 (only the sample is shifted here)
            offset = int(np.asarray(channel.min()).astype(np.uint64))
            sample = _shift_to_zero(sample, offset)
        if is_float:
            finite_sample = sample[np.isfinite(sample)]
            if finite_sample.size == 0 and sample.size != channel.size:
                finite_sample = channel[np.isfinite(channel)]
            if finite_sample.size == 0:
                raise ImageError("The image has no valid pixel values (all NaN or infinite).")
        else:
            finite_sample = sample.ravel()
        if is_float or finite_sample.dtype.itemsize > 4:
            finite_sample = finite_sample.astype(np.float64, copy=False)
        # (integers up to 32 bits: numpy interpolates them in float64 exactly as after a float64 copy)
        lo, hi = np.percentile(finite_sample, percentiles)
        if not hi > lo:
            lo, hi = float(finite_sample.min()), float(finite_sample.max())
            if sample.size != channel.size:
                vals = channel[np.isfinite(channel)] if is_float else channel
                if offset is not None:
                    vals = _shift_to_zero(vals, offset)
                lo, hi = float(vals.min()), float(vals.max())
        return cls(float(lo), float(hi), offset)

    def apply(self, channel: np.ndarray) -> np.ndarray:
        """``(h, w)`` float32 in ``[0, 1]`` of a crop of the measured channel (NaN / inf → 0)."""
        channel = _as_number(channel)
        is_float = np.issubdtype(channel.dtype, np.floating)
        if self.offset is not None:
            channel = _shift_to_zero(channel, self.offset)
        lo, hi = self.lo, self.hi
        if not hi > lo:
            return np.zeros(channel.shape, np.float32)
        # float32 is exact for <= 16-bit data (and float32 input); wider types use float64 so that
        # large offsets (e.g. int32 counts around 1e7) keep their precision.
        if channel.dtype.itemsize <= 2 or channel.dtype == np.float32:
            out = channel.astype(np.float32)
            out -= np.float32(lo)
            out *= np.float32(1.0 / (hi - lo))
        else:
            wide = channel.astype(np.float64)  # in place from here: one float64 copy at a time
            wide -= lo
            wide *= 1.0 / (hi - lo)
            out = wide.astype(np.float32)
            del wide
        np.clip(out, 0.0, 1.0, out=out)
        if is_float:
            out[~np.isfinite(channel)] = 0.0
        return out


def normalize_channel(channel: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8)) -> np.ndarray:
    """Percentile-stretch one 2D channel to ``float32`` in ``[0, 1]`` (rules in the module docstring).

    Parameters
    ----------
    channel : (H, W) array
        Any real dtype or bool.
    percentiles : (float, float)

    Returns
    -------
    (H, W) float32
    """
    return ChannelStretch.measure(channel, percentiles).apply(channel)


def _stack3(chans: list[np.ndarray]) -> np.ndarray:
    if len(chans) == 1:
        return np.repeat(chans[0][:, :, None], 3, axis=2)
    if len(chans) == 2:
        mean = (chans[0] + chans[1]) * np.float32(0.5)
        return np.stack([chans[0], chans[1], mean], axis=2)
    return np.stack(chans[:3], axis=2)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float32 C-contiguous: a grey ``(H, W)`` plane replicated, an ``(H, W, 3)`` one as is."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image)


def normalize_image(image: np.ndarray, config: PreprocessConfig | None = None) -> np.ndarray:
    """Normalise one 2D plane (grey, RGB(A) or multichannel) for SAM.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` grey; ``(H, W, 3|4)`` with ``config.rgb``; or 3D with ``config.channel_axis``.
    config : PreprocessConfig, optional
        Defaults to ``PreprocessConfig()``.

    Returns
    -------
    (H, W, 3) float32
        Values in ``[0, 1]``, C-contiguous.

    Raises
    ------
    ImageError
        Wrong dimensionality, no finite value, more than three channels without a choice.
    """
    return to_rgb(normalize_plane(image, config))


def normalize_plane(image: np.ndarray, config: PreprocessConfig | None = None) -> np.ndarray:
    """:func:`normalize_image` without replicating a grey result to three channels.

    A third of the memory for grey planes; ``to_rgb(normalize_plane(x, c))`` equals
    ``normalize_image(x, c)``. For crops of a plane see :class:`PlaneNormalizer`.

    Returns
    -------
    (H, W) or (H, W, 3) float32
        ``(H, W)`` for grey planes and a single chosen channel; values in ``[0, 1]``, C-contiguous.
    """
    return PlaneNormalizer(image, config).crop()


class PlaneNormalizer:
    """:func:`normalize_plane` in two steps: the stretch is measured on the whole plane once, then
    any crop is normalised on its own (equal to the crop of the normalised plane).

    Models that encode windows need no normalised copy of the whole plane.

    Parameters
    ----------
    image : np.ndarray
        As for :func:`normalize_image` (kept by reference, not copied).
    config : PreprocessConfig, optional

    Raises
    ------
    ImageError
        Wrong dimensionality, no finite value, more than three channels without a choice.
    """

    def __init__(self, image: np.ndarray, config: PreprocessConfig | None = None):
        config = config or PreprocessConfig()
        if not (isinstance(image, np.ndarray) or (hasattr(image, "shape") and hasattr(image, "dtype"))):
            image = np.asarray(image)  # lists and the like; lazy arrays (dask, zarr) are kept unread
        if int(np.prod(image.shape)) == 0:
            raise ImageError("The image is empty (zero pixels).")
        pct = config.percentiles
        self._rgb8 = False
        if config.channel_axis is not None:
            if image.ndim != 3:
                raise ImageError(
                    f"Expected a 2D image with a channel axis (3 dimensions), got {image.ndim} dimensions."
                )
            last = config.channel_axis in (-1, image.ndim - 1)
            data = image if last else np.moveaxis(np.asarray(image), config.channel_axis, -1)
            n = data.shape[-1]
            chans = config.channels
            if chans is None:
                if n > 3:
                    raise ImageError(
                        f"The image has {n} channels; SAM uses at most three. Pick the channels to segment on."
                    )
                chans = tuple(range(n))
            bad = [c for c in chans if not -n <= c < n]
            if bad:
                raise ImageError(f"Channel {bad[0]} does not exist: the image has {n} channels (0–{n - 1}).")
        elif config.rgb:
            if image.ndim != 3 or image.shape[-1] not in (3, 4):
                raise ImageError(f"An RGB image must be (height, width, 3 or 4), got shape {image.shape}.")
            data, chans = image, (0, 1, 2)
            self._rgb8 = image.dtype == np.uint8
        elif image.ndim == 2:
            data, chans = image, None
        else:
            raise ImageError(
                f"Expected a 2D image plane, got shape {image.shape}. Choose a single plane (slice), "
                "mark the layer as RGB, or set the channel axis."
            )
        self._data = data
        self._chans = chans
        if self._rgb8:
            self._stretches = []
        elif config.value_ranges is not None:
            self._stretches = _given_stretches(config.value_ranges, 1 if chans is None else len(chans))
        elif chans is None:
            self._stretches = [ChannelStretch.measure(data, pct)]
        else:
            self._stretches = [ChannelStretch.measure(data[..., c], pct) for c in chans]

    @property
    def value_ranges(self) -> tuple[tuple[float, float], ...] | None:
        """Raw ``(lo, hi)`` per used channel (None for 8-bit RGB, which is not stretched)."""
        if self._rgb8:
            return None
        return tuple((s.lo + (s.offset or 0), s.hi + (s.offset or 0)) for s in self._stretches)

    @property
    def hw(self) -> tuple[int, int]:
        """``(H, W)`` of the plane."""
        return int(self._data.shape[0]), int(self._data.shape[1])

    @property
    def grey(self) -> bool:
        """Whether the result is single-channel ``(H, W)``."""
        return len(self._stretches) == 1

    def crop(self, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The normalised ``image[y0:y1, x0:x1]`` (``window = (y0, y1, x0, x1)``; None: the whole plane).

        Returns
        -------
        (h, w) or (h, w, 3) float32
            As :func:`normalize_plane`, C-contiguous.
        """
        data = self._data
        if window is not None:
            y0, y1, x0, x1 = (int(v) for v in window)
            data = data[y0:y1, x0:x1]
        if hasattr(data, "compute"):  # dask: only this window is read
            data = data.compute()
        data = np.asarray(data)
        if self._rgb8:
            out = data[..., :3].astype(np.float32)
            out *= np.float32(1.0 / 255.0)
        elif self._chans is None:
            out = self._stretches[0].apply(data)
        else:
            normed = [st.apply(data[..., c]) for c, st in zip(self._chans, self._stretches)]
            out = normed[0] if len(normed) == 1 else _stack3(normed)
        return np.ascontiguousarray(out, dtype=np.float32)


def _given_stretches(ranges, n: int) -> list[ChannelStretch]:
    if len(ranges) != n:
        raise ImageError(f"{len(ranges)} intensity ranges given for {n} channels.")
    return [ChannelStretch(lo, hi) for lo, hi in ranges]


def plane_from_nd(data, index=(), rgb: bool = False, channel_axis: int | None = None) -> np.ndarray:
    """Extract one 2D plane (plus channels) from an nD image.

    Parameters
    ----------
    data : array-like
        nD image (numpy, dask or zarr; only the plane is read). Axes: leading axes (t, z …),
        then ``(row, col)``, then the RGB axis when ``rgb``; ``channel_axis`` may be anywhere.
    index : tuple of int
        Position along the leading (non-channel) axes, in order. Extra trailing entries (e.g.
        napari's full ``dims.current_step``) are ignored.
    rgb : bool
        The last axis is RGB(A).
    channel_axis : int, optional
        Axis of ``data`` holding channels.

    Returns
    -------
    np.ndarray
        ``(H, W)``, or ``(H, W, C)`` with channels (RGB or ``channel_axis``) moved **last**: pass
        ``channel_axis=-1`` (or ``rgb=True``) to :func:`normalize_image`.
    """
    ndim = len(data.shape)
    axes = list(range(ndim))
    if channel_axis is not None:
        if not -ndim <= int(channel_axis) < ndim:
            raise ImageError(
                f"Channel axis {channel_axis} does not exist: the image (shape {tuple(data.shape)}) has "
                f"{ndim} axes (0–{ndim - 1}, or -1 for the last)."
            )
        channel_axis = int(channel_axis) % ndim
        axes.remove(channel_axis)
    if rgb:
        axes.remove(ndim - 1)
    spatial = axes[-2:]
    leading = axes[:-2]
    if len(spatial) < 2:
        raise ImageError(f"The image (shape {tuple(data.shape)}) has fewer than two spatial dimensions.")
    index = tuple(int(i) for i in index)
    if len(index) < len(leading):
        raise ValueError(f"index {index} needs one entry per leading axis ({len(leading)})")
    sel: list = [slice(None)] * ndim
    for ax, i in zip(leading, index):
        if not -data.shape[ax] <= i < data.shape[ax]:
            raise ImageError(f"Plane {i} does not exist along axis {ax} (size {data.shape[ax]}).")
        sel[ax] = i
    plane = np.asarray(data[tuple(sel)])
    if channel_axis is not None:
        # Position of the channel axis among the kept axes.
        kept = [ax for ax in range(ndim) if ax not in leading]
        plane = np.moveaxis(plane, kept.index(channel_axis), -1)
    return plane


def prompt_window(prompt, image_hw, scale: float = 2.0, min_size: int = 64) -> tuple[int, int, int, int]:
    """Square window around a prompt, for crop-and-upscale segmentation of small objects.

    Parameters
    ----------
    prompt : array-like
        A box ``(4,)`` ``(x0, y0, x1, y1)`` or points ``(N, 2)`` ``(x, y)`` (SAM order).
    image_hw : (int, int)
        ``(H, W)`` of the image.
    scale : float
        Window side = ``scale`` × the longer side of the prompt's bounding box.
    min_size : int
        Minimum window side in pixels.

    Returns
    -------
    (y0, y1, x0, x1) : int
        Half-open window ``image[y0:y1, x0:x1]`` centred on the prompt, shifted (not shrunk) to
        stay inside the image, and never larger than the image.

    Raises
    ------
    PromptError
        A point off the image, a box completely off it, or a NaN coordinate: a window shifted
        onto the image would give a confident mask of whatever lies there.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    p = np.asarray(prompt, dtype=np.float64)
    if p.shape == (4,):
        check_inside((h, w), boxes_xyxy=p)
        x0, y0, x1, y1 = p
    else:
        p = p.reshape(-1, 2)
        if p.shape[0] == 0:
            raise ValueError("prompt_window needs a box or at least one point")
        check_inside((h, w), points_xy=p)
        x0, y0 = p.min(axis=0)
        x1, y1 = p.max(axis=0)
    side = max(float(min_size), scale * max(x1 - x0, y1 - y0))
    return square_window((x0 + x1) / 2.0, (y0 + y1) / 2.0, side, (h, w))
