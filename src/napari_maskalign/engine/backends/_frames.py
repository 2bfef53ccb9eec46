"""Reading frames from any stack: the one rule for dask arrays and for grouping reads.

A stack is anything with ``shape``, ``dtype`` and per-frame indexing: numpy
(memory-mapped or not), zarr, the lazy file stacks of :mod:`napari_maskalign.io`
or dask. Dask stacks are read in groups of whole chunks, since every dask
compute costs time in proportion to the array's chunk count (a folder of
100,000 files is 100,000 chunks: one compute per frame would make a long
stack quadratic); everything else is read frame by frame. While a group's
frames are being registered, the next group is read in a background thread,
so a slow read (a folder of files on a busy disk) does not stall the run
once per group.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ._device import to_host

__all__ = [
    "GROUP_BYTES",
    "GROUP_FRAMES",
    "check_pixel_dtype",
    "check_stack",
    "frame_groups",
    "group_target",
    "is_dask",
    "iter_frames",
    "read_frame",
    "spread_indices",
]

#: dask stacks are read in groups of whole chunks of at least this many frames ...
GROUP_FRAMES = 16
#: ... but fewer when frames are large
GROUP_BYTES = 32 * 2**20


def is_dask(stack) -> bool:
    """Whether ``stack`` is a dask array (without importing dask)."""
    return type(stack).__module__.startswith("dask.") and hasattr(stack, "to_delayed")


def check_stack(stack):
    """``(stack, shape)`` for a stack of 2D or 3D frames; ``ValueError`` in plain words."""
    if not hasattr(stack, "shape") or not hasattr(stack, "__getitem__") or not hasattr(
        stack, "dtype"
    ):
        stack = np.asarray(stack)
    shape = tuple(int(s) for s in stack.shape)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"expected a stack of 2D or 3D frames (frames along the first axis), got an "
            f"array of shape {shape}"
        )
    if shape[0] < 1:
        raise ValueError("the stack has no frames")
    if any(n < 2 for n in shape[1:]):
        raise ValueError(f"frames of shape {shape[1:]} are too small to register")
    check_pixel_dtype(stack.dtype, "the stack")
    return stack, shape


#: what a dtype that cannot be registered holds, in the user's words
_NOT_NUMBERS = {"O": "Python objects", "U": "text", "S": "bytes", "c": "complex numbers",
                "V": "records", "M": "dates", "m": "time spans"}


def check_pixel_dtype(dtype, source="the stack") -> np.dtype:
    """``dtype`` if its pixels are real numbers (bool, integers, floats), else ``ValueError``
    naming ``source``. Checked from the header, before any frame is read: an object
    array may be decoded by unpickling, which can run code."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = np.dtype(object)
    if dt.kind not in "biuf":
        what = _NOT_NUMBERS.get(dt.kind, f"dtype {dt}")
        raise ValueError(
            f"cannot use {source}: its pixels are {what} (dtype {dt}); a stack must hold real "
            "numbers (integers, floats or booleans)"
        )
    return dt


def group_target(frame_shape, dtype) -> int:
    """Frames per read group: ``GROUP_FRAMES``, fewer for frames above ``GROUP_BYTES / 16``."""
    frame_bytes = max(1, int(np.prod(frame_shape)) * np.dtype(dtype).itemsize)
    return int(max(1, min(GROUP_FRAMES, GROUP_BYTES // frame_bytes)))


def frame_groups(chunks0, start: int, target: int, stop: int | None = None):
    """``(lo, hi)`` frame ranges from ``start`` to ``stop``: whole chunks (``chunks0``
    are the chunk lengths along the frame axis), at least ``target`` frames each."""
    edges = np.cumsum(chunks0)
    n = int(edges[-1]) if len(edges) else 0
    stop = n if stop is None else min(int(stop), n)
    lo = start
    while lo < stop:
        k = int(np.searchsorted(edges, lo + target, side="left"))
        hi = int(edges[k]) if k < len(edges) else n
        hi = min(hi, stop)
        yield lo, hi
        lo = hi


def spread_indices(n: int, k: int) -> np.ndarray:
    """Up to ``k`` frame numbers spread evenly over ``n`` frames, first and last
    included, sorted and without repeats (the frames a search looks at)."""
    return np.unique(np.linspace(0, n - 1, max(0, min(n, k))).round().astype(int))


def read_frame(stack, i: int, dtype=None) -> np.ndarray:
    """Frame ``i`` as a numpy array (of ``dtype`` if given)."""
    f = stack[int(i)]
    if hasattr(f, "compute"):
        f = f.compute()
    return np.asarray(to_host(f), dtype=dtype)  # CuPy frames too (copied to the host)


def iter_frames(stack, start: int, stop: int, dtype=None) -> Iterator[np.ndarray]:
    """Frames ``start..stop-1`` in order, one at a time (dask: read in groups)."""
    if not is_dask(stack):
        for i in range(start, stop):
            yield read_frame(stack, i, dtype)
        return
    from concurrent.futures import ThreadPoolExecutor

    target = group_target(stack.shape[1:], stack.dtype)
    with ThreadPoolExecutor(1, thread_name_prefix="maskalign-read") as reader:
        pending = None  # the group being read while the one before is handed out
        for lo, hi in frame_groups(stack.chunks[0], start, target, stop):
            ahead = reader.submit(_read_group, stack, lo, hi, dtype)
            if pending is not None:
                yield from pending.result()
            pending = ahead
        if pending is not None:
            yield from pending.result()


def _read_group(stack, lo: int, hi: int, dtype) -> np.ndarray:
    return np.asarray(stack[lo:hi].compute(), dtype=dtype)
