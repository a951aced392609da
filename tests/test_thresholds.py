"""volseg.thresholds: class histograms, Dice by level and the one tie rule."""

from __future__ import annotations

import numpy as np
import pytest

from volseg.ops.metrics import ConfusionHistogram, count_block, metrics
from volseg.ops.thresholds import (best_level, best_threshold, class_histograms, dice_at,
                               dice_curve, level_threshold, quantise, threshold_bin)


def brute_dice(levels, truth, k):
    pred = levels >= k
    den = pred.sum() + truth.sum()
    return 2 * np.sum(pred & truth) / den if den else np.nan


def test_class_histograms_count_each_class():
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, (7, 300_001), dtype=np.uint8)  # large: the pair trick
    truth = rng.random(levels.shape) < 0.05
    hist = class_histograms(levels, truth)
    np.testing.assert_array_equal(hist[1], np.bincount(levels[truth], minlength=256))
    np.testing.assert_array_equal(hist[0], np.bincount(levels[~truth], minlength=256))
    # 0/1 integers mean the same as bools; pieces add up to the whole
    np.testing.assert_array_equal(class_histograms(levels, truth.astype(np.uint8)), hist)
    halves = class_histograms(levels[:3], truth[:3]) + class_histograms(levels[3:], truth[3:])
    np.testing.assert_array_equal(halves, hist)
    with pytest.raises(ValueError, match="shape"):
        class_histograms(levels, truth[:2])


def test_dice_curve_and_best_level_match_brute_force():
    rng = np.random.default_rng(1)
    prob = rng.random(20_000).astype(np.float32)
    truth = rng.random(prob.size) < prob ** 3
    levels = quantise(prob)
    hist = class_histograms(levels, truth)
    thresholds, dice = dice_curve(hist)
    brute = np.array([brute_dice(levels, truth, k) for k in range(256)])
    np.testing.assert_allclose(dice, brute, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(thresholds, np.arange(256) / 255)
    level, best = best_level(hist)
    assert best == pytest.approx(brute.max(), abs=1e-12) and brute[level] == best
    assert dice_at(hist, 0.5) == pytest.approx(brute[128], abs=1e-12)
    assert dice_at(hist, 1.01) == 0.0  # nothing predicted, foreground missed
    # the reported threshold selects exactly the chosen level
    thr, _ = best_threshold(hist)
    assert thr == level_threshold(level) and threshold_bin(thr) == level


@pytest.mark.parametrize("gap, expected", [((11, 200), 128), ((11, 100), 100),
                                           ((150, 240), 150), ((128, 128), 128)])
def test_ties_go_to_the_level_nearest_one_half(gap, expected):
    # Background at level gap[0] - 1, foreground at gap[1]: levels gap[0]..gap[1] all
    # give Dice 1 (the same mask on this data).
    hist = np.zeros((2, 256), np.int64)
    hist[0, gap[0] - 1] = 90
    hist[1, gap[1]] = 10
    level, dice = best_level(hist)
    assert dice == 1.0 and level == expected


def test_ties_between_127_and_128_go_to_128():
    hist = np.zeros((2, 256), np.int64)
    hist[0, 126] = 5
    hist[1, 200] = 5  # levels 127..200 tie; 127 and 128 are equally near 0.5
    assert best_level(hist)[0] == 128 == threshold_bin(0.5)


def test_no_foreground_has_no_best_level():
    hist = np.zeros((2, 256), np.int64)
    hist[0, 30] = 100
    assert best_level(hist) is None and best_threshold(hist) is None
    assert np.isnan(dice_curve(hist)[1][31:]).all() and (dice_curve(hist)[1][:31] == 0).all()


def test_exact_comparison_of_huge_counts():
    # Counts beyond 2**53: float Dice would merge these two levels; integers do not.
    big = 2 ** 60
    hist = np.zeros((2, 256), np.int64)
    hist[1, 200] = big
    hist[0, 150] = 1  # level 150 adds one false positive to level 151's perfect mask
    level, dice = best_level(hist)
    assert dice == 1.0 and 151 <= level <= 200 and level == 151


def test_metrics_report_uses_the_same_rule():
    truth = np.array([0, 0, 1, 1], np.uint8)
    prob = np.array([10, 20, 200, 220], np.uint8)
    report = metrics(count_block(truth, mask=prob >= 128, probability=prob))
    assert report["best_threshold"] == 128 / 255 and report["best_dice"] == 1.0
    assert metrics(ConfusionHistogram(1, 0, 3, 0))["best_threshold"] is None
