"""Registering single frames against one reference: checks once, one record per frame."""

from __future__ import annotations

import numpy as np

from ..backends import backend_for
from ..backends._device import is_foreign_array, to_host, to_namespace
from ..kernels._correlators import PhaseCorrelator
from ..kernels._fft import default_workers, real_dtype_for
from ..kernels._masked import MaskedCorrelator
from ..models._shift import ignored_filler
from ..models._transforms import frame_centre
from ._masks import check_valid_mask
from ._options import RegistrationOptions
from ._result import FrameRecord

__all__ = ["FrameRegistrar", "check_backend", "has_contrast"]


def check_backend(backend, masked: bool, model) -> None:
    """Refuse, in plain words, what a batched backend (a GPU) cannot register: frames
    without a mask, or a model it has no path for. Runs and registrars call it when
    they are made, so the answer never depends on the data."""
    if not backend.batches:
        return
    if not masked:
        raise ValueError(
            "registration on a GPU needs a mask (masked correlation); without one, "
            "use device='cpu'"
        )
    if not model.gpu:
        from ..models import MODELS

        able = " and ".join(m.name for m in MODELS.values() if m.gpu)
        raise ValueError(
            f"the {model.name} model runs on the CPU; use device='cpu' (the GPU path "
            f"registers {able})"
        )


def has_contrast(frame, valid=None) -> bool:
    """Whether ``frame`` can serve as a reference: not constant on its valid pixels."""
    vals = frame if valid is None else frame[valid]
    return vals.size > 0 and bool(vals.max() > vals.min())


class FrameRegistrar:
    """Registers single frames against one reference; picklable.

    Everything that depends only on the reference and the mask (their FFTs,
    the overlap of valid pixels, the accepted shifts, the FFT size, the
    refinement's Jacobian) is computed here once. This is where frames and the
    reference are checked: the correlators below trust what they get.

    The model (``options.transform_model``) decides the coarse search.
    Translation: the correlation peak, then (``options.refines``) the
    Gauss-Newton refinement of :mod:`~napari_maskalign.engine.models._refine`
    from it. Rigid and similarity:
    :class:`~napari_maskalign.engine.models._logpolar.ModelRegistrar` (coarse
    rotation, scale and shift, then the same refinement of all parameters).

    Parameters
    ----------
    reference_image : ndarray
        The image frames are registered onto.
    valid_mask : ndarray of bool, optional
        True on pixels to use (engine convention; a painted beam-block mask,
        nonzero = ignore, converts with ``valid_from_ignore``). The same static
        mask applies to the reference and to every frame. None: plain phase
        correlation of whole frames.
    options : RegistrationOptions, optional
        The settings (upsample factor, max shift, overlap ratio,
        normalization, workers, correlation window); defaults if omitted.
    reference_mask : ndarray of bool, optional
        A different valid mask for the reference (template refinement uses
        this); defaults to ``valid_mask``.
    dtype : numpy dtype, optional
        Working precision (default: float32 for small inputs, else float64).
    xp : array namespace, optional
        Where the per-frame work runs: numpy (default), or a CuPy namespace
        for a GPU (masked translation only; the refinement runs on the host);
        frames may come as numpy arrays.
    fill : ndarray of bool, optional
        Static outlier pixels (hot, dead) of an unmasked registration: in the
        reference and in every frame they take the value of their nearest
        other pixel, and the registration stays what it is (phase or plain
        correlation, no mask). With a mask, outliers belong in the mask instead
        (refused here).
    """

    def __init__(
        self,
        reference_image,
        valid_mask=None,
        options: RegistrationOptions | None = None,
        *,
        reference_mask=None,
        dtype=None,
        xp=None,
        fill=None,
    ):
        opts = RegistrationOptions() if options is None else options
        self.xp = np if xp is None else xp
        if fill is not None and valid_mask is not None:
            raise ValueError("with a mask, static outliers join the mask: fill is for unmasked runs")
        #: copies a frame with the outlier pixels filled from their neighbourhood (or None)
        self.fill = None if fill is None else ignored_filler(~np.asarray(fill, bool))
        self._fill_shape = None if fill is None else np.shape(fill)
        #: the array library the per-frame work runs with (numpy, CuPy, ...)
        self.backend = backend_for(self.xp)
        check_backend(self.backend, valid_mask is not None, opts.transform_model)
        model = opts.transform_model
        ref = np.asarray(reference_image)
        self.dtype = np.dtype(dtype) if dtype is not None else real_dtype_for(ref)
        ref = self._filled(ref.astype(self.dtype, copy=False))
        self.shape = ref.shape
        self.xcorr_radius = opts.xcorr_radius if opts.return_xcorr else None
        self.masked = valid_mask is not None
        self.valid = self.ref_valid = None
        if self.masked:
            self.valid = np.asarray(valid_mask, dtype=bool)
            self.ref_valid = self.valid if reference_mask is None else np.asarray(reference_mask, bool)
            check_valid_mask(self.ref_valid, self.shape, "reference's valid area")
            self._valid_x = self.backend.own(self.valid)
        self._check_reference(ref)
        self._corr = None
        # what both correlators take from the options
        search = dict(upsample_factor=opts.upsample_factor, max_shift=opts.max_shift,
                      workers=opts.workers)
        if model.shift_only and self.masked:
            self._corr = MaskedCorrelator(ref, self.ref_valid, self.valid,
                                          overlap_ratio=opts.overlap_ratio, shrink=True,
                                          dtype=self.dtype, xp=self.xp, **search)
        elif model.shift_only:
            # unmasked, the refinement is a Newton step on the cross-power spectrum the
            # correlation holds anyway: no transform, no pixel pass (the frame's own
            # refinement cost 8x the correlation)
            self._corr = PhaseCorrelator(ref, normalization=opts.normalization, zero_mean=True,
                                         newton=opts.refines, **search)
        self.model, self.refines, self._max_shift = model, opts.refines, opts.max_shift
        self._overlap_ratio, self._upsample = opts.overlap_ratio, opts.upsample_factor
        self._refiner = self._models = None
        self._prepare(ref)

    def _prepare(self, ref) -> None:
        """The refinement's (or the rigid/similarity model's) reference side."""
        if self.masked:
            ref = np.where(self.ref_valid, ref, 0)
        if self._models is not None:
            self._models.set_reference(ref)
            return
        self._models = self.model.searcher(ref, self.ref_valid, self.valid,
                                           overlap_ratio=self._overlap_ratio)
        if self._models is not None:
            return
        from ..models._refine import Refiner, peak_curvature, unmasked_terms

        if self.refines and not self.masked:  # the Newton step's error bar, one estimate
            self._curvature, self._corr.noise_terms = unmasked_terms(ref)
        elif self.refines:
            # every valid pixel: at low dose the strongest 30 % alone were 1.2x further
            # from the bound (measured: 1.74 against 1.46 at 20 counts); from a fine 1/u
            # peak, with the noise model fitted at the start, two weighted steps
            # converge to 1/500 px
            self._refiner = Refiner(ref, self.ref_valid, self.valid, self.model, tol=2e-3,
                                    noise_first=self._upsample >= 10)
            self._curvature = self._refiner.curvature
        else:
            self._curvature = peak_curvature(ref, self.ref_valid)

    def __getstate__(self):  # a namespace (a module) does not pickle: the correlator knows it
        state = self.__dict__.copy()
        state["xp"] = state["backend"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.xp = getattr(self._corr, "xp", np) if self._corr is not None else np
        self.backend = backend_for(self.xp)

    def _filled(self, image):
        """``image`` with the static outliers filled (itself when there are none)."""
        if self.fill is None or image.shape != self._fill_shape:  # a wrong shape is refused later
            return image
        return self.fill(image)

    def _check_reference(self, ref):
        vals = ref[self.ref_valid] if self.masked else ref
        if not np.all(np.isfinite(vals)):
            where = "valid pixels" if self.masked else "pixels"
            raise ValueError(f"the reference has NaN or inf {where}: paint them into the mask")
        if not has_contrast(vals):
            raise ValueError("the reference has no contrast: all its valid pixels are equal")

    def set_reference(self, reference_image) -> None:
        """Register against a new reference of the same shape (same mask): the
        mask geometry and FFT sizes are kept, only the reference's spectra are
        recomputed. Used by the "previous" mode."""
        ref = np.asarray(reference_image).astype(self.dtype, copy=False)
        ref = self._filled(ref)
        if ref.shape != self.shape:
            raise ValueError(f"the reference has shape {ref.shape}, expected {self.shape}")
        self._check_reference(ref)
        if self._corr is not None:
            self._corr.set_reference(ref)
        self._prepare(ref)

    def set_workers(self, workers) -> None:
        """Threads each FFT may use (1 when frames are registered in parallel)."""
        if self._corr is not None:
            self._corr.workers = default_workers(workers)

    def _empty(self) -> FrameRecord:
        window = None
        if self.xcorr_radius is not None:
            window = np.zeros((2 * self.xcorr_radius + 1,) * len(self.shape), np.float32)
        zero = np.zeros(len(self.shape))
        eye = None if self.model.shift_only else np.eye(len(self.shape) + 1)
        return FrameRecord(zero, 0.0, zero, window, eye)

    def register(self, frame) -> FrameRecord:
        """Register one frame; a frame without contrast gets quality 0, shift 0."""
        if self.backend.batches:
            return self.register_batch([frame])[0]
        frame = np.asarray(frame)
        if frame.shape != self.shape:
            raise ValueError(f"a frame has shape {frame.shape}, expected {self.shape}")
        frame = self._filled(frame.astype(self.dtype, copy=False))
        if self.masked:
            if not np.isfinite(frame).all():
                # min/max over the valid pixels without copying them out
                if not np.isfinite(frame[self.valid]).all():
                    raise ValueError(
                        "a frame has NaN or inf pixels outside the mask: paint them into the mask"
                    )
                frame = np.where(self.valid, frame, 0)
            hi = np.max(frame, where=self.valid, initial=-np.inf)
            lo = np.min(frame, where=self.valid, initial=np.inf)
        else:
            hi, lo = frame.max(), frame.min()  # NaN and inf show up in these
            if not (np.isfinite(hi) and np.isfinite(lo)):
                raise ValueError("a frame has NaN or inf pixels: give a mask that excludes them")
        if not hi > lo:
            return self._empty()
        if self._models is not None:
            return self._register_model(frame)
        return self._record(self._corr.register(frame, xcorr_radius=self.xcorr_radius,
                                                **self._peak_kw), frame)

    @property
    def _peak_kw(self) -> dict:
        """What the masked correlator is asked for: with the refinement, the whole-pixel
        peak's parabola vertex to start from, the fine grid only where it fails."""
        return {"fine": False} if self._refiner is not None else {}

    def _record(self, peak, frame) -> FrameRecord:
        """The record of a correlation peak (refined from ``frame`` when asked for)."""
        # grid positions are sums of 1/upsample_factor steps: round away the
        # float dust (0.09999999999999998) so shift tables read as measured
        shift = np.round(np.asarray(peak.shift, dtype=np.float64), 10) + 0.0
        sigma, quality = peak.sigma, float(peak.quality)
        if self._refiner is not None and quality > 0:
            shift, sigma = self._refined(to_host(frame), shift)
        if sigma is None and peak.fine is not None:
            # the refinement failed from the cheap peak: the 1/u grid's peak, as without it
            fine_shift, quality = peak.fine()
            shift = np.round(np.asarray(fine_shift, dtype=np.float64), 10) + 0.0
        elif peak.quality_at is not None:  # the correlation where the frame was put
            quality = peak.quality_at(shift)
        if sigma is None:
            sigma = self._peak_sigma(quality)
        alternative, margin = self._runner_up(peak)
        return FrameRecord(shift, quality, shift, peak.xcorr, sigma=sigma,
                           alternative=alternative, margin=margin)

    def _runner_up(self, peak) -> tuple:
        """The correlation's second separate peak (its shift) and the best peak's lead
        over it in the noise of a normalized correlation of ``n`` pixels, for two frames
        each carrying noise: a difference of two peak values of correlation ``rho``
        scatters by about ``sqrt(4 rho (1 - rho) / n)``. A periodic pattern (a lattice
        of Bragg spots) has a second peak a lattice vector away, nearly as high."""
        if peak.runner_up_shift is None or not np.isfinite(peak.runner_up):
            return None, np.inf
        rho = float(np.real(peak.peak_value))
        n = self._curvature[1]
        noise = np.sqrt(max(4.0 * rho * (1.0 - rho), 1e-12) / n)
        alternative = np.round(np.asarray(peak.runner_up_shift, float), 10) + 0.0
        return alternative, float((rho - peak.runner_up) / noise)

    def _peak_sigma(self, quality: float) -> np.ndarray:
        """One-sigma error of a correlation peak's shift per axis: for two frames of the
        same content with white noise of equal variance in each, the peak's normalized
        correlation is ``rho = S / (S + noise)`` and its curvature along an axis
        ``kappa = G / (S + noise)`` (``G`` the mean squared gradient), so the least-squares
        variance ``2 noise / (n G)`` reads ``2 (1 - rho) / (n kappa)``; plus the grid's
        quantization, ``1 / (12 u^2)``. ``kappa`` and ``n`` come from the reference."""
        kappa, n = self._curvature
        u = float(self._upsample)
        with np.errstate(divide="ignore", invalid="ignore"):
            var = 2.0 * max(1.0 - quality, 0.0) / (n * kappa) + 1.0 / (12.0 * u * u)
        return np.where(np.isfinite(var) & (quality > 0), np.sqrt(var), np.nan)

    def _refined(self, frame, shift):
        """The peak's shift refined continuously and its one-sigma error; the peak
        itself (and None) when the refinement fails (too few pixels, no convergence),
        leaves the peak's pixel or the ``max_shift`` box. The peak is the vertex of the
        whole-pixel peak's parabola (the fine grid would be spent work: the refinement
        moves on from either to the same fixed point, within its tolerance)."""
        res = self._refiner.run(frame, -shift)
        refined = -res.params
        inside = self._max_shift is None or np.all(np.abs(refined) <= np.asarray(self._max_shift))
        if not (res.converged and inside and np.all(np.abs(refined - shift) <= 1.0)):
            return shift, None
        # far below any noise; the reference frame itself reads 0, not 1e-16
        return np.round(refined, 10) + 0.0, res.sigma

    def _register_model(self, frame) -> FrameRecord:
        transform, quality, sigma = self._models.register_with_sigma(frame)
        transform = np.round(transform, 12) + 0.0  # the reference frame itself: the identity
        ndim = len(self.shape)
        c = frame_centre(self.shape)
        shift = transform[:ndim, :ndim] @ c + transform[:ndim, ndim] - c
        window = None
        if self.xcorr_radius is not None:
            window = self._models.xcorr_window(frame, transform, self.xcorr_radius)
        return FrameRecord(shift, float(quality), shift.copy(), window, transform, sigma=sigma)

    def register_batch(self, frames) -> list[FrameRecord]:
        """Register a batch of frames at once (a sequence of frames, or one array
        with frames along its first axis), in this registrar's namespace: the
        checks, the transforms and the whole-pixel search run on the whole batch
        (masked registration; with numpy, one frame after the other)."""
        if not (self.backend.batches and self.masked):
            return [self.register(f) for f in frames]
        xp = self.xp
        if isinstance(frames, (list, tuple)):
            on_device = all(is_foreign_array(f) for f in frames)
            frames = xp.stack(list(frames)) if on_device else np.stack([to_host(f) for f in frames])
        batch = to_namespace(xp, frames, getattr(xp, np.dtype(self.dtype).name))
        if tuple(batch.shape[1:]) != self.shape:
            raise ValueError(f"a frame has shape {tuple(batch.shape[1:])}, expected {self.shape}")
        valid = self._valid_x
        axes = tuple(range(1, batch.ndim))
        finite = xp.isfinite(batch)
        if not bool(xp.all(finite)):
            if not bool(xp.all(xp.logical_or(finite, xp.logical_not(valid)))):
                raise ValueError(
                    "a frame has NaN or inf pixels outside the mask: paint them into the mask"
                )
            batch = xp.where(valid, batch, xp.zeros_like(batch))
        inf = xp.asarray(xp.inf, dtype=batch.dtype)
        hi = xp.max(xp.where(valid, batch, -inf), axis=axes)
        lo = xp.min(xp.where(valid, batch, inf), axis=axes)
        usable = np.flatnonzero(to_host(hi > lo))
        records = [self._empty() for _ in range(int(batch.shape[0]))]
        if usable.size:
            if usable.size < len(records):
                batch = xp.take(batch, xp.asarray(usable), axis=0)
            peaks = self._corr.register_batch(batch, xcorr_radius=self.xcorr_radius,
                                              **self._peak_kw)
            for k, (i, peak) in enumerate(zip(usable, peaks)):
                frame = batch[k, ...] if self._refiner is not None else None
                records[int(i)] = self._record(peak, frame)
        return records
