"""Output layers and layer helpers, without Qt (testable on a bare ``ViewerModel``).

Output layers are named after their source (``<name> aligned``,
``<name> aligned mask``, ``<name> mean``, ``<name> mean count``,
``<name> xcorr``, ``<name> xcorr peak``) and updated in place on a re-run
instead of piling up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer, Points

from .._display import stack_axis_labels
from ._model import META, AlignedResult

#: above this many output bytes the aligned stack is a lazy dask array
LAZY_BYTES = 1 << 30


def _suffixed(suffix: str):
    def name(source: str) -> str:
        return f"{source} {suffix}"

    name.__doc__ = f"The name ``<source> {suffix}``."
    return name


aligned_name = _suffixed("aligned")
xcorr_name = _suffixed("xcorr")
peak_name = _suffixed("xcorr peak")
mask_name = _suffixed("mask")
mean_name = _suffixed("mean")
count_name = _suffixed("mean count")
#: the per-frame mask of integer aligned output: nonzero where a frame has no data
#: (painted = ignore, like every mask)
nodata_name = _suffixed("aligned mask")


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


def drop_outputs(viewer, *names: str) -> None:
    """Remove the output layers ``names`` that we made (a stale output would contradict
    new shifts); layers of the same names that we did not make stay."""
    for name in names:
        layer = layer_named(viewer, name)
        if layer is not None and META in layer.metadata:
            viewer.layers.remove(layer)


def drop_preview(viewer, source: str) -> None:
    """Remove the ``<source> xcorr`` preview layers we made."""
    drop_outputs(viewer, xcorr_name(source), peak_name(source))


KINDS = {"image": Image, "labels": Labels, "points": Points}


def upsert_layer(viewer, name: str, data, kind: str = "image", *, layer_type: type | None = None,
                 first_time: dict | None = None, **props) -> Layer:
    """Update layer ``name`` in place (a re-run) or add it.

    ``metadata`` is set before the data so listeners of data events read the
    new result. If the number of dimensions changed (or the layer is not a
    ``layer_type``, a subclass of the kind's class), the layer is replaced at
    the same position. ``first_time``: settings only for a new layer (e.g. a
    layer that starts hidden keeps whatever the user chose on a re-run).
    """
    existing = check_output_name(viewer, name, KINDS[kind])
    ndim = np.ndim(data) if kind != "points" else np.shape(data)[1]
    fits = layer_type is None or isinstance(existing, layer_type)
    if existing is not None and existing.ndim == ndim and fits:
        meta = props.pop("metadata", None)
        if meta is not None:
            existing.metadata = {**existing.metadata, **meta}
        existing.data = data
        for key, value in props.items():
            setattr(existing, key, value)
        return existing
    props.update(first_time or {})
    if layer_type is not None:
        layer = viewer.add_layer(layer_type(data, name=name, **props))
    else:
        add = {"image": viewer.add_image, "labels": viewer.add_labels,
               "points": viewer.add_points}[kind]
        layer = add(data, name=name, **props)
    if existing is not None:
        index = viewer.layers.index(existing)
        viewer.layers.remove(existing)
        viewer.layers.move(viewer.layers.index(layer), index)
    return layer


def output_axis_labels(layer: Layer) -> tuple[str, ...]:
    """The axis labels outputs of ``layer`` carry: its own when someone named its axes,
    else :func:`stack_axis_labels`."""
    labels = tuple(str(a) for a in getattr(layer, "axis_labels", ()))
    defaults = tuple(str(i) for i in range(-layer.ndim, 0))
    return stack_axis_labels(layer.ndim) if not labels or labels == defaults else labels


def display_props(layer: Image) -> dict[str, Any]:
    """What an aligned copy shares with its source: geometry and look (the frame
    slider named "frame" unless the source names its axes)."""
    return {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "colormap": layer.colormap,
        "contrast_limits": tuple(layer.contrast_limits),
        "gamma": layer.gamma,
        "axis_labels": output_axis_labels(layer),
    }


def frame_props(props: dict[str, Any]) -> dict[str, Any]:
    """``display_props`` for one frame of the stack (the mean): the frame axis dropped."""
    out = {**props, "scale": tuple(props["scale"][1:]), "translate": tuple(props["translate"][1:])}
    if "axis_labels" in out:
        out["axis_labels"] = tuple(out["axis_labels"][1:])
    return out


def shift_units(layer: Layer | None, ndim: int) -> tuple[np.ndarray, str]:
    """Factors from pixels to the unit the frames' axes are measured in, and its name.

    Pixels (``px``) unless the layer's frame axes carry one physical unit
    (``layer.units``, e.g. nm): then a shift of one pixel is ``scale`` of it.
    """
    if layer is None:
        return np.ones(ndim), "px"
    names = {f"{u:~}" for u in tuple(layer.units)[-ndim:]}
    if len(names) != 1 or names & {"pixel", "px", ""}:
        return np.ones(ndim), "px"
    return np.asarray(layer.scale[-ndim:], float), names.pop()


def known_truth(layer: Layer | None, n_frames: int, ndim: int) -> np.ndarray | None:
    """The true shifts a layer carries (``metadata["expected_shifts"]``, relative to
    frame 0, as the sample data has), if they fit the frames; else None."""
    if layer is None:
        return None
    truth = layer.metadata.get("expected_shifts")
    if truth is None:
        return None
    truth = np.asarray(truth, float)
    return truth if truth.shape == (n_frames, ndim) and np.isfinite(truth).all() else None


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
