"""Frames whose registration is implausible: flagging and interpolation."""

from __future__ import annotations

import numpy as np

__all__ = ["flag_outliers", "interpolate_flagged", "interpolate_turns"]


def flag_outliers(shifts, quality, *, max_jump=None, min_quality=None) -> np.ndarray:
    """Flag frames whose quality or shift jump is implausible.

    A frame is flagged when its quality is 0 (it could not be registered),
    below ``min_quality`` (default: 6 robust standard deviations below the
    median quality, and at most 0.5 of it), or when its shift departs from
    the median of its neighbours (5-frame window) by more than ``max_jump``
    pixels (default: 6 robust standard deviations of those departures, at
    least 1 pixel).
    """
    shifts = np.asarray(shifts, float)
    quality = np.asarray(quality, float)
    n = len(shifts)
    flagged = np.zeros(n, bool)
    if n == 0:
        return flagged
    if min_quality is None:
        med = np.median(quality)
        mad = 1.4826 * np.median(np.abs(quality - med))
        min_quality = min(med - 6 * mad, 0.5 * med)
    # a frame that could not be registered at all (quality 0) is always flagged
    flagged |= (quality < min_quality) | (quality <= 0)
    if n >= 3:
        pad = np.pad(shifts, ((2, 2), (0, 0)), mode="edge")
        windows = np.stack([pad[i : i + n] for i in range(5)])
        local = np.median(windows, axis=0)
        dev = np.linalg.norm(shifts - local, axis=1)
        if max_jump is None:
            mad = 1.4826 * np.median(np.abs(dev - np.median(dev)))
            max_jump = max(1.0, np.median(dev) + 6 * mad)
        flagged |= dev > max_jump
    return flagged


def interpolate_flagged(shifts, flagged) -> np.ndarray:
    """Replace flagged frames' shifts by linear interpolation from good ones."""
    shifts = np.array(shifts, float)
    good = ~np.asarray(flagged, bool)
    if good.sum() == 0 or good.all():
        return shifts
    idx = np.arange(len(shifts))
    for ax in range(shifts.shape[1]):
        shifts[~good, ax] = np.interp(idx[~good], idx[good], shifts[good, ax])
    return shifts


def interpolate_turns(rotations, scales, flagged) -> tuple[np.ndarray, np.ndarray]:
    """Flagged frames' rotations and scales by linear interpolation from good ones
    (scale as its logarithm: a frame between 1/2 and 2 gets 1); ``scales`` None means 1."""
    rotations = np.asarray(rotations, float)
    scales = np.ones(len(rotations)) if scales is None else np.asarray(scales, float)
    both = interpolate_flagged(np.column_stack([rotations, np.log(scales)]), flagged)
    return both[:, 0], np.exp(both[:, 1])
