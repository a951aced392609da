"""Which training loop is fastest: samples/s of each loop on the same patches, in one run.

Every variant trains the same U-Net (the default architecture of `volseg train`) on
batches of the same patch sampler, in float32 and bfloat16, and is reported as a ratio
against ``model.fit`` on the same patches held in memory (the bound a streamed loop can
reach: no reading, no augmentation on the critical path):

* ``in-memory fit``: ``model.fit(X, Y)``, the baseline;
* ``in-memory train_on_batch``: the loop without data loading (its own overhead);
* ``streamed train_on_batch``: worker threads read and augment from Zarr ahead of
  ``train_on_batch`` (the loop of `volseg train` before this benchmark);
* ``streamed fit(PyDataset)``: ``model.fit`` on the same dataset, Keras' own threads;
* ``streamed fit, steps_per_execution=4``: one compiled call runs four steps.

Data: CHASE_DB1 (../shared/data/chasedb1) when present, else a synthetic series.

    .venv/bin/python benchmarks/bench_train_loop.py [--steps 24] [--precisions float32,bfloat16]

Prints a table; the load average column says whether other processes took CPU time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chasedb1"


def log(message: str) -> None:
    print(message, flush=True)


def stores(out: Path, data: Path):
    """(images, truth, roi or None, training frames) from CHASE_DB1 or synthetic data."""
    from bench_train import ensure_store as ensure
    from volseg.training.sampler import split_frames

    out.mkdir(parents=True, exist_ok=True)
    if (data / "images.tif").is_file():
        image = ensure(data / "images.tif", out / "images.zarr", mask=False)
        truth = ensure(data / "labels.tif", out / "labels.zarr", mask=True)
        fov = ensure(data / "fov.tif", out / "fov.zarr", mask=True)
        split = split_frames(image.shape, val_frames="14-19")
        return "CHASE_DB1 (14 training frames)", image, truth, fov, split.train
    from volseg.data.synth import write_synth

    if not (out / "synth" / "images").is_dir():
        write_synth(out / "synth", timepoints=2, depth=4, overwrite=True)
    image = ensure(sorted((out / "synth" / "images").glob("*.tif")), out / "synth.zarr", mask=False)
    truth = ensure(sorted((out / "synth" / "labels").glob("*.tif")), out / "synth-truth.zarr",
                   mask=True)
    split = split_frames(image.shape, val_fraction=0.25)
    return "synthetic series", image, truth, None, split.train


def run(image, truth, roi, frames, *, precision: str, steps: int, batch: int, patch: int,
        warm: int) -> dict:
    import keras

    from bench_train import CpuClock
    from volseg.models.unet import PRECISIONS, build_unet
    from volseg.training.sampler import Augment, PatchDataset, PatchSampler, prefetch, scan_training_data
    from volseg.training import make_loss

    index = scan_training_data(image.array, truth.array, frames, roi=None if roi is None else roi.array)
    norm = index.percentiles()
    sampler = PatchSampler(image.array, truth.array, index, patch=(patch, patch),
                           roi=None if roi is None else roi.array, normalization=norm,
                           augment=Augment())

    def fresh(steps_per_execution=1):
        keras.utils.set_random_seed(0)
        keras.config.set_dtype_policy(PRECISIONS[precision])
        try:
            m = build_unet(normalization=norm)
            m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss("bce+dice"),
                      jit_compile=False, steps_per_execution=steps_per_execution)
        finally:
            keras.config.set_dtype_policy("float32")
        return m

    def dataset(n, seed):
        return PatchDataset(sampler, batch_size=batch, steps=n, seed=seed, workers=2,
                            max_queue_size=4)

    batches = [dataset(warm + steps, 5)[i] for i in range(warm + steps)]
    X = np.concatenate([b[0] for b in batches])
    Y = np.concatenate([b[1] for b in batches])
    n = steps * batch
    rows = {}

    model = fresh()
    model.fit(X[:warm * batch], Y[:warm * batch], batch_size=batch, epochs=1, shuffle=False, verbose=0)
    with CpuClock() as c:
        model.fit(X[warm * batch:], Y[warm * batch:], batch_size=batch, epochs=1, shuffle=False,
                  verbose=0)
    rows["in-memory fit"] = c

    model = fresh()
    for x, y in batches[:warm]:
        model.train_on_batch(x, y)
    with CpuClock() as c:
        for x, y in batches[warm:]:
            model.train_on_batch(x, y)
    rows["in-memory train_on_batch"] = c

    model = fresh()
    it = prefetch(dataset(warm + steps, 5), workers=2, depth=4)
    for _ in range(warm):
        model.train_on_batch(*next(it))
    with CpuClock() as c:
        for x, y in it:
            model.train_on_batch(x, y)
    rows["streamed train_on_batch"] = c

    model = fresh()
    model.fit(dataset(warm, 6), epochs=1, verbose=0)
    with CpuClock() as c:
        model.fit(dataset(steps, 5), epochs=1, verbose=0)
    rows["streamed fit(PyDataset)"] = c

    model = fresh(steps_per_execution=4)
    model.fit(dataset(4, 6), epochs=1, verbose=0)
    with CpuClock() as c:
        model.fit(dataset(steps, 5), epochs=1, verbose=0)
    rows["streamed fit, steps_per_execution=4"] = c
    return {name: (n / c.wall, c.cores, c.load) for name, c in rows.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=ROOT / "bench-output" / "train_loop")
    p.add_argument("--steps", type=int, default=24, help="timed steps per variant")
    p.add_argument("--warm", type=int, default=3, help="untimed steps first (tracing)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--precisions", default="float32,bfloat16")
    args = p.parse_args(argv)
    from _common import machine_line  # the table's machine: compare within one run

    print(machine_line(), flush=True)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from volseg.models.unet import native_bf16

    what, image, truth, roi, frames = stores(args.out, args.data)
    log(f"data: {what}; batch {args.batch} of {args.patch}x{args.patch}, {args.steps} timed "
        f"steps per variant; native bfloat16 on this CPU: {native_bf16()}")
    results = {}
    for precision in args.precisions.split(","):
        results[precision] = run(image, truth, roi, frames, precision=precision,
                                 steps=args.steps, batch=args.batch, patch=args.patch,
                                 warm=args.warm)
    base = results.get("float32", next(iter(results.values())))["in-memory fit"][0]
    log("")
    log("| loop | precision | samples/s | vs in-memory fit (same precision) | "
        "vs float32 in-memory fit | cores busy | load avg |")
    log("|---|---|---|---|---|---|---|")
    for precision, rows in results.items():
        ref = rows["in-memory fit"][0]
        for name, (rate, cores, load) in rows.items():
            log(f"| {name} | {precision} | {rate:.2f} | {rate / ref:.2f}x | {rate / base:.2f}x | "
                f"{cores:.2f} | {load:.1f} |")
    log(f"(machine has {os.cpu_count()} cores; a load average above that means other "
        "processes shared the CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
