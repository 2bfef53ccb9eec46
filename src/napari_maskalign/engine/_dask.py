"""Registration of dask stacks: one task per frame chunk, on any dask scheduler.

:func:`iter_register_chunks` builds, for a dask array of frames and a
picklable :class:`~napari_maskalign.engine.FrameRegistrar` (the reference,
the mask and everything precomputed from them), one task per chunk of frames
that registers that chunk's frames. The tasks run on whatever scheduler is
active: a ``dask.distributed`` ``Client`` when one is the default (a
``LocalCluster`` or a remote cluster whose workers can read the same files),
else dask's local scheduler. Results come back per chunk, so a caller can
report progress and save shifts as they arrive.

This module only moves frames and results around; the registration itself is
``FrameRegistrar.register``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np

__all__ = ["active_client", "iter_register_chunks"]

#: on the local scheduler, frames are read in groups of whole chunks of about
#: this many frames (fewer for large frames, see ``_local_groups``)
LOCAL_GROUP_FRAMES = 16
LOCAL_GROUP_BYTES = 32 * 2**20


def active_client():
    """The default ``dask.distributed`` client, or None.

    None also when distributed is not installed, or when dask's configured
    scheduler is a local one (``dask.config.set(scheduler="threads")``).
    """
    import dask

    scheduler = dask.config.get("scheduler", None)
    if scheduler not in (None, "dask.distributed", "distributed"):
        return None
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # no client
        return None


def _register_chunk(block, registrar):
    """Register every frame of one chunk: (shifts (k, ndim), quality (k,), xcorr or None)."""
    block = np.asarray(block)
    k, ndim = block.shape[0], block.ndim - 1
    shifts = np.empty((k, ndim))
    quality = np.empty(k)
    windows = None
    for j in range(k):
        r = registrar.register(block[j])
        shifts[j] = r.shift
        quality[j] = r.quality
        if r.xcorr is not None:
            if windows is None:
                windows = np.empty((k, *r.xcorr.shape), np.float32)
            windows[j] = r.xcorr
    return shifts, quality, windows


def _local_groups(chunks0, start: int, target: int):
    """``(lo, hi)`` frame ranges from ``start``: whole chunks, at least ``target`` frames each.

    Every ``compute`` of a slice of a dask array costs time proportional to the
    number of chunks in its graph (about 8 ms at 100 000 one-frame chunks, the
    layout of a folder of TIFF frames), so reading one frame per compute would
    make a long stack quadratic; groups of ``target`` frames keep it a small
    fraction of the registration time.
    """
    edges = np.cumsum(chunks0)
    n = int(edges[-1]) if len(edges) else 0
    lo = start
    while lo < n:
        k = int(np.searchsorted(edges, lo + target, side="left"))
        hi = int(edges[k]) if k < len(edges) else n
        yield lo, hi
        lo = hi


def iter_register_chunks(
    stack, registrar, start: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Register frames ``start..n-1`` of a dask stack, one task per frame chunk.

    Parameters
    ----------
    stack : dask.array.Array, shape (n_frames, *frame_shape)
        Frames along the first axis; its chunks along that axis become the
        tasks (frames are made whole in every chunk first).
    registrar : FrameRegistrar
        Built once from the reference (and mask); sent to the workers once.
    start : int
        First frame to register (to resume an interrupted run).

    Yields
    ------
    frame_indices : ndarray of int, shape (k,)
    shifts : ndarray, shape (k, ndim)
    quality : ndarray, shape (k,)
    xcorr : ndarray, shape (k, *window) float32, or None
        Only when the registrar keeps correlation windows.

    With a distributed client every chunk is one task, and chunks are yielded
    as they complete (not necessarily in order). On the local scheduler the
    frames are read in order, in groups of whole chunks of about 16 frames
    (fewer when frames are large), registered in this process (each frame's
    FFTs already use every core) and yielded per group. Closing the generator
    early cancels the chunks still pending.
    """
    import dask
    import dask.array as da

    if not isinstance(stack, da.Array):
        raise TypeError(f"expected a dask array, got {type(stack).__name__}")
    n = int(stack.shape[0])
    frame_shape = tuple(int(s) for s in stack.shape[1:])
    if not 0 <= start < n:
        raise ValueError(f"start must be a frame index in [0, {n}), got {start}")
    if frame_shape != tuple(registrar.shape):
        raise ValueError(
            f"frames have shape {frame_shape} but the reference has shape {tuple(registrar.shape)}"
        )
    client = active_client()
    if client is None:
        # local scheduler: read a group of frames (dask reads the files of the group
        # in parallel threads) and register it here; each frame's FFTs use every core
        frame_bytes = max(1, int(np.prod(frame_shape)) * np.dtype(stack.dtype).itemsize)
        target = max(1, min(LOCAL_GROUP_FRAMES, LOCAL_GROUP_BYTES // frame_bytes))
        for lo, hi in _local_groups(stack.chunks[0], start, target):
            block = np.asarray(stack[lo:hi].compute())
            shifts, quality, xcorr = _register_chunk(block, registrar)
            yield np.arange(lo, hi), shifts, quality, xcorr
        return

    sub = stack[start:]
    sub = sub.rechunk({ax: -1 for ax in range(1, sub.ndim)})
    blocks = sub.to_delayed().ravel()
    edges = start + np.concatenate([[0], np.cumsum(sub.chunks[0])]).astype(int)
    token = uuid.uuid4().hex[:12]
    reg = client.scatter(registrar, hash=False)
    run = dask.delayed(_register_chunk, pure=True)
    tasks = [run(b, reg, dask_key_name=f"register-chunk-{token}-{i}") for i, b in enumerate(blocks)]

    def frames(i):
        return np.arange(edges[i], edges[i + 1])

    from distributed import as_completed

    futures = client.compute(tasks)
    index = {f.key: i for i, f in enumerate(futures)}
    finished: set = set()
    try:
        for fut in as_completed(futures):
            shifts, quality, xcorr = fut.result()
            i = index[fut.key]
            finished.add(fut.key)
            fut.release()
            yield frames(i), shifts, quality, xcorr
    finally:
        pending = [f for f in futures if f.key not in finished]
        if pending:
            client.cancel(pending)
        reg.release()
