"""Depth context (``volseg train --context K``): accuracy per CPU-minute, K = 1 vs 3 vs 5.

Synthetic 4D data where the structure continues across slices and one slice alone is
ambiguous: curved tubes (radius 2-3.5 px) wandering through (z, y, x) in every
direction, with a z step equal to the pixel size, under heavy independent noise per
slice (signal 40, noise sigma 48) and a dim background texture. Each K trains a U-Net for
the same time budget on time points 0-2 (validating on 3), with the same seed, then
predicts the whole series (``volseg.predict``, this process) and is scored on the
held-out time point 3 only: Dice at the model's threshold, ROC AUC, training samples/s,
and the prediction time relative to K = 1. One training at a time.

    python benchmarks/bench_context.py [--minutes 2.5] [--contexts 1,3,5] [--out bench-output/context]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

SHAPE = (4, 16, 128, 128)  # t, z, y, x
HELD_OUT = 3


def tube_labels(shape, rng, *, tubes: int = 10) -> np.ndarray:
    """One time point's (z, y, x) 0/1 tubes: smooth random walks in 3D, thickened."""
    centre = np.zeros(shape, bool)
    radius = np.zeros(shape, np.float32)
    for _ in range(tubes):
        pos = rng.uniform((0, 0, 0), shape)
        direction = rng.normal(size=3)
        r = rng.uniform(2.0, 3.5)
        for _ in range(300):
            direction = direction / np.linalg.norm(direction) + 0.25 * rng.normal(size=3)
            pos = pos + direction / np.linalg.norm(direction)
            pos[0] = np.clip(pos[0], 0, shape[0] - 1)  # stay in the stack's depth
            idx = tuple(np.round(pos).astype(int))
            if not all(0 <= i < n for i, n in zip(idx, shape)):
                break
            centre[idx], radius[idx] = True, r
    dist, (iz, iy, ix) = ndimage.distance_transform_edt(~centre, return_indices=True)
    return (dist <= radius[iz, iy, ix]).astype(np.uint8)


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(t, z, y, x) uint8 images and 0/1 labels."""
    rng = np.random.default_rng(seed)
    labels = np.stack([tube_labels(SHAPE[1:], rng) for _ in range(SHAPE[0])])
    texture = ndimage.gaussian_filter(rng.normal(size=SHAPE), sigma=(0, 0, 4, 4))
    texture *= 15 / texture.std()
    images = 90 + 40 * labels + texture + rng.normal(0, 48, SHAPE)
    return images.clip(0, 255).astype(np.uint8), labels


def write_stores(out: Path) -> tuple[Path, Path, float]:
    """The image and truth stores under ``out``, and the share of tube voxels."""
    from volseg.io import store as st

    paths = []
    data = make_data()
    for name, array in zip(("images", "truth"), data):
        path = out / f"{name}.zarr"
        if path.exists():
            shutil.rmtree(path)
        job = st.make_job("bench-context", parameters={"name": name})
        image = st.create_image(path, shape=array.shape, dtype=array.dtype, job=job,
                                extra={"content": "mask" if name == "truth" else "image"})
        image.array[...] = array
        st.finish(image.group)
        paths.append(path)
    return paths[0], paths[1], float(data[1].mean())


def held_out_metrics(pred_path: Path, truth_path: Path) -> dict:
    """Dice (at the stored mask's threshold) and ROC AUC on the held-out time point."""
    from volseg.io import store as st
    from volseg.ops.metrics import count_block, metrics

    pred = st.open_prediction(pred_path)
    prob = np.asarray(pred.probability.array[HELD_OUT])
    lab = np.asarray(st.open_image(truth_path).array[HELD_OUT])
    m = metrics(count_block(lab, probability=prob, threshold=pred.volseg["threshold"]))
    return {"dice": m["dice"], "roc_auc": m["roc_auc"], "best_dice": m["best_dice"]}


def run_one(k: int, images: Path, truth: Path, out: Path, minutes: float) -> dict:
    from volseg.stages.predict import predict
    from volseg.training import train

    model = out / f"k{k}.keras"
    summary = train(images, truth, model, val_timepoints=str(HELD_OUT), filters=8, depth=3,
                    patch=64, batch=8, steps_per_epoch=40, epochs=1000, time_limit=minutes,
                    context=k, seed=0, overwrite=True, log=lambda m: print(f"  [K={k}] {m}",
                                                                            flush=True))
    pred = out / f"k{k}-pred.zarr"
    start = time.monotonic()
    predict(images, model, pred, overwrite=True, batch_size=4)
    seconds = time.monotonic() - start
    return {"K": k, "samples_per_s": summary["samples_per_s"], "steps": summary["steps"],
            "val_dice": summary["val_dice"], "predict_s": seconds,
            **held_out_metrics(pred, truth)}


def table(rows: list[dict]) -> str:
    base = rows[0]["predict_s"]
    lines = ["  K  samples/s  steps  held-out Dice  ROC AUC  best Dice  predict s  vs K=1"]
    for r in rows:
        lines.append(f"{r['K']:3d}  {r['samples_per_s']:9.1f}  {r['steps']:5d}  "
                     f"{r['dice']:13.4f}  {r['roc_auc']:7.4f}  {r['best_dice']:9.4f}  "
                     f"{r['predict_s']:9.1f}  {r['predict_s'] / base:6.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.5, help="training time per K")
    ap.add_argument("--contexts", default="1,3,5")
    ap.add_argument("--out", type=Path, default=Path("bench-output/context"))
    args = ap.parse_args(argv)
    from _common import machine_line  # the table's machine: compare within one run

    print(machine_line(), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    images, truth, share = write_stores(args.out)
    print(f"data {SHAPE} (t, z, y, x), {100 * share:.1f} % tube voxels; "
          f"{args.minutes:g} min of training per K", flush=True)
    rows = [run_one(int(k), images, truth, args.out, args.minutes)
            for k in args.contexts.split(",")]
    print(table(rows))
    (args.out / "bench_context.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
