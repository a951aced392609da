"""Train the U-Net on patches streamed from Zarr stores: ``volseg train``.

Outline of :func:`train`:

1. Open the image, truth (and ROI) stores; check shapes and parameters.
2. Hold out whole time points (whole z-frames when T == 1) for validation.
3. Scan the training frames once, block by block (:mod:`volseg.sampler`): intensity
   histogram -> robust percentiles (the model's built-in normalisation), and where the
   foreground is, for foreground oversampling.
4. Train with ``train_on_batch`` (Keras' compiled train step) fed by worker threads
   that read and augment the next batches while the current one trains. MEASURED.md:
   ``fit()`` in float32 fell to one core on this machine; ``train_on_batch`` kept both
   busy (re-measured in benchmarks/bench_train.py).
5. After each epoch, predict the validation frames whole (tiled like ``volseg predict``
   when larger than ~1.1 Mpx), quantise the probabilities to the uint8 levels that
   ``predict`` stores and count them per class inside the ROI
   (:mod:`volseg.thresholds`): Dice at 0.5 picks the best epoch and
   drives learning-rate halving and early stopping. Whole frames, not a fixed set of
   validation patches, because that is exactly what ``predict`` + ``evaluate`` will
   measure (borders, padding and tiling included), and it costs only a few seconds
   per epoch for ~6 Mpx; a larger validation set is subsampled to whole frames
   evenly spread over it (``max_val_pixels``).
6. Keep the best weights; at the end (time limit, early stop, last epoch or Ctrl-C)
   restore them, re-validate with the float32 model that is saved, pick the threshold
   maximising validation Dice exactly over the 256 levels (ties: nearest 0.5), write the
   model, ``<stem>.history.csv``/``.json`` and ``<stem>.curves.png`` beside it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from .errors import InputError
from .thresholds import LEVELS, best_threshold, class_histograms, dice_at, quantise

LOSSES = ("bce", "dice", "bce+dice")
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


# --------------------------------------------------------------------------- losses

def make_loss(kind: str = "bce+dice"):
    """Loss on targets ``(n, h, w, 2)`` = [truth, weight] and probabilities ``(n, h, w, 1)``.

    * ``bce``: binary cross-entropy averaged over pixels of weight 1;
    * ``dice``: 1 - soft Dice over the whole batch (batch Dice, as nnU-Net: stable
      when some patches hold no foreground);
    * ``bce+dice``: their sum (the default: BCE gives smooth per-pixel gradients, Dice
      counters the class imbalance).

    Uses ``keras.ops`` only, so it runs under any backend.
    """
    from keras import ops

    if kind not in LOSSES:
        raise InputError(f"--loss: must be one of {', '.join(LOSSES)}, not {kind!r}")
    eps = 1e-6

    def parts(target, prob):
        target = ops.cast(target, "float32")
        prob = ops.cast(prob, "float32")
        y, w = target[..., 0:1], target[..., 1:2]
        return y, w, prob

    def bce(target, prob):
        y, w, p = parts(target, prob)
        p = ops.clip(p, eps, 1.0 - eps)
        per_pixel = -(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))
        return ops.sum(w * per_pixel) / ops.maximum(ops.sum(w), 1.0)

    def dice(target, prob):
        y, w, p = parts(target, prob)
        inter = ops.sum(w * y * p)
        denom = ops.sum(w * y) + ops.sum(w * p)
        return 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)

    def bce_dice(target, prob):
        return bce(target, prob) + dice(target, prob)

    fn = {"bce": bce, "dice": dice, "bce+dice": bce_dice}[kind]
    fn.__name__ = kind.replace("+", "_")
    return fn


# --------------------------------------------------------------------------- validation

def choose_val_frames(frames, frame_pixels: int, max_pixels: int | None):
    """All validation frames, or an evenly spread subset within ``max_pixels``."""
    frames = list(frames)
    if not max_pixels or len(frames) * frame_pixels <= max_pixels:
        return frames
    n = max(1, max_pixels // max(1, frame_pixels))
    idx = np.unique(np.linspace(0, len(frames) - 1, n).round().astype(int))
    return [frames[i] for i in idx]


class Validator:
    """Predict whole validation frames and histogram their probabilities per class.

    Frames are tiled exactly as ``volseg predict`` tiles them (:mod:`volseg.tiling`),
    with the model's margin as halo; only pixels inside the ROI count.
    """

    def __init__(self, image, truth, frames, *, roi=None, multiple: int, margin: int,
                 batch_size: int = 1):
        from .tiling import tile_plan

        self.image, self.truth, self.roi = image, truth, roi
        self.frames = list(frames)
        self.plan = tile_plan(image.shape[2], image.shape[3], halo=margin, multiple=multiple)
        self.batch_size = batch_size
        self.pixels = len(self.frames) * image.shape[2] * image.shape[3]

    def probabilities(self, model, t: int, z: int) -> np.ndarray:
        """Probability frame (H, W) float32 for frame (t, z)."""
        from .tiling import predict_frames

        frame = np.asarray(self.image[t, z])
        return predict_frames(frame, lambda x: np.asarray(model.predict_on_batch(x)),
                              self.plan, batch_size=self.batch_size)[0]

    def run(self, model) -> dict:
        """Validate ``model``: Dice at 0.5, the best threshold and its Dice, histograms.

        Probabilities are quantised to uint8 levels as ``volseg predict`` stores them,
        so the best threshold selects on the stored probabilities exactly the mask it
        was chosen for (:mod:`volseg.thresholds`).
        """
        hist = np.zeros((2, LEVELS), np.int64)
        start = time.monotonic()
        for t, z in self.frames:
            prob = self.probabilities(model, t, z)
            lab = np.asarray(self.truth[t, z]).astype(bool)
            if self.roi is not None:
                rt = 0 if self.roi.shape[0] == 1 else t
                rz = 0 if self.roi.shape[1] == 1 else z
                inside = np.asarray(self.roi[rt, rz]) > 0
            else:
                inside = np.ones(lab.shape, bool)
            hist += class_histograms(quantise(prob)[inside], lab[inside])
        # Without foreground in the validation frames no threshold is better than 0.5.
        threshold, dice_best = best_threshold(hist) or (0.5, float("nan"))
        return {"dice": dice_at(hist, 0.5), "best_threshold": threshold,
                "best_dice": dice_best, "histogram": hist,
                "seconds": time.monotonic() - start}


# --------------------------------------------------------------------------- inputs

def _open_inputs(images_path, truth_path, roi_path):
    from .store import open_image

    image = open_image(images_path, what="image store (--images)")
    truth = open_image(truth_path, what="truth store (--truth)")
    if tuple(truth.shape) != tuple(image.shape):
        raise InputError(f"--truth {truth_path}: shape {tuple(truth.shape)} differs from the "
                         f"images' {tuple(image.shape)}; both must be (t, z, y, x) of one size")
    if np.dtype(truth.dtype).kind not in "biu":
        raise InputError(f"--truth {truth_path}: dtype {truth.dtype} is not a label type; "
                         "convert annotations with `volseg convert --mask`")
    roi = None
    if roi_path is not None:
        roi = open_image(roi_path, what="ROI store (--roi)")
        rs, s = tuple(roi.shape), tuple(image.shape)
        if rs[2:] != s[2:] or rs[0] not in (1, s[0]) or rs[1] not in (1, s[1]):
            raise InputError(f"--roi {roi_path}: shape {rs} does not fit the images' {s} "
                             "(same y, x; t and z equal or 1)")
    return image, truth, roi


def _parse_patch(patch) -> tuple[int, int]:
    if isinstance(patch, int):
        return (patch, patch)
    if isinstance(patch, str):
        parts = patch.replace("x", ",").split(",")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise InputError(f"--patch: {patch!r} is not N or H,W") from None
        return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])
    return (int(patch[0]), int(patch[1]))


def output_paths(out_path) -> dict:
    """Where :func:`train` writes: the model and its history and curves beside it."""
    out = Path(out_path)
    stem = out.with_suffix("")
    return {"model": out, "history_csv": Path(f"{stem}.history.csv"),
            "history_json": Path(f"{stem}.history.json"),
            "curves": Path(f"{stem}.curves.png")}


# --------------------------------------------------------------------------- history

def write_history(history: list[dict], paths: dict) -> None:
    """Write the per-epoch history as CSV and JSON (atomically)."""
    if not history:
        return
    keys = list(history[0].keys())
    tmp = paths["history_csv"].with_name(paths["history_csv"].name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, paths["history_csv"])
    tmp = paths["history_json"].with_name(paths["history_json"].name + ".tmp")
    tmp.write_text(json.dumps(history, indent=1))
    os.replace(tmp, paths["history_json"])


def plot_history(history: list[dict], path, *, best_epoch: int | None = None) -> None:
    """Loss and validation Dice per epoch (PNG); a dashed line marks the kept epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(epochs, [h["loss"] for h in history], "o-", color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["val_dice"] for h in history], "s-", color="tab:orange",
             label="validation Dice (0.5)")
    ax2.set_ylabel("validation Dice", color="tab:orange")
    ax2.set_ylim(0, 1)
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
    ax.set_title("volseg train" + (f": kept epoch {best_epoch}" if best_epoch else ""))
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- training

def train(images_path, truth_path, out_path, *, roi_path=None, init=None,
          val_fraction: float = 0.2, val_timepoints: str | None = None,
          val_frames: str | None = None, loss: str = "bce+dice", epochs: int = 100,
          steps_per_epoch: int = 100, patch=(256, 256), batch: int = 8, filters: int = 16,
          depth: int = 4, dropout: float = 0.1, batch_norm: bool = True,
          learning_rate: float = 1e-3, foreground_share: float = 1 / 3, augment: bool = True,
          patience: int = 10, lr_patience: int = 3, seed: int = 0,
          time_limit: float | None = None, precision: str = "float32", workers: int = 2,
          max_val_pixels: int | None = 16_000_000, percentiles=(0.5, 99.5),
          overwrite: bool = False, command: str | None = None, progress=None,
          log=None) -> dict:
    """Train a U-Net on Zarr image/truth stores and write a volseg model file.

    Parameters
    ----------
    images_path, truth_path : path
        Image and truth stores (t, z, y, x) of one shape; truth is 0/1.
    out_path : path
        Model file to write (``.keras``); history and curves go beside it.
    roi_path : path, optional
        Mask store of where labels are valid (t and z may be 1 to apply everywhere):
        patches are centred inside it, the loss and validation count only inside it.
    init : path, optional
        A volseg model to continue from (its architecture and normalisation are kept).
    val_fraction, val_timepoints, val_frames
        Validation split (see :func:`volseg.sampler.split_frames`).
    loss : "bce", "dice" or "bce+dice"
    epochs, steps_per_epoch, patch, batch
        Training length and batch geometry. ``patch`` must be multiples of 2**depth.
    filters, depth, dropout, batch_norm
        U-Net architecture (ignored with ``init``).
    learning_rate : float
        Adam's initial rate; halved after ``lr_patience`` epochs without a better
        validation Dice.
    foreground_share : float
        Share of patches centred on foreground.
    augment : bool
        Flips, 90-degree rotations, intensity jitter.
    patience : int
        Early stopping: epochs without a better validation Dice.
    seed : int
        Seeds weights, dropout and patch sampling.
    time_limit : float, optional
        Minutes; training stops in time to validate, and the best model is kept.
    precision : "float32" or "bfloat16"
        Training precision (``mixed_bfloat16`` policy). The saved model is float32.
    workers : int
        Threads preparing patches ahead of the training step.
    max_val_pixels : int, optional
        Cap on validation pixels per epoch (whole frames evenly spread).
    percentiles : (low, high)
        Intensity percentiles (in %) mapped to 0 and 1 by the model.
    overwrite : bool
        Replace an existing model file.
    command : str, optional
        Command line, for provenance.
    progress : callable(done, total), optional
        Called with ``(0, steps)`` when an epoch starts and after each training step
        with the step within the epoch.
    log : callable(str), optional
        Receives one line per epoch and a few status lines.

    Returns
    -------
    dict
        Summary: paths, best epoch, validation Dice, threshold, stop reason, timings.
    """
    from .model import read_model_info
    from .sampler import Augment, PatchSampler, prefetch, scan_training_data, split_frames

    say = log or (lambda message: None)
    t_start = time.monotonic()
    deadline = t_start + 60.0 * time_limit if time_limit else None

    # ---- check parameters and inputs before any heavy work
    paths = output_paths(out_path)
    if paths["model"].suffix != ".keras":
        raise InputError(f"-o {out_path}: the model file must end in .keras")
    parent = paths["model"].parent
    if not parent.is_dir():
        raise InputError(f"-o {out_path}: folder {parent} does not exist")
    if paths["model"].exists() and not overwrite:
        raise InputError(f"-o {out_path}: exists; use --overwrite to replace it")
    if loss not in LOSSES:
        raise InputError(f"--loss: must be one of {', '.join(LOSSES)}, not {loss!r}")
    if precision not in PRECISIONS:
        raise InputError(f"--precision: must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    for name, value in (("--epochs", epochs), ("--steps-per-epoch", steps_per_epoch),
                        ("--batch", batch), ("--filters", filters), ("--depth", depth)):
        if int(value) < 1:
            raise InputError(f"{name}: must be at least 1, got {value}")
    if time_limit is not None and time_limit <= 0:
        raise InputError(f"--time-limit: must be positive minutes, got {time_limit}")
    patch = _parse_patch(patch)
    init_info = None
    if init is not None:
        init_info = read_model_info(init)
        arch = init_info["architecture"]
        filters, depth = arch["base_filters"], arch["depth"]
        dropout, batch_norm = arch["dropout"], arch["batch_norm"]
    multiple = 2 ** int(depth)
    if patch[0] % multiple or patch[1] % multiple or min(patch) < multiple:
        raise InputError(f"--patch: {patch[0]}x{patch[1]} must be multiples of {multiple} "
                         f"(2**depth for depth {depth})")
    image, truth, roi = _open_inputs(images_path, truth_path, roi_path)
    roi_arr = roi.array if roi is not None else None
    split = split_frames(image.shape, val_fraction=val_fraction,
                         val_timepoints=val_timepoints, val_frames=val_frames)
    say(f"images {tuple(image.shape)} {image.dtype}: {len(split.train)} training and "
        f"{len(split.val)} validation frames (held out by {split.by}: "
        f"{_ranges(split.val_indices)})")

    # ---- scan training data: intensity range and foreground locations
    index = scan_training_data(image.array, truth.array, split.train, roi=roi_arr, seed=seed)
    fg_fraction = index.foreground_fraction
    if index.foreground.total == 0:
        say("warning: no foreground pixels in the training frames")
    normalization = index.percentiles(*percentiles)
    say(f"foreground {100 * fg_fraction:.2f} % of training pixels; intensity "
        f"{percentiles[0]}-{percentiles[1]} percentiles {normalization[0]:g}..{normalization[1]:g}")

    # ---- model (Keras loads only now: bad input above fails fast)
    from ._quiet import import_keras

    keras = import_keras()

    from .model import (base_info, build_unet, default_margin, file_sha256, load_model,
                        model_normalization, save_model, with_precision)
    from .sampler import PatchDataset

    keras.utils.set_random_seed(int(seed))
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        if init is not None:
            base, _ = load_model(init)
            normalization = model_normalization(base)
            model = with_precision(base, precision, info=init_info)
            say(f"continuing from {init} (its normalisation {normalization[0]:g}.."
                f"{normalization[1]:g} is kept)")
        else:
            model = build_unet(base_filters=filters, depth=depth, dropout=dropout,
                               batch_norm=batch_norm, normalization=normalization)
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
        # jit_compile=False: XLA is 10x slower for training on CPU (MEASURED.md).
        model.compile(optimizer=optimizer, loss=make_loss(loss), jit_compile=False)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    margin = default_margin(depth)

    sampler = PatchSampler(image.array, truth.array, index, patch=patch, roi=roi_arr,
                           foreground_share=foreground_share, normalization=normalization,
                           augment=Augment() if augment else Augment.none())
    dataset = PatchDataset(sampler, batch_size=batch, steps=steps_per_epoch, seed=seed,
                           workers=workers, max_queue_size=max(2, 2 * workers))
    frame_pixels = image.shape[2] * image.shape[3]
    val_list = choose_val_frames(split.val, frame_pixels, max_val_pixels)
    if len(val_list) < len(split.val):
        say(f"validating on {len(val_list)} of {len(split.val)} validation frames "
            f"(max_val_pixels={max_val_pixels})")
    validator = Validator(image.array, truth.array, val_list, roi=roi_arr, multiple=multiple,
                          margin=margin)

    # ---- loop
    history: list[dict] = []
    best = {"dice": -1.0, "epoch": 0, "weights": None, "val": None}
    since_best = 0
    stop_reason = "epochs"
    steps_done = 0
    val_estimate = validator.pixels / 1.0e6  # s; replaced by the measured time
    lr = float(learning_rate)
    train_seconds = 0.0
    for epoch in range(1, int(epochs) + 1):
        dataset.epoch = epoch - 1
        losses = []
        t0 = time.monotonic()
        interrupted = out_of_time = False
        batches = prefetch(dataset, workers=workers, depth=max(2, 2 * workers))
        if progress is not None:
            progress(0, steps_per_epoch)  # a new epoch starts
        try:
            for step, (x, y) in enumerate(batches, 1):
                value = model.train_on_batch(x, y)
                losses.append(float(np.asarray(value).ravel()[0]))
                steps_done += 1
                if progress is not None:
                    progress(step, steps_per_epoch)
                if deadline is not None:
                    per_step = (time.monotonic() - t0) / step
                    # Room for this epoch's validation, the final float32 one and saving.
                    if time.monotonic() + per_step + 2.2 * val_estimate + 3 > deadline:
                        out_of_time = True
                        break
        except KeyboardInterrupt:
            interrupted = True
        finally:
            batches.close()
        seconds = time.monotonic() - t0
        train_seconds += seconds
        if not losses:  # interrupted or out of time before the first step of this epoch
            stop_reason = "interrupted" if interrupted else "time limit"
            if best["weights"] is not None:
                break
            if interrupted:
                raise KeyboardInterrupt
            raise InputError("--time-limit: too short to train a single step and validate")
        try:
            val = validator.run(model)
        except KeyboardInterrupt:
            interrupted, val = True, None
        if val is not None:
            val_estimate = val["seconds"]
            improved = not math.isnan(val["dice"]) and val["dice"] > best["dice"] + 1e-4
            if improved or best["weights"] is None:
                best = {"dice": val["dice"], "epoch": epoch, "weights": model.get_weights(),
                        "val": val}
                since_best = 0
            else:
                since_best += 1
            record = {"epoch": epoch, "steps": len(losses), "loss": float(np.mean(losses)),
                      "val_dice": _round(val["dice"]), "val_best_dice": _round(val["best_dice"]),
                      "val_best_threshold": val["best_threshold"], "learning_rate": lr,
                      "train_seconds": round(seconds, 2), "val_seconds": round(val["seconds"], 2),
                      "samples_per_s": round(len(losses) * batch / seconds, 3)}
            history.append(record)
            write_history(history, paths)
            say(f"epoch {epoch}/{epochs}: loss {record['loss']:.4f}, val Dice "
                f"{val['dice']:.4f} (best {best['dice']:.4f} at epoch {best['epoch']}), "
                f"{record['samples_per_s']:.1f} samples/s, {seconds:.0f}+{val['seconds']:.0f} s")
        if interrupted:
            stop_reason = "interrupted"
            say("interrupted: keeping the best model so far")
            break
        if out_of_time:
            stop_reason = "time limit"
            say(f"time limit of {time_limit:g} min reached: keeping the best model")
            break
        if since_best >= patience:
            stop_reason = "early stopping"
            say(f"no better validation Dice for {patience} epochs: stopping")
            break
        if since_best and since_best % lr_patience == 0 and lr > 1e-5:
            lr = max(lr / 2, 1e-5)
            model.optimizer.learning_rate.assign(lr)
            say(f"learning rate -> {lr:g}")

    # ---- finish: best weights, float32 model, threshold on its validation outputs
    if best["weights"] is None:
        raise KeyboardInterrupt  # interrupted before any validation: nothing to keep
    model.set_weights(best["weights"])
    final_info = {"architecture": {"base_filters": int(filters), "depth": int(depth),
                                   "dropout": float(dropout), "batch_norm": bool(batch_norm)}}
    final = with_precision(model, "float32", info=final_info)
    val = validator.run(final)
    threshold = val["best_threshold"]
    training = {
        "loss": loss, "epochs": int(epochs), "steps_per_epoch": int(steps_per_epoch),
        "batch": int(batch), "patch": list(patch), "learning_rate": float(learning_rate),
        "foreground_share": float(foreground_share), "augment": bool(augment),
        "patience": int(patience), "seed": int(seed), "precision": precision,
        "time_limit_min": time_limit, "percentiles": list(percentiles),
        "split": {"by": split.by, "val_indices": split.val_indices,
                  "train_frames": len(split.train), "val_frames": len(split.val),
                  "validated_frames": [list(f) for f in val_list]},
        "epochs_run": len(history), "steps_run": steps_done, "best_epoch": best["epoch"],
        "stop_reason": stop_reason, "train_seconds": round(train_seconds, 1),
        "seconds": round(time.monotonic() - t_start, 1),
        "samples_per_s": round(steps_done * batch / train_seconds, 3) if train_seconds else None,
        "val_dice_at_0.5": _round(val["dice"]), "val_dice": _round(val["best_dice"]),
        "foreground_fraction": round(fg_fraction, 6),
    }
    provenance = {
        "images": _store_record(image), "truth": _store_record(truth),
        "roi": _store_record(roi) if roi is not None else None,
        "init": ({"path": str(Path(init).resolve()), "sha256": file_sha256(init)}
                 if init is not None else None),
        "command": command, "keras": keras.__version__, "backend": keras.backend.backend(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    info = base_info(depth=depth, base_filters=filters, dropout=dropout, batch_norm=batch_norm,
                     normalization=normalization, patch=patch, threshold=threshold,
                     input_dtype=str(image.dtype), training=training, provenance=provenance)
    info["margin"] = margin
    save_model(final, paths["model"], info=info)
    write_history(history, paths)
    plot_history(history, paths["curves"], best_epoch=best["epoch"])
    say(f"saved {paths['model']}: best epoch {best['epoch']}, val Dice {val['best_dice']:.4f} "
        f"at threshold {threshold:.4f} ({val['dice']:.4f} at 0.5); stopped by {stop_reason}")
    return {"model": str(paths["model"]), "history_csv": str(paths["history_csv"]),
            "history_json": str(paths["history_json"]), "curves": str(paths["curves"]),
            "best_epoch": best["epoch"], "epochs_run": len(history), "steps": steps_done,
            "val_dice": val["best_dice"], "val_dice_at_0.5": val["dice"],
            "threshold": threshold, "stop_reason": stop_reason,
            "normalization": list(normalization), "seconds": time.monotonic() - t_start,
            "samples_per_s": training["samples_per_s"], "history": history}


def _round(value, digits: int = 6):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) \
        else round(float(value), digits)


def _ranges(values) -> str:
    """[14, 15, 16, 19] -> "14-16,19"."""
    values = sorted(values)
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ",".join(out)


def _store_record(store) -> dict:
    job = store.volseg.get("job", {}) or {}
    return {"path": str(Path(store.path).resolve()), "shape": list(store.shape),
            "dtype": str(store.dtype), "fingerprint": job.get("fingerprint"),
            "sources": job.get("sources")}
