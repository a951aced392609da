"""Exact segmentation metrics from integer counts that add up across blocks.

Evaluation streams over blocks of a dataset far larger than memory, so every metric
here is computed from counts that can be summed block by block:

- the confusion matrix (tp, fp, tn, fn) at the operating threshold, counted from the
  binary mask that ``predict`` wrote;
- per class (truth 0 / truth 1) a histogram of the probability over the 256 uint8
  levels (:mod:`volseg.ops.thresholds`, which also holds the best-threshold rule). With
  uint8 probabilities (0..255) each value is its own bin, so ROC AUC, average precision
  and the best threshold computed from the histograms are exact; float probabilities
  are quantised to ``round(p * 255)`` first;
- optionally four skeleton counts for clDice, computed per 2D frame.

:class:`ConfusionHistogram` holds those counts and adds with ``+`` (and ``sum``);
:func:`count_block` counts one block of arrays; :func:`metrics` turns counts into the
report's ratios. Everything here is pure numpy on in-memory arrays: no stores, no Dask.
"""

from __future__ import annotations

import math

import numpy as np

from volseg.ops.annotation import inside_roi
from volseg.ops.thresholds import (LEVELS, best_level, class_histograms, default_scale,
                                   level_threshold, quantise, threshold_bin)

__all__ = ["ConfusionHistogram", "check_binary", "confusion_metrics", "count_block", "curve",
           "curve_metrics", "cldice_metrics", "default_scale", "metrics", "quantise",
           "threshold_bin"]

N_BINS = LEVELS

#: Keys of a metrics dict whose values are ratios (None when the denominator is 0).
RATIO_KEYS = ("accuracy", "sensitivity", "specificity", "precision", "dice", "iou",
              "mcc", "balanced_accuracy", "roc_auc", "pr_auc", "best_threshold",
              "best_dice")
COUNT_KEYS = ("tp", "fp", "tn", "fn", "voxels")
CLDICE_KEYS = ("cldice", "cl_precision", "cl_sensitivity")

class ConfusionHistogram:
    """Integer counts of one block (or, summed, of a whole dataset).

    Parameters
    ----------
    tp, fp, tn, fn : int
        Confusion counts at the operating threshold.
    histogram : ndarray of int64, shape (2, 256), optional
        ``histogram[c, k]``: number of voxels of truth class ``c`` whose quantised
        probability is ``k`` (i.e. ``k / 255``). None for a mask-only prediction.
    skeleton : ndarray of int64, shape (4,), optional
        clDice sums ``|S_pred & truth|, |S_pred|, |S_truth & pred|, |S_truth|``.
        None when clDice was not computed.

    Notes
    -----
    Counts add exactly (``a + b``, ``sum(blocks)``), so the result of a streamed
    evaluation does not depend on how the data was split into blocks.
    """

    __slots__ = ("tp", "fp", "tn", "fn", "histogram", "skeleton")

    def __init__(self, tp=0, fp=0, tn=0, fn=0, histogram=None, skeleton=None):
        self.tp, self.fp, self.tn, self.fn = int(tp), int(fp), int(tn), int(fn)
        self.histogram = None if histogram is None else np.asarray(histogram, np.int64)
        self.skeleton = None if skeleton is None else np.asarray(skeleton, np.int64)

    @property
    def voxels(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def __add__(self, other):
        if isinstance(other, int) and other == 0:  # lets sum() start from 0
            return self
        if not isinstance(other, ConfusionHistogram):
            return NotImplemented
        return ConfusionHistogram(
            self.tp + other.tp, self.fp + other.fp, self.tn + other.tn, self.fn + other.fn,
            histogram=_add_optional(self.histogram, other.histogram, "histogram"),
            skeleton=_add_optional(self.skeleton, other.skeleton, "skeleton"),
        )

    __radd__ = __add__

    def __sub__(self, other):
        # Used to count the inside of a dense ROI as "whole block minus outside".
        neg = ConfusionHistogram(
            -other.tp, -other.fp, -other.tn, -other.fn,
            histogram=None if other.histogram is None else -other.histogram,
            skeleton=None if other.skeleton is None else -other.skeleton,
        )
        return self + neg

    def __eq__(self, other):
        if not isinstance(other, ConfusionHistogram):
            return NotImplemented
        return (
            (self.tp, self.fp, self.tn, self.fn) == (other.tp, other.fp, other.tn, other.fn)
            and _equal_optional(self.histogram, other.histogram)
            and _equal_optional(self.skeleton, other.skeleton)
        )

    def __repr__(self):
        extra = "" if self.histogram is None else ", histogram=..."
        extra += "" if self.skeleton is None else f", skeleton={self.skeleton.tolist()}"
        return (f"ConfusionHistogram(tp={self.tp}, fp={self.fp}, tn={self.tn}, "
                f"fn={self.fn}{extra})")

    def __reduce__(self):  # small and explicit pickles for Dask
        return (ConfusionHistogram,
                (self.tp, self.fp, self.tn, self.fn, self.histogram, self.skeleton))

    def at_threshold(self, threshold: float) -> "ConfusionHistogram":
        """The confusion counts predicting ``probability >= threshold``, from the histogram.

        Exact for uint8 probabilities (the bins are the values); for quantised float
        probabilities, exact up to the 1/255 binning.
        """
        if self.histogram is None:
            raise ValueError("no probability histogram: a mask-only prediction "
                             "cannot be re-thresholded")
        k = threshold_bin(threshold)
        neg, pos = (int(v) for v in self.histogram[:, k:].sum(axis=1))
        n_neg, n_pos = (int(v) for v in self.histogram.sum(axis=1))
        return ConfusionHistogram(tp=pos, fp=neg, tn=n_neg - neg, fn=n_pos - pos,
                                  histogram=self.histogram, skeleton=None)


def _add_optional(a, b, what):
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise ValueError(f"cannot add counts with and without a {what}")
    return a + b


def _equal_optional(a, b):
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))


def check_binary(truth: np.ndarray, *, name: str = "truth") -> None:
    """Raise ValueError unless every value of ``truth`` is 0 or 1."""
    if truth.size == 0 or truth.dtype == bool:
        return
    hi = truth.max()
    lo = truth.min() if truth.dtype.kind in "if" else 0
    if hi > 1 or lo < 0 or (truth.dtype.kind == "f" and not np.all((truth == 0) | (truth == 1))):
        values = np.unique(truth)
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise ValueError(f"{name} is not binary: values {shown}")


def _as_bool(a: np.ndarray) -> np.ndarray:
    # A uint8 0/1 array reinterpreted as bool costs nothing; other dtypes are compared.
    a = np.ascontiguousarray(a)
    if a.dtype == bool:
        return a
    if a.dtype == np.uint8 and a.size and a.max() <= 1:
        return a.view(bool)
    return a != 0


def count_block(truth, *, mask=None, probability=None, roi=None, threshold=None,
                scale=None, cldice=False, check=True) -> ConfusionHistogram:
    """Count one block: confusion at the operating threshold and probability histograms.

    Parameters
    ----------
    truth : ndarray
        Ground truth, values 0/1 (any integer or bool dtype).
    mask : ndarray, optional
        The binary prediction as ``predict`` wrote it (nonzero = structure). The
        confusion counts come from it. Required unless ``threshold`` is given.
    probability : ndarray, optional
        Probabilities on the ``scale`` (uint8 0..255 by default, floats 0..1), same
        shape. Enables the histograms (ROC/PR curves, best threshold).
    roi : ndarray, optional
        Count only voxels where ``roi`` is nonzero.
    threshold : float, optional
        When given, the prediction is ``probability / scale >= threshold`` instead of
        ``mask`` (exact on the stored values, not from the binned histogram).
    scale : float, optional
        Stored value meaning probability 1.0 (default: 255 for uint8, 1.0 for floats).
    cldice : bool
        Also count clDice skeleton sums, per 2D frame over the last two axes.
    check : bool
        Raise ValueError if ``truth`` is not binary.

    Returns
    -------
    ConfusionHistogram
    """
    truth = np.asarray(truth)
    if check:
        check_binary(truth)
    shape = truth.shape
    if probability is not None:
        probability = np.asarray(probability)
        if scale is None:
            scale = default_scale(probability.dtype)
    if threshold is not None:
        if probability is None:
            raise ValueError("a threshold needs the probability array")
        if probability.dtype.kind in "ui":  # same rule as threshold_bin for uint8
            pred = probability >= math.ceil(threshold * float(scale) - 1e-9)
        else:
            pred = probability >= threshold * float(scale)
    elif mask is not None:
        pred = np.asarray(mask)
    else:
        raise ValueError("give the mask, or a probability and a threshold")
    for name, a in (("mask", pred), ("probability", probability), ("roi", roi)):
        if a is not None and np.shape(a) != shape:
            raise ValueError(f"{name} shape {np.shape(a)} differs from truth shape {shape}")

    t = _as_bool(truth)
    p = _as_bool(pred)
    q = None if probability is None else np.ascontiguousarray(quantise(probability, scale=scale))
    skeleton = _skeleton_counts(p, t, None if roi is None else inside_roi(roi)) \
        if cldice else None

    if roi is None:
        counts = _count_flat(t.ravel(), p.ravel(), None if q is None else q.ravel())
    else:
        inside = np.ascontiguousarray(inside_roi(roi)).ravel()
        n_in = int(np.count_nonzero(inside))
        if n_in == inside.size:
            counts = _count_flat(t.ravel(), p.ravel(), None if q is None else q.ravel())
        elif 2 * n_in <= inside.size:
            # Sparse ROI: gather the inside voxels and count them.
            counts = _count_flat(*_gather(inside, t, p, q))
        else:
            # Dense ROI: the outside is the smaller part; count whole minus outside.
            outside = ~inside
            counts = (_count_flat(t.ravel(), p.ravel(), None if q is None else q.ravel())
                      - _count_flat(*_gather(outside, t, p, q)))
    counts.skeleton = skeleton
    return counts


def _gather(where, t, p, q):
    return (np.compress(where, t.ravel()), np.compress(where, p.ravel()),
            None if q is None else np.compress(where, q.ravel()))


def _count_flat(t: np.ndarray, p: np.ndarray, q) -> ConfusionHistogram:
    """Count 1D bool truth ``t``, bool prediction ``p`` and uint8 levels ``q``: each
    array read once, by the compiled loops of :mod:`volseg.ops.kernels`."""
    from volseg.ops import kernels  # numba: imported on first count

    tp, n_true, n_pred = kernels.confusion_counts(np.ascontiguousarray(t).view(np.uint8),
                                                  np.ascontiguousarray(p).view(np.uint8))
    fp = n_pred - tp
    fn = n_true - tp
    tn = t.size - tp - fp - fn
    hist = None if q is None else class_histograms(q, t)
    return ConfusionHistogram(int(tp), int(fp), int(tn), int(fn), histogram=hist)


def _skeleton_counts(pred: np.ndarray, truth: np.ndarray, roi) -> np.ndarray:
    """clDice sums over the 2D frames (last two axes) of bool arrays."""
    from skimage.morphology import skeletonize

    if pred.ndim < 2:
        raise ValueError("clDice needs 2D frames")
    frames = pred.shape[-2:]
    pred2 = pred.reshape((-1,) + frames)
    truth2 = truth.reshape((-1,) + frames)
    roi2 = None if roi is None else roi.reshape((-1,) + frames)
    sums = np.zeros(4, np.int64)
    for i in range(pred2.shape[0]):
        tp_, tt_ = pred2[i], truth2[i]
        # Skeletonize the whole frame (a skeleton is not local), count inside the ROI.
        sp = skeletonize(tp_) if tp_.any() else np.zeros_like(tp_)
        st = skeletonize(tt_) if tt_.any() else np.zeros_like(tt_)
        if roi2 is not None:
            sp = sp & roi2[i]
            st = st & roi2[i]
        sums += (np.count_nonzero(sp & tt_), np.count_nonzero(sp),
                 np.count_nonzero(st & tp_), np.count_nonzero(st))
    return sums


# ---------------------------------------------------------------------------------
# From counts to metrics


def _ratio(num, den):
    return None if den == 0 else num / den  # int / int is correctly rounded


def confusion_metrics(tp: int, fp: int, tn: int, fn: int) -> dict:
    """Ratios of a confusion matrix; a ratio whose denominator is 0 is None."""
    tp, fp, tn, fn = int(tp), int(fp), int(tn), int(fn)
    n = tp + fp + tn + fn
    sens = _ratio(tp, tp + fn)
    spec = _ratio(tn, tn + fp)
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)  # exact Python int
    mcc = None if den == 0 else (tp * tn - fp * fn) / math.sqrt(den)
    return {
        "tp": tp, "fp": fp, "tn": tn, "fn": fn, "voxels": n,
        "accuracy": _ratio(tp + tn, n),
        "sensitivity": sens,
        "specificity": spec,
        "precision": _ratio(tp, tp + fp),
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "mcc": mcc,
        "balanced_accuracy": None if sens is None or spec is None else (sens + spec) / 2,
    }


def curve(histogram: np.ndarray) -> dict:
    """ROC and precision-recall curves from the per-class histograms.

    Returns arrays over thresholds ``k / 255`` for k = 255 .. 0 (decreasing), with
    the counts ``tp``/``fp`` of predicting ``bin >= k``, and ``fpr``, ``tpr``
    (= recall), ``precision`` (nan where nothing is predicted) as floats.
    """
    neg = np.asarray(histogram[0], np.int64)[::-1]
    pos = np.asarray(histogram[1], np.int64)[::-1]
    tp = np.cumsum(pos)
    fp = np.cumsum(neg)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "thresholds": np.arange(N_BINS - 1, -1, -1) / (N_BINS - 1),
            "tp": tp, "fp": fp,
            "tpr": tp / n_pos if n_pos else np.full(N_BINS, np.nan),
            "fpr": fp / n_neg if n_neg else np.full(N_BINS, np.nan),
            "precision": tp / (tp + fp),
        }


def curve_metrics(histogram) -> dict:
    """ROC AUC, average precision and the Dice-maximising threshold from histograms.

    ROC AUC is the trapezoidal area under the ROC curve through every bin (ties
    within a bin give the diagonal step, as scikit-learn's ``roc_auc_score``);
    ``pr_auc`` is average precision, the step-wise sum
    ``sum_k (R_k - R_{k+1}) P_k`` of scikit-learn's ``average_precision_score``.
    Both are exact for uint8 probabilities. ``best_threshold`` and ``best_dice`` come
    from :func:`volseg.ops.thresholds.best_level` (its tie rule: nearest 0.5). None where
    a class is absent.
    """
    keys = ("roc_auc", "pr_auc", "best_threshold", "best_dice")
    out = dict.fromkeys(keys)
    if histogram is None:
        return out
    neg = [int(v) for v in histogram[0][::-1]]  # bins from 255 down to 0
    pos = [int(v) for v in histogram[1][::-1]]
    n_neg, n_pos = sum(neg), sum(pos)
    # ROC: integer trapezoids (Python ints: no overflow, one rounding at the end).
    tp = fp = 0
    area2 = 0  # twice the area times n_pos * n_neg
    ap = 0.0
    for i in range(N_BINS):
        tp_prev, fp_prev = tp, fp
        tp += pos[i]
        fp += neg[i]
        area2 += (fp - fp_prev) * (tp + tp_prev)
        if pos[i]:
            ap += pos[i] * (tp / (tp + fp))
    if n_pos and n_neg:
        out["roc_auc"] = area2 / (2 * n_pos * n_neg)
    if n_pos:
        out["pr_auc"] = ap / n_pos
        level, out["best_dice"] = best_level(histogram)
        out["best_threshold"] = level_threshold(level)
    return out


def cldice_metrics(skeleton) -> dict:
    """clDice = harmonic mean of topology precision and sensitivity, from the 4 sums."""
    if skeleton is None:
        return {}
    s_pred_in_truth, s_pred, s_truth_in_pred, s_truth = (int(v) for v in skeleton)
    tprec = _ratio(s_pred_in_truth, s_pred)
    tsens = _ratio(s_truth_in_pred, s_truth)
    cl = None
    if tprec is not None and tsens is not None and tprec + tsens > 0:
        cl = 2 * tprec * tsens / (tprec + tsens)
    elif tprec is not None and tsens is not None:
        cl = 0.0
    return {"cldice": cl, "cl_precision": tprec, "cl_sensitivity": tsens}


def metrics(counts: ConfusionHistogram) -> dict:
    """All report keys of one ConfusionHistogram (what ``evaluate --json`` writes)."""
    out = confusion_metrics(counts.tp, counts.fp, counts.tn, counts.fn)
    out.update(curve_metrics(counts.histogram))
    out.update(cldice_metrics(counts.skeleton))
    return out
