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

from napari_maskalign.engine import DEFAULT_MODEL, MODELS, RegistrationOptions
from napari_maskalign.engine.backends._device import gpu_available
from napari_maskalign.workflow import AlignSettings

from ._common import fixed_height
from ._layers import current_frame

REFERENCES = [
    ("frame number", "index"),
    ("current frame (slider)", "current"),
    ("mean of frames", "mean"),
    ("previous frame", "previous"),
    ("template refinement", "template"),
]
REFERENCE_TIP = (
    "What every frame is aligned to.\n"
    "• frame number: a frame you pick; frame 0 by default, as on the command line.\n"
    "• current frame: the frame the slider shows when you click Run.\n"
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
    ("reference", ComboBox, dict(choices=REFERENCES, value="index", label="reference",
                                 tooltip=REFERENCE_TIP)),
    ("ref_frame", SpinBox, dict(value=0, min=0, max=0, label="frame",
                                tooltip="The frame every frame is aligned to.")),
    ("range_first", SpinBox, dict(value=0, min=0, max=0, label="from frame",
                                  tooltip="First frame of the mean (included).")),
    ("range_last", SpinBox, dict(value=0, min=0, max=0, label="to frame",
                                 tooltip="Last frame of the mean (included).")),
    ("iterations", SpinBox, dict(
        value=4, min=1, max=10, label="passes",
        tooltip="At most this many times the template is rebuilt from the aligned frames; it "
        "stops earlier once no shift moves by more than a tenth of its uncertainty.")),
    ("model_choice", ComboBox, dict(
        choices=[(m.label, m.name) for m in MODELS.values()],
        value=DEFAULT_MODEL, label="model",
        tooltip="What moves between frames. Translation: the pattern only drifts. Rigid: it "
        "also turns. Similarity: it also grows or shrinks (camera length). Nonrigid: it also "
        "bends smoothly (lens distortion): a field per frame on a 32 px spline grid, shown as "
        "'<image> patch shifts' vectors and '<image> deformation'. Rigid, similarity and "
        "nonrigid need 2D frames.")),
    ("grid_spacing", SpinBox, dict(
        value=32, min=4, max=1024, step=4, label="grid spacing (px)",
        tooltip="Nonrigid: the spline grid's spacing in pixels (--grid-spacing). Smaller "
        "follows sharper bends and needs more texture between grid points; larger is "
        "stiffer and steadier on sparse or noisy frames.")),
    ("patch_size", SpinBox, dict(
        value=64, min=8, max=1024, step=8, label="patch size (px)",
        tooltip="Nonrigid: the side of the patches whose shifts start the fit "
        "(--patch-size). Larger patches match more reliably on sparse content; the field "
        "between them comes from the spline.")),
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
    ("hot_pixels", CheckBox, dict(
        value=True, text="ignore hot and dead pixels",
        tooltip="Find the detector's hot, dead, stuck and saturated pixels in the stack (single "
        "pixels that stand out from their neighbours in every frame) and ignore them like the "
        "beam block. They stand still, so left in they pull every frame towards zero shift. "
        "Bragg spots and rings move and are not touched.")),
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
    ("smoothing", CheckBox, dict(
        value=False, text="smooth the drift over time",
        tooltip="Smooth the shifts over time: the strength follows each frame's uncertainty "
        "and the data, jumps (the beam steered) are found and never smoothed across. The "
        "measured shifts are kept and drawn in the Shifts plot beside the smoothed line.")),
    ("preview", CheckBox, dict(
        value=True, text="cross-correlation preview",
        tooltip="Also show '<image> xcorr' beside the stack: for each frame the correlation "
        "for every trial shift within the radius, zero shift at the white +, the shift found "
        "at the cross (labelled in px; hovering reads shifts too). One bright spot with the "
        "cross on it means a trustworthy shift. The spot is as wide as the pattern's "
        "features, on the reference frame too: its centre, not its width, gives the shift. "
        "A spot on the + in every frame means something static won: check the mask.")),
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
        tooltip="Without a mask: what aligned frames hold where no data came from (the strip "
        "uncovered by the shift). NaN marks it as no data (sums and means then show it). "
        "With a mask, every pixel without data (this strip, and the masked area where it "
        "lands in each aligned frame) is NaN.")),
    ("integer", CheckBox, dict(
        value=False, text="keep integer values",
        tooltip="For integer stacks (detector counts): the aligned frames keep the stack's "
        "type, rounded; pixels without data are 0 and are painted, per frame, in "
        "'<image> aligned mask'. Otherwise aligned frames are float with NaN there.")),
    ("mean", CheckBox, dict(
        value=True, text="average the aligned frames",
        tooltip="Also make '<image> mean' (hidden at first: click its eye): each pixel "
        "averaged over the frames in which it holds data, so the masked area leaves no "
        "dark trace; NaN where no frame saw it. '<image> mean count' (hidden) says how many "
        "frames each pixel averages.")),
    ("mean_outliers", CheckBox, dict(
        value=False, text="average flagged outliers too",
        tooltip="Off: frames flagged as outliers are left out of the mean.")),
    # every core, as on the command line: the work runs below the main thread's priority
    # (background_priority), so the viewer stays responsive without a core left idle
    ("threads", SpinBox, dict(
        value=max(1, os.cpu_count() or 1), min=1, max=max(1, os.cpu_count() or 1),
        label="threads",
        tooltip="Frames registered at once; all cores by default, as on the command line. "
        "The work runs at a lower priority than napari, so the viewer stays responsive.")),
    ("device", ComboBox, dict(
        choices=[("CPU", "cpu"), ("GPU (CuPy)", "gpu")], value="cpu", label="device",
        tooltip="Where frames are registered. Shown only when CuPy sees a GPU: the GPU is "
        "many times faster on large frames (masked registration).")),
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
        self.model_choice.changed.connect(self._on_model_changed)
        self.preview.changed.connect(self._on_preview_changed)
        self._gpu = gpu_available()
        self.device.visible = self._gpu  # a choice only where there is one
        self.mean.changed.connect(self._on_mean_changed)
        self._on_reference_changed()
        self._on_model_changed()

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

    def _on_model_changed(self, _value=None) -> None:
        """The grid controls belong to the nonrigid model alone."""
        fields = bool(getattr(MODELS[self.model_choice.value], "fields", False))
        self.grid_spacing.visible = fields
        self.patch_size.visible = fields

    def _on_preview_changed(self, _value=None) -> None:
        self.radius.enabled = bool(self.preview.value)

    def _on_mean_changed(self, _value=None) -> None:
        self.mean_outliers.enabled = bool(self.mean.value)

    def _set_integer_input(self, integer: bool) -> None:
        """'keep integer values' applies to integer stacks only."""
        self.integer.enabled = integer

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
            smoothing="auto" if self.smoothing.value else "off",
            return_xcorr=bool(self.preview.value),
            xcorr_radius=radius,
            hot_pixels="auto" if self.hot_pixels.value else "off",
            model=self.model_choice.value,
            grid_spacing=float(self.grid_spacing.value),
            patch_size=int(self.patch_size.value),
            workers=int(self.threads.value),
            device=self.device.value if self._gpu else "cpu",
            **reference,
        )
        return options, label

    def align_settings(self) -> AlignSettings:
        """How the aligned frames are made (the mask apart)."""
        fill = {"nan": np.nan, "zero": 0.0, "edge": None}[self.fill.value]
        return AlignSettings(method=self.method.value, fill_value=fill,
                             integer=bool(self.integer.value) and self.integer.enabled)
