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
  averaged spectrum of the reference, or its power over 3x3 frequencies where
  that is higher: a lattice's Bragg peaks; noise power from its highest
  frequencies) estimates the true gradient instead.
* **weights from a noise model, not from noisy pixels.** The residual's
  variance is fitted per frame as ``alpha * level + beta`` over bins of the
  smoothed reference level: Poisson counts (any gain), Gaussian noise
  (``alpha = 0``) and both at once, the noise of both frames included.
  Weighting by the noisy intensities themselves biases the estimate.
* **the moving frame moved in Fourier space** for 2D translation (masked
  pixels first filled from their nearest valid neighbour, the frame mirrored
  a few pixels out; one inverse transform per step, no interpolation bias:
  cubic splines floored at 3.1x the bound at 200 counts on real content),
  cubic splines (prefiltered once per frame) for rotation, scale and 3D
  volumes; on the reference pixels that are valid and at least ``margin``
  pixels from an invalid moving pixel and from the frame's edge, with a gain
  and an offset.
* **an error bar per frame**: the sandwich of the weighted normal matrix
  around the residuals' own scatter at the solution (gain and offset
  marginalised) is the covariance of the parameters, the noise of both frames
  included since the residual is their difference (``RefineResult.sigma``).

What a frame costs (translation, measured on 512 px frames): two steps, each
one inverse transform of the frame's padded spectrum (single precision: its
rounding moves the fixed point by 1e-7 px) and a few passes over the
points; the Jacobian is the same for every step and frame, so the normal
matrix comes from its column products, formed once per reference; the
sandwich is formed once, at the last step. About half the masked
correlation's own cost, and the registrar starts it from the whole-pixel
peak's parabola vertex rather than from the ``1/u`` grid's peak, which it
computes only for a frame whose refinement fails.

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

from ..backends._cache import BoundedCache
from ..kernels._grid import dot64, moved_mask
from ._alias import alias_band
from ._fill import filled, nearest_fill_index, smooth_filler

if TYPE_CHECKING:  # pragma: no cover
    from ._base import Model

__all__ = ["Refiner", "noise_spread", "peak_curvature", "pearson", "unmasked_terms"]

_BINS = 16
#: px: the smoothing of the reference level that the noise model is fitted against
_LEVEL_SIGMA = 8.0
#: contrast (std over the noise's sigma) under which the reference is low-dose
_LOW_DOSE = 2.5
#: pixels the translation model mirrors each frame out by before its transform
_MIRROR = 8

#: px: tolerances from this up use single-precision transforms (translation)
_SINGLE_TOL = 1e-5

#: ``select`` keeps at least this many pixels (small frames keep them all)
MIN_POINTS = 4000
#: the local Wiener gain reads a frequency's 3x3 neighbourhood as signal only where its
#: mean power is this many times the noise's (pure noise: 4 in 10**4 frequencies)
_NEAR_CLEAR = 2.5


def _low_contrast(values, noise: float, below: float) -> bool:
    """Whether ``values`` (an image's valid pixels) scatter by less than ``below`` times
    the noise's standard deviation: a low-dose image, its content near the noise."""
    return values.size > 1 and float(values.std()) < below * np.sqrt(max(noise, 0.0))


def wiener_estimate(image, valid=None, *, local=False, grad_noise=False, filled=None,
                    want_level=True, alias=False, single=False, values=None, grad32=False):
    """The noiseless image and its gradient, estimated from one noisy image.

    A Wiener filter: the radially averaged power spectrum against the noise
    power, measured where the spectrum is highest in every axis (white noise
    reaches there, smooth content does not). Masked pixels are filled
    smoothly and the frame mirrored at its edges first, so neither the block
    nor the wrap-around rings into the estimate. Returns ``(level, gradient)``
    with ``gradient`` of shape ``(ndim, *shape)``, and the noise variance.
    ``local``: the signal's power at a frequency is also read over its 3x3
    neighbours (sharp periodic content: the radial average drowns its peaks in
    their ring's noise and blurs the spots); a number ``c``: so only where the
    image's contrast is under ``c`` noise sigmas (:func:`_low_contrast`, decided
    once the noise is measured, on the same spectrum). ``grad_noise``: also return, per axis,
    the variance the filtered gradient keeps of the white noise. ``filled``: the image
    already filled by ``smooth_filler(valid)`` (a caller that needs it too fills once);
    ``want_level=False``: the level is not transformed back (None in its place).
    ``alias``: also return the gradient along each axis without the frequencies whose
    folded power is not negligible (:func:`~._alias.alias_band`: what a Fourier shift
    moves wrongly), last; ``grad_noise`` is then that gradient's.
    ``single``: the level and the gradient as the transforms give them, single
    precision views (``grad`` a list), not float64 copies, and the gain applied in
    single precision: the same values to 1e-7 of each. ``values``: the image's valid
    pixels in float64 where the caller has them (the contrast is read from them).
    ``grad32``: the gradient (not ``single``) as a list of the transforms' float32
    views, whose float64 copies it otherwise returns (a caller that gathers it casts
    its few pixels; the copies were 4 MB of fresh pages at 512 px).
    """
    image = original = np.asarray(image)
    if filled is not None:
        image = filled
    elif valid is not None:
        image = smooth_filler(valid)(image)
    shape, ndim = image.shape, image.ndim
    pad = [min(16, n // 4) for n in shape]
    # single precision (its rounding, 1e-7, is far below any image's noise): a third
    # of the float64 transforms' time; cast before the mirroring, the same values
    big = np.pad(image.astype(np.float32, copy=False), [(p, p) for p in pad], mode="reflect")
    spec = sfft.rfftn(big, workers=-1)
    freqs, k, bins, counts, corner = _spectrum_geometry(big.shape)
    power = np.square(spec.real)  # in place where possible: a fresh array's pages cost
    power += np.square(spec.imag)  # as much as the arithmetic on this machine
    power /= big.size
    # the median, not the mean: a noise periodogram is exponentially distributed
    # (median = ln 2 times its mean), while sharp periodic content (a lattice of
    # spots) puts a few strong peaks even there, which the median ignores
    noise = float(np.median(power[corner])) / np.log(2.0) if corner.any() else 0.0
    radial = np.bincount(bins.ravel(), power.ravel()) / np.maximum(counts, 1)
    if local is not False and local is not True:
        if values is None:
            values = np.asarray(original, dtype=np.float64)
            values = values if valid is None else values[np.asarray(valid, bool)]
        local = _low_contrast(values, noise, float(local))
    if local:  # a lattice's Bragg peaks stand far above their radial average
        near = ndi.uniform_filter(power, 3, mode="wrap")
        # ... but where there is only noise, the mean of 9 periodogram values scatters by
        # a third of the noise, and half of them read above the radial average: taken as
        # signal, each passed a little noise, most at high frequencies, which the gradient
        # weighs by k^2 (smooth content at 20 counts, 512 px: the refinement 2.2x the
        # bound, its error bars half the error). A neighbourhood counts only where it
        # stands clear of that scatter
        near[near < _NEAR_CLEAR * noise] = 0.0
        signal = np.maximum(radial[bins], near)
        gain = np.clip(1.0 - noise / np.maximum(signal, 1e-300), 0.0, 1.0)
    else:  # the gain of the radial average, per ring, then spread to the spectrum
        gain = np.clip(1.0 - noise / np.maximum(radial, 1e-300), 0.0, 1.0)
        gain = (gain.astype(np.float32) if single else gain)[bins]
    spec *= gain
    inner = tuple(slice(p, p + n) for p, n in zip(pad, shape))
    if single:  # each spectrum transformed in place, the last axis on the inner rows only
        buf = np.empty_like(spec)
        grad = [inverse_rows(np.multiply((1j * kk).astype(np.complex64), spec, out=buf),
                             big.shape, inner) for kk in k]
        if want_level:  # the spectrum itself is transformed last, unless the alias needs it
            level = inverse_rows(spec.copy() if alias else spec, big.shape, inner)
        else:
            level = None
    else:
        level = None
        if want_level:
            level = sfft.irfftn(spec, big.shape, workers=-1)[inner].astype(np.float64)
        grad = [] if grad32 else np.empty((ndim, *shape))
        buf = np.empty_like(spec)  # each axis's derivative spectrum, in turn
        for ax, kk in enumerate(k):
            g = inverse_rows(np.multiply((1j * kk).astype(np.complex64), spec, out=buf),
                             big.shape, inner)  # (a new array: buf is free again)
            if grad32:
                grad.append(g)
            else:
                grad[ax][...] = g
    band, inst = _band_gradient(spec, k, freqs, power, noise, big.shape, inner, grad) if alias else (
        [1.0] * ndim, grad)
    extra = (inst,) if alias else ()
    if not grad_noise:
        return (level, grad, noise, *extra)
    # the share of white noise (variance ``noise`` per pixel) the filtered gradient
    # keeps, per axis: noise * mean |gain k|^2 over the full spectrum (the rfft's
    # inner columns stand for two)
    half = np.full(bins.shape[-1], 2.0)
    half[0] = 1.0
    if big.shape[-1] % 2 == 0:
        half[-1] = 1.0
    # in place where the gain is float64 (it is not read again); a float32 gain's
    # square is promoted by ``half``, as before
    wide = gain.dtype == np.float64
    g2 = np.multiply(gain, gain, out=gain if wide else None)
    g2 = np.multiply(g2, half, out=g2 if wide else None)
    buf = np.empty(g2.shape)  # each axis's g2 * k^2 * band in turn, in one buffer
    kept = []
    for kk, h in zip(k, band):
        np.multiply(g2, kk, out=buf)
        buf *= kk
        buf *= h
        kept.append(float(np.sum(buf)))
    kept = np.array(kept) / big.size
    return (level, grad, noise, noise * kept, *extra)


#: padded shapes whose spectrum geometry is kept (:func:`_spectrum_geometry`); a geometry
#: over 2**21 points of the half spectrum (its bins' bytes) is not kept
_GEOMETRY_CACHE = BoundedCache(max_entries=8, max_item_bytes=(1 << 21) * np.dtype(int).itemsize)


def _spectrum_geometry(shape):
    """``(freqs, k, bins, counts, corner)`` of a real transform of ``shape``: the
    frequencies per axis, the angular ones as a sparse grid, every frequency's
    radial bin (64 per unit of ``|k| / pi``) and the bins' sizes, and the corner
    where the noise is measured. Kept for the last few shapes, read-only (they
    cost as much as the forward transform: a stack, or a "previous" run's every
    reference, asks again for the same shape)."""
    shape = tuple(int(n) for n in shape)
    hit = _GEOMETRY_CACHE.get(shape)
    if hit is not None:
        return hit
    freqs = [sfft.fftfreq(n) for n in shape[:-1]] + [sfft.rfftfreq(shape[-1])]
    k = np.meshgrid(*[2 * np.pi * f for f in freqs], indexing="ij", sparse=True)
    kr = np.sqrt(sum(kk * kk for kk in k)) / np.pi  # 0..sqrt(ndim)
    ndim = len(shape)
    bins = np.minimum((kr * 64).astype(int), int(64 * np.sqrt(ndim)) + 1)
    counts = np.bincount(bins.ravel())
    corner = np.ones(bins.shape, bool)
    for kk in k:
        corner &= np.abs(kk) > 0.7 * np.pi
    found = (freqs, k, bins, counts, corner)
    for a in [*freqs, *k, bins, counts, corner]:
        a.setflags(write=False)
    _GEOMETRY_CACHE.put(shape, found, bins.nbytes)  # (two threads may both compute it: the same)
    return found


def inverse_rows(spectrum, shape, inner) -> np.ndarray:
    """``irfftn(spectrum, shape)[inner]``, bit for bit, overwriting ``spectrum``: the
    leading axes' inverse in place and unscaled, the last axis's on the rows of
    ``inner[:-1]`` only, then scaled by ``1 / prod(shape)`` (pocketfft's multi-axis
    inverse scales once, at its last pass: the same rounding). The plain transform's
    temporaries faulted their pages in on every call (a fresh page cost 3.5 us
    here)."""
    lead = tuple(range(spectrum.ndim - 1))
    if lead:
        sfft.ifftn(spectrum, axes=lead, overwrite_x=True, norm="forward", workers=-1)
    rows = spectrum[tuple(inner[:-1])]
    out = sfft.irfft(rows, shape[-1], axis=-1, norm="forward", workers=-1)
    out *= 1.0 / float(np.prod(shape))
    return out[..., inner[-1]]


def _band_gradient(spec, k, freqs, power, noise, shape, inner, grad):
    """``(band, gradient)``: per axis the 0/1 band of :func:`~._alias.alias_band`
    (broadcastable; 1.0 where nothing is cut) and the filtered spectrum's gradient
    along that axis on it (``grad``'s own where nothing is cut)."""
    band, out = [], []
    for ax, (kk, f, cut) in enumerate(zip(k, freqs, alias_band(power, freqs, noise))):
        if cut is None:
            band.append(1.0)
            out.append(grad[ax])
            continue
        view = [1] * len(k)
        view[ax] = -1
        h = (np.abs(f) <= cut).astype(np.float64).reshape(view)
        band.append(h)
        out.append(sfft.irfftn((1j * kk * h).astype(spec.dtype) * spec, shape,
                               workers=-1)[inner].astype(np.float64))
    if all(isinstance(h, float) for h in band):  # nothing cut: the gradient itself, no copy
        return band, grad
    return band, np.stack(out)


def _curvature(ref, valid, grad, vals=None):
    """``(kappa, n)`` of :func:`peak_curvature` from a gradient (``vals``: ``ref[valid]``
    where the caller has it); squares taken in place (the same sums)."""
    vals = ref[valid] if vals is None else vals
    centred = vals - vals.mean()
    spread = float(np.sum(np.multiply(centred, centred, out=centred)))
    energy = []
    for g in grad:
        t = g[valid].astype(np.float64, copy=False)  # (a float32 gradient: squared in float64)
        energy.append(float(np.sum(np.multiply(t, t, out=t))))
    return np.array(energy) / max(spread, 1e-300), int(vals.size)


def peak_curvature(reference, valid=None):
    """``(kappa, n)``: the curvature per axis of the normalized correlation of the
    reference with itself at its peak (its gradient's energy over its variance) and the
    number of pixels it spans (True = valid). The gradient of the reference smoothed over
    3 pixels: cheap enough for every frame of a "previous" run, and what it misses (the
    noise's own gradient, sharp detail) matters little beside the grid's quantization,
    which dominates an unrefined peak's error."""
    ref = np.asarray(reference)
    valid = None if valid is None or np.all(valid) else np.asarray(valid, bool)
    # the pixels at least 3 (L1) from an invalid one and from the outside: where the
    # smoothed gradient reads none of the frame's edge (a cross's erosion, 2 iterations)
    inner = None if valid is None else _eroded(valid, 2, 1)
    if min(ref.shape) < 5 or (inner is not None and not inner.any()):
        ref = ref.astype(np.float64)
        full = np.ones(ref.shape, bool) if valid is None else valid
        smooth = ndi.uniform_filter(ref, 3, mode="nearest")
        return _curvature(ref, full, [np.gradient(smooth, axis=ax) for ax in range(ref.ndim)])
    core = tuple(slice(2, n - 2) for n in ref.shape)
    inner = None if inner is None else inner[core]
    count = ref[core].size if inner is None else int(np.count_nonzero(inner))
    mean = float(np.sum(ref[core], where=True if inner is None else inner,
                        dtype=np.float64)) / count
    # block by block along the first axis, in float64, with 2 pixels of the frame
    # around each (a block's temporaries stay in the cache, and in memory mapped already)
    spread, energy = 0.0, np.zeros(ref.ndim)
    rows = max(1, _BLOCK // max(1, ref[0].size))
    for start in range(2, ref.shape[0] - 2, rows):
        stop = min(start + rows, ref.shape[0] - 2)
        slab = ref[start - 2:stop + 2].astype(np.float64)
        keep = None if inner is None else inner[start - 2:stop - 2].ravel()
        terms = [np.subtract(slab[(slice(2, -2), *core[1:])], mean).ravel()]
        terms += [_box_difference(slab, ax).ravel() for ax in range(ref.ndim)]
        if keep is not None:
            terms = [t[keep] for t in terms]
        spread += dot64(terms[0], terms[0])
        energy += [dot64(d, d) for d in terms[1:]]
    energy /= float(2 * 3**ref.ndim) ** 2  # the gradient is d / (2 * 3**ndim)
    return energy / max(spread, 1e-300), count


def _max_radius(points, centre) -> float:
    """The largest distance from ``centre`` of a True pixel of ``points``, as
    ``sqrt(max(sum((q - centre)**2)))`` over their positions ``q`` gives it (the same
    sums), row block by row block: no positions made."""
    top = 0.0
    axes = [np.arange(n, dtype=np.float64) - c for n, c in zip(points.shape, centre)]
    for block in _blocks(points):
        if not points[block].any():
            continue
        grid = np.meshgrid(axes[0][block], *axes[1:], indexing="ij", sparse=True)
        r2 = grid[0] ** 2
        for a in grid[1:]:
            r2 = r2 + a**2
        top = max(top, float(np.max(r2, where=points[block], initial=0.0)))
    return float(np.sqrt(top))


def _box_difference(ref, ax: int) -> np.ndarray:
    """``2 * 3**ndim`` times the central difference along ``ax`` of ``ref``'s 3-pixel box mean
    (``np.gradient`` of ``uniform_filter(ref, 3)``), on the pixels at least 2 from every
    edge (where no boundary mode reaches): the box summed across the other axes, then
    ``t[i+2] + t[i+1] - t[i-1] - t[i-2]`` along ``ax`` (a few passes over the frame where
    the filter, the gradient of every pixel and their boolean gathers took 20 ms at
    512 px)."""
    t = ref
    for b in range(ref.ndim):
        if b != ax:  # the 3-sum across axis b, kept on indices 2..n-3
            n = t.shape[b]
            t = _part(t, b, 1, n - 3) + _part(t, b, 2, n - 2) + _part(t, b, 3, n - 1)
    n = t.shape[ax]
    d = _part(t, ax, 3, n - 1) + _part(t, ax, 4, n)
    d -= _part(t, ax, 1, n - 3)
    d -= _part(t, ax, 0, n - 4)
    return d


def _part(a, ax: int, start: int, stop: int) -> np.ndarray:
    """``a[start:stop]`` along axis ``ax`` (a view)."""
    index = [slice(None)] * a.ndim
    index[ax] = slice(start, stop)
    return a[tuple(index)]


def unmasked_terms(reference):
    """``(peak_curvature, noise_spread)`` of an unmasked reference from one Wiener
    estimate (the Newton step's error bar, and the peak's when the step fails).

    In single precision, as the transforms give the estimate, with every sum
    accumulated in float64: the terms are those of float64 passes to 1e-6 (the
    gain, the residual ``ref - level`` and the noise model rounded once each; an
    error bar's calibration is measured to a few %), at half their cost (the
    float64 copies, their boolean gathers and BLAS products cost 6-7 frames'
    correlations per stack)."""
    ref = np.asarray(reference)
    level, grad, _ = wiener_estimate(ref, single=True)
    mean = float(np.mean(ref, dtype=np.float64))
    spread = 0.0
    for block in _blocks(ref):
        centred = np.subtract(ref[block], mean, dtype=np.float64)
        spread += dot64(centred, centred)
    kappa = np.array([dot64(g, g) for g in grad]) / max(spread, 1e-300)
    return (kappa, int(ref.size)), _spread_terms(level, ref.astype(np.float32, copy=False), grad)


def noise_spread(reference, valid=None):
    """``(K, P)`` for the error of an unweighted least-squares shift: ``K = sum g g^T v``
    over the pixels (``g`` the reference's noiseless gradient, a Wiener estimate,
    ``v`` its noise variance fitted as ``alpha * level + beta`` over bins of the
    level, from the reference's difference to its Wiener estimate) and ``P = sum v``;
    both frames' noise alike (the factor cancels when a frame's residual scales
    them)."""
    ref = np.asarray(reference, dtype=np.float64)
    valid = np.ones(ref.shape, bool) if valid is None else np.asarray(valid, bool)
    level, grad, _ = wiener_estimate(ref, valid)
    return _spread_terms(level[valid], ref[valid], [gr[valid] for gr in grad])


def _spread_terms(lv, values, g):
    """``(K, P)`` of :func:`noise_spread` from the valid pixels' level ``lv``, their
    values and the gradient ``g`` (one array per axis, all of one shape); block by
    block (:func:`_blocks`)."""
    x, var = _binned_variance(lv, values)
    alpha, beta = (np.polyfit(x, var, 1) if x.size >= 2 and np.ptp(x) > 0
                   else (0.0, float(np.mean(var))))
    if alpha < 0:
        alpha, beta = 0.0, float(np.mean(var))
    floor = 1e-12 * max(float(var.max()), 1e-300)
    spread, total = np.zeros((len(g), len(g))), 0.0
    for block in _blocks(lv):
        # in the level's precision (a float64 scalar would promote a float32 level)
        v = np.multiply(lv[block], float(alpha))
        v += float(beta)
        np.maximum(v, floor, out=v)
        total += float(np.sum(v, dtype=np.float64))
        for a in range(len(g)):
            for b in range(a, len(g)):
                spread[a, b] += dot64(g[a][block], g[b][block], v)
    spread[np.tril_indices(len(g), -1)] = spread[np.triu_indices(len(g), 1)]
    return spread, total


#: elements per block of the noise model's passes (:func:`_blocks`)
_BLOCK = 1 << 15


def _blocks(a) -> list:
    """Slices of ``a``'s first axis of about ``_BLOCK`` elements: a block's temporaries
    stay in the cache, and in memory already mapped (the pages of a fresh 512 px
    temporary cost as much as the arithmetic on it, on this machine)."""
    if a.ndim == 0:
        return [()]
    step = max(1, _BLOCK // max(1, a.size // max(a.shape[0], 1)))
    return [slice(i, i + step) for i in range(0, a.shape[0], step)] or [slice(None)]


def _binned_variance(lv, values, bins: int = _BINS, sample: int = 40000):
    """``(x, var)``: the mean level and the mean squared residual ``values - lv`` in
    ``bins`` bins of ``lv`` (both of one shape) holding about as many pixels each; the
    bins' edges are quantiles of an evenly strided sample (in flat order) of at most
    ``sample`` levels (a sort of every pixel of a 512 px frame cost 40 ms, a third of
    the reference's noise model), every pixel then counted in its bin, block by block
    (:func:`_blocks`)."""
    if lv.size == 0:
        return np.zeros(0), np.zeros(0)
    # gathered by index: a strided view's flat iterator took 1.3 ms for 40000 levels
    picked = lv[np.unravel_index(np.arange(0, lv.size, max(1, lv.size // sample)), lv.shape)]
    picked.sort()  # (a partition at the 15 ranks took twice as long)
    cuts = picked[(np.arange(1, bins) * picked.size) // bins]
    counts, sums = np.zeros(bins, np.intp), np.zeros((2, bins))
    for block in _blocks(lv):
        level = lv[block]
        which = _cuts_reached(level, cuts).ravel()
        e2 = np.subtract(values[block], level)
        e2 *= e2
        counts += np.bincount(which, minlength=bins)
        sums[0] += np.bincount(which, level.ravel(), minlength=bins)
        sums[1] += np.bincount(which, e2.ravel(), minlength=bins)
    full = counts > 0
    x, var = sums[:, full] / counts[full]
    return x, var


def _cuts_reached(values, cuts) -> np.ndarray:
    """How many of the ascending ``cuts`` each value is at or above (``searchsorted``'s
    "right" side), as bin numbers: one comparison per cut, 3x faster than the search
    for the few bins here."""
    out = np.zeros(np.shape(values), np.int8 if len(cuts) <= 127 else np.intp)
    above = np.empty(out.shape, bool)  # one buffer: a fresh one per cut faulted its pages in
    for c in cuts:
        out += np.greater_equal(values, c, out=above)
    return out.astype(np.intp)


def _eroded(valid, radius: int, norm: int) -> np.ndarray:
    """``valid`` without its pixels within ``radius`` (an L1 distance for ``norm=1``,
    Euclidean for 2) of an invalid pixel or of the outside: ``radius`` iterations of
    the cross's binary erosion, or a Euclidean distance transform's ``> radius``, as
    an AND of the shifted mask (a few ms where the distance transform cost 18 ms of a
    512 px reference's setup and the erosion 7)."""
    valid = np.asarray(valid, bool)
    if radius <= 0:
        return valid.copy()
    offsets = np.indices((2 * radius + 1,) * valid.ndim).reshape(valid.ndim, -1).T - radius
    near = (np.abs(offsets).sum(axis=1) if norm == 1 else (offsets**2).sum(axis=1)) <= radius**norm
    padded = np.pad(valid, radius, constant_values=False)
    out = valid.copy()
    for o in offsets[near]:
        out &= padded[tuple(slice(radius + k, radius + k + n) for k, n in zip(o, valid.shape))]
    return out


def _rank_bins(values, bins: int) -> np.ndarray:
    """Each value's bin when the values, in a stable sort, are split into ``bins``
    chunks as ``np.array_split`` splits (ties in the order they come), without the
    argsort (30 ms of a 512 px reference's setup): a value sort gives the values at
    the chunks' first ranks, a value is past each one it is not below, and only
    values repeated at a cut need their rank."""
    n = values.size
    if n == 0:
        return np.zeros(0, np.intp)
    starts = np.cumsum([n // bins + (b < n % bins) for b in range(bins - 1)], dtype=np.intp)
    ordered = np.sort(values)
    cuts = ordered[np.minimum(starts, n - 1)]
    out = _cuts_reached(values, cuts[starts < n])
    for v in np.unique(cuts):
        lo, hi = np.searchsorted(ordered, v, "left"), np.searchsorted(ordered, v, "right")
        if hi - lo > 1:  # ties: in the order they come
            tied = np.flatnonzero(values == v)
            out[tied] = np.searchsorted(starts, lo + np.arange(tied.size), side="right")
    return out


class RefineResult:
    """The outcome of one refinement: warp ``params``, ``gain``, ``offset``, the
    correlation ``quality`` over the pixels used, ``iterations``, ``converged``, the
    fitted ``noise`` model ``(alpha, beta)`` (None when not weighted) and the
    ``covariance`` of ``params``."""

    __slots__ = ("_quality", "converged", "covariance", "gain", "iterations", "noise", "offset",
                 "params", "points")

    def __init__(self, params, quality, gain, offset, iterations, converged, points, noise=None,
                 covariance=None):
        self.params, self._quality, self.gain, self.offset = params, quality, gain, offset
        self.iterations, self.converged, self.points = iterations, converged, points
        self.noise = noise
        #: ``(n_params, n_params)`` covariance of ``params`` (the inverse of the weighted
        #: normal matrix, gain and offset marginalised), None when no step was taken
        self.covariance = covariance

    @property
    def quality(self) -> float:
        """The correlation of the moved frame with the reference over the points used
        (computed when first asked for: a translation's caller does not)."""
        if isinstance(self._quality, tuple):
            m, r, used = self._quality
            self._quality = 0.0 if m is None else pearson(m[used], r[used])
        return self._quality

    @property
    def sigma(self) -> np.ndarray:
        """One-sigma error of each warp parameter (NaN when unknown)."""
        if self.covariance is None:
            return np.full(len(self.params), np.nan)
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))


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
    noise_first : bool
        Fit the noise model at the start (a fine correlation peak is close
        enough for its residuals to be noise), so that the first step is
        weighted already: two steps instead of three. The Jacobian's scale is
        an estimate (a few % off on sharp content), so the steps go on to
        ``tol`` rather than trust one.
    """

    def __init__(self, reference, ref_valid, mov_valid, model: Model, *,
                 select=None, margin=3, max_iter=12, tol=1e-4, centre=None, noise_first=False):
        ref = np.asarray(reference, dtype=np.float64)
        self.shape, self.ndim, self.model = ref.shape, ref.ndim, model
        if ref.ndim not in model.frame_ndims:
            raise ValueError(
                f"the {model.name} model is for {model.frames_text} frames; these are {ref.ndim}D")
        ref_valid = np.ones(ref.shape, bool) if ref_valid is None else np.asarray(ref_valid, bool)
        mov_valid = ref_valid if mov_valid is None else np.asarray(mov_valid, bool)
        self.margin, self.max_iter, self.tol = margin, max_iter, tol
        self.noise_first = bool(noise_first)
        if centre is None:
            centre = (np.asarray(ref.shape, dtype=float) - 1.0) / 2.0
        self.centre = np.asarray(centre, dtype=float)
        # low dose (contrast under _LOW_DOSE noise sigmas): the local gain keeps the
        # lattice's peaks and the level is smoothed over 8 px; above it the radial gain
        # and a 2 px level measured closer to the bound (sharp spots, 200 / 2000 counts)
        smooth_ref = smooth_filler(ref_valid)(ref)  # filled once: the estimate and the level
        # a 2D shift moves the frame in Fourier space: its Jacobian (the instrument of
        # the fit) leaves out, per axis, the frequencies the sampling folds (_alias)
        fourier = model.shift_only and ref.ndim == 2
        vals = ref[ref_valid]  # gathered once: the contrast (twice) and the curvature
        _, grad, self.noise, self.grad_noise, *band = wiener_estimate(
            ref, ref_valid, local=_LOW_DOSE, grad_noise=True, filled=smooth_ref, want_level=False,
            alias=fourier, values=vals, grad32=True)
        self.low_dose = _low_contrast(vals, self.noise, _LOW_DOSE)
        #: ``(kappa, n)`` of :func:`peak_curvature`, from the same estimate
        self.curvature = _curvature(ref, ref_valid, grad, vals)
        grad = band[0] if band else grad
        use = _eroded(ref_valid, margin, 1)
        count = int(np.count_nonzero(use))
        selects = select is not None and 0 < select < 1 and count > MIN_POINTS
        # a shift's fixed Jacobian rows (the gradient, the level, ones: _FixedJacobian),
        # the gradient gathered straight into them (a mask's gather: the points' order)
        rows = np.empty((ref.ndim + 2, count)) if fourier and not selects else None
        g = np.empty((ref.ndim, count)) if rows is None else rows[:ref.ndim]
        for out, gr in zip(g, grad):  # (float32 views: gathered, then cast)
            out[...] = gr[use]
        #: the points as an image (their order is its C order)
        self._points = use
        if selects:
            keep = max(MIN_POINTS, int(select * count))
            best = np.argpartition(-np.sum(g * g, axis=0), keep - 1)[:keep]
            best.sort()
            g = g[:, best]
            self._points = np.zeros(ref.shape, bool)
            self._points[tuple(a[best] for a in np.nonzero(use))] = True
        self.g = g
        self._d = None  # the points' positions (:attr:`d`), made when first asked for
        if not fourier:  # (a 2D shift samples the reference's own round trip, below)
            self.r = ref[self._points]
        # the level the noise model and the gain's column read: the reference smoothed
        # over a fixed _LEVEL_SIGMA, not its Wiener estimate, which at high dose keeps
        # most of each pixel's own noise (little to filter): weights that follow a
        # pixel's own noise bias the shift (sharp spots, 2000 counts: 3.6x the bound
        # against 1.1x); over 8 px, not 2: at 20 counts a 2 px level still follows the
        # spots' noise (sharp spots, 20 counts: 1.72x the bound before this and the
        # local Wiener gain, 1.35x after); at 200 / 2000 counts both cost (1.24x / 1.28x
        # -> 1.40x / 1.37x), hence only at low dose
        # in place where the filled reference is a copy (it is not read again)
        own = not np.shares_memory(smooth_ref, ref) and not np.shares_memory(smooth_ref, reference)
        self.level = ndi.gaussian_filter(smooth_ref, _LEVEL_SIGMA if self.low_dose else 2.0,
                                         mode="mirror", output=smooth_ref if own else None
                                         )[self._points]
        self.n_points = g.shape[1]
        self.rmax = _max_radius(self._points, self.centre) if self.n_points else 0.0
        # noise-model bins: quantiles of the smoothed reference level
        self.bins = _rank_bins(self.level, _BINS)
        self.bin_level = np.bincount(self.bins, self.level, _BINS) / np.maximum(
            np.bincount(self.bins, minlength=_BINS), 1)
        #: the moving frame's pixels more than ``margin`` from an invalid one or the edge
        self.far = _eroded(mov_valid, margin, 2)
        self.fill = nearest_fill_index(mov_valid)
        #: 2D translation moves the frame in Fourier space (no interpolation bias: the
        #: spline reached 3.1x the bound at 200 counts on real content); 3D volumes keep
        #: the spline, whose filled block rings less into the few planes a volume has
        #: (measured, 16x32x32 noiseless: 0.08 px off in Fourier space, 0.01 with it)
        self.fourier = model.shift_only and self.ndim == 2
        self._usable_cache = {}
        #: the translation model's transforms in single precision (4x faster here) unless
        #: the tolerance asks for more: their rounding moves the fixed point by ~1e-6 px
        self._complex = np.complex64 if tol >= _SINGLE_TOL else np.complex128
        #: a shift's Jacobian (the reference's gradient, its smoothed level for the gain,
        #: ones for the offset) is the same wherever the frame is sampled: built once
        self._fixed_jac = None
        if self.fourier:
            if rows is None:  # (points selected: the gradient's rows were cut)
                rows = np.empty((self.ndim + 2, self.n_points))
                rows[:self.ndim] = self.g
            np.negative(self.level, out=rows[self.ndim])
            rows[self.ndim + 1] = -1.0
            self._fixed_jac = _FixedJacobian(rows)
        # the translation model's frame, mirrored out by _pad, on a fast FFT size
        self._pad = [min(_MIRROR, n - 1) for n in self.shape]
        self._pshape = tuple(sfft.next_fast_len(n + 2 * p, real=True)
                             for n, p in zip(self.shape, self._pad))
        # the points' flat indices in the frame's rows of the padded frame (what
        # _sample transforms back): where the points' image, padded along the last axis,
        # is True (its C order is theirs; no index arithmetic on the points)
        self._inner = tuple(slice(p, p + n) for p, n in zip(self._pad, self.shape))
        #: the frame's rows of the padded frame, whole along the last axis (what _sample
        #: transforms back and gathers the points from)
        self._rows = self._inner[:-1] + (slice(None),)
        rows_image = np.zeros((*self.shape[:-1], self._pshape[-1]), bool)
        rows_image[..., self._inner[-1]] = self._points
        self._flat = np.flatnonzero(rows_image)
        if self.fourier:  # the reference as a frame is sampled (the same single-precision
            # round trip): a frame equal to it has no residual at 0 and stays there
            # (at a zero shift the phase is 1: its product, a fresh spectrum, left out)
            rows = inverse_rows(self.prepare(ref), self._pshape, self._rows)
            self.r = rows.reshape(-1)[self._flat].astype(np.float64, copy=False)

    @property
    def d(self) -> np.ndarray:
        """``(ndim, K)``: the points' positions from the centre (made when first asked
        for: a 2D shift reads none)."""
        if self._d is None:
            # filled before it is published: frames refine on several threads at once,
            # and one that found a half-filled array warped by garbage positions
            q = np.nonzero(self._points)
            d = np.empty((self.ndim, q[0].size))
            for out, qa, c in zip(d, q, self.centre):  # cast and centred in one pass
                np.subtract(qa, c, out=out)
            self._d = d  # (two threads may both make it: the same values)
        return self._d

    @property
    def n_params(self) -> int:
        return self.model.n_params(self.ndim)

    def prepare(self, frame) -> np.ndarray:
        """What :meth:`run` samples the frame from (masked pixels filled first): its
        spectrum for 2D translation (the frame moves in Fourier space: exact for the
        band-limited frame, no interpolation bias), else its cubic spline coefficients."""
        if self.fourier:
            # mirrored a few pixels out: the periodic extension's jump between opposite
            # edges rings (as 1/distance) well away from the pixels used
            # filled in the transform's precision (the same values as a float64 fill
            # then cast: the fill copies pixels), no float64 copy of the frame
            real = np.float32 if self._complex == np.complex64 else np.float64
            image = filled(frame, self.fill, dtype=real)
            pads = [(p, q - n - p) for p, q, n in zip(self._pad, self._pshape, self.shape)]
            return sfft.rfftn(np.pad(image, pads, mode="symmetric"))
        return ndi.spline_filter(filled(frame, self.fill), order=3, mode="mirror")

    def _phase(self, shift) -> np.ndarray:
        """``exp(2 pi i k . shift)`` on the rfft grid (the frame moved by ``-shift``:
        sampled at ``q + shift``); the Nyquist terms of even axes take its real part,
        so the moved frame stays real."""
        out = None
        for ax, (n, u) in enumerate(zip(self._pshape, shift)):
            last = ax == self.ndim - 1
            f = sfft.rfftfreq(n) if last else sfft.fftfreq(n)
            e = np.exp(2j * np.pi * f * u)
            if n % 2 == 0:
                e[n // 2] = np.cos(np.pi * u)
            shape = [1] * self.ndim
            shape[ax] = e.size
            e = e.reshape(shape).astype(self._complex, copy=False)
            out = e if out is None else out * e
        return out

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
        """The moving frame at every ``pos`` (meaningless where unusable): for a 2D
        shift the frame moved in Fourier space (one inverse transform) and gathered at
        the reference's pixels, else its spline. A 3D shift puts every spline sample at
        the same fraction of a pixel, so the cubic weights are shared: 4-tap passes
        over the frame and a gather, a few times cheaper than general sampling."""
        if not self.model.shift_only:
            return ndi.map_coordinates(coeffs, pos, order=3, mode="mirror", prefilter=False)
        if self.fourier:
            # the frame's rows only, transformed in place (inverse_rows: the same values)
            moved = inverse_rows(coeffs * self._phase(params), self._pshape, self._rows)
            return moved.reshape(-1)[self._flat].astype(np.float64, copy=False)
        whole = np.floor(params)
        out = coeffs
        for ax, frac in enumerate(params - whole):
            out = ndi.correlate1d(out, _cubic_weights(frac), axis=ax, mode="mirror", origin=-1)
        idx = np.rint(self.d + (self.centre + whole)[:, None]).astype(np.intp)
        return out[tuple(np.clip(i, 0, n - 1) for i, n in zip(idx, self.shape))]

    def _usable_shift(self, shift) -> tuple:
        """:meth:`_usable` for a shift, by its nearest whole pixels, the usable points
        per noise bin and the usable points as float64 weights (cached: the frames of a
        drifting stack keep landing on the same ones; read-only)."""
        key = tuple(int(v) for v in np.rint(shift))
        hit = self._usable_cache.get(key)
        if hit is None:
            ok = self._usable_whole(key)
            okf = ok.astype(np.float64)
            okf.setflags(write=False)
            hit = (ok, np.bincount(self.bins, ok, _BINS), okf)
            # at most 64 shifts, and 32 MB of weights (16 shifts of a 512 px frame)
            if len(self._usable_cache) >= max(4, min(64, (32 << 20) // max(okf.nbytes, 1))):
                self._usable_cache.clear()
            self._usable_cache[key] = hit
        return hit

    def _usable_whole(self, whole) -> np.ndarray:
        """:meth:`_usable` at the points moved by whole pixels, as a shifted image (point
        ``q`` reads ``far[q + whole]``): the mask of points far from an invalid pixel is
        False near the frame's edge too, and outside the frame the shifted image is (a
        gather of the points' float positions cost 4 ms per new whole-pixel shift at
        512 px)."""
        return moved_mask(self.far, [-k for k in whole])[self._points]

    def _usable(self, pos) -> np.ndarray:
        """Points whose sample is at least ``margin`` from the frame's edge and from the
        moving frame's invalid pixels."""
        m = self.margin
        ok = np.ones(pos.shape[1], bool)
        for ax, n in enumerate(self.shape):
            ok &= (pos[ax] >= m) & (pos[ax] <= n - 1 - m)
        idx = tuple(np.clip(np.rint(p).astype(np.intp), 0, n - 1)
                    for p, n in zip(pos, self.shape))
        ok &= self.far[idx]
        return ok

    def _fit_noise(self, e, count):
        """The noise model ``(alpha, beta)``: the residual's variance as
        ``alpha * level + beta``, fitted over bins of the reference's smoothed level
        (``count``: the usable points per bin)."""
        has = count > 0
        var = np.bincount(self.bins, e * e, _BINS)[has] / count[has]
        x = self.bin_level[has]
        if has.sum() >= 2 and np.ptp(x) > 0:
            alpha, beta = np.polyfit(x, var, 1, w=np.sqrt(count[has]))
        else:
            alpha, beta = 0.0, float(np.mean(var))
        if alpha < 0:
            alpha, beta = 0.0, float(np.average(var, weights=count[has]))
        elif beta < 0:  # no noise source has a negative floor: through the origin
            w = count[has]
            alpha, beta = float(np.sum(w * x * var) / max(np.sum(w * x * x), 1e-300)), 0.0
        floor = max(float(var.min()) * 0.1, 1e-12 * float(var.max()), 1e-300)
        if not var.max() > 0:  # no residual at all (a frame equal to the reference): uniform
            floor = 1.0
        return float(alpha), float(beta), floor

    def _weights(self, noise, okf):
        """Inverse residual variance of the noise model (0 where ``okf`` is)."""
        alpha, beta, floor = noise
        var = self.level * alpha
        var += beta
        np.maximum(var, floor, out=var)
        return np.divide(okf, var, out=var)

    def run(self, frame, params, *, coeffs=None, noise=None) -> RefineResult:
        """Refine ``params`` (the warp, see :class:`~._base.Model`) for ``frame``;
        ``noise``: a noise model to weight by from the first step (else the first step
        is unweighted and its residuals give the model)."""
        params = np.array(params, dtype=np.float64)
        if coeffs is None:
            coeffs = self.prepare(frame)
        gain, offset, m, used, last = 1.0, 0.0, None, None, None
        converged, weighted, it = False, False, 0
        k = self.n_params
        need = 8 * (k + 2)
        # the gain's column is the smoothed reference, not the noisy one: regressing on
        # noisy values dilutes the gain towards 0 (errors in variables); the clean
        # column is an instrument whose equation is unbiased. A shift's Jacobian is the
        # reference's gradient wherever the frame is sampled: its products are formed
        # once, for every frame and step (_FixedJacobian)
        jac = self._fixed_jac if self.fourier else self._general_jac()
        for it in range(1, self.max_iter + 1):
            if self.fourier:  # a shift: which points are usable depends on its whole pixels
                pos, (ok, count, okf) = None, self._usable_shift(params)
            else:
                pos, jgeo = self._warp(params)
                jac[:, :k] = jgeo
                ok = self._usable(pos)
                count = np.bincount(self.bins, ok, _BINS)
            if count.sum() < need:
                break
            if pos is not None:  # (a shift's comes with its usable points, cached)
                okf = ok.astype(np.float64)
            m, used = self._sample(coeffs, pos, params), ok
            first = self.noise_first and it == 1 and noise is None
            # unusable points take part with weight 0 (cheaper than cutting them out)
            e = _residual(m, self.r, gain, offset, okf)
            if first:  # the noise model from the start, its gain and offset taken out
                noise = self._fit_noise(_residual(m, self.r, *_gain_offset(m, self.r, okf), okf),
                                        count)
            elif it > 1:
                noise = self._fit_noise(e, count)
            weighted = noise is not None
            w = self._weights(noise, okf) if weighted else okf
            normal, rhs = _normal_equations(jac, w, e)
            try:
                step = -np.linalg.solve(self._response(normal, w, weighted), rhs)
            except np.linalg.LinAlgError:
                break
            # the error bar is that of the last solved step: its terms, kept until the end
            last = (jac, normal, w, e, ok, weighted)
            if not np.all(np.isfinite(step)):
                break
            params += step[:k]
            gain += step[k]
            offset += step[k + 1]
            moved = self.model.step_size(step[:k], self.rmax)
            if moved < self.tol and weighted:
                converged = True
                break
        cov = None if last is None else self._step_covariance(*last)
        return RefineResult(params, (m, self.r, used), gain, offset, it, converged,
                            int(self.n_points), noise, cov)

    def _general_jac(self) -> np.ndarray:
        """A fresh Jacobian ``(K, n_params + 2)`` whose gain and offset columns are
        filled (the geometric ones change with the warp)."""
        k = self.n_params
        jac = np.empty((self.n_points, k + 2))
        jac[:, k] = -self.level
        jac[:, k + 1] = -1.0
        return jac

    def _without_grad_noise(self, normal, w):
        """``normal`` without what the noise of the Jacobian adds to it: the Jacobian
        is the reference's filtered gradient, whose noise adds ``sum w * var(noise
        gradient)`` to ``J^T W J`` but not to how the residual responds to the shift
        (``J^T W g``)."""
        k = self.n_params
        out = normal.copy()
        out[np.arange(k), np.arange(k)] -= float(np.sum(w)) * self.grad_noise
        return out

    def _response(self, normal, w, weighted):
        """The matrix a step solves with: a weighted translation's without the
        Jacobian's noise (:meth:`_without_grad_noise`), so the step is the Newton step
        of how the residual responds (at 20 counts the noise made half the plain
        normal matrix, and each step went half the way: 5-8 steps to the tolerance);
        the plain one elsewhere, or where that would leave less than a quarter of its
        diagonal. The fixed point, ``J^T W e = 0``, is the same."""
        if not (self.fourier and weighted):
            return normal
        response = self._without_grad_noise(normal, w)
        k = self.n_params
        if np.all(np.diag(response)[:k] > 0.25 * np.diag(normal)[:k]):
            return response
        return normal

    def _step_covariance(self, jac, normal, w, e, ok, weighted):
        """:func:`_covariance` of one solved step, the Jacobian's own noise taken out of
        a weighted translation's bread (:meth:`_without_grad_noise`)."""
        k = self.n_params
        bread = normal
        if self.fourier and weighted:
            bread = self._without_grad_noise(normal, w)
        if not weighted:
            return _covariance(bread, k, e[ok], None)
        we = w * e
        if isinstance(jac, _FixedJacobian):
            meat = jac.gram(we * we)
        else:
            scores = jac * we[:, None]
            meat = scores.T @ scores
        return _covariance(bread, k, None, meat)


class _FixedJacobian:
    """A Jacobian that stays the same from step to step and frame to frame (a
    translation's, ``(p, K)`` as rows): ``J^T W J`` for any weights from the products
    of its columns, formed once in float32 (one pass over ``p (p + 1) / 2`` rows, where
    weighting the Jacobian and multiplying cost three passes over ``p`` rows of
    float64); the normal matrix only scales the step, so its 1e-6 rounding moves
    nothing but the path to the fixed point, which ``J^T W e`` (float64) decides."""

    def __init__(self, rows):
        self.rows = np.ascontiguousarray(rows, dtype=np.float64)
        p = self.rows.shape[0]
        self.upper = np.triu_indices(p)
        # row by row, each float64 product rounded once into its float32 row (the
        # fancy-indexed whole took 23 ms at 512 px; a float64 buffer, another pass)
        self.products = np.empty((self.upper[0].size, self.rows.shape[1]), np.float32)
        for out, i, j in zip(self.products, *self.upper):
            np.multiply(self.rows[i], self.rows[j], out=out, casting="same_kind")

    def gram(self, w) -> np.ndarray:
        """``sum_i w_i J_i J_i^T``, ``(p, p)`` in float64."""
        top = float(w.max()) if w.size else 0.0
        top = top if top > 0 else 1.0  # weights scaled to 1 at most: no overflow in float32
        w32 = np.multiply(w, 1.0 / top, out=np.empty(w.shape, np.float32), casting="same_kind")
        v = (self.products @ w32).astype(np.float64) * top
        out = np.empty((self.rows.shape[0],) * 2)
        out[self.upper] = v
        out[self.upper[::-1]] = v
        return out


def _normal_equations(jac, w, e):
    """``(J^T W J, J^T W e)`` of a Jacobian (``(K, p)`` array or :class:`_FixedJacobian`)."""
    if isinstance(jac, _FixedJacobian):
        return jac.gram(w), jac.rows @ (w * e)
    jw = jac * w[:, None]
    return jw.T @ jac, jw.T @ e


def _residual(m, r, gain, offset, okf):
    """``m - gain r - offset`` where ``okf`` is 1, 0 where it is 0."""
    e = r * -gain
    e += m
    e -= offset
    e *= okf
    return e


def _gain_offset(m, level, okf):
    """Least-squares ``(gain, offset)`` of ``m`` against ``level`` over the points where
    ``okf`` is 1 (1, 0 for equal arrays, up to rounding)."""
    n = float(okf.sum())
    lw = level * okf
    lm, mm = float(lw.sum()) / n, float(okf @ m) / n
    var = float(lw @ level) - n * lm * lm
    gain = (float(lw @ m) - n * lm * mm) / var if var > 0 else 1.0
    return gain, mm - gain * lm


def _covariance(normal, k: int, residuals=None, meat=None):
    """The ``(k, k)`` covariance of the warp parameters; gain and offset are
    marginalised. Weighted (``meat``: ``sum s s^T`` over the points, ``s`` a point's
    weighted Jacobian row times its residual), the sandwich ``N^-1 (sum s s^T) N^-1``: it holds when the noise model
    misses where the noise is (the smoothed level underestimates the
    counts on a sharp spot's flanks, where the information is: the inverse normal
    matrix alone claimed 1.7-2.2x too small an error there; on rings both agree).
    The caller takes the Jacobian's own noise out of ``normal`` first (translations).
    With unit weights, the inverse normal matrix times the residuals' variance."""
    try:
        inv = np.linalg.inv(normal)
    except np.linalg.LinAlgError:
        return None
    if meat is not None:
        return (inv @ meat @ inv)[:k, :k]
    cov = inv[:k, :k]
    if residuals is not None:
        dof = max(residuals.size - normal.shape[0], 1)
        cov = cov * float(np.sum(residuals * residuals)) / dof
    return cov


def _cubic_weights(t: float) -> np.ndarray:
    """Cubic B-spline weights of the coefficients at offsets -1, 0, 1, 2 for a sample
    ``t`` (in [0, 1)) of a pixel past the middle one."""
    t2, t3 = t * t, t * t * t
    return np.array([(1 - t) ** 3, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3]) / 6.0


def pearson(a, b) -> float:
    """Correlation coefficient of two samples, clipped to [0, 1] (no BLAS: cheap and
    free of thread contention)."""
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.clip(np.sum(a * b) / den, 0.0, 1.0)) if den > 0 else 0.0
