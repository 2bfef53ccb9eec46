"""The Register dock's settings: controls with tooltips, and the options they make.

:class:`RegisterForm` is mixed into :class:`~._register.RegisterWidget`: it
builds the controls (the reference and the search in the main form, the rest
under "More options") and turns them into one
:class:`~napari_maskalign.engine.RegistrationOptions`, which checks them.
"""

from __future__ import annotations

import os

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox
from napari.layers import Image
from superqt import QCollapsible

from napari_maskalign.engine import RegistrationOptions

from ._common import fixed_height
from ._layers import current_frame

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

#: the main form's controls, in order: attribute, widget, settings (label and tooltip
#: included). A value of 0 in a box with a "zero" text means "decide for me".
MAIN = [
    ("reference", ComboBox, dict(choices=REFERENCES, value="current", label="reference",
                                 tooltip=REFERENCE_TIP)),
    ("ref_frame", SpinBox, dict(value=0, min=0, max=0, label="frame",
                                tooltip="The frame every frame is aligned to.")),
    ("range_first", SpinBox, dict(value=0, min=0, max=0, label="from frame",
                                  tooltip="First frame of the mean (included).")),
    ("range_last", SpinBox, dict(value=0, min=0, max=0, label="to frame",
                                 tooltip="Last frame of the mean (included).")),
    ("iterations", SpinBox, dict(
        value=2, min=1, max=10, label="passes",
        tooltip="How many times the template is rebuilt from the aligned frames. 2 is usually "
        "enough.")),
    ("model_choice", ComboBox, dict(
        choices=[("translation (shift)", "translation"), ("rigid (rotation + shift)", "rigid"),
                 ("similarity (+ scale)", "similarity")],
        value="translation", label="model",
        tooltip="What moves between frames. Translation: the pattern only drifts. Rigid: it "
        "also turns. Similarity: it also grows or shrinks (camera length). Rigid and "
        "similarity need 2D frames; the aligned frames are then turned and scaled too.")),
    ("upsample", SpinBox, dict(
        value=20, min=1, max=1000, label="precision 1/",
        tooltip="Shifts are found to 1/this of a pixel: 1 = whole pixels, 20 = 0.05 px. "
        "Higher values cost a little time per frame.")),
    ("max_shift", FloatSpinBox, dict(
        value=0.0, min=0.0, max=100000.0, step=1.0, label="max shift (px)", zero="no limit",
        tooltip="The largest drift to look for, in pixels along each axis; 0 = no limit. "
        "Set it a little above the drift you expect: far-off false matches are then "
        "impossible, and masked registration runs faster.")),
    ("overlap", FloatSpinBox, dict(
        value=0.3, min=0.0, max=0.95, step=0.05, label="min overlap",
        tooltip="With a mask: ignore shifts at which a frame and the reference share less "
        "than this fraction of their unmasked pixels (matches on a thin sliver of overlap "
        "are unreliable).")),
]

#: the controls under "More options"
MORE = [
    ("normalization", ComboBox, dict(
        choices=[("none (smooth)", "none"), ("phase (textured)", "phase")], value="none",
        label="normalization",
        tooltip="Without a mask only. 'none' suits smooth images such as diffraction "
        "patterns; 'phase' whitens the spectrum, which helps on sharp, textured images "
        "but is unreliable on smooth ones.")),
    ("min_quality", FloatSpinBox, dict(
        value=0.0, min=0.0, max=1.0, step=0.05, label="min quality", zero="automatic",
        tooltip="Frames whose match quality (0-1, the correlation at the peak) is below "
        "this are flagged as outliers. 0 = decide from the run itself.")),
    ("max_jump", FloatSpinBox, dict(
        value=0.0, min=0.0, max=100000.0, step=0.5, label="max jump (px)", zero="automatic",
        tooltip="Frames whose shift jumps more than this many pixels away from their "
        "neighbours are flagged as outliers. 0 = decide from the run itself.")),
    ("interpolate", CheckBox, dict(
        value=False, text="replace outliers by interpolation",
        tooltip="Use, for flagged frames, the shift interpolated from good neighbours "
        "(the measured shift is kept too and shown in the Shifts plot).")),
    ("preview", CheckBox, dict(
        value=True, text="cross-correlation preview",
        tooltip="Also show '<image> xcorr': for each frame the correlation around its "
        "peak, zero shift at the centre, the found peak marked. A sharp single peak "
        "means a trustworthy shift.")),
    ("radius", SpinBox, dict(
        value=16, min=2, max=128, label="preview radius (px)",
        tooltip="The preview covers shifts from -radius to +radius pixels (at most the "
        "max shift, beyond which nothing is searched).")),
    ("method", ComboBox, dict(
        choices=[("spline (cubic)", "spline"), ("Fourier", "fourier")], value="spline",
        label="shift with",
        tooltip="How the aligned frames are made. Cubic spline: local, no wrap-around. "
        "Fourier: exact for smooth (band-limited) images, but what leaves one edge "
        "comes back at the other.")),
    ("fill", ComboBox, dict(
        choices=FILLS, value="nan", label="outside pixels",
        tooltip="What aligned frames hold where no data came from (the strip uncovered by "
        "the shift). NaN marks it as no data (sums and means then show it).")),
]


def _make(owner, spec) -> list:
    """Make the controls of ``spec`` as attributes of ``owner``; return them in order."""
    out = []
    for name, cls, settings in spec:
        settings = dict(settings)
        zero = settings.pop("zero", None)
        control = cls(**settings)
        if zero is not None:  # 0 means "decide for me": say so instead of showing 0.00
            control.native.setSpecialValueText(zero)
        setattr(owner, name, control)
        out.append(control)
    return out


class RegisterForm:
    """The settings controls of the Register dock (a mixin: needs ``self.viewer``)."""

    def _build_form(self, first: list) -> None:
        """Make the controls; ``first`` (the layer choices) lead the main form."""
        self.form = Container(widgets=[*first, *_make(self, MAIN)], labels=True)
        self.more_form = Container(widgets=_make(self, MORE), labels=True)
        self.more = QCollapsible("More options")
        self.more.addWidget(fixed_height(self.more_form.native))
        self.reference.changed.connect(self._on_reference_changed)
        self.preview.changed.connect(self._on_preview_changed)
        self._on_reference_changed()

    def _set_frame_count(self, n: int) -> None:
        for spin in (self.ref_frame, self.range_first, self.range_last):
            spin.max = max(n - 1, 0)
        self.range_last.value = max(n - 1, 0)

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
        """The reference settings and their description; range checks are the options'."""
        mode = self.reference.value
        if mode == "current":
            index = current_frame(self.viewer, image)
            return {"reference": index}, f"frame {index} (current)"
        if mode == "index":
            index = int(self.ref_frame.value)
            return {"reference": index}, f"frame {index}"
        if mode == "mean":
            first, last = int(self.range_first.value), int(self.range_last.value)
            if last < first:
                raise ValueError(f"the frame range {first}-{last} for the mean is empty: 'from' is after 'to'")
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

    def options(self, image: Image) -> tuple[RegistrationOptions, str]:
        """The settings of the form as one options object (checked), and the reference
        in words. Raises ``ValueError`` in plain words."""
        reference, label = self._reference(image, int(image.data.shape[0]))
        max_shift = float(self.max_shift.value) or None
        radius = int(self.radius.value)
        if max_shift is not None:  # beyond max_shift the surface is not computed
            radius = max(1, min(radius, int(np.ceil(max_shift))))
        options = RegistrationOptions(
            upsample_factor=int(self.upsample.value),
            max_shift=max_shift,
            overlap_ratio=float(self.overlap.value),
            normalization=None if self.normalization.value == "none" else "phase",
            min_quality=float(self.min_quality.value) or None,
            max_jump=float(self.max_jump.value) or None,
            interpolate_outliers=bool(self.interpolate.value),
            return_xcorr=bool(self.preview.value),
            xcorr_radius=radius,
            model=self.model_choice.value,
            # leave a core to the event loop: the viewer stays responsive
            workers=max(1, (os.cpu_count() or 2) - 1),
            **reference,
        )
        return options, label
