"""Registration on a dask.distributed cluster: one task per frame chunk.

:func:`iter_register_chunks` sends a picklable
:class:`~napari_maskalign.engine.FrameRegistrar` (the reference, the mask and
everything precomputed from them) to the workers once and registers each
chunk of frames of a dask array as one task. Results come back per chunk as
they complete, so a caller can report progress and save shifts as they
arrive. Without a distributed client the engine reads dask stacks in this
process (see :mod:`._frames`) and registers frames in threads.

This module only moves frames and results around; the registration itself is
``FrameRegistrar.register``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np

from ._result import FrameRecord

__all__ = ["active_client", "iter_register_chunks"]


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


def _register_chunk(block, registrar) -> list[FrameRecord]:
    """Register every frame of one chunk."""
    return [registrar.register(frame) for frame in np.asarray(block)]


def iter_register_chunks(
    stack, registrar, client, start: int = 0
) -> Iterator[tuple[np.ndarray, list[FrameRecord]]]:
    """Register frames ``start..n-1`` of a dask stack on a cluster, one task per chunk.

    Parameters
    ----------
    stack : dask.array.Array, shape (n_frames, *frame_shape)
        Frames along the first axis; its chunks along that axis become the
        tasks (frames are made whole in every chunk first).
    registrar : FrameRegistrar
        Built once from the reference (and mask); sent to the workers once.
    client : distributed.Client
        The cluster's client.
    start : int
        First frame to register (to resume an interrupted run).

    Yields
    ------
    frame_indices : ndarray of int, shape (k,)
    records : list of FrameRecord, one per frame

    Chunks are yielded as they complete (not necessarily in order). Closing
    the generator early cancels the chunks still pending.
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
    sub = stack[start:]
    sub = sub.rechunk({ax: -1 for ax in range(1, sub.ndim)})
    blocks = sub.to_delayed().ravel()
    edges = start + np.concatenate([[0], np.cumsum(sub.chunks[0])]).astype(int)
    token = uuid.uuid4().hex[:12]
    reg = client.scatter(registrar, hash=False)
    run = dask.delayed(_register_chunk, pure=True)
    tasks = [run(b, reg, dask_key_name=f"register-chunk-{token}-{i}") for i, b in enumerate(blocks)]

    from distributed import as_completed

    # earlier chunks first (the scheduler's own order ran chunk 0 last): the saved table is
    # the finished prefix, so a run that loses its cluster keeps what finished
    futures = [client.compute(t, priority=len(tasks) - i) for i, t in enumerate(tasks)]
    index = {f.key: i for i, f in enumerate(futures)}
    finished: set = set()
    try:
        for fut in as_completed(futures):
            records = fut.result()
            i = index[fut.key]
            finished.add(fut.key)
            fut.release()
            yield np.arange(edges[i], edges[i + 1]), records
    finally:
        pending = [f for f in futures if f.key not in finished]
        if pending:
            client.cancel(pending)
        reg.release()
