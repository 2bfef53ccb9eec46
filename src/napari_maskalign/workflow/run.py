"""Running on a dask.distributed cluster: a client, the stack as the cluster reads it,
and losing the cluster said in plain words.

:func:`~napari_maskalign.workflow.register` takes the client
:func:`dask_client` makes and registers one task per chunk there.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from ..io import as_dask

__all__ = ["ClusterLost", "cluster_errors", "dask_client"]

#: seconds a run waits for a scheduler to have at least one worker
WORKER_WAIT = 60.0

#: the loggers of dask.distributed, quiet while a client is held: a lost worker is one
#: line from the command (ClusterLost), not the tracebacks of every process that saw it
DASK_LOGGERS = ("distributed", "tornado", "asyncio")


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
        with _quiet_dask():
            try:
                client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise ValueError(f"cannot connect to the dask scheduler at {scheduler}: {exc}") from None
            with client:
                try:
                    client.wait_for_workers(1, timeout=WORKER_WAIT)
                except (TimeoutError, OSError):
                    raise ValueError(
                        f"the dask scheduler at {scheduler} has no workers (waited "
                        f"{WORKER_WAIT:g} s); start some with 'dask worker {scheduler}'"
                    ) from None
                yield client
        return
    with _quiet_dask():
        try:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.CRITICAL)
        except (RuntimeError, OSError, TimeoutError) as exc:  # a worker killed while starting
            raise ValueError(f"cannot start a local dask cluster of {workers} workers: "
                             f"{exc}") from None
        with cluster, Client(cluster) as client:
            yield client


@contextlib.contextmanager
def _quiet_dask():
    """dask.distributed's loggers at CRITICAL for a ``with`` block, then as they were."""
    loggers = [logging.getLogger(name) for name in DASK_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


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
