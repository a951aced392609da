"""Benchmark test-time augmentation (`predict --tta`) and per-time-point thresholds.

On the demo's synthetic series (4 time points x 8 slices x 523 x 821, seed 0; the model
is trained with the last time point held out, as `volseg demo` does):

1. TTA against plain prediction, measured in one run: Dice and ROC AUC over every
   voxel and on the held-out time point, and the time ratio TTA / plain (both timed
   after a warm-up, same process, same threads).
2. Thresholds on held-out frames. Each time point's even slices are its validation
   frames and its odd slices its test frames; every rule picks its threshold without
   the test frames' truth:

   * ``model``: the threshold stored in the model (chosen in training);
   * ``global (validation)``: the best threshold of all validation frames pooled;
   * ``per t (validation)``: each time point's best threshold on its own validation
     frames (needs some annotated frames in every time point);
   * ``per t (Otsu)``: Otsu's threshold of each time point's test-frame probability
     histogram (no truth at all);
   * ``oracle per t``: each time point's best threshold on its test frames (an upper
     bound, not a rule).

   Reported: Dice of the test frames, pooled, and the mean over time points.

    .venv/bin/python benchmarks/bench_tta.py                         # trains 3 min first
    .venv/bin/python benchmarks/bench_tta.py --model volseg-demo/model.keras

``--model`` reuses a model trained on this data (e.g. the demo's, seed 0 and the demo
size); without it a U-Net is trained for ``--minutes`` (default 3). Writes its data to
``bench-output/tta/`` (``results.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    print(message, flush=True)


def otsu_level(counts: np.ndarray) -> int:
    """Otsu's threshold of a 256-level histogram: the level ``k`` (mask ``level >= k``)
    that maximises the between-class variance of ``< k`` and ``>= k``."""
    counts = np.asarray(counts, np.float64)
    levels = np.arange(len(counts))
    w0 = np.cumsum(counts)[:-1]  # weight of levels < k, for k = 1..255
    s0 = np.cumsum(counts * levels)[:-1]
    n, s = counts.sum(), (counts * levels).sum()
    w1 = n - w0
    with np.errstate(invalid="ignore", divide="ignore"):
        between = w0 * w1 * (s0 / w0 - (s - s0) / w1) ** 2
    return int(np.nanargmax(between)) + 1


def frame_histograms(pred_path, truth_path) -> np.ndarray:
    """Class histograms of every frame: int64 (t, z, 2, 256)."""
    from volseg.io import store as st
    from volseg.ops.thresholds import class_histograms

    prob = st.open_prediction(pred_path).probability.array
    truth = st.open_image(truth_path).array
    T, Z = prob.shape[:2]
    out = np.zeros((T, Z, 2, 256), np.int64)
    for t in range(T):
        p, g = np.asarray(prob[t]), np.asarray(truth[t])
        for z in range(Z):
            out[t, z] = class_histograms(p[z], g[z])
    return out


def dice_of(hist: np.ndarray, level: int) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` of ``level >= level`` from a (2, 256) class histogram."""
    tp, fp = int(hist[1, level:].sum()), int(hist[0, level:].sum())
    return tp, fp, int(hist[1].sum()) - tp


def threshold_study(hists: np.ndarray, model_threshold: float) -> dict:
    """Test-frame Dice of each threshold rule (see the module docstring)."""
    from volseg.ops.thresholds import best_level, threshold_bin

    val, test = hists[:, 0::2].sum(axis=1), hists[:, 1::2].sum(axis=1)  # (t, 2, 256)
    T = len(test)
    glob = best_level(val.sum(axis=0))[0]
    rules = {
        "model": [threshold_bin(model_threshold)] * T,
        "global (validation)": [glob] * T,
        "per t (validation)": [(best_level(val[t]) or (glob,))[0] for t in range(T)],
        "per t (Otsu)": [otsu_level(test[t].sum(axis=0)) for t in range(T)],
        "oracle per t": [(best_level(test[t]) or (glob,))[0] for t in range(T)],
    }
    out = {}
    for name, levels in rules.items():
        counts = np.array([dice_of(test[t], k) for t, k in enumerate(levels)])
        per_t = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in counts]
        tp, fp, fn = counts.sum(axis=0)
        out[name] = {"levels": [int(k) for k in levels], "thresholds": [k / 255 for k in levels],
                     "pooled_dice": 2 * tp / (2 * tp + fp + fn),
                     "mean_dice": float(np.mean(per_t)), "per_t_dice": per_t}
    return out


def timed_predict(images, model, out, **kw) -> float:
    from volseg.stages.predict import predict

    t0 = time.perf_counter()
    predict(images, model, out, overwrite=True, **kw)
    return time.perf_counter() - t0


def prepare_data(out: Path, seed: int):
    """The demo's synthetic series as image and truth stores (made once)."""
    from volseg.stages.convert import convert
    from volseg.errors import InputError
    from volseg.io.store import open_image
    from volseg.data.synth import write_synth

    images, truth = out / "images.zarr", out / "truth.zarr"
    try:
        return open_image(images), open_image(truth)
    except InputError:
        pass
    write_synth(out / "data", seed=seed, overwrite=True)
    convert([out / "data" / "images"], images, overwrite=True)
    convert([out / "data" / "labels"], truth, mask=True, overwrite=True)
    return open_image(images), open_image(truth)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a U-Net trained on this data (default: train one)")
    ap.add_argument("--minutes", type=float, default=3.0, help="training time without --model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default=str(ROOT / "bench-output" / "tta"))
    args = ap.parse_args(argv)
    from _common import machine_line  # the table's machine: compare within one run

    print(machine_line(), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from volseg.stages.evaluate import evaluate
    from volseg.models.unet import read_model_info

    images, truth = prepare_data(out, args.seed)
    held = images.shape[0] - 1
    log(f"data: {images.shape} (t, z, y, x); held-out time point {held}")
    model = out / "model.keras"
    if args.model:
        shutil.copyfile(args.model, model)
    elif not model.exists():
        from volseg.training import train

        log(f"training a U-Net for {args.minutes:g} min (time point {held} held out)")
        train(images.path, truth.path, model, val_timepoints=str(held), patch=(128, 128),
              batch=8, filters=8, epochs=100, steps_per_epoch=40, time_limit=args.minutes,
              precision="bfloat16", overwrite=True, seed=args.seed)
    info = read_model_info(model)

    kw = dict(precision=args.precision)
    timed_predict(images.path, model, out / "warm.zarr", **kw)  # TensorFlow start, first trace
    seconds = {"plain": timed_predict(images.path, model, out / "plain.zarr", **kw),
               "tta": timed_predict(images.path, model, out / "tta.zarr", tta=True, **kw)}
    reports = {name: evaluate(out / f"{name}.zarr", truth.path) for name in seconds}

    def held_row(r):
        return next(row for row in r["per_timepoint"] if row["t"] == held)

    log(f"\n== TTA ({os.cpu_count()} cores, precision {args.precision}, "
        f"threshold {info['threshold']:.3f} from the model)")
    log(f"{'':8}{'Dice':>8}{'ROC AUC':>9}{'best Dice':>11}{'held-out Dice':>15}"
        f"{'held-out AUC':>14}{'predict s':>11}{'time':>7}")
    for name, r in reports.items():
        h = held_row(r)
        log(f"{name:8}{r['dice']:8.4f}{r['roc_auc']:9.4f}{r['best_dice']:11.4f}"
            f"{h['dice']:15.4f}{h['roc_auc']:14.4f}{seconds[name]:11.1f}"
            f"{seconds[name] / seconds['plain']:6.1f}x")

    studies = {}
    for name in reports:
        studies[name] = threshold_study(frame_histograms(out / f"{name}.zarr", truth.path),
                                        info["threshold"])
        log(f"\n== thresholds, {name} prediction: Dice of the test frames (odd slices); "
            "thresholds chosen on the validation frames (even slices) or without truth")
        log(f"{'rule':22}{'pooled Dice':>12}{'mean over t':>12}   thresholds per t")
        for rule, s in studies[name].items():
            log(f"{rule:22}{s['pooled_dice']:12.4f}{s['mean_dice']:12.4f}   "
                + " ".join(f"{v:.3f}" for v in s["thresholds"]))
    (out / "results.json").write_text(json.dumps({
        "shape": list(images.shape), "held_out_t": held, "seconds": seconds,
        "reports": {n: {k: r[k] for k in ("dice", "roc_auc", "pr_auc", "best_dice",
                                             "best_threshold", "per_timepoint",
                                             "oracle_per_timepoint_threshold")}
                    for n, r in reports.items()},
        "thresholds": studies}, indent=2))
    log(f"\nwrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
