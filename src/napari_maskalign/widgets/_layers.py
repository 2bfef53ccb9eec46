"""Output layers and layer helpers, without Qt (testable on a bare ``ViewerModel``).

Output layers are named after their source (``<name> aligned``,
``<name> xcorr``, ``<name> xcorr peak``, ``<name> mean``) and updated in
place on a re-run instead of piling up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Layer, Points

from ._model import META, AlignedResult

#: above this many output bytes the aligned stack is a lazy dask array
LAZY_BYTES = 1 << 30


def aligned_name(source: str) -> str:
    return f"{source} aligned"


def xcorr_name(source: str) -> str:
    return f"{source} xcorr"


def peak_name(source: str) -> str:
    return f"{source} xcorr peak"


def mask_name(source: str) -> str:
    return f"{source} mask"


def frame_shape(layer: Layer) -> tuple[int, ...]:
    """Shape of one frame of a stack layer (frames along the first axis)."""
    shape = tuple(layer.data.shape)
    return shape[1:] if len(shape) >= 3 else shape


def stack_problem(
    layer: Layer | None, what: str = "image layer", *, single_frame_ok: bool = False
) -> str | None:
    """Why ``layer`` cannot be registered as a stack, in plain words; None if it can.

    With ``single_frame_ok`` a plain 2D image passes too (it can still have a mask).
    """
    if layer is None:
        return f"there is no {what} to work on: open or choose a stack of frames first"
    if not isinstance(layer, Image):
        return f"'{layer.name}' is not an image layer"
    if layer.multiscale:
        return (
            f"'{layer.name}' is a multiscale (pyramid) image whose levels have different "
            "shapes; open its full-resolution level as a plain stack"
        )
    if layer.rgb:
        return f"'{layer.name}' is an RGB image; split it into channels and register one of them"
    shape = tuple(layer.data.shape)
    if len(shape) == 2 and not single_frame_ok:
        return (
            f"'{layer.name}' is a single 2D image, not a stack: registration needs frames "
            "along the first axis"
        )
    if len(shape) not in (2, 3, 4):
        return (
            f"'{layer.name}' has {len(shape)} dimensions {shape}; expected a stack of 2D or 3D "
            "frames (3 or 4 dimensions, frames first)"
        )
    if np.dtype(layer.data.dtype).kind not in "biuf":
        return f"'{layer.name}' holds {layer.data.dtype} values; registration needs real numbers"
    return None


def layer_named(viewer, name: str) -> Layer | None:
    try:
        return viewer.layers[name]
    except KeyError:
        return None


def source_of(layer: Layer | None) -> str | None:
    """Name of the source stack of an output layer (aligned, xcorr, peaks); else its own name."""
    if layer is None:
        return None
    meta = layer.metadata.get(META)
    if isinstance(meta, dict) and meta.get("source"):
        return str(meta["source"])
    return layer.name


def find_result_layer(viewer, source: str | None) -> Layer | None:
    """The ``<source> aligned`` layer carrying a result, if any."""
    if source is None:
        return None
    layer = layer_named(viewer, aligned_name(source))
    return layer if AlignedResult.from_layer(layer) is not None else None


def same_layer(a: Layer | None, b: Layer | None) -> bool:
    """Identity of layers, also through the proxies napari hands to plugins (``is`` fails there)."""
    if a is None or b is None:
        return a is b
    return bool(a == b)


def is_output_layer(layer: Layer) -> bool:
    meta = layer.metadata.get(META)
    return isinstance(meta, dict) and "role" in meta


def check_output_name(viewer, name: str, cls: type) -> Layer | None:
    """The layer ``name`` an output of type ``cls`` would update, or None.

    Raises ``ValueError`` in plain words if a layer of another type holds the name.
    """
    existing = layer_named(viewer, name)
    if existing is not None and not isinstance(existing, cls):
        raise ValueError(
            f"a {type(existing).__name__} layer named '{name}' is in the way of the output: "
            "rename or delete it"
        )
    return existing


def drop_preview(viewer, source: str) -> None:
    """Remove the ``<source> xcorr`` preview layers we made (a stale preview would
    contradict new shifts); layers of the same name that we did not make stay."""
    for name in (xcorr_name(source), peak_name(source)):
        layer = layer_named(viewer, name)
        if layer is not None and META in layer.metadata:
            viewer.layers.remove(layer)


def upsert_layer(viewer, name: str, data, kind: str = "image", **props) -> Layer:
    """Update layer ``name`` in place (a re-run) or add it.

    ``metadata`` is set before the data so listeners of data events read the
    new result. If the number of dimensions changed, the layer is replaced at
    the same position.
    """
    existing = check_output_name(viewer, name, {"image": Image, "points": Points}[kind])
    ndim = np.ndim(data) if kind != "points" else np.shape(data)[1]
    if existing is not None and existing.ndim == ndim:
        meta = props.pop("metadata", None)
        if meta is not None:
            existing.metadata = {**existing.metadata, **meta}
        existing.data = data
        for key, value in props.items():
            setattr(existing, key, value)
        return existing
    add = {"image": viewer.add_image, "points": viewer.add_points}[kind]
    layer = add(data, name=name, **props)
    if existing is not None:
        index = viewer.layers.index(existing)
        viewer.layers.remove(existing)
        viewer.layers.move(viewer.layers.index(layer), index)
    return layer


def display_props(layer: Image) -> dict[str, Any]:
    """What an aligned copy shares with its source: geometry and look."""
    return {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "colormap": layer.colormap,
        "contrast_limits": tuple(layer.contrast_limits),
        "gamma": layer.gamma,
    }


# ----------------------------------------------------------------------------
# the frame slider


def frame_axis(viewer, layer: Layer) -> int:
    """The viewer's dims axis that walks through ``layer``'s frames."""
    return viewer.dims.ndim - layer.ndim


def current_frame(viewer, layer: Layer) -> int:
    """The frame of ``layer`` the viewer's slider shows."""
    point = np.asarray(viewer.dims.point, dtype=float)[-layer.ndim :]
    index = float(layer.world_to_data(point)[0])
    return int(np.clip(round(index), 0, layer.data.shape[0] - 1))


def go_to_frame(viewer, layer: Layer, frame: int) -> None:
    """Move the viewer's slider to frame ``frame`` of ``layer``."""
    frame = int(np.clip(frame, 0, layer.data.shape[0] - 1))
    coords = np.zeros(layer.ndim)
    coords[0] = frame
    world = layer.data_to_world(coords)
    viewer.dims.set_point(frame_axis(viewer, layer), float(world[0]))


# ----------------------------------------------------------------------------
# outputs


def wants_lazy(data) -> bool:
    """Whether the aligned copy of ``data`` should be a lazy dask array.

    Lazy for anything that is not an in-memory numpy array (dask, zarr,
    memory-mapped files) and for stacks whose float copy exceeds ``LAZY_BYTES``.
    """
    if not isinstance(data, np.ndarray) or isinstance(data, np.memmap):
        return True
    return int(np.prod(data.shape)) * max(4, np.dtype(data.dtype).itemsize) > LAZY_BYTES
