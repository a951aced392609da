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
import threading

import numpy as np

#: Number of uint8 levels (histogram bins); level k means probability k / (LEVELS - 1).
LEVELS = 256
_TOP = LEVELS - 1

# Below this many voxels the plain uint8 bincount is cheaper than the uint16-pair trick
# (which allocates and folds a 65536-bin table).
_PAIR_TRICK_MIN = 1 << 18
# Voxels per piece of the pair histogram: its widened copy (4 bytes a voxel) is reused.
_PIECE = 1 << 21
_SCRATCH = threading.local()


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

def scratch(name: str, n: int, dtype) -> np.ndarray:
    """A reusable per-thread work buffer of at least ``n`` elements.

    Dask workers run with ``MALLOC_TRIM_THRESHOLD_`` set, which makes glibc hand every
    large temporary back to the kernel and fault it in again (zeroed) on the next
    block; reusing buffers keeps counting free of those page faults.
    """
    buf = getattr(_SCRATCH, name, None)
    if buf is None or buf.size < n:
        buf = np.empty(max(n, 1), dtype)
        setattr(_SCRATCH, name, buf)
    return buf[:n]


def histogram_uint8(values: np.ndarray) -> np.ndarray:
    """Counts of each value 0..255 of a uint8 array, as int64 of length 256.

    Counting adjacent pairs of bytes as uint16 halves the work of ``np.bincount``
    (which widens every element to intp first): about 1.1 G voxels/s against 0.6 on
    one core here; the 256 x 256 pair table is folded back into 256 bins. Pairs are
    widened into a reused buffer, piece by piece, so memory stays bounded.
    """
    flat = np.ravel(values)
    if flat.dtype != np.uint8:
        raise TypeError(f"histogram_uint8 needs uint8, got {flat.dtype}")
    n = flat.size
    if n < _PAIR_TRICK_MIN or not flat.flags.c_contiguous:
        return np.bincount(flat, minlength=LEVELS).astype(np.int64, copy=False)
    even = n - (n & 1)
    pairs16 = flat[:even].view(np.uint16)
    table = np.zeros(LEVELS * LEVELS, np.int64)
    for start in range(0, pairs16.size, _PIECE // 2):
        piece = pairs16[start:start + _PIECE // 2]
        wide = scratch("intp", piece.size, np.intp)
        np.copyto(wide, piece, casting="safe")
        table += np.bincount(wide, minlength=LEVELS * LEVELS)
    table = table.reshape(LEVELS, LEVELS)
    hist = table.sum(axis=0) + table.sum(axis=1)
    if n & 1:
        hist[flat[-1]] += 1
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

    Notes
    -----
    Foreground is sparse (a few % of voxels), so only foreground voxels are gathered
    for row 1; row 0 is "all minus foreground": one histogram pass over all voxels.
    """
    levels = np.asarray(levels)
    truth = np.asarray(truth)
    if truth.dtype != bool:
        truth = truth != 0
    if levels.shape != truth.shape:
        raise ValueError(f"levels {levels.shape} and truth {truth.shape} differ in shape")
    flat = np.ravel(levels)
    every = histogram_uint8(flat)
    fg = np.bincount(np.compress(np.ravel(truth), flat),
                     minlength=LEVELS).astype(np.int64, copy=False)
    return np.stack([every - fg, fg])


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
