"""The Slurm cluster: checks, the dask-jobqueue cluster, the first worker."""

from __future__ import annotations

import logging
import time
import weakref
from contextlib import ExitStack, contextmanager

from volseg.errors import InputError
from volseg.engine.cluster import checks
from volseg.engine.cluster.profile import gpus_per_job, job_kwargs, profile, settings
from volseg.engine.cluster.waiting import wait_for_first_worker

#: How long a lost worker's job is kept before adaptive scaling replaces it
#: (distributed's default is 15 s).
ADAPT_LOST_WORKER_TIMEOUT = "3s"

# Worker resources that a client's workers advertise, for gpu_resources().
CLIENT_RESOURCES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@contextmanager
def slurm_client(*, jobs, adapt, jobqueue_config, log, pending_timeout, connect_timeout):
    if adapt is not None:
        minimum, maximum = adapt
    elif jobs is None:
        jobs = 1

    checks.check_slurm_commands()
    checks.check_controller()
    # Under adapt, a job that ends (scancel, walltime) is replaced after this delay.
    extra = ({"distributed.deploy.lost-worker-timeout": ADAPT_LOST_WORKER_TIMEOUT}
             if adapt is not None else None)
    with profile(jobqueue_config, extra) as source, ExitStack() as stack:
        s = settings()
        kwargs = job_kwargs(source)
        checks.check_partition(s.get("queue"), source)

        checks.check_interface(s.get("interface"), source)
        checks.check_job_script(kwargs, source)

        from dask_jobqueue import SLURMCluster
        from distributed import Client

        try:
            cluster = SLURMCluster(silence_logs=logging.ERROR, **kwargs)
        except ValueError as e:  # dask-jobqueue's checks of the profile's values
            raise InputError(f"{source}: {str(e).splitlines()[0]}") from None
        stack.enter_context(cluster)
        if adapt is not None:
            cluster.adapt(minimum_jobs=minimum, maximum_jobs=maximum)
            what = f"adaptive, {minimum} to {maximum} Slurm jobs"
        else:
            cluster.scale(jobs=jobs)
            what = f"{jobs} Slurm job{'s' if jobs != 1 else ''}"
        client = stack.enter_context(Client(cluster))
        gpus = gpus_per_job(s.get("job-extra-directives"))
        CLIENT_RESOURCES[client] = {"GPU": 1} if gpus else {}
        if adapt is not None and minimum == 0:
            # Adaptive from zero submits jobs only once there is work: nothing to wait for.
            if log:
                log(f"Slurm: {what} ({source}); dashboard {client.dashboard_link}")
            yield client
            return
        if log:
            log(f"Slurm: {what} ({source}); waiting for the first worker; "
                f"dashboard {client.dashboard_link}")
        t0 = time.monotonic()
        wait_for_first_worker(client, cluster, source=source, settings=s,
                               pending_timeout=pending_timeout,
                               connect_timeout=connect_timeout)
        if log:
            log(f"Slurm: first worker connected after {time.monotonic() - t0:.1f} s")
        yield client
