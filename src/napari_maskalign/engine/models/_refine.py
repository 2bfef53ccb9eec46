"""Continuous refinement: Gauss-Newton on the valid pixels, after the correlation peak.

A cross-correlation peak on a ``1/u`` grid is quantized and, as an estimator,
sits 1.4-5x above the Cramer-Rao bound on our stacks. :class:`Refiner` takes
it (or the coarse rotation and scale of :mod:`._logpolar`) as the starting
point and solves for the transform that makes the moving frame, sampled on
the reference's pixels, equal ``gain * reference + offset`` in the weighted
least-squares sense. What makes it reach the bound (measured with
``benchmarks/bench_accuracy.py``):

* **a clean Jacobian.** Least squares is unbiased with any fixed weighting
  of the residuals, but efficient only when that weighting is the true
  image's gradient over the noise variance. The gradient of a noisy
  reference adds its noise to every pixel's weight (at 20 counts per pixel
  this alone cost a factor 2-3 over the bound); a Wiener filter (radially
  averaged spectrum of the reference, noise power from its highest
  frequencies) estimates the true gradient instead.
* **weights from a noise model, not from noisy pixels.** The residual's
  variance is fitted per frame as ``alpha * level + beta`` over bins of the
  smoothed reference level: Poisson counts (any gain), Gaussian noise
  (``alpha = 0``) and both at once, the noise of both frames included.
  Weighting by the noisy intensities themselves biases the estimate.
* **spline sampling of the moving frame** (cubic, prefiltered once per
  frame, masked pixels first filled from their nearest valid neighbour so
  the block's edge does not ring), on the reference pixels that are valid
  and at least ``margin`` pixels from an invalid moving pixel and from the
  frame's edge, with a gain and an offset.

The transform is parametrised as the warp ``W(q) = c + A (q - c) + u`` that
takes a reference pixel ``q`` to where the moving frame holds its content
(``c`` the frame's centre): ``u`` alone for translation, ``A`` a rotation for
rigid, a rotation times a scale for similarity.

References
----------
Baker S, Matthews I. "Lucas-Kanade 20 years on: a unifying framework."
International Journal of Computer Vision 56(3):221-255 (2004).
https://doi.org/10.1023/B:VISI.0000011205.11775.fd (the Gauss-Newton
refinement of a warp, "forwards additive").
Unser M. "Splines: a perfect fit for signal and image processing." IEEE
Signal Processing Magazine 16(6):22-38 (1999). https://doi.org/10.1109/79.799930 (the
cubic spline sampling).
Knutsson H, Westin C-F. "Normalized and differential convolution." Proc.
IEEE Conference on Computer Vision and Pattern Recognition, 515-523 (1993).
https://doi.org/10.1109/CVPR.1993.341081
(the smooth fill of masked pixels before the Wiener estimate).
Robinson D, Milanfar P. "Fundamental performance limits in image
registration." IEEE Transactions on Image Processing 13(9):1185-1199 (2004).
https://doi.org/10.1109/TIP.2004.832923 (the bound the
refinement is measured against).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from ._fill import filled, nearest_fill_index

if TYPE_CHECKING:  # pragma: no cover
    from ._base import Model

__all__ = ["Refiner"]

_BINS = 16

#: ``select`` keeps at least this many pixels (small frames keep them all)
MIN_POINTS = 4000


def _smooth_fill(image, valid, sigma: float = 4.0) -> np.ndarray:
    """Invalid pixels replaced by the Gaussian-weighted mean of the valid ones nearby
    (normalized convolution; the mean of all valid pixels where none is near)."""
    if valid.all():
        return image
    w = ndi.gaussian_filter(valid.astype(np.float64), sigma)
    num = ndi.gaussian_filter(np.where(valid, image, 0.0), sigma)
    smooth = np.where(w > 1e-3, num / np.maximum(w, 1e-3), float(np.mean(image[valid])))
    return np.where(valid, image, smooth)


def wiener_estimate(image, valid=None):
    """The noiseless image and its gradient, estimated from one noisy image.

    A Wiener filter: the radially averaged power spectrum against the noise
    power, measured where the spectrum is highest in every axis (white noise
    reaches there, smooth content does not). Masked pixels are filled
    smoothly and the frame mirrored at its edges first, so neither the block
    nor the wrap-around rings into the estimate. Returns ``(level, gradient)``
    with ``gradient`` of shape ``(ndim, *shape)``, and the noise variance.
    """
    image = np.asarray(image, dtype=np.float64)
    if valid is not None:
        image = _smooth_fill(image, np.asarray(valid, bool))
    shape, ndim = image.shape, image.ndim
    pad = [min(16, n // 4) for n in shape]
    big = np.pad(image, [(p, p) for p in pad], mode="reflect")
    spec = sfft.rfftn(big)
    freqs = [sfft.fftfreq(n) for n in big.shape[:-1]] + [sfft.rfftfreq(big.shape[-1])]
    k = np.meshgrid(*[2 * np.pi * f for f in freqs], indexing="ij", sparse=True)
    kr = np.sqrt(sum(kk * kk for kk in k)) / np.pi  # 0..sqrt(ndim)
    power = (spec.real**2 + spec.imag**2) / big.size
    corner = np.ones(spec.shape, bool)
    for kk in k:
        corner &= np.abs(kk) > 0.7 * np.pi
    noise = float(np.mean(power[corner])) if corner.any() else 0.0
    bins = np.minimum((kr * 64).astype(int), int(64 * np.sqrt(ndim)) + 1)
    counts = np.bincount(bins.ravel())
    radial = np.bincount(bins.ravel(), power.ravel()) / np.maximum(counts, 1)
    gain = np.clip(1.0 - noise / np.maximum(radial, 1e-300), 0.0, 1.0)[bins]
    spec *= gain
    inner = tuple(slice(p, p + n) for p, n in zip(pad, shape))
    level = sfft.irfftn(spec, big.shape)[inner]
    grad = np.stack([sfft.irfftn(1j * kk * spec, big.shape)[inner] for kk in k])
    return level, grad, noise


class RefineResult:
    """The outcome of one refinement: warp ``params``, ``gain``, ``offset``, the
    correlation ``quality`` over the pixels used, ``iterations``, ``converged`` and the
    fitted ``noise`` model ``(alpha, beta)`` (None when not weighted)."""

    __slots__ = ("converged", "gain", "iterations", "noise", "offset", "params", "points",
                 "quality")

    def __init__(self, params, quality, gain, offset, iterations, converged, points, noise=None):
        self.params, self.quality, self.gain, self.offset = params, quality, gain, offset
        self.iterations, self.converged, self.points = iterations, converged, points
        self.noise = noise


class Refiner:
    """Gauss-Newton refinement of one frame's transform against one reference.

    Everything that depends only on the reference and the masks (the Wiener
    estimate of the reference's gradient, the pixels used, the noise bins,
    the moving frame's distance to its mask) is computed here, once.

    Parameters
    ----------
    reference : ndarray
        The reference image (2D or 3D; rigid and similarity need 2D).
    ref_valid, mov_valid : ndarray of bool, optional
        Valid pixels of the reference and of the moving frames (True =
        valid); all by default, ``mov_valid`` defaults to ``ref_valid``.
    model : Model
        The motion model (its warp, Jacobian and transform); one of
        :data:`~napari_maskalign.engine.models.MODELS`.
    select : float, optional
        Use only this fraction of the reference's valid pixels (at least
        ``MIN_POINTS`` of them), those with the strongest gradient: they carry
        the information. All by default.
    margin : int
        Pixels this close to an invalid pixel or the frame's edge are not used.
    centre : array, optional
        The point the rotation and scale turn about, in this image's pixels
        (default: its centre; a reduced level passes the full frame's centre).
    """

    def __init__(self, reference, ref_valid, mov_valid, model: Model, *,
                 select=None, margin=3, max_iter=12, tol=1e-4, centre=None):
        ref = np.asarray(reference, dtype=np.float64)
        self.shape, self.ndim, self.model = ref.shape, ref.ndim, model
        if ref.ndim not in model.frame_ndims:
            raise ValueError(
                f"the {model.name} model is for {model.frames_text} frames; these are {ref.ndim}D")
        ref_valid = np.ones(ref.shape, bool) if ref_valid is None else np.asarray(ref_valid, bool)
        mov_valid = ref_valid if mov_valid is None else np.asarray(mov_valid, bool)
        self.margin, self.max_iter, self.tol = margin, max_iter, tol
        if centre is None:
            centre = (np.asarray(ref.shape, dtype=float) - 1.0) / 2.0
        self.centre = np.asarray(centre, dtype=float)
        level, grad, self.noise = wiener_estimate(ref, ref_valid)
        use = ndi.binary_erosion(ref_valid, iterations=margin, border_value=0) if margin else ref_valid
        q = np.nonzero(use)
        g = np.stack([gr[q] for gr in grad])
        if select is not None and 0 < select < 1 and q[0].size > MIN_POINTS:
            keep = max(MIN_POINTS, int(select * q[0].size))
            best = np.argpartition(-np.sum(g * g, axis=0), keep - 1)[:keep]
            best.sort()
            q, g = tuple(a[best] for a in q), g[:, best]
        self.g = g
        self.d = np.stack(q).astype(np.float64) - self.centre[:, None]
        self.r = ref[q]
        self.level = level[q]
        self.n_points = self.r.size
        self.rmax = float(np.sqrt(np.max(np.sum(self.d**2, axis=0)))) if self.n_points else 0.0
        # noise-model bins: quantiles of the smoothed reference level
        order = np.argsort(self.level, kind="stable")
        self.bins = np.empty(self.n_points, np.intp)
        for b, chunk in enumerate(np.array_split(order, _BINS)):
            self.bins[chunk] = b
        self.bin_level = np.bincount(self.bins, self.level, _BINS) / np.maximum(
            np.bincount(self.bins, minlength=_BINS), 1)
        inside = np.pad(mov_valid, 1, constant_values=False)
        self.dist = ndi.distance_transform_edt(inside)[(slice(1, -1),) * self.ndim].astype(np.float32)
        self.fill = nearest_fill_index(mov_valid)

    @property
    def n_params(self) -> int:
        return self.model.n_params(self.ndim)

    def prepare(self, frame) -> np.ndarray:
        """The frame's cubic spline coefficients (masked pixels filled first)."""
        return ndi.spline_filter(filled(frame, self.fill), order=3, mode="mirror")

    def _warp(self, params):
        """Sample positions ``W(q)`` ``(ndim, K)`` and the Jacobian's geometric columns
        ``(K, n_params)``."""
        if self.model.shift_only:
            return self.d + (self.centre + params)[:, None], self.g.T
        lin = self.model.warp_matrix(params)
        pos = lin @ self.d + (self.centre + params[:2])[:, None]
        grad = np.linalg.inv(lin).T @ self.g  # the moving frame's gradient at W(q)
        cols = np.empty((self.n_points, self.n_params))
        cols[:, :2] = grad.T
        self.model.jacobian(params, grad, self.d, cols)
        return pos, cols

    def _sample(self, coeffs, pos, params) -> np.ndarray:
        """The moving frame's spline at every ``pos`` (meaningless where unusable). A
        shift puts every sample at the same fraction of a pixel, so the cubic weights
        are shared: two 4-tap passes over the frame and a gather, a few times cheaper
        than general sampling."""
        if not self.model.shift_only:
            return ndi.map_coordinates(coeffs, pos, order=3, mode="mirror", prefilter=False)
        whole = np.floor(params)
        out = coeffs
        for ax, frac in enumerate(params - whole):
            out = ndi.correlate1d(out, _cubic_weights(frac), axis=ax, mode="mirror", origin=-1)
        idx = np.rint(self.d + (self.centre + whole)[:, None]).astype(np.intp)
        return out[tuple(np.clip(i, 0, n - 1) for i, n in zip(idx, self.shape))]

    def _usable(self, pos) -> np.ndarray:
        """Points whose sample is at least ``margin`` from the frame's edge and from the
        moving frame's invalid pixels."""
        m = self.margin
        ok = np.ones(pos.shape[1], bool)
        for ax, n in enumerate(self.shape):
            ok &= (pos[ax] >= m) & (pos[ax] <= n - 1 - m)
        idx = tuple(np.clip(np.rint(p).astype(np.intp), 0, n - 1)
                    for p, n in zip(pos, self.shape))
        ok &= self.dist[idx] > m
        return ok

    def _fit_noise(self, e, ok):
        """The noise model ``(alpha, beta)``: the residual's variance as
        ``alpha * level + beta``, fitted over bins of the reference's smoothed level."""
        count = np.bincount(self.bins, ok, _BINS)
        has = count > 0
        var = np.bincount(self.bins, e * e, _BINS)[has] / count[has]
        x = self.bin_level[has]
        if has.sum() >= 2 and np.ptp(x) > 0:
            alpha, beta = np.polyfit(x, var, 1, w=np.sqrt(count[has]))
        else:
            alpha, beta = 0.0, float(np.mean(var))
        if alpha < 0:
            alpha, beta = 0.0, float(np.average(var, weights=count[has]))
        floor = max(float(var.min()) * 0.1, 1e-12 * float(var.max()), 1e-300)
        return float(alpha), float(beta), floor

    def _weights(self, noise, ok):
        """Inverse residual variance of the noise model (0 where unusable)."""
        alpha, beta, floor = noise
        return ok / np.maximum(alpha * self.level + beta, floor)

    def run(self, frame, params, *, coeffs=None, noise=None) -> RefineResult:
        """Refine ``params`` (the warp, see :class:`~._base.Model`) for ``frame``;
        ``noise``: a noise model to weight by from the first step (else the first step
        is unweighted and its residuals give the model)."""
        params = np.array(params, dtype=np.float64)
        if coeffs is None:
            coeffs = self.prepare(frame)
        gain, offset, m, used = 1.0, 0.0, None, None
        converged, weighted, it = False, False, 0
        k = self.n_params
        need = 8 * (k + 2)
        # the gain's column is the smoothed reference, not the noisy one: regressing on
        # noisy values dilutes the gain towards 0 (errors in variables); the clean
        # column is an instrument whose equation is unbiased
        jac = np.empty((self.n_points, k + 2))
        jac[:, k] = -self.level
        jac[:, k + 1] = -1.0
        for it in range(1, self.max_iter + 1):
            pos, jgeo = self._warp(params)
            ok = self._usable(pos)
            if ok.sum() < need:
                break
            m, used = self._sample(coeffs, pos, params), ok
            e = np.where(ok, m - gain * self.r - offset, 0.0)
            jac[:, :k] = jgeo
            # unusable points take part with weight 0 (cheaper than cutting them out)
            if it > 1:
                noise = self._fit_noise(e, ok)
            weighted = noise is not None
            w = self._weights(noise, ok) if weighted else ok.astype(np.float64)
            jw = jac * w[:, None]
            try:
                step = -np.linalg.solve(jw.T @ jac, jw.T @ e)
            except np.linalg.LinAlgError:
                break
            if not np.all(np.isfinite(step)):
                break
            params += step[:k]
            gain += step[k]
            offset += step[k + 1]
            moved = self.model.step_size(step[:k], self.rmax)
            if moved < self.tol and weighted:
                converged = True
                break
        quality = 0.0 if m is None else _pearson(m[used], self.r[used])
        return RefineResult(params, quality, gain, offset, it, converged, int(self.n_points),
                            noise)


def _cubic_weights(t: float) -> np.ndarray:
    """Cubic B-spline weights of the coefficients at offsets -1, 0, 1, 2 for a sample
    ``t`` (in [0, 1)) of a pixel past the middle one."""
    t2, t3 = t * t, t * t * t
    return np.array([(1 - t) ** 3, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3]) / 6.0


def _pearson(a, b) -> float:
    """Correlation coefficient of two samples, clipped to [0, 1] (no BLAS: cheap and
    free of thread contention)."""
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.clip(np.sum(a * b) / den, 0.0, 1.0)) if den > 0 else 0.0
