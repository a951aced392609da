"""Figures as PNG files (matplotlib, Agg backend: no display needed).

Pure functions: each takes counts or small dicts and a path, and writes one PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from volseg.engine.outputs import figure_metadata


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- evaluation

def _points(histogram, confusion, best_threshold):
    """Curve arrays and the operating / best points in ROC and PR coordinates."""
    from volseg.ops.metrics import curve, threshold_bin

    c = curve(np.asarray(histogram))
    marks = []
    if confusion is not None:
        tp, fp, tn, fn = (int(confusion[k]) for k in ("tp", "fp", "tn", "fn"))
        fpr = fp / (fp + tn) if fp + tn else np.nan
        tpr = tp / (tp + fn) if tp + fn else np.nan
        prec = tp / (tp + fp) if tp + fp else np.nan
        label = "operating"
        if confusion.get("threshold") is not None:
            label += f" (t={confusion['threshold']:.3f})"
        marks.append((label, fpr, tpr, prec, "o", "tab:red"))
    if best_threshold is not None:
        i = 255 - min(255, threshold_bin(best_threshold))  # bin k sits at index 255 - k  # curve runs from bin 255 down
        marks.append((f"best Dice (t={best_threshold:.3f})", c["fpr"][i], c["tpr"][i],
                      c["precision"][i], "*", "tab:green"))
    return c, marks


def plot_roc(histogram, path, *, confusion=None, best_threshold=None, auc=None) -> Path:
    """ROC curve from the per-class probability histograms (shape (2, 256)).

    ``confusion`` (a dict with tp, fp, tn, fn and optionally threshold) marks the
    operating point; ``best_threshold`` marks the Dice-maximising threshold.
    """
    plt = pyplot()
    c, marks = _points(histogram, confusion, best_threshold)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.plot(np.r_[0.0, c["fpr"]], np.r_[0.0, c["tpr"]], color="tab:blue",
            label="ROC" + ("" if auc is None else f" (AUC {auc:.4f})"))
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    for label, fpr, tpr, _, marker, colour in marks:
        ax.plot([fpr], [tpr], marker=marker, ms=10, color=colour, ls="", label=label)
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
           xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    ax.legend(loc="lower right", fontsize=8)
    # Structure is rare: most of the action is at tiny false-positive rates.
    inset = ax.inset_axes([0.45, 0.35, 0.5, 0.35])
    inset.semilogx(np.maximum(c["fpr"], 1e-7), c["tpr"], color="tab:blue")
    for _, fpr, tpr, _, marker, colour in marks:
        inset.plot([max(fpr, 1e-7)], [tpr], marker=marker, ms=7, color=colour, ls="")
    inset.set_xlim(1e-6, 1)
    inset.set_title("log FPR", fontsize=7)
    inset.tick_params(labelsize=6)
    return save_figure(fig, plt, path)


def plot_pr(histogram, path, *, confusion=None, best_threshold=None, ap=None) -> Path:
    """Precision-recall curve (step-wise, as average precision counts it)."""
    plt = pyplot()
    c, marks = _points(histogram, confusion, best_threshold)
    ok = ~np.isnan(c["precision"])
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.step(c["tpr"][ok], c["precision"][ok], where="pre", color="tab:blue",
            label="precision-recall" + ("" if ap is None else f" (AP {ap:.4f})"))
    for label, _, tpr, prec, marker, colour in marks:
        ax.plot([tpr], [prec], marker=marker, ms=10, color=colour, ls="", label=label)
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
           title="Precision-recall")
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, plt, path)


def plot_per_index(rows, path, *, index="t", keys=("dice", "sensitivity", "precision", "iou"),
                   title=None) -> Path:
    """Metrics per time point (``index="t"``) or per depth slice (``"z"``).

    ``rows`` are the report's ``per_timepoint`` (or ``per_z``) dicts; None values
    (a ratio with no denominator, e.g. Dice of an empty frame) leave gaps.
    """
    plt = pyplot()
    x = np.array([r[index] for r in rows])
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    for k in keys:
        if not rows or k not in rows[0]:
            continue
        y = np.array([np.nan if r.get(k) is None else r[k] for r in rows], float)
        ax.plot(x, y, marker="." if len(x) <= 200 else None, lw=1, label=k)
    ax.set(xlabel="time point" if index == "t" else "depth slice", ylabel="score",
           ylim=(0, 1.01),
           title=title or ("Metrics per time point" if index == "t" else "Metrics per depth slice"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=len(keys), loc="lower left")
    return save_figure(fig, plt, path)


def plot_per_timepoint(rows, path, *, keys=("dice", "sensitivity", "precision", "iou")) -> Path:
    """Metrics per time point (see :func:`plot_per_index`)."""
    return plot_per_index(rows, path, index="t", keys=keys)


#: The files :func:`evaluation_figures` may write (per_z.png only with per-slice rows).
EVALUATION_FIGURES = ("roc.png", "pr.png", "per_timepoint.png", "per_z.png")


def evaluation_figures(report: dict, folder) -> list[Path]:
    """All evaluation figures of a report into ``folder``: roc.png, pr.png, per_timepoint.png
    (and per_z.png). ROC/PR need probabilities (a mask-only prediction has none)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    hist = report.get("histogram")
    confusion = {k: report[k] for k in ("tp", "fp", "tn", "fn")}
    confusion["threshold"] = report.get("threshold")
    if hist is not None:
        h = np.array([hist["background"], hist["structure"]])
        out.append(plot_roc(h, folder / "roc.png", confusion=confusion,
                            best_threshold=report.get("best_threshold"), auc=report.get("roc_auc")))
        out.append(plot_pr(h, folder / "pr.png", confusion=confusion,
                           best_threshold=report.get("best_threshold"), ap=report.get("pr_auc")))
    if report.get("per_timepoint"):
        out.append(plot_per_timepoint(report["per_timepoint"], folder / "per_timepoint.png"))
    if report.get("per_z"):
        out.append(plot_per_index(report["per_z"], folder / "per_z.png", index="z"))
    return out


def save_figure(fig, plt, path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, metadata=figure_metadata(Path(path).suffix))
    plt.close(fig)
    return path
