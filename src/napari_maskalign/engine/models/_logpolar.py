"""Rigid and similarity registration of 2D frames with a static mask.

Per frame, three steps, each starting where the last one ended:

1. **coarse rotation and scale** (:class:`LogPolar`): the Fourier magnitude
   does not move when the frame shifts, and in log-polar coordinates a
   rotation and a scale are shifts (Reddy and Chatterji 1996). A masked frame's
   magnitude is dominated by the static block's edges and the frame's borders,
   which would lock the estimate at zero; so the masked pixels are filled
   from their valid neighbours, the frame is high-passed and multiplied by a
   window that falls smoothly to zero at every mask and frame edge before the
   transform. The magnitude cannot tell a rotation from the same rotation plus
   180 degrees: both are tried in step 2.
2. **coarse shift**: the moving frame, with that rotation and scale undone
   (its mask moved along), against the reference by Padfield's masked
   normalized cross-correlation, at reduced resolution;
3. **joint refinement** (:class:`~._refine.Refiner`): Gauss-Newton on all
   parameters at once, coarse to fine (block-averaged levels down to full
   resolution), on the pixels valid in both frames, with a gain and an offset,
   the noise model of both frames and continuous estimates.

References
----------
Reddy BS, Chatterji BN. "An FFT-based technique for translation, rotation, and
scale-invariant image registration." IEEE Transactions on Image Processing
5(8):1266-1271 (1996). https://doi.org/10.1109/83.506761
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from ..kernels._grid import parabola_vertex
from ..kernels._masked import MaskedCorrelator, soft_weights
from ._fill import filled, nearest_fill_index
from ._refine import Refiner
from ._transforms import transform_parameters

if TYPE_CHECKING:  # pragma: no cover
    from ._base import Model

__all__ = ["LogPolar", "ModelRegistrar"]

#: the largest scale change the coarse step looks for (either way): +-25 %, i.e. frames
#: magnified by 0.8 to 1.25 against the reference. The refinement can carry a frame a
#: little further, but a larger change is outside what the search sees: such a frame
#: (the search's best match at its edge, or a better one beyond it) is flagged
MAX_LOG_SCALE = float(np.log(1.25))

#: log-polar peaks this close to the highest (as a fraction of its height above the
#: lowest) count as ties, and the smallest turn among them wins
PEAK_TIE = 0.85

#: how much better (correlation) a rotation beyond +-90 degrees must match than the
#: one within, which the Fourier magnitude cannot tell it from
FLIP_MARGIN = 0.1


def _power_of_two_below(n: float, least: int) -> int:
    """The largest power of two f with ``n / f >= least`` (at least 1)."""
    f = 1
    while n / (2 * f) >= least:
        f *= 2
    return f


def downsample(image, f: int) -> np.ndarray:
    """Block means of ``f x f`` pixels, ``f`` a power of two (the last rows and columns
    that do not fill a block are dropped); a block's centre sits at ``(f - 1) / 2`` in
    full pixels. Halves ``log2(f)`` times: the same blocks, faster than one reshape."""
    image = np.asarray(image, dtype=np.float64)
    while f > 1:
        h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
        image = 0.25 * (image[0:h:2, 0:w:2] + image[1:h:2, 0:w:2]
                        + image[0:h:2, 1:w:2] + image[1:h:2, 1:w:2])
        f //= 2
    return image


def pyramid(image, factors) -> dict:
    """``{f: downsample(image, f)}`` for the powers of two ``factors``, each from the last."""
    out, f, level = {}, 1, np.asarray(image, dtype=np.float64)
    for want in sorted(set(factors)):
        level = downsample(level, want // f)
        f = want
        out[want] = level
    return out


def downsample_valid(valid, f: int) -> np.ndarray:
    """Blocks whose every pixel is valid."""
    return downsample(np.asarray(valid, np.float64), f) > 0.999 if f > 1 else np.asarray(valid, bool)


def _rotation(theta: float) -> np.ndarray:
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def _small_holes(valid, largest: int = 9) -> np.ndarray:
    """Ignored pixels in groups of at most ``largest`` (hot and dead pixels, not a block)."""
    labels, n = ndi.label(~valid)
    if n == 0:
        return np.zeros(valid.shape, bool)
    sizes = np.bincount(labels.ravel())
    small = sizes <= largest
    small[0] = False
    return small[labels]


class LogPolar:
    """Coarse rotation and scale from log-polar Fourier magnitudes, mask-aware.

    Parameters
    ----------
    valid : ndarray of bool
        Valid pixels (True), already at the resolution used.
    n_angles, n_radii : int
        Samples of the half plane (180 degrees) and of log-frequency.
    """

    def __init__(self, valid, *, n_angles: int = 256, n_radii: int = 96, taper: float = 6.0):
        valid = np.asarray(valid, bool)
        self.shape = valid.shape
        self.fill = nearest_fill_index(valid)
        hann = np.outer(np.hanning(self.shape[0]), np.hanning(self.shape[1]))
        # the frame is filled from its valid neighbours before the transform, so single
        # ignored pixels (hot pixels) need no taper of their own: a dip of the window at
        # each would print a pattern of its own on the spectrum
        self.window = soft_weights(valid | _small_holes(valid), taper) * hann
        angles = np.linspace(-np.pi / 2, np.pi / 2, n_angles, endpoint=False)
        self.log_r = np.linspace(np.log(0.03), np.log(0.45), n_radii)
        radii = np.exp(self.log_r)
        ky, kx = np.outer(np.sin(angles), radii), np.outer(np.cos(angles), radii)
        # positions in the rfft2 half spectrum, rows shifted so that ky = 0 is the middle
        self.coords = [ky * self.shape[0] + self.shape[0] // 2, kx * self.shape[1]]
        self.d_angle = np.pi / n_angles
        self.d_log = float(self.log_r[1] - self.log_r[0])
        self.radial_window = np.hanning(n_radii + 2)[1:-1]

    def transform(self, image) -> np.ndarray:
        """The image's log-polar magnitude spectrum (angles x log-radii), zero mean."""
        f = filled(image, self.fill)
        f -= ndi.gaussian_filter(f, 3.0)  # high-pass: the smooth background goes
        f *= self.window
        f -= f.sum() / self.window.sum() * self.window
        mag = np.abs(sfft.fftshift(sfft.rfft2(f), axes=0))
        mag = np.log1p(mag / (np.median(mag) + 1e-300))
        polar = ndi.map_coordinates(mag, self.coords, order=1, mode="nearest")
        polar -= polar.mean()
        return polar * self.radial_window

    def spectrum(self, polar) -> np.ndarray:
        """The conjugate spectrum of a reference's log-polar image (what
        :meth:`estimate` correlates with), zero-padded along log-radius."""
        n_a, n_r = polar.shape
        return np.conj(sfft.rfft2(polar, (n_a, 2 * n_r)))

    def estimate(self, ref_spectrum, mov_polar, scale: bool) -> tuple[float, float, bool]:
        """``(angle, log_scale, beyond)`` of the warp that takes reference pixels to the
        moving frame's content (angle in radians, modulo pi); ``scale=False`` keeps the
        scale 1. ``beyond``: the scale lies at or beyond the search's +-25 %
        (``MAX_LOG_SCALE``): the best match is within a sample of the searched range's
        edge (+-22 % or more), or a better one lies beyond it, up to twice as far (the
        estimate is then not to be trusted)."""
        n_a, n_r = mov_polar.shape
        size = (n_a, 2 * n_r)
        cc = sfft.irfft2(sfft.rfft2(mov_polar, size) * ref_spectrum, size)
        reach = int(np.ceil(MAX_LOG_SCALE / self.d_log)) if scale else 0  # all of +-25 %
        cols = np.r_[0 : reach + 1, 2 * n_r - reach : 2 * n_r] if reach else np.array([0])
        sub = cc[:, cols]
        beyond = False
        if reach:  # twice as far as the search: does a better match lie out there?
            outer = np.r_[reach + 1 : 2 * reach + 1, 2 * n_r - 2 * reach : 2 * n_r - reach]
            beyond = bool(cc[:, outer].max() > sub.max())
        # a pattern with rotational symmetry (a hexagonal lattice turned by 60 degrees
        # looks the same) gives several near-equal peaks: take the smallest turn among
        # those within PEAK_TIE of the highest
        profile = sub.max(axis=1)
        local = (profile >= np.roll(profile, 1)) & (profile >= np.roll(profile, -1))
        top = float(profile.max())
        low = float(profile.min())
        near = np.flatnonzero(local & (profile >= low + PEAK_TIE * (top - low)))
        turn = np.abs(np.where(near > n_a / 2, near - n_a, near))
        ia = int(near[np.argmin(turn)])
        ic = int(np.argmax(sub[ia]))
        da = float(parabola_vertex(sub[(ia - 1) % n_a, ic], sub[ia, ic], sub[(ia + 1) % n_a, ic]))
        jr = int(cols[ic])
        dr = (float(parabola_vertex(cc[ia, (jr - 1) % size[1]], cc[ia, jr], cc[ia, (jr + 1) % size[1]]))
              if reach else 0.0)
        k_a = ia + da
        k_a = k_a - n_a if k_a > n_a / 2 else k_a
        k_r = (jr if jr <= n_r else jr - size[1]) + dr
        # the moving spectrum is the reference's turned with the content and shrunk by
        # its scale; a turn that is counterclockwise in (row, col) lowers the polar
        # angle atan2(ky, kx). The warp (reference -> moving) turns and magnifies by
        # what the content did.
        # a peak within a sample (about 3 %) of the edge may be the edge, not the scale
        beyond = beyond or (reach > 0 and abs(k_r) >= reach - 1)
        return float(-k_a * self.d_angle), float(-k_r * self.d_log), beyond


class ModelRegistrar:
    """Registers 2D frames onto one reference with a rigid or similarity transform.

    Everything that depends only on the reference and the masks (the log-polar
    spectrum, the reduced levels, each level's :class:`~._refine.Refiner`) is
    built once per reference.

    Parameters
    ----------
    reference : ndarray, 2D
    ref_valid, mov_valid : ndarray of bool
        Valid pixels of the reference and of the frames (True = valid).
    model : Model
        A model with a rotation (and a scale): rigid or similarity.
    overlap_ratio : float
        For the coarse shift (as in :class:`~._masked.MaskedCorrelator`).
    """

    def __init__(self, reference, ref_valid, mov_valid, model: Model, *, overlap_ratio=0.3):
        ref = np.asarray(reference, dtype=np.float64)
        if ref.ndim != 2:
            raise ValueError(f"the {model.name} model needs 2D frames; these are {ref.ndim}D")
        self.model, self.shape = model, ref.shape
        self.ref_valid = np.ones(ref.shape, bool) if ref_valid is None else np.asarray(ref_valid, bool)
        self.mov_valid = self.ref_valid if mov_valid is None else np.asarray(mov_valid, bool)
        self.overlap_ratio = overlap_ratio
        side = min(self.shape)
        self.f_polar = _power_of_two_below(side, 128)
        self.f_coarse = _power_of_two_below(side, 96)
        # the coarse level, then full resolution: the coarse level's estimate is already
        # well inside the full level's reach (measured: no intermediate level needed)
        self.levels = sorted({self.f_coarse, 1}, reverse=True)
        self.polar = LogPolar(downsample_valid(self.mov_valid, self.f_polar))
        self.set_reference(ref)

    def set_reference(self, reference) -> None:
        """Rebuild everything that depends on the reference (same masks)."""
        ref = np.asarray(reference, dtype=np.float64)
        self.reference = ref
        self.ref_polar = self.polar.spectrum(self.polar.transform(downsample(ref, self.f_polar)))
        fc = self.f_coarse
        self.ref_coarse = downsample(ref, fc)
        self.ref_valid_coarse = downsample_valid(self.ref_valid, fc)
        self.mov_valid_coarse = downsample_valid(self.mov_valid, fc)
        self.fill_coarse = nearest_fill_index(self.mov_valid_coarse)
        self._cache = {}
        self.refiners = {}
        for f in self.levels:
            full = f == 1
            # the coarse level only needs to bring the full one into its reach: the
            # stronger half of its pixels, to 1/300 of its pixel; its noise model
            # weights the full level from the first step. At full resolution the
            # strongest 12 % of the gradient are as accurate as 30 % (measured: 0.012 px
            # RMS either way on 512x512 frames) and half the work
            self.refiners[f] = Refiner(
                downsample(ref, f), downsample_valid(self.ref_valid, f),
                downsample_valid(self.mov_valid, f), self.model,
                select=0.12 if full else 0.5, margin=3 if full else 2,
                centre=self.level_centre(f), tol=1e-3 if full else 3e-3,
            )

    def level_centre(self, f: int) -> np.ndarray:
        """The full frame's centre in the pixels of the level reduced ``f`` times
        (a block of ``f`` pixels has its centre at ``(f - 1) / 2``)."""
        return ((np.asarray(self.shape, float) - 1) / 2 - (f - 1) / 2) / f

    def _correlator(self, turn, log_scale, lin, offset):
        """The masked correlator of the reference with the frames' mask turned by ``turn``
        degrees and scaled by ``exp(log_scale)`` at the coarse level, and that mask;
        None when they cannot overlap. Cached: a slowly turning stack reuses it."""
        key = (float(turn), float(log_scale))
        hit = self._cache.get(key)
        if hit is not None or key in self._cache:
            return hit
        moved_valid = ndi.affine_transform(
            self.mov_valid_coarse.astype(np.float64), lin, offset=offset, order=1,
            mode="constant", cval=0.0) > 0.999
        hit = None
        if moved_valid.sum() >= 16:
            try:
                hit = (MaskedCorrelator(self.ref_coarse, self.ref_valid_coarse, moved_valid,
                                        overlap_ratio=self.overlap_ratio, workers=1),
                       moved_valid)
            except ValueError:
                hit = None
        if len(self._cache) >= 64:
            self._cache.clear()
        self._cache[key] = hit
        return hit

    # -- the three steps --------------------------------------------------------
    def coarse(self, frame, levels=None) -> tuple[np.ndarray, bool]:
        """Warp parameters from the log-polar rotation and scale and the masked shift, and
        whether the scale lies at or beyond the search (:meth:`LogPolar.estimate`)."""
        if levels is None:
            levels = pyramid(frame, (self.f_polar, self.f_coarse))
        angle, log_scale, beyond = self.polar.estimate(
            self.ref_polar, self.polar.transform(levels[self.f_polar]),
            scale=self.model.scales,
        )
        fc = self.f_coarse
        mov = filled(levels[fc], self.fill_coarse)
        centre = self.level_centre(fc)
        # on a grid of 1/2 degree and 1/2 %: the refinement takes it from there, and
        # the correlator of a turned mask is reused by the frames that turned alike
        angle = np.round(np.rad2deg(angle) * 2) / 2
        log_scale = np.round(log_scale * 200) / 200
        best = None
        for turn in (angle, angle + 180.0):
            lin = np.exp(log_scale) * _rotation(np.deg2rad(turn))
            offset = centre - lin @ centre
            found = self._correlator(turn, log_scale, lin, offset)
            if found is None:  # the masks never overlap enough
                continue
            corr, moved_valid = found
            moved = ndi.affine_transform(mov, lin, offset=offset, order=1, mode="nearest")
            peak = corr.register(np.where(moved_valid, moved, 0.0))
            theta = np.deg2rad(turn)
            # the turn by 180 degrees more must match clearly better: a centrosymmetric
            # pattern (diffraction) matches both alike, and drift seldom turns that far
            if best is None or peak.quality > best[0] + FLIP_MARGIN:
                best = (peak.quality, theta, lin, np.asarray(peak.shift, float))
            if best[0] > 1.0 - FLIP_MARGIN:  # nothing can match that much better
                break
        if best is None:
            raise ValueError("the frame's valid pixels never overlap the reference's")
        _, theta, lin, shift = best
        u = -lin @ shift * fc
        return self.model.from_coarse(u, theta, lin), beyond

    def register(self, frame):
        """``(transform, quality)`` of one frame (finite on its valid pixels)."""
        transform, quality, _ = self.register_with_sigma(frame)
        return transform, quality

    def register_with_sigma(self, frame):
        """``(transform, quality, sigma)`` of one frame: ``sigma`` the one-sigma errors of
        the centre's shift (px per axis), the rotation (degrees) and the scale, from the
        full-resolution refinement's covariance (NaN when unknown). The scale's error is
        infinite when the frame's scale lies at or beyond the search's +-25 %
        (``MAX_LOG_SCALE``): the search does not bound it, and the result flags the frame."""
        levels = pyramid(frame, (1, self.f_polar, self.f_coarse))
        params, beyond = self.coarse(frame, levels)
        result, noise = None, None
        for f in self.levels:
            p = params.copy()
            p[:2] /= f
            result = self.refiners[f].run(levels[f], p, noise=noise)
            params = result.params.copy()
            params[:2] *= f
            if result.noise is not None:  # a block mean of f*f pixels: f*f times less noisy
                alpha, beta, floor = result.noise
                noise = (alpha * f * f, beta * f * f, floor * f * f)
        centre = (np.asarray(self.shape, float) - 1) / 2
        sigma = model_sigma(params, result.covariance, self.model, centre)
        if beyond:
            sigma[3] = np.inf
        return self.model.transform(params, centre), result.quality, sigma

    def xcorr_window(self, frame, transform, radius: int) -> np.ndarray:
        """The masked correlation around zero shift of the frame with its rotation and
        scale undone (the translation left), radius ``radius``: the preview."""
        lin = np.linalg.inv(np.asarray(transform, float)[:2, :2])
        centre = (np.asarray(self.shape, float) - 1) / 2
        offset = centre - lin @ centre
        moved = ndi.affine_transform(filled(frame, nearest_fill_index(self.mov_valid)), lin,
                                     offset=offset, order=1, mode="nearest")
        moved_valid = ndi.affine_transform(self.mov_valid.astype(np.float64), lin, offset=offset,
                                           order=1, mode="constant", cval=0.0) > 0.999
        corr = MaskedCorrelator(self.reference, self.ref_valid, moved_valid, overlap_ratio=0.0,
                                max_shift=radius + 1, workers=1)
        return corr.register(np.where(moved_valid, moved, 0.0), xcorr_radius=radius).xcorr


def _readout(params, model, centre) -> np.ndarray:
    """The centre's shift, rotation (degrees) and scale of a warp's registering transform."""
    t = model.transform(params, centre)[None]
    shifts, rotations, scales = transform_parameters(t, 2 * np.asarray(centre) + 1)
    return np.array([shifts[0, 0], shifts[0, 1], rotations[0], scales[0]])


def model_sigma(params, covariance, model, centre) -> np.ndarray:
    """One-sigma errors of the centre's shift (2 axes, px), rotation (degrees) and scale,
    propagated from the warp parameters' ``covariance`` (numerically: the readout is
    nearly linear over an error's size); NaN when the covariance is unknown."""
    if covariance is None:
        return np.full(4, np.nan)
    params = np.asarray(params, float)
    base = _readout(params, model, centre)
    jac = np.empty((4, len(params)))
    for j in range(len(params)):
        h = 1e-6 if j >= 2 else 1e-4
        step = params.copy()
        step[j] += h
        jac[:, j] = (_readout(step, model, centre) - base) / h
    cov = jac @ np.asarray(covariance, float) @ jac.T
    return np.sqrt(np.clip(np.diag(cov), 0.0, None))
