"""Benchmark of `volseg evaluate`: throughput against reading alone and scikit-learn,
and peak memory at 1x and 8x the frame count.

    .venv/bin/python benchmarks/bench_evaluate.py [--frames 64] [--workers 2] [--repeat 2]

Throughput is measured on 1x and on 8x the frames (cluster start-up and per-call
overheads weigh on small data sets).

Synthetic data: frames of 523 x 821 (8 depth slices per time point), sparse tubular
foreground (~3 %), uint8 probabilities from a smooth field plus noise, the mask at 0.5,
written with volseg.store's default chunks and codec. Measured:

* read only: the same blocks read in this process, and as tasks on the same local
  cluster as evaluate: probability + truth (the voxel pairs), and probability + mask +
  truth (what evaluate reads);
* evaluate: ``volseg.stages.evaluate.evaluate`` in one process (no cluster), on a local
  cluster of single-threaded worker processes (the CLI's default; with distributed's
  glibc setting and with a tuned one, see TUNED_MALLOC);
* scikit-learn in memory: ``confusion_matrix`` + ``roc_auc_score`` on the same voxels
  (arrays already loaded), in a subprocess;
* peak RSS (VmHWM) of evaluate in a fresh subprocess at 1x and 8x the frames: in one
  process, and on the local cluster (client and each worker).

Each rate is the best of ``--repeat`` runs, as voxels per wall-clock second and per
CPU second (this process, its scheduler and the workers): the machine is shared, and
CPU seconds show the cost of the work even when other jobs take the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

H, W, DEPTH = 523, 821, 8


def _base_frames(n=11, seed=0):
    """A few (truth, probability) frame pairs; frames of the store cycle through them."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    truths, probs = [], []
    for _ in range(n):
        field = ndi.gaussian_filter(rng.standard_normal((H, W)).astype(np.float32), 6)
        field /= field.std()
        # |field| small = thin ridges (tube-like), about 3 % of the frame
        ridge = -np.abs(field)
        cut = np.quantile(ridge, 0.97)
        truth = (ridge >= cut).astype(np.uint8)
        noisy = ridge + 0.08 * ndi.gaussian_filter(rng.standard_normal((H, W)).astype(np.float32), 2)
        logit = np.clip((noisy - cut) * 60.0, -40, 40)
        p = 1.0 / (1.0 + np.exp(-logit))
        prob = np.clip(np.rint(255 * p + rng.normal(0, 1.0, (H, W))), 0, 255).astype(np.uint8)
        truths.append(truth)
        probs.append(prob)
    return truths, probs


def make_stores(folder: Path, timepoints: int, *, threshold=0.5):
    """Write pred.zarr (probability + mask) and truth.zarr of (timepoints, DEPTH, H, W)."""
    from volseg.io import store

    truths, probs = _base_frames()
    shape = (timepoints, DEPTH, H, W)
    job = store.make_job("bench", parameters={"timepoints": timepoints})
    chunks, shards = store.default_chunks(shape, np.uint8)
    truth = store.create_image(folder / "truth.zarr", shape=shape, dtype=np.uint8, job=job)
    pred = store.create_prediction(folder / "pred.zarr", shape=shape, chunks=chunks,
                                   shards=shards, job=job, threshold=threshold)
    cut = int(np.ceil(threshold * 255))
    for t in range(timepoints):
        idx = [(t * 3 + z) % len(truths) for z in range(DEPTH)]
        tr = np.stack([np.roll(truths[i], 17 * t, axis=1) for i in idx])
        pr = np.stack([np.roll(probs[i], 17 * t, axis=1) for i in idx])
        truth.array[t] = tr
        pred.probability.array[t] = pr
        pred.mask.array[t] = (pr >= cut).astype(np.uint8)
    store.finish(truth.group)
    store.finish(pred.probability.group)
    store.finish(pred.mask.group)
    store.finish(pred.group)
    return folder / "pred.zarr", folder / "truth.zarr"


def _read_task(arrays, region):
    n = 0
    for a in arrays:
        n += np.asarray(a[region]).size
    return n


def _blocks(pred_path, truth_path, threads, *, with_mask):
    from volseg.io import store
    from volseg.stages.evaluate import plan_blocks

    pred = store.open_prediction(pred_path)
    truth = store.open_image(truth_path)
    arrays = [pred.probability.array, truth.array] + ([pred.mask.array] if with_mask else [])
    return arrays, plan_blocks(truth.shape, pred.mask.block_shape, threads=threads)


def read_cluster(client, pred_path, truth_path, *, with_mask):
    """Read the arrays alone, with the same blocks and cluster as evaluate."""
    from distributed import wait

    from volseg.engine.blocks import client_threads as _client_threads

    arrays, blocks = _blocks(pred_path, truth_path, _client_threads(client), with_mask=with_mask)
    futs = [client.submit(_read_task, arrays, b, pure=False) for b in blocks]
    wait(futs)
    return sum(f.result() for f in futs)


def read_inprocess(pred_path, truth_path, *, with_mask=False):
    """Read the arrays block by block in this process (the read-only anchor; zarr
    decodes in its own threads)."""
    arrays, blocks = _blocks(pred_path, truth_path, 2, with_mask=with_mask)
    return sum(_read_task(arrays, b) for b in blocks)


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu(client) -> float:
    """CPU seconds used so far by this process (client, scheduler) and the workers."""
    total = _own_cpu()
    if client is not None:
        total += sum(client.run(_own_cpu).values())
    return total


def measure(repeat, voxels, fn, client=None):
    """Best of ``repeat``: (voxels per wall-clock second, voxels per CPU second)."""
    best_wall = best_cpu = 0.0
    for _ in range(repeat):
        c0, t0 = _cpu(client), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, _cpu(client) - c0
        best_wall, best_cpu = max(best_wall, voxels / wall), max(best_cpu, voxels / cpu)
    return best_wall, best_cpu


def child_sklearn(pred_path, truth_path, frames):
    """In a subprocess: scikit-learn on ``frames`` frames loaded in memory."""
    from sklearn.metrics import confusion_matrix, roc_auc_score

    from volseg.io import store

    pred = store.open_prediction(pred_path)
    truth = store.open_image(truth_path)
    t_n = max(1, frames // DEPTH)
    y = truth.array[:t_n].ravel()
    p = pred.probability.array[:t_n].ravel()
    m = pred.mask.array[:t_n].ravel()
    t, c = time.perf_counter(), _own_cpu()
    cm = confusion_matrix(y, m, labels=[0, 1])
    auc = roc_auc_score(y, p)
    elapsed, cpu = time.perf_counter() - t, _own_cpu() - c
    rss = peak_rss()
    print(json.dumps({"rate": y.size / elapsed, "cpu_rate": y.size / cpu, "rss": rss, "tp": int(cm[1, 1]), "auc": auc}))


def peak_rss() -> int:
    """Peak resident memory of this process in bytes (VmHWM).

    Not ``ru_maxrss``: on Linux a child started by fork + exec inherits its parent's
    high-water mark there, so it would report the (larger) benchmark driver.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_rss(pred_path, truth_path, mode="serial"):
    """In a subprocess: evaluate and report peak RSS (``mode``: "serial" in this
    process, or "cluster": the CLI's default local cluster, RSS of each process)."""
    from volseg.stages.evaluate import evaluate

    before = peak_rss()
    t = time.perf_counter()
    workers = []
    if mode == "serial":
        r = evaluate(pred_path, truth_path)
    else:
        with _cluster(os.cpu_count() or 1, 1) as client:
            r = evaluate(pred_path, truth_path, client=client)
            workers = sorted(client.run(peak_rss).values())
    elapsed = time.perf_counter() - t
    print(json.dumps({"rss": peak_rss(), "rss_before": before, "workers": workers,
                      "rate": r["voxels"] / elapsed, "voxels": r["voxels"]}))


def _child(*args):
    out = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# glibc settings for worker processes: distributed sets MALLOC_TRIM_THRESHOLD_=65536,
# which sends every large temporary back to the kernel (page faults on every block).
TUNED_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(128 * 2**20), "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}


@contextlib.contextmanager
def _cluster(workers, threads, *, tuned=False):
    """A local cluster of worker processes, with distributed's glibc setting or tuned."""
    import dask
    import distributed  # noqa: F401  (registers the distributed config)

    from volseg.engine.cluster import open_client

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    if tuned:
        env.update(TUNED_MALLOC)
    else:
        env["MALLOC_TRIM_THRESHOLD_"] = "65536"  # distributed's default
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)  # the nanny copies env into ours
    # The nannies read the setting when the cluster starts: keep it set until then.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        with open_client("local", workers=workers, threads=threads) as client:
            yield client


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64, help="frames at 1x (multiple of 8)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=2, help="best of N for throughput")
    ap.add_argument("--sklearn-frames", type=int, default=None,
                    help="frames for scikit-learn (default: all at 1x)")
    ap.add_argument("--dir", default=None, help="where to write the stores (default: a temp dir)")
    args = ap.parse_args(argv)
    from _common import machine_line  # the table's machine: compare within one run

    print(machine_line(), flush=True)

    base = Path(args.dir or tempfile.mkdtemp(prefix="bench-evaluate-"))
    base.mkdir(parents=True, exist_ok=True)
    t1 = max(1, args.frames // DEPTH)
    data, voxels = {}, {}
    for name, n_t in (("1x", t1), ("8x", 8 * t1)):
        folder = base / name
        folder.mkdir(exist_ok=True)
        t = time.perf_counter()
        if not (folder / "pred.zarr").exists():
            make_stores(folder, n_t)
        data[name] = (folder / "pred.zarr", folder / "truth.zarr")
        voxels[name] = n_t * DEPTH * H * W
        print(f"data {name}: {n_t * DEPTH} frames of {H}x{W} ({n_t} x {DEPTH}, "
              f"{n_t * DEPTH * H * W / 1e6:.0f} M voxels), ready in "
              f"{time.perf_counter() - t:.1f} s", flush=True)

    from volseg.stages.evaluate import evaluate

    w = args.workers
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    rows = []  # (data, what, (wall rate, cpu rate))
    for name in ("1x", "8x"):
        pred, truth = data[name]
        n = voxels[name]
        rows.append((name, "read probability + truth, one process",
                     measure(args.repeat, n, lambda: read_inprocess(pred, truth))))
        rows.append((name, "read probability + mask + truth, one process",
                     measure(args.repeat, n, lambda: read_inprocess(pred, truth, with_mask=True))))
        rows.append((name, "evaluate in one process (client=None)",
                     measure(args.repeat, n, lambda: evaluate(pred, truth))))
        with _cluster(w, 1) as client:
            rows.append((name, f"read probability + truth, {w} procs", measure(
                args.repeat, n, lambda: read_cluster(client, pred, truth, with_mask=False), client)))
            rows.append((name, f"read probability + mask + truth, {w} procs", measure(
                args.repeat, n, lambda: read_cluster(client, pred, truth, with_mask=True), client)))
            rows.append((name, f"evaluate, {w} procs x 1 thread (CLI default)", measure(
                args.repeat, n, lambda: evaluate(pred, truth, client=client), client)))
            report = evaluate(pred, truth, client=client)
        with _cluster(w, 1, tuned=True) as client:
            assert set(client.run(lambda: os.environ.get("MALLOC_MMAP_THRESHOLD_")).values()) \
                == {TUNED_MALLOC["MALLOC_MMAP_THRESHOLD_"]}
            rows.append((name, f"evaluate, {w} procs x 1 thread, malloc tuned", measure(
                args.repeat, n, lambda: evaluate(pred, truth, client=client), client)))
        if name == "1x":
            sk = _child("--child-sklearn", pred, truth, args.sklearn_frames or t1 * DEPTH)
            rows.append((name, "scikit-learn confusion_matrix + roc_auc_score, in RAM",
                         (sk["rate"], sk["cpu_rate"])))
            sk_auc, our_auc = sk["auc"], report["roc_auc"]
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    for name in ("1x", "8x"):
        ref = next(r for d, what, r in rows if d == name and what.startswith("read probability + truth, one"))
        print()
        print(f"| {name + ' (' + str(voxels[name] // (H * W)) + ' frames)':52} | M vox/s | x read | "
              f"M vox/CPU-s | x read |")
        print(f"|{'-' * 54}|---------|--------|-------------|--------|")
        for d, what, (wall, cpu) in rows:
            if d == name:
                print(f"| {what:52} | {wall / 1e6:7.1f} | {wall / ref[0]:6.2f} | "
                      f"{cpu / 1e6:11.1f} | {cpu / ref[1]:6.2f} |")
    ev1 = next(r for d, what, r in rows if d == "1x" and "CLI default" in what)
    ev8 = next(r for d, what, r in rows if d == "8x" and "CLI default" in what)
    print(f"\nevaluate (CLI default) / scikit-learn: {ev1[0] / sk['rate']:.0f}x at 1x, "
          f"{ev8[0] / sk['rate']:.0f}x at 8x (wall clock); scikit-learn peak RSS "
          f"{sk['rss'] / 2**30:.2f} GiB; ROC AUC scikit-learn {sk_auc:.9f}, volseg {our_auc:.9f}")

    rss1 = _child("--child-rss", *data["1x"], "serial")
    rss8 = _child("--child-rss", *data["8x"], "serial")
    print(f"peak RSS, evaluate in one process: 1x {rss1['rss'] / 2**20:.0f} MiB, "
          f"8x {rss8['rss'] / 2**20:.0f} MiB, ratio {rss8['rss'] / rss1['rss']:.2f} "
          f"(after imports: {rss1['rss_before'] / 2**20:.0f} MiB)")
    c1 = _child("--child-rss", *data["1x"], "cluster")
    c8 = _child("--child-rss", *data["8x"], "cluster")
    mib = lambda v: f"{v / 2**20:.0f}"  # noqa: E731
    print(f"peak RSS, local cluster: client 1x {mib(c1['rss'])} / 8x {mib(c8['rss'])} MiB "
          f"(ratio {c8['rss'] / c1['rss']:.2f}); workers 1x {'+'.join(map(mib, c1['workers']))} / "
          f"8x {'+'.join(map(mib, c8['workers']))} MiB "
          f"(ratio of the largest {max(c8['workers']) / max(c1['workers']):.2f})")
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-sklearn":
        child_sklearn(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-rss":
        child_rss(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
