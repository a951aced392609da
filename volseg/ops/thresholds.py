"""Class histograms over the 256 uint8 levels, Dice by threshold, and the best threshold.

One vocabulary for every place that picks a threshold: training (the threshold stored
in the model), evaluation (``best_threshold`` of a report) and the synthetic data's
intensity baseline.

* A *level* is a uint8 value ``k`` in 0..255. ``volseg predict`` stores probabilities as
  uint8 (:func:`quantise`: ``round(p * 255)``) and writes the mask as
  ``probability_u8 >= threshold_bin(threshold)``, so a probability threshold acts only
  through the level it selects. The threshold reported for level ``k`` is ``k / 255``,
  and ``threshold_bin(k / 255) == k``: a stored threshold selects exactly the mask it
  was chosen for.
* A *class histogram* is an int64 array of shape (2, 256): row 0 counts background
  (truth 0), row 1 foreground (truth 1), per level. Histograms of pieces add up to the
  histogram of the whole, so they stream over blocks.
* Dice at level ``k`` is that of predicting ``level >= k``.

Tie rule (:func:`best_level`)
-----------------------------
Several levels share the best Dice only when no voxel of the data lies between them:
they select the same voxels of this data, and differ only on other data. Among them the
level whose threshold is nearest 0.5 wins (of 127 and 128, equally near, 128: the level
that threshold 0.5 itself selects). A model trained with cross-entropy is calibrated
around 0.5, so the data gives no reason to move the threshold further from 0.5 than the
tie requires; on a perfectly separated validation set with 0.5 inside the gap, that
keeps 0.5. One rule for every caller keeps a model's stored threshold, the report of
``volseg evaluate`` and the intensity baseline comparable.
"""

from __future__ import annotations

import math

import numpy as np

#: Number of uint8 levels (histogram bins); level k means probability k / (LEVELS - 1).
LEVELS = 256
_TOP = LEVELS - 1


# --------------------------------------------------------------------------- levels

def threshold_bin(threshold: float) -> int:
    """First level ``k`` (0..256) with ``k / 255 >= threshold``: the mask is ``level >= k``."""
    # A small tolerance so that a reported threshold k/255 (e.g. best_threshold)
    # selects level k again despite float rounding of (k / 255) * 255. count_block
    # thresholds integer probability arrays by the same rule, so counts from the
    # histogram equal counts from the array.
    return int(min(LEVELS, max(0, math.ceil(threshold * _TOP - 1e-9))))


def level_threshold(level: int) -> float:
    """The threshold reported for ``level``: ``level / 255`` (``threshold_bin`` inverts it)."""
    return int(level) / _TOP


def default_scale(dtype) -> float:
    """The value meaning probability 1.0 when a store does not say: 255 for uint8."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        return float(np.iinfo(dtype).max) if dtype.itemsize == 1 else 255.0
    return 1.0


def quantise(probability, *, scale=None) -> np.ndarray:
    """Probabilities as uint8 levels 0..255 (``round(p * 255)``), the histogram's index.

    ``scale`` is the stored value that means 1.0 (``volseg.probability_scale``);
    uint8 data on the 0..255 scale is returned as is (its levels are exact).
    """
    probability = np.asarray(probability)
    if scale is None:
        scale = default_scale(probability.dtype)
    if probability.dtype == np.uint8 and scale == _TOP:
        return probability
    factor = _TOP / float(scale)
    q = np.rint(probability.astype(np.float32, copy=False) * np.float32(factor))
    return np.clip(q, 0, _TOP, out=q).astype(np.uint8)


# --------------------------------------------------------------------------- counting

def _contiguous_u8(a: np.ndarray) -> np.ndarray:
    # The compiled loops take 1-D C-contiguous uint8 (bool is viewed as its 0/1 bytes).
    flat = np.ascontiguousarray(np.ravel(a))
    return flat.view(np.uint8) if flat.dtype == bool else flat


def histogram_uint8(values: np.ndarray) -> np.ndarray:
    """Counts of each value 0..255 of a uint8 array, as int64 of length 256."""
    from volseg.ops import kernels  # numba: imported on first count

    values = np.asarray(values)
    if values.dtype != np.uint8:
        raise TypeError(f"histogram_uint8 needs uint8, got {values.dtype}")
    hist = np.zeros(LEVELS, np.int64)
    kernels.add_histogram(_contiguous_u8(values), hist)
    return hist


def class_histograms(levels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Background and foreground counts per level: int64 of shape (2, 256).

    Parameters
    ----------
    levels : ndarray of uint8
        Quantised probabilities (or any uint8 values, e.g. image intensities).
    truth : ndarray of bool, same shape
        Foreground (True) or background. Callers check binariness where the data
        comes in (``metrics.check_binary``); integers 0/1 are read as ``!= 0``.
    """
    from volseg.ops import kernels  # numba: imported on first count

    levels = np.asarray(levels)
    truth = np.asarray(truth)
    if truth.dtype != bool:
        truth = truth != 0
    if levels.shape != truth.shape:
        raise ValueError(f"levels {levels.shape} and truth {truth.shape} differ in shape")
    if levels.dtype != np.uint8:
        raise TypeError(f"class_histograms needs uint8 levels, got {levels.dtype}")
    hist = np.zeros((2, LEVELS), np.int64)
    kernels.add_class_histograms(_contiguous_u8(levels), _contiguous_u8(truth), hist)
    return hist


# --------------------------------------------------------------------------- Dice

def _dice_fractions(histogram):
    """``(k, 2 tp, 2 tp + fp + fn)`` as exact Python ints for k = 255 down to 0."""
    hist = np.asarray(histogram, np.int64)
    if hist.shape != (2, LEVELS):
        raise ValueError(f"a class histogram has shape (2, {LEVELS}), not {hist.shape}")
    bg = [int(v) for v in hist[0]]
    fg = [int(v) for v in hist[1]]
    n_fg = sum(fg)
    tp = fp = 0
    for k in range(_TOP, -1, -1):
        tp += fg[k]
        fp += bg[k]
        yield k, 2 * tp, tp + fp + n_fg  # 2tp + fp + fn, with fn = n_fg - tp


def dice_curve(histogram) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds ``k / 255`` and the Dice of ``level >= k``, for k = 0..255.

    Dice is NaN where it is undefined (no foreground and nothing predicted).
    """
    dice = np.full(LEVELS, np.nan)
    for k, num, den in _dice_fractions(histogram):
        if den:
            dice[k] = num / den
    return np.arange(LEVELS) / _TOP, dice


def dice_at(histogram, threshold: float = 0.5) -> float:
    """Dice of ``level >= threshold_bin(threshold)``; NaN where undefined."""
    hist = np.asarray(histogram, np.int64)
    k = threshold_bin(threshold)
    tp, fp, n_fg = int(hist[1, k:].sum()), int(hist[0, k:].sum()), int(hist[1].sum())
    den = tp + fp + n_fg
    return 2 * tp / den if den else float("nan")


def _nearer_half(k: int, j: int) -> bool:
    """Whether level ``k``'s threshold is nearer 0.5 than level ``j``'s (tie: higher)."""
    dk, dj = abs(2 * k - _TOP), abs(2 * j - _TOP)  # 255 * 2 * |k/255 - 0.5|, exact
    return dk < dj or (dk == dj and k > j)


def best_level(histogram) -> tuple[int, float] | None:
    """The level with the highest Dice and that Dice; None without foreground.

    Dice values are compared exactly (integer cross-multiplication: no rounding can
    split or merge a tie). Among levels of equal best Dice, the one whose threshold is
    nearest 0.5 (see the module's tie rule). Without any foreground every level has
    Dice 0 or none, so there is no best threshold: None.
    """
    if int(np.asarray(histogram)[1].sum()) == 0:
        return None
    best = None  # (numerator, denominator, level); denominators are > 0 here
    for k, num, den in _dice_fractions(histogram):
        if best is None:
            best = (num, den, k)
            continue
        lhs, rhs = num * best[1], best[0] * den
        if lhs > rhs or (lhs == rhs and _nearer_half(k, best[2])):
            best = (num, den, k)
    return best[2], best[0] / best[1]


def best_threshold(histogram) -> tuple[float, float] | None:
    """:func:`best_level` as ``(threshold, dice)`` with threshold ``level / 255``."""
    found = best_level(histogram)
    return None if found is None else (level_threshold(found[0]), found[1])


# --------------------------------------------------------------------------- partial annotation

#: Levels whose true- and false-positive rates differ by less than this do not estimate
#: the structure share (their estimate divides by that difference: noise).
_MIN_SEPARATION = 0.25


def structure_share(histogram, population) -> float | None:
    """The structure share of frames of which only some pixels are annotated.

    A model's level histogram over every pixel of the frames (``population``) is a
    mixture of its level histograms on structure and on background, which the
    annotated pixels (``histogram``) sample. At each level k, the share predicted
    positive q_k = s tpr_k + (1 - s) fpr_k gives s = (q_k - fpr_k) / (tpr_k - fpr_k);
    the median over the levels where tpr_k - fpr_k >= 0.25 is the estimate ("adjusted
    classify and count" with Forman's median sweep, robust to the levels where the
    rates are noisy).

    Background is most of a frame, so q_k is mostly (1 - s) fpr_k, and a few hundred
    background pixels measure fpr_k too coarsely for a share of a few %: the estimate
    can come out 0 or below, and is then no estimate (None). (The bound s <= q_k /
    tpr_k, which needs no background, was tried as the fallback: scribbled structure
    lies on the tubes' middles, where the model is surest, so the bound came out low,
    0.030 for a share of 0.053, and its threshold did no better than none.)

    Parameters
    ----------
    histogram : (2, 256) int array
        Class histogram of the annotated pixels.
    population : (256,) int array
        Level histogram of every pixel of the same frames (annotated or not).

    Returns
    -------
    float or None
        The share in (0, 1]; None without both classes annotated, or no estimate.
    """
    hist = np.asarray(histogram, np.float64)
    population = np.asarray(population, np.float64)
    n_bg, n_fg, n_all = hist[0].sum(), hist[1].sum(), population.sum()
    if n_bg == 0 or n_fg == 0 or n_all == 0:
        return None
    above = lambda counts: np.cumsum(counts[::-1])[::-1]  # noqa: E731  count at level >= k
    tpr, fpr, q = above(hist[1]) / n_fg, above(hist[0]) / n_bg, above(population) / n_all
    usable = tpr - fpr >= _MIN_SEPARATION
    if not usable.any():
        return None
    share = float(np.median((q[usable] - fpr[usable]) / (tpr[usable] - fpr[usable])))
    return min(share, 1.0) if share > 0.0 else None


class ValidationHistogram:
    """Class histograms of validation frames, as if every pixel of each were annotated.

    A frame annotated wherever it is counted adds its class histogram as it is. A frame
    only partly annotated (scribbles) adds its annotated pixels' histogram rescaled to
    the frame: structure and background rows scaled to the estimated structure share
    (:func:`structure_share`) of all its counted pixels. Without that, scribbles, about
    as much structure as background, would choose the threshold for a 50 % structure
    share, far too low for frames that hold a few % (measured: more scribbled frames
    made the Dice worse). Partly annotated frames share one estimate: a frame's
    scribbles are too few for their own. (Taking the background row as the frame's level
    histogram less the structure row instead counts the tubes' edges, never scribbled,
    as background: the threshold came out too high, Dice 0.70 against 0.82 on the
    synthetic series.)
    """

    def __init__(self):
        self.complete = np.zeros((2, LEVELS), np.int64)
        self.partial = np.zeros((2, LEVELS), np.int64)
        self.population = np.zeros(LEVELS, np.int64)

    def add(self, levels: np.ndarray, labels: np.ndarray, *, annotated: np.ndarray,
            counted: np.ndarray | None = None) -> None:
        """Add one frame.

        Parameters
        ----------
        levels : uint8 array
            The frame's quantised probabilities.
        labels : array
            Its labels (structure where nonzero; read only where ``annotated``).
        annotated : bool array
            Where the labels are known (and counted).
        counted : bool array, optional
            Where the frame's pixels count, annotated or not (inside the ROI); None
            when that is where they are annotated (a complete truth).
        """
        labels = np.asarray(labels) != 0
        partly = counted is not None and bool((counted & ~annotated).any())
        target = self.partial if partly else self.complete
        target += class_histograms(levels[annotated], labels[annotated])
        if partly:
            self.population += histogram_uint8(np.ascontiguousarray(levels[counted]))

    @property
    def share(self) -> float | None:
        """The estimated structure share of the partly annotated frames (None: none, or
        no estimate)."""
        return structure_share(self.partial, self.population) if self.population.any() else None

    def note(self) -> str | None:
        """One line on how partly annotated frames chose the threshold (None: no such frames)."""
        if not self.population.any():
            return None
        share = self.share
        if share is None:
            return ("validation frames partly annotated, and their structure share could "
                    "not be estimated (annotate more background, or a whole frame): "
                    "threshold chosen on the annotated pixels as they are")
        return (f"validation frames partly annotated: threshold chosen for their estimated "
                f"structure share, {100 * share:.1f} % of pixels")

    def histogram(self) -> np.ndarray:
        """The (2, 256) int64 class histogram of every validation frame."""
        share = self.share
        if share is None:
            return self.complete + self.partial
        n_all = int(self.population.sum())
        rows = []
        for row, weight in ((self.partial[0], 1.0 - share), (self.partial[1], share)):
            rows.append(np.rint(row * (weight * n_all / row.sum())).astype(np.int64))
        return self.complete + np.stack(rows)
