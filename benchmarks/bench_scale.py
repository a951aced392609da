"""The block engine at 10^5 and 10^6 frames: planning time, per-block overhead, memory.

No pixel data: a store of N frames (523 x 821, one shard per 8 frames of a time point, as
``volseg convert`` makes them) exists as array metadata only, and the process function
does nothing but return. What remains is the engine itself:

* plan     -- opening the store, the BlockGrid, the ledger's "not done" list (the
              ledger is a 1-D array of one tiny chunk per block, never written here);
* resume   -- the same list when half the blocks are marked done (a rerun after a
              kill): the ledger's listing against reading every mark (the old way);
* threads  -- ``run_blocks`` with ``client=None`` (threads of this process);
* dask     -- ``run_blocks`` on a local distributed cluster (1 worker process, 2
              threads): the scheduler's per-task overhead, as on Slurm;
* memory   -- the client's peak RSS growth over each run.

From the per-block overhead and a model time per block, the table says how many GPU
workers one scheduler keeps busy: ``workers = model_seconds / overhead_seconds``.

    python benchmarks/bench_scale.py [--frames 100000 1000000] [--dask-blocks 20000]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path


def _noop(i: int) -> int:
    return i


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_store(root: Path, frames: int):
    from volseg.io import store as st

    depth = 8
    shape = (frames // depth, depth, 523, 821)
    image = st.create_image(root / f"s{frames}.zarr", shape=shape, dtype="uint8",
                            job=st.make_job("bench-scale", parameters={}))
    return image


def plan(image):
    from volseg.engine.blocks import BlockGrid, BlockLedger

    t0 = time.perf_counter()
    grid = BlockGrid(image.shape, image.block_shape)
    ledger = BlockLedger(image.group, len(grid))
    todo = ledger.todo()
    return grid, todo, time.perf_counter() - t0


def resume_plan(image, grid) -> tuple[float, float]:
    """Seconds to find the blocks still to do with half of them marked: (listing, reading)."""
    from volseg.engine.blocks import BlockLedger

    ledger = BlockLedger(image.group, len(grid))
    ledger.array[: len(grid) // 2] = 1
    t0 = time.perf_counter()
    todo = BlockLedger(image.group, len(grid)).todo()
    t_list = time.perf_counter() - t0
    t0 = time.perf_counter()
    read = ledger.array[:] == 1
    t_read = time.perf_counter() - t0
    assert len(todo) == int((~read).sum()) == len(grid) - len(grid) // 2
    return t_list, t_read


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dask-blocks", type=int, default=20_000,
                    help="blocks run on the dask cluster (per-task overhead is flat)")
    ap.add_argument("--model-seconds", type=float, nargs="+", default=[0.3, 3.0, 30.0],
                    help="model time per block on one GPU, for the table")
    args = ap.parse_args(argv)
    from _common import machine_line  # the table's machine: compare within one run

    print(machine_line(), flush=True)
    from distributed import Client, LocalCluster

    from volseg.engine.blocks import run_blocks

    root = Path(tempfile.mkdtemp(prefix="volseg-scale-"))
    rows = []
    try:
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                          dashboard_address=":0") as lc, Client(lc) as client:
            for frames in args.frames:
                image = make_store(root, frames)
                rss0 = _rss_mb()
                grid, todo, t_plan = plan(image)
                t0 = time.perf_counter()
                run_blocks(_noop, todo, client=None, grid=grid)
                t_threads = time.perf_counter() - t0
                n_dask = min(len(todo), args.dask_blocks)
                t0 = time.perf_counter()
                run_blocks(_noop, todo[:n_dask], client=client, grid=grid)
                t_dask = time.perf_counter() - t0
                t_list, t_read = resume_plan(image, grid)
                rows.append({"frames": frames, "blocks": len(grid), "plan_s": t_plan,
                             "resume_list_s": t_list, "resume_read_s": t_read,
                             "threads_us": 1e6 * t_threads / len(todo),
                             "dask_us": 1e6 * t_dask / n_dask, "dask_blocks": n_dask,
                             "rss_growth_mb": _rss_mb() - rss0})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'frames':>10}{'blocks':>9}{'plan s':>8}{'resume s':>10}{'(read all)':>11}"
          f"{'threads us/block':>18}{'dask us/block':>15}{'client RSS +MB':>16}")
    for r in rows:
        print(f"{r['frames']:>10,}{r['blocks']:>9,}{r['plan_s']:>8.2f}{r['resume_list_s']:>10.2f}"
              f"{r['resume_read_s']:>11.2f}{r['threads_us']:>18.1f}"
              f"{r['dask_us']:>15.0f}{r['rss_growth_mb']:>16.0f}")
    print("resume: the blocks still to do with half marked, from the ledger's listing; "
          "(read all): reading every mark instead")
    over = rows[-1]["dask_us"] / 1e6
    print(f"\nGPU workers one scheduler keeps busy (per-block overhead {over * 1e3:.2f} ms):")
    for m in args.model_seconds:
        print(f"  model {m:>6.1f} s per block (8 frames of 523x821): {m / over:>8.0f} workers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
