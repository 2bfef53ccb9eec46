"""Subpixel refinement of the masked NCC on fine grids around the whole-pixel peak.

Every term of the masked normalized cross-correlation is an inverse
transform of a product of spectra the correlator holds, so each can be
sampled on a ``1/u`` grid with the matrix-multiply DFT (Guizar-Sicairos et
al. 2008): from the padded spectra (exact; its cost grows with the transform
size), or, for megapixel frames, from a small window of the whole-pixel terms
cropped around the peak (a cost independent of the frame size, within one
``1/u`` step of the exact grid). A mixin of
:class:`~napari_maskalign.engine.MaskedCorrelator`.

References
----------
Guizar-Sicairos M, Thurman ST, Fienup JR. "Efficient subpixel image
registration algorithms." Optics Letters 33(2):156-158 (2008).
https://doi.org/10.1364/OL.33.000156
"""

from __future__ import annotations

import numpy as np

from ..backends import backend_for, backend_of
from ..backends._device import to_host
from ._correlators import inside_box, refine_two_stage
from ._fft import rfftn, upsampled_real

__all__ = ["FineGridRefinement"]


class FineGridRefinement:
    """The refinement steps of :class:`~._masked.MaskedCorrelator` (uses its state)."""

    def _gather_rows(self, surface, index, dtype=np.float32) -> np.ndarray:
        """:func:`_gather` on a surface computed on the needed rows only; rows that
        were not computed (no accepted displacement) read as 0."""
        if self._rows is None:
            return _gather(surface, index, dtype)
        ax = len(self.pad) - 2
        pos = self._row_pos[index[ax]]
        if (pos < 0).any():
            xp = self.xp
            shape = list(surface.shape)
            shape[ax] = 1
            surface = backend_for(xp).concat([surface, xp.zeros(tuple(shape), dtype=surface.dtype)],
                                             axis=ax)
            pos = np.where(pos < 0, surface.shape[ax] - 1, pos)
        return _gather(surface, [pos if k == ax else i for k, i in enumerate(index)], dtype)

    def _constants_on(self, starts, region, u):
        """Overlap and reference sums on a fine grid; cached, since frames of a
        slowly drifting stack keep landing on the same grids."""
        key = (tuple(np.round(starts, 9)), region, u)
        hit = self._fine_cache.get(key)
        if hit is None:
            hit = upsampled_real(self._const_products, self.pad, starts, region, u).astype(np.float64)
            if region == 1:  # one point, at a refined shift: not met again
                return hit
            if len(self._fine_cache) > 256:
                self._fine_cache.clear()
            self._fine_cache[key] = hit
        return hit

    def _padded_sampler(self, prods):
        """Every NCC term on a fine grid from the padded spectra (matrix-multiply DFT)."""

        def sample(starts, region, u):
            overlap, sum_f, sum_ff = self._constants_on(starts, region, u)
            frame = upsampled_real(prods, self.pad, starts, region, u).astype(np.float64)
            return (overlap, sum_f, sum_ff, *frame)

        return sample

    def _cropped_sampler(self, peak_idx, d0, frame_sums):
        """Every NCC term on a fine grid, interpolated from ``refine_window`` whole
        pixels per axis around the peak (their real FFT, then the same
        matrix-multiply DFT on that small spectrum)."""
        w = self.refine_window
        first = [int(i) - w // 2 for i in peak_idx]
        index = [np.arange(f, f + w) % n for f, n in zip(first, self.pad)]
        consts = [_gather(g, index, np.float64) for g in (self._overlap_grid, self._sum_f, self._sum_ff)]
        frame = [self._gather_rows(g, index, np.float64) for g in frame_sums]
        # a taper over the outer quarters: the window's periodic extension has no
        # jumps to ring back into the centre (the NCC does not change when all of
        # its terms are scaled alike, so the flat centre is what counts)
        windows = np.stack([*consts, *frame]) * _taper(w, len(self.pad))
        spectra = rfftn(windows, (w,) * len(self.pad), 1)
        origin = np.asarray(d0, dtype=float) - w // 2  # the window's first displacement

        def sample(starts, region, u):
            return upsampled_real(spectra, (w,) * len(self.pad), starts - origin, region, u)

        return sample

    def _fine_peak(self, starts, region, u, sample, den_max):
        overlap, sum_f, sum_ff, sum_m, sum_mm, sum_mf = sample(starts, region, u)
        overlap = np.fmax(overlap, self.eps)
        num = sum_mf - sum_m * sum_f / overlap
        den = np.sqrt(
            np.fmax(sum_ff - sum_f * sum_f / overlap, 0.0) * np.fmax(sum_mm - sum_m * sum_m / overlap, 0.0)
        )
        ncc = np.where(den > 1e3 * self.eps * den_max, num / np.where(den > 0, den, 1.0), 0.0)
        np.clip(ncc, -1.0, 1.0, out=ncc)
        # stay where the whole-pixel search was allowed: overlap threshold on the fine grid
        ncc[overlap < self.overlap_ratio * self.max_overlap] = -1.0
        box = inside_box(starts, region, u, self._max_shift, self.offset)
        if box is not None:  # ... and inside the max_shift box
            ncc[~box] = -1.0
        peak = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
        return starts + np.array(peak, dtype=float) / u, float(max(ncc[peak], 0.0))

    def _refine(self, d0, sample, den_max):
        """Sample every NCC term on fine grids around the whole-pixel peak."""

        def on_grid(starts, region, u):
            return self._fine_peak(starts, region, u, sample, den_max)

        return refine_two_stage(on_grid, d0, self.upsample_factor)


def _taper(w: int, ndim: int) -> np.ndarray:
    """A Tukey window (flat half, cosine quarters) of ``w`` points per axis."""
    x = np.arange(w) / max(w - 1, 1)
    ramp = np.minimum(np.minimum(x, 1 - x) / 0.25, 1.0)
    t = np.sin(0.5 * np.pi * ramp) ** 2
    return _outer_product([t] * ndim)


def _outer_product(vectors) -> np.ndarray:
    out = np.ones(())
    for v in vectors:
        out = np.multiply.outer(out, v)
    return out


def _gather(surface, index, dtype=np.float32) -> np.ndarray:
    """``surface`` at the outer product of per-axis integer ``index`` lists, as a
    numpy array (the small gather runs where ``surface`` is)."""
    backend = backend_of(surface)
    for ax, idx in enumerate(index):
        surface = backend.take(surface, idx, axis=ax)
    return np.ascontiguousarray(to_host(surface), dtype=dtype)
