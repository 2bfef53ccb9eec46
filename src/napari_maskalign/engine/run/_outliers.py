"""Frames whose registration is implausible: flagging and interpolation."""

from __future__ import annotations

import numpy as np

__all__ = ["ambiguous_frames", "ambiguity_warning", "flag_outliers", "interpolate_flagged",
           "interpolate_turns"]


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
        dev = np.linalg.norm(shifts - _window_median(shifts), axis=1)
        if max_jump is None:
            mad = 1.4826 * np.median(np.abs(dev - np.median(dev)))
            max_jump = max(1.0, np.median(dev) + 6 * mad)
        flagged |= dev > max_jump
    return flagged


def _window_median(shifts) -> np.ndarray:
    """Each frame's 5-frame neighbourhood median (itself in the middle), the stack's
    ends padded with the end frame's shift."""
    n = len(shifts)
    pad = np.pad(shifts, ((2, 2), (0, 0)), mode="edge")
    return np.median(np.stack([pad[i : i + n] for i in range(5)]), axis=0)


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


#: a second correlation peak within this many noise standard deviations of the first is
#: a tie the data cannot break (measured on a 160 px Bragg lattice at 20 and 200 counts:
#: frames that locked onto another lattice vector led by 0.1-6.1, correct ones by 0-8)
TIE_MARGIN = 10.0
#: ... and the frame is suspect when its shift departs from its neighbours' by more (px)
TIE_JUMP = 1.5


def ambiguous_frames(shifts, alternatives, margins) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose correlation peak is a tie the neighbours break against it, and
    how far (px, per axis; 0 elsewhere) their error may reach.

    A periodic pattern (a crystal's lattice of Bragg spots) correlates nearly as
    well one lattice vector away as at the true shift: a frame then picks either
    peak by the noise, and its quality cannot tell. Drift is smooth, so a frame is
    flagged when its second peak (``alternatives``, NaN: none) trails the first by
    less than ``TIE_MARGIN`` noise standard deviations (``margins``) and the chosen
    shift departs from the median of its 5-frame neighbourhood (at the stack's ends:
    from the line through its two neighbours) by more than ``TIE_JUMP`` pixels. A
    frame whose peak stands clear is never flagged here.
    Measured: the second peak is the true shift in most locked frames, not all.
    """
    shifts = np.asarray(shifts, float)
    n = len(shifts)
    flagged = np.zeros(n, bool)
    if n < 3:
        return flagged, np.zeros_like(shifts)
    local = _window_median(shifts)
    # an end frame has neighbours on one side only: its padded window held its own shift
    # three times, so it was never flagged (the last frame of a 4-frame Bragg stack at 20
    # counts, a lattice vector off, 20 px, claimed 0.01 px and went unsaid). It is
    # compared with its two neighbours' line instead (a steady drift: no departure)
    local[0] = 2 * shifts[1] - shifts[2]
    local[-1] = 2 * shifts[-2] - shifts[-3]
    tie = np.asarray(margins, float) < TIE_MARGIN
    tie &= np.all(np.isfinite(np.asarray(alternatives, float)), axis=1)
    flagged = tie & (np.linalg.norm(shifts - local, axis=1) > TIE_JUMP)
    # either peak may be the true one, or neither (a lattice has many): the error
    # reaches the other peak and the neighbours' shift
    alternatives = np.asarray(alternatives, float)
    reach = np.fmax(np.abs(alternatives - shifts), np.abs(local - shifts))
    return flagged, np.where(flagged[:, None], reach, 0.0)


def ambiguity_warning(flagged, shifts, alternatives) -> str | None:
    """The sentence naming the frames :func:`ambiguous_frames` flagged, or None."""
    idx = np.flatnonzero(flagged)
    if idx.size == 0:
        return None
    said = ", ".join(
        f"{i} ({_fmt(shifts[i])}, or {_fmt(alternatives[i])})" for i in idx[:10]
    ) + (f" and {idx.size - 10} more" if idx.size > 10 else "")
    return (
        f"{idx.size} frame(s) have two nearly equal correlation peaks (a periodic pattern, "
        f"e.g. a lattice of Bragg spots) and the higher disagrees with the neighbouring "
        f"frames: {said}. They are flagged as outliers and their uncertainty reaches the "
        "other peak and the neighbours' shift; paint more of the pattern's aperiodic parts, or set max_shift below the "
        "lattice spacing."
    )


def _fmt(shift) -> str:
    return "(" + ", ".join(f"{v:+.1f}" for v in np.asarray(shift, float)) + ")"
