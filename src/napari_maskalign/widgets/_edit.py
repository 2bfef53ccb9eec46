"""Editing one frame's shift in the Shifts dock: the box of controls and the edits.

:class:`FrameEditBox` holds the controls (a frame, one shift per axis, Set
and Interpolate); :class:`EditsFrames`, mixed into the dock, does the work:
the new shift is stored on ``<stack> aligned``, the frame re-aligned at once,
and ``<stack> mean`` averaged again in the background.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import QDoubleSpinBox, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QSpinBox

from napari_maskalign.engine import interpolate_flagged, interpolate_turns

from ._common import DockWidget, publish_in_turns, start_worker
from ._layers import (
    aligned_name,
    display_props,
    find_result_layer,
    layer_named,
    mean_name,
    nodata_name,
)
from ._model import AXIS_NAMES, AlignedResult
from ._outputs import mean_job, mean_steps, output_total, realigned


class FrameEditBox(QGroupBox):
    """The controls to set one frame's shift by hand; the dock does the work.

    Parameters
    ----------
    frame_changed : callable
        Called when the frame number changes (the dock shows its shift).
    set_shift, interpolate : callable
        Called, without arguments, by the Set shift and Interpolate buttons.
    """

    def __init__(self, frame_changed: Callable, set_shift: Callable, interpolate: Callable):
        super().__init__("Edit one frame's shift")
        grid = QGridLayout(self)
        grid.addWidget(QLabel("frame"), 0, 0)
        self.frame_spin = QSpinBox()
        self.frame_spin.setToolTip("The frame to edit (follows the slider; click the plot too).")
        self.frame_spin.valueChanged.connect(frame_changed)
        grid.addWidget(self.frame_spin, 0, 1)
        self.shift_spins: dict[str, QDoubleSpinBox] = {}
        self._labels: dict[str, QLabel] = {}
        for row, axis in enumerate(AXIS_NAMES, start=1):
            label = QLabel(f"shift {axis} (px)")
            spin = QDoubleSpinBox()
            spin.setRange(-1e5, 1e5)
            spin.setDecimals(3)
            spin.setSingleStep(0.1)
            spin.setToolTip(
                f"Shift of this frame along {axis}, in pixels: the shift that moves the frame "
                "onto the reference."
            )
            grid.addWidget(label, row, 0)
            grid.addWidget(spin, row, 1)
            self.shift_spins[axis] = spin
            self._labels[axis] = label
        self.set_button = DockWidget.button(
            "Set shift", "Use the shift typed above for this frame and re-align it.", set_shift
        )
        self.interp_button = DockWidget.button(
            "Interpolate",
            "Replace this frame's shift by interpolating between its good neighbours (for a "
            "frame whose registration failed) and re-align it.",
            interpolate,
        )
        buttons = QHBoxLayout()
        buttons.addWidget(self.set_button)
        buttons.addWidget(self.interp_button)
        grid.addLayout(buttons, len(AXIS_NAMES) + 1, 0, 1, 2)

    def show_axes(self, axes) -> None:
        """Show the shift boxes of ``axes`` only (y, x for 2D frames)."""
        for axis in AXIS_NAMES:
            self.shift_spins[axis].setVisible(axis in axes)
            self._labels[axis].setVisible(axis in axes)


class EditsFrames:
    """The Shifts dock's edits (a mixin: needs the dock's ``viewer``, ``frame_spin``,
    ``shift_spins``, ``_require_result``, ``refresh``, ``report`` and ``status``)."""

    mean_worker = None  # the background mean after an edit
    _mean_again = None  # an edit came while it ran: (source, result) to average next
    _closed = False

    def set_frame_shift(self, frame: int | None = None, shift=None, turns=None) -> bool:
        """Give ``frame`` the shift ``shift`` (default: the spin boxes) and re-align it
        (``turns``: new ``rotations``/``scales`` of a rigid or similarity result)."""
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
            self._commit(layer, res, shifts, frame, turns or {})
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
            turns = {}
            if res.rotations is not None:  # the rotation and scale too
                rotations, scales = interpolate_turns(res.rotations, res.scales, flagged)
                at = np.arange(res.n_frames) == frame
                turns = {"rotations": np.where(at, rotations, res.rotations),
                         "scales": np.where(at, scales, 1.0 if res.scales is None else res.scales)}
        except ValueError as exc:
            self.report(exc)
            return False
        return self.set_frame_shift(frame, new, turns)

    def _frame_of(self, frame: int | None, res: AlignedResult) -> int:
        frame = self.frame_spin.value() if frame is None else int(frame)
        if not 0 <= frame < res.n_frames:
            raise ValueError(f"frame {frame} does not exist: the stack has {res.n_frames} frames")
        return frame

    def _commit(self, layer, res: AlignedResult, shifts: np.ndarray, frame: int,
                turns: dict) -> None:
        """Store edited shifts, re-align the edited frame (main thread) and remake the
        mean (in the background)."""
        source = layer_named(self.viewer, res.source)
        if source is None or source.data.shape[0] != len(shifts):
            raise ValueError(
                f"the source layer '{res.source}' is gone or has changed, so the frame "
                "cannot be re-aligned; open it again under that name"
            )
        outliers = res.outliers.copy()
        outliers[frame] = False
        edited = tuple(sorted({*res.edited, int(frame)}))
        new = res.replace(shifts=shifts, outliers=outliers, edited=edited, **turns)
        data = layer.data
        nodata_layer = layer_named(self.viewer, nodata_name(res.source))
        if isinstance(data, np.ndarray):
            pixels, nodata = realigned(source.data, new, frame)
            data[frame] = pixels
            if nodata is not None and nodata_layer is not None:
                nodata_layer.data[frame] = nodata
                nodata_layer.refresh()
        else:  # lazy: rebuild the (cheap) graph with the new shifts
            data, nodata = realigned(source.data, new)
            if nodata is not None and nodata_layer is not None:
                nodata_layer.data = nodata
        layer.metadata = {**layer.metadata, **new.to_metadata()}
        if data is layer.data:
            layer.refresh()
        else:
            layer.data = data
        self.refresh()
        self.status.setText(
            f"Frame {frame}: shift set to {', '.join(f'{v:.3f}' for v in shifts[frame])} px."
        )
        self._remake_mean(source, new)

    def _remake_mean(self, source: Image, res: AlignedResult) -> None:
        """Average the aligned frames again after an edit, in the background, if there is
        a ``<source> mean`` to update; an edit during that restarts it."""
        if layer_named(self.viewer, mean_name(res.source)) is None:
            return
        if self.mean_worker is not None:
            self._mean_again = (source, res)
            self.mean_worker.quit()
            return
        props = display_props(source)

        def returned(mean):
            current = AlignedResult.from_layer(find_result_layer(self.viewer, res.source))
            if self._closed or current is None or not np.array_equal(current.shifts, res.shifts):
                return  # the shifts changed again (or the dock was closed) meanwhile
            publish_in_turns(mean_steps(self.viewer, current, mean, props), lambda: None,
                             self.report, owner=self)

        def finished():
            self.mean_worker = None
            again, self._mean_again = self._mean_again, None
            if again is not None and not self._closed:
                self._remake_mean(*again)

        self._closed = False
        self.mean_worker = start_worker(
            mean_job, source.data, res, total=output_total(source.data, lazy=True, mean=True),
            desc=f"Averaging '{aligned_name(res.source)}' again", returned=returned,
            finished=finished, owner=self,
        )
