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
from napari.layers import Image
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QProgressBar,
    QVBoxLayout,
)

from napari_maskalign.engine import flag_outliers, interpolate_flagged
from napari_maskalign.io import read_shift_table, write_shifts_csv
from napari_maskalign.workflow import align_frame, align_lazy, iter_align

from ._common import (
    DockWidget,
    LayerCombo,
    explain,
    fixed_height,
    layer_list_events,
    notify_info,
    start_worker,
    wrap_label,
)
from ._edit import FrameEditBox
from ._layers import (
    aligned_name,
    current_frame,
    display_props,
    drop_preview,
    find_result_layer,
    frame_shape,
    go_to_frame,
    is_output_layer,
    layer_named,
    same_layer,
    source_of,
    stack_problem,
    upsert_layer,
    wants_lazy,
)
from ._model import AlignedResult, axis_names
from ._plot import ShiftPlot

if TYPE_CHECKING:  # pragma: no cover
    import napari

_CSV_FILTER = "Shift tables (*.csv)"


def align_job(stack, shifts, lazy: bool, kwargs: dict):
    """Worker generator (no Qt): apply shifts with the engine, one frame per yield."""
    return (yield from iter_align(stack, shifts, lazy=lazy, **kwargs))


class ShiftsWidget(DockWidget):
    """Shifts of a registered stack: plot, CSV export/import, per-frame edits, re-apply.

    The plot shows the shift per axis against frame, the match quality and
    the flagged outliers; a vertical line follows the frame slider and a
    click on the plot moves the slider to that frame.
    """

    WHAT = "Shifts"

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer)
        self.worker = None
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
        layout.addWidget(self.plot, 1)
        layout.addLayout(csv_row)
        layout.addWidget(fixed_height(self.edit_box))
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
            self.plot.show_result(res)
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
        """Write the shifts as CSV (frame, shift_[z,]y,x, quality)."""
        found = self.attempt(self._require_result)
        if found is None:
            return None
        res = found[1]
        path = self.ask_path(path, "Export shifts", _CSV_FILTER, f"{res.source} shifts.csv")
        if path is None:
            return None
        out = self.write_file(path, lambda p: write_shifts_csv(
            p, res.shifts, res.quality, rotations=res.rotations, scales=res.scales))
        if out is not None:
            notify_info(f"Saved {res.n_frames} shifts to {out}.")
        return out

    def import_csv(self, path: str | Path | None = None):
        """Read a shift table for the chosen stack and make ``<stack> aligned`` from it."""
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
            shifts, quality, rotations, scales = read_shift_table(path, n_frames=n,
                                                                  ndim=len(shape))
            outliers = flag_outliers(shifts, quality)
        except (ValueError, OSError) as exc:
            self.report(f"cannot use this shift table for '{stack.name}': {explain(exc)}")
            return None
        res = AlignedResult(
            source=stack.name, shifts=shifts, quality=quality, outliers=outliers,
            raw_shifts=shifts.copy(), frame_shape=shape,
            reference=f"imported from {Path(path).name}", params={"imported": str(path)},
            rotations=rotations, scales=scales, model="translation" if rotations is None
            else "rigid" if np.all(scales == 1) else "similarity",
        )
        return self._start_align(
            stack, res, f"Applying imported shifts to '{stack.name}'", stale_preview=True
        )

    # -- another layer --------------------------------------------------------------

    def apply_to_layer(self, target: Image | None = None):
        """Align another layer (same frames) with the current shifts, as ``<layer> aligned``."""
        target = self.target_combo.value if target is None else target
        try:
            _, res = self._require_result()
            problem = stack_problem(target, "other layer")
            if problem:
                raise ValueError(problem)
            shape = frame_shape(target)
            if target.data.shape[0] != res.n_frames:
                raise ValueError(
                    f"'{target.name}' has {target.data.shape[0]} frames but the shifts are for "
                    f"{res.n_frames} frames"
                )
            if len(shape) != res.ndim:
                raise ValueError(
                    f"'{target.name}' has {len(shape)}D frames but the shifts are for "
                    f"{res.ndim}D frames"
                )
            measured = res.frame_shape or shape
            if shape != measured:
                raise ValueError(
                    f"'{target.name}' has frames of shape {shape} but the shifts were measured "
                    f"on frames of shape {measured}; shifts are in pixels of those frames"
                )
        except ValueError as exc:
            self.report(exc)
            return None
        new = res.replace(source=target.name, shifts_from=res.source,
                          reference=f"shifts of '{res.source}'")
        return self._start_align(target, new, f"Applying shifts to '{target.name}'")

    def _start_align(self, stack: Image, res: AlignedResult, desc: str, stale_preview: bool = False):
        if self.worker is not None:
            self.report("another job is still running: wait for it to finish")
            return None
        data = stack.data
        lazy = wants_lazy(data)
        props = display_props(stack)
        name = aligned_name(stack.name)

        def returned(aligned):
            try:
                layer = upsert_layer(self.viewer, name, aligned, metadata=res.to_metadata(), **props)
            except ValueError as exc:
                self.report(exc)
                return
            if stale_preview:  # the preview measured other shifts: it would contradict these
                drop_preview(self.viewer, stack.name)
            self.stack_combo.select(stack)
            self.viewer.layers.selection.active = layer
            self.status.setText(f"Made '{name}'.")

        def errored(exc):
            self.status.setText(f"Failed: {explain(exc)}")
            self.report(exc)

        def yielded(p):
            self.progress_bar.setValue(p.done)

        def finished():
            self.worker = None
            self.progress_bar.setVisible(False)
            self.refresh()

        n = int(data.shape[0])
        self.progress_bar.setRange(0, 0 if lazy else n)
        self.progress_bar.setValue(0)
        self.progress_bar.setVisible(True)
        self.status.setText(desc + "…")
        self.worker = start_worker(
            align_job, data, res.to_apply, lazy, res.align,
            total=0 if lazy else n, desc=desc,
            yielded=yielded, returned=returned, errored=errored, finished=finished, owner=self,
        )
        self.refresh()  # disables the buttons while it runs
        return self.worker

    # -- editing one frame ----------------------------------------------------------

    def set_frame_shift(self, frame: int | None = None, shift=None) -> bool:
        """Give ``frame`` the shift ``shift`` (default: the spin boxes) and re-align it."""
        try:
            layer, res = self._require_result()
            frame = self._frame_of(frame, res)
            if shift is None:
                shift = [self.shift_spins[a].value() for a in res.axes]
            shift = np.asarray(shift, float)
            if shift.shape != (res.ndim,) or not np.all(np.isfinite(shift)):
                raise ValueError(f"a shift needs {res.ndim} finite numbers, got {shift.tolist()}")
            shifts = res.shifts.copy()
            shifts[frame] = shift
            self._commit(layer, res, shifts, frame)
        except ValueError as exc:
            self.report(exc)
            return False
        return True

    def interpolate_frame(self, frame: int | None = None) -> bool:
        """Replace ``frame``'s shift by interpolation from its good neighbours."""
        try:
            _, res = self._require_result()
            frame = self._frame_of(frame, res)
            flagged = res.outliers.copy()
            flagged[frame] = True
            if flagged.all():
                raise ValueError("there is no good frame left to interpolate from")
            new = interpolate_flagged(res.shifts, flagged)[frame]
        except ValueError as exc:
            self.report(exc)
            return False
        return self.set_frame_shift(frame, new)

    def _frame_of(self, frame: int | None, res: AlignedResult) -> int:
        frame = self.frame_spin.value() if frame is None else int(frame)
        if not 0 <= frame < res.n_frames:
            raise ValueError(f"frame {frame} does not exist: the stack has {res.n_frames} frames")
        return frame

    def _commit(self, layer, res: AlignedResult, shifts: np.ndarray, frame: int) -> None:
        """Store edited shifts and re-align the edited frame (main thread)."""
        source = layer_named(self.viewer, res.source)
        if source is None or source.data.shape[0] != len(shifts):
            raise ValueError(
                f"the source layer '{res.source}' is gone or has changed, so the frame "
                "cannot be re-aligned; open it again under that name"
            )
        data = layer.data
        outliers = res.outliers.copy()
        outliers[frame] = False
        edited = tuple(sorted({*res.edited, int(frame)}))
        new = res.replace(shifts=shifts, outliers=outliers, edited=edited)
        if isinstance(data, np.ndarray):
            data[frame] = align_frame(source.data, new.to_apply, frame, **res.align)
        else:  # lazy: rebuild the (cheap) graph with the new shifts
            data = align_lazy(source.data, new.to_apply, **res.align)
        layer.metadata = {**layer.metadata, **new.to_metadata()}
        if data is layer.data:
            layer.refresh()
        else:
            layer.data = data
        self.refresh()
        self.status.setText(
            f"Frame {frame}: shift set to {', '.join(f'{v:.3f}' for v in shifts[frame])} px."
        )
