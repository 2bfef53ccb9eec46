"""Padfield's masked normalized cross-correlation (2012), to subpixel precision.

Against a fixed reference and a static moving mask every term built from the
reference and the masks is constant; per frame only the masked frame and its
square are transformed forward and three products transformed back (5 real
FFTs). Every term is an inverse transform of a product of held spectra, so
each can be sampled on a fine grid around the whole-pixel peak with the
matrix-multiply DFT of Guizar-Sicairos et al. (2008): true subpixel masked
registration, which scikit-image does not offer. For large transforms
(frames of a megapixel and more) the refinement instead interpolates a small
window of the whole-pixel terms cropped around the peak: the same grid, at a
cost that no longer grows with the frame.

The set-up (masks, reference) runs once on the host with numpy and scipy;
the per-frame work is written against the array API standard, so it runs
where the frames are (numpy, CuPy; array-api-strict in the tests), one frame
or a batch of frames (a leading axis) at a time.

References
----------
Padfield D. "Masked object registration in the Fourier domain." IEEE
Transactions on Image Processing 21(5):2706-2718 (2012).
https://doi.org/10.1109/TIP.2011.2181402
Guizar-Sicairos M, Thurman ST, Fienup JR. "Efficient subpixel image
registration algorithms." Optics Letters 33(2):156-158 (2008).
https://doi.org/10.1364/OL.33.000156
"""

from __future__ import annotations

import threading

import numpy as np
from scipy import ndimage as ndi

from ..backends import backend_for
from ..backends._device import namespace_of, to_host, to_namespace
from ._correlators import CorrelationPeak
from ._fft import (
    default_workers,
    fast_shape,
    irfftn,
    irfftn_rows,
    real_dtype_for,
    rfftn,
    rfftn_padded,
)
from ._finegrid import FineGridRefinement
from ._grid import outer_and, parabola_vertex

__all__ = ["CROP_FROM", "CROP_WINDOW", "MaskedCorrelator", "soft_weights"]

#: frames of at least this many pixels refine on cropped windows (see ``refine_window``)
CROP_FROM = 1024 * 1024
#: the cropped window's size per axis, in whole pixels around the peak
CROP_WINDOW = 64
#: a runner-up peak counts when more than this many whole pixels from the best one
RUNNER_UP_GAP = 2
#: ... and is looked for among this many highest whole-pixel values
RUNNER_UP_TRIES = 64


class MaskedCorrelator(FineGridRefinement):
    """Masked normalized cross-correlation against a fixed reference.

    Parameters
    ----------
    reference : ndarray
        Reference image.
    reference_mask : ndarray of bool
        True on the reference's valid pixels.
    moving_mask : ndarray of bool
        True on the moving images' valid pixels (static across frames).
    overlap_ratio : float
        Shifts whose overlap of valid pixels is below this fraction of the
        largest overlap are rejected (as in scikit-image).
    upsample_factor : float
        Shifts refined to ``1/upsample_factor`` pixel (scikit-image cannot).
    max_shift : float, optional
        Bound on ``|shift|`` per axis; also shrinks the FFT size to
        ``N + max_shift`` instead of ``2N - 1``.
    shrink : bool
        Choose the FFT size from what ``overlap_ratio`` (and ``max_shift``)
        can accept, computed once from the masks, instead of always ``2N-1``.
    taper : float, optional
        Width in pixels of a smooth (sin^2) ramp that turns the binary masks
        into weights falling to zero at mask and frame edges. The weighted
        form of Padfield's NCC is a weighted Pearson correlation; without hard
        edges its terms interpolate cleanly between pixels, which is what
        subpixel refinement needs. Default: 4 pixels when
        ``upsample_factor > 1``, none (binary masks, exactly scikit-image's
        whole-pixel result) otherwise.
    workers : int, optional
        Threads for scipy.fft.
    """

    def __init__(
        self,
        reference,
        reference_mask,
        moving_mask=None,
        *,
        moving_shape=None,
        overlap_ratio=0.3,
        upsample_factor=1,
        max_shift=None,
        shrink=True,
        taper=None,
        workers=None,
        dtype=None,
        xp=None,
        refine_window="auto",
    ):
        ref = to_host(reference)
        ref_mask = np.asarray(reference_mask, dtype=bool)
        mov_mask = ref_mask if moving_mask is None else np.asarray(moving_mask, dtype=bool)
        self.dtype = np.dtype(dtype) if dtype is not None else real_dtype_for(ref)
        self.ref_shape = ref.shape
        self.mov_shape = tuple(moving_shape) if moving_shape is not None else mov_mask.shape
        self.upsample_factor = float(upsample_factor)
        self.overlap_ratio = float(overlap_ratio)
        self.workers = default_workers(workers)
        self.eps = float(np.finfo(self.dtype).eps)
        if taper is None:
            taper = 4.0 if self.upsample_factor > 1 else 0.0
        self.taper = float(taper)
        self.mov_mask = mov_mask
        ref_w = soft_weights(ref_mask, self.taper)
        # (one static mask for both, the usual case: one distance transform)
        same = mov_mask is ref_mask or (mov_mask.shape == ref_mask.shape
                                        and np.array_equal(mov_mask, ref_mask))
        mov_w = ref_w if same else soft_weights(mov_mask, self.taper)
        self._mov_w = mov_w.astype(self.dtype)

        if max_shift is not None:
            self._max_shift = np.broadcast_to(np.asarray(max_shift, dtype=float), (ref.ndim,))
        else:
            self._max_shift = None
        self.offset = (np.array(self.mov_shape) - np.array(self.ref_shape)) / 2.0
        full = tuple(a + b - 1 for a, b in zip(self.ref_shape, self.mov_shape))
        pad = fast_shape(full)
        geo = self._geometry(pad, ref_w, mov_w, limit=None, max_overlap=None)
        if not geo["allowed"].any():
            raise ValueError(
                "no shift is allowed: the valid pixels of the two masks never overlap enough "
                "for this overlap_ratio / max_shift"
            )
        if shrink and self.ref_shape == self.mov_shape:
            # the largest |d| per axis that can be accepted sets the FFT size:
            # N + reach instead of 2N - 1
            reach = []
            for ax, d in enumerate(geo["d_axes"]):
                other = tuple(i for i in range(ref.ndim) if i != ax)
                on_axis = geo["allowed"].any(axis=other) if other else geo["allowed"]
                reach.append(int(np.nanmax(np.abs(d[on_axis]))))
            small = fast_shape(tuple(n + r for n, r in zip(self.ref_shape, reach)))
            if np.prod(small) < np.prod(pad):
                pad = small
                geo = self._geometry(pad, ref_w, mov_w, limit=reach, max_overlap=geo["max_overlap"])
        self.pad = pad
        self._mask_f_ref = geo["mask_f_ref"]
        self._mask_f_mov = geo["mask_f_mov"]
        self.allowed = geo["allowed"]
        self.overlap = np.fmax(geo["overlap"], self.eps)
        self.max_overlap = geo["max_overlap"]
        self._d_axes = geo["d_axes"]

        self.ref_mask = ref_mask
        self._ref_w = ref_w.astype(self.dtype)
        dt = self.dtype
        self.overlap = self.overlap.astype(dt, copy=False)
        self._cm = self._mask_f_mov.conj()
        if refine_window == "auto":
            refine_window = CROP_WINDOW if np.prod(self.mov_shape) >= CROP_FROM else None
        if refine_window is not None:
            refine_window = int(min(int(refine_window), *self.pad))
        self.refine_window = refine_window
        self._raw_overlap = geo["overlap"] if refine_window is not None else None
        self._rows, self._row_pos = self._needed_rows()
        self._set_namespace(np if xp is None else xp)
        self.set_reference(ref)

    def _needed_rows(self):
        """The indices of the second-to-last axis of the correlation that hold an
        accepted displacement (with a margin for cropped refinement), and each
        index's position among them (-1: not computed); None when nearly all are
        needed. Only those rows are transformed back and searched."""
        nd = len(self.pad)
        ax = nd - 2
        if nd < 2:
            return None, None
        others = tuple(i for i in range(nd) if i != ax)
        needed = self.allowed.any(axis=others)
        if self.refine_window is not None and self.upsample_factor > 1:
            grow = self.refine_window // 2 + 1
            needed = np.convolve(np.concatenate([needed[-grow:], needed, needed[:grow]]),
                                 np.ones(2 * grow + 1), mode="valid") > 0
        rows = np.flatnonzero(needed)
        if rows.size >= 0.9 * self.pad[ax]:
            return None, None
        pos = np.full(self.pad[ax], -1, dtype=np.intp)
        pos[rows] = np.arange(rows.size)
        return rows, pos

    def _on_rows(self, a):
        """``a`` (the padded shape) on the computed rows only."""
        return a if self._rows is None else np.take(a, self._rows, axis=len(self.pad) - 2)

    def _set_namespace(self, xp) -> None:
        """Copy the per-frame constants of the masks to namespace ``xp``."""
        self.xp, self._ops = xp, backend_for(xp)
        self._local = threading.local()
        dev = self._dev
        self._mask_f_ref_x = dev(self._mask_f_ref)
        self._mov_w_x = dev(self._mov_w)
        self._allowed_x = dev(self._on_rows(self.allowed))
        self._inv_overlap_x = dev(self._on_rows((1.0 / self.overlap).astype(self.dtype)))
        if self.refine_window is not None:
            self._overlap_grid = dev(self._raw_overlap.astype(np.float64))

    def _dev(self, a):
        return to_namespace(self.xp, a)

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("xp", "_ops", "_local"):
            state.pop(key, None)
        state["_fine_cache"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        xp = namespace_of(self._mov_w_x)  # the constants' arrays say where they are
        self.xp, self._ops, self._local = xp, backend_for(xp), threading.local()

    def set_reference(self, reference) -> None:
        """Swap in a new reference image with the same mask: only the terms
        that depend on the reference's pixels are recomputed (2 forward and
        2 inverse FFTs), the mask geometry is kept."""
        ref = to_host(reference)
        if ref.shape != self.ref_shape:
            raise ValueError(f"reference has shape {ref.shape}, expected {self.ref_shape}")
        dt, pad, cm = self.dtype, self.pad, self._cm
        f = np.where(self.ref_mask, ref, 0).astype(dt, copy=False)
        fw = f * self._ref_w
        self._ref_f = rfftn(fw, pad, self.workers)
        self._ref2_f = rfftn(fw * f, pad, self.workers)
        # constant terms: overlap sums of the reference under the moving mask
        const_products = (cm * self._mask_f_ref, cm * self._ref_f, cm * self._ref2_f)
        sum_f = irfftn(const_products[1], pad, self.workers)
        sum_ff = irfftn(const_products[2], pad, self.workers)
        dev = self._dev
        self._mean_f = dev(self._on_rows((sum_f / self.overlap).astype(dt)))
        self._den_f = dev(self._on_rows(np.fmax(sum_ff - sum_f * sum_f / self.overlap, 0.0).astype(dt)))
        self._ref_f_x = dev(self._ref_f)
        if self.refine_window is None:
            self._const_products = tuple(dev(p) for p in const_products)
        else:  # the reference's terms on the whole-pixel grid, cropped per frame
            self._sum_f = dev(sum_f.astype(np.float64))
            self._sum_ff = dev(sum_ff.astype(np.float64))
        self._fine_cache = {}

    # -- geometry --------------------------------------------------------
    def _geometry(self, pad, ref_mask, mov_mask, limit, max_overlap):
        """Mask spectra, overlap counts and accepted displacements at FFT size ``pad``."""
        dt = self.dtype
        mask_f_ref = rfftn(ref_mask.astype(dt), pad, self.workers)
        mask_f_mov = mask_f_ref if mov_mask is ref_mask else rfftn(mov_mask.astype(dt), pad, self.workers)
        overlap = irfftn(mask_f_mov.conj() * mask_f_ref, pad, self.workers)
        if self.taper == 0:
            overlap = np.round(overlap)  # binary masks: counts of pixels
        d_axes = [
            self._displacements(n, -(m - 1), r - 1, None if limit is None else limit[ax])
            for ax, (n, r, m) in enumerate(zip(pad, self.ref_shape, self.mov_shape))
        ]
        finite = outer_and([np.isfinite(d) for d in d_axes])
        if max_overlap is None:
            max_overlap = float(overlap[finite].max()) if finite.any() else 0.0
        allowed = finite & (overlap >= self.overlap_ratio * max_overlap) & (overlap > 0)
        if self._max_shift is not None:
            box = [
                np.nan_to_num(np.abs(d + o), nan=np.inf) <= m
                for d, o, m in zip(d_axes, self.offset, self._max_shift)
            ]
            allowed &= outer_and(box)
        return {
            "mask_f_ref": mask_f_ref,
            "mask_f_mov": mask_f_mov,
            "overlap": overlap,
            "d_axes": d_axes,
            "allowed": allowed,
            "max_overlap": max_overlap,
        }

    @staticmethod
    def _displacements(n, lo, hi, limit=None):
        """Displacement d at each circular index of an FFT of length ``n``.

        ``moving(x)`` is compared with ``reference(x + d)``; the full
        correlation covers ``lo <= d <= hi``. Index k holds d = k or d = k - n;
        indices holding neither (or beyond ``limit``) are NaN. The FFT sizes
        used here never let two displacements share an index.
        """
        k = np.arange(n, dtype=float)
        d1_ok = k <= hi
        d2 = k - n
        d2_ok = d2 >= lo
        if limit is not None:
            d1_ok &= k <= limit
            d2_ok &= -d2 <= limit
        return np.where(d1_ok, k, np.where(d2_ok, d2, np.nan))

    # -- per frame -------------------------------------------------------
    def _buffer(self, lead):
        """This thread's input buffer, the frame's rows zero-padded along the last
        axis (the padding stays zero: only the frame's part is ever written), so
        no transform pads a fresh copy; rows of zeros are never transformed."""
        shape = tuple(lead) + self.mov_shape[:-1] + (self.pad[-1],)
        buf = getattr(self._local, "buffer", None)
        if buf is None or tuple(buf.shape) != shape:
            buf = self.xp.zeros(shape, dtype=self._mov_w_x.dtype)
            self._local.buffer = buf
        return buf

    def _terms(self, mov):
        """Per-frame spectra (conjugated products) and their inverse transforms;
        ``mov`` holds one frame or a batch (leading axis) in the working dtype."""
        pad, w, ops = self.pad, self.workers, self._ops
        nd = len(pad)
        buf = self._buffer(mov.shape[: mov.ndim - nd])
        corner = (...,) + (slice(None),) * (nd - 1) + (slice(0, self.mov_shape[-1]),)
        ops.multiply_into(buf, corner, mov, self._mov_w_x)
        mf = ops.conj(rfftn_padded(buf, pad, w))
        ops.multiply_into(buf, corner, buf[corner], mov)
        m2f = ops.conj(rfftn_padded(buf, pad, w))
        prods = (mf * self._mask_f_ref_x, m2f * self._mask_f_ref_x, mf * self._ref_f_x)
        # the products are temporaries unless subpixel refinement samples them again
        keep = self.upsample_factor > 1 and self.refine_window is None
        sums = [irfftn_rows(p, pad, self._rows, w, overwrite=not keep) for p in prods]
        return prods, sums

    def _whole_pixel_ncc(self, sum_m, sum_mm, sum_mf):
        """NCC on the integer grid and the largest denominator of each frame.
        ``sum_m`` and ``sum_mm`` are used up unless cropped refinement needs them."""
        ops, xp = self._ops, self.xp
        keep = self.upsample_factor > 1 and self.refine_window is not None
        num = ops.rsub(sum_mf, sum_m * self._mean_f)
        den = sum_m * sum_m if keep else _square_in_place(sum_m)
        den *= self._inv_overlap_x
        den = ops.rsub(sum_mm, den) if not keep else sum_mm - den
        den = ops.clamp_low(den, 0.0)
        den *= self._den_f
        den = ops.sqrt(den)
        nd = len(self.pad)
        den_max = to_host(xp.max(den, axis=tuple(range(den.ndim - nd, den.ndim)))).astype(float)
        # the threshold in the working precision, as a scalar comparison would round it
        thr = ((1e3 * self.eps) * den_max).astype(self.dtype).reshape((-1,) + (1,) * nd)
        ok = den > self._dev(thr)
        ok &= self._allowed_x
        ncc = ops.clip(ops.divide_where(num, den, ok), -1.0, 1.0)
        return ncc, den_max

    def register(self, moving, *, xcorr_radius=None, fine=True) -> CorrelationPeak:
        """Register ``moving`` (finite: callers zero or refuse NaN first, see
        :func:`~napari_maskalign.engine.run._masks.finite_where_valid`)."""
        mov = self._ops.own(moving)
        if tuple(mov.shape) != self.mov_shape:
            raise ValueError(f"moving image has shape {tuple(mov.shape)}, expected {self.mov_shape}")
        return self.register_batch(mov[None, ...], xcorr_radius=xcorr_radius, fine=fine)[0]

    def register_batch(self, frames, *, xcorr_radius=None, fine=True) -> list[CorrelationPeak]:
        """Register a batch of frames (leading axis; in the working dtype, in this
        correlator's namespace): the transforms and the whole-pixel search run on
        all of them at once, the refinement frame by frame.

        ``fine=False`` (with ``upsample_factor > 1``), for a caller that refines the
        shift on its own (the Gauss-Newton refinement): the peak is the vertex of the
        parabola through the whole-pixel peak and its neighbours on each axis, which
        costs nothing (its quality the parabola's height, too low on a narrow peak),
        its ``quality_at`` gives the correlation at the refined shift and its ``fine``
        the ``1/upsample_factor`` grid's peak (the caller's fallback), each computed
        when called. A peak whose neighbours are not all accepted displacements (the
        edge of the ``max_shift`` box or of the overlap) is on the fine grid at once."""
        xp = self.xp
        frames = self._ops.astype(frames, self._mov_w_x.dtype)
        prods, (sum_m, sum_mm, sum_mf) = self._terms(frames)
        ncc, den_max = self._whole_pixel_ncc(sum_m, sum_mm, sum_mf)
        count = int(frames.shape[0])
        flat = xp.reshape(ncc, (count, -1))
        at = to_host(xp.argmax(flat, axis=1))
        best_x = [flat[b, int(at[b])] for b in range(count)]  # the maxima, without a pass
        best = np.array([float(v) for v in best_x])
        n_ties = [int(xp.count_nonzero(flat[b, ...] == best_x[b])) for b in range(count)]
        out = []
        for b in range(count):
            peak_idx = self._full_index(np.unravel_index(int(at[b]), tuple(ncc.shape[1:])))
            if n_ties[b] == 1:
                d = np.array([self._d_axes[ax][i] for ax, i in enumerate(peak_idx)], dtype=float)
            else:  # scikit-image takes the centre of tied maxima
                ties = [self._full_index(t) for t in np.argwhere(to_host(ncc[b, ...] == best_x[b]))]
                d = np.nanmean(
                    np.array([[self._d_axes[ax][i] for ax, i in enumerate(t)] for t in ties], float),
                    axis=0,
                )
            quality = float(max(best[b], 0.0))
            later = (None, None)
            if self.upsample_factor > 1 and n_ties[b] == 1:
                if self.refine_window is None:
                    frame_terms = tuple(p[b, ...] for p in prods)
                else:
                    frame_terms = (sum_m[b, ...], sum_mm[b, ...], sum_mf[b, ...])
                vertex = None if fine else self._vertex(ncc[b, ...], peak_idx, float(best[b]))
                if vertex is None:
                    sample = self._frame_sampler(peak_idx, d, frame_terms)
                    d, quality = self._refine(d, sample, float(den_max[b]))
                else:
                    later = self._later(peak_idx, d, frame_terms, float(den_max[b]))
                    d, quality = d + vertex[0], vertex[1]
            window = None
            if xcorr_radius is not None:
                window = self._gather_rows(ncc[b, ...], [
                    np.arange(-xcorr_radius, xcorr_radius + 1) % n for n in self.pad])
            second, second_d = self._runner_up(to_host(ncc[b, ...]), d)
            out.append(CorrelationPeak(shift=d + self.offset, quality=quality,
                                       peak_value=float(best[b]), xcorr=window,
                                       runner_up=second, runner_up_shift=second_d + self.offset,
                                       fine=later[0], quality_at=later[1]))
        return out

    def _later(self, peak_idx, d, frame_terms, den_max):
        """Two calls on one frame's terms (its kept spectra, or for megapixel frames its
        whole-pixel sums cropped around the peak), computed only when made: the
        ``1/upsample_factor`` grid's peak ``(shift, quality)`` around the whole-pixel
        displacement ``d``, and the normalized correlation at a given shift."""
        made = []

        def sampler():
            if not made:
                made.append(self._frame_sampler(peak_idx, d, frame_terms))
            return made[0]

        def fine():
            found, quality = self._refine(d, sampler(), den_max)
            return found + self.offset, quality

        def quality_at(shift):
            at = np.asarray(shift, dtype=float) - self.offset
            return self._fine_peak(at, 1, 1.0, sampler(), den_max)[1]

        return fine, quality_at

    def _frame_sampler(self, peak_idx, d, frame_terms):
        """Every NCC term on fine grids around the whole-pixel displacement ``d``, from
        the frame's kept spectra (or its whole-pixel sums cropped around the peak)."""
        if self.refine_window is None:
            return self._padded_sampler(frame_terms)
        return self._cropped_sampler(peak_idx, d, frame_terms)

    def _vertex(self, ncc, peak_idx, best):
        """The offset from the whole-pixel peak (``peak_idx``, value ``best``) of the
        vertex of the parabola through it and its two neighbours on each axis, within
        half a pixel and on the ``1/upsample_factor`` grid (at least 1/10 px: a start,
        free of float dust, so that a frame equal to the reference stays at 0), and the
        vertex's height (the peak's value interpolated, in [best, 1]); None when a
        neighbour is not an accepted displacement."""
        nd = len(self.pad)
        offset, rise = np.zeros(nd), 0.0
        for ax in range(nd):
            index = [np.array([i]) for i in peak_idx]
            index[ax] = (peak_idx[ax] + np.array([-1, 1])) % self.pad[ax]
            if not self.allowed[tuple(np.ix_(*index))].all():
                return None
            lo, hi = self._gather_rows(ncc, index, np.float64).reshape(2)
            offset[ax] = float(parabola_vertex(lo, best, hi))
            rise += 0.25 * (lo - hi) * offset[ax]
        grid = max(self.upsample_factor, 10.0)
        return np.round(offset * grid) / grid, float(min(max(best + rise, 0.0), 1.0))

    def _runner_up(self, ncc, d) -> tuple[float, np.ndarray]:
        """The highest separate peak of the whole-pixel ``ncc`` (one frame's, on the host)
        more than ``RUNNER_UP_GAP`` pixels from the best one's displacement ``d``: its
        value and displacement (-inf and NaN when there is none). A separate peak is a
        local maximum (3 x 3), so the best peak's own shoulder never counts; only the
        ``RUNNER_UP_TRIES`` highest values are looked at (one partition, no filter over
        the surface: a filter cost a third of a 512 px frame's registration), so a
        broad peak whose shoulder fills them has no runner-up."""
        nd = len(self.pad)
        d_axes = []
        for ax in range(nd):
            da = self._d_axes[ax]
            if self._rows is not None and ax == nd - 2:
                da = da[self._rows]
            d_axes.append(da)
        flat = ncc.reshape(-1)
        near_count = (2 * RUNNER_UP_GAP + 1) ** nd
        top = _highest(flat, min(flat.size, RUNNER_UP_TRIES + near_count))
        shape = ncc.shape
        # every candidate at once, highest first (a loop over ~90 of them, each with its
        # own 3x3 look-up, cost 8 ms of Python per 512 px frame, holding the GIL)
        idx = np.unravel_index(top, shape)
        disp = np.stack([d_axes[ax][idx[ax]] for ax in range(nd)], axis=-1).astype(float)
        values = flat[top]
        apart = ~np.all(np.abs(disp - np.asarray(d, dtype=float)) <= RUNNER_UP_GAP, axis=-1)
        which = np.flatnonzero(np.all(np.isfinite(disp), axis=-1) & apart & np.isfinite(values))
        if which.size:
            steps = np.array(list(np.ndindex(*(3,) * nd))) - 1  # the 3**nd neighbourhood
            around = ncc[tuple((idx[ax][which][:, None] + steps[None, :, ax]) % shape[ax]
                               for ax in range(nd))]
            # (a NaN neighbour makes the maximum NaN: no local maximum, as before)
            peaks = which[values[which] >= np.max(around, axis=1)]
            if peaks.size:
                at = int(peaks[0])
                full = self._full_index(tuple(int(i[at]) for i in idx))
                return float(values[at]), np.array([self._d_axes[ax][i] for ax, i in enumerate(full)],
                                                   dtype=float)
        return -np.inf, np.full(nd, np.nan)

    def _full_index(self, idx) -> tuple:
        """An index into the computed rows as an index into the padded correlation."""
        if self._rows is None:
            return tuple(int(i) for i in idx)
        ax = len(self.pad) - 2
        return tuple(int(self._rows[i]) if k == ax else int(i) for k, i in enumerate(idx))

def _square_in_place(x):
    x *= x
    return x


def soft_weights(valid: np.ndarray, taper: float) -> np.ndarray:
    """Binary valid mask -> weights ramping 0..1 over ``taper`` pixels from
    every invalid pixel and from the frame edge (float64; binary if taper is 0)."""
    valid = np.asarray(valid, dtype=bool)
    if taper <= 0:
        return valid.astype(np.float64)
    padded = np.pad(valid, 1, constant_values=False)
    dist = ndi.distance_transform_edt(padded)[tuple(slice(1, -1) for _ in range(valid.ndim))]
    return np.sin(0.5 * np.pi * np.minimum(dist / taper, 1.0)) ** 2


def _highest(flat, k: int, stride: int = 16) -> np.ndarray:
    """Indices of the ``k`` highest values of ``flat`` (NaN never among them), highest
    first. A partition of the whole surface cost half a 512 px frame's masked
    correlation; the ``k``-th highest of every ``stride``-th value is a bound that at
    least ``k`` values reach (those ``k`` themselves), so the ``k`` highest of all are
    among the values at or above it: one comparison over the surface, and a partition
    of what passes."""
    pool = np.arange(flat.size)
    if flat.size > 4 * stride * k:
        sub = flat[::stride]
        sub = np.where(np.isnan(sub), -np.inf, sub)
        bound = np.partition(sub, sub.size - k)[sub.size - k]
        pool = np.flatnonzero(flat >= bound)
    values = flat[pool]
    values = np.where(np.isnan(values), -np.inf, values)
    k = min(k, values.size)
    top = pool[np.argpartition(values, values.size - k)[values.size - k:]]
    return top[np.argsort(np.where(np.isnan(flat[top]), -np.inf, flat[top]), kind="stable")[::-1]]

