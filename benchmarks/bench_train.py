"""Benchmark `volseg train` on real data: CHASE_DB1 retinal vessels (../shared/data/chasedb1).

One multi-page TIFF of 20 frames (960 x 999, one time point): train on the first 14
frames (children 01-07, both eyes), validate on the last 6 (children 08-10), so the
left and right eye of one child are always on the same side. The field-of-view masks
are the ROI: patches, loss and every metric count only inside the FOV.

Reports, inside the FOV of the 6 validation frames, at the threshold stored in the
model: Dice, sensitivity, specificity, ROC AUC (volseg.metrics, as `volseg evaluate`);
a tiling check (tiles of 256 px with the model's margin against whole frames); and
samples/s of streamed training (patches read from Zarr by worker threads, the loop
`volseg train` uses) against `model.fit` on the same patches held in memory.

    .venv/bin/python benchmarks/bench_train.py --time-limit 30 --precision bfloat16

Exits 0 with a message when the data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chasedb1"


def log(message: str) -> None:
    print(message, flush=True)


def ensure_store(tif, out: Path, *, mask: bool):
    """Convert a TIFF (or a list of TIFFs, one frame each) to a store once (reused when
    a complete one is there)."""
    from volseg.stages.convert import convert
    from volseg.errors import InputError
    from volseg.io.store import open_image

    try:
        return open_image(out)
    except InputError:
        pass
    t0 = time.monotonic()
    tifs = tif if isinstance(tif, list) else [tif]
    convert(tifs, out, mask=mask, overwrite=True)
    store = open_image(out)
    log(f"converted {tifs[0].name}{' ...' if len(tifs) > 1 else ''} -> {out} {store.shape} "
        f"in {time.monotonic() - t0:.1f} s")
    return store


class CpuClock:
    """Wall time and process CPU time: CPU/wall ~ number of busy cores."""

    def __enter__(self):
        self.w0, self.c0 = time.monotonic(), sum(os.times()[:2])
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.w0
        self.cpu = sum(os.times()[:2]) - self.c0
        self.cores = self.cpu / self.wall if self.wall else float("nan")
        self.load = os.getloadavg()[0]  # other processes on the machine skew wall times

    def rates(self, samples: int) -> tuple[float, float, float, float]:
        """samples/s, cores busy, CPU seconds per sample, 1-min load average."""
        return (samples / self.wall, self.cores, self.cpu / samples, self.load)


def predict_val(model, info, image, frames, *, tile=None, tta: bool = False):
    """Whole-frame probabilities of ``frames`` as `volseg predict` tiles them (with
    test-time augmentation if ``tta``)."""
    from volseg.stages.predict import predict_batch_fn
    from volseg.ops.tiling import predict_frames, tile_plan

    plan = tile_plan(image.shape[2], image.shape[3], tile=tile, halo=info["margin"],
                     multiple=info["multiple"])
    batch = 4 if tile else 1
    run = predict_batch_fn(model, tta=tta, batch_size=batch)
    return np.stack([predict_frames(np.asarray(image.array[t, z]), run, plan, batch_size=batch)[0]
                     for t, z in frames])


def evaluate(model_path, image, truth, fov, frames) -> dict:
    from volseg.ops.metrics import count_block, metrics
    from volseg.models.unet import load_model

    model, info = load_model(model_path)
    prob = predict_val(model, info, image, frames)
    lab = np.stack([np.asarray(truth.array[t, z]) for t, z in frames])
    roi = np.stack([np.asarray(fov.array[t, z]) for t, z in frames])
    out = {}
    for name, thr in (("stored", info["threshold"]), ("0.5", 0.5)):
        m = metrics(count_block(lab, probability=prob, roi=roi, threshold=thr))
        out[name] = {k: m[k] for k in ("dice", "sensitivity", "specificity", "accuracy",
                                       "precision", "roc_auc", "pr_auc", "best_dice")}
        out[name]["threshold"] = thr
    # Tiling check: 256 px tiles with the model's margin against whole frames.
    tiled = predict_val(model, info, image, frames[:2], tile=(256, 256))
    whole = prob[:2] >= info["threshold"]
    inside = roi[:2] > 0
    out["tiling"] = {"tile": 256, "margin": info["margin"],
                     "max_abs_prob_diff": float(np.abs(tiled - prob[:2]).max()),
                     "mask_pixels_differing": float(np.mean((tiled >= info["threshold"])
                                                            != whole)),
                     "mask_pixels_differing_in_fov": float(np.mean(
                         ((tiled >= info["threshold"]) != whole)[inside]))}
    return out


def throughput(image, truth, fov, split, *, precision: str, steps: int, batch: int,
               patch: int, fit_streamed: bool) -> dict:
    """samples/s: streamed train_on_batch (volseg's loop) vs model.fit in memory."""
    import keras

    from volseg.models.unet import build_unet
    from volseg.training.sampler import Augment, PatchDataset, PatchSampler, prefetch, scan_training_data
    from volseg.training import PRECISIONS, make_loss

    index = scan_training_data(image.array, truth.array, split.train, roi=fov.array)
    norm = index.percentiles()
    sampler = PatchSampler(image.array, truth.array, index, patch=(patch, patch),
                           roi=fov.array, normalization=norm, augment=Augment())
    warm = 3

    def fresh():
        keras.utils.set_random_seed(0)
        keras.config.set_dtype_policy(PRECISIONS[precision])
        try:
            m = build_unet(normalization=norm)
            m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss("bce+dice"),
                      jit_compile=False)
        finally:
            keras.config.set_dtype_policy("float32")
        return m

    results = {}
    ds = PatchDataset(sampler, batch_size=batch, steps=warm + steps, seed=5, workers=2)
    # 1. streamed: worker threads read and augment from Zarr; train_on_batch.
    model = fresh()
    it = prefetch(ds, workers=2, depth=4)
    for _ in range(warm):
        model.train_on_batch(*next(it))
    with CpuClock() as c:
        for x, y in it:
            model.train_on_batch(x, y)
    results["streamed train_on_batch"] = c.rates(steps * batch)
    # 2. the same patches in memory, model.fit.
    batches = [ds[i] for i in range(warm + steps)]
    X = np.concatenate([b[0] for b in batches])
    Y = np.concatenate([b[1] for b in batches])
    model = fresh()
    model.fit(X[:warm * batch], Y[:warm * batch], batch_size=batch, epochs=1, shuffle=False,
              verbose=0)
    with CpuClock() as c:
        model.fit(X[warm * batch:], Y[warm * batch:], batch_size=batch, epochs=1,
                  shuffle=False, verbose=0)
    results["in-memory model.fit"] = c.rates(steps * batch)
    if fit_streamed:
        # 3. model.fit on the PyDataset (Keras' own worker threads).
        model = fresh()
        model.fit(PatchDataset(sampler, batch_size=batch, steps=warm, seed=6, workers=2),
                  epochs=1, verbose=0)
        with CpuClock() as c:
            model.fit(PatchDataset(sampler, batch_size=batch, steps=steps, seed=5, workers=2),
                      epochs=1, verbose=0)
        results["streamed model.fit(PyDataset)"] = c.rates(steps * batch)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=ROOT / "bench-output" / "train")
    p.add_argument("--time-limit", type=float, default=30.0, help="minutes of training")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="bfloat16")
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--throughput-steps", type=int, default=20,
                   help="timed steps per throughput variant (0 skips the comparison)")
    p.add_argument("--fit-streamed", action="store_true",
                   help="also time model.fit on the PyDataset")
    p.add_argument("--skip-training", action="store_true",
                   help="reuse OUT/chasedb1.keras; only evaluate and time")
    args = p.parse_args(argv)
    from _common import machine_line  # the table's machine: compare within one run

    print(machine_line(), flush=True)

    files = {k: args.data / f"{k}.tif" for k in ("images", "labels", "fov")}
    if not all(f.is_file() for f in files.values()):
        log(f"skipped: CHASE_DB1 data not found under {args.data}")
        return 0
    ids = (args.data / "ids.txt").read_text().split()
    train_ids, val_ids = ids[:14], ids[14:]
    children = lambda names: {n[:-1] for n in names}  # noqa: E731  Image_01L -> Image_01
    assert not children(train_ids) & children(val_ids), "a child on both sides of the split"

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from volseg.training.sampler import split_frames
    from volseg.training import train

    args.out.mkdir(parents=True, exist_ok=True)
    image = ensure_store(files["images"], args.out / "images.zarr", mask=False)
    truth = ensure_store(files["labels"], args.out / "labels.zarr", mask=True)
    fov = ensure_store(files["fov"], args.out / "fov.zarr", mask=True)
    model_path = args.out / "chasedb1.keras"
    summary = None
    if not args.skip_training:
        with CpuClock() as c:
            summary = train(image.path, truth.path, model_path, roi_path=fov.path,
                            val_frames="14-19", epochs=10_000,
                            steps_per_epoch=args.steps_per_epoch, patience=args.patience,
                            time_limit=args.time_limit, precision=args.precision,
                            overwrite=True, log=log, command="benchmarks/bench_train.py")
        summary["cpu_cores_busy"] = c.cores
    split = split_frames(image.shape, val_frames="14-19")
    result = {"evaluation": evaluate(model_path, image, truth, fov, split.val)}
    if args.throughput_steps:
        result["throughput"] = throughput(image, truth, fov, split, precision=args.precision,
                                          steps=args.throughput_steps, batch=8, patch=256,
                                          fit_streamed=args.fit_streamed)

    log("")
    log(f"CHASE_DB1: train {train_ids[0]}..{train_ids[-1]} (14 frames), validate "
        f"{val_ids[0]}..{val_ids[-1]} (6 frames), inside the FOV; precision {args.precision}")
    if summary:
        log(f"training: {summary['epochs_run']} epochs, {summary['steps']} steps in "
            f"{summary['seconds'] / 60:.1f} min ({summary['samples_per_s']:.1f} samples/s, "
            f"{summary['cpu_cores_busy']:.2f} cores busy), best epoch {summary['best_epoch']}, "
            f"stopped by {summary['stop_reason']}")
    log("| threshold | Dice | sensitivity | specificity | accuracy | ROC AUC | PR AUC |")
    log("|---|---|---|---|---|---|---|")
    for name in ("stored", "0.5"):
        m = result["evaluation"][name]
        log(f"| {m['threshold']:.4f} ({name}) | {m['dice']:.4f} | {m['sensitivity']:.4f} | "
            f"{m['specificity']:.4f} | {m['accuracy']:.4f} | {m['roc_auc']:.4f} | "
            f"{m['pr_auc']:.4f} |")
    tiling = result["evaluation"]["tiling"]
    log(f"tiling check (256 px tiles, margin {tiling['margin']} vs whole frames): max |dp| "
        f"{tiling['max_abs_prob_diff']:.2e}, mask pixels differing "
        f"{100 * tiling['mask_pixels_differing']:.4f} % "
        f"({100 * tiling['mask_pixels_differing_in_fov']:.4f} % in the FOV)")
    if "throughput" in result:
        rows = result["throughput"]
        ref = rows["in-memory model.fit"][0]
        log(f"| training loop ({args.precision}, batch 8 of 256x256) | samples/s | vs in-memory "
            "fit | cores busy | CPU s/sample | load avg |")
        log("|---|---|---|---|---|---|")
        for name, (rate, cores, cpu, load) in rows.items():
            log(f"| {name} | {rate:.2f} | {rate / ref:.2f}x | {cores:.2f} | {cpu:.3f} | "
                f"{load:.1f} |")
        log(f"(machine has {os.cpu_count()} cores; a load average above that means other "
            "processes took CPU time from these measurements)")
    record = {"summary": {k: v for k, v in (summary or {}).items() if k != "history"},
              **result, "precision": args.precision, "time_limit_min": args.time_limit}
    (args.out / "bench_train.json").write_text(json.dumps(record, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
