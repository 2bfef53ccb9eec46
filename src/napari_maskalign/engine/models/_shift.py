"""Applying shifts: aligned copies of stacks, eager or dask-lazy."""

from __future__ import annotations

import numpy as np

from ..backends import backend_for
from ..backends._device import (
    is_foreign_array,
    namespace_for,
    namespace_of,
    native,
    to_host,
    to_namespace,
)
from ..backends._frames import is_dask
from ..kernels._grid import outer_and
from ._fill import nearest_fill_index

__all__ = ["MirroredSpectrum", "aligned_dtype", "apply_shifts", "check_resampling",
           "ignored_filler", "map_frames", "shift_frame", "shift_valid"]

METHODS = ("spline", "fourier")


def aligned_dtype(dtype) -> np.dtype:
    """The dtype of an aligned copy: float inputs keep theirs, others become float32
    (shifting interpolates, and pixels from outside the field become NaN)."""
    dtype = np.dtype(dtype)
    return dtype if dtype.kind == "f" else np.dtype(np.float32)


def _inside(shape, shift) -> np.ndarray:
    """True where the shifted frame's pixel comes from inside the field of view."""
    flags = []
    for n, s in zip(shape, shift):
        src = np.arange(n) - s  # output pixel x samples the input at x - s
        flags.append((src >= -1e-6) & (src <= n - 1 + 1e-6))
    return outer_and(flags)


def shift_frame(frame, shift, *, method="spline", order=3, fill_value=np.nan):
    """Shift one frame by ``shift`` (pixels, per axis); outside pixels get ``fill_value``.
    A CuPy frame is shifted on its GPU and stays there."""
    xp = namespace_of(frame)
    frame = native(frame)
    backend = backend_for(xp)
    ndimage, fft = backend.ndimage, backend.fft
    shift = np.asarray(shift, dtype=float)
    out_dtype = aligned_dtype(frame.dtype)
    work = frame.astype(np.float64 if out_dtype == np.float64 else np.float32, copy=False)
    if not np.any(shift):
        out = work.astype(out_dtype, copy=True)
    elif method == "spline":
        out = ndimage.shift(work, tuple(shift), order=order, mode="nearest", prefilter=order > 1)
    elif method == "fourier":
        spec = fft.fftn(work)
        out = fft.ifftn(ndimage.fourier_shift(spec, tuple(shift))).real
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    out = out.astype(out_dtype, copy=False)
    if fill_value is not None:
        outside = ~_inside(frame.shape, shift)
        out[xp.asarray(outside)] = fill_value
    return out


class MirroredSpectrum:
    """An image's spectrum with its edges mirrored by ``pad`` pixels first, so that
    moving it in Fourier space does not ring on the wrap-around; :meth:`moved`
    gives the image moved by any shift (one transform, then one inverse per shift)."""

    def __init__(self, image, pad: int):
        import scipy.fft as sfft

        image = np.asarray(image, dtype=np.float64)
        self.shape, self.pad = image.shape, int(pad)
        big = np.pad(image, self.pad, mode="reflect")
        self.big_shape = big.shape
        self.spectrum = sfft.rfftn(big)

    def moved(self, shift) -> np.ndarray:
        """The image moved by ``shift`` (output(x) = image(x - shift)), float64."""
        import scipy.fft as sfft
        from scipy import ndimage

        spec = ndimage.fourier_shift(self.spectrum, shift, n=self.big_shape[-1])
        out = sfft.irfftn(spec, self.big_shape)
        return out[tuple(slice(self.pad, self.pad + n) for n in self.shape)]


def shift_valid(valid, shift):
    """Where the shifted frame holds real data: inside the field and valid before."""
    xp = namespace_of(valid)
    ndimage = backend_for(xp).ndimage
    moved = ndimage.shift(valid.astype(np.float32), tuple(shift), order=1, mode="constant", cval=0.0)
    inside = _inside(valid.shape, shift)
    return (moved > 0.999) & xp.asarray(inside)


def _check(stack_shape, shifts, valid_mask, method, order):
    if len(stack_shape) < 2:
        raise ValueError(f"expected a stack (frames along the first axis), got shape {stack_shape}")
    shifts = np.asarray(shifts, dtype=float)
    n, frame_shape = stack_shape[0], stack_shape[1:]
    if shifts.ndim != 2 or shifts.shape[0] != n:
        raise ValueError(
            f"shifts must have one row per frame: expected shape ({n}, {len(frame_shape)}), "
            f"got {shifts.shape}"
        )
    if shifts.shape[1] != len(frame_shape):
        raise ValueError(
            f"shifts have {shifts.shape[1]} columns but frames have {len(frame_shape)} dimensions"
        )
    if not np.all(np.isfinite(shifts)):
        raise ValueError("shifts contain NaN or inf")
    return shifts, check_resampling(frame_shape, valid_mask, method, order)


def check_resampling(frame_shape, valid_mask, method, order):
    """The checks every aligned copy shares: method, spline order, and the valid mask
    (returned as bool, or None)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not (isinstance(order, (int, np.integer)) and 0 <= order <= 5):
        raise ValueError(f"spline order must be an integer from 0 to 5, got {order!r}")
    if valid_mask is not None:
        valid_mask = np.asarray(valid_mask, dtype=bool)
        if valid_mask.shape != tuple(frame_shape):
            raise ValueError(
                f"valid_mask has shape {valid_mask.shape} but one frame has shape {tuple(frame_shape)}"
            )
    return valid_mask


def check_frames(stack, what: str = "apply_shifts"):
    """A stack of real frames (a list of frames becomes an array); ``ValueError`` otherwise."""
    if not hasattr(stack, "shape") or not hasattr(stack, "dtype"):  # a list of frames
        stack = np.asarray(stack)
    try:
        kind = np.dtype(stack.dtype).kind
    except TypeError:  # another array library's dtype: its own path checks the array
        kind = "f"
    if kind not in "biuf":
        raise ValueError(
            f"{what} needs real-valued frames (integers or floats), got {stack.dtype}"
            + ("; move the real and imaginary parts separately" if kind == "c" else "")
        )
    return stack


def apply_shifts(
    stack,
    shifts,
    *,
    method="spline",
    order=3,
    fill_value=np.nan,
    valid_mask=None,
    return_valid=False,
    device=None,
    workers=None,
):
    """Apply per-frame shifts to a stack, as a new array.

    Parameters
    ----------
    stack : array, shape (n_frames, *frame_shape)
        numpy (or memory-mapped) arrays, or a list of frames, give a numpy
        result; a dask array gives a lazy dask array computed frame chunk by
        frame chunk. Real numbers only (complex input is refused).
    shifts : array, shape (n_frames, ndim)
        Shift per frame in scikit-image's convention (what
        :func:`register_stack` returns): applying it aligns the frame.
    method : {"spline", "fourier"}
        Spline interpolation (``order`` 0-5, edges extended) or a Fourier
        shift (exact for band-limited content, wraps around).
    order : int
        Spline order.
    fill_value : float or None
        Value of pixels that come from outside the field of view (NaN by
        default); None keeps the interpolated values there. Integer stacks
        give float32 output.
    valid_mask : ndarray of bool, optional
        Valid pixels of one frame (True = valid, engine convention). The
        others (the beam block, hot pixels) do not reach the valid ones:
        before the shift they take the value of their nearest valid pixel,
        so a hot pixel does not ring into its neighbours. Shifted along with
        each frame when ``return_valid`` is set.
    return_valid : bool
        Also return the per-frame valid mask after shifting: True where the
        pixel is real data (inside the field and valid before shifting).
    device : {None, "cpu", "gpu"}
        Where frames are shifted: None follows the stack (a CuPy stack on its
        GPU, giving CuPy arrays), "gpu" shifts numpy frames on a GPU one by one
        (CuPy, the ``gpu`` extra) and returns numpy arrays, "cpu" numpy.
    workers : int, optional
        Threads shifting numpy frames at once (default 1); the result does not
        depend on it.

    Returns
    -------
    aligned : ndarray or dask array
    valid : ndarray or dask array of bool (only with ``return_valid``)
    """
    stack = check_frames(stack)
    shifts, valid_mask = _check(tuple(stack.shape), shifts, valid_mask, method, order)
    return map_frames(stack, shifts, shift_frame, shift_valid, valid_mask, return_valid,
                      device=device, workers=workers, method=method, order=order,
                      fill_value=fill_value)


def ignored_filler(valid_mask):
    """A function giving a copy of a frame whose ignored pixels (False in
    ``valid_mask``) hold the value of their nearest valid pixel, or None when
    there are none. Resampling spreads every pixel over its neighbours (a cubic
    spline over several pixels, a Fourier shift over the frame): a hot pixel
    50 times the pattern would ring into the valid pixels around it, and NaN
    painted into the mask would spread; filled, they do neither."""
    if valid_mask is None:
        return None
    valid = np.asarray(valid_mask, bool)
    if valid.all() or not valid.any():
        return None
    holes, source = nearest_fill_index(valid)
    on = {}  # the index arrays in each namespace they are used in

    def fill(frame):
        xp = namespace_of(frame)
        if xp not in on:
            on[xp] = (to_namespace(xp, holes), to_namespace(xp, source))
        h, src = on[xp]
        out = xp.reshape(xp.asarray(frame, copy=True), (-1,))
        out[h] = out[src]
        return xp.reshape(out, tuple(frame.shape))

    return fill


def map_frames(stack, moves, move, move_valid, valid_mask, return_valid: bool, *,
               device=None, workers=None, **kw):
    """``move(frame, moves[i], **kw)`` for every frame of ``stack`` (and, with
    ``return_valid``, ``move_valid(valid_mask, moves[i])``: where the moved frame holds
    data): numpy in, numpy out (``workers`` frames at once); dask in, a lazy dask array
    out, computed frame chunk by frame chunk; on a GPU (``device``, or a CuPy stack)
    frame by frame there. The one loop of :func:`apply_shifts` and ``apply_transforms``."""
    xp = namespace_for(device, stack)
    fill = ignored_filler(valid_mask)
    if fill is not None:
        inner = move

        def move(frame, m, **kw):
            return inner(fill(frame), m, **kw)

    if not backend_for(xp).on_host:
        return _map_on_device(xp, stack, moves, move, move_valid, valid_mask, return_valid, kw)
    base = np.ones(tuple(stack.shape[1:]), bool) if valid_mask is None else valid_mask
    out_dtype = aligned_dtype(stack.dtype)
    if is_dask(stack):
        import dask.array as da

        stack = stack.rechunk({i: -1 for i in range(1, stack.ndim)})

        def _block(block, block_info=None):
            lo = block_info[0]["array-location"][0][0]
            return np.stack([move(f, moves[lo + j], **kw) for j, f in enumerate(block)])

        aligned = da.map_blocks(_block, stack, dtype=out_dtype)
        if not return_valid:
            return aligned

        def _vblock(block, block_info=None):
            lo = block_info[0]["array-location"][0][0]
            return np.stack([move_valid(base, moves[lo + j]) for j in range(len(block))])

        return aligned, da.map_blocks(_vblock, stack, dtype=bool)

    aligned = np.empty(stack.shape, dtype=out_dtype)
    valid = np.empty(stack.shape, dtype=bool) if return_valid else None

    def one(i):
        aligned[i] = move(np.asarray(stack[i]), moves[i], **kw)
        if valid is not None:
            valid[i] = move_valid(base, moves[i])

    threads = min(int(workers or 1), int(stack.shape[0]))
    if threads > 1:  # scipy.ndimage lets go of the GIL: frames move in parallel
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads, thread_name_prefix="maskalign-shift") as pool:
            list(pool.map(one, range(stack.shape[0])))
    else:
        for i in range(stack.shape[0]):
            one(i)
    return (aligned, valid) if return_valid else aligned


def _map_on_device(xp, stack, moves, move, move_valid, valid_mask, return_valid, kw):
    """:func:`map_frames` on a GPU, frame by frame: a CuPy stack gives CuPy arrays,
    any other stack numpy arrays (each frame copied back when done). ``move`` and
    ``move_valid`` resample through the backend's ndimage, which works on both."""
    _ = backend_for(xp).ndimage  # refuses a namespace that cannot resample, before any work
    foreign = is_foreign_array(stack)
    lib = xp if foreign else np
    n, frame_shape = int(stack.shape[0]), tuple(stack.shape[1:])
    aligned = lib.empty((n, *frame_shape), dtype=aligned_dtype(stack.dtype))
    valid = lib.empty((n, *frame_shape), dtype=bool) if return_valid else None
    base = np.ones(frame_shape, bool) if valid_mask is None else valid_mask
    base = to_namespace(xp, base)
    for i in range(n):
        frame = stack[i] if foreign else to_namespace(xp, np.asarray(stack[i]))
        out = move(frame, moves[i], **kw)
        aligned[i] = out if foreign else to_host(out)
        if valid is not None:
            moved = move_valid(base, moves[i])
            valid[i] = moved if foreign else to_host(moved)
    return (aligned, valid) if return_valid else aligned
