"""The cross-correlation preview: each frame's correlation around zero shift, its peak marked."""

from __future__ import annotations

import numpy as np

from ._layers import peak_name, upsert_layer, xcorr_name
from ._model import META


def preview_steps(viewer, source: str, result, props: dict, frame_shape) -> tuple:
    """Two callables that publish ``<source> xcorr`` (each frame's correlation window,
    zero shift at the centre) and ``<source> xcorr peak`` (the peak found in it),
    placed beside the source layer (``props``: its scale and translate)."""
    xc = result.xcorr
    ndim = result.ndim
    radius = (xc.shape[1] - 1) // 2
    width = xc.shape[1]
    # place the preview just right of the image, half a frame high
    frame_scale = np.asarray(props["scale"][-ndim:], float)
    frame_origin = np.asarray(props["translate"][-ndim:], float)
    extent = frame_scale * np.asarray(frame_shape)
    k = 0.5 * float(extent[-2 if ndim >= 2 else -1]) / width
    origin = frame_origin.copy()
    origin[-1] += extent[-1] + 0.05 * extent[-1]
    scale = (props["scale"][0], *(k,) * ndim)
    translate = (props["translate"][0], *origin)
    finite = xc[np.isfinite(xc)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    xmeta = {META: {"role": "xcorr", "source": source, "radius": radius}}

    def xcorr_step():
        upsert_layer(
            viewer, xcorr_name(source), xc, metadata=xmeta, scale=scale,
            translate=translate, colormap="viridis", contrast_limits=(lo, hi),
        )

    # the measured peak of each frame: centre + the shift found in that window
    points = np.column_stack([np.arange(result.n_frames), radius + result.peaks])
    colors = np.where(result.outliers[:, None], [[1.0, 0.25, 0.25, 1.0]], [[0.0, 1.0, 1.0, 1.0]])
    pmeta = {META: {"role": "xcorr peak", "source": source}}

    def peak_step():
        upsert_layer(
            viewer, peak_name(source), points, kind="points", metadata=pmeta,
            scale=scale, translate=translate, size=max(1.5, width / 12), symbol="cross",
            face_color=colors, border_width=0, out_of_slice_display=False,
        )

    return xcorr_step, peak_step
