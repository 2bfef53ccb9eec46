"""Register a stack to disk: the shifts table follows the frames, locally or on a cluster.

:func:`register_to_journal` runs the engine over the frames a
:class:`~napari_maskalign.workflow.journal.ShiftJournal` does not hold yet,
records every finished frame there (the table on disk follows), and ends
with the result over the whole table, earlier frames of a resumed run
included. With a ``dask.distributed`` client the frames are registered as
one task per chunk on the cluster (:func:`dask_client` makes one).
"""

from __future__ import annotations

import contextlib

import numpy as np

from ..engine import RegistrationRun, build_result, transform_parameters
from ..io import as_dask

__all__ = ["dask_client", "register_to_journal"]


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None):
    """A ``dask.distributed`` client for the length of a ``with`` block, or None.

    ``scheduler``: the address of a running cluster (its workers must see
    the same files); ``workers``: start a local cluster of that many worker
    processes, one thread each. Neither: None (no cluster).
    """
    if not (scheduler or workers):
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError(
            "a dask cluster needs dask.distributed: pip install 'napari-maskalign[distributed]'"
        ) from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"cannot connect to the dask scheduler at {scheduler}: {exc}") from None
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def cluster_stack(stack, options, client, chunk_frames: int = 16):
    """The stack and options a cluster run uses: a dask array of ``chunk_frames``-frame
    chunks, one FFT thread per task, and a mean reference computed in parallel."""
    if options.mode in ("previous", "template"):
        raise ValueError(
            f"reference {options.reference!r} registers frames one after another, so it cannot "
            "be split across a cluster; use a frame number or 'mean', or run without a cluster"
        )
    lazy = as_dask(stack, chunk_frames)
    options = options.replace(workers=1)
    if options.mode == "mean":  # one parallel pass over the frames instead of n reads
        a, b = options.mean_range(int(lazy.shape[0]))
        mean = lazy[a:b].astype(np.float64).mean(axis=0).compute()
        options = options.replace(reference=mean, reference_range=None)
    return lazy, options


def register_to_journal(stack, journal, options, *, mask=None, client=None, chunk_frames: int = 16):
    """Register the frames ``journal`` lacks; a generator of the engine's progress.

    Every finished frame is recorded in ``journal`` and the table on disk
    follows (``journal.save`` decides how often). Template refinement's
    shifts are final only after its last pass, so they are recorded then.
    Whatever stops the run (an error, a cancel, Ctrl-C), the finished
    leading frames are saved before it ends.

    Returns (``StopIteration.value``, or ``yield from``) the
    :class:`~napari_maskalign.engine.RegistrationResult` over the whole table,
    with outliers flagged by the options' thresholds.
    """
    n = journal.n_frames
    start = journal.saved
    frame_shape = tuple(int(s) for s in stack.shape[1:])
    moves = journal.rotations is not None
    run_options = options
    if start < n:
        if client is not None:
            stack, run_options = cluster_stack(stack, options, client, chunk_frames)
        previous = None
        if options.mode == "previous" and start:
            previous = journal.shifts[start - 1]
            if moves:
                previous = (previous, journal.rotations[start - 1], journal.scales[start - 1])
        run = RegistrationRun(stack, run_options, mask=mask, start=start, previous_shift=previous)
        template = options.mode == "template"
        try:
            for p in run:
                if not template:
                    journal.record([p.frame], p.shift[None], [p.quality],
                                   *_rotation_scale(p.record.transform, frame_shape))
                    journal.save()
                yield p
            if template:
                res = run.result
                journal.record(np.arange(start, n), res.raw_shifts, res.quality,
                               *_rotation_scale(res.raw_transforms if moves else None, frame_shape))
        finally:
            if journal.prefix() > journal.saved:  # keep what finished, however the run ends
                journal.save(force=True)
    journal.save(force=True)
    return build_result(
        journal.shifts,
        journal.quality,
        options,
        params={"masked": mask is not None, "start": start, "n_frames": n},
        rotations=journal.rotations,
        scales=journal.scales,
        frame_shape=frame_shape if moves else None,
    )


def _rotation_scale(transforms, frame_shape):
    """``(rotations, scales)`` of one transform or a stack of them; ``(None, None)``
    for a translation run."""
    if transforms is None:
        return None, None
    t = np.asarray(transforms, dtype=float)
    _, rotations, scales = transform_parameters(t.reshape(-1, *t.shape[-2:]), frame_shape)
    return rotations, scales
