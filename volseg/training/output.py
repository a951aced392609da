"""What training writes: the model file, its history (CSV and JSON) and its curves.

Everything is written atomically (a temporary file beside the target, then
``os.replace``), so an interrupted run never leaves a half-written file that looks
complete.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

from volseg.models.unet import machine
from volseg.training.loop import rounded


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


def write_model(final, paths: dict, info: dict, history: list[dict], best_epoch: int) -> None:
    """Save the model with ``info`` as its volseg.json, then the history and its curves."""
    from volseg.models.unet import save_model

    save_model(final, paths["model"], info=info)
    write_history(history, paths)
    plot_history(history, paths["curves"], best_epoch=best_epoch)


def training_record(config, inputs, split, val_list, loop, val, *, fg_fraction: float,
                    seconds: float) -> dict:
    """The ``training`` section of the model's volseg.json: parameters and outcome."""
    c = config
    samples_per_s = (round(loop.steps * c.batch / loop.train_seconds, 3)
                     if loop.train_seconds else None)
    return {
        "loss": c.loss, "epochs": int(c.epochs), "steps_per_epoch": int(c.steps_per_epoch),
        "batch": int(c.batch), "patch": list(c.patch), "learning_rate": float(c.learning_rate),
        "schedule": c.schedule,
        "foreground_share": float(c.foreground_share), "augment": bool(c.augment),
        "patience": int(c.patience), "seed": int(c.seed), "precision": c.precision,
        "time_limit_min": c.time_limit, "percentiles": list(c.percentiles),
        "split": {"by": split.by, "val_indices": split.val_indices,
                  "train_frames": len(split.train), "val_frames": len(split.val),
                  **({"annotated_frames": split.annotated} if split.annotated else {}),
                  "validated_frames": [list(f) for f in val_list]},
        "epochs_run": len(loop.history), "steps_run": loop.steps,
        "best_epoch": loop.best_epoch, "stop_reason": loop.stop_reason,
        "train_seconds": round(loop.train_seconds, 1), "seconds": round(seconds, 1),
        "samples_per_s": samples_per_s,
        "val_dice_at_0.5": rounded(val["dice"]), "val_dice": rounded(val["best_dice"]),
        **({"val_structure_share": rounded(val["structure_share"])}
           if val.get("structure_share") is not None else {}),
        "foreground_fraction": round(fg_fraction, 6),
        "compile": c.compile, "cpu": machine(),
        **({"warning": loop.warning} if loop.warning else {}),
    }


def provenance_record(config, inputs, keras) -> dict:
    """The ``provenance`` section of volseg.json: data, init model, command, versions."""
    from volseg.models.unet import file_sha256

    init = config.init
    return {
        "images": _store_record(inputs.image), "truth": _store_record(inputs.truth),
        "roi": _store_record(inputs.roi) if inputs.roi is not None else None,
        "init": ({"path": str(Path(init).resolve()), "sha256": file_sha256(init)}
                 if init is not None else None),
        "command": config.command, "keras": keras.__version__,
        "backend": keras.backend.backend(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _store_record(store) -> dict:
    job = store.volseg.get("job", {}) or {}
    from volseg.io.location import text as location_text

    return {"path": location_text(store.path), "shape": list(store.shape),
            "dtype": str(store.dtype), "fingerprint": job.get("fingerprint"),
            "sources": job.get("sources")}
