"""Accuracy per CPU-minute: what a fixed training budget buys on CHASE_DB1, per configuration.

Each configuration trains `volseg train` (library call, same defaults as the command
line unless the configuration changes them) on CHASE_DB1 children 01-07 (frames
01L..07R) for ``--budget`` minutes, validating on children 08-10 (08L..10R) with the
field-of-view masks as ROI; then predicts those 6 frames whole and reports, inside the
FOV: Dice at the model's stored threshold (chosen on these validation frames by
training, as `volseg train` does), ROC AUC, sensitivity at specificity >= 0.97,
samples/s, epochs, and the machine's load (a load above the core count means the runs
shared the CPU and their samples/s are low).

    .venv/bin/python benchmarks/bench_accuracy.py --budget 30 --configs default
    .venv/bin/python benchmarks/bench_accuracy.py --budget 10 --configs f16-lr1e-3,f8-lr3e-3,cldice
    .venv/bin/python benchmarks/bench_accuracy.py --epochs 4 --configs default,float32

``--epochs N`` trains every configuration for the same N epochs of 100 steps instead of
a time budget (same steps, for comparing precisions).

Configurations (``--configs``, comma separated): see CONFIGS. Exits 0 with a message
when the data is absent. One training at a time: the machine has 2 cores.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chasedb1"

BCE_DICE = "bce+dice"  # the loss before 2026-11-30

#: name -> (train() keywords, Augment keywords or None for the defaults[, build_unet
#: keywords the command line does not offer])
CONFIGS = {
    "default": ({}, None),
    # Settings spelled out, so these do not move when the defaults do. f16-lr1e-3 is the
    # report's network and the defaults before 2026-11-30; f8-lr3e-3 the defaults of
    # 2026-11-30 until dropout went to 0; nodrop those until the loss became
    # bce+dice+skeleton; the rows measured on those defaults keep their loss.
    "f16-lr1e-3": ({"filters": 16, "learning_rate": 1e-3, "dropout": 0.1, "loss": BCE_DICE}, None),
    "f16-lr3e-3": ({"filters": 16, "learning_rate": 3e-3, "dropout": 0.1, "loss": BCE_DICE}, None),
    "f8-lr1e-3": ({"filters": 8, "learning_rate": 1e-3, "dropout": 0.1, "loss": BCE_DICE}, None),
    "f8-lr3e-3": ({"filters": 8, "learning_rate": 3e-3, "dropout": 0.1, "loss": BCE_DICE}, None),
    "f16": ({"filters": 16}, None),
    "f24": ({"filters": 24}, None),
    # U-Net depth: each level costs about the same FLOPs (twice the filters on a quarter
    # of the pixels), so depth trades receptive field (about 100, 230, 480 px) for time
    "d3": ({"depth": 3}, None),
    "d5": ({"depth": 5}, None),
    "plateau": ({"schedule": "plateau"}, None),  # the schedule before the cosine one
    "cldice": ({"loss": "bce+dice+cldice"}, None),
    "skeleton": ({"loss": "bce+dice+skeleton"}, None),
    "intensity": ({"loss": BCE_DICE}, {"gamma": 0.3, "noise": 0.03}),
    # warps: rotation by any angle; with scaling and a mild elastic deformation
    "rotate": ({}, {"angle": 45.0}),
    "warp": ({}, {"angle": 45.0, "scale": 0.2, "elastic": 2.0}),
    "p128b16": ({"patch": 128, "batch": 16, "dropout": 0.1, "loss": BCE_DICE}, None),
    "nodrop": ({"dropout": 0.0, "loss": BCE_DICE}, None),
    "nodrop-p128b16": ({"dropout": 0.0, "patch": 128, "batch": 16, "loss": BCE_DICE}, None),
    "bn09": ({"dropout": 0.1, "loss": BCE_DICE}, None, {"batch_norm_momentum": 0.9}),
    "lr1e-2": ({"learning_rate": 1e-2, "loss": BCE_DICE}, None),
    # precision: `auto` (bfloat16 on this CPU) against float32, best compared with --epochs
    "float32": ({"precision": "float32"}, None),
}


def log(message: str) -> None:
    print(message, flush=True)


def sensitivity_at_specificity(histogram, min_specificity: float = 0.97) -> float:
    """Highest sensitivity over the 256 levels whose specificity is at least the given.

    ``histogram``: (2, 256) class histogram (row 0 background, row 1 foreground).
    """
    bg, fg = histogram[0].astype(np.float64), histogram[1].astype(np.float64)
    # predicting level >= k: positives are the counts at and above k
    fg_above = np.cumsum(fg[::-1])[::-1]
    bg_above = np.cumsum(bg[::-1])[::-1]
    sens = fg_above / max(fg.sum(), 1)
    spec = 1 - bg_above / max(bg.sum(), 1)
    ok = spec >= min_specificity
    return float(sens[ok].max()) if ok.any() else 0.0


def score(model_path, image, truth, fov, frames, *, tta: bool = False) -> dict:
    """Metrics inside the FOV of whole-frame predictions at the model's threshold."""
    from bench_train import predict_val
    from volseg.ops.metrics import count_block, metrics
    from volseg.models.unet import load_model
    from volseg.ops.thresholds import class_histograms, quantise

    model, info = load_model(model_path)
    t0 = time.monotonic()
    prob = predict_val(model, info, image, frames, tta=tta)
    seconds = time.monotonic() - t0
    lab = np.stack([np.asarray(truth.array[t, z]) for t, z in frames])
    roi = np.stack([np.asarray(fov.array[t, z]) for t, z in frames]) > 0
    m = metrics(count_block(lab, probability=prob, roi=roi, threshold=info["threshold"]))
    hist = class_histograms(quantise(prob[roi]), lab[roi])
    return {"dice": m["dice"], "roc_auc": m["roc_auc"], "best_dice": m["best_dice"],
            "sens_at_spec97": sensitivity_at_specificity(hist, 0.97),
            "threshold": info["threshold"], "predict_s": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=ROOT / "bench-output" / "accuracy")
    p.add_argument("--budget", type=float, default=30.0, help="minutes of training each")
    p.add_argument("--epochs", type=int, default=None,
                   help="train N epochs of 100 steps each instead of --budget minutes")
    p.add_argument("--configs", default="default")
    p.add_argument("--tta", action="store_true", help="also score with test-time augmentation")
    args = p.parse_args(argv)
    from _common import machine_line  # the table's machine: compare within one run

    print(machine_line(), flush=True)
    files = {k: args.data / f"{k}.tif" for k in ("images", "labels", "fov")}
    if not all(f.is_file() for f in files.values()):
        log(f"skipped: CHASE_DB1 data not found under {args.data}")
        return 0
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"--configs: unknown {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import volseg.models.unet as model_module
    import volseg.training.sampler as sampler_module
    from bench_train import ensure_store
    from volseg.training.sampler import split_frames
    from volseg.training import train

    args.out.mkdir(parents=True, exist_ok=True)
    image = ensure_store(files["images"], args.out / "images.zarr", mask=False)
    truth = ensure_store(files["labels"], args.out / "labels.zarr", mask=True)
    fov = ensure_store(files["fov"], args.out / "fov.zarr", mask=True)
    val = split_frames(image.shape, val_frames="14-19").val
    results = {}
    plain_augment = sampler_module.Augment
    plain_build = model_module.build_unet
    for name in names:
        options, augment, *build = CONFIGS[name]
        model_module.build_unet = (functools.partial(plain_build, **build[0]) if build
                                   else plain_build)
        sampler_module.Augment = (functools.partial(plain_augment, **augment) if augment
                                  else plain_augment)
        if augment:
            sampler_module.Augment.none = plain_augment.none
        model_path = args.out / f"{name}.keras"
        run_for = (f"{args.epochs} epochs of 100 steps" if args.epochs
                   else f"{args.budget:g} min")
        changes = [str(c) for c in (options, augment, *build) if c]
        log(f"== {name}: {' '.join(changes) or 'defaults'} for {run_for}")
        length = ({"epochs": args.epochs, "steps_per_epoch": 100, "time_limit": None}
                  if args.epochs else {"epochs": 10_000, "time_limit": args.budget})
        try:
            summary = train(image.path, truth.path, model_path, roi_path=fov.path,
                            val_frames="14-19", patience=1000, **length,
                            overwrite=True, log=log,
                            command=f"benchmarks/bench_accuracy.py {name}", **options)
        finally:
            sampler_module.Augment = plain_augment
            model_module.build_unet = plain_build
        row = {"epochs": summary["epochs_run"], "samples_per_s": summary["samples_per_s"],
               "best_epoch": summary.get("best_epoch"),
               "load": os.getloadavg()[0], **score(model_path, image, truth, fov, val)}
        if args.tta:
            row["tta"] = score(model_path, image, truth, fov, val, tta=True)
        results[name] = row
        log(json.dumps({name: row}))
    log("")
    log(f"CHASE_DB1 validation (08L-10R, inside the FOV), {run_for} of training each "
        f"on {os.cpu_count()} cores")
    log("| config | samples/s | epochs | Dice (stored threshold) | ROC AUC | sens. at spec. >= 0.97 "
        "| best Dice | load avg |" + (" TTA Dice | TTA AUC | TTA time ratio |" if args.tta else ""))
    log("|---|---|---|---|---|---|---|---|" + ("---|---|---|" if args.tta else ""))
    for name, r in results.items():
        line = (f"| {name} | {r['samples_per_s']:.2f} | {r['epochs']} | {r['dice']:.4f} | "
                f"{r['roc_auc']:.4f} | {r['sens_at_spec97']:.4f} | {r['best_dice']:.4f} | "
                f"{r['load']:.1f} |")
        if args.tta:
            t = r["tta"]
            line += (f" {t['dice']:.4f} | {t['roc_auc']:.4f} | "
                     f"{t['predict_s'] / r['predict_s']:.2f}x |")
        log(line)
    (args.out / f"bench_accuracy_{int(time.time())}.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
