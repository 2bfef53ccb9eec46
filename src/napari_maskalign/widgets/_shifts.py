"""Dock widget: plot, export, import, edit and re-apply per-frame shifts.

The shifts live on the ``<stack> aligned`` layer (``layer.metadata["maskalign"]``),
so this widget shows whatever the Register widget (or an imported CSV) left
there. Shifts follow scikit-image's sign convention: the shift that registers
a frame onto the reference.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container
from napari.layers import Image
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QProgressBar,
    QVBoxLayout,
)

from napari_maskalign.engine import flag_outliers
from napari_maskalign.engine.models import model_for_table
from napari_maskalign.io import read_shift_table, write_shifts_csv

from ._common import (
    DockWidget,
    LayerCombo,
    Throttled,
    explain,
    fixed_height,
    layer_list_events,
    notify_info,
    publish_in_turns,
    scrolled,
    start_worker,
    wrap_label,
)
from ._edit import EditsFrames, FrameEditBox
from ._layers import (
    aligned_name,
    current_frame,
    display_props,
    drop_preview,
    find_result_layer,
    frame_shape,
    go_to_frame,
    is_output_layer,
    known_truth,
    layer_named,
    mean_name,
    same_layer,
    shift_units,
    source_of,
    stack_problem,
    wants_lazy,
)
from ._model import META, AlignedResult, axis_names
from ._outputs import (
    check_output_names,
    make_outputs,
    output_steps,
    output_total,
)
from ._plot import ShiftPlot

if TYPE_CHECKING:  # pragma: no cover
    import napari

_CSV_FILTER = "Shift tables (*.csv)"


class ShiftsWidget(EditsFrames, DockWidget):
    """Shifts of a registered stack: plot, CSV export/import, per-frame edits, re-apply.

    The plot shows the shift per axis against frame, the match quality and
    the flagged outliers; a vertical line follows the frame slider and a
    click on the plot moves the slider to that frame.
    """

    WHAT = "Shifts"
    SHARE = 2.6  # of the dock column's height, beside the other docks

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer)
        self.worker = None  # import / apply: the aligned stack and its mean
        self.mean_worker = None  # after an edit: the mean again
        self._mean_again = None  # an edit came while the mean was being made: its result
        self._publishing = False
        self._closed = False  # the dock was closed while a job ran: publish nothing
        self._bound = None  # the aligned layer whose metadata we listen to
        self._refresh_pending = False
        self._build()
        self.plot.set_theme(napari_viewer.theme)

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

        self.plot = ShiftPlot(on_frame=self.goto_frame)

        b = self.button
        self.export_button = b(
            "Export CSV…",
            "Save the shifts as a table: frame, shift_y, shift_x (shift_z first for 3D "
            "frames), quality. The shift is the one that moves the frame onto the reference.",
            self.export_csv,
        )
        self.import_button = b(
            "Import CSV…",
            "Read a shift table (same columns) for the chosen stack and make "
            "'<stack> aligned' from it. It must have one row per frame.",
            self.import_csv,
        )
        csv_row = QHBoxLayout()
        csv_row.addWidget(self.export_button)
        csv_row.addWidget(self.import_button)

        self.edit_box = FrameEditBox(self._show_frame_values, self.set_frame_shift,
                                     self.interpolate_frame)
        box = self.edit_box
        self.frame_spin, self.shift_spins = box.frame_spin, box.shift_spins
        self.set_button, self.interp_button = box.set_button, box.interp_button

        self.apply_button = b(
            "Apply shifts",
            "Align the 'apply to' layer with these shifts as a new layer '<layer> aligned'.",
            self.apply_to_layer,
        )
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
        # the plot at the height its panels need to read, scrolled when the dock is shorter
        self.plot_area = scrolled(self.plot, stretch=False)
        self.plot_area.setMinimumHeight(150)
        layout.addWidget(self.plot_area, 1)
        layout.addLayout(csv_row)
        apply_layout.addWidget(fixed_height(self._target_form.native))
        apply_layout.addWidget(self.apply_button)
        # the edits and the other layer scroll below the plot when the dock is short
        self.tools_area = scrolled(fixed_height(self.edit_box), fixed_height(apply_box),
                                   stretch=False, hint=56)
        self.tools_area.setMinimumHeight(48)  # a line of it, and its scroll bar
        layout.addWidget(self.tools_area)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)

    # -- what we show -----------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a job (import, apply, the mean after an edit) is running or publishing."""
        return self.worker is not None or self._publishing or self.mean_worker is not None

    def stack_layer(self) -> Image | None:
        return self.stack_combo.value

    def result_layer(self):
        """The ``<stack> aligned`` layer with the shifts, or None."""
        stack = self.stack_layer()
        return find_result_layer(self.viewer, None if stack is None else stack.name)

    def result(self) -> AlignedResult | None:
        return AlignedResult.from_layer(self.result_layer())

    def _require_result(self) -> tuple:
        layer = self.result_layer()
        res = AlignedResult.from_layer(layer)
        if res is None:
            stack = self.stack_layer()
            name = "the chosen stack" if stack is None else f"'{stack.name}'"
            raise ValueError(
                f"there are no shifts for {name} yet: register it (Register stack) or import a "
                "shift table"
            )
        return layer, res

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
        meta = active.metadata.get(META)
        # a layer aligned with another stack's shifts (Apply shifts) stands for that stack
        name = (meta.get("shifts_from") if isinstance(meta, dict) else None) or source_of(active)
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

    def refresh(self) -> None:
        """Redraw the plot and update the controls from the current result."""
        self._refresh_pending = False
        res = self.result()
        ndim = res.ndim if res else 2
        self.edit_box.show_axes(axis_names(ndim))
        self.frame_spin.setRange(0, max((res.n_frames if res else 0) - 1, 0))
        self._update_buttons()
        if res is None:
            stack = self.stack_layer()
            what = f"'{stack.name}'" if stack is not None else "the chosen stack"
            self.plot.show_message(
                f"No shifts for {what} yet.\nRegister it (Register stack)\nor import a shift CSV."
            )
        else:
            stack = self.stack_layer()
            scale, unit = shift_units(stack, res.ndim)
            self.plot.show_result(res, scale=scale, unit=unit,
                                  truth=known_truth(stack, res.n_frames, res.ndim))
        self._on_dims()

    def _update_buttons(self, _value=None) -> None:
        idle = self.worker is None and not self._publishing
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
        self.plot.set_frame(frame)
        if self.result() is not None:
            self.frame_spin.setValue(frame)
            self._show_frame_values()

    def _show_frame_values(self, _value=None) -> None:
        res = self.result()
        if res is None:
            return
        frame = self.frame_spin.value()
        if not 0 <= frame < res.n_frames:
            return
        for axis, value in zip(res.axes, res.shifts[frame]):
            self.shift_spins[axis].setValue(float(value))

    def _on_theme(self, _event=None) -> None:
        self.plot.set_theme(self.viewer.theme)
        self.refresh()

    def goto_frame(self, frame: int) -> None:
        """Move the viewer's frame slider to ``frame``."""
        layer = self._frame_layer()
        if layer is not None and layer.ndim >= 3:
            go_to_frame(self.viewer, layer, frame)

    # -- CSV ----------------------------------------------------------------------

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the shifts as CSV (frame, shift_[z,]y,x, quality, and the one-sigma
        errors sigma_[z,]y,x of the shifts when known; after smoothing, the measured
        values again as raw_* columns, as ``maskalign register`` writes them)."""
        found = self.attempt(self._require_result)
        if found is None:
            return None
        res = found[1]
        path = self.ask_path(path, "Export shifts", _CSV_FILTER, f"{res.source} shifts.csv")
        if path is None:
            return None
        out = self.write_file(path, lambda p: write_shifts_csv(
            p, res.shifts, res.quality, rotations=res.rotations, scales=res.scales,
            uncertainties=res.shift_uncertainties(),
            parameter_uncertainties=res.turn_uncertainties(), raw=res.measured_table()))
        if out is not None:
            notify_info(f"Saved {res.n_frames} shifts to {out}.")
        return out

    def import_csv(self, path: str | Path | None = None):
        """Read a shift table for the chosen stack and make ``<stack> aligned`` (and its
        mean) from it. The mask is ``<stack> mask``'s, if there is one of the frames' shape."""
        stack = self.stack_layer()
        problem = stack_problem(stack, "stack")
        if problem:
            self.report(problem)
            return None
        path = self.ask_path(path, "Import shifts", _CSV_FILTER)
        if path is None:
            return None
        n, shape = int(stack.data.shape[0]), frame_shape(stack)
        try:
            table = read_shift_table(path, n_frames=n, ndim=len(shape))
            shifts, quality, rotations, scales = table[:4]
            outliers = flag_outliers(shifts, quality)
        except (ValueError, OSError) as exc:
            self.report(f"cannot use this shift table for '{stack.name}': {explain(exc)}")
            return None
        mask = layer_named(self.viewer, f"{stack.name} mask")
        ignore = None if mask is None else np.asarray(mask.data)
        valid = ignore == 0 if ignore is not None and ignore.shape == shape else None
        ref = table_reference(shifts, quality, rotations, scales)
        res = AlignedResult(
            source=stack.name, shifts=shifts, quality=quality, outliers=outliers,
            raw_shifts=shifts.copy(), frame_shape=shape, valid=valid,
            mask=None if valid is None else mask.name,
            # drawn as after the run that wrote the table: against its reference frame
            reference="" if ref is None else f"frame {ref}", reference_frame=ref,
            params={"imported": str(path)},
            rotations=rotations, scales=scales, model=model_for_table(rotations, scales).name,
            uncertainties=table.uncertainties,
            parameter_uncertainties=table.parameter_uncertainties,
        )
        done = (f"Made '{aligned_name(stack.name)}' and '{mean_name(stack.name)}' from the "
                f"{n} shifts in {Path(path).name}.")
        return self._start_align(stack, res, f"Applying imported shifts to '{stack.name}'", done,
                                 stale_preview=True)

    # -- another layer --------------------------------------------------------------

    def apply_to_layer(self, target: Image | None = None):
        """Align another layer (same frames) with the current shifts, as ``<layer> aligned``
        (and its mean); the dock stays on its stack."""
        target = self.target_combo.value if target is None else target
        try:
            _, res = self._require_result()
            problem = stack_problem(target, "other layer") or res.mismatch(
                target.name, int(target.data.shape[0]), frame_shape(target))
            if problem:
                raise ValueError(problem)
        except ValueError as exc:
            self.report(exc)
            return None
        new = res.replace(source=target.name, shifts_from=res.source,
                          reference=f"shifts of '{res.source}'", edited=())
        done = (f"Aligned '{target.name}' with the shifts of '{res.source}': made "
                f"'{aligned_name(target.name)}' and '{mean_name(target.name)}'.")
        return self._start_align(target, new, f"Applying shifts to '{target.name}'", done)

    def _start_align(self, stack: Image, res: AlignedResult, desc: str, done: str,
                     stale_preview: bool = False):
        if self.worker is not None or self._publishing:
            self.report("another job is still running: wait for it to finish")
            return None
        try:
            check_output_names(self.viewer, stack.name)
        except ValueError as exc:
            self.report(exc)
            return None
        data = stack.data
        lazy = wants_lazy(data)
        props = display_props(stack)

        def returned(out):
            if self._closed:
                return
            box: dict = {}
            steps = output_steps(self.viewer, res, out, props, box)
            if stale_preview:  # the preview measured other shifts: it would contradict these
                steps.append(functools.partial(drop_preview, self.viewer, stack.name))
            self._publishing = True
            publish_in_turns(steps, functools.partial(self._made, stack, box, done),
                             self._publish_failed,
                             owner=self)

        def errored(exc):
            self.status.setText(f"Failed: {explain(exc)}")
            self.report(exc)

        def finished():
            self.worker = None
            self._steps_shown.cancel()
            self.progress_bar.setVisible(False)
            self.refresh()

        total = output_total(data, lazy=lazy, mean=True)
        self._show_progress(total, desc)
        self._closed = False
        self.worker = start_worker(
            functools.partial(make_outputs, lazy=lazy, mean=True), data, res, total=total,
            desc=desc,
            yielded=self._step, returned=returned, errored=errored, finished=finished, owner=self,
        )
        self.refresh()  # disables the buttons while it runs
        return self.worker

    def _show_progress(self, total: int, text: str) -> None:
        self.progress_bar.setRange(0, max(total, 0))
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(True)
        self.status.setText(text + "…")
        self._steps = 0
        self._steps_shown = Throttled(self._show_steps)  # at the window's pace

    def _step(self, _p=None) -> None:
        self._steps += 1
        self._steps_shown(self._steps)

    def _show_steps(self, steps: int) -> None:
        self.progress_bar.setValue(min(steps, self.progress_bar.maximum()))

    def _made(self, stack: Image, box: dict, text: str) -> None:
        """The aligned stack and its mean are published: say so (the stack stays chosen)."""
        self._publishing = False
        aligned = box.get("aligned")
        if same_layer(stack, self.stack_layer()) and aligned in self.viewer.layers:
            self.viewer.layers.selection.active = aligned  # an import: show its result
        self.status.setText(text)
        notify_info(text)
        self.refresh()

    def _publish_failed(self, exc) -> None:  # pragma: no cover - names are checked up front
        self._publishing = False
        self.status.setText(f"Failed: {explain(exc)}")
        self.report(exc)
        self.refresh()

    def stop_work(self) -> None:
        """The dock was closed: stop its jobs; what they made is not published."""
        self._closed = True
        self._mean_again = None
        for worker in (self.worker, self.mean_worker):
            if worker is not None:
                worker.quit()


def table_reference(shifts, quality, rotations=None, scales=None) -> int | None:
    """The reference frame of a shift table: the frame matched with itself (no shift, no
    turn, scale 1, quality 1, as a run writes it); None when no frame is, or several
    are (a flat table)."""
    still = np.all(np.abs(np.asarray(shifts, float)) < 1e-9, axis=1)
    if rotations is not None:
        still &= np.abs(np.asarray(rotations, float)) < 1e-9
    if scales is not None:
        still &= np.abs(np.asarray(scales, float) - 1) < 1e-9
    quality = np.asarray(quality, float)
    still &= np.isfinite(quality) & (quality >= 1 - 1e-4)  # 0.999998 after the refinement
    found = np.flatnonzero(still)
    return int(found[0]) if len(found) == 1 else None
