"""Correlators: everything that depends only on the reference is computed once.

:class:`PhaseCorrelator` (here)
    Phase (or plain) cross-correlation of real images with ``rfftn``,
    upsampled with the half-spectrum matrix-multiply DFT.
:class:`~._masked.MaskedCorrelator`
    Padfield's masked normalized cross-correlation (2012), subpixel.

Both give shifts in scikit-image's convention (the shift that registers the
moving image onto the reference) as a :class:`CorrelationPeak`, and trust
their input: the public entry points check it first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._fft import (
    default_workers,
    half_spectrum_weights,
    irfftn,
    real_dtype_for,
    rfftn,
    upsampled_real,
)
from ._grid import outer_and

__all__ = ["CorrelationPeak", "PhaseCorrelator", "argmax_abs", "inside_box", "refine_two_stage"]


@dataclass
class CorrelationPeak:
    """One registration: shift, quality in [0, 1] and optional preview window."""

    shift: np.ndarray
    quality: float
    peak_value: complex | float = 0.0
    xcorr: np.ndarray | None = None
    # spectral energies of reference and moving image (unmasked correlation
    # only): scikit-image's error metric is computed from them
    ref_energy: float = 0.0
    mov_energy: float = 0.0
    # one-sigma error per axis of ``shift`` when the correlator measured it (the
    # Newton step of an unmasked correlation), else None
    sigma: np.ndarray | None = None
    # the highest separate whole-pixel peak away from this one (masked correlation):
    # its normalized value (-inf: none) and shift; a periodic pattern (a crystal's
    # lattice of Bragg spots) has one a lattice vector away, nearly as high
    runner_up: float = -np.inf
    runner_up_shift: np.ndarray | None = None
    # a peak taken off the whole-pixel grid cheaply (masked correlation, ``fine=False``):
    # called, the ``(shift, quality)`` of the ``1/upsample_factor`` grid's peak, and the
    # normalized correlation at a given shift
    fine: Callable[[], tuple[np.ndarray, float]] | None = None
    quality_at: Callable[[np.ndarray], float] | None = None


def window_around(surface: np.ndarray, radius: int) -> np.ndarray:
    """Window of a circular correlation surface, zero shift at its centre."""
    idx = np.ix_(*[np.arange(-radius, radius + 1) % n for n in surface.shape])
    return np.ascontiguousarray(surface[idx], dtype=np.float32)


def argmax_abs(x: np.ndarray) -> int:
    """``np.argmax(np.abs(x))`` of a real array, without its ``|x|`` temporary (a
    pass and a fresh array the size of the correlation): the first index of the
    largest or of the smallest value, whichever is larger in magnitude, the first of
    both when they tie (or are NaN, where both are the first NaN)."""
    hi, lo = int(np.argmax(x)), int(np.argmin(x))
    top, bottom = x.flat[hi], -x.flat[lo]
    if top > bottom:
        return hi
    if bottom > top:
        return lo
    return min(hi, lo)


def refine_two_stage(on_grid, d0, upsample_factor):
    """Find a peak to ``1/upsample_factor`` pixel around the whole-pixel ``d0``.

    ``on_grid(starts, region, u)`` samples the surface on ``region`` points per
    axis spaced ``1/u`` from ``starts`` and returns (position, value) of its
    maximum. First a 1/4 px grid over +-0.75 px (scikit-image's 1.5 px
    window), then the ``1/upsample_factor`` grid over the best coarse cell:
    the answer of one fine grid at about half the matrix-multiply work.
    """
    u = float(upsample_factor)
    d0 = np.asarray(d0, dtype=float)
    u1 = min(u, 4.0)
    region1 = int(np.ceil(1.5 * u1))
    d1, v1 = on_grid(d0 - np.trunc(region1 / 2.0) / u1, region1, u1)
    if u1 == u:
        return d1, v1
    half = int(np.ceil(u / u1))
    # keep the fine grid on multiples of 1/u (as scikit-image's): a 1/4 px
    # coarse peak is off that grid whenever 4 does not divide u (5, 10, 50...)
    d1 = np.round(np.asarray(d1) * u) / u
    return on_grid(d1 - half / u, 2 * half + 1, u)


class PhaseCorrelator:
    """Unmasked cross-correlation of real images against a fixed reference.

    Parameters
    ----------
    reference : ndarray
        Real reference image (any dimensionality).
    normalization : {"phase", None}
        ``"phase"`` whitens the cross-power spectrum (scikit-image's default);
        ``None`` keeps the plain cross-correlation, better for smooth images
        such as diffraction patterns.
    upsample_factor : float
        Shifts are refined to ``1/upsample_factor`` pixel.
    zero_mean : bool
        Drop the DC term (correlate mean-subtracted images). The stack engine
        uses this so the quality is a correlation coefficient; the scikit-image
        compatible function does not.
    max_shift : float, optional
        Only peaks with ``|shift| <= max_shift`` along every axis are accepted.
    workers : int, optional
        Threads for scipy.fft.
    """

    def __init__(
        self,
        reference,
        *,
        normalization="phase",
        upsample_factor=1,
        zero_mean=False,
        max_shift=None,
        workers=None,
        newton=False,
    ):
        if normalization not in ("phase", None):
            raise ValueError("normalization must be either phase or None")
        ref = np.asarray(reference)
        self.dtype = real_dtype_for(ref)
        self.shape = ref.shape
        self.normalization = normalization
        self.upsample_factor = float(upsample_factor)
        self.zero_mean = zero_mean
        self.max_shift = max_shift
        self.workers = default_workers(workers)
        #: end with a Newton step on the cross-power spectrum (see :meth:`newton_step`)
        self.newton = bool(newton)
        #: ``(K, P)`` of :func:`~napari_maskalign.engine.models._refine.noise_spread`:
        #: where the noise is, for the Newton step's error (None: white noise)
        self.noise_terms = None
        self._w = half_spectrum_weights(self.shape[-1], self.dtype)
        self._ks = None  # the Newton step's angular frequencies, made on first use
        self.set_reference(ref)
        self._allowed = None
        if max_shift is not None:
            self._allowed = self._shift_box(max_shift)

    def set_reference(self, reference) -> None:
        """Swap in a new reference image of the same shape."""
        ref = np.asarray(reference)
        if ref.shape != self.shape:
            raise ValueError(f"reference has shape {ref.shape}, expected {self.shape}")
        self._ref_f = rfftn(ref.astype(self.dtype, copy=False), self.shape, self.workers)
        if self.zero_mean:
            self._ref_f.flat[0] = 0
        self.ref_energy = self._energy(self._ref_f)

    def _energy(self, spec: np.ndarray) -> float:
        """Sum of |F|^2 over the full spectrum, from the half spectrum."""
        return float(np.sum((spec.real**2 + spec.imag**2) * self._w, dtype=np.float64))

    def _shift_box(self, max_shift):
        ms = np.broadcast_to(np.asarray(max_shift, dtype=float), (len(self.shape),))
        return outer_and([np.abs(np.fft.fftfreq(n) * n) <= m for n, m in zip(self.shape, ms)])

    def register(self, moving, *, xcorr_radius=None, moving_spectrum=None) -> CorrelationPeak:
        """Register ``moving`` onto the reference."""
        shape = self.shape
        if moving_spectrum is None:
            mov = np.asarray(moving).astype(self.dtype, copy=False)
            mov_f = rfftn(mov, shape, self.workers)
            # Parseval: the spectrum's energy from one pass over the image
            # (the stack engine, zero_mean, only needs it for the quality score:
            # float32 BLAS is plenty; the drop-in's error metric keeps float64)
            flat = mov.ravel() if self.zero_mean else mov.ravel().astype(np.float64)
            mov_energy = float(np.dot(flat, flat))
            if self.zero_mean:  # the frame's sum is the spectrum's DC bin
                mov_energy -= float(mov_f.flat[0].real) ** 2 / flat.size
            mov_energy *= flat.size
        else:
            mov_f = moving_spectrum
            mov_energy = None
        if self.zero_mean:
            mov_f.flat[0] = 0
        if mov_energy is None:
            mov_energy = self._energy(mov_f)
        if moving_spectrum is None:  # our own temporary: conjugate in place
            raw = np.multiply(self._ref_f, np.conjugate(mov_f, out=mov_f), out=mov_f)
        else:
            raw = self._ref_f * mov_f.conj()
        if self.normalization == "phase":
            eps = np.finfo(raw.real.dtype).eps
            mag = np.abs(raw)
            np.maximum(mag, 100 * eps, out=mag)
            product = np.divide(raw, mag, out=np.empty_like(raw))
        else:
            product = raw
        cc = irfftn(product, shape, self.workers)
        if self._allowed is not None:
            at = int(np.argmax(np.where(self._allowed, np.abs(cc), -1.0)))
        else:
            at = argmax_abs(cc)
        maxima = np.unravel_index(at, shape)
        shift = np.array(maxima, dtype=np.float64)
        midpoints = np.array([np.fix(n / 2) for n in shape])
        shift[shift > midpoints] -= np.array(shape)[shift > midpoints]
        size = float(np.prod(shape))
        peak = float(cc[maxima]) * size  # unnormalized, like scikit-image's upsampled peak
        if self.upsample_factor > 1:

            def on_grid(starts, region, u):
                fine = upsampled_real((product,), shape, starts, region, u, separable=True)[0]
                search = np.abs(fine)
                box = inside_box(starts, region, u, self.max_shift)
                if box is not None:  # the refinement must not leave the max_shift box
                    search = np.where(box, search, -1.0)
                at = np.unravel_index(int(np.argmax(search)), fine.shape)
                return starts + np.array(at, dtype=np.float64) / u, float(fine[at])

            shift, value = refine_two_stage(on_grid, shift, self.upsample_factor)
            peak = value * size
        sigma = None
        if self.newton:
            shift, sigma = self.newton_step(raw, shift, mov_energy)
        for ax, n in enumerate(shape):
            if n == 1:
                shift[ax] = 0.0
        # quality: plain normalized correlation at the found shift
        amp = self.ref_energy * mov_energy
        if self.normalization is None:
            raw_peak = peak
        else:
            raw_peak = self._evaluate(raw, shift) * size
        quality = float(np.clip(raw_peak / np.sqrt(amp), 0.0, 1.0)) if amp > 0 else 0.0
        window = None
        if xcorr_radius is not None:
            surface = cc / np.sqrt(amp) * size if (amp > 0 and self.normalization is None) else cc
            window = window_around(surface, xcorr_radius)
        return CorrelationPeak(
            shift=shift,
            quality=quality,
            peak_value=peak,
            xcorr=window,
            ref_energy=self.ref_energy,
            mov_energy=mov_energy,
            sigma=sigma,
        )

    def newton_step(self, raw, shift, mov_energy):
        """The continuous maximum of the (unwhitened) cross-correlation near ``shift``
        and its one-sigma error per axis: one Newton step on the cross-power spectrum
        ``raw`` (no transform: its value, gradient and curvature at ``shift`` are
        weighted sums over the spectrum).

        The maximum of ``C(s) = sum m(q) r(q - s)`` is the least-squares shift of two
        frames (with a gain); its covariance is the residual noise per pixel
        ``(E_m - C^2 / E_r) / N`` over ``gain * (-C'') / N``. The curvature is that of
        the cross term, so the noise of either frame does not inflate it. Returns the
        grid's ``shift`` and None when the surface does not curve down there; when the
        step would leave its cell, the grid's ``shift`` and an error that reaches at
        least as far as the step.
        """
        shape, ndim = self.shape, len(self.shape)
        ks = self._angular_freqs()
        # the phase is separable: each axis is contracted in turn with its phase times
        # 1, k and k^2, the last (half) axis first, by one matrix product that also
        # carries the half-spectrum weights; what is left is ``moments[a_last, ..., a_0]``,
        # the sum of raw * phase * w * k_last^a_last * ... * k_0^a_0 (powers up to 2).
        # The sums stay in double precision: complex64 products (no 2 MB cast of the
        # spectrum) moved 512 x 512 steps by up to 8e-7 px and the error bars at 2000
        # counts by 7e-4 (the gradient is a sum that cancels nearly to zero)
        k = ks[-1]
        e = np.exp(1j * k * shift[-1]) * self._w
        kernel = np.stack([e, e * k, e * k * k], axis=1)
        moments = (raw.reshape(-1, raw.shape[-1]) @ kernel).reshape(*raw.shape[:-1], 3)
        for ax in range(ndim - 2, -1, -1):
            k = ks[ax]
            p = np.exp(1j * k * shift[ax])
            powers = np.stack([p, p * k, p * k * k], axis=1)
            if moments.ndim == 2:  # a 2D spectrum's rows: one small product
                moments = moments.T @ powers
            else:  # contracting axis ``ax`` appends its three powers as the last axis
                moments = np.tensordot(moments, powers, axes=([ax], [0]))

        def term(*axes):
            """The sum of raw * phase * w times the product of k over ``axes``."""
            powers = [0] * ndim
            for ax in axes:
                powers[ax] += 1
            return complex(moments[tuple(reversed(powers))])

        value = term().real
        grad = np.array([-term(ax).imag for ax in range(ndim)])
        hess = np.empty((ndim, ndim))
        for a in range(ndim):
            for b in range(a, ndim):
                hess[a, b] = hess[b, a] = -term(a, b).real
        try:
            curv = np.linalg.inv(-hess)
        except np.linalg.LinAlgError:
            return shift, None
        step = curv @ grad  # -hess^-1 grad
        cell = 1.0 / max(self.upsample_factor, 1.0)
        if not (np.all(np.isfinite(step)) and np.all(np.linalg.eigvalsh(-hess) > 0)
                and value > 0 and self.ref_energy > 0):
            return shift, None
        n = float(math.prod(shape))
        gain = value / self.ref_energy
        residual = max(mov_energy - value * value / self.ref_energy, 0.0) / n  # sum of e^2
        if self.noise_terms is None:  # white noise: the residual's mean power everywhere
            cov = residual / n * n / gain * curv
        else:
            # a sandwich: the noise where the gradient is (Poisson counts are noisiest
            # on the bright rings) from the reference's noise model, scaled to this
            # frame's residual
            spread, power = self.noise_terms
            inv = curv * n / gain  # (gain * -C'' / N)^-1
            cov = residual / power * inv @ spread @ inv
        sigma = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        if np.all(np.abs(step) <= cell):
            return shift + step, sigma
        # the plain correlation's maximum is further than the grid's cell from the peak:
        # a whitened ("phase") peak on content whose noise fills most of the spectrum
        # (0.2-1.7 px apart at 200 counts, 512 px, where either peak claimed 0.015 px),
        # or a surface that is no paraboloid there. The peak stays (the user's choice of
        # correlation), and its error bar reaches at least as far as that disagreement
        return shift, np.maximum(sigma, np.abs(step))

    def _angular_freqs(self) -> list[np.ndarray]:
        """``2 pi`` times the frequencies of each axis of the half spectrum (cached)."""
        if getattr(self, "_ks", None) is None:
            shape = self.shape
            freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
            self._ks = [2 * np.pi * f for f in freqs]
        return self._ks

    def _evaluate(self, spectrum: np.ndarray, shift: np.ndarray) -> float:
        """The real inverse transform of ``spectrum`` at one (fractional) position."""
        return float(upsampled_real(spectrum[None], self.shape, np.asarray(shift), 1, 1.0).ravel()[0])


def inside_box(starts, region, u, max_shift, offset=0.0):
    """Points of a fine grid (``region`` per axis from ``starts``, step ``1/u``)
    whose shift (grid position + ``offset``) is within ``max_shift`` on every
    axis; None when there is no bound."""
    if max_shift is None:
        return None
    nd = len(starts)
    ms = np.broadcast_to(np.asarray(max_shift, dtype=float), (nd,))
    off = np.broadcast_to(np.asarray(offset, dtype=float), (nd,))
    steps = np.arange(region) / float(u)
    return outer_and(
        [np.abs(s + steps + o) <= m + 1e-9 for s, o, m in zip(np.asarray(starts, float), off, ms)]
    )
