"""The drift plot the ``maskalign register --plot`` option saves (matplotlib, no display).

Two panels against frame number: the shift along each axis (the shift in
use as a line; where it differs from the measured one, e.g. interpolated
outliers, the measured one as open circles) and the match quality; flagged
outliers are marked in red in both. Plotting stays out of the engine and the
workflow; napari's Shifts dock draws its own, interactive version.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["PLOT_SUFFIXES", "drift_figure", "save_drift_plot"]

PLOT_SUFFIXES = (".png", ".pdf", ".svg")
_COLORS = {"z": "tab:green", "y": "tab:orange", "x": "tab:blue"}


def save_drift_plot(path, result, *, title: str = "") -> Path:
    """Save ``result``'s (a :class:`~napari_maskalign.engine.RegistrationResult`) drift plot.

    The format follows the suffix (.png, .pdf or .svg); the file is written
    under a temporary name and renamed when complete. Returns the path.
    """
    from .io import replacing

    path = Path(os.fspath(path)).expanduser()
    suffix = path.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise ValueError(f"cannot tell the plot's format from {path.name!r}: end it with "
                         + ", ".join(PLOT_SUFFIXES))
    fig = drift_figure(result, title=title)
    with replacing(path, suffix=f".tmp{suffix}") as tmp:
        fig.savefig(tmp, dpi=120, format=suffix[1:])
    return path


def drift_figure(result, *, title: str = ""):
    """The drift plot as a matplotlib ``Figure`` (Agg canvas, no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shifts, raw = np.asarray(result.shifts), np.asarray(result.raw_shifts)
    quality, flagged = np.asarray(result.quality), np.asarray(result.outliers, bool)
    frames = np.arange(len(shifts))
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    for k, axis in enumerate("zyx"[-shifts.shape[1]:]):
        color = _COLORS[axis]
        top.plot(frames, shifts[:, k], "-", color=color, lw=1.2, label=f"shift {axis}")
        moved = ~np.isclose(raw[:, k], shifts[:, k])
        if moved.any():
            top.plot(frames[moved], raw[moved, k], "o", mfc="none", color=color, ms=5,
                     label=f"measured {axis} (not used)")
        if flagged.any():
            top.plot(frames[flagged], shifts[flagged, k], "x", color="red", ms=7)
    bottom.plot(frames, quality, "-", color="0.3", lw=1)
    if flagged.any():
        top.plot([], [], "x", color="red", label=f"outlier ({int(flagged.sum())})")
        bottom.plot(frames[flagged], quality[flagged], "x", color="red", ms=7)
    top.set_ylabel("shift (px)")
    top.legend(loc="best", fontsize="small", ncols=2)
    top.grid(alpha=0.3)
    top.set_title(title or "drift", fontsize="medium")
    bottom.set_ylabel("quality")
    bottom.set_xlabel("frame")
    bottom.grid(alpha=0.3)
    return fig
