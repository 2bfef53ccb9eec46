"""FFT helpers: real transforms, padding sizes and matrix-multiply DFTs."""

from __future__ import annotations

import os

import numpy as np
import scipy.fft as sfft

__all__ = [
    "default_workers",
    "fast_shape",
    "half_spectrum_weights",
    "irfftn",
    "real_dtype_for",
    "rfftn",
    "upsampled_real",
]


def default_workers(workers: int | None) -> int:
    """Threads for scipy.fft: all cores unless the caller says otherwise."""
    if workers is None:
        return os.cpu_count() or 1
    return max(1, int(workers))


def real_dtype_for(*arrays) -> np.dtype:
    """float32 for float16/float32/small ints, float64 otherwise (scikit-image's rule)."""
    out = np.float32
    for a in arrays:
        dt = np.asarray(a).dtype if not hasattr(a, "dtype") else a.dtype
        if dt.kind == "f" and dt.itemsize <= 4:
            continue
        if dt.kind == "c" and dt.itemsize <= 8:
            continue
        if dt.kind == "b" or (dt.kind in "iu" and dt.itemsize <= 1):
            continue
        out = np.float64
    return np.dtype(out)


def fast_shape(shape) -> tuple[int, ...]:
    """Next fast FFT length along every axis (real transforms)."""
    return tuple(sfft.next_fast_len(int(n), real=True) for n in shape)


def rfftn(x: np.ndarray, shape, workers: int) -> np.ndarray:
    return sfft.rfftn(x, s=shape, workers=workers)


def irfftn(x: np.ndarray, shape, workers: int, overwrite: bool = False) -> np.ndarray:
    """Inverse real FFT; ``overwrite=True`` lets it destroy a temporary input (saves a copy)."""
    return sfft.irfftn(x, s=shape, workers=workers, overwrite_x=overwrite)


def half_spectrum_weights(full_last: int, dtype=np.float64) -> np.ndarray:
    """Weights that turn a sum over the rfft half spectrum into the full sum.

    Each bin of the last axis stands for itself and its Hermitian partner,
    except the zero bin and, for even lengths, the Nyquist bin.
    """
    n_half = full_last // 2 + 1
    w = np.full(n_half, 2.0, dtype=dtype)
    w[0] = 1.0
    if full_last % 2 == 0:
        w[-1] = 1.0
    return w


def _signed_freqs(n: int) -> np.ndarray:
    return np.fft.fftfreq(n) * n  # integer frequencies in fft order


def upsampled_real(
    spectra: np.ndarray,
    full_shape: tuple[int, ...],
    starts: np.ndarray,
    region: int,
    upsample_factor: float,
) -> np.ndarray:
    """Evaluate real signals given by rfft half spectra on a fine grid.

    The matrix-multiply DFT of Guizar-Sicairos et al. (2008), written for
    real signals stored as ``rfftn`` half spectra, so that the inverse
    transform of any product of spectra (every term of the masked normalized
    cross-correlation, or the plain cross-correlation) can be sampled at
    ``1/upsample_factor`` pixel without zero padding.

    Parameters
    ----------
    spectra : complex array of shape (m, *half_shape), or a sequence of m
        half spectra (``rfftn`` layout).
    full_shape : tuple of int
        The real-space (padded) shape of the signals.
    starts : array, shape (ndim,)
        Real-space coordinate (in pixels, may be negative or fractional) of
        the first grid point along each axis.
    region : int
        Number of grid points per axis.
    upsample_factor : float
        Grid spacing is ``1 / upsample_factor`` pixel.

    Returns
    -------
    values : real array, shape (m, region, ..., region)
        ``irfftn(spectra)`` evaluated at the grid points (with the inverse
        transform's ``1/size`` normalization).
    """
    ndim = len(full_shape)
    cdtype = spectra[0].dtype
    rdtype = np.float32 if cdtype == np.complex64 else np.float64
    steps = np.arange(region, dtype=np.float64) / float(upsample_factor)
    kernels = []
    for ax in range(ndim - 1, -1, -1):
        n_full = full_shape[ax]
        if ax == ndim - 1:
            freqs = np.arange(n_full // 2 + 1, dtype=np.float64)
        else:
            freqs = _signed_freqs(n_full)
        pos = starts[ax] + steps
        kernel = np.exp((2j * np.pi / n_full) * np.outer(freqs, pos))
        if ax == ndim - 1:
            kernel *= half_spectrum_weights(n_full)[:, None]
        kernels.append((ax, kernel.astype(cdtype, copy=False)))
    out = np.empty((len(spectra),) + (region,) * ndim, dtype=rdtype)
    scale = 1.0 / float(np.prod(full_shape))
    for i, data in enumerate(spectra):
        # contract the last (half) axis first (the largest saving), then the others
        for ax, kernel in kernels:
            data = np.moveaxis(np.tensordot(data, kernel, axes=([ax], [0])), -1, ax)
        out[i] = data.real * scale
    return out
