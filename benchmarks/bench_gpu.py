"""Prediction and the training step on whatever the Keras backend computes on (a GPU where
there is one), against the bare model on the same device, as ratios from one run.

Meant for a GPU machine with Keras on JAX (``KERAS_BACKEND=jax``; TensorFlow's GPU
wheels are often not there), but runs on any backend and on a CPU (small settings make
a try: ``--frames 8 --steps 3``). In this one process:

* predict, bare: the model's ``predict_on_batch`` on frames already in memory,
  reflect-padded to a multiple of 16 (528 x 832), in batches of 1, 4 and 16, after a
  traced call of each batch size: the device's speed with no I/O;
* predict, volseg: ``volseg.stages.predict.predict`` from an image store to a
  prediction store (threads of this process, no cluster), after a warm-up prediction of
  one block; the time covers everything predict does;
* training step, bare: ``train_on_batch`` on batches already in memory (volseg train's
  defaults: the U-Net, loss, batch and patch);
* training step, volseg: the same steps fed as `volseg train` feeds them (the patch
  sampler on worker threads, prefetched), on the same seed;

each in float32 and in the precision ``auto`` picks on this device.

    KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false \\
        python benchmarks/bench_gpu.py [--frames 64] [--steps 30]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
H, W, DEPTH = 523, 821, 8


def accelerator() -> str:
    """What the Keras backend computes on, in words."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devs = jax.devices()
        return f"keras {keras.__version__} on jax {jax.__version__}: " + ", ".join(
            sorted({f"{d.platform} {getattr(d, 'device_kind', '')}".strip() for d in devs}))
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"keras {keras.__version__} on tensorflow {tf.__version__}: {len(gpus)} GPU(s)"
    return f"keras {keras.__version__} on {backend}"


def make_model(path: Path, *, filters: int) -> None:
    import keras

    from volseg.models.unet import base_info, build_unet, save_model

    keras.utils.set_random_seed(0)
    model = build_unet(base_filters=filters, depth=4)
    save_model(model, path, info=base_info(depth=4, base_filters=filters, dropout=0.1,
                                           batch_norm=True, normalization=(0.0, 255.0)))


def bare_predict(model_path: Path, x: np.ndarray, precision: str, batch: int) -> float:
    """Pixels per second of the model's own calls, ``batch`` frames a call."""
    from volseg.models.unet import load_model

    model, _ = load_model(model_path, precision=precision)
    n = len(x) - len(x) % batch
    np.asarray(model.predict_on_batch(x[:batch]))  # trace this batch size
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        np.asarray(model.predict_on_batch(x[i:i + batch]))  # np.asarray waits for the device
    return n * H * W / (time.perf_counter() - t0)


def volseg_predict(work: Path, model_path: Path, precision: str, batch: int,
                   client=None) -> tuple[float, dict]:
    from volseg.stages.predict import predict

    kw = dict(precision=precision, overwrite=True, batch_size=batch, client=client)
    predict(work / "warm.zarr", model_path, work / f"warm-{precision}.zarr", **kw)
    t0 = time.perf_counter()
    summary = predict(work / "images.zarr", model_path, work / f"pred-{precision}.zarr", **kw)
    return summary["pixels"] / (time.perf_counter() - t0), summary


def phases(work: Path, model_path: Path, precision: str, blocks: int) -> dict:
    """Seconds in each step of a prediction task (bench_predict's phase timer)."""
    from bench_predict import child_phases

    return child_phases({"work": str(work), "model": str(model_path), "precision": precision,
                         "blocks": blocks})


def train_steps(work: Path, precision: str, steps: int, warm: int, workers: list[int]) -> dict:
    """Samples per second of the training step, bare and fed as `volseg train` feeds it."""
    from bench_train import ensure_store
    from bench_train_step import default_model
    from volseg.data.synth import write_synth
    from volseg.models.unet import resolve_compile
    from volseg.training import TrainConfig, resolve_machine_choices
    from volseg.training.losses import SKELETON_TARGET_LOSSES
    from volseg.training.sampler import (Augment, PatchDataset, PatchSampler, prefetch,
                                         scan_training_data, split_frames)

    if not (work / "synth" / "images").is_dir():
        write_synth(work / "synth", timepoints=2, depth=4, overwrite=True)
    image = ensure_store(sorted((work / "synth" / "images").glob("*.tif")),
                         work / "synth.zarr", mask=False)
    truth = ensure_store(sorted((work / "synth" / "labels").glob("*.tif")),
                         work / "synth-truth.zarr", mask=True)
    cfg = resolve_machine_choices(TrainConfig("", "", ""), lambda line: None)  # as train does
    frames = split_frames(image.shape, val_fraction=0.25).train
    index = scan_training_data(image.array, truth.array, frames)
    norm = index.percentiles()
    sampler = PatchSampler(image.array, truth.array, index, patch=cfg.patch,
                           normalization=norm, augment=Augment(),
                           skeleton=cfg.loss in SKELETON_TARGET_LOSSES)
    compile_as = resolve_compile("auto", precision)

    def fresh():
        return default_model(cfg, norm, precision=precision, compile_as=compile_as)

    def dataset():
        return PatchDataset(sampler, batch_size=cfg.batch, steps=warm + steps, seed=5,
                            workers=cfg.workers)

    def timed(model, batches):
        losses = []
        for i, (x, y) in enumerate(batches):
            if i == warm:
                t0 = time.perf_counter()
            losses.append(float(np.asarray(model.train_on_batch(x, y)).ravel()[0]))
        return steps * cfg.batch / (time.perf_counter() - t0), losses

    in_memory = [dataset()[i] for i in range(warm + steps)]
    bare, bare_losses = timed(fresh(), in_memory)
    fed = {}
    for n in workers:  # the sampler's threads (volseg train --workers, default 2)
        fed[n] = timed(fresh(), prefetch(dataset(), workers=n, depth=2 * n))
    return {"bare": bare, "volseg": fed, "compile": compile_as, "batch": cfg.batch,
            "patch": cfg.patch, "loss": cfg.loss, "bare_losses": bare_losses}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64, help="frames to predict (multiple of 8)")
    ap.add_argument("--filters", type=int, default=8, help="first-level filters (default 8)")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps")
    ap.add_argument("--warm", type=int, default=3, help="untimed steps first (compiling)")
    ap.add_argument("--precisions", default="float32,auto",
                    help="comma-separated precisions to measure (auto: what volseg picks here)")
    ap.add_argument("--skip-train", action="store_true", help="predict only")
    ap.add_argument("--batches", default="4", help="volseg predict --batch values to measure")
    ap.add_argument("--clusters", default="",
                    help="local clusters to predict on as WORKERSxTHREADS, comma-separated "
                         "(e.g. 4x2); default none (threads of this process)")
    ap.add_argument("--phases", type=int, default=0,
                    help="also time the steps of the first N blocks' tasks")
    ap.add_argument("--workers", default="2",
                    help="volseg train --workers values (sampler threads) to measure")
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)
    from _common import machine_line  # the table's machine: compare within one run

    print(machine_line(), flush=True)
    from volseg.models.backend import import_keras

    import_keras()
    from volseg.models.unet import resolve_precision

    print(accelerator(), flush=True)
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    from bench_predict import _padded as padded, make_store
    from volseg.data.synth import synthesize

    depth = min(DEPTH, args.frames)
    images, _ = synthesize(timepoints=args.frames // depth, depth=depth, height=H, width=W, seed=0)
    make_store(work / "images.zarr", images)
    make_store(work / "warm.zarr", images[:1])
    model_path = work / "model.keras"
    make_model(model_path, filters=args.filters)
    x = padded(images)
    precisions = []
    for name in args.precisions.split(","):
        if resolve_precision(name) not in precisions:
            precisions.append(resolve_precision(name))

    print(f"\npredict: {args.frames} frames of {H}x{W}, U-Net depth 4, {args.filters} filters "
          "(untrained, seeded)", flush=True)
    print(f"| {'what':44} | precision | Mpx/s | x bare, batch 1 |")
    print(f"|{'-' * 46}|-----------|-------|-----------------|")
    for precision in precisions:
        rates = {}
        for batch in (b for b in (1, 4, 16) if b <= len(x)):
            rates[batch] = bare_predict(model_path, x, precision, batch)
            print(f"| {'bare predict_on_batch, batch ' + str(batch):44} | {precision:9} | "
                  f"{rates[batch] / 1e6:5.1f} | {rates[batch] / rates[1]:15.2f} |", flush=True)
        for batch in (int(b) for b in args.batches.split(",")):
            rate, summary = volseg_predict(work, model_path, precision, batch)
            used = summary.get("numerics_used") or summary.get("precision_used")
            what = f"volseg predict --batch {batch} (store to store)"
            print(f"| {what:44} | {precision:9} | {rate / 1e6:5.1f} | "
                  f"{rate / rates[1]:15.2f} | {used}", flush=True)
        for layout in filter(None, args.clusters.split(",")):
            from volseg.engine.cluster import open_client

            n, threads = (int(v) for v in layout.split("x"))
            with open_client("local", workers=n, threads=threads) as client:
                rate, _ = volseg_predict(work, model_path, precision, 4, client=client)
            what = f"volseg predict, {n} worker processes x {threads} threads"
            print(f"| {what:44} | {precision:9} | {rate / 1e6:5.1f} | "
                  f"{rate / rates[1]:15.2f} |", flush=True)
        if args.phases:
            r = phases(work, model_path, precision, args.phases)
            shares = ", ".join(f"{k} {v / r['seconds']:.0%}" for k, v in r["phases"].items())
            print(f"phases of {r['blocks']} blocks in one thread, {precision}: "
                  f"{r['pixels'] / r['seconds'] / 1e6:.1f} Mpx/s; {shares}", flush=True)
    if args.skip_train:
        return 0
    print(f"\ntraining step (volseg train's defaults), {args.steps} timed steps after "
          f"{args.warm}", flush=True)
    print("| precision | step | sampler threads | bare samples/s | volseg samples/s | "
          "volseg / bare | loss first/last (bare; volseg) |")
    print("|---|---|---|---|---|---|---|")
    workers = [int(n) for n in args.workers.split(",")]
    for precision in precisions:
        r = train_steps(work, precision, args.steps, args.warm, workers)
        b = r["bare_losses"]
        for n, (rate, lo) in r["volseg"].items():
            print(f"| {precision} | {r['compile']} | {n} | {r['bare']:.1f} | {rate:.1f} | "
                  f"{rate / r['bare']:.2f} | {b[0]:.4f}/{b[-1]:.4f}; {lo[0]:.4f}/{lo[-1]:.4f} |",
                  flush=True)
    print(f"(batch {r['batch']} of {r['patch'][0]}x{r['patch'][1]}, loss {r['loss']})")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
