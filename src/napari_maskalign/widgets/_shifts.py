"""Dock widget: plot, export, import, edit and re-apply per-frame shifts.

The shifts live on the ``<stack> aligned`` layer (``layer.metadata["maskalign"]``),
so this widget shows whatever the Register widget (or an imported CSV) left
there. Shifts follow scikit-image's sign convention: the shift that registers
a frame onto the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from napari.layers import Image
from napari.utils.theme import get_theme
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_maskalign.engine import flag_outliers, interpolate_flagged
from napari_maskalign.io import read_shifts_csv, write_shifts_csv

from ._common import (
    META,
    Connections,
    LayerCombo,
    align_frame,
    align_lazy,
    aligned_name,
    axis_names,
    current_frame,
    display_props,
    drop_preview,
    explain,
    find_result_layer,
    fixed_height,
    frame_shape,
    go_to_frame,
    is_output_layer,
    iter_align,
    layer_list_events,
    layer_named,
    notify_error,
    notify_info,
    result_meta,
    same_layer,
    source_of,
    stack_problem,
    start_worker,
    upsert_layer,
    wants_lazy,
    wrap_label,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari

WHAT = "Shifts"
AXIS_COLORS = {"z": "#9ccc65", "y": "#ffb74d", "x": "#4fc3f7"}
OUTLIER_COLOR = "#ff5252"
_CSV_FILTER = "Shift tables (*.csv)"


def align_kwargs(meta: dict) -> dict:
    """How a result's aligned stack is made (a CSV import has no choice of its own yet)."""
    return dict(meta.get("align", {"method": "spline", "fill_value": np.nan}))


def align_job(stack, shifts, lazy: bool, kwargs: dict):
    """Worker generator (no Qt): apply shifts with the engine, one frame per yield."""
    return (yield from iter_align(stack, shifts, lazy=lazy, **kwargs))


class ShiftsWidget(QWidget):
    """Shifts of a registered stack: plot, CSV export/import, per-frame edits, re-apply.

    The plot shows the shift per axis against frame, the match quality and
    the flagged outliers; a vertical line follows the frame slider and a
    click on the plot moves the slider to that frame.
    """

    #: emitted (main thread) when an import or an apply-to-layer job ends
    job_finished = Signal()

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.setMinimumWidth(340)
        self.worker = None
        self.last_outcome: str | None = None
        self._bound = None  # the aligned layer whose metadata we listen to
        self._refresh_pending = False
        self._draw_pending = False
        self._vlines: list = []
        self._axes: list = []
        self._conns = Connections(self)
        self._build()
        self._apply_theme()

        self._conns.connect_many(layer_list_events(napari_viewer), self._on_layers_changed)
        self._conns.connect(napari_viewer.layers.selection.events.active, self._on_active)
        self._conns.connect(napari_viewer.dims.events.current_step, self._on_dims)
        self._conns.connect(napari_viewer.events.theme, self._on_theme)
        self.stack_combo.changed.connect(self._on_stack_changed)
        self.target_combo.changed.connect(self._update_buttons)
        self._on_active()
        self._on_stack_changed()
        self.refresh()

    # -- layout -------------------------------------------------------------

    def _build(self) -> None:
        v = self.viewer
        not_output = lambda layer: not is_output_layer(layer)  # noqa: E731
        self.stack_combo = LayerCombo(
            v, Image, keep=not_output, label="stack",
            tooltip="The registered stack. Its shifts are kept on its '<stack> aligned' layer; "
            "selecting that layer (or its xcorr preview) chooses the stack here.",
        )
        self.target_combo = LayerCombo(
            v, Image, keep=lambda layer: not_output(layer)
            and not same_layer(layer, self.stack_combo.value), label="apply to",
            none_label="(choose a layer)",
            tooltip="Another layer with the same frames (another channel, the raw data) to "
            "align with these shifts, as '<layer> aligned'.",
        )

        self.figure = Figure(figsize=(4.2, 3.6), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(260)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.canvas.setToolTip("Click a point to show that frame.")
        self.canvas.mpl_connect("button_press_event", self._on_click)

        self.export_button = QPushButton("Export CSV…")
        self.export_button.setToolTip(
            "Save the shifts as a table: frame, shift_y, shift_x (shift_z first for 3D "
            "frames), quality. The shift is the one that moves the frame onto the reference."
        )
        self.export_button.clicked.connect(lambda _c=False: self.export_csv())
        self.import_button = QPushButton("Import CSV…")
        self.import_button.setToolTip(
            "Read a shift table (same columns) for the chosen stack and make "
            "'<stack> aligned' from it. It must have one row per frame."
        )
        self.import_button.clicked.connect(lambda _c=False: self.import_csv())
        csv_row = QHBoxLayout()
        csv_row.addWidget(self.export_button)
        csv_row.addWidget(self.import_button)

        # edit one frame: frame, one shift per axis, [Set shift] [Interpolate]
        edit_box = QGroupBox("Edit one frame's shift")
        edit = QGridLayout(edit_box)
        edit.addWidget(QLabel("frame"), 0, 0)
        self.frame_spin = QSpinBox()
        self.frame_spin.setToolTip("The frame to edit (follows the slider; click the plot too).")
        self.frame_spin.valueChanged.connect(self._show_frame_values)
        edit.addWidget(self.frame_spin, 0, 1)
        self.shift_spins: dict[str, QDoubleSpinBox] = {}
        self._shift_labels: dict[str, QLabel] = {}
        for row, axis in enumerate(("z", "y", "x"), start=1):
            label = QLabel(f"shift {axis} (px)")
            spin = QDoubleSpinBox()
            spin.setRange(-1e5, 1e5)
            spin.setDecimals(3)
            spin.setSingleStep(0.1)
            spin.setToolTip(
                f"Shift of this frame along {axis}, in pixels: the shift that moves the frame "
                "onto the reference."
            )
            edit.addWidget(label, row, 0)
            edit.addWidget(spin, row, 1)
            self.shift_spins[axis] = spin
            self._shift_labels[axis] = label
        self.set_button = QPushButton("Set shift")
        self.set_button.setToolTip("Use the shift typed above for this frame and re-align it.")
        self.set_button.clicked.connect(lambda _c=False: self.set_frame_shift())
        self.interp_button = QPushButton("Interpolate")
        self.interp_button.setToolTip(
            "Replace this frame's shift by interpolating between its good neighbours (for a "
            "frame whose registration failed) and re-align it."
        )
        self.interp_button.clicked.connect(lambda _c=False: self.interpolate_frame())
        edit_row = QHBoxLayout()
        edit_row.addWidget(self.set_button)
        edit_row.addWidget(self.interp_button)
        edit.addLayout(edit_row, 4, 0, 1, 2)

        self.apply_button = QPushButton("Apply shifts")
        self.apply_button.setToolTip(
            "Align the 'apply to' layer with these shifts as a new layer '<layer> aligned'."
        )
        self.apply_button.clicked.connect(lambda _c=False: self.apply_to_layer())
        apply_box = QGroupBox("Apply these shifts to another layer")
        apply_layout = QVBoxLayout(apply_box)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(False)
        self.status = wrap_label("")

        layout = QVBoxLayout(self)
        self._stack_form = Container(widgets=[self.stack_combo], labels=True)
        self._target_form = Container(widgets=[self.target_combo], labels=True)
        layout.addWidget(fixed_height(self._stack_form.native))
        layout.addWidget(self.canvas, 1)
        layout.addLayout(csv_row)
        layout.addWidget(fixed_height(edit_box))
        apply_layout.addWidget(fixed_height(self._target_form.native))
        apply_layout.addWidget(self.apply_button)
        layout.addWidget(fixed_height(apply_box))
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)

    # -- what we show -----------------------------------------------------------

    def stack_layer(self) -> Image | None:
        return self.stack_combo.value

    def result_layer(self):
        """The ``<stack> aligned`` layer with the shifts, or None."""
        stack = self.stack_layer()
        return find_result_layer(self.viewer, None if stack is None else stack.name)

    def result(self) -> dict | None:
        return result_meta(self.result_layer())

    def _require_result(self) -> tuple:
        layer = self.result_layer()
        meta = result_meta(layer)
        if meta is None:
            stack = self.stack_layer()
            name = "the chosen stack" if stack is None else f"'{stack.name}'"
            raise ValueError(
                f"there are no shifts for {name} yet: register it (Register stack) or import a "
                "shift table"
            )
        return layer, meta

    # -- reacting to the viewer ---------------------------------------------------

    def _on_layers_changed(self, _event=None) -> None:
        self.stack_combo.reset_choices()
        self.target_combo.reset_choices()
        self._rebind()

    def _on_active(self, _event=None) -> None:
        active = self.viewer.layers.selection.active
        if active is None:
            return
        # follow the selection only to stacks that have shifts: selecting (or adding) a
        # plain layer, e.g. a channel to apply the shifts to, keeps the plot as it is
        name = source_of(active)
        source = layer_named(self.viewer, name or "")
        if source is not None and find_result_layer(self.viewer, name) is not None:
            self.stack_combo.select(source)

    def _on_stack_changed(self, _value=None) -> None:
        self.target_combo.reset_choices()
        self._rebind()

    def _rebind(self) -> None:
        layer = self.result_layer()
        if not same_layer(layer, self._bound):
            if self._bound is not None:
                self._conns.disconnect(self._bound.events.metadata, self._schedule_refresh)
            self._bound = layer
            if layer is not None:
                self._conns.connect(layer.events.metadata, self._schedule_refresh)
        self._schedule_refresh()

    def _schedule_refresh(self, _event=None) -> None:
        """Refresh once on the next event-loop turn, however many events arrive now."""
        if not self._refresh_pending:
            self._refresh_pending = True
            QTimer.singleShot(1, self._deferred_refresh)

    def _deferred_refresh(self) -> None:
        if self._refresh_pending:
            try:
                self.refresh()
            except RuntimeError:  # the widget was closed in the meantime
                self._refresh_pending = False

    def _request_draw(self) -> None:
        """Render the figure once on a coming event-loop turn (our own draw_idle, which
        tolerates the widget being closed before it runs)."""
        if not self._draw_pending:
            self._draw_pending = True
            QTimer.singleShot(1, self._draw_now)

    def _draw_now(self) -> None:
        self._draw_pending = False
        try:
            self.canvas.draw()
        except RuntimeError:  # the widget was closed in the meantime
            pass

    def refresh(self) -> None:
        """Redraw the plot and update the controls from the current result."""
        self._refresh_pending = False
        meta = self.result()
        n = len(meta["shifts"]) if meta else 0
        ndim = np.asarray(meta["shifts"]).shape[1] if meta else 2
        for axis in ("z", "y", "x"):
            shown = axis in axis_names(ndim)
            self.shift_spins[axis].setVisible(shown)
            self._shift_labels[axis].setVisible(shown)
        self.frame_spin.setRange(0, max(n - 1, 0))
        self._update_buttons()
        self.draw()
        self._on_dims()

    def _update_buttons(self, _value=None) -> None:
        idle = self.worker is None
        has = self.result() is not None and idle
        for w in (self.export_button, self.set_button, self.interp_button, self.frame_spin):
            w.setEnabled(has)
        self.import_button.setEnabled(self.stack_layer() is not None and idle)
        self.apply_button.setEnabled(has and self.target_combo.value is not None)

    def _frame_layer(self):
        return self.stack_layer() or self.result_layer()

    def _on_dims(self, _event=None) -> None:
        layer = self._frame_layer()
        if layer is None or layer.ndim < 3:
            return
        frame = current_frame(self.viewer, layer)
        for line in self._vlines:
            line.set_xdata([frame, frame])
        if self._vlines:
            self._request_draw()
        if self.result() is not None:
            self.frame_spin.setValue(frame)
            self._show_frame_values()

    def _show_frame_values(self, _value=None) -> None:
        meta = self.result()
        if meta is None:
            return
        frame = self.frame_spin.value()
        shifts = np.asarray(meta["shifts"])
        if not 0 <= frame < len(shifts):
            return
        for axis, value in zip(axis_names(shifts.shape[1]), shifts[frame]):
            self.shift_spins[axis].setValue(float(value))

    def _on_theme(self, _event=None) -> None:
        self._apply_theme()
        self.draw()

    def _apply_theme(self) -> None:
        try:
            theme = get_theme(self.viewer.theme)
        except (KeyError, ValueError):  # e.g. an unknown custom theme id
            theme = get_theme("dark")
        self._colors = {
            "background": theme.background.as_hex(),
            "canvas": theme.foreground.as_hex(),
            "text": theme.text.as_hex(),
            "grid": theme.primary.as_hex(),
            "line": theme.highlight.as_hex(),
            "current": theme.current.as_hex(),
        }
        self.figure.set_facecolor(self._colors["background"])

    # -- the plot -----------------------------------------------------------------

    def draw(self) -> None:
        """Redraw the plot from the current result."""
        c = self._colors
        fig = self.figure
        fig.clear()
        fig.set_facecolor(c["background"])
        meta = self.result()
        self._vlines = []
        if meta is None:
            self._axes = []
            stack = self.stack_layer()
            what = f"'{stack.name}'" if stack is not None else "the chosen stack"
            fig.text(
                0.5, 0.5,
                f"No shifts for {what} yet.\nRegister it (Register stack)\nor import a shift CSV.",
                ha="center", va="center", color=c["text"], fontsize=10,
            )
            self._request_draw()
            return
        shifts = np.asarray(meta["shifts"], float)
        raw = np.asarray(meta.get("raw_shifts", shifts), float)
        quality = np.asarray(meta["quality"], float)
        outliers = np.asarray(meta["outliers"], bool)
        edited = np.asarray(meta.get("edited", []), int)
        n, ndim = shifts.shape
        frames = np.arange(n)
        ax_s, ax_q = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
        self._axes = [ax_s, ax_q]
        marker = "o" if n <= 200 else None
        for name, column, rcol in zip(axis_names(ndim), shifts.T, raw.T):
            ax_s.plot(frames, column, marker=marker, ms=3, lw=1.3, color=AXIS_COLORS[name],
                      label=f"shift {name}")
            changed = outliers & ~np.isclose(rcol, column)
            if changed.any():  # interpolated outliers: show what was measured
                ax_s.plot(frames[changed], rcol[changed], "x", color=OUTLIER_COLOR, ms=6)
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
        finite_q = np.isfinite(quality)
        ax_q.plot(frames[finite_q], quality[finite_q], marker=marker, ms=3, lw=1.3,
                  color=c["text"])
        if (outliers & finite_q).any():
            sel = outliers & finite_q
            ax_q.plot(frames[sel], quality[sel], "o", ms=8, mfc="none", mec=OUTLIER_COLOR,
                      mew=1.5)
        if not finite_q.any():
            ax_q.text(0.5, 0.5, "no quality values", transform=ax_q.transAxes, ha="center",
                      va="center", color=c["text"])
        self._pin_off_scale(ax_s, frames, shifts, raw, outliers, c["canvas"])
        ax_s.set_ylabel("shift (px)")
        ax_q.set_ylabel("quality")
        ax_q.set_xlabel("frame")
        ref = meta.get("reference")
        ax_s.set_title(
            f"{meta.get('source', '')}" + (f" vs {ref}" if ref else ""),
            fontsize=9, color=c["text"], loc="left",
        )
        legend = ax_s.legend(fontsize=8, loc="best", frameon=True, ncols=2)
        legend.get_frame().set_facecolor(c["canvas"])
        legend.get_frame().set_edgecolor(c["grid"])
        for text in legend.get_texts():
            text.set_color(c["text"])
        for ax in self._axes:
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
            self._vlines.append(ax.axvline(0, color=c["current"], lw=1.5, alpha=0.9))
        self._request_draw()

    @staticmethod
    def _pin_off_scale(ax, frames, shifts, raw, outliers, background) -> None:
        """Scale the shift axis to the good frames; pin wild outliers to its edge, labelled.

        One failed frame 12 px off would otherwise squash a drift of a few pixels
        into a flat line.
        """
        good = ~outliers
        if not outliers.any() or not good.any():
            return
        values = np.concatenate([shifts[good].ravel(), raw[good].ravel()])
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
                off = [
                    f"{a} {v:+.1f}"
                    for a, v in zip(names, shifts[f])
                    if (v > hi if up else v < lo)
                ]
                if not off:
                    continue
                y = hi - edge if up else lo + edge
                ax.plot([f], [y], "^" if up else "v", color=OUTLIER_COLOR, ms=7, clip_on=False)
                ax.annotate("\n".join(off), (f, y), xytext=(5, 0), textcoords="offset points",
                            color=OUTLIER_COLOR, fontsize=7, va="top" if up else "bottom",
                            bbox={"boxstyle": "round,pad=0.2", "fc": background,
                                  "ec": "none", "alpha": 0.85})

    def _on_click(self, event) -> None:
        if event.inaxes not in self._axes or event.xdata is None:
            return
        self.goto_frame(int(round(event.xdata)))

    def goto_frame(self, frame: int) -> None:
        """Move the viewer's frame slider to ``frame``."""
        layer = self._frame_layer()
        if layer is not None and layer.ndim >= 3:
            go_to_frame(self.viewer, layer, frame)

    # -- CSV ----------------------------------------------------------------------

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the shifts as CSV (frame, shift_[z,]y,x, quality)."""
        try:
            _, meta = self._require_result()
        except ValueError as exc:
            notify_error(WHAT, explain(exc))
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export shifts", f"{meta['source']} shifts.csv", _CSV_FILTER
            )
            if not path:
                return None
        try:
            write_shifts_csv(path, np.asarray(meta["shifts"]), np.asarray(meta["quality"]))
        except (ValueError, OSError) as exc:
            notify_error(WHAT, explain(exc))
            return None
        notify_info(f"Saved {len(meta['shifts'])} shifts to {path}.")
        return Path(path)

    def import_csv(self, path: str | Path | None = None):
        """Read a shift table for the chosen stack and make ``<stack> aligned`` from it."""
        stack = self.stack_layer()
        problem = stack_problem(stack, "stack")
        if problem:
            notify_error(WHAT, problem)
            return None
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Import shifts", "", _CSV_FILTER)
            if not path:
                return None
        n, shape = int(stack.data.shape[0]), frame_shape(stack)
        try:
            shifts, quality = read_shifts_csv(path, n_frames=n, ndim=len(shape))
            outliers = flag_outliers(shifts, quality)
        except (ValueError, OSError) as exc:
            notify_error(WHAT, f"cannot use this shift table for '{stack.name}': {explain(exc)}")
            return None
        meta = {
            "role": "aligned",
            "source": stack.name,
            "shifts": shifts,
            "quality": quality,
            "outliers": outliers,
            "raw_shifts": shifts.copy(),
            "axes": axis_names(len(shape)),
            "frame_shape": shape,
            "reference": f"imported from {Path(path).name}",
            "params": {"imported": str(path)},
            "edited": [],
        }
        return self._start_align(
            stack, meta, f"Applying imported shifts to '{stack.name}'", stale_preview=True
        )

    # -- another layer --------------------------------------------------------------

    def apply_to_layer(self, target: Image | None = None):
        """Align another layer (same frames) with the current shifts, as ``<layer> aligned``."""
        target = self.target_combo.value if target is None else target
        try:
            _, meta = self._require_result()
            problem = stack_problem(target, "other layer")
            if problem:
                raise ValueError(problem)
            shifts = np.asarray(meta["shifts"])
            n, ndim = shifts.shape
            shape = frame_shape(target)
            if target.data.shape[0] != n:
                raise ValueError(
                    f"'{target.name}' has {target.data.shape[0]} frames but the shifts are for "
                    f"{n} frames"
                )
            if len(shape) != ndim:
                raise ValueError(
                    f"'{target.name}' has {len(shape)}D frames but the shifts are for {ndim}D frames"
                )
            measured = tuple(meta.get("frame_shape", shape))
            if shape != measured:
                raise ValueError(
                    f"'{target.name}' has frames of shape {shape} but the shifts were measured "
                    f"on frames of shape {measured}; shifts are in pixels of those frames"
                )
        except ValueError as exc:
            notify_error(WHAT, explain(exc))
            return None
        new = {
            **meta,
            "source": target.name,
            "shifts_from": meta["source"],
            "reference": f"shifts of '{meta['source']}'",
        }
        return self._start_align(target, new, f"Applying shifts to '{target.name}'")

    def _start_align(self, stack: Image, meta: dict, desc: str, stale_preview: bool = False):
        if self.worker is not None:
            notify_error(WHAT, "another job is still running: wait for it to finish")
            return None
        data = stack.data
        lazy = wants_lazy(data)
        kwargs = align_kwargs(meta)
        meta = {**meta, "align": kwargs}
        props = display_props(stack)
        name = aligned_name(stack.name)
        self.last_outcome = None

        def returned(aligned):
            try:
                layer = upsert_layer(self.viewer, name, aligned, metadata={META: meta}, **props)
            except ValueError as exc:
                self.last_outcome = "failed"
                notify_error(WHAT, explain(exc))
                return
            if stale_preview:  # the preview measured other shifts: it would contradict these
                drop_preview(self.viewer, stack.name)
            self.last_outcome = "done"
            self.stack_combo.select(stack)
            self.viewer.layers.selection.active = layer
            self.status.setText(f"Made '{name}'.")

        def errored(exc):
            self.last_outcome = "failed"
            self.status.setText(f"Failed: {explain(exc)}")
            notify_error(WHAT, explain(exc))

        def yielded(p):
            self.progress_bar.setValue(p.done)

        def finished():
            self.worker = None
            self.progress_bar.setVisible(False)
            self.refresh()
            self.job_finished.emit()

        n = int(data.shape[0])
        self.progress_bar.setRange(0, 0 if lazy else n)
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(True)
        self.status.setText(desc + "…")
        self.worker = start_worker(
            align_job, data, np.asarray(meta["shifts"], float), lazy, kwargs,
            total=0 if lazy else n, desc=desc,
            yielded=yielded, returned=returned, errored=errored, finished=finished, owner=self,
        )
        self.refresh()  # disables the buttons while it runs
        return self.worker

    # -- editing one frame ----------------------------------------------------------

    def set_frame_shift(self, frame: int | None = None, shift=None) -> bool:
        """Give ``frame`` the shift ``shift`` (default: the spin boxes) and re-align it."""
        try:
            layer, meta = self._require_result()
            shifts = np.array(meta["shifts"], float)
            n, ndim = shifts.shape
            frame = self.frame_spin.value() if frame is None else int(frame)
            if not 0 <= frame < n:
                raise ValueError(f"frame {frame} does not exist: the stack has {n} frames")
            if shift is None:
                shift = [self.shift_spins[a].value() for a in axis_names(ndim)]
            shift = np.asarray(shift, float)
            if shift.shape != (ndim,) or not np.all(np.isfinite(shift)):
                raise ValueError(f"a shift needs {ndim} finite numbers, got {shift.tolist()}")
            shifts[frame] = shift
            self._commit(layer, meta, shifts, frame)
        except ValueError as exc:
            notify_error(WHAT, explain(exc))
            return False
        return True

    def interpolate_frame(self, frame: int | None = None) -> bool:
        """Replace ``frame``'s shift by interpolation from its good neighbours."""
        try:
            _, meta = self._require_result()
            shifts = np.asarray(meta["shifts"], float)
            n = len(shifts)
            frame = self.frame_spin.value() if frame is None else int(frame)
            if not 0 <= frame < n:
                raise ValueError(f"frame {frame} does not exist: the stack has {n} frames")
            flagged = np.array(meta["outliers"], bool)
            flagged[frame] = True
            if flagged.all():
                raise ValueError("there is no good frame left to interpolate from")
            new = interpolate_flagged(shifts, flagged)[frame]
        except ValueError as exc:
            notify_error(WHAT, explain(exc))
            return False
        return self.set_frame_shift(frame, new)

    def _commit(self, layer, meta: dict, shifts: np.ndarray, frame: int) -> None:
        """Store edited shifts and re-align the edited frame (main thread)."""
        source = layer_named(self.viewer, meta["source"])
        if source is None or source.data.shape[0] != len(shifts):
            raise ValueError(
                f"the source layer '{meta['source']}' is gone or has changed, so the frame "
                "cannot be re-aligned; open it again under that name"
            )
        kwargs = align_kwargs(meta)
        data = layer.data
        if isinstance(data, np.ndarray):
            data[frame] = align_frame(source.data, shifts, frame, **kwargs)
        else:  # lazy: rebuild the (cheap) graph with the new shifts
            data = align_lazy(source.data, shifts, **kwargs)
        outliers = np.array(meta["outliers"], bool)
        outliers[frame] = False
        edited = sorted({*meta.get("edited", []), int(frame)})
        layer.metadata = {
            **layer.metadata,
            META: {**meta, "shifts": shifts, "outliers": outliers, "edited": edited},
        }
        if data is layer.data:
            layer.refresh()
        else:
            layer.data = data
        self.refresh()
        self.status.setText(
            f"Frame {frame}: shift set to {', '.join(f'{v:.3f}' for v in shifts[frame])} px."
        )
