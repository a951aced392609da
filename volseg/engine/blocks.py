"""The block engine: every stage is a function run over the blocks of a store.

In the spirit of daisy's ``Task``:

* a :class:`BlockGrid` declares the geometry once: the array's shape, the block shape
  (usually one shard, so no two blocks share a chunk and tasks write without locks),
  and a ``halo`` of context read around each block;
* a *process function* ``process(i)`` reads block ``i``'s input straight from Zarr,
  writes its output and returns something small (counts, a byte total): pixel data
  never passes through the scheduler;
* done-ness is asked of the output (a :class:`BlockLedger`), so a rerun
  skips finished blocks and resume comes for free;
* one runner, :func:`run_blocks`, with one meaning of "local" (``client=None``: a pool
  of threads in this process) and of a cluster (a ``distributed.Client``: a local
  cluster or Slurm workers, see :mod:`volseg.engine.cluster`). It keeps a bounded window of
  tasks in flight, reports progress, cancels the rest on the first failure, and names
  the block that failed.

A new stage is a process function plus a few lines: see ``volseg verify``
(:mod:`volseg.verify`).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import zarr

from volseg.errors import InputError, operational_error
from volseg.io.store import LEDGER


#: TensorFlow's intra-op threads in every process that runs a model, whatever cores it
#: has. oneDNN splits a convolution's sums by its number of threads, so 1 and 2 threads
#: give probabilities that differ in the last bit (1,313 of 524,288 for a U-Net on 8
#: tiles), while 2 threads give the same bits on 1 core or on 2: a fixed count makes a
#: prediction the same on a laptop, a 1-core Slurm job or a 64-core node. Two threads
#: are the best one process does on 2 cores; more cores take more worker processes.
MODEL_THREADS = 2


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (what Slurm, ``taskset`` or
    a container's cpuset grant it), not every core of the machine, so a job given 4 of
    64 cores runs 4 threads, not 64."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BlockGrid:
    """The blocks of a (t, z, y, x) array, numbered in C order.

    Parameters
    ----------
    shape : tuple of int
        The array's shape.
    block : tuple of int
        Block shape (the last block along an axis may be smaller).
    halo : tuple of int, optional
        Context read on each side of a block, clipped at the array's edges.
    """

    shape: tuple
    block: tuple
    halo: tuple = (0, 0, 0, 0)

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "block", tuple(max(1, min(int(b), n)) if n else 1
                                                for b, n in zip(self.block, self.shape)))
        object.__setattr__(self, "halo", tuple(int(h) for h in self.halo))

    @property
    def counts(self) -> tuple[int, ...]:
        """Blocks along each axis."""
        return tuple(math.ceil(n / b) if n else 0 for n, b in zip(self.shape, self.block))

    def __len__(self) -> int:
        return int(np.prod(self.counts))

    def region(self, i: int) -> tuple[slice, ...]:
        """The box block ``i`` writes."""
        pos = np.unravel_index(int(i), self.counts)
        return tuple(slice(p * b, min((p + 1) * b, n))
                     for p, b, n in zip(pos, self.block, self.shape))

    def read_box(self, i: int) -> tuple[slice, ...]:
        """The box block ``i`` reads: its region grown by the halo, clipped to the array."""
        return tuple(slice(max(0, r.start - h), min(n, r.stop + h))
                     for r, h, n in zip(self.region(i), self.halo, self.shape))

    def __iter__(self):
        """The regions of all blocks, in order."""
        return (self.region(i) for i in range(len(self)))

    def frame_spans(self, frames):
        """Blocks that hold some of the wanted (t, z) ``frames``, narrowed to them.

        Yields ``(region, members)``: the block's box with its t and z ranges cut to the
        span of the wanted frames inside it (the span may include unwanted frames between
        them), and those wanted frames, in block order.
        """
        by_block: dict = {}
        for t, z in frames:
            by_block.setdefault((t // self.block[0], z // self.block[1]), []).append((t, z))
        counts = self.counts
        for (bt, bz), members in sorted(by_block.items()):
            ts = slice(min(t for t, _ in members), max(t for t, _ in members) + 1)
            zs = slice(min(z for _, z in members), max(z for _, z in members) + 1)
            for by in range(counts[2]):
                for bx in range(counts[3]):
                    i = int(np.ravel_multi_index((bt, bz, by, bx), counts))
                    region = self.region(i)
                    yield (ts, zs, region[2], region[3]), members


def read_unit(array) -> tuple[int, ...]:
    """The natural read unit of a (t, z, y, x) array: its shard, else its chunk, else
    one frame (for plain numpy arrays)."""
    shape = tuple(array.shape)
    unit = getattr(array, "shards", None) or getattr(array, "chunks", None)
    if not unit or len(unit) != 4:
        return (1, 1, shape[2], shape[3])
    return tuple(int(c) for c in unit)


def frame_runs(shape, depth: int) -> BlockGrid:
    """Runs of up to ``depth`` whole frames of one time point (one shard row deep)."""
    return BlockGrid(shape, (1, depth, shape[2], shape[3]))


def describe(region) -> str:
    """``t=1, z=0..7, y=0..522, x=0..820`` for messages."""
    return ", ".join(f"{n}={s.start}..{s.stop - 1}" if s.stop - s.start > 1 else f"{n}={s.start}"
                     for n, s in zip("tzyx", region))


# --------------------------------------------------------------------------- running

class _Failed:
    """A task's expected failure (bad or damaged input, a full disk), sent back as a
    value so that Dask does not log it as a crashed task; re-raised by the runner."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _call(process: Callable, i: int):
    try:
        return process(i)
    except InputError as exc:
        return _Failed(exc)
    except OSError as exc:
        known = operational_error(exc)
        if known is None:
            raise
        return _Failed(known)


def run_blocks(process: Callable, todo: Iterable[int], *, client=None, total: int | None = None,
               done_before: int = 0, progress=None, on_result=None,
               resources: dict | None = None, window: int | None = None,
               threads: int | None = None, grid: BlockGrid | None = None) -> int:
    """Run ``process(i)`` for every block ``i`` in ``todo``; returns how many ran.

    Over 100 lines: the one loop of the engine (a window of tasks, progress, the first
    failure cancelling the rest, locally or on Dask), kept whole so its ordering rules
    read in one place.

    Parameters
    ----------
    process : callable
        ``process(i)`` does block ``i`` completely (reads, writes, marks it done) and
        returns something small. Must pickle when ``client`` is given.
    todo : iterable of int
        Blocks still to do (a resumed run leaves out the done ones).
    client : distributed.Client, optional
        Run on this Dask cluster. None: a pool of ``threads`` threads in this process
        (default one per core this process may use), right for work that releases the
        GIL (codecs, TIFF, numpy).
    total, done_before : int
        For progress: all blocks, and those done before this run.
    progress : callable, optional
        ``progress(done, total)``, called as blocks finish.
    on_result : callable, optional
        ``on_result(i, value)`` for each finished block, in completion order (a streaming
        reduction: evaluate sums its counts here).
    resources : dict, optional
        Dask worker resources each task needs (``{"GPU": 1}``).
    window : int, optional
        Tasks in flight at once (default 4 per thread, at least 16): 10^5 blocks never
        sit in the scheduler together.
    grid : BlockGrid, optional
        Used to name a failed block's region in the error.

    Raises
    ------
    InputError
        The first expected failure of a block, as raised in it (the rest are cancelled).
    Exception
        An unexpected one, with a note naming the block.
    """
    todo = list(todo)
    total = done_before + len(todo) if total is None else total
    if progress:
        progress(done_before, total)
    if not todo:
        return 0
    if client is None:
        import queue as _queue
        from concurrent.futures import ThreadPoolExecutor

        threads = threads or usable_cores()
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="volseg-block")
        finished = _queue.SimpleQueue()

        def submit(i):
            fut = pool.submit(_call, process, i)
            fut.add_done_callback(finished.put)
            return fut

        next_done = finished.get
        cancel = lambda fs: [f.cancel() for f in fs]  # noqa: E731
    else:
        from distributed import as_completed

        threads = threads or client_threads(client)
        pool = None
        # as_completed is event-driven: no polling, one round trip per task
        completions = as_completed([], with_results=False)

        def submit(i):
            fut = client.submit(_call, process, i, pure=False, resources=resources)
            completions.add(fut)
            return fut

        next_done = lambda: next(completions)  # noqa: E731
        cancel = client.cancel
    window = window or max(16, 4 * threads)
    queue = iter(todo)
    pending: dict = {}
    done = done_before
    try:
        for i in itertools.islice(queue, window):
            pending[submit(i)] = i
        while pending:
            fut = next_done()
            i = pending.pop(fut)
            try:
                value = fut.result()
            except Exception as exc:
                _note(exc, i, grid)
                raise
            if hasattr(fut, "release"):
                fut.release()  # the scheduler forgets it: memory stays flat
            if isinstance(value, _Failed):
                raise value.exc
            if on_result is not None:
                on_result(i, value)
            done += 1
            if progress:
                progress(done, total)
            nxt = next(queue, None)
            if nxt is not None:
                pending[submit(nxt)] = nxt
    except BaseException:
        cancel(list(pending))
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return len(todo)


def _note(exc: BaseException, i: int, grid: BlockGrid | None) -> None:
    where = f"block {i}" + (f" ({describe(grid.region(i))})" if grid is not None else "")
    if hasattr(exc, "add_note"):
        exc.add_note(f"volseg: while processing {where}")


def client_threads(client) -> int:
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # workers not arrived yet
        return 1


class BlockLedger:
    """Which blocks of a store are written: one tiny chunk per finished block.

    The ledger is the output's own statement of done-ness (daisy's idea): a block is
    marked only after its data is written, so a rerun skips exactly the finished blocks.
    """

    def __init__(self, group: zarr.Group, n: int, name: str = LEDGER):
        self.n = n
        self.name = name
        if name in group:
            self.array = group[name]
        else:
            self.array = zarr.create_array(
                group.store, name=f"{group.path}/{name}" if group.path else name,
                shape=(n,), chunks=(1,), dtype="uint8", fill_value=0, compressors=None)
        if self.array.shape != (n,):
            raise InputError(f"{group.store}: block ledger does not match this job; use --overwrite")

    def done(self) -> np.ndarray:
        """Boolean array: block i is written.

        Asked of the store's listing, not by reading every mark: one listing (a few
        requests per thousand blocks on object storage) instead of one read per block,
        which took tens of seconds at 10^6 blocks. A mark's object exists only once the
        block's data is written (``mark_done`` comes after the write, and marks are
        never written as 0), so its presence is the whole statement, even if a kill
        tore the one byte inside.
        """
        from zarr.core.sync import sync

        array = self.array.async_array
        # the key of block i is this text followed by i ("c/" for Zarr v3's default)
        prefix = (array.store_path.path.rstrip("/") + "/"
                  + array.metadata.encode_chunk_key((0,))[:-1])

        async def listing() -> list[str]:
            return [key async for key in array.store_path.store.list_prefix(prefix)]

        marks = np.zeros(self.n, dtype=bool)
        for key in sync(listing()):
            name = key[len(prefix):]
            if name.isascii() and name.isdigit() and int(name) < self.n:  # else not a mark
                marks[int(name)] = True
        return marks

    def todo(self) -> list[int]:
        """The blocks still to do, in order (what a resumed run computes)."""
        return np.flatnonzero(~self.done()).tolist()

    def mark_done(self, index: int) -> None:
        # In a local store the mark's one raw byte is written as a file, not through
        # zarr-python: its requests wait on the one event loop that every write of the
        # process shares, and there a mark took 7.6 ms, a fifth of convert's time per
        # block of 8 frames (benchmarks/bench_convert.py). A ledger of other codecs (none
        # volseg writes) or in an object store goes through zarr.
        from zarr.codecs import BytesCodec
        from zarr.storage import LocalStore

        array = self.array.async_array
        store = array.store_path.store
        if [type(c) for c in array.metadata.codecs] != [BytesCodec] or \
                not isinstance(store, LocalStore):
            self.array[index] = 1
            return
        key = array.metadata.encode_chunk_key((index,))
        path = os.path.join(str(store.root), array.store_path.path, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(b"\x01")

    def delete(self, group: zarr.Group) -> None:
        if self.name in group:
            del group[self.name]
