"""Streamed evaluation of a prediction store against a truth store.

Every block (a few shards of the prediction, whole frames) is one Dask task. The task
opens the Zarr arrays itself, reads its region, and returns small integer counts per
time point (and per depth slice): a :class:`~volseg.ops.metrics.ConfusionHistogram` each,
a few KiB. Pixel data never goes through the scheduler, and the counts are summed as
blocks finish, so memory stays at a few blocks whatever the dataset size. Integer
counts add exactly, so the report does not depend on the chunking, the block order or
the number of workers.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np

from volseg.io import store as _store
from volseg.engine.blocks import BlockGrid, client_threads, describe, run_blocks, usable_cores
from volseg.errors import InputError
from volseg.engine.outputs import write_text_atomic
from volseg.io.truth import not_annotated
from volseg.ops.annotation import annotated, check_mask, check_mask_dtype, inside_roi, known_labels
from volseg.ops.metrics import ConfusionHistogram, count_block, default_scale, metrics
from volseg.ops.thresholds import best_level, level_threshold

#: Aim for blocks of about this many voxels (a few tens of MB per task with temporaries).
TARGET_BLOCK_VOXELS = 8 * 2**20
#: Try to make at least this many blocks per worker thread, to keep cores busy to the end.
BLOCKS_PER_THREAD = 4
#: Tolerance to decide that --threshold is the threshold stored with the prediction.
_SAME_THRESHOLD = 1e-9


# --------------------------------------------------------------------------- opening

def _open_inputs(pred_path, truth_path, roi_path, *, channel=None, series=None):
    """Open the stores (swap point: everything about paths and formats is in store.py)."""
    pred = _store.open_prediction(pred_path)
    truth = _store.open_image(truth_path, what="truth store", channel=channel, series=series)
    roi = None if roi_path is None else _store.open_image(roi_path, what="ROI store",
                                                            channel=channel, series=series)
    return pred, truth, roi


def _stored_threshold(pred) -> float | None:
    for attrs in (pred.volseg, pred.mask.volseg,
                  pred.probability.volseg if pred.probability is not None else {}):
        if attrs.get("threshold") is not None:
            return float(attrs["threshold"])
    return None


# --------------------------------------------------------------------------- blocks

def plan_blocks(shape, block_shape, *, threads: int = 1, target_voxels: int = TARGET_BLOCK_VOXELS,
                full_frames: bool = False) -> BlockGrid:
    """The evaluation blocks of a (t, z, y, x) array: runs of whole ``block_shape`` shards.

    A block spans several time points when a shard holds every depth slice, else several
    shards along z. It grows up to ``target_voxels`` while leaving at least
    ``BLOCKS_PER_THREAD * threads`` blocks where the data allows. With ``full_frames``
    (clDice: a skeleton is not local) blocks span whole y, x.
    """
    T, Z, Y, X = shape
    bt, bz, by, bx = (max(1, min(b, n)) for b, n in zip(block_shape, shape))
    if full_frames:
        by, bx = max(1, Y), max(1, X)
    frame = by * bx
    want = max(1, BLOCKS_PER_THREAD * threads)
    if bz >= Z:  # a shard holds every z: group time points
        per = max(1, target_voxels // max(1, bt * Z * frame))
        n_other = math.ceil(Y / by) * math.ceil(X / bx)
        per = min(per, max(1, math.ceil(T / bt) * n_other // want))
        bt, bz = bt * per, max(1, Z)
    else:  # group shards along z, one time point-shard at a time
        per = max(1, target_voxels // max(1, bt * bz * frame))
        n_other = math.ceil(T / bt) * math.ceil(Y / by) * math.ceil(X / bx)
        per = min(per, max(1, math.ceil(Z / bz) * n_other // want))
        bz = min(Z, bz * per)
    return BlockGrid(shape, (bt, bz, by, bx))


@dataclass(frozen=True)
class _Job:
    """What a task needs: the arrays (they pickle as store + metadata, not data) and
    the counting parameters."""

    truth: object
    mask: object | None
    probability: object | None
    roi: object | None
    threshold: float | None  # None: count the stored mask
    scale: float | None
    per_z: bool
    cldice: bool
    truth_name: str
    not_annotated: int | None = None  # the truth's "not annotated" value, when recorded


def count_region(i: int, *, job: _Job, grid: BlockGrid) -> tuple[dict, dict]:
    """Process function: read block ``i`` and count it per time point (and per z).

    Returns ``(per_t, per_z)``: dicts from index to ConfusionHistogram.
    """
    region = grid.region(i)
    truth = np.asarray(job.truth[region])
    inside = None
    if job.not_annotated is not None:  # counted: annotated voxels (inside the ROI) only
        inside = annotated(truth, job.not_annotated)
        truth = known_labels(truth, job.not_annotated)
    check_mask(truth, name=f"{job.truth_name}: block {describe(region)}")
    prob = None if job.probability is None else np.asarray(job.probability[region])
    mask = None if job.mask is None else np.asarray(job.mask[region])
    roi = None
    if job.roi is not None:  # an ROI of one time point or slice applies to all of them
        where = _store.roi_index(job.roi.shape, region[0], region[1]) + tuple(region[2:])
        roi = np.broadcast_to(inside_roi(job.roi[where]), truth.shape)
    if inside is not None:
        roi = inside if roi is None else inside & roi
    t0, z0 = region[0].start, region[1].start
    kw = dict(threshold=job.threshold, scale=job.scale, cldice=job.cldice, check=False)

    def part(a, i, j=None):
        if a is None:
            return None
        return a[i] if j is None else a[i, j]

    per_t: dict[int, ConfusionHistogram] = {}
    per_z: dict[int, ConfusionHistogram] = {}
    for i in range(truth.shape[0]):
        if not job.per_z:
            per_t[t0 + i] = count_block(truth[i], mask=part(mask, i), probability=part(prob, i),
                                        roi=part(roi, i), **kw)
            continue
        for j in range(truth.shape[1]):
            c = count_block(truth[i, j], mask=part(mask, i, j), probability=part(prob, i, j),
                            roi=part(roi, i, j), **kw)
            per_t[t0 + i] = per_t[t0 + i] + c if t0 + i in per_t else c
            per_z[z0 + j] = per_z[z0 + j] + c if z0 + j in per_z else c
    return per_t, per_z


def _merge(into: dict, part: dict) -> None:
    for k, c in part.items():
        into[k] = into[k] + c if k in into else c


# --------------------------------------------------------------------------- API

@dataclass(frozen=True)
class Evaluation:
    """Opened and checked inputs of an evaluation (see :func:`prepare`)."""

    job: _Job
    shape: tuple
    block_shape: tuple
    info: dict  # what is evaluated how: paths, thresholds, confusion source


def prepare(pred_path, truth_path, *, roi_path=None, threshold=None, per_z=False,
            cldice=False, channel=None, series=None) -> Evaluation:
    """Open the stores and check everything that can be checked without counting.

    Raises :class:`InputError` for a missing or incomplete store, shapes that differ
    (naming both), a non-integer truth, or a threshold outside [0, 1] or not usable.
    Cheap: call it before starting a cluster to fail fast. (A truth with values other
    than 0/1 is only found while counting.)
    """
    if threshold is not None:
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise InputError(f"{threshold!r} is not a number", param="threshold") from None
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"{threshold} is outside [0, 1]", param="threshold")
    pred, truth, roi = _open_inputs(pred_path, truth_path, roi_path, channel=channel,
                                    series=series)
    prob = pred.probability
    shape = tuple(pred.mask.shape)
    if tuple(truth.shape) != shape:
        raise InputError(f"{truth_path}: truth shape {_shape(truth.shape)} differs from the "
                         f"prediction's {_shape(shape)} ({pred_path}); (t, z, y, x) must match")
    if prob is not None and tuple(prob.shape) != shape:
        raise InputError(f"{pred_path}: probability shape {_shape(prob.shape)} differs from "
                         f"its mask's {_shape(shape)}")
    if roi is not None:
        _store.check_roi_fits(roi.shape, shape, name=str(roi_path), against="the prediction's")
    check_mask_dtype(truth.dtype, name=str(truth_path))

    stored = _stored_threshold(pred)
    use_mask = threshold is None or (stored is not None and same_threshold(threshold, stored))
    if not use_mask and prob is None:
        raise InputError(f"{pred_path} has no probability array (mask only), so it cannot be "
                         f"thresholded at {threshold}; use the stored threshold",
                         param="threshold")
    scale = None
    if prob is not None:
        scale = float(prob.volseg.get("probability_scale") or default_scale(prob.dtype))

    job = _Job(
        truth=truth.array, mask=pred.mask.array if use_mask else None,
        probability=None if prob is None else prob.array,
        roi=None if roi is None else roi.array,
        threshold=None if use_mask else threshold, scale=scale,
        per_z=per_z, cldice=cldice, truth_name=str(truth_path),
        not_annotated=not_annotated(truth),
    )
    info = {
        "prediction": str(pred_path),
        "truth": str(truth_path),
        "roi": None if roi_path is None else str(roi_path),
        "shape": list(shape),
        "threshold": stored if threshold is None else threshold,
        "stored_threshold": stored,
        "confusion_source": "mask" if use_mask else "probability >= threshold",
        "probability": prob is not None,
    }
    notes = []
    if not use_mask:
        notes.append(f"confusion counts at --threshold {threshold} come from the stored "
                     f"probabilities, not from the stored mask (made at {stored})")
    predicted_in = ((pred.volseg.get("job") or {}).get("parameters") or {}).get("roi")
    if roi_path is None and isinstance(predicted_in, dict):
        notes.append(f"{pred_path} was predicted inside the ROI {predicted_in.get('path')} "
                     "only; voxels outside it count as predicted background here: pass "
                     "--roi with that store to evaluate inside it")
    if job.not_annotated is not None:
        info["not_annotated"] = job.not_annotated
        notes.append(f"{truth_path} marks not-annotated voxels ({job.not_annotated}): only "
                     "annotated voxels are counted (voxels = annotated voxels)")
    if notes:
        info["note"] = "; ".join(notes)
    return Evaluation(job, shape, tuple(pred.mask.block_shape), info)


def same_threshold(given: float, stored: float) -> bool:
    """``given`` is the stored threshold, also as volseg prints it (6 significant digits:
    ``0.929412`` for 0.92941176...), so a threshold copied from the output counts the
    stored mask rather than a mask one level away."""
    return abs(given - stored) <= _SAME_THRESHOLD or f"{given:g}" == f"{stored:g}"


def local_layout() -> dict:
    """The local cluster evaluate runs on by default: one single-threaded worker process
    per usable core (counting holds the GIL part of the time, so processes beat threads:
    benchmarks/bench_evaluate.py), sized by the CPU affinity, so a Slurm job given 4 of
    64 cores runs 4 workers."""
    from volseg.engine.blocks import usable_cores

    return {"workers": usable_cores(), "threads": 1}


def evaluate(pred_path, truth_path, *, roi_path=None, threshold=None, per_z=False,
             cldice=False, channel=None, series=None, client=None, progress=None,
             target_voxels=TARGET_BLOCK_VOXELS) -> dict:
    """Evaluate a prediction store against a truth store, streamed over blocks.

    Parameters
    ----------
    pred_path : path
        Prediction store (``probability`` and ``mask`` groups; mask-only works too).
    truth_path : path
        Binary truth store (``volseg convert --mask``, or any OME-NGFF 0/1 image), same
        (t, z, y, x) shape.
    roi_path : path, optional
        Binary store: only voxels where it is nonzero are counted. The same (t, z, y, x)
        shape, or one time point and/or one slice that applies to all of them.
    threshold : float, optional
        Operating threshold in [0, 1]. Default: the one stored with the prediction,
        and the confusion counts come from the stored mask. Another value counts
        ``probability >= threshold`` on the stored probabilities instead (for uint8
        probabilities exactly what the histogram gives at that threshold).
    per_z : bool
        Also report metrics per depth slice (summed over time): ``per_z``.
    cldice : bool
        Also compute clDice (skeletons of every 2D frame: several times slower).
    channel, series : int, optional
        The channel and bioformats2raw series of truth and ROI stores made by other tools.
    client : distributed.Client, optional
        Run one task per block on this cluster; None: threads of this process.
    progress : callable, optional
        ``progress(done, total)`` in blocks.
    target_voxels : int
        Voxels per evaluation block (whole shards are never split).

    Returns
    -------
    dict
        The report: the documented keys (``tp fp tn fn accuracy sensitivity specificity
        precision dice iou mcc roc_auc pr_auc best_threshold voxels``, ``per_timepoint``),
        ``balanced_accuracy``, ``best_dice``, clDice keys when asked, ``per_z`` when
        asked, the probability ``histogram`` and what was evaluated how.
    """
    ev = prepare(pred_path, truth_path, roi_path=roi_path, threshold=threshold,
                 per_z=per_z, cldice=cldice, channel=channel, series=series)
    threads = usable_cores() if client is None else client_threads(client)
    grid = plan_blocks(ev.shape, ev.block_shape, threads=threads,
                       target_voxels=target_voxels, full_frames=cldice)
    per_t: dict = {}
    per_zd: dict = {}

    def add(_, counts):  # a streaming reduction: integer counts add exactly, in any order
        _merge(per_t, counts[0])
        _merge(per_zd, counts[1])

    start = time.perf_counter()
    # The job (array handles and parameters, ~2 KB) goes with each task rather than being
    # scattered once: a scattered copy can be lost with an adaptive Slurm worker.
    run_blocks(functools.partial(count_region, job=ev.job, grid=grid), range(len(grid)),
               client=client, progress=progress, on_result=add, grid=grid, threads=threads)
    seconds = time.perf_counter() - start

    has_prob = ev.job.probability is not None
    total = sum(per_t.values(), 0)
    if not per_t:  # an array with no voxels at all
        total = ConfusionHistogram(histogram=np.zeros((2, 256), np.int64) if has_prob else None)
    if ev.job.not_annotated is not None and total.voxels == 0:
        raise InputError(f"{truth_path}: no voxel is annotated{' inside the ROI' if roi_path else ''}; "
                         "there is nothing to evaluate against", param="truth_path")
    report = dict(ev.info)
    report.update(metrics(total))
    report["per_timepoint"] = [_row("t", t, per_t[t], ev.job) for t in sorted(per_t)]
    if has_prob:
        for row in report["per_timepoint"]:
            row["best_dice_gain"] = _gain(row["best_dice"], row["dice"])
        report["oracle_per_timepoint_threshold"] = oracle_per_timepoint(per_t)
    if per_z:
        report["per_z"] = [_row("z", z, per_zd[z], ev.job) for z in sorted(per_zd)]
    report["histogram"] = None if total.histogram is None else {
        "bins": 256, "scale": "bin k = probability k/255",
        "background": total.histogram[0].tolist(), "structure": total.histogram[1].tolist()}
    report["blocks"] = len(grid)
    report["seconds"] = seconds
    report["voxels_per_second"] = total.voxels / seconds if seconds > 0 else None
    return report


def _row(axis: str, index, counts, job: _Job) -> dict:
    """One per-time-point (or per-z) row; with a partial truth it says whether anything
    there was annotated (a row without annotation has no metrics, not Dice 0 or 1)."""
    row = {axis: int(index), **metrics(counts)}
    if job.not_annotated is not None:
        row["annotated"] = counts.voxels > 0
    return row


def _gain(best, at_threshold):
    return None if best is None or at_threshold is None else best - at_threshold


def oracle_per_timepoint(per_t: dict) -> dict:
    """What a threshold chosen per time point on the evaluated data itself could buy.

    An upper bound (an oracle: it looks at the truth it is scored against), not a rule
    to use; whether a rule chosen on validation data gets any of it is measured in
    ``benchmarks/bench_tta.py``.

    Parameters
    ----------
    per_t : dict
        Time point -> :class:`~volseg.ops.metrics.ConfusionHistogram` (with histograms), the
        counts at the operating threshold.

    Returns
    -------
    dict
        ``timepoints`` (with structure, the ones averaged), ``mean_dice`` (at the
        operating threshold), ``mean_best_dice`` (each at its own best threshold),
        ``mean_gain`` and ``max_gain`` (with its ``max_gain_t``), ``pooled_dice``
        (every voxel, each time point masked at its own best threshold; a time point
        without structure keeps the operating threshold's counts) and ``pooled_gain``
        over the operating threshold's Dice of every voxel. Ratios are None where
        undefined.
    """
    gains, dice, best = [], [], []
    tp = fp = fn = 0
    for t in sorted(per_t):
        counts = per_t[t]
        found = best_level(counts.histogram)
        if found is None:  # no structure: no best threshold
            tp, fp, fn = tp + counts.tp, fp + counts.fp, fn + counts.fn
            continue
        at = counts.at_threshold(level_threshold(found[0]))
        tp, fp, fn = tp + at.tp, fp + at.fp, fn + at.fn
        d = metrics(counts)["dice"]
        dice.append(0.0 if d is None else d)
        best.append(found[1])
        gains.append((found[1] - dice[-1], int(t)))
    total = sum(per_t.values(), 0)
    operating = None if not per_t else metrics(total)["dice"]
    pooled = None if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    top = max(gains) if gains else (None, None)
    return {"timepoints": len(gains),
            "mean_dice": float(np.mean(dice)) if dice else None,
            "mean_best_dice": float(np.mean(best)) if best else None,
            "mean_gain": float(np.mean([g for g, _ in gains])) if gains else None,
            "max_gain": top[0], "max_gain_t": top[1],
            "pooled_dice": pooled, "pooled_gain": _gain(pooled, operating)}


def _shape(shape) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def per_timepoint_rows(report: dict, key: str = "per_timepoint") -> tuple[list[str], list[list]]:
    """Header and rows for a CSV of the per-time-point (or ``per_z``) metrics."""
    rows = report.get(key) or []
    if not rows:
        return [], []
    header = list(rows[0].keys())
    return header, [[r.get(h) for h in header] for r in rows]


def write_json(report: dict, path) -> None:
    """The report as JSON, written whole or not at all."""
    import json

    write_text_atomic(path, json.dumps(report, indent=2, allow_nan=False) + "\n")


def write_csv(report: dict, path, key: str = "per_timepoint") -> None:
    """The per-time-point (or ``per_z``) metrics as CSV, written whole or not at all."""
    import csv
    import io

    header, rows = per_timepoint_rows(report, key)
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    write_text_atomic(path, text.getvalue())

