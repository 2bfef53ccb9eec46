"""The engine's records: one per frame, one progress step, one result per run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models import DEFAULT_MODEL, Model, model_named
from ..models._transforms import similarity_transforms, transform_parameters
from ._outliers import (
    ambiguity_warning,
    ambiguous_frames,
    flag_outliers,
    interpolate_flagged,
    interpolate_turns,
)

__all__ = ["FrameRecord", "Progress", "RegistrationResult", "Steps", "build_result",
           "shift_transforms"]


@dataclass(frozen=True)
class FrameRecord:
    """The registration of one frame: the one per-frame record of the engine.

    Attributes
    ----------
    shift : ndarray, shape (ndim,)
        Shift that registers the frame onto the run's reference
        (scikit-image's sign convention). With ``reference="previous"`` the
        accumulated shift to the first frame.
    quality : float
        Match quality in [0, 1]; 0 for a frame that cannot be registered.
    peak : ndarray, shape (ndim,)
        Where the correlation peaked against the reference the frame was
        compared with: the position of the peak in :attr:`xcorr` relative to
        the window's centre. Equals ``shift`` except with
        ``reference="previous"``, where it is the step from the frame before.
    xcorr : ndarray or None
        The correlation window around zero shift (when asked for).
    transform : ndarray or None
        Rigid and similarity models: the registering transform, a homogeneous
        matrix (see :attr:`RegistrationResult.transforms`), of which ``shift``
        is the frame centre's shift. None for translation.
    nonrigid : NonrigidRecord or None
        The non-rigid model: the frame's field (spline coefficients), patch
        shifts and fallback flag; ``shift`` is then the global translation.
    sigma : ndarray or None
        One-sigma error of ``shift`` per axis in pixels, then (rigid and
        similarity) of the rotation in degrees and of the scale; NaN or None
        where unknown (see :attr:`RegistrationResult.uncertainties`).
    alternative : ndarray or None
        The shift of the correlation's highest separate peak away from the chosen
        one (masked translation), or None.
    margin : float
        How far the chosen peak stands above that alternative, in the correlation's
        noise (standard deviations); inf when there is none.
    """

    shift: np.ndarray
    quality: float
    peak: np.ndarray
    xcorr: np.ndarray | None = None
    transform: np.ndarray | None = None
    nonrigid: Any = None
    sigma: np.ndarray | None = None
    alternative: np.ndarray | None = None
    margin: float = np.inf


@dataclass(frozen=True)
class Progress:
    """Yielded by a registration run after every frame.

    ``done`` counts frame registrations finished out of ``total`` (template
    refinement registers every frame more than once, so ``total`` may exceed
    the number of frames). ``frame`` is the index just registered and
    ``record`` its result in the pass under way; ``stage`` is a short text for
    a progress bar ("registering", "refining template 1/2", ...).
    """

    done: int
    total: int
    frame: int
    record: FrameRecord
    stage: str = "registering"

    @property
    def shift(self) -> np.ndarray:
        return self.record.shift

    @property
    def quality(self) -> float:
        return self.record.quality


def shift_transforms(shifts) -> np.ndarray:
    """Homogeneous matrices ``(n, ndim + 1, ndim + 1)`` of pure shifts.

    Data-axis (row, col) order, as napari's ``affine``: each maps a pixel
    coordinate of a moving frame to the reference coordinate where that
    content belongs, ``[[1, 0, sy], [0, 1, sx], [0, 0, 1]]`` in 2D.
    """
    shifts = np.asarray(shifts, dtype=float)
    n, ndim = shifts.shape
    out = np.broadcast_to(np.eye(ndim + 1), (n, ndim + 1, ndim + 1)).copy()
    out[:, :ndim, ndim] = shifts
    return out


@dataclass
class RegistrationResult:
    """Per-frame registration of a stack.

    Attributes
    ----------
    shifts : ndarray, shape (n_frames, ndim)
        Shift that registers each frame onto the reference (scikit-image's
        sign convention: apply it to the frame, e.g. with
        :func:`apply_shifts`, to align it). After outlier interpolation when
        that was asked for, and smoothed over time with ``smoothing="auto"``.
    quality : ndarray, shape (n_frames,)
        Match quality in [0, 1]: the normalized correlation at the peak
        (masked normalized cross-correlation with a mask, taken at the refined
        shift when the refinement ran; zero-mean normalized correlation
        without). 0 for frames that cannot be registered (constant frames).
    outliers : ndarray of bool, shape (n_frames,)
        Frames whose quality or shift jump is implausible.
    raw_shifts : ndarray, shape (n_frames, ndim)
        Shifts as measured, before any outlier interpolation or smoothing.
    peaks : ndarray, shape (n_frames, ndim)
        Each frame's correlation peak against the image it was compared with
        (see :attr:`FrameRecord.peak`): where the peak sits in its
        :attr:`xcorr` window, relative to the centre.
    xcorr : ndarray, shape (n_frames, *window), or None
        The correlation surface around each frame's peak, zero shift at the
        window's centre (only when requested).
    params : dict
        The settings the registration ran with.
    model : str
        The transform model's name (a key of
        :data:`~napari_maskalign.engine.MODELS`; the object is
        :attr:`transform_model`).
    transforms : ndarray, shape (n_frames, ndim + 1, ndim + 1)
        Per frame, the homogeneous matrix in data-axis (row, col) order, as
        napari's ``affine``, mapping a pixel of the frame to the reference
        coordinate where that content belongs (after outlier interpolation
        when asked for); apply them with :func:`apply_transforms`. For
        translation ``[[1, 0, sy], [0, 1, sx], [0, 0, 1]]``; for rigid and
        similarity models ``shifts`` is then the shift of the frame's centre
        ``((rows - 1) / 2, (cols - 1) / 2)``.
    raw_transforms : ndarray, shape (n_frames, ndim + 1, ndim + 1)
        The transforms as measured.
    hot_pixels : ndarray of bool or None
        Static outlier pixels (hot, dead, stuck, saturated) that were ignored
        on top of the mask (found with ``hot_pixels="auto"`` or given); None
        with ``hot_pixels="off"``.
    valid_mask : ndarray of bool or None
        The mask registration used (True = valid): the given mask without the
        hot pixels; None when every pixel was used. Aligning with it makes
        the ignored pixels NaN where they land.
    uncertainties : ndarray, shape (n_frames, ndim)
        One-sigma error of each frame's measured shift per axis (row, col), in
        pixels: from the curvature of the fit (the refinement's weighted
        normal matrix; without refinement the correlation peak's curvature
        plus the grid's quantization) scaled by the residual noise measured on
        that frame, both frames' noise included. NaN where unknown (frames
        without contrast, tables without it). With ``reference="previous"``
        the errors of the steps add up along the chain.
    parameter_uncertainties : ndarray, shape (n_frames, 2), or None
        Rigid and similarity: one-sigma error of the rotation (degrees) and of
        the scale; None for translation.
    warnings : list of str
        What makes the result doubtful (a lock on a static structure):
        plain sentences for a person to read; empty when nothing was found.
    lock_suspected : bool
        The shifts sit near zero while the frames, aligned by them, do not
        match within the noise: the run has probably locked onto something
        static (see :mod:`._lock`); the shifts should not be trusted.
    smoothed_uncertainties : ndarray, shape (n_frames, ndim), or None
        With ``smoothing="auto"``: the one-sigma uncertainty of :attr:`shifts`
        after smoothing (propagated from :attr:`uncertainties`); else None.
    jumps : ndarray of int or None
        With ``smoothing="auto"``: the frames that start a new segment (a jump
        between frame ``j - 1`` and ``j`` that smoothing kept sharp); else None.
    smoothed_parameter_uncertainties : ndarray, shape (n_frames, 2), or None
        Rigid and similarity with ``smoothing="auto"``: the one-sigma
        uncertainty of the smoothed rotation (degrees) and scale (propagated
        from :attr:`parameter_uncertainties`); else None.
    """

    shifts: np.ndarray
    quality: np.ndarray
    outliers: np.ndarray
    raw_shifts: np.ndarray
    peaks: np.ndarray | None = None
    xcorr: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)
    model: str = DEFAULT_MODEL
    transforms: np.ndarray | None = None
    raw_transforms: np.ndarray | None = None
    hot_pixels: np.ndarray | None = None
    valid_mask: np.ndarray | None = None
    uncertainties: np.ndarray | None = None
    parameter_uncertainties: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    lock_suspected: bool = False
    smoothed_uncertainties: np.ndarray | None = None
    jumps: np.ndarray | None = None
    smoothed_parameter_uncertainties: np.ndarray | None = None

    def __post_init__(self):
        if self.uncertainties is None:
            self.uncertainties = np.full(np.shape(self.raw_shifts), np.nan)
        if self.transforms is None:
            self.transforms = shift_transforms(self.shifts)
        if self.raw_transforms is None:
            self.raw_transforms = shift_transforms(self.raw_shifts)

    @property
    def transform_model(self) -> Model:
        """The :class:`~napari_maskalign.engine.Model` named by :attr:`model`."""
        return model_named(self.model)

    @property
    def n_hot_pixels(self) -> int:
        """How many static outlier pixels were ignored on top of the mask."""
        return 0 if self.hot_pixels is None else int(np.count_nonzero(self.hot_pixels))

    @property
    def n_frames(self) -> int:
        return int(self.shifts.shape[0])

    @property
    def ndim(self) -> int:
        return int(self.shifts.shape[1])

    @property
    def rotations(self) -> np.ndarray:
        """Per-frame rotation of :attr:`transforms` in degrees: positive turns the
        frame's content counterclockwise as seen in napari (rows down). The rotation
        that registers the frame, like the shift: a pattern that turned +1 degree
        gets -1. Zero for translation and for 3D frames."""
        return _angles(self.transforms)

    @property
    def scales(self) -> np.ndarray:
        """Per-frame magnification of :attr:`transforms` (1 without scale): a pattern
        that grew by 2 % gets 1 / 1.02."""
        return _magnifications(self.transforms)

    def __repr__(self) -> str:  # keep it short: arrays can be long
        mag = np.linalg.norm(self.shifts, axis=1) if self.n_frames else np.zeros(0)
        return (
            f"RegistrationResult(n_frames={self.n_frames}, ndim={self.ndim}, "
            f"median |shift|={np.median(mag) if mag.size else 0:.3f} px, "
            f"max |shift|={mag.max() if mag.size else 0:.3f} px, "
            f"outliers={int(self.outliers.sum())}, hot pixels={self.n_hot_pixels}, "
            f"model={self.model!r})"
        )


def _angles(transforms) -> np.ndarray:
    t = np.asarray(transforms, dtype=float)
    return transform_parameters(t, np.ones(t.shape[-1] - 1))[1]


def _magnifications(transforms) -> np.ndarray:
    t = np.asarray(transforms, dtype=float)
    return transform_parameters(t, np.ones(t.shape[-1] - 1))[2]


#: a measured scale beyond this share (in log) of the coarse search's range (+-25 %,
#: ``_models.MAX_LOG_SCALE``) is flagged: near the edge of the search the peak may be
#: the edge, not the scale (scales below about 0.82 or above 1.22)
SCALE_FLAG_SHARE = 0.9


def scale_beyond_search(scales, scale_sigma=None) -> np.ndarray:
    """Frames whose scale lies near or beyond the coarse search's +-25 %: flagged, since
    a larger change is outside what the search looks for and may come back wrong. A
    measured scale near the bound, or an infinite ``scale_sigma`` (the search saw its
    best match at or beyond its edge, whatever the refinement made of it), says so."""
    from ..models._logpolar import MAX_LOG_SCALE

    s = np.asarray(scales, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        far = np.abs(np.log(s)) > SCALE_FLAG_SHARE * MAX_LOG_SCALE
    far = far | ~np.isfinite(s) | (s <= 0)
    if scale_sigma is not None:
        far = far | np.isposinf(np.asarray(scale_sigma, dtype=float))
    return far


#: a whitened peak this far (px) from the plain correlation's maximum ...
PHASE_APART = 0.1
#: ... on at least this share of the frames is said in the result's warnings
PHASE_SHARE = 0.2


def _named(idx) -> str:
    """The first few frame indices of a warning: "3, 7, 12, ..." """
    return ", ".join(str(int(i)) for i in idx[:8]) + (", ..." if len(idx) > 8 else "")


def phase_warning(uncertainties, correlator) -> str | None:
    """The result's warning when the phase correlation (``correlator``: the estimator
    that ran, see ``outlier_params``; the option alone is ignored with a mask) put many
    frames' peaks away from the plain correlation's maximum (their error bars reach
    that far, see ``PhaseCorrelator.newton_step``): the whitened correlation is mostly
    noise on this content, and a user reading the shifts alone would trust them."""
    if correlator != "phase" or uncertainties is None:
        return None
    sig = np.asarray(uncertainties, dtype=float)
    wide = np.flatnonzero(np.nanmax(np.where(np.isfinite(sig), sig, 0.0), axis=1) > PHASE_APART)
    if wide.size == 0 or wide.size < PHASE_SHARE * len(sig):
        return None
    some = _named(wide)
    return (f"{wide.size} of {len(sig)} frames ({some}) are uncertain by more than "
            f"{PHASE_APART:g} px (up to {np.nanmax(sig[wide]):.2f} px): with normalization='phase' "
            "their peaks lie that far from the plain correlation's, because whitening weighs "
            "the noise at every frequency as much as the pattern. normalization=None (the "
            "plain correlation) suits smooth or noisy patterns such as diffraction")


def scale_warning(beyond) -> str | None:
    """The result's warning for frames whose scale lies at or beyond the search bound."""
    from ..models._logpolar import MAX_LOG_SCALE

    idx = np.flatnonzero(beyond)
    if not idx.size:
        return None
    bound = 100 * (np.exp(MAX_LOG_SCALE) - 1)
    some = _named(idx)
    return (f"{idx.size} frame{'s' if idx.size != 1 else ''} ({some}) changed scale by about "
            f"+-{bound:.0f} % or more against the reference, at or beyond what the search "
            "looks for: their scale may be wrong and they are flagged as outliers (register "
            "against a reference closer in scale, e.g. the previous frame)")


def build_result(raw_shifts, quality, options, *, peaks=None, params: dict | None = None,
                 rotations=None, scales=None, frame_shape=None, uncertainties=None,
                 parameter_uncertainties=None, alternatives=None, margins=None,
                 **kept) -> RegistrationResult:
    """A result from a table of measured shifts: outliers flagged with the
    options' thresholds and, if asked for, interpolated.

    For rigid and similarity models the table also holds each frame's
    rotation (degrees) and scale, ``raw_shifts`` are the frame centre's
    shifts and ``frame_shape`` says where that centre is; interpolation then
    covers the rotation and the logarithm of the scale too. ``uncertainties``
    (per frame and axis, px) and ``parameter_uncertainties`` (rotation in
    degrees, scale) are kept as measured (NaN where unknown). ``kept``: the
    result's other fields, as given (``xcorr``, ``hot_pixels``,
    ``valid_mask``, ``warnings``, ``lock_suspected``). ``alternatives`` and
    ``margins`` (each frame's second correlation peak and the first's lead over it,
    see :func:`ambiguous_frames`) flag frames whose peak was a tie the neighbours
    break against it: outliers, named in a warning, their uncertainty widened to
    reach the other peak.

    The engine ends every run here; the workflow ends a resumed run here
    too, over the whole table (earlier frames included).
    """
    raw = np.asarray(raw_shifts, dtype=float)
    quality = np.asarray(quality, dtype=float)
    outliers = flag_outliers(
        raw, quality, max_jump=options.max_jump, min_quality=options.min_quality
    )
    if alternatives is not None and margins is not None:
        tied, reach = ambiguous_frames(raw, alternatives, margins)
        # a frame of noise alone ties too, but its quality has said so already
        tied &= ~flag_outliers(raw, quality, max_jump=np.inf, min_quality=options.min_quality)
        if tied.any():
            outliers = outliers | tied
            kept["warnings"] = [*(kept.get("warnings") or []),
                                ambiguity_warning(tied, raw, alternatives)]
            if uncertainties is not None:
                uncertainties = np.array(uncertainties, dtype=float)
                uncertainties[tied] = np.fmax(uncertainties[tied], reach[tied])
    shifts = interpolate_flagged(raw, outliers) if options.interpolate_outliers else raw.copy()
    transforms = raw_transforms = None
    moves = rotations is not None or scales is not None
    n = len(raw)
    if moves:
        rot = np.zeros(n) if rotations is None else np.asarray(rotations, dtype=float)
        scale = np.ones(n) if scales is None else np.asarray(scales, dtype=float)
        raw_transforms = similarity_transforms(raw, rot, scale, frame_shape)
        psig = (None if parameter_uncertainties is None
                else np.asarray(parameter_uncertainties, dtype=float)[:, 1])
        beyond = scale_beyond_search(scale, psig)
        outliers = outliers | beyond
        said = scale_warning(beyond)
        if said is not None:
            kept["warnings"] = [*(kept.get("warnings") or []), said]
        if options.interpolate_outliers:
            shifts = interpolate_flagged(raw, outliers)
        if options.interpolate_outliers:
            rot, scale = interpolate_turns(rot, scale, outliers)
    said = phase_warning(uncertainties, (params or {}).get("correlator"))
    if said is not None:
        kept["warnings"] = [*(kept.get("warnings") or []), said]
    smoothed_sigma = jumps = smoothed_psigma = None
    if getattr(options, "smoothing", "off") == "auto" and n >= 2:
        from ._smooth import smooth_series

        # outliers are predicted from their neighbours and do not pull on them
        cols = [raw] + ([rotations_or(rotations, n)[:, None],
                         np.log(scales_or(scales, n))[:, None]] if moves else [])
        given = None if uncertainties is None else np.asarray(uncertainties, dtype=float)
        sig = np.full((n, sum(c.shape[1] for c in cols)), np.nan)
        if given is not None:
            sig[:, :raw.shape[1]] = given
        if moves and parameter_uncertainties is not None:  # rotation (deg), log-scale
            pu = np.asarray(parameter_uncertainties, dtype=float)
            sig[:, raw.shape[1]] = pu[:, 0]
            sig[:, raw.shape[1] + 1] = pu[:, 1] / scales_or(scales, n)
        sm = smooth_series(np.hstack(cols), sig, used=~outliers)
        d = raw.shape[1]
        shifts = sm.values[:, :d]
        if moves:
            rot, scale = sm.values[:, d], np.exp(sm.values[:, d + 1])
            # (the scale's from its logarithm's: d scale = scale d log(scale))
            smoothed_psigma = np.column_stack([sm.sigma[:, d], sm.sigma[:, d + 1] * scale])
        uncertainties, smoothed_sigma, jumps = sm.raw_sigma[:, :d], sm.sigma[:, :d], sm.jumps
    if moves:
        transforms = similarity_transforms(shifts, rot, scale, frame_shape)
    return RegistrationResult(
        shifts=shifts,
        quality=quality,
        outliers=outliers,
        raw_shifts=raw,
        peaks=raw.copy() if peaks is None else np.asarray(peaks, dtype=float),
        params={**options.describe(), **(params or {})},
        model=options.model,
        transforms=transforms,
        raw_transforms=raw_transforms,
        uncertainties=None if uncertainties is None else np.asarray(uncertainties, dtype=float),
        parameter_uncertainties=(None if parameter_uncertainties is None
                                 else np.asarray(parameter_uncertainties, dtype=float)),
        smoothed_uncertainties=smoothed_sigma,
        jumps=jumps,
        smoothed_parameter_uncertainties=smoothed_psigma,
        **kept,
    )


def rotations_or(rotations, n: int) -> np.ndarray:
    return np.zeros(n) if rotations is None else np.asarray(rotations, dtype=float)


def scales_or(scales, n: int) -> np.ndarray:
    return np.ones(n) if scales is None else np.asarray(scales, dtype=float)


class Steps:
    """An iterator over a registration's steps (``self._steps``, a generator) that keeps
    the generator's return value, the result, in :attr:`result` once it is exhausted
    (it is also the ``StopIteration`` value, so ``result = yield from steps`` works)."""

    result: Any = None
    _steps: Iterator

    def __iter__(self) -> Iterator[Progress]:
        return self

    def __next__(self) -> Progress:
        try:
            return next(self._steps)
        except StopIteration as stop:
            if stop.value is not None:
                self.result = stop.value
            raise

    def close(self) -> None:
        """Stop at the frame under way (no result)."""
        self._steps.close()
