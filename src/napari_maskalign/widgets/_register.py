"""Dock widget: register a stack in a worker thread and show the aligned stack.

The mask follows what a person paints: nonzero pixels of the Labels layer are
the beam block and are ignored; the engine gets ``valid_from_ignore(mask)``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox
from napari.layers import Image, Labels, Points
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QVBoxLayout, QWidget
from superqt import QCollapsible

from napari_maskalign.engine import (
    Progress,
    RegistrationResult,
    check_valid_mask,
    iter_register_stack,
    valid_from_ignore,
)

from ._common import (
    META,
    AlignProgress,
    Connections,
    LayerCombo,
    PicksMask,
    aligned_name,
    axis_names,
    check_output_name,
    current_frame,
    display_props,
    drop_preview,
    explain,
    fixed_height,
    frame_shape,
    is_output_layer,
    iter_align,
    layer_list_events,
    notify_error,
    notify_info,
    peak_name,
    stack_problem,
    start_worker,
    upsert_layer,
    wants_lazy,
    wrap_label,
    xcorr_name,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari

WHAT = "Register stack"

REFERENCES = [
    ("current frame (slider)", "current"),
    ("frame number", "index"),
    ("mean of frames", "mean"),
    ("previous frame", "previous"),
    ("template refinement", "template"),
]
REFERENCE_TIP = (
    "What every frame is aligned to.\n"
    "• current frame: the frame the slider shows when you click Run.\n"
    "• frame number: a frame you pick.\n"
    "• mean of frames: the average of a range of frames (less noisy than one frame).\n"
    "• previous frame: each frame to the one before, adding up the steps; follows slow "
    "changes of the pattern, but small errors add up.\n"
    "• template refinement: align to the mean, average the aligned frames, align again; "
    "best for very noisy frames, takes a few passes."
)
FILLS = [("NaN (no data)", "nan"), ("0", "zero"), ("nearest edge pixel", "edge")]


@dataclass
class RegisterJob:
    """Everything a run needs, captured in the main thread when Run is clicked."""

    source: str
    stack: Any
    n_frames: int
    frame_shape: tuple[int, ...]
    reg_kwargs: dict
    align_kwargs: dict
    lazy: bool
    total: int
    reference_label: str
    props: dict = field(default_factory=dict)
    mask_name: str | None = None


def register_job(stack, reg_kwargs: dict, align_kwargs: dict, lazy: bool):
    """The worker's generator (no Qt): register, then apply the shifts.

    Yields the engine's :class:`Progress` after every frame registration, then
    an :class:`AlignProgress` after every frame shifted (none when the aligned
    stack is lazy); returns ``(RegistrationResult, aligned)``.
    """
    result = yield from iter_register_stack(stack, **reg_kwargs)
    aligned = yield from iter_align(stack, result.shifts, lazy=lazy, **align_kwargs)
    return result, aligned


class RegisterWidget(PicksMask, QWidget):
    """Register a stack against a reference, with an optional beam-block mask.

    Mask convention: nonzero (painted) pixels are ignored. Results appear as
    ``<image> aligned`` (shifts, quality and outliers in its metadata under
    ``"maskalign"``) and ``<image> xcorr`` (the correlation around each
    frame's peak, zero shift at the centre) with ``<image> xcorr peak``.
    """

    #: emitted (main thread) when a run ends: finished, cancelled or failed
    run_finished = Signal()

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None  # the running napari worker, or None
        self.setMinimumWidth(340)
        self.job: RegisterJob | None = None
        self.last_result: RegistrationResult | None = None
        self.last_outcome: str | None = None  # "done", "cancelled", "failed"
        self._yields = 0
        self._worker_done = True
        self._publishing = False
        self._conns = Connections(self)
        self._build()
        self._conns.connect_many(layer_list_events(napari_viewer), self._refresh_choices)
        self.image_combo.changed.connect(self._on_image_changed)
        self.reference.changed.connect(self._on_reference_changed)
        self.preview.changed.connect(self._on_preview_changed)
        self._on_image_changed()
        self._on_reference_changed()

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
        self.reference = ComboBox(choices=REFERENCES, value="current", label="reference",
                                  tooltip=REFERENCE_TIP)
        self.ref_frame = SpinBox(value=0, min=0, max=0, label="frame",
                                 tooltip="The frame every frame is aligned to.")
        self.range_first = SpinBox(value=0, min=0, max=0, label="from frame",
                                   tooltip="First frame of the mean (included).")
        self.range_last = SpinBox(value=0, min=0, max=0, label="to frame",
                                  tooltip="Last frame of the mean (included).")
        self.iterations = SpinBox(value=2, min=1, max=10, label="passes",
                                  tooltip="How many times the template is rebuilt from the "
                                  "aligned frames. 2 is usually enough.")
        self.upsample = SpinBox(
            value=20, min=1, max=1000, label="precision 1/",
            tooltip="Shifts are found to 1/this of a pixel: 1 = whole pixels, 20 = 0.05 px. "
            "Higher values cost a little time per frame.",
        )
        self.max_shift = FloatSpinBox(
            value=0.0, min=0.0, max=100000.0, step=1.0, label="max shift (px)",
            tooltip="The largest drift to look for, in pixels along each axis; 0 = no limit. "
            "Set it a little above the drift you expect: far-off false matches are then "
            "impossible, and masked registration runs faster.",
        )
        self.overlap = FloatSpinBox(
            value=0.3, min=0.0, max=0.95, step=0.05, label="min overlap",
            tooltip="With a mask: ignore shifts at which a frame and the reference share less "
            "than this fraction of their unmasked pixels (matches on a thin sliver of overlap "
            "are unreliable).",
        )
        self.form = Container(
            widgets=[
                self.image_combo, self.mask_combo, self.reference, self.ref_frame,
                self.range_first, self.range_last, self.iterations, self.upsample,
                self.max_shift, self.overlap,
            ],
            labels=True,
        )

        self.normalization = ComboBox(
            choices=[("none (smooth)", "none"), ("phase (textured)", "phase")],
            value="none", label="normalization",
            tooltip="Without a mask only. 'none' suits smooth images such as diffraction "
            "patterns; 'phase' whitens the spectrum, which helps on sharp, textured images "
            "but is unreliable on smooth ones.",
        )
        self.min_quality = FloatSpinBox(
            value=0.0, min=0.0, max=1.0, step=0.05, label="min quality",
            tooltip="Frames whose match quality (0-1, the correlation at the peak) is below "
            "this are flagged as outliers. 0 = decide from the run itself.",
        )
        self.max_jump = FloatSpinBox(
            value=0.0, min=0.0, max=100000.0, step=0.5, label="max jump (px)",
            tooltip="Frames whose shift jumps more than this many pixels away from their "
            "neighbours are flagged as outliers. 0 = decide from the run itself.",
        )
        self.interpolate = CheckBox(
            value=False, text="replace outliers by interpolation",
            tooltip="Use, for flagged frames, the shift interpolated from good neighbours "
            "(the measured shift is kept too and shown in the Shifts plot).",
        )
        self.preview = CheckBox(
            value=True, text="cross-correlation preview",
            tooltip="Also show '<image> xcorr': for each frame the correlation around its "
            "peak, zero shift at the centre, the found peak marked. A sharp single peak "
            "means a trustworthy shift.",
        )
        self.radius = SpinBox(
            value=16, min=2, max=128, label="preview radius (px)",
            tooltip="The preview covers shifts from -radius to +radius pixels (at most the "
            "max shift, beyond which nothing is searched).",
        )
        self.method = ComboBox(
            choices=[("spline (cubic)", "spline"), ("Fourier", "fourier")], value="spline",
            label="shift with",
            tooltip="How the aligned frames are made. Cubic spline: local, no wrap-around. "
            "Fourier: exact for smooth (band-limited) images, but what leaves one edge "
            "comes back at the other.",
        )
        self.fill = ComboBox(
            choices=FILLS, value="nan", label="outside pixels",
            tooltip="What aligned frames hold where no data came from (the strip uncovered by "
            "the shift). NaN marks it as no data (sums and means then show it).",
        )
        # 0 means "decide for me": say so in the box instead of showing 0.00
        for spin, text in ((self.max_shift, "no limit"), (self.min_quality, "automatic"),
                           (self.max_jump, "automatic")):
            spin.native.setSpecialValueText(text)
        self.more_form = Container(
            widgets=[
                self.normalization, self.min_quality, self.max_jump, self.interpolate,
                self.preview, self.radius, self.method, self.fill,
            ],
            labels=True,
        )
        self.more = more = QCollapsible("More options")
        more.addWidget(fixed_height(self.more_form.native))

        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Register every frame (in the background: napari stays usable).")
        self.run_button.clicked.connect(lambda _checked=False: self.run())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the frame being registered; nothing is changed.")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda _checked=False: self.cancel())
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
        layout.addWidget(more)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addStretch(1)

    # -- reacting to the viewer -------------------------------------------

    def _on_image_changed(self, _value=None) -> None:
        image = self.image_combo.value
        n = int(image.data.shape[0]) if image is not None and image.ndim >= 3 else 1
        for spin in (self.ref_frame, self.range_first, self.range_last):
            spin.max = max(n - 1, 0)
        self.range_last.value = max(n - 1, 0)
        self._pick_mask()

    def _on_reference_changed(self, _value=None) -> None:
        mode = self.reference.value
        self.ref_frame.visible = mode == "index"
        self.range_first.visible = mode == "mean"
        self.range_last.visible = mode == "mean"
        self.iterations.visible = mode == "template"

    def _on_preview_changed(self, _value=None) -> None:
        self.radius.enabled = bool(self.preview.value)

    # -- building a job (main thread, plain-word checks) --------------------

    def _reference(self, image: Image, n: int) -> tuple[dict, str]:
        mode = self.reference.value
        if mode == "current":
            index = current_frame(self.viewer, image)
            return {"reference": index}, f"frame {index} (current)"
        if mode == "index":
            index = int(self.ref_frame.value)
            if not 0 <= index < n:
                raise ValueError(f"reference frame {index} does not exist: the stack has {n} frames")
            return {"reference": index}, f"frame {index}"
        if mode == "mean":
            first, last = int(self.range_first.value), int(self.range_last.value)
            if not 0 <= first <= last < n:
                raise ValueError(
                    f"the frame range {first}-{last} for the mean is not within the stack's "
                    f"frames 0-{n - 1}, or 'from' is after 'to'"
                )
            return (
                {"reference": "mean", "reference_range": (first, last + 1)},
                f"mean of frames {first}-{last}",
            )
        if mode == "previous":
            return {"reference": "previous"}, "previous frame"
        iterations = int(self.iterations.value)
        return (
            {"reference": "template", "template_iterations": iterations},
            f"template ({iterations} passes)",
        )

    def prepare(self) -> RegisterJob:
        """Check the inputs and capture a job; raises ``ValueError`` in plain words."""
        image = self.image_combo.value
        problem = stack_problem(image)
        if problem:
            raise ValueError(problem)
        stack = image.data
        n = int(stack.shape[0])
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
        reference, label = self._reference(image, n)
        preview = bool(self.preview.value)
        max_shift = float(self.max_shift.value) or None
        radius = int(self.radius.value)
        if max_shift is not None:  # beyond max_shift the surface is not computed
            radius = max(1, min(radius, int(np.ceil(max_shift))))
        reg_kwargs = dict(
            mask=valid,
            upsample_factor=int(self.upsample.value),
            max_shift=max_shift,
            overlap_ratio=float(self.overlap.value),
            normalization=None if self.normalization.value == "none" else "phase",
            min_quality=float(self.min_quality.value) or None,
            max_jump=float(self.max_jump.value) or None,
            interpolate_outliers=bool(self.interpolate.value),
            return_xcorr=preview,
            xcorr_radius=radius,
            # leave a core to the event loop: the viewer stays responsive
            workers=max(1, (os.cpu_count() or 2) - 1),
            **reference,
        )
        fill = {"nan": np.nan, "zero": 0.0, "edge": None}[self.fill.value]
        align_kwargs = dict(method=self.method.value, fill_value=fill)
        lazy = wants_lazy(stack)
        passes = reference.get("template_iterations", 0) + 1 if reference["reference"] == "template" else 1
        total = n * passes + (0 if lazy else n)
        return RegisterJob(
            source=image.name,
            stack=stack,
            n_frames=n,
            frame_shape=shape,
            reg_kwargs=reg_kwargs,
            align_kwargs=align_kwargs,
            lazy=lazy,
            total=total,
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
            self.last_outcome = "failed"
            self.status.setText(f"Not started: {explain(exc)}")
            notify_error(WHAT, explain(exc))
            return None
        self.job = job
        self.last_outcome = None
        self._yields = 0
        self._worker_done = False
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, job.total)
        self.progress_bar.setValue(0)
        self.status.setText(f"Registering {job.n_frames} frames of '{job.source}'…")
        self.worker = start_worker(
            register_job,
            job.stack,
            job.reg_kwargs,
            job.align_kwargs,
            job.lazy,
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
        self.last_outcome = "failed"
        self.status.setText(f"Failed: {explain(exc)}")
        notify_error(WHAT, explain(exc))

    def _announce(self, result: RegistrationResult) -> None:
        self.last_result = result
        self.last_outcome = "done"
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
        self.last_outcome = "cancelled"
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
        if self.last_outcome != "done":
            self.progress_bar.setValue(0)
        self.run_finished.emit()

    # -- results --------------------------------------------------------------

    def publish_steps(self, job: RegisterJob, result: RegistrationResult, aligned) -> list:
        """The output-layer updates, one callable per layer (main thread only).

        Name clashes are checked first, so a run that cannot publish changes nothing.
        """
        names = [aligned_name(job.source), xcorr_name(job.source), peak_name(job.source)]
        for name, cls in zip(names, (Image, Image, Points)):
            check_output_name(self.viewer, name, cls)
        ndim = result.ndim
        meta = {
            "role": "aligned",
            "source": job.source,
            "shifts": np.asarray(result.shifts, float),
            "quality": np.asarray(result.quality, float),
            "outliers": np.asarray(result.outliers, bool),
            "raw_shifts": np.asarray(result.raw_shifts, float),
            "axes": axis_names(ndim),
            "frame_shape": tuple(job.frame_shape),
            "reference": job.reference_label,
            "mask": job.mask_name,
            "params": dict(result.params),
            "align": dict(job.align_kwargs),
            "model": result.model,
            "edited": [],
        }
        box: dict = {}

        def add_aligned():
            box["out"] = upsert_layer(
                self.viewer, names[0], aligned, metadata={META: meta}, **job.props
            )

        def select():
            if box["out"] in self.viewer.layers:  # unless removed in the meantime
                self.viewer.layers.selection.active = box["out"]

        if result.xcorr is None:
            return [add_aligned, functools.partial(drop_preview, self.viewer, job.source), select]
        xcorr_step, peak_step = self._xcorr_steps(job, result)
        return [add_aligned, xcorr_step, peak_step, select]

    def _xcorr_steps(self, job: RegisterJob, result: RegistrationResult) -> tuple:
        xc = result.xcorr
        ndim = result.ndim
        radius = (xc.shape[1] - 1) // 2
        width = xc.shape[1]
        # place the preview just right of the image, half a frame high
        frame_scale = np.asarray(job.props["scale"][-ndim:], float)
        frame_origin = np.asarray(job.props["translate"][-ndim:], float)
        extent = frame_scale * np.asarray(job.frame_shape)
        k = 0.5 * float(extent[-2 if ndim >= 2 else -1]) / width
        origin = frame_origin.copy()
        origin[-1] += extent[-1] + 0.05 * extent[-1]
        scale = (job.props["scale"][0], *(k,) * ndim)
        translate = (job.props["translate"][0], *origin)
        finite = xc[np.isfinite(xc)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        xmeta = {META: {"role": "xcorr", "source": job.source, "radius": radius}}

        def xcorr_step():
            upsert_layer(
                self.viewer, xcorr_name(job.source), xc, metadata=xmeta, scale=scale,
                translate=translate, colormap="viridis", contrast_limits=(lo, hi),
            )

        # the measured peak of each frame: centre + the shift found in that window
        raw = np.asarray(result.raw_shifts, float)
        if result.params.get("reference") == "previous":
            peak = np.diff(raw, axis=0, prepend=np.zeros((1, ndim)))
        else:
            peak = raw
        points = np.column_stack([np.arange(result.n_frames), radius + peak])
        colors = np.where(result.outliers[:, None], [[1.0, 0.25, 0.25, 1.0]], [[0.0, 1.0, 1.0, 1.0]])
        pmeta = {META: {"role": "xcorr peak", "source": job.source}}

        def peak_step():
            upsert_layer(
                self.viewer, peak_name(job.source), points, kind="points", metadata=pmeta,
                scale=scale, translate=translate, size=max(1.5, width / 12), symbol="cross",
                face_color=colors, border_width=0, out_of_slice_display=False,
            )

        return xcorr_step, peak_step
