"""Dock widget: register a stack in a worker thread and show the aligned stack.

The mask follows what a person paints: nonzero pixels of the Labels layer are
the beam block and are ignored; the engine gets ``valid_from_ignore(mask)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Points
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QVBoxLayout

from napari_maskalign.engine import (
    Progress,
    RegistrationResult,
    RegistrationRun,
    check_valid_mask,
    valid_from_ignore,
)
from napari_maskalign.workflow import AlignProgress, iter_align, to_apply

from ._common import (
    DockWidget,
    LayerCombo,
    PicksMask,
    explain,
    fixed_height,
    layer_list_events,
    notify_info,
    start_worker,
    wrap_label,
)
from ._layers import (
    aligned_name,
    check_output_name,
    display_props,
    drop_preview,
    frame_shape,
    is_output_layer,
    peak_name,
    stack_problem,
    upsert_layer,
    wants_lazy,
    xcorr_name,
)
from ._model import AlignedResult
from ._preview import preview_steps
from ._register_form import RegisterForm

if TYPE_CHECKING:  # pragma: no cover
    import napari

@dataclass
class RegisterJob:
    """Everything a run needs, captured in the main thread when Run is clicked."""

    source: str
    stack: Any
    run: RegistrationRun
    align_kwargs: dict
    lazy: bool
    reference_label: str
    props: dict = field(default_factory=dict)
    mask_name: str | None = None

    @property
    def n_frames(self) -> int:
        return self.run.n_frames

    @property
    def total(self) -> int:
        """Progress steps: every registration, then every frame shifted (unless lazy)."""
        return self.run.total + (0 if self.lazy else self.n_frames)


def register_job(job: RegisterJob):
    """The worker's generator (no Qt): register, then apply the shifts.

    Yields the engine's :class:`Progress` after every frame registration, then
    an :class:`AlignProgress` after every frame shifted (none when the aligned
    stack is lazy); returns ``(RegistrationResult, aligned)``.
    """
    result = yield from job.run
    aligned = yield from iter_align(job.stack, to_apply(result), lazy=job.lazy,
                                    **job.align_kwargs)
    return result, aligned


class RegisterWidget(PicksMask, RegisterForm, DockWidget):
    """Register a stack against a reference, with an optional beam-block mask.

    Mask convention: nonzero (painted) pixels are ignored. Results appear as
    ``<image> aligned`` (shifts, quality and outliers in its metadata under
    ``"maskalign"``) and ``<image> xcorr`` (the correlation around each
    frame's peak, zero shift at the centre) with ``<image> xcorr peak``.
    """

    #: emitted (main thread) when a run ends, with "done", "cancelled" or "failed"
    run_finished = Signal(str)

    WHAT = "Register stack"

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer)
        self.worker = None  # the running napari worker, or None
        self.job: RegisterJob | None = None
        self._outcome = "failed"  # of the run under way: "done", "cancelled" or "failed"
        self._yields = 0
        self._worker_done = True
        self._publishing = False
        self._build()
        self._conns.connect_many(layer_list_events(napari_viewer), self._refresh_choices)
        self.image_combo.changed.connect(self._on_image_changed)
        self._on_image_changed()

    # -- layout -----------------------------------------------------------

    def _build(self) -> None:
        v = self.viewer
        self.image_combo = LayerCombo(
            v,
            Image,
            keep=lambda layer: not is_output_layer(layer),
            label="image",
            tooltip="The stack to align: frames along the first axis, each frame 2D or 3D.",
        )
        self.mask_combo = LayerCombo(
            v,
            Labels,
            none_label="(none: use every pixel)",
            label="mask",
            tooltip="Beam-block mask: painted (nonzero) pixels are ignored, the rest is used. It "
            "covers one frame. Without a mask the whole frame counts, and anything that does "
            "not move (a beam block, a dead region) pulls the result towards zero shift.",
        )
        self._build_form([self.image_combo, self.mask_combo])

        self.run_button = self.button(
            "Run", "Register every frame (in the background: napari stays usable).", self.run
        )
        self.cancel_button = self.button(
            "Cancel", "Stop after the frame being registered; nothing is changed.", self.cancel
        )
        self.cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)

        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%p%")
        self.status = wrap_label("Choose a stack (and its mask) and click Run.")

        layout = QVBoxLayout(self)
        layout.addWidget(fixed_height(self.form.native))
        layout.addWidget(self.more)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addStretch(1)

    # -- reacting to the viewer -------------------------------------------

    def _on_image_changed(self, _value=None) -> None:
        image = self.image_combo.value
        self._set_frame_count(int(image.data.shape[0]) if image is not None and image.ndim >= 3 else 1)
        self._pick_mask()

    def prepare(self) -> RegisterJob:
        """Check the inputs and capture a job; raises ``ValueError`` in plain words."""
        image = self.image_combo.value
        problem = stack_problem(image)
        if problem:
            raise ValueError(problem)
        shape = frame_shape(image)
        mask_layer = self.mask_combo.value
        valid = None
        if mask_layer is not None:
            ignore = np.asarray(mask_layer.data)
            if ignore.shape != shape:
                raise ValueError(
                    f"the mask '{mask_layer.name}' has shape {ignore.shape} but one frame of "
                    f"'{image.name}' has shape {shape}; a mask covers one frame"
                )
            valid = valid_from_ignore(ignore)  # painted (nonzero) = ignore -> True = valid
            check_valid_mask(valid, shape, what=f"mask '{mask_layer.name}'")
        options, label = self.options(image)
        fill = {"nan": np.nan, "zero": 0.0, "edge": None}[self.fill.value]
        return RegisterJob(
            source=image.name,
            stack=image.data,
            run=RegistrationRun(image.data, options, mask=valid),
            align_kwargs=dict(method=self.method.value, fill_value=fill),
            lazy=wants_lazy(image.data),
            reference_label=label,
            props=display_props(image),
            mask_name=None if mask_layer is None else mask_layer.name,
        )

    # -- running ------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.worker is not None

    def run(self):
        """Start registering in a worker thread; returns the worker (None if refused)."""
        if self.running:
            return None
        try:
            job = self.prepare()
        except ValueError as exc:
            self.status.setText(f"Not started: {explain(exc)}")
            self.report(exc)
            return None
        self.job = job
        self._outcome = "failed"
        self._yields = 0
        self._worker_done = False
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, job.total)
        self.progress_bar.setValue(0)
        self.status.setText(f"Registering {job.n_frames} frames of '{job.source}'…")
        self.worker = start_worker(
            register_job,
            job,
            total=job.total,
            desc=f"Registering '{job.source}'",
            yielded=self._on_yielded,
            returned=self._on_returned,
            errored=self._on_errored,
            aborted=self._on_aborted,
            finished=self._on_finished,
            owner=self,
        )
        return self.worker

    def cancel(self) -> None:
        """Stop the run after the frame under way; no output layer is changed."""
        if self.worker is not None:
            self.worker.quit()
            self.cancel_button.setEnabled(False)
            self.status.setText("Cancelling…")

    # -- worker slots (main thread) -------------------------------------------

    def _on_yielded(self, p) -> None:
        self._yields += 1
        self.progress_bar.setValue(min(self._yields, self.progress_bar.maximum()))
        job = self.job
        if isinstance(p, Progress):
            text = f"{p.stage.capitalize()}: frame {p.frame + 1}/{job.n_frames}"
            if p.total > job.n_frames:
                text += f" (step {p.done}/{p.total})"
        elif isinstance(p, AlignProgress):
            text = f"Applying shifts: frame {p.done}/{p.total}"
        else:  # pragma: no cover - nothing else is yielded
            return
        self.status.setText(text)

    def _on_returned(self, value) -> None:
        result, aligned = value
        try:
            steps = self.publish_steps(self.job, result, aligned)
        except (ValueError, MemoryError) as exc:
            self._fail(exc)
            return
        self._publishing = True
        self.cancel_button.setEnabled(False)  # the result is in: nothing left to cancel
        self._next_step(steps, result)

    def _next_step(self, steps: list, result: RegistrationResult) -> None:
        """Publish one layer per event-loop turn, so the viewer never stalls for long."""
        try:
            steps.pop(0)()
        except (ValueError, MemoryError) as exc:  # pragma: no cover - checked up front
            self._publishing = False
            self._fail(exc)
            self._maybe_finish()
            return
        if steps:
            # a real (1 ms) timer, not a zero-timer: zero-timers run back to back before
            # other timers and input, which would glue the steps into one long stall
            QTimer.singleShot(1, functools.partial(self._next_step, steps, result))
            return
        self._publishing = False
        self._announce(result)
        self._maybe_finish()

    def _fail(self, exc) -> None:
        self._outcome = "failed"
        self.status.setText(f"Failed: {explain(exc)}")
        self.report(exc)

    def _announce(self, result: RegistrationResult) -> None:
        self._outcome = "done"
        good = ~result.outliers
        mag = np.linalg.norm(result.shifts[good] if good.any() else result.shifts, axis=1)
        n_out = int(result.outliers.sum())
        text = (
            f"Done: {result.n_frames} frames against {self.job.reference_label}; largest shift "
            f"{mag.max():.2f} px, median quality {np.median(result.quality):.2f}"
        )
        if n_out:
            text += (
                f"; {n_out} outlier frame{'s' if n_out != 1 else ''} flagged (not counted in "
                "the largest shift; see the Shifts plot)."
            )
        else:
            text += "; no outliers."
        self.status.setText(text)
        notify_info(f"'{aligned_name(self.job.source)}': {text}")

    def _on_errored(self, exc) -> None:
        self._fail(exc)

    def _on_aborted(self) -> None:
        self._outcome = "cancelled"
        self.status.setText("Cancelled: no layer was changed.")
        notify_info("Registration cancelled: no layer was changed.")

    def _on_finished(self) -> None:
        self._worker_done = True
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        """End the run once the worker is done and every output layer is published."""
        if not self._worker_done or self._publishing:
            return
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self._outcome != "done":
            self.progress_bar.setValue(0)
        self.run_finished.emit(self._outcome)

    # -- results --------------------------------------------------------------

    def publish_steps(self, job: RegisterJob, result: RegistrationResult, aligned) -> list:
        """The output-layer updates, one callable per layer (main thread only).

        Name clashes are checked first, so a run that cannot publish changes nothing.
        """
        names = [aligned_name(job.source), xcorr_name(job.source), peak_name(job.source)]
        for name, cls in zip(names, (Image, Image, Points)):
            check_output_name(self.viewer, name, cls)
        model = AlignedResult.from_registration(
            result, source=job.source, frame_shape=job.run.frame_shape,
            reference=job.reference_label, mask=job.mask_name, align=job.align_kwargs,
        )
        box: dict = {}

        def add_aligned():
            box["out"] = upsert_layer(
                self.viewer, names[0], aligned, metadata=model.to_metadata(), **job.props
            )

        def select():
            if box["out"] in self.viewer.layers:  # unless removed in the meantime
                self.viewer.layers.selection.active = box["out"]

        if result.xcorr is None:
            return [add_aligned, functools.partial(drop_preview, self.viewer, job.source), select]
        return [add_aligned, *preview_steps(self.viewer, job.source, result, job.props,
                                            job.run.frame_shape), select]
