"""Dock widget: register a stack in a worker thread and show the aligned stack and its mean.

The mask follows what a person paints: nonzero pixels of the Labels layer are
the beam block and are ignored; :func:`napari_maskalign.workflow.register`,
the call ``maskalign register`` makes too, gets ``valid_from_ignore(mask)``
and checks it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Points, Vectors
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QVBoxLayout

from napari_maskalign.engine import Progress, RegistrationResult, valid_from_ignore
from napari_maskalign.engine.models import model_named
from napari_maskalign.workflow import AlignProgress, AlignSettings, Registration, register

from ..io import dask_source
from ..workflow.checks import inverted, mask_warning
from ._common import (
    DockWidget,
    LayerCombo,
    PicksMask,
    Throttled,
    ask,
    explain,
    fixed_height,
    layer_list_events,
    notify_info,
    notify_warning,
    publish_in_turns,
    scrolled,
    start_worker,
    together,
    wrap_label,
)
from ._layers import (
    aligned_name,
    check_output_name,
    display_props,
    drop_preview,
    is_output_layer,
    layer_named,
    mean_name,
    peak_name,
    stack_problem,
    upsert_layer,
    wants_lazy,
    xcorr_name,
)
from ._model import AlignedResult
from ._nonrigid_layers import (
    EXAGGERATION,
    deformation_name,
    deformation_stack,
    patch_vectors,
    vectors_name,
)
from ._outputs import (
    Outputs,
    aligned_steps,
    lazy_outputs,
    make_outputs,
    mean_steps,
    output_total,
)
from ._preview import preview_is_new, preview_steps
from ._register_form import RegisterForm

if TYPE_CHECKING:  # pragma: no cover
    import napari


@dataclass
class RegisterJob:
    """Everything a run needs, captured in the main thread when Run is clicked."""

    source: str
    stack: Any
    run: Registration
    lazy: bool
    reference_label: str
    align: AlignSettings = field(default_factory=AlignSettings)
    reference_frame: int | None = None
    mean: bool = True
    mean_outliers: bool = False
    props: dict = field(default_factory=dict)
    mask_name: str | None = None

    @property
    def n_frames(self) -> int:
        return self.run.n_frames

    @property
    def total(self) -> int:
        """Progress steps: every registration, then every frame shifted and averaged
        (a lazy stack: only the mean's blocks)."""
        return self.run.total + output_total(self.stack, lazy=self.lazy, mean=self.mean)

    def result(self, result: RegistrationResult) -> AlignedResult:
        """The engine's result as the aligned layer will carry it."""
        return AlignedResult.from_registration(
            result, source=self.source, frame_shape=self.run.frame_shape,
            reference=self.reference_label, mask=self.mask_name, align=self.align,
            reference_frame=self.reference_frame,
            mean_outliers=self.mean_outliers,
        )


@dataclass(frozen=True)
class Registered:
    """What :func:`register_job` yields once every frame is registered: the result and
    the aligned stack as a lazy graph (nothing computed), which the main thread
    publishes (with the preview) while the worker makes the mean. Not a progress step."""

    result: RegistrationResult
    res: AlignedResult
    ready: Outputs


def register_job(job: RegisterJob):
    """The worker's generator (no Qt): register, then make the aligned stack and its mean.

    Yields the engine's :class:`Progress` after every frame registration, then
    one :class:`Registered`, then an :class:`AlignProgress` per frame shifted
    (and averaged in the same pass) or, for a lazy stack, per block averaged;
    returns ``(RegistrationResult, AlignedResult, Outputs)``.
    """
    result = yield from job.run
    res = job.result(result)
    ready = lazy_outputs(job.stack, res)
    yield Registered(result, res, ready)
    out = yield from make_outputs(job.stack, res, lazy=job.lazy, mean=job.mean, ready=ready)
    return result, res, out


def _mask_name(layer) -> str:
    """The mask layer as messages name it."""
    return "mask" if layer is None else f"mask '{layer.name}'"


class RegisterWidget(PicksMask, RegisterForm, DockWidget):
    """Register a stack against a reference, with an optional beam-block mask.

    Mask convention: nonzero (painted) pixels are ignored. Results appear as
    ``<image> aligned`` (NaN where the mask lands in each aligned frame;
    shifts, quality and outliers in its metadata under ``"maskalign"``),
    ``<image> mean`` (the masked mean, with ``<image> mean count``) and
    ``<image> xcorr`` (the correlation around zero shift per frame) with
    ``<image> xcorr peak``. Closing the dock stops a run.
    """

    #: emitted (main thread) when a run ends, with "done", "cancelled" or "failed"
    run_finished = Signal(str)

    WHAT = "Register stack"
    SHARE = 1.0  # of the dock column's height, beside the other docks

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__(napari_viewer)
        self.worker = None  # the running napari worker, or None
        self.job: RegisterJob | None = None
        self._outcome = "failed"  # of the run under way: "done", "cancelled" or "failed"
        self._yields = 0
        self._progress_shown = Throttled(self._show_progress)  # at the window's pace
        self._worker_done = True
        self._publishing = False  # the final layers are being published: too late to cancel
        self._turns: list = []  # layer updates waiting for their event-loop turn
        self._early: Registered | None = None  # the run's registration, published early
        self._refused: BaseException | None = None  # why the early layers could not be published
        self._closed = False  # the dock was closed during the run under way
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
            keep=lambda layer: not is_output_layer(layer),
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

        # Run and the progress stay in sight; what happened (the status) and the settings
        # scroll below them when the dock is short (three docks on a laptop's screen)
        self.settings_area = scrolled(self.status, fixed_height(self.form.native), self.more,
                                      hint=260)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.settings_area, 1)

    # -- reacting to the viewer -------------------------------------------

    def _on_image_changed(self, _value=None) -> None:
        image = self.image_combo.value
        self._set_frame_count(int(image.data.shape[0]) if image is not None and image.ndim >= 3 else 1)
        self._set_integer_input(image is not None and np.dtype(image.data.dtype).kind in "biu")
        self._pick_mask()

    def prepare(self) -> RegisterJob:
        """Check the inputs and capture a job; raises ``ValueError`` in plain words."""
        image = self.image_combo.value
        problem = stack_problem(image)
        if problem:
            raise ValueError(problem)
        mask_layer = self.mask_combo.value
        valid = None
        if mask_layer is not None:  # painted (nonzero) = ignore -> True = valid
            valid = valid_from_ignore(np.asarray(mask_layer.data))
        options, label = self.options(image)
        # the frame matched with itself (previous frame: shifts add up from frame 0)
        index = {"index": options.reference, "previous": 0}.get(options.mode)
        # a layer the reader opened is a dask array over the file(s): the worker reads the
        # stack behind it, as the command line does (no dask compute per frame read)
        stack = dask_source(image.data)
        return RegisterJob(
            source=image.name,
            stack=stack,
            # the same call as `maskalign register`: it checks the mask against the frames
            run=register(stack, options, mask=valid, mask_name=_mask_name(mask_layer)),
            lazy=wants_lazy(image.data),
            reference_label=label,
            align=self.align_settings(),
            reference_frame=None if index is None else int(index) % int(image.data.shape[0]),
            mean=bool(self.mean.value),
            mean_outliers=bool(self.mean_outliers.value),
            props=display_props(image),
            mask_name=None if mask_layer is None else mask_layer.name,
        )

    # -- the mask, looked at before a run --------------------------------------

    def mask_problem(self, job: RegisterJob) -> str | None:
        """Plain words when the job's mask is probably wrong (see ``mask_warning``)."""
        if job.run.mask is None:
            return None
        frame = job.stack[job.reference_frame or 0]
        return mask_warning(job.run.mask, np.asarray(frame), job.mask_name)

    def ask_about_mask(self, text: str) -> str:
        """Ask what to do about a suspicious mask: "invert", "run" or "cancel"."""
        return ask(self, "Check the mask", text,
                   [("Invert mask and run", "invert"), ("Run anyway", "run"), ("Cancel", "cancel")],
                   default="cancel")

    def invert_mask(self) -> None:
        """Swap painted and unpainted pixels of the chosen mask layer (as the mask dock's
        Invert does)."""
        layer = self.mask_combo.value
        if layer is not None:
            layer.data = inverted(layer.data)

    # -- running ------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.worker is not None

    def run(self):
        """Start registering in a worker thread; returns the worker (None if refused).

        A mask that looks wrong (most of the frame
        ignored, or brighter than the rest) is shown to the person first:
        invert it and run, run anyway, or cancel.
        """
        if self.running:
            return None
        try:
            job = self.prepare()
            problem = self.mask_problem(job)
            if problem:
                answer = self.ask_about_mask(problem)
                if answer == "cancel":
                    self.status.setText(f"Not started: {problem}")
                    return None
                if answer == "invert":
                    self.invert_mask()
                    job = self.prepare()
        except ValueError as exc:
            self.status.setText(f"Not started: {explain(exc)}")
            self.report(exc)
            return None
        self.job = job
        self._outcome = "failed"
        self._early = self._refused = None
        self._yields = 0
        self._worker_done = False
        self._closed = False
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, job.total)
        self.progress_bar.setValue(0)
        first = ("Looking for hot and dead pixels, then registering"
                 if isinstance(job.run.options.hot_pixels, str)
                 and job.run.options.hot_pixels == "auto" else "Registering")
        self.status.setText(f"{first} {job.n_frames} frames of '{job.source}'…")
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
        if self.worker is not None and not self._publishing:
            self.worker.quit()
            self.cancel_button.setEnabled(False)
            self.status.setText("Cancelling…")

    def stop_work(self) -> None:
        """The dock was closed: stop the run; nothing is published. (A run whose
        result is already being published finishes publishing.)"""
        if self.worker is not None and not self._publishing and not self._closed:
            self._closed = True
            self.cancel()

    # -- worker slots (main thread) -------------------------------------------

    def _on_yielded(self, p) -> None:
        """Count every progress; show it at most every ``PROGRESS_EVERY_S``. The
        registration's result (:class:`Registered`) is published at once."""
        if isinstance(p, Registered):
            self._on_registered(p)
            return
        self._yields += 1
        self._progress_shown(p)

    def _on_registered(self, p: Registered) -> None:
        """Every frame is registered: publish the aligned stack (lazy until the worker
        has made it), the preview and a non-rigid run's fields now, one layer per turn,
        while the worker makes the mean (publishing is off the run's critical path). A
        name held by a layer of another type stops the run before anything changes."""
        if self._closed:
            return
        try:
            steps = self.early_steps(self.job, p)
        except (ValueError, MemoryError) as exc:
            self._refused = exc
            if self.worker is not None:
                self.worker.quit()
            return
        self._early = p
        self._publish(steps)

    def _publish(self, steps: list) -> None:
        """Queue layer updates, one per event-loop turn, after those already waiting."""
        self._turns.extend(steps)
        if len(self._turns) == len(steps):  # nothing was waiting: start the turns
            publish_in_turns(self._turns, self._turns_done, self._publish_failed, owner=self)

    def _turns_done(self) -> None:
        self._maybe_finish()

    def _show_progress(self, p) -> None:
        job = self.job
        if isinstance(p, Progress):
            text = f"{p.stage.capitalize()}: frame {p.frame + 1}/{job.n_frames}"
            if p.total > job.n_frames:
                text += f" (step {p.done}/{p.total})"
        elif isinstance(p, AlignProgress):
            what = "Averaging" if p.stage == "averaging" else "Applying shifts"
            text = f"{what}: frame {p.done}/{p.total}"
        else:  # pragma: no cover - nothing else is yielded
            return
        # one repaint for the bar and the text, on the next turn: QProgressBar.setValue
        # repaints at once, and every repaint recomposes the window with the canvas
        self.setUpdatesEnabled(False)
        try:
            self.progress_bar.setValue(min(self._yields, self.progress_bar.maximum()))
            self.status.setText(text)
        finally:
            self.setUpdatesEnabled(True)

    def _on_returned(self, value) -> None:
        self._progress_shown.flush()  # the last frame's progress, before the result
        if self._closed:  # the dock was closed as the worker finished: publish nothing
            self._on_aborted()
            return
        result, res, out = value
        try:
            steps = self.publish_steps(self.job, result, res, out)
        except (ValueError, MemoryError) as exc:
            self._fail(exc)
            return
        self._publishing = True
        self.cancel_button.setEnabled(False)  # the result is in: nothing left to cancel
        # the news in the last layer's turn (it changes no layer)
        self._publish([*steps[:-1], together(steps[-1], functools.partial(self._published,
                                                                          result))])

    def _published(self, result: RegistrationResult) -> None:
        self._publishing = False
        self._announce(result)

    def _publish_failed(self, exc) -> None:  # pragma: no cover - names are checked up front
        self._turns.clear()
        self._publishing = False
        self._fail(exc)
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
        if result.n_hot_pixels:
            text += f" Ignored {result.n_hot_pixels} hot or dead pixels."
        sigma = result.uncertainties[np.isfinite(result.uncertainties).all(axis=1)]
        if sigma.size:
            text += f" Median error (one sigma) {np.median(sigma):.3g} px."
        mean = layer_named(self.viewer, mean_name(self.job.source))
        if self.job.mean and mean is not None:
            frames = mean.metadata.get("maskalign", {}).get("frames", 0)
            text += (f" '{mean.name}' averages {frames} frames"
                     + ("." if mean.visible else " (hidden: click its eye icon to see it)."))
        for warning in result.warnings:  # e.g. a suspected lock: the shifts are doubtful
            text += f" Warning: {warning[:1].upper()}{warning[1:]}"
        self.status.setText(text)
        if result.warnings:
            notify_warning(f"'{aligned_name(self.job.source)}': {text}")
        else:
            notify_info(f"'{aligned_name(self.job.source)}': {text}")

    def _on_errored(self, exc) -> None:
        self._progress_shown.cancel()
        self._fail(exc)

    def _on_aborted(self) -> None:
        self._progress_shown.cancel()
        if self._refused is not None:  # the early layers could not be published
            self._fail(self._refused)
            return
        self._outcome = "cancelled"
        if self._early is not None:  # stopped while the mean was being made
            why = "stopped (its dock was closed)" if self._closed else "cancelled"
            text = (f"Averaging {why}: '{aligned_name(self.job.source)}' holds the new shifts "
                    "(each frame aligned as it is shown); no mean was made.")
            if self.job.mean:  # a mean of the previous shifts would no longer match
                self._publish(mean_steps(self.viewer, self._early.res, None, self.job.props))
        elif self._closed:
            text = "Registration stopped: its dock was closed. No layer was changed."
        else:
            text = "Registration cancelled: no layer was changed."
        self.status.setText(text)
        notify_info(text)

    def _on_finished(self) -> None:
        self._worker_done = True
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        """End the run once the worker is done and every output layer is published."""
        if not self._worker_done or self._publishing or self._turns or self.worker is None:
            return
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self._outcome != "done":
            self.progress_bar.setValue(0)
        else:
            self.progress_bar.setValue(self.progress_bar.maximum())
        self.run_finished.emit(self._outcome)

    # -- results --------------------------------------------------------------

    def early_steps(self, job: RegisterJob, p: Registered) -> list:
        """The layer updates that need only the registration (main thread only): the
        aligned stack as a lazy graph (the worker's computed one replaces it at the end,
        for a stack in memory), the preview, a non-rigid run's fields. Every output name
        is checked first, so a run that cannot publish changes nothing."""
        result, res = p.result, p.res
        for name, cls in ((xcorr_name(job.source), Image), (peak_name(job.source), Points)):
            check_output_name(self.viewer, name, cls)
        if model_named(result.model).fields:
            for name, cls in ((vectors_name(job.source), Vectors),
                              (deformation_name(job.source), Image)):
                check_output_name(self.viewer, name, cls)
        self._box: dict = {}
        steps = aligned_steps(self.viewer, res, p.ready, job.props, self._box)
        if result.xcorr is None:
            steps.append(functools.partial(drop_preview, self.viewer, job.source))
        else:
            fit = preview_is_new(self.viewer, job.source)
            steps += preview_steps(self.viewer, job.source, result, job.props,
                                   job.run.frame_shape)
            if fit:  # in view as soon as it appears, while the worker makes the mean
                steps[-1] = together(steps[-1], functools.partial(self._fit_view, job.source))
        if model_named(result.model).fields:
            steps.append(functools.partial(self._show_fields, job.source, result, job.props))
        return steps

    def publish_steps(self, job: RegisterJob, result: RegistrationResult, res: AlignedResult,
                      out: Outputs) -> list:
        """The output-layer updates at the end (main thread only): the mean and its count
        (and a stack in memory's aligned frames, now computed); everything else was
        published as soon as the registration was done (:meth:`early_steps`, made here
        if it was not). Name clashes are checked first."""
        steps = []
        if self._early is None:  # its Registered never came through (a test's drained job)
            steps += self.early_steps(job, Registered(result, res, out))
        elif not job.lazy:  # the computed frames in place of the lazy graph
            steps += aligned_steps(self.viewer, res, out, job.props, self._box)
        steps += mean_steps(self.viewer, res, out.mean, job.props, out.mean_limits)
        # selecting the aligned stack changes no layer: in the last layer's turn
        steps[-1] = together(steps[-1], functools.partial(self._select_aligned, self._box))
        return steps

    def _show_fields(self, source: str, result, props: dict) -> None:
        """A non-rigid result's patch shifts (vectors, coloured by quality) and its
        deformation magnitude (lazy), beside the aligned stack."""
        geo = {"scale": props["scale"], "translate": props["translate"]}
        meta = {"maskalign": {"role": "patch shifts", "source": source}}
        data, quality = patch_vectors(result)
        colour = ({"edge_color": "quality", "edge_colormap": "viridis"} if len(data)
                  else {"edge_color": "white"})
        upsert_layer(self.viewer, vectors_name(source), data, kind="vectors",
                     features={"quality": quality}, length=EXAGGERATION, metadata=meta, **geo,
                     **colour, first_time={"edge_width": 1.5})
        meta = {"maskalign": {"role": "deformation", "source": source}}
        upsert_layer(self.viewer, deformation_name(source), deformation_stack(result),
                     metadata=meta, colormap="magma", **geo, first_time={"visible": False})

    def _select_aligned(self, box: dict) -> None:
        """Select the aligned stack (the mean and its count, added after it, took the
        selection)."""
        aligned = box.get("aligned")
        if aligned is not None and aligned in self.viewer.layers:  # unless removed meanwhile
            self.viewer.layers.selection.active = aligned

    def _fit_view(self, source: str) -> None:
        """The preview has just appeared: fit the view to the stack and the preview (a
        re-run leaves the camera where the user put it)."""
        shown = [layer_named(self.viewer, n) for n in (source, xcorr_name(source))]
        self.viewer.fit_to_view(layers=[la for la in shown if la is not None])
