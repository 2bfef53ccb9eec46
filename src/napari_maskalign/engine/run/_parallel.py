"""Frames against one reference, using the whole machine: every core, or a GPU.

* CPU (numpy): ``threads`` frames at once, each with single-threaded
  transforms and BLAS (a threaded BLAS called from several threads contends),
  so everything between the transforms runs in parallel too; every large
  array a frame needs is either a per-thread buffer or kept hot in the
  process (:func:`~._memory.hot_memory`), so threads do not queue on page
  faults. The results are bit-identical to one thread's.
* GPU (or any array API namespace other than numpy): frames go to the device
  in batches, whose transforms and whole-pixel search run as one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from ..backends._device import is_foreign_array
from ..backends._frames import iter_frames
from ..backends._memory import hot_memory
from ._result import FrameRecord

__all__ = ["BATCH_BYTES", "batch_size", "frames_for", "in_threads", "register_frames"]

#: device memory a batch of frames may take (about 16 arrays of the padded size per frame)
BATCH_BYTES = 2**30
#: frames per batch at most
MAX_BATCH = 32


def in_threads(fn, items, threads):
    """``map(fn, items)`` on ``threads`` threads, in order, at most
    ``threads + 1`` items in flight (memory stays bounded). Closing the
    generator cancels what has not started; exceptions reach the caller."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="maskalign") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


def batch_size(registrar) -> int:
    """Frames per device batch for this registrar's transform size."""
    pad = getattr(registrar._corr, "pad", registrar.shape)
    per_frame = 16 * int(np.prod(pad)) * np.dtype(registrar.dtype).itemsize
    return int(max(1, min(MAX_BATCH, BATCH_BYTES // per_frame)))


def _batches(frames: Iterable, size: int) -> Iterator[list]:
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def frames_for(registrar, stack, start: int, stop: int, dtype) -> Iterator:
    """Frames ``start..stop-1`` where the registrar wants them: a CuPy stack's frames
    stay on its GPU when the registrar runs there, everything else is read to the
    host (:func:`~._frames.iter_frames`)."""
    if registrar.backend.batches and is_foreign_array(stack):
        return (stack[i, ...] for i in range(start, stop))
    return iter_frames(stack, start, stop, dtype)


def register_frames(registrar, frames: Iterable, threads: int) -> Iterator[FrameRecord]:
    """One :class:`FrameRecord` per frame of ``frames``, in order."""
    with hot_memory():
        if registrar.backend.batches:
            for batch in _batches(frames, batch_size(registrar)):
                yield from registrar.register_batch(batch)
            return
        from threadpoolctl import threadpool_limits

        # one BLAS thread also for one worker: `workers` is the whole budget, and a
        # threaded BLAS spinning beside busy cores slows the refinement down
        with threadpool_limits(limits=1, user_api="blas"):
            registrar.set_workers(1)
            if threads <= 1:
                yield from map(registrar.register, frames)
            else:
                yield from in_threads(registrar.register, frames, threads)
