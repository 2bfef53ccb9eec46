"""The cross-correlation preview: each frame's correlation around zero shift, read as shifts.

``<source> xcorr`` holds, per frame, the masked normalized cross-correlation
for every whole-pixel trial shift within the radius (zero shift at the
centre), placed beside the stack; ``<source> xcorr peak`` marks, per frame,
zero shift (a white ``+``) and the peak that was found (a cross, red for a
flagged frame), with a caption under the window that gives the peak's
shift in pixels. Hovering either layer reports the trial shift
under the cursor in pixels (not image coordinates) and the correlation there.

The spot's width is the width of the pattern's own features (a few pixels
for smooth diffraction rings), also on the reference frame, where the frame
is compared with itself: the shift's precision comes from where the spot's
centre is (fitted to a fraction of a pixel), not from its width.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Points

from ._layers import layer_named, peak_name, upsert_layer, xcorr_name
from ._model import META, axis_names

PEAK_COLOR = [0.0, 1.0, 1.0, 1.0]
OUTLIER_COLOR = [1.0, 0.25, 0.25, 1.0]
ZERO_COLOR = [1.0, 1.0, 1.0, 1.0]


def shift_text(shift) -> str:
    """``"y +1.25, x -0.40 px"`` for a shift per axis."""
    names = axis_names(len(shift))
    return ", ".join(f"{a} {v:+.2f}" for a, v in zip(names, shift)) + " px"


class _ShiftStatus:
    """For the preview layers: the status bar shows the trial shift under the cursor.

    The layers' data coordinates are window pixels with zero shift at
    ``radius`` (in the layer's metadata); the shift is the offset from there,
    in the convention of the shift table (what registers the frame).
    """

    def get_status(self, position=None, *, world: bool = False, **kwargs) -> dict:
        status = super().get_status(position, world=world, **kwargs)
        radius = self.metadata.get(META, {}).get("radius")
        if position is None or radius is None:
            return status
        pos = np.asarray(position, float)[-self.ndim :]
        data = np.asarray(self.world_to_data(pos) if world else pos, float)
        text = "shift " + shift_text(data[1:] - radius)
        value = status.get("value", "")
        status["coords"] = text
        status["coordinates"] = f"{text}: correlation {value}" if value else text
        return status


class ShiftMapImage(_ShiftStatus, Image):
    """The ``<source> xcorr`` layer: an Image whose hover status reads as shifts."""


class ShiftMarks(_ShiftStatus, Points):
    """The ``<source> xcorr peak`` layer: zero-shift and peak marks, status as shifts."""


def placement(props: dict, frame_shape, width: int) -> tuple[tuple, tuple]:
    """``(scale, translate)`` of the preview: right of the stack, half a frame high."""
    ndim = len(frame_shape)
    frame_scale = np.asarray(props["scale"][-ndim:], float)
    frame_origin = np.asarray(props["translate"][-ndim:], float)
    extent = frame_scale * np.asarray(frame_shape)
    k = 0.5 * float(extent[-2 if ndim >= 2 else -1]) / width
    origin = frame_origin.copy()
    origin[-1] += extent[-1] + 0.05 * extent[-1]
    return (props["scale"][0], *(k,) * ndim), (props["translate"][0], *origin)


def display_range(xc: np.ndarray) -> tuple[float, float]:
    """Contrast limits that show the upper part of each frame's peak.

    A smooth pattern correlates with itself over many pixels, so over its
    full range the surface is one broad blob; the upper half between the
    typical floor and the typical peak shows where the peak is, and still
    shows a weaker second peak (a static object matching itself at zero).
    """
    n = xc.shape[0]
    flat = xc.reshape(n, -1)
    finite = np.isfinite(flat)
    if not finite.any():
        return 0.0, 1.0
    with np.errstate(all="ignore"):
        peaks = np.nanmax(np.where(finite, flat, np.nan), axis=1)
        floors = np.nanmin(np.where(finite, flat, np.nan), axis=1)
    hi = float(np.nanmax(peaks))
    top, floor = float(np.nanmedian(peaks)), float(np.nanmedian(floors))
    lo = top - 0.5 * (top - floor)
    if not np.isfinite(lo) or lo >= hi:
        lo = float(np.nanmin(floors))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def marks(result, radius: int) -> tuple[np.ndarray, dict]:
    """Per frame: a point at zero shift, one at the peak found, and a caption under the
    window that says the peak's shift; their per-point settings (symbols, colours,
    labels). Points are (frame, *window position)."""
    n, ndim = result.n_frames, result.ndim
    width = 2 * radius + 1
    frames = np.arange(n)[:, None]
    centre = np.full((n, ndim), float(radius))
    peaks = radius + np.asarray(result.peaks, float)
    below = np.zeros((n, ndim))
    below[:, -2 if ndim >= 2 else -1] = width + 0.7  # under the window's lower left corner
    below[:, -1] = -0.5
    data = np.vstack([np.hstack([frames, p]) for p in (centre, peaks, below)])
    outlier = np.asarray(result.outliers, bool)[:, None]
    colors = np.vstack([np.tile(ZERO_COLOR, (n, 1)),
                        np.where(outlier, OUTLIER_COLOR, PEAK_COLOR),
                        np.zeros((n, 4))])  # the caption's point is invisible
    captions = [("outlier peak " if bad else "peak ") + shift_text(p)
                for p, bad in zip(result.peaks, outlier[:, 0])]
    return data, {
        "symbol": np.array(["cross"] * n + ["x"] * n + ["disc"] * n),
        "face_color": colors,
        "features": {"kind": np.array(["zero shift"] * n + ["peak"] * n + ["caption"] * n),
                     "label": [""] * (2 * n) + captions},
    }


def preview_steps(viewer, source: str, result, props: dict, frame_shape) -> tuple:
    """Two callables that publish ``<source> xcorr`` and ``<source> xcorr peak``
    (``props``: the stack's scale and translate)."""
    xc = result.xcorr
    radius = (xc.shape[1] - 1) // 2
    width = xc.shape[1]
    scale, translate = placement(props, frame_shape, width)
    lo, hi = display_range(xc)
    xmeta = {META: {"role": "xcorr", "source": source, "radius": radius}}

    def xcorr_step():
        upsert_layer(
            viewer, xcorr_name(source), xc, metadata=xmeta, scale=scale,
            translate=translate, layer_type=ShiftMapImage, contrast_limits=(lo, hi),
            first_time={"colormap": "viridis"},
        )

    data, per_point = marks(result, radius)
    size = max(1.0, width / 20)
    pmeta = {META: {"role": "xcorr peak", "source": source, "radius": radius}}

    def peak_step():
        upsert_layer(
            viewer, peak_name(source), data, kind="points", metadata=pmeta,
            layer_type=ShiftMarks, scale=scale, translate=translate, size=size,
            canvas_size_limits=(11, 22), border_width=0.1, border_color=per_point["face_color"],
            out_of_slice_display=False,
            **per_point, text={"string": "{label}", "size": 9, "color": "white",
                               "anchor": "upper_left"},
        )

    return xcorr_step, peak_step


def preview_is_new(viewer, source: str) -> bool:
    """Whether the preview would be added now (not updated in place)."""
    return layer_named(viewer, xcorr_name(source)) is None
