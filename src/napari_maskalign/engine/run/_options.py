"""One frozen options object: every registration setting, its default and its check.

Both faces (the ``maskalign`` command and the napari widgets) and the Python
API build a :class:`RegistrationOptions`; the engine reads nothing else. What
decides the shifts is summarised by :meth:`RegistrationOptions.fingerprint`,
which a resumed run compares with the run it continues.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends._device import check_device
from ..models import DEFAULT_MODEL, MODELS, Model, model_named, models_for

__all__ = [
    "MAX_UPSAMPLE",
    "REFERENCE_MODES",
    "SMOOTHING",
    "RegistrationOptions",
    "check_upsample_factor",
]

#: reference modes besides a frame index or an explicit image
REFERENCE_MODES = ("mean", "previous", "template")

#: smoothing over time: none, or strength and jumps from the data
SMOOTHING = ("off", "auto")

#: rigid and similarity frames are at least this many pixels on each side (the
#: log-polar resampling of a 2-pixel-wide frame has no rings)
MIN_MODEL_SIDE = 8

#: the finest grid offered: 1/1000 px is far below what any frame's noise allows,
#: and the refinement's work grows with the square of the factor
MAX_UPSAMPLE = 1000


def check_upsample_factor(value) -> float:
    """``value`` as a float in [1, MAX_UPSAMPLE]; ``ValueError`` in plain words otherwise."""
    try:
        u = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"upsample_factor must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(u) or not 1 <= u <= MAX_UPSAMPLE:
        raise ValueError(
            f"upsample_factor must be a number from 1 (whole pixels) to {MAX_UPSAMPLE} "
            f"(1/{MAX_UPSAMPLE} px), got {value!r}"
        )
    return u


def _is_index(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _optional_number(name: str, value, lo: float = 0.0):
    if value is None:
        return None
    arr = np.asarray(value, dtype=float) if not isinstance(value, str) else None
    if arr is None or arr.ndim > 1 or not np.all(np.isfinite(arr)) or np.any(arr < lo):
        bound = f" of at least {lo:g}" if math.isfinite(lo) else ""
        raise ValueError(f"{name} must be a finite number{bound} (or None), got {value!r}")
    return float(arr) if arr.ndim == 0 else tuple(float(v) for v in arr)


@dataclass(frozen=True, eq=False)
class RegistrationOptions:
    """How a stack is registered. Frozen: change a copy with :meth:`replace`.

    Parameters
    ----------
    reference : int, ndarray or {"mean", "previous", "template"}
        A frame index (default 0; negative counts from the end), an explicit
        image of one frame's shape, ``"mean"`` of the frames in
        ``reference_range``, ``"previous"`` (each frame against the one
        before, shifts accumulated) or ``"template"`` (register to the mean,
        average the aligned frames, register again).
    upsample_factor : float
        Shifts to ``1/upsample_factor`` pixel, from 1 to ``MAX_UPSAMPLE``.
    max_shift : float or tuple of float, optional
        Largest shift to look for, in pixels (per axis with a tuple).
    overlap_ratio : float
        Masked only: reject shifts whose overlap of valid pixels is below
        this fraction of the largest, in [0, 1).
    normalization : {None, "phase"}
        Unmasked only: plain (None, for smooth images) or phase correlation.
    reference_range : (first, stop), optional
        Frames averaged for ``reference="mean"`` (default: all).
    template_iterations : int
        Most refinement passes for ``reference="template"`` (at least 1); the
        passes stop earlier once no shift moved by more than a tenth of its
        uncertainty.
    max_jump, min_quality : float, optional
        Outlier thresholds (see :func:`flag_outliers`); None: from the run.
    interpolate_outliers : bool
        Replace flagged frames' shifts by interpolation from good ones.
    return_xcorr : bool
        Keep each frame's correlation window of radius ``xcorr_radius``.
    xcorr_radius : int
        Radius of that window (at least 1).
    workers : int, optional
        Threads (default: all cores).
    hot_pixels : {"auto", "off"} or ndarray of bool
        Static outlier pixels (hot, dead, stuck, saturated) to ignore on top
        of the mask: ``"auto"`` (default) finds them in the stack with
        :func:`find_static_outliers`; ``"off"`` leaves the mask alone; a
        boolean array of one frame's shape names them (True = ignore).
    device : {None, "cpu", "gpu"}
        Where frames are registered: "cpu" (numpy and scipy), "gpu" (CuPy;
        the ``gpu`` extra), or None (default): where the stack is -- CuPy
        stacks on their GPU, everything else on the CPU. Not part of
        :meth:`fingerprint`: both give the same shifts (within 1e-3 px).
    model : {"translation", "rigid", "similarity", "nonrigid"}
        The transform per frame: a shift (default; 2D or 3D frames), a
        rotation and a shift, a rotation, a uniform scale and a shift, or
        (``"nonrigid"``) a smooth field: the global masked translation plus a
        cubic B-spline per frame (2D frames; a frame, an image or the mean as
        the reference). See :class:`~napari_maskalign.engine.NonrigidResult`.
    grid_spacing : float
        Non-rigid only: the control grid's spacing in pixels (default 32; a
        coarse pass runs at twice it).
    patch_size, patch_stride : int
        Non-rigid only: the patches whose masked correlation starts each
        frame's field (default 64 and 48 px).
    refine : bool, optional
        Refine each frame's transform by Gauss-Newton on the valid pixels
        after the correlation peak (continuous estimates at the Cramer-Rao
        bound instead of the ``1/upsample_factor`` grid). None (default):
        on for subpixel translation (``upsample_factor > 1``) and always for
        rigid and similarity, whose method ends in it (``refine=False`` is
        refused there); off for whole-pixel translation, which then matches
        scikit-image. See :attr:`refines`.
    smoothing : {"off", "auto"}
        Smoothing over time (:func:`~._smooth.smooth_series`): "auto" finds
        the jumps against the per-frame uncertainties, smooths the drift
        between them with a strength chosen from the data (generalised
        cross-validation), rotation and scale too; ``raw_shifts`` keeps the
        measured values. "off" (default) reports the measured shifts. Not
        part of :meth:`fingerprint`: it does not change what is measured.
    """

    reference: Any = 0
    upsample_factor: float = 1.0
    max_shift: float | tuple[float, ...] | None = None
    overlap_ratio: float = 0.3
    normalization: str | None = None
    reference_range: tuple[int, int] | None = None
    template_iterations: int = 4
    max_jump: float | None = None
    min_quality: float | None = None
    interpolate_outliers: bool = False
    return_xcorr: bool = False
    xcorr_radius: int = 16
    workers: int | None = None
    hot_pixels: Any = "auto"
    device: str | None = None
    model: str = DEFAULT_MODEL
    refine: bool | None = None
    grid_spacing: float = 32.0
    patch_size: int = 64
    patch_stride: int = 48
    smoothing: str = "off"

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        put("reference", _check_reference(self.reference))
        put("upsample_factor", check_upsample_factor(self.upsample_factor))
        put("max_shift", _optional_number("max_shift", self.max_shift))
        ratio = self.overlap_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.number)) or not 0 <= ratio < 1:
            raise ValueError(f"overlap_ratio must be a number in [0, 1), got {ratio!r}")
        put("overlap_ratio", float(ratio))
        if self.normalization not in ("phase", None):
            raise ValueError(f"normalization must be 'phase' or None, got {self.normalization!r}")
        if self.reference_range is not None:
            try:
                a, b = (int(v) for v in self.reference_range)
            except (TypeError, ValueError):
                raise ValueError(
                    f"reference_range must be (first, stop), got {self.reference_range!r}"
                ) from None
            if not 0 <= a < b:
                raise ValueError(
                    f"reference_range must be (first, stop) with 0 <= first < stop, got {(a, b)}"
                )
            if not (isinstance(self.reference, str) and self.reference == "mean"):
                raise ValueError("reference_range applies only to reference='mean'")
            put("reference_range", (a, b))
        if not _is_index(self.template_iterations) or self.template_iterations < 1:
            raise ValueError(
                f"template_iterations must be at least 1, got {self.template_iterations!r}"
            )
        put("max_jump", _optional_number("max_jump", self.max_jump))
        put("min_quality", _optional_number("min_quality", self.min_quality, -math.inf))
        if not _is_index(self.xcorr_radius) or self.xcorr_radius < 1:
            raise ValueError(f"xcorr_radius must be at least 1, got {self.xcorr_radius!r}")
        if self.workers is not None and (not _is_index(self.workers) or self.workers < 1):
            raise ValueError(f"workers must be a whole number of at least 1, got {self.workers!r}")
        put("hot_pixels", _check_hot_pixels(self.hot_pixels))
        check_device(self.device)
        put("interpolate_outliers", bool(self.interpolate_outliers))
        put("return_xcorr", bool(self.return_xcorr))
        if not isinstance(self.model, str):
            raise ValueError(
                f"model must be one of {', '.join(map(repr, MODELS))}, got {self.model!r}"
            )
        model = model_named(self.model)
        if self.refine is not None and not isinstance(self.refine, (bool, np.bool_)):
            raise ValueError(f"refine must be True, False or None (automatic), got {self.refine!r}")
        put("refine", None if self.refine is None else bool(self.refine))
        if not isinstance(self.smoothing, str) or self.smoothing not in SMOOTHING:
            raise ValueError(
                f"smoothing must be one of {', '.join(map(repr, SMOOTHING))}, got {self.smoothing!r}"
            )
        if not model.refine_optional and self.refine is False:
            optional = " or ".join(f"model={m.name!r}" for m in MODELS.values()
                                   if m.refine_optional)
            raise ValueError(
                f"the {self.model} model always ends in the Gauss-Newton refinement; "
                f"refine=False applies to {optional} only"
            )
        model.check_options(self)
        nd = self.reference.ndim if self.mode == "image" else None
        if nd is not None and nd not in model.frame_ndims:
            raise ValueError(
                f"the {self.model} model needs {model.frames_text} frames, but the reference "
                f"image is {nd}D; use {models_for(nd)} for {nd}D frames"
            )

    # -- derived -------------------------------------------------------------
    @property
    def transform_model(self) -> Model:
        """The :class:`~napari_maskalign.engine.models.Model` named by ``model``."""
        return MODELS[self.model]

    @property
    def refines(self) -> bool:
        """Whether frames are refined: ``refine``, or when None, on for rigid and
        similarity and for subpixel translation (``upsample_factor > 1``)."""
        if self.refine is not None:
            return self.refine
        return not self.transform_model.refine_optional or self.upsample_factor > 1

    def replace(self, **changes) -> RegistrationOptions:
        """A copy with ``changes`` (checked like the original)."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    @property
    def mode(self) -> str:
        """``"index"``, ``"image"``, ``"mean"``, ``"previous"`` or ``"template"``."""
        if isinstance(self.reference, str):
            return self.reference
        return "index" if _is_index(self.reference) else "image"

    def reference_index(self, n_frames: int) -> int:
        """The reference frame (mode ``"index"``) as an index in ``[0, n_frames)``."""
        idx = int(self.reference)
        if not -n_frames <= idx < n_frames:
            raise ValueError(
                f"reference frame {idx} is out of range: the stack has {n_frames} frames"
            )
        return idx % n_frames

    def mean_range(self, n_frames: int) -> tuple[int, int]:
        """The frames ``(first, stop)`` averaged for the mean reference, checked against
        the stack's length."""
        a, b = self.reference_range or (0, n_frames)
        if not b <= n_frames:
            raise ValueError(
                f"reference_range must be (first, stop) with 0 <= first < stop <= {n_frames}, "
                f"got {(a, b)}"
            )
        return a, b

    def check_for(self, n_frames: int, frame_shape: tuple[int, ...]) -> None:
        """Check the reference against a stack of ``n_frames`` frames of ``frame_shape``."""
        mode = self.mode
        if mode == "index":
            self.reference_index(n_frames)
        elif mode == "mean":
            self.mean_range(n_frames)
        elif mode == "image" and self.reference.shape != tuple(frame_shape):
            raise ValueError(
                f"the reference image has shape {self.reference.shape} but one frame has "
                f"shape {tuple(frame_shape)}"
            )
        if not isinstance(self.hot_pixels, str) and self.hot_pixels.shape != tuple(frame_shape):
            raise ValueError(
                f"the hot_pixels mask has shape {self.hot_pixels.shape} but one frame has "
                f"shape {tuple(frame_shape)}"
            )
        model, nd = self.transform_model, len(frame_shape)
        if nd not in model.frame_ndims:
            raise ValueError(
                f"the {self.model} model needs {model.frames_text} frames, but these frames "
                f"are {nd}D ({'x'.join(map(str, frame_shape))}); use {models_for(nd)} for "
                f"{nd}D frames"
            )
        if not model.shift_only and min(frame_shape) < MIN_MODEL_SIDE:
            raise ValueError(
                f"the {self.model} model needs frames of at least {MIN_MODEL_SIDE} x "
                f"{MIN_MODEL_SIDE} pixels (its log-polar transform of smaller frames is empty); "
                f"these are {'x'.join(map(str, frame_shape))}"
            )

    def describe(self) -> dict[str, Any]:
        """The settings as plain values (an explicit reference image shows as "image")."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.mode == "image":
            out["reference"] = "image"
        elif self.mode == "index":
            out["reference"] = int(self.reference)
        if self.mode != "template":
            out["template_iterations"] = None
        if not isinstance(self.hot_pixels, str):
            out["hot_pixels"] = "mask"
        return out

    def fingerprint(self) -> dict[str, Any]:
        """What decides the measured shifts, JSON-serializable: a resumed run must match it.

        Workers, the device, previews and outlier handling are left out (they do
        not change the measured shifts); an explicit reference image enters by its SHA-256;
        ``refine`` enters resolved (:attr:`refines`).
        """
        d = self.describe()
        if self.mode == "image":
            d["reference"] = "image sha256:" + array_digest(self.reference)
        if not isinstance(self.hot_pixels, str):
            d["hot_pixels"] = "mask sha256:" + array_digest(self.hot_pixels)
        keep = (
            "reference", "reference_range", "upsample_factor", "max_shift",
            "overlap_ratio", "normalization", "template_iterations", "hot_pixels", "model",
        )
        out = {k: d[k] for k in keep}
        out["refine"] = self.refines
        out.update(self.transform_model.fingerprint_items(self))
        for k in ("reference_range", "max_shift"):
            if isinstance(out[k], tuple):
                out[k] = list(out[k])
        return out


def array_digest(arr) -> str:
    """The SHA-256 of an array's type, shape and values (hex): how a run's settings name
    an image or a mask (the reference, the hot pixels, the mask in the journal)."""
    arr = np.ascontiguousarray(arr)
    return hashlib.sha256(str(arr.dtype).encode() + str(arr.shape).encode() + arr.tobytes()).hexdigest()


def _check_hot_pixels(value):
    if isinstance(value, str):
        if value not in ("auto", "off"):
            raise ValueError(f"hot_pixels must be 'auto', 'off' or a boolean mask, got {value!r}")
        return value
    arr = np.asarray(value)
    if arr.dtype != bool or arr.ndim not in (2, 3):
        raise ValueError(
            "hot_pixels must be 'auto', 'off' or a boolean mask of one frame (True = pixel to "
            f"ignore), got {'an array of ' + str(arr.dtype) if arr.ndim else repr(value)}"
        )
    return arr


def _check_names(settings: dict) -> None:
    names = {f.name for f in dataclasses.fields(RegistrationOptions)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(
            f"unknown registration setting(s) {', '.join(map(repr, unknown))}; the settings "
            f"are: {', '.join(sorted(names))}"
        )


def _check_reference(reference):
    if isinstance(reference, str):
        if reference not in REFERENCE_MODES:
            raise ValueError(
                f"reference must be a frame index, an image, or one of {REFERENCE_MODES}, "
                f"got {reference!r}"
            )
        return reference
    if _is_index(reference):
        return int(reference)
    if isinstance(reference, (bool, np.bool_)) or reference is None or np.ndim(reference) == 0:
        raise ValueError(
            f"reference must be a frame index, an image, or one of {REFERENCE_MODES}, "
            f"got {reference!r}"
        )
    arr = np.asarray(reference)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"the reference image must be real numbers, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"the reference image must be one 2D or 3D frame, got an array of shape {arr.shape}"
        )
    return arr
