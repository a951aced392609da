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


# ----------------------------------------------------------------- partial annotation

def _mixture(n_fg: int, n_bg: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Levels of a model that separates the classes imperfectly, and the labels."""
    fg = np.clip(rng.normal(170, 40, n_fg), 0, 255)
    bg = np.clip(rng.normal(70, 40, n_bg), 0, 255)
    levels = np.concatenate([fg, bg]).round().astype(np.uint8)
    labels = np.concatenate([np.ones(n_fg, bool), np.zeros(n_bg, bool)])
    return levels, labels


def test_structure_share_is_recovered_from_balanced_annotations():
    from volseg.ops.thresholds import histogram_uint8, structure_share

    rng = np.random.default_rng(0)
    levels, labels = _mixture(5_000, 95_000, rng)  # the frames: 5 % structure
    # annotated: 2000 pixels of each class, as scribbles give (balanced, not the frames' 5 %)
    pick = np.concatenate([rng.choice(np.flatnonzero(labels), 2000, replace=False),
                           rng.choice(np.flatnonzero(~labels), 2000, replace=False)])
    share = structure_share(class_histograms(levels[pick], labels[pick]),
                            histogram_uint8(levels))
    assert abs(share - 0.05) < 0.01
    for one_class in (labels, ~labels):  # one class annotated: no estimate
        assert structure_share(class_histograms(levels[one_class], labels[one_class]),
                               histogram_uint8(levels)) is None
    # background annotated in places the model finds harder than the frame's rest: the
    # estimate comes out 0 or below, which is no estimate
    hard = np.flatnonzero(~labels & (levels > 120))[:2000]
    few = np.concatenate([pick[:2000], hard])
    assert structure_share(class_histograms(levels[few], labels[few]),
                           histogram_uint8(levels)) is None


def test_validation_histogram_keeps_complete_frames_and_rescales_scribbled_ones():
    from volseg.ops.thresholds import ValidationHistogram

    rng = np.random.default_rng(1)
    levels, labels = _mixture(4_000, 96_000, rng)
    complete = ValidationHistogram()
    complete.add(levels, labels, annotated=np.ones(levels.shape, bool))
    complete.add(levels, labels, annotated=labels | (levels > 100), counted=None)
    expected = class_histograms(levels, labels) + class_histograms(
        levels[labels | (levels > 100)], labels[labels | (levels > 100)])
    np.testing.assert_array_equal(complete.histogram(), expected)  # as before: no estimate
    assert complete.share is None

    annotated = np.zeros(levels.shape, bool)  # scribbles: 1500 pixels of each class
    annotated[rng.choice(np.flatnonzero(labels), 1500, replace=False)] = True
    annotated[rng.choice(np.flatnonzero(~labels), 1500, replace=False)] = True
    scribbled = ValidationHistogram()
    scribbled.add(levels, labels, annotated=annotated, counted=np.ones(levels.shape, bool))
    naive = class_histograms(levels[annotated], labels[annotated])
    truth_level, truth_dice = best_level(class_histograms(levels, labels))
    naive_level = best_level(naive)[0]
    level = best_level(scribbled.histogram())[0]
    dice = lambda k: dice_at(class_histograms(levels, labels), k / 255)  # noqa: E731
    # balanced scribbles pick a threshold far too low for a 4 % structure share ...
    assert naive_level < truth_level - 20 and dice(naive_level) < truth_dice - 0.05
    # ... rescaled to the estimated share, nearly the threshold of the full labels
    assert abs(level - truth_level) <= 8 and dice(level) > truth_dice - 0.01
    assert abs(scribbled.share - 0.04) < 0.01
    assert abs(scribbled.histogram().sum() - levels.size) <= 2 * 256  # rounded per level
