"""Non-rigid registration under a static mask: patches, a B-spline, masked Gauss-Newton.

Per frame, against one reference (frame, image or mean), with the same static
mask on both (True = valid):

1. the global masked translation (:class:`~._registrar.FrameRegistrar`): the
   frame's ``shift`` and the fallback;
2. masked normalized cross-correlation of patches (Padfield's six
   correlations per patch, batched real FFTs): every reference-side spectrum
   is computed once per stack, because the block does not move;
3. a cubic B-spline (:mod:`._bspline`) fitted to the patch shifts, weighted by
   their quality, under a prior around the global shift whose size and
   correlation come from the patches themselves (kriging with their
   correlogram; a Matern field when too few matched): featureless areas follow
   what the measured field does at that distance instead of carrying the
   nearest measurement on;
4. Gauss-Newton on the spline coefficients of the masked sum of squared
   differences between the reference and the warped frame, with a gain and an
   offset, on Anscombe-transformed counts, over pixels valid in the reference
   and where they land in the frame: on a coarse grid (64 px), then a fine one
   (32 px) pulled toward the coarse answer, both under the same prior. The
   Jacobian is the reference's gradient (fixed per stack), so the normal
   matrix is computed once per stack (its Cholesky factor once per prior
   size) and each iteration costs one warp and two small matrix products per
   component;
5. the frame's field is kept only where it fits the data better than the
   global translation; otherwise the frame falls back to the translation and
   is flagged.

The field follows scikit-image's optical-flow convention: ``v`` (2, H, W) in
(row, col) on the reference grid, the aligned frame is ``moving(x + v(x))``; a
pure shift ``s`` (scikit-image's registration shift) is ``v = -s``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi
from scipy.linalg import cho_factor, cho_solve

from ..kernels._bspline import SplineGrid
from ..kernels._grid import parabola_vertex

__all__ = ["NonrigidRecord", "NonrigidRegistrar", "NonrigidSettings", "anscombe"]

#: a patch's shift error (px): ``hypot(_PATCH_SD, _PATCH_SD_Q / quality)``; the first
#: part because the shift of a 64 px patch averages the field over it (about 0.5 px at
#: 2 px of field with a wavelength of 170 px), the second the noise (measured on the
#: camera image's faint sky: about 1 px at peak correlations of 0.1-0.2)
_PATCH_SD, _PATCH_SD_Q = 0.5, 0.1
#: patches whose peak correlation is at most this are not used (measured: errors of
#: several px below it)
_MIN_QUALITY = 0.1
#: the prior's standard deviation per component, relative to the RMS deviation of
#: the good patches' shifts from the global shift (those average the field over
#: their area, so they understate it), and its bounds in px
_PRIOR_SD_FROM_PATCHES, _PRIOR_SD_RANGE = 1.2, (0.25, 5.0)
#: the correlogram prior is tapered by a Gaussian of this many patch strides (measured
#: at 512 px: 4 strides 0.62 / 0.81 px, 6: 0.58 / 0.74, 8: 0.57 / 0.69, none: 0.65 /
#: 0.62 on the sample pattern / camera image with a 2 px field)
_TAPER_LAGS = 8.0
#: a correlogram needs this many matched patches, and a lag this many pairs (the
#: geostatistician's rule of thumb, Journel & Huijbregts 1978); else the Matern prior
_GRAM_MIN_PATCHES, _GRAM_MIN_PAIRS = 30, 30


def anscombe(x) -> np.ndarray:
    """Anscombe's variance-stabilizing transform of counts: ``2 sqrt(x + 3/8)``
    (Poisson noise becomes unit variance); negative values are clipped."""
    return 2.0 * np.sqrt(np.maximum(np.asarray(x, np.float64), 0.0) + 0.375)


@dataclass(frozen=True)
class NonrigidSettings:
    """The non-rigid model's settings (defaults measured on 512 px frames).

    grid_spacing : the fine control grid's spacing in pixels (the coarse one is
        twice that); smaller follows sharper deformations, needs more texture.
    patch_size, patch_stride : the patches whose shifts start the fit.
    search_radius : how far (px) a patch may move beyond the global shift.
    prior_length, prior_sd : the prior on the field beyond the global shift, with
        ``prior_sd`` px per component (None: 1.2 times the RMS deviation of the
        matched patches from the global shift). ``prior_length`` None: correlated
        as the matched patches' correlogram says (kriging; with 30 patches or
        more), else a Matern field (:meth:`SplineGrid.matern_precision`) whose
        correlation falls to about 0.1 over ``prior_length`` px (None: the lag
        where the patches' correlation does). Where the data say nothing the
        prior decides the field: it does what the measured field does at that
        distance instead of carrying the last measured value on across a
        featureless area.
    membrane : an extra membrane penalty on neighbouring coefficients, ``1 / sd**2``
        with ``sd`` in px per grid step (``absolute``; else relative to the mean
        data weight).
    pull : the fine level's pull toward the coarse answer, ``1 / sd**2`` (the coarse
        level pulls toward the patch fit a tenth as hard).
    iterations, tolerance : Gauss-Newton steps per level at most; stop when no
        coefficient moves by more than ``tolerance`` px.
    select : the share of valid pixels used (those with the strongest reference
        gradient: nearly all the information, a third of the work).
    gradient_sigma, wiener : the Jacobian is the gradient of the reference smoothed
        by a Gaussian of ``gradient_sigma`` px, shrunk where the reference's own
        noise explains it (a Wiener Jacobian).

    Measured at 512 px, Poisson 100 counts (``benchmarks/bench_nonrigid.py``, same
    stacks): a membrane prior 0.86 / 1.18 px RMS over all valid pixels (sample
    pattern / camera image, 2 px field), the Matern prior 0.74 / 0.98, kriging
    with the patches' correlogram 0.56 / 0.70, with the correlogram again from
    the fitted field and a second fit 0.46 / 0.59.
    """

    grid_spacing: float = 32.0
    patch_size: int = 64
    patch_stride: int = 48
    search_radius: int = 8
    membrane: float = 0.0
    pull: float = 5.0
    iterations: int = 8
    tolerance: float = 0.01
    select: float = 0.35
    gradient_sigma: float = 1.0
    wiener: bool = True
    absolute: bool = True
    prior_length: float | None = None
    prior_sd: float | None = None

    def __post_init__(self):
        g = self.grid_spacing
        if isinstance(g, bool) or not isinstance(g, (int, float, np.number)) or not 4 <= g < np.inf:
            raise ValueError(f"grid_spacing must be a number of pixels >= 4, got {g!r}")
        for name in ("patch_size", "patch_stride", "search_radius"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a whole number of pixels >= 1, got {v!r}")
        if self.patch_size < 8:
            raise ValueError(f"patch_size must be at least 8 pixels, got {self.patch_size}")

    def describe(self) -> dict:
        return {"grid_spacing": float(self.grid_spacing), "patch_size": int(self.patch_size),
                "patch_stride": int(self.patch_stride), "search_radius": int(self.search_radius)}


@dataclass(frozen=True)
class NonrigidRecord:
    """One frame's non-rigid registration.

    ``coefficients`` (2, ny, nx) float32 on the fine grid: the whole field
    (global part included); ``patch_shifts`` (m, 2) the patches' fields at
    their centres (NaN where a patch had no usable match), ``patch_quality``
    (m,) their peak correlation; ``fallback``: the frame kept the global
    translation (the field did not fit the data better); ``rms``, ``max``: the
    deformation beyond the global shift over valid pixels (px);
    ``valid_patches``: the fraction of patches that matched.
    """

    coefficients: np.ndarray
    patch_shifts: np.ndarray
    patch_quality: np.ndarray
    fallback: bool
    rms: float
    max: float
    valid_patches: float


class _Patches:
    """Masked NCC of reference patches against a frame, batched; reference side once."""

    def __init__(self, ref_t, ref_valid, frame_valid, size, stride, radius):
        h, w = ref_t.shape
        size = min(size, h, w)
        self.size, self.radius = size, radius
        tops = [_starts(n, size, stride) for n in (h, w)]
        ty, tx = np.meshgrid(*tops, indexing="ij")
        self.tops = np.stack([ty.ravel(), tx.ravel()], axis=1)
        self.centres = self.tops + (size - 1) / 2.0
        self.fft = size + 2 * radius
        win = np.lib.stride_tricks.sliding_window_view
        t = np.where(ref_valid, ref_t, 0.0)
        mr = ref_valid.astype(np.float64)
        tp = win(t, (size, size))[self.tops[:, 0], self.tops[:, 1]]
        mp = win(mr, (size, size))[self.tops[:, 0], self.tops[:, 1]]
        frac = mp.mean(axis=(1, 2))
        # a patch needs valid pixels and contrast on them
        cnt = np.maximum(mp.sum(axis=(1, 2)), 1)
        var = (tp**2).sum(axis=(1, 2)) / cnt - (tp.sum(axis=(1, 2)) / cnt) ** 2
        self.usable = (frac >= 0.25) & (var > 1e-6)
        s = (self.fft, self.fft)
        f = _rfft2
        self._mr = np.conj(f(mp, s))
        self._t = np.conj(f(tp, s))
        self._t2 = np.conj(f(tp * tp, s))
        self.min_overlap = 0.2 * size * size
        self.frame_valid = frame_valid.astype(np.float64)

    def match(self, frame_t, v0):
        """Per patch: the field at its centre (v0 + the best local shift) and the peak NCC."""
        r, n = self.radius, self.fft
        base = np.round(np.asarray(v0, float)).astype(int)
        pad = r + int(np.abs(base).max()) + 1
        f = np.pad(np.where(self.frame_valid > 0, frame_t, 0.0), pad)
        m = np.pad(self.frame_valid, pad)
        win = np.lib.stride_tricks.sliding_window_view
        oy = self.tops[:, 0] + base[0] - r + pad
        ox = self.tops[:, 1] + base[1] - r + pad
        fw = win(f, (n, n))[oy, ox]
        mw = win(m, (n, n))[oy, ox]
        s = (n, n)
        fft, ifft = _rfft2, _irfft2
        F, F2, M = fft(fw, s), fft(fw * fw, s), fft(mw, s)
        k = 2 * r + 1

        def corr(a, b):
            return ifft(a * b, s)[:, :k, :k]

        cnt = corr(self._mr, M)
        sr, srr = corr(self._t, M), corr(self._t2, M)
        sf, sff = corr(self._mr, F), corr(self._mr, F2)
        srf = corr(self._t, F)
        ok = cnt > self.min_overlap
        cnt = np.maximum(cnt, 1.0)
        num = srf - sr * sf / cnt
        den = (srr - sr * sr / cnt) * (sff - sf * sf / cnt)
        ncc = np.where(ok & (den > 1e-12), num / np.sqrt(np.maximum(den, 1e-30)), -1.0)
        flat = ncc.reshape(len(ncc), -1)
        best = flat.argmax(axis=1)
        py, px = np.unravel_index(best, (k, k))
        q = flat[np.arange(len(flat)), best]
        edge = (py == 0) | (px == 0) | (py == k - 1) | (px == k - 1)
        sub = np.zeros((len(flat), 2))
        inner = ~edge
        idx = np.flatnonzero(inner)
        for ax, (dy, dx) in enumerate(((1, 0), (0, 1))):
            c0 = ncc[idx, py[idx], px[idx]]
            cm = ncc[idx, py[idx] - dy, px[idx] - dx]
            cp = ncc[idx, py[idx] + dy, px[idx] + dx]
            sub[idx, ax] = parabola_vertex(cm, c0, cp)  # (c0, the highest: a peak's vertex)
        shifts = np.stack([py, px], axis=1) - r + sub + base
        good = self.usable & inner & (q > _MIN_QUALITY)
        return shifts, np.where(self.usable, q, 0.0), good


def _noise_sigma(image, valid) -> float:
    """Robust white-noise standard deviation of an image over its valid pixels
    (Immerkaer 1996: a Laplacian difference that cancels smooth content)."""
    k = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    conv = ndi.convolve(np.where(valid, image, 0.0), k, mode="nearest")
    inner = ndi.binary_erosion(valid, iterations=1, border_value=0)
    if not inner.any():
        return 0.0
    return float(np.median(np.abs(conv[inner])) / (0.6745 * 6.0))


def _gradient_noise(image, valid, sigma) -> float:
    """Variance of one gradient component of the image's white noise after a
    Gaussian of ``sigma`` and central differences."""
    n = 33
    delta = np.zeros((n, n))
    delta[n // 2, n // 2] = 1.0
    if sigma > 0:
        delta = ndi.gaussian_filter(delta, sigma)
    g = np.gradient(delta)[0]
    return _noise_sigma(image, valid) ** 2 * float((g * g).sum())


def _rfft2(x, s):
    return sfft.rfft2(np.asarray(x, np.float32), s, workers=1)


def _irfft2(x, s):
    return sfft.irfft2(x, s, workers=1).astype(np.float64)


def _ladder(x: float, ratio: float) -> float:
    """``x`` rounded to the nearest power of ``ratio`` (few distinct values: cached factors)."""
    return float(ratio ** np.round(np.log(x) / np.log(ratio)))


@dataclass(frozen=True)
class _Prior:
    """The prior on a frame's field beyond its global shift, per component: ``sd`` px;
    correlated as the patches' correlogram says (``lags``, ``corr``), or, where too
    few patches matched to tell, as a Matern field of ``length`` px."""

    sd: float
    length: float
    lags: np.ndarray | None = None
    corr: np.ndarray | None = None

    @property
    def key(self):
        """Cache key of a Matern prior (None: a correlogram's, not cached)."""
        return None if self.lags is not None else (self.sd, self.length)

    def precision(self, grid: SplineGrid) -> np.ndarray:
        """``(n, n)`` on ``grid``'s control points."""
        if self.lags is None:
            return grid.matern_precision(self.length, self.sd)
        ky, kx = grid.knots
        yy, xx = np.meshgrid(ky, kx, indexing="ij")
        p = np.stack([yy.ravel(), xx.ravel()], axis=1)
        d = np.sqrt(((p[:, None] - p[None]) ** 2).sum(axis=-1))
        # the correlogram between its lags, 0 beyond; tapered, so that its noisy far
        # lags count less; made positive definite
        taper = np.exp(-((d / (_TAPER_LAGS * self.lags[1])) ** 2))
        r = np.interp(d, self.lags, self.corr, right=0.0) * taper
        w, v = np.linalg.eigh(r)
        w = np.maximum(w, 1e-3 * w.max())
        return (v / w) @ v.T / self.sd**2


def _correlogram(centres, dev, step):
    """Lags (px, from 0) and the correlation of the deviations ``dev`` (m, 2) at
    ``centres`` (m, 2) in bins of ``step`` px, while a bin holds enough pairs;
    None with too few patches or fewer than three lags."""
    d = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(axis=-1))
    prod = dev @ dev.T
    var = float((dev**2).sum(axis=1).mean())
    if len(dev) < _GRAM_MIN_PATCHES or var <= 0:
        return None
    lags, corr = [0.0], [1.0]
    for k in range(1, 64):
        m = (d > (k - 0.5) * step) & (d <= (k + 0.5) * step)
        if m.sum() < 2 * _GRAM_MIN_PAIRS:  # each pair counted twice
            break
        lags.append(k * step)
        corr.append(float(prod[m].mean()) / var)
    return (np.array(lags), np.array(corr)) if len(lags) >= 3 else None


def _correlation_length(centres, dev, step, spacing) -> float:
    """The distance (px) at which the correlation of the deviations ``dev`` (m, 2)
    measured at ``centres`` (m, 2) first falls below 0.1, from their correlogram
    in bins of ``step`` px (linear between bins), within 1 to 8 grid spacings;
    two grid spacings when too few patches matched to tell."""
    lo, hi = spacing, 8.0 * spacing
    var = float((dev**2).sum(axis=1).mean()) if len(dev) else 0.0
    if len(dev) < 8 or var <= 0:
        return 2.0 * spacing
    d = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(axis=-1))
    prod = dev @ dev.T
    prev_lag, prev_r = 0.0, 1.0
    for k in range(1, int(np.ceil(hi / step)) + 2):
        m = (d > (k - 0.5) * step) & (d <= (k + 0.5) * step)
        if not m.any():
            continue
        r = float(prod[m].mean()) / var
        lag = k * step
        if r < 0.1:
            length = prev_lag + (prev_r - 0.1) / (prev_r - r) * (lag - prev_lag)
            return float(np.clip(length, lo, hi))
        prev_lag, prev_r = lag, r
    return hi


def _starts(n, size, stride):
    if n <= size:
        return np.array([0])
    s = list(range(0, n - size + 1, stride))
    if s[-1] != n - size:
        s.append(n - size)
    return np.asarray(s)


class _Stage:
    """One Gauss-Newton level: a grid, its pixels, its regularised normal matrix
    factored once per stack."""

    def __init__(self, grid: SplineGrid, flat, grads, target, membrane, pull, noise=None):
        self.grid = grid
        h, w = grid.shape
        self.flat = flat
        self.rows, self.cols = np.divmod(flat, w)
        gy, gx = grads
        self.gy, self.gx, self.target = gy.ravel()[flat], gx.ravel()[flat], target.ravel()[flat]
        weight = np.zeros(h * w)
        weight[flat] = 1.0
        weight = weight.reshape(h, w)
        hyy = grid.weighted_gram(weight * gy * gy)
        hyx = grid.weighted_gram(weight * gy * gx)
        hxx = grid.weighted_gram(weight * gx * gx)
        hess = np.block([[hyy, hyx], [hyx, hxx]])
        self.hess = hess
        # absolute (a prior in px, against the residuals' noise variance) or relative
        # to the mean data weight
        self.scale = noise if noise is not None else max(float(np.mean(np.diag(hess))), 1e-12)
        mem = membrane * grid.membrane()
        self.reg_m = self.scale * np.kron(np.eye(2), mem)
        self.reg_p = pull * self.scale
        self._solvers: dict = {}
        self._lock = threading.Lock()

    def solver(self, prior: _Prior):
        """The prior's precision (the membrane and ``prior``) and the Cholesky factor
        of the regularised normal matrix; a Matern prior's last few are kept (frames
        of one stack deform alike, and its sd and length come in steps of a few per
        cent); a correlogram's is made per frame (milliseconds)."""
        key = prior.key
        with self._lock:
            hit = None if key is None else self._solvers.get(key)
        if hit is None:
            q = self.reg_m + self.scale * np.kron(np.eye(2), prior.precision(self.grid))
            hit = (q, cho_factor(self.hess + q + self.reg_p * np.eye(len(q))))
            with self._lock:
                if key is None:
                    return hit
                if len(self._solvers) >= 4:
                    self._solvers.pop(next(iter(self._solvers)))
                self._solvers[key] = hit
        return hit


class NonrigidRegistrar:
    """Registers frames non-rigidly onto one reference; everything that depends only
    on the reference and the static mask is computed here, once per stack.

    Parameters
    ----------
    reference : ndarray (H, W)
    valid : ndarray of bool (H, W) or None
        True on pixels to use, in the reference and in every frame (engine
        convention); None uses every pixel.
    settings : NonrigidSettings
    """

    def __init__(self, reference, valid, settings: NonrigidSettings):
        ref = np.asarray(reference, np.float64)
        if ref.ndim != 2:
            raise ValueError(f"the nonrigid model needs 2D frames, got a {ref.ndim}D reference")
        self.shape = ref.shape
        self.settings = settings
        self.valid = np.ones(self.shape, bool) if valid is None else np.asarray(valid, bool)
        vals = ref[self.valid]
        # counts (nonnegative data) get the Anscombe transform; other data stay linear
        self.stabilize = bool(vals.size and vals.min() >= 0)
        self.ref_t = self._transform(ref)
        s = settings
        self.patches = _Patches(self.ref_t, self.valid, self.valid, s.patch_size,
                                s.patch_stride, s.search_radius)
        # the reference's gradient, clean of the block: pixels whose stencil is valid
        inner = ndi.binary_erosion(self.valid, iterations=2, border_value=0)
        filled = np.where(self.valid, self.ref_t, self.ref_t[self.valid].mean())
        if s.gradient_sigma > 0:
            filled = ndi.gaussian_filter(filled, s.gradient_sigma)
        gy, gx = np.gradient(filled)
        if s.wiener:
            # a Wiener Jacobian: shrink gradients toward 0 where the reference's own
            # noise explains them (flat areas give noise, not information)
            var = _gradient_noise(self.ref_t, self.valid, s.gradient_sigma)
            mag2 = gy * gy + gx * gx
            shrink = np.clip(1.0 - 2.0 * var / np.maximum(mag2, 1e-30), 0.0, 1.0)
            gy, gx = gy * shrink, gx * shrink
        # where the frame lands must be clear of the block by the cubic's support
        self.land = ndi.binary_erosion(self.valid, iterations=2, border_value=1)
        # the strongest pixels carry nearly all the information: use `select` of them,
        # plus a thin random share of the rest so flat areas still vote
        mag = np.where(inner, gy * gy + gx * gx, 0.0)
        keep = inner.copy()
        if 0 < s.select < 1 and inner.sum() > 0:
            cut = np.quantile(mag[inner], 1 - s.select)
            keep = inner & (mag >= cut)
        flat = np.flatnonzero(keep)
        fine = SplineGrid(self.shape, s.grid_spacing)
        coarse = SplineGrid(self.shape, 2 * s.grid_spacing)
        # the coarse level needs less: every other pixel of the fine level's
        noise = None
        if s.absolute:
            # residual variance of one pixel: the reference's noise and the frame's
            noise = 2.0 * max(_noise_sigma(self.ref_t, self.valid) ** 2, 1e-12)
        self.coarse = _Stage(coarse, flat[::2], (gy, gx), self.ref_t, s.membrane,
                             s.pull * 0.1, noise)
        self.fine = _Stage(fine, flat, (gy, gx), self.ref_t, s.membrane, s.pull, noise)
        self.grid = fine
        # fitting the patch shifts: the basis at the patch centres
        c = self.patches.centres
        self._patch_basis = coarse.point_basis(c[:, 0], c[:, 1])

    def _transform(self, image):
        return anscombe(image) if self.stabilize else np.asarray(image, np.float64)

    # -- one frame ----------------------------------------------------------
    def register(self, frame, shift, quality) -> NonrigidRecord:
        """The :class:`NonrigidRecord` of one 2D frame (finite on valid pixels) whose
        global translation is ``shift`` (scikit-image's sign) with ``quality``."""
        frame = np.asarray(frame, np.float64)
        shift = np.asarray(shift, float)
        v0 = -shift
        empty = NonrigidRecord(self._constant(self.fine.grid, v0), np.full((len(self.patches.tops), 2), np.nan,
                               np.float32), np.zeros(len(self.patches.tops), np.float32), True, 0.0, 0.0, 0.0)
        if quality <= 0:
            return empty
        ft = self._transform(frame)
        fill = np.where(self.valid, ft, ft[self.valid].mean())
        spline = ndi.spline_filter(fill, order=3)
        pshift, pq, good = self.patches.match(ft, v0)
        prior = self._prior(pshift, good, v0)
        c = self._fit_patches(pshift, pq, good, v0, prior)
        c = self._gauss_newton(self.coarse, spline, c, v0, prior)
        c = self.fine.grid.fit_field(self.coarse.grid.evaluate(c))
        c = self._gauss_newton(self.fine, spline, c, v0, prior)
        if prior.lags is not None:
            # the correlogram again, of the fitted field at the matched patches (the
            # patches' own shifts average the field over 64 px: they understate its
            # amplitude and blur its shape), and the fit again under it
            ctr = self.patches.centres
            prior = self._prior(self.fine.grid.evaluate_at(c, ctr[:, 0], ctr[:, 1]).T, good, v0)
            c = self._fit_patches(pshift, pq, good, v0, prior)
            c = self._gauss_newton(self.coarse, spline, c, v0, prior)
            c = self.fine.grid.fit_field(self.coarse.grid.evaluate(c))
            c = self._gauss_newton(self.fine, spline, c, v0, prior)
        # never worse than the global translation
        c_glob = self._constant(self.fine.grid, v0)
        fallback = not np.all(np.isfinite(c))
        if not fallback:
            mine, base = self._costs(spline, c, c_glob)
            fallback = not mine <= base
        if fallback:
            c = c_glob
        v = self.grid.evaluate(c) - v0[:, None, None]
        mag = np.sqrt((v * v).sum(axis=0))[self.valid]
        patch_v = np.where(good[:, None], pshift, np.nan).astype(np.float32)
        rec = NonrigidRecord(c.astype(np.float32), patch_v, pq.astype(np.float32), bool(fallback),
                             float(np.sqrt(np.mean(mag**2))) if mag.size else 0.0,
                             float(mag.max()) if mag.size else 0.0,
                             float(good.mean()) if good.size else 0.0)
        return rec

    @staticmethod
    def _constant(grid, v0):
        ny, nx = grid.grid_shape
        return np.broadcast_to(np.asarray(v0, float)[:, None, None], (2, ny, nx)).astype(np.float64)

    def _prior(self, pshift, good, v0) -> _Prior:
        """The prior from the settings, or from the good patches' deviations from the
        global shift: their RMS, and their correlogram (kriging: an oscillating field
        keeps its negative lobes, so a featureless area between two measured crests
        is predicted to dip, not to sit at their level); where too few patches
        matched for a correlogram, a Matern prior of the length at which their
        correlation falls below 0.1."""
        s = self.settings
        dev = pshift[good] - v0
        sd, length = s.prior_sd, s.prior_length
        if sd is None:
            sd = _PRIOR_SD_FROM_PATCHES * np.sqrt((dev**2).mean()) if len(dev) else 0.0
            sd = float(np.clip(sd, *_PRIOR_SD_RANGE))
        sd = _ladder(sd, 1.05)
        if length is None:
            centres = self.patches.centres[good]
            gram = _correlogram(centres, dev, float(s.patch_stride))
            if gram is not None:
                return _Prior(sd, 0.0, *gram)
            length = _correlation_length(centres, dev, float(s.patch_stride), float(s.grid_spacing))
        return _Prior(sd, _ladder(length, 1.1))

    def _fit_patches(self, pshift, pq, good, v0, prior):
        """Coarse-grid coefficients fitted to the good patches' shifts (each with an
        error of ``hypot(_PATCH_SD, _PATCH_SD_Q / quality)`` px) under the Matern ``prior`` (sd, length)
        around the global shift; patches that disagree with the first fit by over
        1.5 px are dropped once."""
        a = self._patch_basis
        n = a.shape[1]
        mean = np.broadcast_to(np.asarray(v0, float)[:, None], (2, n))
        w = np.where(good, np.clip(pq, 0, 1) ** 2, 0.0)
        q = prior.precision(self.coarse.grid)
        sol = mean.copy()
        for _ in range(2):
            if w.sum() <= 0:
                return mean.reshape(2, *self.coarse.grid.grid_shape)
            wp = np.where(w > 0, 1.0 / (_PATCH_SD**2 + _PATCH_SD_Q**2 / np.maximum(w, 1e-6)), 0.0)
            lhs = (a * wp[:, None]).T @ a + q
            rhs = (a * wp[:, None]).T @ np.nan_to_num(pshift) + q @ mean.T
            sol = np.linalg.solve(lhs, rhs).T
            fit = sol @ a.T
            err = np.sqrt(((fit.T - np.nan_to_num(pshift)) ** 2).sum(axis=1))
            w = np.where(err > 1.5, 0.0, w)
        return sol.reshape(2, *self.coarse.grid.grid_shape)

    def _warp(self, stage: _Stage, spline, c):
        v = stage.grid.evaluate(c)
        yy = stage.rows + v[0].ravel()[stage.flat]
        xx = stage.cols + v[1].ravel()[stage.flat]
        h, w = self.shape
        inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
        iy = np.clip(np.rint(yy).astype(np.intp), 0, h - 1)
        ix = np.clip(np.rint(xx).astype(np.intp), 0, w - 1)
        ok = inside & self.land[iy, ix]
        vals = ndi.map_coordinates(spline, [yy, xx], order=3, prefilter=False, mode="nearest")
        return vals, ok

    @staticmethod
    def _residual(vals, ok, target):
        """Residuals after the best gain and offset (zero where a pixel does not count)."""
        x, y = vals[ok], target[ok]
        if x.size < 3:
            return None
        xm, ym = x.mean(), y.mean()
        var = ((x - xm) ** 2).mean()
        gain = ((x - xm) * (y - ym)).mean() / var if var > 0 else 1.0
        if not gain > 0:
            gain = 1.0
        r = np.zeros_like(vals)
        r[ok] = gain * (x - xm) - (y - ym)
        return r

    def _gauss_newton(self, stage: _Stage, spline, c, v0, prior):
        """Gauss-Newton steps on the coefficients ``c`` (the start, which they are
        pulled toward) under the Matern ``prior`` (sd, length) around the global field ``v0``."""
        grid = stage.grid
        shape = c.shape
        img = np.zeros(self.shape)
        flat_img = img.reshape(-1)
        q, factor = stage.solver(prior)
        prior = c.reshape(-1).copy()
        mean = self._constant(grid, v0).reshape(-1)
        for _ in range(self.settings.iterations):
            vals, ok = self._warp(stage, spline, c)
            r = self._residual(vals, ok, stage.target)
            if r is None:
                break
            flat_img[stage.flat] = r * stage.gy
            gy = grid.project(img)
            flat_img[stage.flat] = r * stage.gx
            gx = grid.project(img)
            flat = c.reshape(-1)
            g = np.concatenate([gy.ravel(), gx.ravel()])
            g = g + q @ (flat - mean) + stage.reg_p * (flat - prior)
            step = -cho_solve(factor, g)
            c = (flat + step).reshape(shape)
            if not np.all(np.isfinite(c)) or np.abs(step).max() < self.settings.tolerance:
                break
        return c

    def _costs(self, spline, c, c_glob):
        """Mean squared residual of the field and of the global translation, over the
        pixels that count for both."""
        st = self.fine
        va, oka = self._warp(st, spline, c)
        vb, okb = self._warp(st, spline, c_glob)
        ok = oka & okb
        ra, rb = self._residual(va, ok, st.target), self._residual(vb, ok, st.target)
        if ra is None or rb is None:
            return np.inf, 0.0
        return float(np.mean(ra[ok] ** 2)), float(np.mean(rb[ok] ** 2))
