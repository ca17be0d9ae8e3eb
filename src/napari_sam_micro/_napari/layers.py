"""The plugin's layers: found (adopted) by ``layer.metadata``, created when missing.

Every layer this plugin makes for an image carries
``layer.metadata["napari_sam_micro"] = {"role": ROLE, "image": IMAGE_LAYER_NAME}`` with ``ROLE`` one of

``"prompts"``
    ``Points``: click prompts; feature ``"positive"`` (bool) marks positive / negative points.
``"boxes"``
    ``Shapes``: rectangles are box prompts (one object per rectangle).
``"preview"``
    ``Labels``: the mask(s) the current prompts would commit (object ``k`` drawn as label ``k + 1``).
``"output"``
    ``Labels``: committed objects, one id per object, with the object table in ``features``.

A layer saved and re-opened with its metadata, or made by another widget of this plugin, is
adopted instead of duplicated.

Geometry: the label / prompt layers have the image's *spatial* shape: the image shape without
its RGB(A) axis (napari ``rgb=True``) or without a channel axis chosen in the widget (only the
first axis may be a channel axis, so that the remaining axes stay aligned with the image's).
The last two axes are rows and columns; leading axes (z, t …) index 2D planes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import ImageError
from ..core.large_planes import is_large_plane

__all__ = [
    "META_KEY",
    "ROLES",
    "ImageGeometry",
    "PluginLayers",
    "layer_meta",
    "layer_role",
    "find_plugin_layer",
    "image_geometry",
    "ensure_plugin_layers",
    "current_plane_index",
    "plane_data",
    "POSITIVE_COLOR",
    "NEGATIVE_COLOR",
]

META_KEY = "napari_sam_micro"
ROLES = ("prompts", "boxes", "preview", "output")

#: Colours of positive and negative prompt points.
POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"

_SUFFIX = {"prompts": "SAM points", "boxes": "SAM boxes", "preview": "SAM preview", "output": "SAM labels"}


@dataclass(frozen=True)
class ImageGeometry:
    """Spatial geometry of an image layer, shared by the plugin layers made for it.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape ``(..., H, W)`` (no RGB / channel axis): the shape of the label layers.
    scale, translate : tuple of float
        Per spatial axis, copied from the image layer.
    rgb : bool
        The image layer is RGB(A) (channels last, napari ``rgb=True``).
    channel_axis : int or None
        Axis of the image data holding channels (0), or None.
    """

    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    rgb: bool = False
    channel_axis: int | None = None

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 for a plain 2D image)."""
        return len(self.shape)

    @property
    def plane_hw(self) -> tuple[int, int]:
        """``(H, W)`` of one 2D plane."""
        return int(self.shape[-2]), int(self.shape[-1])

    @property
    def n_planes(self) -> int:
        """Number of 2D planes (product of the leading axes)."""
        return int(np.prod(self.shape[:-2], dtype=np.int64)) if self.ndim > 2 else 1


@dataclass
class PluginLayers:
    """The four layers the annotator works with for one image."""

    prompts: object
    boxes: object
    preview: object
    output: object


def layer_meta(layer) -> dict:
    """The plugin's metadata dict of ``layer`` (empty when it has none)."""
    meta = getattr(layer, "metadata", None) or {}
    value = meta.get(META_KEY)
    return value if isinstance(value, dict) else {}


def layer_role(layer) -> str | None:
    """``"prompts"``, ``"boxes"``, ``"preview"``, ``"output"`` or None for a foreign layer."""
    role = layer_meta(layer).get("role")
    return role if role in ROLES else None


def _layer_class(role: str):
    from napari.layers import Labels, Points, Shapes

    return {"prompts": Points, "boxes": Shapes, "preview": Labels, "output": Labels}[role]


def find_plugin_layer(layers, role: str, image_name: str, geometry: ImageGeometry | None = None):
    """The layer of ``role`` made for the image named ``image_name``, or None.

    Parameters
    ----------
    layers : napari LayerList
        ``viewer.layers``.
    role : str
        One of :data:`ROLES`.
    image_name : str
        Name of the image layer.
    geometry : ImageGeometry, optional
        When given, label layers must have ``geometry.shape`` and point / shape layers
        ``geometry.ndim`` dimensions to be adopted.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    cls = _layer_class(role)
    for layer in layers:
        meta = layer_meta(layer)
        if meta.get("role") != role or meta.get("image") != image_name or not isinstance(layer, cls):
            continue
        if geometry is not None:
            if role in ("preview", "output") and tuple(layer.data.shape) != tuple(geometry.shape):
                continue
            if role in ("prompts", "boxes") and layer.ndim != geometry.ndim:
                continue
        return layer
    return None


def image_geometry(image_layer, channel_axis: int | None = None) -> ImageGeometry:
    """Spatial geometry of ``image_layer``.

    Parameters
    ----------
    image_layer : napari.layers.Image
        The image to annotate.
    channel_axis : int or None
        Data axis holding channels (only 0 is supported), for a multichannel image kept in one
        layer; None for grey or RGB images.

    Raises
    ------
    ImageError
        Not an Image layer, fewer than two spatial axes, or a channel axis other than the first.
        Planes of any size are accepted: large ones are read window by window (:func:`plane_data`).
    """
    from napari.layers import Image

    if not isinstance(image_layer, Image):
        kind = type(image_layer).__name__ if image_layer is not None else "nothing"
        raise ImageError(f"Pick an image layer to annotate (the selected layer is {kind}, not an image).")
    shape = tuple(int(s) for s in image_layer.data.shape)
    rgb = bool(image_layer.rgb)
    scale = tuple(float(s) for s in image_layer.scale)
    translate = tuple(float(t) for t in image_layer.translate)
    if rgb:
        if channel_axis not in (None, len(shape) - 1, -1):
            raise ImageError("An RGB image has its colours on the last axis; leave the channel axis at 'none'.")
        spatial = shape[:-1]
        channel_axis = None
    elif channel_axis is not None:
        if channel_axis != 0:
            raise ImageError(
                "Only the first axis can be the channel axis. Open the image with napari's channel_axis "
                "option (one layer per channel) or move the channels to the first axis."
            )
        if len(shape) < 3:
            raise ImageError("A 2D image has no channel axis; set the channel axis to 'none'.")
        spatial = shape[1:]
        scale, translate = scale[1:], translate[1:]
    else:
        spatial = shape
    if len(spatial) < 2:
        raise ImageError(f"The image must have at least two spatial axes (rows, columns); it has shape {shape}.")
    h, w = spatial[-2:]
    if h < 2 or w < 2:
        raise ImageError(f"The image plane is {h} × {w} pixels: too small to segment.")
    return ImageGeometry(tuple(spatial), tuple(scale), tuple(translate), rgb, channel_axis)


def _meta(role: str, image_name: str) -> dict:
    return {META_KEY: {"role": role, "image": image_name}}


def _point_size(geometry: ImageGeometry) -> float:
    h, w = geometry.plane_hw
    return float(max(6.0, round(max(h, w) / 60.0)))


def ensure_plugin_layers(viewer, image_layer, geometry: ImageGeometry, *, select_prompts: bool = True) -> PluginLayers:
    """Adopt or create the prompts, boxes, preview and output layers for ``image_layer``.

    New layers get the image's spatial shape, scale and translation. The prompts layer is left
    selected in ``"add"`` mode (click to add a point) unless ``select_prompts`` is False.
    """
    name = image_layer.name
    common = {"scale": geometry.scale, "translate": geometry.translate}
    layers = viewer.layers
    output = find_plugin_layer(layers, "output", name, geometry)
    if output is None:
        output = viewer.add_labels(
            np.zeros(geometry.shape, dtype=np.uint32),
            name=f"{name} [{_SUFFIX['output']}]",
            metadata=_meta("output", name),
            **common,
        )
    preview = find_plugin_layer(layers, "preview", name, geometry)
    if preview is None:
        preview = viewer.add_labels(
            np.zeros(geometry.shape, dtype=np.uint8),
            name=f"{name} [{_SUFFIX['preview']}]",
            metadata=_meta("preview", name),
            opacity=0.5,
            blending="translucent",
            **common,
        )
        preview.editable = False
        from napari.utils.colormaps import DirectLabelColormap

        # one colour for every previewed object, distinct from the committed labels' colours
        preview.colormap = DirectLabelColormap(
            color_dict={None: np.array([0.0, 1.0, 1.0, 1.0]), 0: np.zeros(4)}
        )
    boxes = find_plugin_layer(layers, "boxes", name, geometry)
    if boxes is None:
        boxes = viewer.add_shapes(
            None,
            ndim=geometry.ndim,
            name=f"{name} [{_SUFFIX['boxes']}]",
            metadata=_meta("boxes", name),
            edge_color="yellow",
            face_color=[0, 0, 0, 0],
            edge_width=max(1.0, _point_size(geometry) / 4),
            **common,
        )
    prompts = find_plugin_layer(layers, "prompts", name, geometry)
    if prompts is None:
        prompts = viewer.add_points(
            None,
            ndim=geometry.ndim,
            name=f"{name} [{_SUFFIX['prompts']}]",
            metadata=_meta("prompts", name),
            features={"positive": np.zeros(0, dtype=bool)},
            feature_defaults={"positive": True},
            face_color="positive",
            face_color_cycle={True: POSITIVE_COLOR, False: NEGATIVE_COLOR},
            border_color="white",
            size=_point_size(geometry),
            **common,
        )
    if select_prompts:
        viewer.layers.selection.active = prompts
        prompts.mode = "add"
    return PluginLayers(prompts=prompts, boxes=boxes, preview=preview, output=output)


def _image_layer_axes(viewer, image_layer) -> tuple[int, int]:
    """World axes of the image layer's last two (spatial) data axes."""
    world_ndim = viewer.dims.ndim
    return world_ndim - 2, world_ndim - 1


def current_plane_index(viewer, image_layer, geometry: ImageGeometry) -> tuple[int, ...]:
    """Indices of the leading spatial axes of the plane shown in the viewer (``()`` for 2D images).

    Raises
    ------
    ImageError
        The viewer shows 3D, or does not show the image's rows and columns, or the dims slider is
        outside the image.
    """
    if viewer.dims.ndisplay != 2:
        raise ImageError("Switch the viewer to 2D view to annotate: prompts work on one 2D plane at a time.")
    if tuple(viewer.dims.displayed) != _image_layer_axes(viewer, image_layer):
        raise ImageError(
            "The viewer does not show the image's rows and columns (the axes were rolled or transposed). "
            "Reset the axis order to annotate."
        )
    point = np.asarray(viewer.dims.point, dtype=np.float64)
    data = np.asarray(image_layer.world_to_data(point), dtype=np.float64)
    if geometry.channel_axis is not None:
        data = data[1:]
    lead = data[:-2]
    index = tuple(int(np.round(v)) for v in lead)
    for axis, (i, n) in enumerate(zip(index, geometry.shape[:-2])):
        if not 0 <= i < n:
            raise ImageError(
                f"The current slice (index {i} on axis {axis}) is outside the image, which has {n} slices "
                "on that axis. Move the slider onto the image."
            )
    return index


def plane_data(image_layer, geometry: ImageGeometry, index: tuple[int, ...]) -> np.ndarray:
    """The raw data of one 2D plane: ``(H, W)`` grey, or ``(H, W, C)`` RGB / multichannel.

    Parameters
    ----------
    image_layer : napari.layers.Image
        The image (numpy, dask, zarr … data; only this plane is read). Multiscale layers use
        their full-resolution level.
    geometry : ImageGeometry
        From :func:`image_geometry`.
    index : tuple of int
        From :func:`current_plane_index`.

    Returns
    -------
    array
        numpy; for a plane of more than :data:`~napari_sam_micro.core.large_planes.LARGE_PLANE_PIXELS`
        a lazy dask array, which the annotation session and the tiled everything mode read window
        by window.
    """
    data = image_layer.data
    if getattr(image_layer, "multiscale", False):
        data = data[0]
    index = tuple(int(i) for i in index)
    if is_large_plane(geometry.plane_hw):
        import dask.array as da  # a napari dependency

        lazy = data if isinstance(data, da.Array) else da.from_array(data, chunks=getattr(data, "chunks", "auto"))
        if geometry.channel_axis is not None:
            return da.moveaxis(lazy[(slice(None), *index)], 0, -1)
        return lazy[index] if index else lazy
    if geometry.channel_axis is not None:
        plane = np.asarray(data[(slice(None), *index)])  # (C, H, W)
        return np.moveaxis(plane, 0, -1)
    return np.asarray(data[index]) if index else np.asarray(data)
