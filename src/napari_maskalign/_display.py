"""How the plugin's layers look: contrast that shows the pattern, the mask's colours.

Contrast limits come from percentiles of the valid pixels of a few frames.

napari sets an image's contrast from its minimum and maximum, so one hot
pixel (or a saturated one) at 60000 counts leaves a pattern of a few thousand
counts black. Every layer the plugin makes or opens gets its limits here
instead: low and high percentiles of the pixels that hold data -- NaN and
infinities, pixels a mask ignores and the detector's static outliers (hot,
dead, stuck, saturated pixels: :func:`~napari_maskalign.engine.find_static_outliers`)
left out -- in a handful of frames spread over the stack, so a lazy stack is
read a few frames deep, never whole.

Masks are painted in one bright colour (:func:`mask_colormap`), the same
whether the sample, ``maskalign demo`` or the mask dock made them.

No Qt, and napari only for the colormap: the reader, the sample data and the
docks' workers use it.
"""

from __future__ import annotations

import numpy as np

from .engine.backends._frames import spread_indices

__all__ = [
    "HOT_LABEL",
    "SAMPLE_FRAMES",
    "mask_colormap",
    "pattern_limits",
    "sample_indices",
    "stack_axis_labels",
]

#: frames read to set the contrast of a stack
SAMPLE_FRAMES = 8
#: the percentiles of the valid pixels that become the contrast limits
LOW, HIGH = 0.1, 99.9
#: static outliers are looked for in this many of them ...
OUTLIER_FRAMES = 3
#: ... when a frame has at most this many pixels (about a second on a busy machine);
#: in larger frames the hot pixels are too few of the pixels to move the percentiles
OUTLIER_PIXELS = 1 << 20


def sample_indices(n: int, k: int = SAMPLE_FRAMES) -> list[int]:
    """Up to ``k`` frame numbers spread evenly over ``n`` frames (first and last included)."""
    return spread_indices(n, k).tolist()


def pattern_limits(stack, valid=None, *, stack_axis: bool = True, find_outliers: bool = False,
                   low: float = LOW, high: float = HIGH) -> tuple[float, float] | None:
    """Contrast limits ``(low, high)`` for ``stack`` from the percentiles of its valid pixels.

    Parameters
    ----------
    stack : array
        Frames along the first axis (numpy, memory-mapped, dask, any per-frame
        indexable stack), or one image with ``stack_axis=False``.
    valid : ndarray of bool, optional
        One frame's shape, True on the pixels that hold data (the engine's
        convention): the beam block and the static outliers a run found are
        False and take no part.
    find_outliers : bool
        Look for static outlier pixels in the sampled frames first (for a
        stack nobody has looked at yet: a file just opened), in frames of at
        most ``OUTLIER_PIXELS`` pixels.
    low, high : float
        The percentiles (0-100) of the valid finite pixels.

    Returns
    -------
    ``(low, high)`` as floats with ``high > low``, or None when no pixel
    holds a finite value (napari's own choice is then as good as any).
    """
    if stack_axis:
        n = int(stack.shape[0])
        frames = [np.asarray(stack[i]) for i in sample_indices(n)]
    else:
        frames = [np.asarray(stack)]
    if not frames:
        return None
    sample = np.stack(frames)
    keep = np.ones(sample.shape[1:], bool) if valid is None else np.asarray(valid, bool).copy()
    if keep.shape != sample.shape[1:]:
        keep = np.ones(sample.shape[1:], bool)  # a mask of another shape says nothing here
    if (find_outliers and len(frames) >= OUTLIER_FRAMES and sample.dtype.kind in "biuf"
            and keep.size <= OUTLIER_PIXELS):
        from .engine import find_static_outliers

        some = sample[sample_indices(len(frames), OUTLIER_FRAMES)]
        try:
            keep &= ~find_static_outliers(some, valid=keep, n_frames=OUTLIER_FRAMES)
        except ValueError:  # too few valid pixels to tell: percentiles alone
            pass
    values = sample[:, keep] if keep.any() else sample.reshape(len(frames), -1)
    if values.dtype.kind not in "biuf":
        return None
    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
    if values.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if not hi > lo:  # a flat image: a window around its one value
        lo, hi = float(values.min()), float(values.max())
        if not hi > lo:
            hi = lo + 1.0
    return lo, hi


#: the label "Suggest from stack" paints hot, dead and saturated pixels with
HOT_LABEL = 2


def mask_colormap():
    """Painted labels in one bright colour that stands out on dark and on magma-like
    images, hot pixels (label 2) in magenta; unpainted pixels transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(
        color_dict={None: "#00e5ff", 0: "transparent", HOT_LABEL: "#ff3df5"}
    )


def stack_axis_labels(ndim: int) -> tuple[str, ...]:
    """Axis labels of a stack of ``ndim`` dimensions: ``frame`` first, then z, y, x
    (napari's own are ``-3, -2, -1``, which label the frame slider "-3")."""
    return ("frame", *("z", "y", "x")[-(ndim - 1):]) if ndim >= 3 else ("y", "x")[-ndim:]
