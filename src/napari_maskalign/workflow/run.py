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

from ..engine import RegistrationRun, build_result, mask_with_outliers, transform_parameters
from ..io import as_dask, write_shifts_csv

__all__ = ["ClusterLost", "cluster_errors", "dask_client", "register_to_journal"]


class ClusterLost(RuntimeError):
    """The dask cluster went away mid-run (workers killed, scheduler gone); what
    finished before is saved."""


def cluster_errors() -> tuple[type[BaseException], ...]:
    """The exceptions by which dask.distributed says the cluster was lost."""
    import asyncio
    import concurrent.futures

    errors: list = [asyncio.CancelledError, concurrent.futures.CancelledError, TimeoutError]
    try:
        import distributed
        from distributed.comm.core import CommClosedError
    except ImportError:
        return tuple(errors)
    errors += [distributed.KilledWorker, CommClosedError]
    cancelled = getattr(distributed.client, "FutureCancelledError", None)
    if cancelled is not None:
        errors.append(cancelled)
    return tuple(errors)


@contextlib.contextmanager
def cluster_guard(client):
    """Inside it, losing the cluster raises :class:`ClusterLost` in plain words."""
    if client is None:
        yield
        return
    try:
        yield
    except cluster_errors() as exc:
        try:
            text = str(exc)
        except Exception:  # KilledWorker's text needs the worker it lost
            text = ""
        detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise ClusterLost(f"the dask cluster was lost ({detail})") from exc


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
    Whatever stops the run (an error, a cancel, Ctrl-C, a lost cluster:
    :class:`ClusterLost`), the finished leading frames are saved before it
    ends.

    Returns (``StopIteration.value``, or ``yield from``) the
    :class:`~napari_maskalign.engine.RegistrationResult` over the whole table,
    with outliers flagged by the options' thresholds.
    """
    n = journal.n_frames
    start = journal.saved
    measured = None  # per-frame uncertainties, when this run measured every frame
    frame_shape = tuple(int(s) for s in stack.shape[1:])
    moves = journal.rotations is not None
    if start == n:  # nothing left to register; the outputs still need the mask it used
        used, hot = mask_with_outliers(stack, mask, options.hot_pixels)
    else:
        run_stack, run_options = stack, options
        if client is not None:
            with cluster_guard(client):
                run_stack, run_options = cluster_stack(stack, options, client, chunk_frames)
        previous = None
        if options.mode == "previous" and start:
            previous = journal.shifts[start - 1]
            if moves:
                previous = (previous, journal.rotations[start - 1], journal.scales[start - 1])
        run = RegistrationRun(run_stack, run_options, mask=mask, start=start,
                              previous_shift=previous)
        template = options.mode == "template"
        try:
            with cluster_guard(client):
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
        used, hot = run.result.valid_mask, run.result.hot_pixels
        measured = run.result.uncertainties if start == 0 else None
    journal.save(force=True)
    result = build_result(
        journal.shifts,
        journal.quality,
        options,
        params={"masked": mask is not None, "start": start, "n_frames": n,
                "n_hot_pixels": 0 if hot is None else int(hot.sum())},
        rotations=journal.rotations,
        scales=journal.scales,
        frame_shape=frame_shape if moves else None,
        hot_pixels=hot,
        valid_mask=used,
        uncertainties=measured,
    )
    if result.jumps is not None:  # smoothed: the table holds both, the smoothed shifts first
        write_shifts_csv(journal.path, result.shifts, result.quality,
                         rotations=result.rotations if moves else None,
                         scales=result.scales if moves else None, raw_shifts=result.raw_shifts)
    return result


def _rotation_scale(transforms, frame_shape):
    """``(rotations, scales)`` of one transform or a stack of them; ``(None, None)``
    for a translation run."""
    if transforms is None:
        return None, None
    t = np.asarray(transforms, dtype=float)
    _, rotations, scales = transform_parameters(t.reshape(-1, *t.shape[-2:]), frame_shape)
    return rotations, scales
