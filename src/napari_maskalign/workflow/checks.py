"""Looks at the data that can be made before the first frame is registered.

:func:`saturation_warning` says when a large share of a frame's pixels sit at
its largest value: saturated detector pixels are static, like the beam block,
and pull every shift to zero with a high quality unless they are masked.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SATURATED_SHARE", "saturation_warning"]

#: a frame with at least this share of its valid pixels at its largest value is
#: saturated (a diffraction pattern's brightest value is a few pixels)
SATURATED_SHARE = 0.05


def saturation_warning(frame, valid=None, *, which: str = "frame 0") -> str | None:
    """A warning in plain words when ``frame`` looks saturated, else None.

    ``valid`` is the engine mask (True = valid); masked pixels are not counted.
    """
    frame = np.asarray(frame)
    if frame.dtype.kind == "b":
        return None  # two values only: nothing saturates
    use = np.isfinite(frame) if frame.dtype.kind == "f" else np.ones(frame.shape, bool)
    if valid is not None:
        use &= np.asarray(valid, bool)
    values = frame[use]
    if values.size == 0:
        return None
    top = values.max()
    if top == values.min():
        return None  # a flat frame: the engine says so itself
    share = float(np.count_nonzero(values == top)) / values.size
    if share < SATURATED_SHARE:
        return None
    top_text = f"{top:g}" if frame.dtype.kind == "f" else str(int(top))
    return (f"{share:.0%} of the pixels of {which} that are used sit at its largest value, "
            f"{top_text} (saturated?): static pixels pull the shifts towards 0 with a high "
            "quality; mask them (nonzero in the mask file) or check the exposure")
