"""The demo: every stage of volseg on synthetic data, end to end, in a few minutes.

synth (TIFF folders) -> convert (images.zarr, truth.zarr) -> train (model.keras) ->
predict (pred.zarr) -> evaluate (report.json, per-time-point CSV, figures) -> preview,
then the random-forest baseline (forest.model -> forest-pred.zarr -> forest-report.json),
and ``measure`` of each method's masks against the truth's structure.
The last time point is held out of training, so its scores are honest; the forest and
the best global intensity threshold on the same voxels are the baselines the U-Net must
beat.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volseg.errors import InputError


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: data size and training budget."""

    timepoints: int = 4
    depth: int = 8
    height: int = 523
    width: int = 821
    filters: int = 8
    patch: int = 128
    batch: int = 8
    # Training is budgeted by work, not time, so the result is the same on every CPU
    # (only how long it takes differs): 1,000 steps of 8 patches, with the cosine schedule
    # run to its end, put the U-Net well above the forest and the threshold on this data
    # (600 steps: Dice 0.878 against the forest's 0.828, still rising).
    epochs: int = 25
    steps_per_epoch: int = 40
    trees: int = 30  # of the forest
    # One round of the annotation loop: U-Net steps per round, frames annotated at the
    # start and frames added from `suggest`.
    loop_steps: int = 120
    loop_frames: int = 2
    #: refuse to call the demo a success when the U-Net loses to the threshold baseline
    check: bool = True


FULL = DemoSize()
#: for tests and a quick look: seconds, not minutes (the Dice is not the point)
SMALL = DemoSize(timepoints=2, depth=3, height=96, width=128, filters=4, patch=64, batch=4,
                 epochs=2, steps_per_epoch=4, trees=10, check=False, loop_steps=4)


class DemoFailed(Exception):
    """The demo ran, but its U-Net did not beat the threshold baseline: volseg is not
    working as it should on this machine (the CLI prints the message, exit 1)."""


def _threshold_baseline(images, truth, t: int | None = None) -> dict:
    """The best global intensity threshold: its level and metrics, streamed by frame."""
    from volseg.ops.metrics import confusion_metrics
    from volseg.data.synth import best_intensity, threshold_histograms

    hist = np.zeros((2, 256), dtype=np.int64)
    ts = range(images.shape[0]) if t is None else [t]
    for ti in ts:
        for z in range(images.shape[1]):
            hist += threshold_histograms(images.array[ti, z], truth.array[ti, z])
    level, dice = best_intensity(hist)
    if level is None:
        return {"level": None, "dice": None, "sensitivity": None, "specificity": None}
    counts = dict(tp=hist[1, level:].sum(), fn=hist[1, :level].sum(),
                  fp=hist[0, level:].sum(), tn=hist[0, :level].sum())
    return {"level": level, **confusion_metrics(**counts)}


def _threshold_mask(images, level, path) -> None:
    """The best global threshold's mask as a store (so it is measured like the others)."""
    from volseg.io import store as st

    job = st.make_job("demo-threshold", parameters={"level": level})
    mask = st.create_image(path, shape=images.shape, dtype="uint8", chunks=images.chunks,
                           shards=images.shards, job=job, extra={"content": "mask"})
    for t in range(images.shape[0]):
        frames = np.asarray(images.array[t])
        mask.array[t] = (frames >= (256 if level is None else level)).astype(np.uint8)
    st.finish(mask.group)


def _timepoint_roi(images, t: int, path) -> None:
    """An ROI store holding one time point ``t`` (shape t, 1, y, x): predict runs only there."""
    from volseg.io import store as st

    T, _, Y, X = images.shape
    job = st.make_job("demo-roi", parameters={"t": int(t)})
    roi = st.create_image(path, shape=(T, 1, Y, X), dtype="uint8", job=job,
                          extra={"content": "mask"})
    data = np.zeros((T, 1, Y, X), np.uint8)
    data[t] = 1
    roi.array[...] = data
    st.finish(roi.group)


def _tta_comparison(plain: dict, tta: dict, t: int, seconds: tuple[float, float],
                    blocks: tuple[int, int]) -> dict:
    """Held-out Dice and ROC AUC without and with TTA, and the time per block ratio."""
    a = next(r for r in plain["per_timepoint"] if r["t"] == t)
    b = next(r for r in tta["per_timepoint"] if r["t"] == t)
    per_block = [s / max(n, 1) for s, n in zip(seconds, blocks)]
    return {"held_out_t": t, "dice_plain": a["dice"], "dice_tta": b["dice"],
            "roc_auc_plain": a["roc_auc"], "roc_auc_tta": b["roc_auc"],
            "seconds_per_block_plain": per_block[0], "seconds_per_block_tta": per_block[1],
            "time_ratio": per_block[1] / per_block[0] if per_block[0] > 0 else None}


def run_demo(out_dir, *, size: DemoSize = FULL, seed: int = 0, overwrite: bool = False,
             log=print, progress_factory=None) -> dict:
    """Run the whole pipeline into ``out_dir``; returns a summary with every path and score.

    A linear script of the eight steps, each a call of the library as a user would make
    it; kept in one function (over 100 lines) so it reads as the pipeline it demonstrates.

    Parameters
    ----------
    out_dir : path
        Folder for everything the demo writes (created).
    size : DemoSize
        :data:`FULL` (the README's demo, about 15 minutes on 2 cores) or :data:`SMALL`.
    progress_factory : callable, optional
        ``progress_factory(desc) -> callback(done, total)`` for the long steps.
    """
    from volseg.io import store as st
    from volseg.stages.convert import convert
    from volseg.stages.evaluate import evaluate, write_csv, write_json
    from volseg.training.forest import train_forest
    from volseg.stages.measure import measure
    from volseg.stages.measure import write_json as write_measure_json
    from volseg.stages.predict import predict
    from volseg.data.synth import Z_STEP
    from volseg.data.synth import write_synth
    from volseg.training import train

    out = _demo_folder(out_dir, overwrite)
    prog = progress_factory or (lambda desc: None)
    times = {}

    def step(name):
        log(f"\n== {name}")
        times[name] = time.monotonic()

    step("1/9 synth: a 4D series of branching tubes with noise and look-alike blobs")
    syn = write_synth(out / "data", timepoints=size.timepoints, depth=size.depth,
                      height=size.height, width=size.width, seed=seed, overwrite=True,
                      progress=prog("synth"))
    log(f"wrote {syn['frames']} frames of {size.height}x{size.width} to {out / 'data'}/images "
        f"and /labels ({100 * syn['foreground_fraction']:.1f} % foreground)")

    step("2/9 convert: TIFF folders -> OME-Zarr")
    images_path, truth_path = out / "images.zarr", out / "truth.zarr"
    convert([out / "data" / "images"], images_path, overwrite=True, progress=prog("convert"))
    convert([out / "data" / "labels"], truth_path, mask=True, overwrite=True,
            progress=prog("convert --mask"))
    images, truth = st.open_image(images_path), st.open_image(truth_path)
    log(f"{images_path}: {images.shape} {images.dtype}; {truth_path}: binary mask")

    step(f"3/9 train: U-Net ({size.filters} base filters), last time point held out, "
         f"{size.epochs * size.steps_per_epoch} steps of {size.batch} patches")
    model_path = out / "model.keras"
    val_t = size.timepoints - 1
    summary = train(images_path, truth_path, model_path, val_timepoints=str(val_t),
                    epochs=size.epochs, steps_per_epoch=size.steps_per_epoch,
                    patch=(size.patch, size.patch), batch=size.batch, filters=size.filters,
                    seed=seed, overwrite=True, progress=prog("train"), log=log)
    log(f"model {model_path}: best epoch {summary['best_epoch']}, validation Dice "
        f"{summary['val_dice']:.3f} at threshold {summary['threshold']:.2f}")

    step("4/9 predict: tiles of every frame through the U-Net -> probability + mask")
    pred_path, tta_path = out / "pred.zarr", out / "pred-tta.zarr"
    psum, tsum, plain_seconds, tta_seconds = _predict_unet(
        images, images_path, model_path, pred_path, tta_path, val_t, out, prog, log)

    step("5/9 evaluate: exact metrics over every voxel")
    report = evaluate(pred_path, truth_path, progress=prog("evaluate"))
    tta = _tta_comparison(report, evaluate(tta_path, truth_path), val_t,
                          (plain_seconds, tta_seconds),
                          (psum["computed"], tsum["computed"] - tsum["roi_skipped"]))
    write_json(report, out / "report.json")
    write_csv(report, out / "per_timepoint.csv")
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    from volseg.viz.figures import evaluation_figures

    evaluation_figures(report, figures)

    step("6/9 preview: image, truth, probability, mask and errors of one frame")
    previews = []
    try:
        from volseg.stages.preview import preview

        previews = [str(p) for p in preview(pred_path, images_path, truth=truth_path, t=val_t,
                                            z=size.depth // 2, out=figures / "preview.png")]
    except ImportError:
        pass

    step("7/9 forest: the random-forest baseline on filter features, same split")
    forest_path, forest_pred = out / "forest.model", out / "forest-pred.zarr"
    fsum = train_forest(images_path, truth_path, forest_path, val_timepoints=str(val_t),
                        trees=size.trees, seed=seed, overwrite=True, progress=prog("forest"),
                        log=log)
    predict(images_path, forest_path, forest_pred, overwrite=True, progress=prog("predict"))
    forest_report = evaluate(forest_pred, truth_path, progress=prog("evaluate"))
    write_json(forest_report, out / "forest-report.json")

    thr_all = _threshold_baseline(images, truth)
    thr_val = _threshold_baseline(images, truth, t=val_t)

    step("8/9 measure: the structure per time point against the truth's")
    threshold_path = out / "threshold.zarr"
    _threshold_mask(images, thr_all["level"], threshold_path)
    spacing = (Z_STEP, 1.0, 1.0)  # synth's slices are Z_STEP pixels apart
    measured = {}
    for name, path in (("U-Net", pred_path), ("random forest", forest_pred),
                       ("best global threshold", threshold_path)):
        m = measure(path, truth_path=truth_path, spacing=spacing, progress=prog("measure"))
        measured[name] = m["summary"]["relative_error"]
        if name == "U-Net":
            write_measure_json(m, out / "measure.json")

    step(f"9/9 annotate: one round of the annotation loop ({size.loop_frames} frames "
         f"annotated, then {size.loop_frames} more chosen by `volseg suggest`)")
    loop = annotation_round(out, images_path, size=size, seed=seed, prog=prog, log=log)

    result = _result(out, val_t, times, report, forest_report, fsum, thr_all, thr_val, tta,
                     measured, previews, figures)
    result["annotation_loop"] = loop
    result["problems"] = baseline_problems(result["methods"]) if size.check else []
    (out / "demo.json").write_text(json.dumps({k: v for k, v in result.items() if k != "report"},
                                              indent=2, default=str))
    return result


def annotation_round(out: Path, images_path, *, size: DemoSize, seed: int, prog, log) -> dict:
    """The loop scientists run, once: annotate a few frames (``convert --mask --like``),
    train, predict, ask ``suggest`` which frames to annotate next, add their truth
    (``convert --mask --update``; the demo's labels stand for the user's drawing), train
    again from the last model (``init``). Dice on the frames annotated in neither round,
    before and after."""
    import shutil

    from volseg.io import store as st
    from volseg.io.tiff import frame_file_name
    from volseg.stages.convert import convert
    from volseg.stages.predict import predict
    from volseg.stages.suggest import suggest
    from volseg.training import train

    loop = out / "loop"
    if loop.exists():
        shutil.rmtree(loop)
    loop.mkdir()
    labels_dir = out / "data" / "labels"
    T, Z = size.timepoints, size.depth
    frames = [(t, z) for t in range(T) for z in range(Z)]
    first = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, size.loop_frames + 2)[1:-1]]

    def give(picks, folder):
        folder.mkdir()
        for t, z in picks:
            name = frame_file_name(t, z, timepoints=T, depth=Z)
            shutil.copy(labels_dir / name, folder / name)

    give(first, loop / "first")
    truth = loop / "truth.zarr"
    convert([loop / "first"], truth, mask=True, like=images_path)
    log(f"{truth}: {len(first)} annotated frames {first} of {len(frames)}; the rest stored "
        "as not annotated")
    common = dict(epochs=max(1, size.loop_steps // 20), steps_per_epoch=min(20, size.loop_steps),
                  patch=(size.patch, size.patch), batch=size.batch, filters=size.filters,
                  seed=seed, progress=prog("train"), log=lambda m: None)
    train(images_path, truth, loop / "model-1.keras", **common)
    predict(images_path, loop / "model-1.keras", loop / "pred-1.zarr", progress=prog("predict"))
    picks = [(p["t"], p["z"]) for p in suggest(loop / "pred-1.zarr", truth=truth,
                                               n=size.loop_frames)["picks"]]
    log(f"suggest: annotate {picks} next (the frames the model is least sure of)")
    give(picks, loop / "suggested")
    convert([loop / "suggested"], truth, mask=True, update=True)
    train(images_path, truth, loop / "model-2.keras", init=loop / "model-1.keras", **common)
    predict(images_path, loop / "model-2.keras", loop / "pred-2.zarr", progress=prog("predict"))
    full = st.open_image(out / "truth.zarr")
    never = [f for f in frames if f not in first and f not in picks]
    before = _frames_dice(st.open_prediction(loop / "pred-1.zarr"), full, never)
    after = _frames_dice(st.open_prediction(loop / "pred-2.zarr"), full, never)
    log(f"Dice on the {len(never)} frames never annotated: {_num(before)} with "
        f"{len(first)} annotated frames -> {_num(after)} with {len(first) + len(picks)}")
    return {"first": first, "suggested": picks, "dice_before": before, "dice_after": after,
            "steps_per_round": size.loop_steps, "frames_scored": len(never)}


def _frames_dice(pred, truth, frames) -> float | None:
    """Dice of a prediction's mask against the truth over ``frames`` (read one by one),
    from preview's pixel counts."""
    from volseg.stages.preview import confusion, dice

    total = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for t, z in frames:
        counts = confusion(np.asarray(pred.mask.array[t, z]), np.asarray(truth.array[t, z]))
        total = {k: total[k] + counts[k] for k in total}
    return dice(total)


def _demo_folder(out_dir, overwrite: bool) -> Path:
    """The demo's folder, made; refused when it holds anything but an earlier demo (and
    that too without ``overwrite``). Marked as a running demo."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        if (out / "demo.json").exists():
            raise InputError(f"{out}: holds an earlier demo; use --overwrite or another -o")
        raise InputError(f"{out}: exists and is not empty; choose another -o")
    if overwrite and out.exists() and not (out / "demo.json").exists() and any(out.iterdir()):
        raise InputError(f"{out}: is not a volseg demo folder; refusing to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps({"status": "running"}))
    return out


def _predict_unet(images, images_path, model_path, pred_path, tta_path, val_t, out, prog,
                  log):
    """Predict every frame, then the held-out time point with test-time augmentation:
    (summary, TTA summary, seconds, TTA seconds)."""
    from volseg.stages.predict import predict

    started = time.monotonic()
    psum = predict(images_path, model_path, pred_path, overwrite=True, progress=prog("predict"))
    plain_seconds = time.monotonic() - started
    log(f"{pred_path}: {psum['blocks']} blocks, threshold {psum['threshold']:.2f}")
    # test-time augmentation on the held-out time point only (8x the work per block)
    _timepoint_roi(images, val_t, out / "held-out-roi.zarr")
    started = time.monotonic()
    tsum = predict(images_path, model_path, tta_path, tta=True, roi=out / "held-out-roi.zarr",
                   overwrite=True, progress=prog("predict --tta"))
    tta_seconds = time.monotonic() - started
    log(f"{tta_path}: time point {val_t} with test-time augmentation (8 rotations and flips "
        f"per tile), {tta_seconds:.1f} s")
    return psum, tsum, plain_seconds, tta_seconds


def _result(out, val_t, times, report, forest_report, fsum, thr_all, thr_val, tta, measured,
            previews, figures) -> dict:
    """The demo's summary: every path, and each method's scores over every voxel and on
    the held-out time point."""
    images_path, truth_path, model_path = (out / "images.zarr", out / "truth.zarr",
                                           out / "model.keras")
    pred_path, tta_path = out / "pred.zarr", out / "pred-tta.zarr"
    forest_path = out / "forest.model"

    def held(rep):
        return next(r for r in rep["per_timepoint"] if r["t"] == val_t)

    held_out = held(report)
    durations = _durations(times)
    methods = {
        "U-Net": {"all": report, "held_out": held_out,
                  "train_seconds": round(durations[next(k for k in times if "train" in k)], 1)},
        "random forest": {"all": forest_report, "held_out": held(forest_report),
                          "train_seconds": round(fsum["seconds"], 1)},
        "best global threshold": {"all": thr_all, "held_out": thr_val, "train_seconds": None},
    }
    result = {
        "out_dir": str(out),
        "paths": {"images": str(images_path), "truth": str(truth_path), "model": str(model_path),
                  "prediction": str(pred_path), "prediction_tta": str(tta_path),
                  "report": str(out / "report.json"),
                  "forest": str(forest_path), "forest_report": str(out / "forest-report.json"),
                  "measure": str(out / "measure.json"),
                  "per_timepoint": str(out / "per_timepoint.csv"), "figures": str(figures),
                  "previews": previews},
        "dice_all": report["dice"], "dice_held_out": held_out["dice"],
        "sensitivity_held_out": held_out["sensitivity"],
        "threshold_dice_all": thr_all["dice"], "threshold_dice_held_out": thr_val["dice"],
        "threshold_level": thr_all["level"], "held_out_t": val_t, "report": report,
        "tta": tta,
        "methods": {name: {"dice_all": m["all"]["dice"], "dice_held_out": m["held_out"]["dice"],
                           "sensitivity": m["all"]["sensitivity"],
                           "specificity": m["all"]["specificity"],
                           "train_seconds": m["train_seconds"],
                           "length_error": measured[name]["skeleton_length"],
                           "branch_point_error": measured[name]["branch_points"]}
                    for name, m in methods.items()},
        "seconds": {k: round(v, 1) for k, v in durations.items()},
    }
    return result


def baseline_problems(methods: dict) -> list[str]:
    """What the U-Net failed to beat, as lines: the best global threshold (over every
    voxel, or on the held-out time point) is fatal, the forest a warning."""
    unet = methods["U-Net"]
    problems = []
    for name in ("best global threshold", "random forest"):
        for key, where in (("dice_all", "over every voxel"), ("dice_held_out", "held out")):
            ours, theirs = unet[key], methods[name][key]
            if theirs is not None and (ours is None or ours <= theirs):
                problems.append(f"the U-Net's Dice {where} ({_num(ours)}) is not above the "
                                f"{name}'s ({_num(theirs)})")
    return problems


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _durations(times: dict) -> dict:
    names = list(times)
    end = time.monotonic()
    return {n: (times[names[i + 1]] if i + 1 < len(names) else end) - times[n]
            for i, n in enumerate(names)}


def format_summary(result: dict) -> list[str]:
    """The closing table of the demo."""
    r = result["report"]

    def f(v):
        return "  n/a" if v is None else f"{v:.3f}"

    def pct(v):
        return "n/a" if v is None else f"{100 * v:+.1f}%"

    lines = ["", "== results (every voxel of the series; the last time point was not trained on)",
             f"{'':28s}{'Dice':>8s}{'held-out t':>12s}{'sens':>8s}{'spec':>8s}{'train s':>9s}"
             f"{'length':>9s}{'junctions':>11s}"]
    for name, m in result["methods"].items():
        secs = "" if m["train_seconds"] is None else f"{m['train_seconds']:.0f}"
        lines.append(f"{name + ' Dice':28s}{f(m['dice_all']):>8s}{f(m['dice_held_out']):>12s}"
                     f"{f(m['sensitivity']):>8s}{f(m['specificity']):>8s}{secs:>9s}"
                     f"{pct(m['length_error']):>9s}{pct(m['branch_point_error']):>11s}")
    lines.append("(length, junctions: relative error of the skeleton length and of the "
                 "branch points against the truth's)")
    tta = result.get("tta")
    if tta:
        ratio = "n/a" if tta["time_ratio"] is None else f"{tta['time_ratio']:.1f}x"
        lines += ["", f"U-Net with test-time augmentation (predict --tta: 8 rotations and flips "
                      f"per tile), held-out t={tta['held_out_t']}:",
                  f"  Dice {f(tta['dice_plain'])} -> {f(tta['dice_tta'])}, ROC AUC "
                  f"{f(tta['roc_auc_plain'])} -> {f(tta['roc_auc_tta'])}; predict time per "
                  f"time point {tta['seconds_per_block_plain']:.1f} s -> "
                  f"{tta['seconds_per_block_tta']:.1f} s ({ratio})"]
    loop = result.get("annotation_loop")
    if loop:
        lines += ["", f"annotation loop (U-Net, {loop['steps_per_round']} steps per round), Dice "
                      f"on the {loop['frames_scored']} frames never annotated:",
                  f"  {len(loop['first'])} annotated frames {f(loop['dice_before'])} -> "
                  f"+{len(loop['suggested'])} chosen by suggest {f(loop['dice_after'])}"]
    lines += ["", "U-Net, every voxel:",
             f"{'accuracy':14s}{f(r['accuracy'])}   {'sensitivity':14s}{f(r['sensitivity'])}",
             f"{'specificity':14s}{f(r['specificity'])}   {'precision':14s}{f(r['precision'])}",
             f"{'IoU':14s}{f(r['iou'])}   {'MCC':14s}{f(r['mcc'])}",
             f"{'ROC AUC':14s}{f(r['roc_auc'])}   {'PR AUC':14s}{f(r['pr_auc'])}",
             "", "written:"]
    written = {k: v for k, v in result["paths"].items() if v}
    width = max(map(len, written), default=0) + 2
    lines += [f"  {k:{width}s}{v}" for k, v in written.items()]
    lines.append("time per step (s): " + ", ".join(f"{k.split(' ')[1]} {v}"
                                                    for k, v in result["seconds"].items()))
    return lines
