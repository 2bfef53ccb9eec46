"""Has the run locked? Shifts that sit at zero while the frames do not match.

A static structure (a beam block left unpainted, clustered hot pixels, a
detector's seams) can dominate a correlation: every frame then matches the
reference best where the structure does, at zero shift, with a high quality,
whatever the pattern did. The shifts alone cannot tell this from a stack that
did not drift. The frames can: aligned by the measured shifts, two frames far
apart in time must then match each other as well as two neighbours do (the
noise of two frames, static structures cancelling in both), and a drift the
shifts missed leaves the pattern's edges in the far pair's residual.

:func:`lock_warning` looks only when (nearly) every shift is below half a
pixel (a run that measured real drift has not locked at zero) and reads three
frames.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

__all__ = ["lock_warning"]

#: the far pair's residual power over the neighbours' above which the run is doubtful
#: (measured: 1.00-1.06 for correct runs at 20 and 200 counts, 3.3-4.8 for locked ones)
RATIO = 2.0
#: shifts below this (px, every axis) count as "at zero"
NEAR_ZERO = 0.5
#: ... and this share of the frames must be there
SHARE = 0.8
#: the frames are compared smoothed by a Gaussian of this many pixels
SMOOTH = 2.0


def _moved(frame, shift) -> np.ndarray:
    """``frame`` moved by ``shift`` (Fourier space; only small shifts are asked)."""
    if not np.any(shift):
        return frame
    spec = ndi.fourier_shift(sfft.rfftn(frame), shift, n=frame.shape[-1])
    return sfft.irfftn(spec, frame.shape)


def _residual_power(a, b, use) -> float:
    """Mean squared residual of ``a`` against ``gain * b + offset`` over ``use``, the
    largest 1 % left out (isolated static outliers, moved by a fraction of a pixel,
    would ring; a missed drift leaves residuals along every edge of the pattern)."""
    x, y = b[use], a[use]
    design = np.column_stack([x, np.ones_like(x)])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    e2 = (y - design @ coef) ** 2
    keep = e2 <= np.quantile(e2, 0.99)
    return float(np.mean(e2[keep]))


def lock_power_ratio(read, n_frames: int, shifts, valid=None) -> float | None:
    """The residual power of the first and last frames aligned onto each other by
    their measured shifts, over that of the last two frames; None when the stack is
    too short. ``read(i)``: frame ``i`` as float64."""
    if n_frames < 3:
        return None
    shifts = np.asarray(shifts, float)
    first, before, last = (read(i) for i in (0, n_frames - 2, n_frames - 1))
    shape = last.shape
    use = np.ones(shape, bool) if valid is None else np.asarray(valid, bool).copy()
    # away from the frame's edges and the mask (the moved frames wrap around there)
    reach = int(np.ceil(np.max(np.abs(shifts[[0, -2, -1]])) + 3 + 3 * SMOOTH))
    use = ndi.binary_erosion(use, iterations=reach, border_value=0)
    if use.sum() < 64:
        return None
    # fill the ignored pixels before moving (their values are meaningless)
    if valid is not None:
        first, before, last = (np.where(valid, f, np.mean(f[valid])) for f in (first, before, last))
    # smoothed: white noise loses most of its power, a pattern moved by more than its
    # edges' width keeps most of its residual (the test sees a missed drift at low dose)
    first, before, last = (ndi.gaussian_filter(f, SMOOTH) for f in (first, before, last))
    far = _residual_power(_moved(last, shifts[-1] - shifts[0]), first, use)
    near = _residual_power(_moved(last, shifts[-1] - shifts[-2]), before, use)
    return far / near if near > 0 else None


def lock_warning(read, n_frames: int, shifts, valid=None) -> str | None:
    """A sentence when the run looks locked onto a static structure, else None.

    ``read(i)`` gives frame ``i`` (float64), ``shifts`` the measured ones
    ``(n_frames, ndim)``, ``valid`` the mask registration used (True = used).
    """
    shifts = np.asarray(shifts, float)
    if len(shifts) < 3:
        return None
    still = np.max(np.abs(shifts), axis=1) < NEAR_ZERO
    if still.mean() < SHARE:
        return None
    ratio = lock_power_ratio(read, n_frames, shifts, valid)
    if ratio is None or ratio <= RATIO:
        return None
    return (
        f"the shifts sit near 0 for {still.mean():.0%} of the frames, but the first and last "
        f"frames, aligned by them, differ {ratio:.1f} times more than two neighbouring frames "
        "do: the registration has probably locked onto something static (an unpainted beam "
        "block, clusters of hot or dead detector pixels, detector seams) instead of the pattern. Paint the static parts "
        "into the mask, keep hot_pixels='auto', or check the mask is not inverted."
    )


def run_warnings(stack, shifts, valid=None, shift_only: bool = True) -> dict:
    """What a finished run carries besides its shifts: ``{"warnings": [...],
    "lock_suspected": bool}`` for :func:`build_result` (``shift_only`` models only:
    rotations and scales would not be undone here)."""
    text = None
    if shift_only:
        from ..backends._frames import read_frame

        text = lock_warning(lambda i: read_frame(stack, i, np.float64), int(stack.shape[0]),
                            shifts, valid)
    return {"warnings": [] if text is None else [text], "lock_suspected": text is not None}
