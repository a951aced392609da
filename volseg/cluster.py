"""The Dask cluster every command runs on: the local machine by default, or Slurm.

One function, :func:`open_client`, builds the cluster for every command, so predict,
evaluate and train share the same choices (and the same error messages).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from .errors import InputError

CLUSTER_KINDS = ("local", "slurm")


@contextmanager
def open_client(cluster: str = "local", *, workers: int | None = None,
                threads: int | None = None, processes: bool = True,
                jobs: int | None = None, adapt: tuple[int, int] | None = None,
                jobqueue_config: str | os.PathLike | None = None, log=None):
    """Start a Dask cluster and yield a ``distributed.Client`` connected to it.

    Parameters
    ----------
    cluster : {"local", "slurm"}
        Where the workers run.
    workers, threads : int, optional
        Local cluster: worker processes and threads per worker (default one worker
        process using every core).
    processes : bool
        Local cluster: workers in processes (True) or threads of this process.
    jobs, adapt, jobqueue_config :
        Slurm cluster: fixed number of jobs, or adaptive ``(min, max)`` jobs, and the
        dask-jobqueue profile to read.
    """
    if cluster not in CLUSTER_KINDS:
        raise InputError(f"--cluster: unknown cluster {cluster!r}; use one of {', '.join(CLUSTER_KINDS)}")
    if cluster == "local":
        with _local_client(workers=workers, threads=threads, processes=processes) as client:
            yield client
        return
    raise InputError("--cluster slurm: not available yet")


@contextmanager
def _local_client(*, workers, threads, processes):
    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    workers = workers or 1
    if workers < 1:
        raise InputError(f"--workers: must be at least 1, got {workers}")
    threads = threads or max(1, cores // workers)
    if threads < 1:
        raise InputError(f"--threads: must be at least 1, got {threads}")
    with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=processes,
                      dashboard_address=None, silence_logs=logging.ERROR) as lc:
        with Client(lc) as client:
            yield client
