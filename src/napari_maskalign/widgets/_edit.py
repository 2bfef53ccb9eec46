"""The Shifts dock's "edit one frame" box: a frame, one shift per axis, Set and Interpolate."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtWidgets import QDoubleSpinBox, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QSpinBox

from ._common import DockWidget
from ._model import AXIS_NAMES


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
