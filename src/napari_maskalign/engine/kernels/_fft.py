"""FFT helpers: real transforms, padding sizes and matrix-multiply DFTs.

The transforms take arrays of any namespace of the array API standard:
numpy arrays go through ``scipy.fft`` (threads via ``workers``), others
(CuPy, array-api-strict) through their namespace's ``fft`` module.

References
----------
Guizar-Sicairos M, Thurman ST, Fienup JR. "Efficient subpixel image
registration algorithms." Optics Letters 33(2):156-158 (2008).
https://doi.org/10.1364/OL.33.000156
"""

from __future__ import annotations

import math
import os

import numpy as np
import scipy.fft as sfft
from array_api_compat import array_namespace

from ..backends._cache import BoundedCache
from ..backends._device import to_host

__all__ = [
    "default_workers",
    "fast_shape",
    "half_spectrum_weights",
    "irfftn",
    "irfftn_rows",
    "real_dtype_for",
    "rfftn",
    "rfftn_padded",
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


def _axes(x, shape):
    """The last ``len(shape)`` axes: a leading axis of frames is a batch."""
    return tuple(range(x.ndim - len(shape), x.ndim))


def rfftn(x, shape, workers: int):
    """Real FFT over the last ``len(shape)`` axes, zero-padded to ``shape``."""
    shape = tuple(shape)
    if isinstance(x, np.ndarray):
        return sfft.rfftn(x, s=shape, axes=_axes(x, shape), workers=workers)
    xp = array_namespace(x)
    return xp.fft.rfftn(x, s=shape, axes=_axes(x, shape))


def irfftn(x, shape, workers: int, overwrite: bool = False):
    """Inverse real FFT over the last ``len(shape)`` axes; ``overwrite=True`` lets it
    destroy a temporary input (saves a copy)."""
    shape = tuple(shape)
    if isinstance(x, np.ndarray):
        return sfft.irfftn(x, s=shape, axes=_axes(x, shape), workers=workers, overwrite_x=overwrite)
    xp = array_namespace(x)
    return xp.fft.irfftn(x, s=shape, axes=_axes(x, shape))


def rfftn_padded(x, shape, workers: int):
    """:func:`rfftn` of ``x`` zero-padded to ``shape``, where ``x`` is already
    padded along its last axis and not along the others: the rows of zeros are
    never transformed (the last axis first, then the others with padding).
    The same arithmetic as ``rfftn`` of the fully padded array."""
    shape = tuple(shape)
    nd = len(shape)
    rest = tuple(range(x.ndim - nd, x.ndim - 1))
    if isinstance(x, np.ndarray):
        rows = sfft.rfft(x, n=shape[-1], axis=-1, workers=workers)
        if not rest:
            return rows
        return sfft.fftn(rows, s=shape[:-1], axes=rest, workers=workers, overwrite_x=True)
    xp = array_namespace(x)
    rows = xp.fft.rfft(x, n=shape[-1], axis=-1)
    return xp.fft.fftn(rows, s=shape[:-1], axes=rest) if rest else rows


def irfftn_rows(x, shape, rows, workers: int, overwrite: bool = False):
    """:func:`irfftn` of a half spectrum, only at the indices ``rows`` of the
    second-to-last axis (None: all): the inverse runs over the other axes
    first, then the real inverse along the last axis only for those rows."""
    shape = tuple(shape)
    nd = len(shape)
    rest = tuple(range(x.ndim - nd, x.ndim - 1))
    if isinstance(x, np.ndarray):
        if rows is None:
            return irfftn(x, shape, workers, overwrite)
        cols = sfft.ifftn(x, axes=rest, workers=workers, overwrite_x=overwrite)
        cols = np.take(cols, rows, axis=-2)
        return sfft.irfft(cols, n=shape[-1], axis=-1, workers=workers, overwrite_x=True)
    if rows is None:
        return irfftn(x, shape, workers, overwrite)
    xp = array_namespace(x)
    cols = xp.fft.ifftn(x, axes=rest) if rest else x
    cols = xp.take(cols, xp.asarray(rows), axis=-2)
    return xp.fft.irfft(cols, n=shape[-1], axis=-1)


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


#: grid steps kept between calls (32 grids; one over 1 MB, upsample 1000 on a big frame:
#: tens of MB, is not kept after its call)
_GRID_STEPS = BoundedCache(max_entries=32, max_item_bytes=1 << 20)


def _grid_steps(n_full: int, half: bool, region: int, upsample_factor: float):
    """The part of a matrix-multiply DFT kernel that only the grid's spacing fixes:
    the axis's frequencies ``f`` and ``exp(2 pi i f j / (u n))`` for the grid's steps
    ``j`` (the half axis weighted for the Hermitian partners). Read-only."""
    key = (n_full, half, region, upsample_factor)
    hit = _GRID_STEPS.get(key)
    if hit is not None:
        return hit
    freqs = np.arange(n_full // 2 + 1, dtype=np.float64) if half else _signed_freqs(n_full)
    steps = np.arange(region, dtype=np.float64) / upsample_factor
    kernel = np.exp((2j * np.pi / n_full) * np.outer(freqs, steps))
    if half:
        kernel *= half_spectrum_weights(n_full)[:, None]
    freqs.flags.writeable = kernel.flags.writeable = False
    _GRID_STEPS.put(key, (freqs, kernel), kernel.nbytes)
    return freqs, kernel


def _grid_kernel(n_full: int, half: bool, start: float, region: int, upsample_factor: float,
                 dtype) -> np.ndarray:
    """``exp(2 pi i f (start + j / u) / n)`` (times the half axis's weights), shape
    (frequencies, region): the cached steps times the start's phase per frequency
    (the phase is separable, so a new grid position costs one exponential per
    frequency, not one per frequency and grid point)."""
    freqs, steps = _grid_steps(n_full, half, region, upsample_factor)
    phase = np.exp((2j * np.pi / n_full * start) * freqs)
    return np.multiply(steps, phase[:, None]).astype(dtype, copy=False)


def upsampled_real(
    spectra: np.ndarray,
    full_shape: tuple[int, ...],
    starts: np.ndarray,
    region: int,
    upsample_factor: float,
    *,
    separable: bool = False,
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
    separable : bool
        Build the kernels from cached grid steps times one phase per frequency
        (and, for 2D numpy input, contract by two plain matrix products): the
        same sums at a fraction of the set-up, the values different in the last
        bits. Off, the kernels are the exponentials of every frequency and grid
        point, as the masked correlator's fine grid has always had them (its
        normalized ratio of nearly equal terms moved a few fine peaks by a step
        when the last bits changed).

    Returns
    -------
    values : numpy array, shape (m, region, ..., region)
        ``irfftn(spectra)`` evaluated at the grid points (with the inverse
        transform's ``1/size`` normalization); the matrix products run where
        the spectra are (numpy, GPU), the small result is a numpy array.
    """
    if not isinstance(spectra, (list, tuple)):
        spectra = [spectra[i, ...] for i in range(spectra.shape[0])]
    numpy_input = all(isinstance(s, np.ndarray) for s in spectra)
    # numpy itself for numpy input: today's arithmetic, no wrapper calls
    xp = np if numpy_input else array_namespace(*spectra)
    single = spectra[0].dtype == xp.complex64
    cdtype = np.complex64 if single else np.complex128
    ndim = len(full_shape)
    kernels = []
    steps = np.arange(region, dtype=np.float64) / float(upsample_factor)
    for ax in range(ndim - 1, -1, -1):
        n_full, half = int(full_shape[ax]), ax == ndim - 1
        if separable:
            kernel = _grid_kernel(n_full, half, float(starts[ax]), int(region),
                                  float(upsample_factor), cdtype)
        else:
            freqs = np.arange(n_full // 2 + 1, dtype=np.float64) if half else _signed_freqs(n_full)
            kernel = np.exp((2j * np.pi / n_full) * np.outer(freqs, starts[ax] + steps))
            if half:
                kernel *= half_spectrum_weights(n_full)[:, None]
            kernel = kernel.astype(cdtype, copy=False)
        kernels.append((ax, kernel if numpy_input else xp.asarray(kernel)))
    scale = 1.0 / float(math.prod(full_shape))
    out = []
    for data in spectra:
        if separable and numpy_input and ndim == 2:
            # two matrix products, no axis juggling: (rows x half) @ (half x region)
            # first (the largest saving), then (region x rows) @ that
            data = kernels[1][1].T @ (data @ kernels[0][1])
        else:
            # contract the last (half) axis first (the largest saving), then the others
            for ax, kernel in kernels:
                data = xp.moveaxis(xp.tensordot(data, kernel, axes=([ax], [0])), -1, ax)
        out.append(xp.real(data) * scale)
    if numpy_input:
        return np.stack(out)
    # the fine grids are small: the peak search on them runs on the host
    return np.stack([to_host(v) for v in out])

