"""Running a list of blocks on a Dask cluster, daisy-style.

Work is a list of block numbers; each task reads its own input from Zarr, writes its
own output and records itself as done in the store's ledger, so pixel data never passes
through the scheduler and a rerun skips what is done. The client only sees small
return values (counts, timings).
"""

from __future__ import annotations

from typing import Callable, Iterable


def run_blocks(client, task: Callable, indices: Iterable[int], *, progress=None,
               resources: dict | None = None, done_before: int = 0, total: int | None = None,
               on_result: Callable | None = None) -> int:
    """Run ``task(i)`` for every block number ``i`` on ``client``; return how many ran.

    Parameters
    ----------
    client : distributed.Client or None
        None runs the blocks on dask's threaded scheduler in this process (every core,
        no cluster start-up: right for I/O-bound work such as conversion).
    task : callable
        ``task(i)`` processes block ``i`` completely (including marking it done).
    indices : iterable of int
        Blocks still to do.
    progress : callable, optional
        ``progress(done, total)``, called as blocks finish.
    resources : dict, optional
        Dask worker resources each task needs (e.g. ``{"GPU": 1}``).
    done_before, total : int
        Blocks already done (a resumed run) and the total, for progress.
    on_result : callable, optional
        Called with each task's return value, in completion order.

    The first failing block cancels the rest and its exception is re-raised here.
    """
    indices = list(indices)
    total = total if total is not None else done_before + len(indices)
    if progress:
        progress(done_before, total)
    if not indices:
        return 0
    if client is None:
        return _run_threads(task, indices, progress=progress, done_before=done_before,
                            total=total, on_result=on_result)
    from distributed import as_completed

    futures = client.map(task, indices, pure=False, resources=resources)
    done = done_before
    try:
        for fut in as_completed(futures):
            result = fut.result()
            if on_result is not None:
                on_result(result)
            done += 1
            if progress:
                progress(done, total)
    except BaseException:
        client.cancel(futures)
        raise
    return len(indices)


def _run_threads(task, indices, *, progress, done_before, total, on_result) -> int:
    from dask.callbacks import Callback

    state = {"done": done_before}
    graph = {f"volseg-block-{i}": (task, i) for i in indices}

    def posttask(key, result, dsk, state_, worker_id):
        if key in graph:
            state["done"] += 1
            if on_result is not None:
                on_result(result)
            if progress:
                progress(state["done"], total)

    with Callback(posttask=posttask):
        from dask.threaded import get

        get(graph, list(graph))
    return len(indices)
