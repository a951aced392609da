"""The Dask cluster every command runs on: the local machine by default, or Slurm.

One function, :func:`open_client`, builds the cluster for every command, so predict,
evaluate and train share the same choices (and the same error messages).

On Slurm the workers are dask-jobqueue jobs described by a *profile*: the
``jobqueue: slurm:`` section of a YAML file in dask-jobqueue's standard form (the
repository's ``jobqueue.yaml`` is a commented example). The profile is layered over
Dask's own configuration, so the usual locations (``~/.config/dask/``, ``/etc/dask/``,
``$DASK_CONFIG``) work too, and the file named by ``jobqueue_config`` (or
``./jobqueue.yaml``) wins over them.

Modules: :mod:`~volseg.engine.cluster.local` (this machine), :mod:`~volseg.engine.cluster.slurm`
(the dask-jobqueue cluster), :mod:`~volseg.engine.cluster.profile` (``jobqueue.yaml``, job
script, GPU directives), :mod:`~volseg.engine.cluster.checks` (pre-flight checks),
:mod:`~volseg.engine.cluster.waiting` (the first worker, squeue states, job logs) and
:mod:`~volseg.engine.cluster.walltime` (the time a job has left).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from volseg.errors import InputError
from volseg.engine.cluster.profile import DEFAULT_PROFILE, gpus_per_job, job_script
from volseg.engine.cluster.slurm import ADAPT_LOST_WORKER_TIMEOUT, CLIENT_RESOURCES

__all__ = ["ADAPT_LOST_WORKER_TIMEOUT", "CLUSTER_KINDS", "DEFAULT_PROFILE", "check_options",
           "gpu_resources", "gpus_per_job", "job_script", "open_client", "parse_adapt"]

CLUSTER_KINDS = ("local", "slurm")


def parse_adapt(text: str | None) -> tuple[int, int] | None:
    """``"MIN:MAX"`` as a pair of job counts (None stays None); see :func:`check_options`."""
    if text is None:
        return None
    try:
        lo, hi = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise InputError(f"expected MIN:MAX (e.g. 1:4), got {text!r}", param="adapt") from None
    return lo, hi


def check_options(cluster: str = "local", *, workers=None, threads=None, jobs=None,
                  adapt=None) -> None:
    """The rules of :func:`open_client`'s options, checked before anything starts.

    :class:`InputError` naming the parameter: an unknown ``cluster``; ``jobs`` or
    ``adapt`` on the local cluster, or both; ``adapt`` not ``0 <= MIN <= MAX``,
    ``MAX >= 1``; fewer than 1 ``jobs``, ``workers`` or ``threads``.
    """
    if cluster not in CLUSTER_KINDS:
        raise InputError(f"unknown cluster {cluster!r}; use one of {', '.join(CLUSTER_KINDS)}",
                         param="cluster")
    if cluster == "local" and (jobs is not None or adapt is not None):
        raise InputError("only for a Slurm cluster", param="jobs" if jobs is not None else "adapt")
    if jobs is not None and adapt is not None:
        raise InputError("give a number of jobs or an adaptive range, not both", param="adapt")
    if adapt is not None:
        try:
            lo, hi = (int(v) for v in adapt)
        except (TypeError, ValueError):
            raise InputError(f"expected MIN:MAX job counts, got {adapt!r}", param="adapt") from None
        if not 0 <= lo <= hi or hi < 1:
            raise InputError(f"need 0 <= MIN <= MAX and MAX >= 1, got {lo}:{hi}", param="adapt")
    for name, value in (("jobs", jobs), ("workers", workers), ("threads", threads)):
        if value is not None and value < 1:
            raise InputError(f"must be at least 1, got {value}", param=name)


@contextmanager
def open_client(cluster: str = "local", *, workers: int | None = None,
                threads: int | None = None, processes: bool = True,
                jobs: int | None = None, adapt: tuple[int, int] | None = None,
                jobqueue_config: str | os.PathLike | None = None, log=None,
                pending_timeout: float = 600.0, connect_timeout: float = 120.0):
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
    jobs : int, optional
        Slurm: a fixed number of worker jobs (default 1 when ``adapt`` is not given).
        A fixed cluster does not replace a job that ends (walltime, preemption).
    adapt : (int, int), optional
        Slurm: adaptive scaling between ``min`` and ``max`` jobs; a job that ends is
        replaced within seconds and its unfinished tasks run again elsewhere.
    jobqueue_config : path, optional
        Slurm: the profile (YAML with a ``jobqueue: slurm:`` section). Default:
        ``./jobqueue.yaml`` if it exists, else Dask's configuration alone.
    log : callable, optional
        ``log(message)`` for one-line status messages (jobs submitted, dashboard).
    pending_timeout : float
        Slurm: seconds to wait for a job to start before giving up (with squeue's
        reason for the wait).
    connect_timeout : float
        Slurm: seconds a running job's worker gets to connect to the scheduler.

    Yields
    ------
    distributed.Client
        With at least one worker connected. Pass :func:`gpu_resources` of it as
        ``resources=`` to tasks that run a model.
    """
    from volseg.engine.cluster.local import local_client
    from volseg.engine.cluster.slurm import slurm_client

    check_options(cluster, workers=workers, threads=threads, jobs=jobs, adapt=adapt)
    if cluster == "local":
        with local_client(workers=workers, threads=threads, processes=processes) as client:
            yield client
        return
    with slurm_client(jobs=jobs, adapt=adapt, jobqueue_config=jobqueue_config, log=log,
                       pending_timeout=pending_timeout,
                       connect_timeout=connect_timeout) as client:
        yield client


def gpu_resources(client) -> dict | None:
    """The ``resources=`` that model tasks should ask for on this client's workers.

    ``{"GPU": 1}`` when the workers advertise a ``GPU`` resource (a Slurm profile that
    requests GPUs), else ``None`` (run anywhere: local cluster, CPU-only profile).
    """
    known = CLIENT_RESOURCES.get(client)
    if known is not None:
        return dict(known) or None
    try:
        workers = client.scheduler_info().get("workers", {})
    except Exception:  # a closed client: nothing to ask for
        return None
    if any("GPU" in (w.get("resources") or {}) for w in workers.values()):
        return {"GPU": 1}
    return None
