"""Applying shifts: aligned copies of stacks, eager or dask-lazy."""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy import ndimage as ndi

from ._correlators import outer_and
from ._frames import is_dask

__all__ = ["aligned_dtype", "apply_shifts", "map_frames", "shift_frame"]

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


def shift_frame(frame, shift, *, method="spline", order=3, fill_value=np.nan) -> np.ndarray:
    """Shift one frame by ``shift`` (pixels, per axis); outside pixels get ``fill_value``."""
    frame = np.asarray(frame)
    shift = np.asarray(shift, dtype=float)
    out_dtype = aligned_dtype(frame.dtype)
    work = frame.astype(np.float64 if out_dtype == np.float64 else np.float32, copy=False)
    if not np.any(shift):
        out = work.astype(out_dtype, copy=True)
    elif method == "spline":
        out = ndi.shift(work, shift, order=order, mode="nearest", prefilter=order > 1)
    elif method == "fourier":
        spec = sfft.fftn(work)
        out = sfft.ifftn(ndi.fourier_shift(spec, shift)).real
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    out = out.astype(out_dtype, copy=False)
    if fill_value is not None:
        out[~_inside(frame.shape, shift)] = fill_value
    return out


def _shift_valid(valid, shift) -> np.ndarray:
    moved = ndi.shift(valid.astype(np.float32), shift, order=1, mode="constant", cval=0.0)
    return (moved > 0.999) & _inside(valid.shape, shift)


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


def apply_shifts(
    stack,
    shifts,
    *,
    method="spline",
    order=3,
    fill_value=np.nan,
    valid_mask=None,
    return_valid=False,
):
    """Apply per-frame shifts to a stack, as a new array.

    Parameters
    ----------
    stack : array, shape (n_frames, *frame_shape)
        numpy (or memory-mapped) arrays give a numpy result; a dask array
        gives a lazy dask array computed frame chunk by frame chunk.
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
        Valid pixels of one frame (True = valid, engine convention); shifted
        along with each frame when ``return_valid`` is set.
    return_valid : bool
        Also return the per-frame valid mask after shifting: True where the
        pixel is real data (inside the field and valid before shifting).

    Returns
    -------
    aligned : ndarray or dask array
    valid : ndarray or dask array of bool (only with ``return_valid``)
    """
    shifts, valid_mask = _check(tuple(stack.shape), shifts, valid_mask, method, order)
    return map_frames(stack, shifts, shift_frame, _shift_valid, valid_mask, return_valid,
                      method=method, order=order, fill_value=fill_value)


def map_frames(stack, moves, move, move_valid, valid_mask, return_valid: bool, **kw):
    """``move(frame, moves[i], **kw)`` for every frame of ``stack`` (and, with
    ``return_valid``, ``move_valid(valid_mask, moves[i])``: where the moved frame holds
    data): numpy in, numpy out; dask in, a lazy dask array out, computed frame chunk by
    frame chunk."""
    base = np.ones(tuple(stack.shape[1:]), bool) if valid_mask is None else valid_mask

    def frame_fn(i, frame):
        return move(frame, moves[i], **kw)

    def valid_fn(i):
        return move_valid(base, moves[i])

    out_dtype = aligned_dtype(stack.dtype)
    if is_dask(stack):
        import dask.array as da

        stack = stack.rechunk({i: -1 for i in range(1, stack.ndim)})

        def _block(block, block_info=None):
            lo = block_info[0]["array-location"][0][0]
            return np.stack([frame_fn(lo + j, f) for j, f in enumerate(block)])

        aligned = da.map_blocks(_block, stack, dtype=out_dtype)
        if not return_valid:
            return aligned

        def _vblock(block, block_info=None):
            lo = block_info[0]["array-location"][0][0]
            return np.stack([valid_fn(lo + j) for j in range(len(block))])

        valid = da.map_blocks(_vblock, stack, dtype=bool)
        return aligned, valid

    aligned = np.empty(stack.shape, dtype=out_dtype)
    valid = np.empty(stack.shape, dtype=bool) if return_valid else None
    for i in range(stack.shape[0]):
        aligned[i] = frame_fn(i, np.asarray(stack[i]))
        if valid is not None:
            valid[i] = valid_fn(i)
    return (aligned, valid) if return_valid else aligned
