"""The shift plot: a matplotlib canvas that follows napari's theme and frame slider.

:class:`ShiftPlot` draws an :class:`~._model.AlignedResult` (shift per axis
and match quality against frame, outliers and edits marked; rotation and scale
panels for rigid and similarity results), keeps a line on the current frame
and reports clicks as frame numbers. The Shifts dock only
hands it results; it holds no data of its own.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter
from napari.utils.theme import get_theme
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy

from ._model import AlignedResult, axis_names

AXIS_COLORS = {"z": "#9ccc65", "y": "#ffb74d", "x": "#4fc3f7"}
OUTLIER_COLOR = "#ff5252"
#: the plot's minimum height: the title and legend, then this much per panel
PLOT_HEADER_PX = 90
PANEL_PX = 70


class ShiftPlot(FigureCanvasQTAgg):
    """Shifts and quality against frame.

    Parameters
    ----------
    on_frame : callable, optional
        Called with a frame number when the user clicks the plot.
    """

    def __init__(self, on_frame: Callable[[int], None] | None = None):
        self.figure = Figure(figsize=(4.2, 3.6), layout="constrained")
        super().__init__(self.figure)
        self.fit_panels(2)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip("Click a point to show that frame.")
        self._on_frame = on_frame
        self._vlines: list = []
        self.axes_list: list = []
        self._draw_pending = False
        self.colors: dict[str, str] = {}
        self.mpl_connect("button_press_event", self._on_click)
        self.set_theme("dark")

    def fit_panels(self, count: int) -> None:
        """Claim the height ``count`` panels need to read (the title, the legend and each
        panel's ticks and label): more panels, a taller plot, never squeezed panels."""
        self.setMinimumHeight(PLOT_HEADER_PX + PANEL_PX * count)

    # -- theme, frame line, clicks ---------------------------------------------
    def set_theme(self, theme_id: str) -> None:
        try:
            theme = get_theme(theme_id)
        except (KeyError, ValueError):  # e.g. an unknown custom theme id
            theme = get_theme("dark")
        self.colors = {
            "background": theme.background.as_hex(),
            "canvas": theme.foreground.as_hex(),
            "text": theme.text.as_hex(),
            "grid": theme.primary.as_hex(),
            "line": theme.highlight.as_hex(),
            "current": theme.current.as_hex(),
        }
        self.figure.set_facecolor(self.colors["background"])

    def set_frame(self, frame: int) -> None:
        """Move the current-frame line (a redraw only if it moves: the viewer's step
        events come also when layers are added, and each redraw lays the figure out)."""
        moved = False
        for line in self._vlines:
            if list(line.get_xdata()) != [frame, frame]:
                line.set_xdata([frame, frame])
                moved = True
        if moved:
            self.request_draw()

    def _on_click(self, event) -> None:
        if event.inaxes not in self.axes_list or event.xdata is None or self._on_frame is None:
            return
        self._on_frame(int(round(event.xdata)))

    def request_draw(self) -> None:
        """Render once on a coming event-loop turn (our own draw_idle, which tolerates
        the widget being closed before it runs)."""
        if not self._draw_pending:
            self._draw_pending = True
            QTimer.singleShot(1, self._draw_now)

    def _draw_now(self) -> None:
        self._draw_pending = False
        try:
            self.draw()
        except RuntimeError:  # the widget was closed in the meantime
            pass

    # -- content ------------------------------------------------------------------
    def show_message(self, text: str) -> None:
        fig, c = self.figure, self.colors
        fig.clear()
        fig.set_facecolor(c["background"])
        self._vlines, self.axes_list = [], []
        fig.text(0.5, 0.5, text, ha="center", va="center", color=c["text"], fontsize=10)
        self.request_draw()

    def show_result(self, res: AlignedResult, *, scale=None, unit: str = "px",
                    truth=None) -> None:
        """Draw the shifts of ``res``.

        ``scale``, ``unit``: per-axis size of a pixel in ``unit`` (shifts are
        drawn in it; default pixels). ``truth``: known true shifts relative to
        frame 0 (the sample data's), drawn dashed beside the measured ones.
        """
        c, fig = self.colors, self.figure
        fig.clear()
        fig.set_facecolor(c["background"])
        self._vlines = []
        n, ndim = res.shifts.shape
        k = np.ones(ndim) if scale is None else np.asarray(scale, float)
        shifts, raw = res.shifts * k, res.raw_shifts * k
        outliers, edited = res.outliers, np.asarray(res.edited, int)
        frames = np.arange(n)
        panels = _extra_panels(res)
        self.fit_panels(2 + len(panels))
        axes = fig.subplots(2 + len(panels), 1, sharex=True,
                            height_ratios=[2.2, *(1,) * len(panels), 1])
        ax_s, ax_q = axes[0], axes[-1]
        self.axes_list = list(axes)
        for ax, (label, values) in zip(axes[1:-1], panels):
            ax.plot(frames, values, marker="o" if n <= 200 else None, ms=3, lw=1.3,
                    color=c["text"])
            if outliers.any():
                ax.plot(frames[outliers], values[outliers], "o", ms=8, mfc="none",
                        mec=OUTLIER_COLOR, mew=1.5)
            ax.set_ylabel(label)
        marker = "o" if n <= 200 else None
        smoothed = res.jumps is not None
        for name, column, rcol in zip(axis_names(ndim), shifts.T, raw.T):
            if smoothed:  # the measured estimates as dots, the smoothed drift as a line
                ax_s.plot(frames, rcol, ".", ms=4, alpha=0.45, color=AXIS_COLORS[name])
                ax_s.plot(frames, column, lw=1.6, color=AXIS_COLORS[name],
                          label=f"shift {name}, smoothed")
                continue
            ax_s.plot(frames, column, marker=marker, ms=3, lw=1.3, color=AXIS_COLORS[name],
                      label=f"shift {name}")
            changed = outliers & ~np.isclose(rcol, column)
            if changed.any():  # interpolated outliers: show what was measured
                ax_s.plot(frames[changed], rcol[changed], "x", color=OUTLIER_COLOR, ms=6)
        _error_bars(ax_s, res, shifts, k)
        if smoothed:
            ax_s.plot([], [], ".", ms=4, alpha=0.6, color=c["text"], label="measured")
            for j in res.jumps:  # between frames j - 1 and j: never smoothed across
                ax_s.axvline(j - 0.5, ls="--", lw=1.0, color=c["text"], alpha=0.7)
            if res.jumps:
                ax_s.plot([], [], ls="--", lw=1.0, color=c["text"],
                          label=f"jump ({len(res.jumps)})")
        error, true = None, None
        if truth is not None:
            true = _truth_for(res, np.asarray(truth, float)) * k
            for column in true.T:  # thin dashes over the measured lines: seen where they agree
                ax_s.plot(frames, column, ls=(0, (3, 2)), lw=1.0, color=c["text"], zorder=3)
            ax_s.plot([], [], ls=(0, (3, 2)), lw=1.0, color=c["text"], label="true drift")
            good = ~outliers
            if good.any():
                error = float(np.median(np.abs(shifts - true)[good]))
        if outliers.any():
            for column in shifts.T:
                ax_s.plot(frames[outliers], column[outliers], "o", ms=8, mfc="none",
                          mec=OUTLIER_COLOR, mew=1.5)
            ax_s.plot([], [], "o", ms=8, mfc="none", mec=OUTLIER_COLOR, mew=1.5,
                      label=f"outlier ({int(outliers.sum())})")
        if edited.size:
            for column in shifts.T:
                ax_s.plot(edited, column[edited], "D", ms=6, mfc="none", mec=c["text"])
            ax_s.plot([], [], "D", ms=6, mfc="none", mec=c["text"], label="edited")
        self._draw_quality(ax_q, res, frames, marker)
        _pin_off_scale(ax_s, frames, shifts, raw, outliers, c["canvas"], also=true)
        ax_s.set_ylabel(f"centre shift ({unit})" if panels else f"shift ({unit})")
        ax_q.set_ylabel("quality")
        ax_q.set_xlabel("frame")
        title = res.source + (f" vs {res.reference}" if res.reference else "")
        if error is not None:  # one line: the panels keep the height
            title += f" · median error against the true drift {error:.3f} {unit}"
        fig.suptitle(title, fontsize=8, color=c["text"], x=0.02, ha="left", wrap=True)
        # above the data, never on it
        handles, labels = ax_s.get_legend_handles_labels()
        legend = ax_s.legend(handles, labels, fontsize=7.5, loc="lower left",
                             bbox_to_anchor=(0.0, 1.01), ncols=2,
                             frameon=False, borderaxespad=0.0, handlelength=1.5,
                             columnspacing=0.8, handletextpad=0.4)
        for text in legend.get_texts():
            text.set_color(c["text"])
        for ax in self.axes_list:
            ax.set_facecolor(c["canvas"])
            ax.tick_params(colors=c["text"], labelsize=8)
            ax.xaxis.label.set_color(c["text"])
            ax.yaxis.label.set_color(c["text"])
            ax.yaxis.label.set_fontsize(9)
            ax.xaxis.label.set_fontsize(9)
            for spine in ax.spines.values():
                spine.set_color(c["grid"])
            ax.grid(True, color=c["grid"], lw=0.6, alpha=0.8)
            ax.set_xlim(-0.5, n - 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            # values as they are: no "+9.999e-1" offset above the axis
            plain = ScalarFormatter(useOffset=False)
            plain.set_scientific(False)
            ax.yaxis.set_major_formatter(plain)
            self._vlines.append(ax.axvline(0, color=c["current"], lw=1.5, alpha=0.9))
        for ax in axes[1:]:  # the panels below the shifts: a few ticks, readable
            if ax is not ax_q:
                ax.yaxis.set_major_locator(MaxNLocator(nbins=3))
        fig.align_ylabels(list(axes))
        self.request_draw()

    def _draw_quality(self, ax, res: AlignedResult, frames, marker) -> None:
        """Quality against frame, scaled to the frames that matter: the reference frame
        (a frame matched with itself scores 1) and flagged outliers are drawn but do
        not set the axis; off the axis they are pinned to its edge."""
        c, quality, outliers = self.colors, res.quality, res.outliers
        finite = np.isfinite(quality)
        ax.plot(frames[finite], quality[finite], marker=marker, ms=3, lw=1.3, color=c["text"])
        if (outliers & finite).any():
            sel = outliers & finite
            ax.plot(frames[sel], quality[sel], "o", ms=8, mfc="none", mec=OUTLIER_COLOR,
                    mew=1.5)
        if not finite.any():
            ax.text(0.5, 0.5, "no quality values", transform=ax.transAxes, ha="center",
                    va="center", color=c["text"])
            return
        matter = finite & ~outliers
        ref = res.reference_frame
        if ref is not None and 0 <= ref < len(quality):
            matter[ref] = False
        if not matter.any():
            return
        lo, hi = float(quality[matter].min()), float(quality[matter].max())
        pad = max(0.15 * (hi - lo), 0.002)
        lo, hi = lo - pad, hi + pad
        ax.set_ylim(lo, hi)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
        for f in np.flatnonzero(finite & ~matter):
            q = float(quality[f])
            if lo <= q <= hi:
                continue
            up = q > hi
            y = hi if up else lo
            ax.plot([f], [y], "^" if up else "v", color=OUTLIER_COLOR if outliers[f] else c["text"],
                    ms=6, clip_on=False)
            label = f"ref {q:.2f}" if f == ref else f"{q:.2f}"
            ax.annotate(label, (f, y), xytext=(4, -2 if up else 2), textcoords="offset points",
                        color=c["text"], fontsize=7, va="top" if up else "bottom")


def _extra_panels(res: AlignedResult) -> list:
    """(label, values) of the rotation and scale panels of a rigid or similarity result:
    rotation in degrees, scale as its change from 1 in ppm (below 0.1 %) or %; and of the
    deformation panel of a non-rigid one."""
    out = []
    if res.deformation_rms is not None:
        out.append(("deformation RMS (px)", np.asarray(res.deformation_rms, float)))
    if res.rotations is not None:
        out.append(("rotation\n(°)", np.asarray(res.rotations, float)))  # two lines: fits a small panel
    if res.scales is not None and np.any(np.asarray(res.scales) != 1):
        out.append(scale_panel(np.asarray(res.scales, float)))
    return out


def scale_panel(scales: np.ndarray) -> tuple[str, np.ndarray]:
    """The scale panel's label and values: the change from 1, in ppm while it stays below
    0.1 %, else in %."""
    change = scales - 1.0
    largest = float(np.nanmax(np.abs(change))) if np.isfinite(change).any() else 0.0
    if largest < 1e-3:
        return "Δscale\n(ppm)", change * 1e6
    return "Δscale\n(%)", change * 100


def _truth_for(res: AlignedResult, truth: np.ndarray) -> np.ndarray:
    """True shifts (relative to frame 0) in the result's terms: relative to its reference
    frame, or, for a mean or template reference, offset to match the measured shifts
    where they are good (only the drift's course can be compared there)."""
    if res.reference_frame is not None and 0 <= res.reference_frame < len(truth):
        return truth - truth[res.reference_frame]
    good = ~np.asarray(res.outliers, bool)
    if not good.any():
        good = np.ones(len(truth), bool)
    return truth + np.median(res.shifts[good] - truth[good], axis=0)


def _pin_off_scale(ax, frames, shifts, raw, outliers, background, also=None) -> None:
    """Scale the shift axis to the good frames (and ``also``, the true drift); pin wild
    outliers to its edge, labelled.

    One failed frame 12 px off would otherwise squash a drift of a few pixels
    into a flat line.
    """
    good = ~outliers
    if not outliers.any() or not good.any():
        return
    values = np.concatenate([shifts[good].ravel(), raw[good].ravel(),
                             [] if also is None else np.ravel(also)])
    lo, hi = float(values.min()), float(values.max())
    pad = max(0.15 * (hi - lo), 0.3)
    lo, hi = lo - pad, hi + pad
    wild = np.concatenate([shifts[outliers].ravel(), raw[outliers].ravel()])
    if wild.min() >= lo and wild.max() <= hi:
        return
    ax.set_ylim(lo, hi)
    edge = 0.04 * (hi - lo)
    names = axis_names(shifts.shape[1])
    for f in frames[outliers]:
        for up in (True, False):
            off = [f"{a} {v:+.1f}" for a, v in zip(names, shifts[f]) if (v > hi if up else v < lo)]
            if not off:
                continue
            y = hi - edge if up else lo + edge
            ax.plot([f], [y], "^" if up else "v", color=OUTLIER_COLOR, ms=7, clip_on=False)
            ax.annotate("\n".join(off), (f, y), xytext=(5, 0), textcoords="offset points",
                        color=OUTLIER_COLOR, fontsize=7, va="top" if up else "bottom",
                        bbox={"boxstyle": "round,pad=0.2", "fc": background,
                              "ec": "none", "alpha": 0.85})


def _error_bars(ax, res: AlignedResult, shifts, k) -> None:
    """One-sigma error bars on the measured shifts (not on interpolated or edited ones,
    which were not measured); nothing when the result has no uncertainties."""
    sigma = res.shift_uncertainties()
    if sigma is None:
        return
    for name, column, err in zip(axis_names(shifts.shape[1]), shifts.T, (sigma * k).T):
        show = np.isfinite(err)
        if show.any():
            ax.errorbar(np.flatnonzero(show), column[show], yerr=err[show], fmt="none",
                        ecolor=AXIS_COLORS[name], elinewidth=0.9, capsize=1.5, alpha=0.7)
