"""The local Dask cluster: worker processes on this machine."""

from __future__ import annotations

import logging
from contextlib import contextmanager

from volseg.engine.blocks import usable_cores
from volseg.errors import InputError


@contextmanager
def local_client(*, workers, threads, processes):
    from distributed import Client, LocalCluster

    cores = usable_cores()
    workers = workers or 1
    if workers < 1:
        raise InputError(f"must be at least 1, got {workers}", param="workers")
    threads = threads or max(1, cores // workers)
    if threads < 1:
        raise InputError(f"must be at least 1, got {threads}", param="threads")
    # Worker processes size their TensorFlow thread pools from VOLSEG_THREADS: the cores
    # each process may use, whatever its number of Dask threads (they would each take
    # every core otherwise); threads of this process share one pool.
    per_process = max(1, cores // workers)
    extra = {"env": {"VOLSEG_THREADS": str(per_process)}} if processes else {}
    # distributed starts workers with MALLOC_TRIM_THRESHOLD_=64 KiB, so each block's
    # buffers go back to the kernel and fault in again (~8,700 page faults per block);
    # larger glibc thresholds make evaluate ~1.6x faster (benchmarks/bench_evaluate.py).
    config = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": str(128 * 2**20),
              "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}
    import dask

    if processes:  # in threads of this process (a notebook) its logging is the caller's
        preload = list(dask.config.get("distributed.worker.preload", None) or [])
        config["distributed.worker.preload"] = preload + ["volseg.engine.cluster.worker_logs"]

    with dask.config.set(config), \
            LocalCluster(n_workers=workers, threads_per_worker=threads, processes=processes,
                         dashboard_address=":0", silence_logs=logging.ERROR, **extra) as lc:
        with Client(lc) as client:
            yield client
