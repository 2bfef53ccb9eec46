"""Shifts -> aligned frames: in memory, lazily (dask) or into a file, with progress.

Both faces use these: the napari widgets make ``<image> aligned`` layers with
:func:`iter_align` (or :func:`align_lazy` for stacks that do not fit in
memory), the ``maskalign`` command writes files with :func:`write_aligned`.
The shifting itself is :func:`napari_maskalign.engine.apply_shifts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine import aligned_dtype, apply_shifts
from ..io import StackWriter, as_dask, iter_blocks

__all__ = ["AlignProgress", "align_frame", "align_lazy", "iter_align", "write_aligned"]


@dataclass(frozen=True)
class AlignProgress:
    """Yielded after each block of frames is aligned (the stage after registration)."""

    done: int
    total: int
    stage: str = "applying shifts"


def align_frame(stack, shifts, i: int, **kwargs) -> np.ndarray:
    """Frame ``i`` of the aligned stack, computed now (also for one edited frame)."""
    return apply_shifts(np.asarray(stack[i : i + 1]), shifts[i : i + 1], **kwargs)[0]


def align_lazy(stack, shifts, **kwargs):
    """The whole aligned stack as a lazy dask array (nothing is computed yet)."""
    return apply_shifts(as_dask(stack), shifts, **kwargs)


def _aligned_blocks(stack, shifts, block: int, lazy=None, **kwargs):
    """``(lo, hi, aligned frames lo..hi-1)`` in order; from ``lazy`` (a dask graph of
    the aligned stack) when given, else computed here from ``stack``."""
    for lo, hi in iter_blocks(int(stack.shape[0]), block):
        if lazy is not None:
            yield lo, hi, lazy[lo:hi].compute()
        else:
            yield lo, hi, apply_shifts(np.asarray(stack[lo:hi]), shifts[lo:hi], **kwargs)


def iter_align(stack, shifts, *, lazy: bool = False, **kwargs):
    """Apply ``shifts``, yielding :class:`AlignProgress` per frame.

    Returns the aligned stack (the value of ``yield from``): a numpy array,
    or at once a lazy dask array when ``lazy`` (nothing is computed then).
    ``kwargs`` go to :func:`~napari_maskalign.engine.apply_shifts`.
    """
    if lazy:
        return align_lazy(stack, shifts, **kwargs)
    n = int(stack.shape[0])
    out = np.empty(tuple(stack.shape), aligned_dtype(stack.dtype))
    for lo, hi, aligned in _aligned_blocks(stack, shifts, 1, **kwargs):
        out[lo:hi] = aligned
        yield AlignProgress(hi, n)
    return out


def write_aligned(path, stack, shifts, *, overwrite: bool = False, attrs: dict | None = None,
                  dask_stack=None, chunk_frames: int = 16, **kwargs):
    """Write the aligned stack to ``path`` (.zarr or .tif); a generator of progress.

    The file is written under a temporary name and renamed when complete; on
    any error it is removed. With ``dask_stack`` (the same frames as a dask
    array, e.g. on a cluster) the frames are aligned by dask in blocks of
    ``chunk_frames``; otherwise here, one frame at a time (memory stays
    flat). Returns the path written.
    """
    n = int(stack.shape[0])
    lazy = apply_shifts(dask_stack, shifts, **kwargs) if dask_stack is not None else None
    block = chunk_frames if lazy is not None else 1
    dtype = aligned_dtype(stack.dtype)
    with StackWriter(path, stack.shape, dtype, overwrite=overwrite, attrs=attrs) as writer:
        for _lo, hi, aligned in _aligned_blocks(stack, shifts, block, lazy, **kwargs):
            writer.write(aligned)
            yield AlignProgress(hi, n, "writing")
    return writer.path
