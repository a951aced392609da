"""Benchmark the random-forest baseline against the U-Net, in the same run.

1. CHASE_DB1 (../shared/data/chasedb1, skipped when absent): train the forest on
   01L-07R (frames 0-13), validate on 08L-10R (frames 14-19) inside the field of view
   (FOV as ROI). Training time; Dice, sensitivity, specificity, ROC AUC on the
   validation frames at the forest's stored threshold; the same metrics for a U-Net
   (``--unet MODEL``, e.g. ``bench-output/train/chasedb1.keras`` from
   ``bench_train.py``; left out when none is given).
2. Prediction speed: ``volseg.stages.predict.predict`` of the same image store in this
   process with the forest and with the U-Net (``--unet``, else the report's untrained
   U-Net: speed does not depend on the weights), Mpx/s, same run.
3. Memory: ``train_forest`` in a subprocess on synthetic 4D data with 1x and 10x the
   training frames (``volseg.data.synth``; 2 and 20 time points of 4 x 256 x 256), peak RSS
   (VmHWM, reset at the child's start) and time. Target: RSS at 10x <= 1.2x RSS at 1x.

    python benchmarks/bench_forest.py [--unet MODEL] [--out bench-output/forest]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import DATA, ensure_store, evaluate as evaluate_unet, log  # noqa: E402

VAL_FRAMES = "14-19"
#: Training pixels in the memory runs: small enough that the 1x data fills the sample.
MEMORY_SAMPLES = 30_000


def forest_metrics(model_path, image, truth, fov, frames) -> dict:
    """Validation metrics of a forest on ``frames``, inside the FOV, at its threshold."""
    from volseg.models.forest import FeatureSpec, load_forest, probability_levels
    from volseg.ops.metrics import count_block, metrics

    forest, info = load_forest(model_path)
    spec = FeatureSpec.from_dict(info["features"])
    prob = np.stack([probability_levels(forest, image, t, z, spec) for t, z in frames])
    lab = np.stack([np.asarray(truth.array[t, z]) for t, z in frames])
    roi = np.stack([np.asarray(fov.array[t, z]) for t, z in frames])
    m = metrics(count_block(lab, probability=prob, roi=roi, threshold=info["threshold"]))
    return {k: m[k] for k in ("dice", "sensitivity", "specificity", "accuracy", "roc_auc",
                              "pr_auc", "best_dice")} | {"threshold": info["threshold"]}


def chase(args) -> dict:
    from volseg.training.forest import train_forest

    work = args.out / "chasedb1"
    work.mkdir(parents=True, exist_ok=True)
    image = ensure_store(DATA / "images.tif", work / "images.zarr", mask=False)
    truth = ensure_store(DATA / "labels.tif", work / "labels.zarr", mask=True)
    fov = ensure_store(DATA / "fov.tif", work / "fov.zarr", mask=True)
    t0 = time.monotonic()
    summary = train_forest(image.path, truth.path, work / "forest.model", roi_path=fov.path,
                           val_frames=VAL_FRAMES, trees=args.trees, seed=0, overwrite=True,
                           log=log)
    seconds = time.monotonic() - t0
    frames = [(0, z) for z in range(14, 20)]
    out = {"forest": forest_metrics(work / "forest.model", image, truth, fov, frames),
           "forest_train_seconds": seconds, "forest_samples": summary["samples"]}
    if args.unet:
        out["unet"] = evaluate_unet(args.unet, image, truth, fov, frames)["stored"]
    return out


def predict_speed(args) -> dict:
    from volseg.models.unet import base_info, build_unet, save_model
    from volseg.stages.predict import predict

    store = args.out / "chasedb1" / "images.zarr"
    if not store.exists():
        from volseg.io import store as st
        from volseg.data.synth import synthesize

        images, _ = synthesize(timepoints=1, depth=8, seed=1)
        store = args.out / "speed.zarr"
        shutil.rmtree(store, ignore_errors=True)
        image = st.create_image(store, shape=images.shape, dtype=images.dtype,
                                job=st.make_job("bench", parameters={}))
        image.array[...] = images
        st.finish(image.group)
    unet = args.unet
    if unet is None:
        unet = args.out / "untrained.keras"
        save_model(build_unet(), unet, info=base_info(depth=4, base_filters=16, dropout=0.1,
                                                      batch_norm=True,
                                                      normalization=(0.0, 255.0)))
    forest = args.out / "chasedb1" / "forest.model"
    rates = {}
    for name, model in (("forest", forest), ("unet", unet)):
        if not Path(model).exists():
            continue
        out = args.out / f"pred-{name}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.monotonic()
        s = predict(store, model, out, threshold=0.5)
        rates[name] = s["pixels"] / (time.monotonic() - t0) / 1e6
    return rates


# A child inherits its parent's RSS high-water mark across fork + exec (Linux), so the
# child resets it (clear_refs 5) and reads VmHWM itself.
_CHILD = """
import json, sys, time
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
from volseg.training.forest import train_forest
images, truth, out, max_samples = sys.argv[1:5]
t0 = time.monotonic()
s = train_forest(images, truth, out, max_samples=int(max_samples), overwrite=True)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": time.monotonic() - t0, "samples": s["samples"],
                  "rss_mb": hwm / 1024}))
"""


def memory(args) -> dict:
    from volseg.stages.convert import convert
    from volseg.data.synth import write_synth

    rows = {}
    for factor, timepoints in (("1x", 2), ("10x", 20)):
        work = args.out / f"synth-{factor}"
        if not (work / "truth.zarr").exists():
            shutil.rmtree(work, ignore_errors=True)
            write_synth(work / "data", timepoints=timepoints, depth=4, height=256, width=256,
                        seed=2)
            convert([work / "data" / "images"], work / "images.zarr")
            convert([work / "data" / "labels"], work / "truth.zarr", mask=True)
        # a sample both runs fill: memory then shows what the data size adds (nothing)
        r = subprocess.run([sys.executable, "-c", _CHILD, str(work / "images.zarr"),
                            str(work / "truth.zarr"), str(work / "forest.model"),
                            str(MEMORY_SAMPLES)],
                           capture_output=True, text=True, check=True)
        rows[factor] = json.loads(r.stdout.strip().splitlines()[-1])
        rows[factor]["frames"] = timepoints * 4
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unet", type=Path, default=None, help="a trained U-Net to compare with")
    ap.add_argument("--trees", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("bench-output/forest"))
    args = ap.parse_args(argv)
    from _common import machine_line  # the table's machine: compare within one run

    print(machine_line(), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    if DATA.is_dir():
        results["chasedb1"] = chase(args)
    else:
        log(f"{DATA} not found: CHASE_DB1 part skipped")
    results["predict_mpx_per_s"] = predict_speed(args)
    results["memory"] = memory(args)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    print("\n== CHASE_DB1 validation (08L-10R, inside the FOV)")
    c = results.get("chasedb1")
    if c:
        print(f"{'model':10}{'Dice':>8}{'sens':>8}{'spec':>8}{'ROC AUC':>9}{'train s':>9}")
        f = c["forest"]
        print(f"{'forest':10}{f['dice']:>8.3f}{f['sensitivity']:>8.3f}{f['specificity']:>8.3f}"
              f"{f['roc_auc']:>9.3f}{c['forest_train_seconds']:>9.0f}")
        if "unet" in c:
            u = c["unet"]
            print(f"{'U-Net':10}{u['dice']:>8.3f}{u['sensitivity']:>8.3f}"
                  f"{u['specificity']:>8.3f}{u['roc_auc']:>9.3f}{'':>9}")
    r = results["predict_mpx_per_s"]
    print("\n== predict, same store, same run (Mpx/s)")
    for name, rate in r.items():
        print(f"{name:10}{rate:>8.2f}")
    if "forest" in r and "unet" in r:
        print(f"{'ratio':10}{r['forest'] / r['unet']:>8.2f}  (forest / U-Net)")
    m = results["memory"]
    print(f"\n== train_forest peak RSS, synthetic 4 x 256 x 256 frames, "
          f"{MEMORY_SAMPLES:,}-pixel sample")
    for k, row in m.items():
        print(f"{k:5}{row['frames']:>6} frames {row['rss_mb']:>8.0f} MB {row['seconds']:>7.1f} s")
    print(f"ratio 10x / 1x: {m['10x']['rss_mb'] / m['1x']['rss_mb']:.2f} (target <= 1.2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
