"""volseg.metrics against scikit-learn and brute force, on small random arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from volseg.ops.thresholds import histogram_uint8

from volseg.ops.metrics import (
    ConfusionHistogram,
    check_binary,
    count_block,
    curve_metrics,
    metrics,
    quantise,
    threshold_bin,
)

RATIOS = ("accuracy", "sensitivity", "specificity", "precision", "dice", "iou", "mcc",
          "balanced_accuracy")


def random_case(seed, shape=(3, 40, 57), fg=0.08):
    """Truth with sparse foreground, uint8 probabilities correlated with it, mask at 0.5."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(shape) < fg).astype(np.uint8)
    prob = np.clip(rng.normal(70 + 110 * truth, 55), 0, 255).astype(np.uint8)
    mask = (prob >= 128).astype(np.uint8)
    return truth, prob, mask


def sklearn_reference(truth, pred, prob=None):
    y, p = truth.ravel(), pred.ravel()
    tn, fp, fn, tp = skm.confusion_matrix(y, p, labels=[0, 1]).ravel()
    ref = {
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "accuracy": skm.accuracy_score(y, p),
        "sensitivity": skm.recall_score(y, p),
        "specificity": skm.recall_score(y, p, pos_label=0),
        "precision": skm.precision_score(y, p),
        "dice": skm.f1_score(y, p),
        "iou": skm.jaccard_score(y, p),
        "mcc": skm.matthews_corrcoef(y, p),
        "balanced_accuracy": skm.balanced_accuracy_score(y, p),
    }
    if prob is not None:
        ref["roc_auc"] = skm.roc_auc_score(y, prob.ravel())
        ref["pr_auc"] = skm.average_precision_score(y, prob.ravel())
    return ref


@pytest.mark.parametrize("seed", range(4))
def test_counts_and_ratios_match_sklearn(seed):
    truth, prob, mask = random_case(seed)
    got = metrics(count_block(truth, mask=mask, probability=prob))
    ref = sklearn_reference(truth, mask, prob)
    for k in ("tp", "fp", "tn", "fn"):
        assert got[k] == ref[k], k
    assert got["voxels"] == truth.size
    for k in RATIOS:
        assert got[k] == pytest.approx(ref[k], abs=1e-12), k
    # uint8 probabilities: the bins are the values, so the curves are exact
    assert got["roc_auc"] == pytest.approx(ref["roc_auc"], abs=1e-12)
    assert got["pr_auc"] == pytest.approx(ref["pr_auc"], abs=1e-12)


def test_float_probabilities_binned_close_to_sklearn():
    rng = np.random.default_rng(7)
    truth = (rng.random((2, 64, 64)) < 0.1).astype(np.uint8)
    prob = 1 / (1 + np.exp(-rng.normal(-1.5 + 3 * truth, 1.2))).astype(np.float32)
    mask = (prob >= 0.5).astype(np.uint8)
    got = metrics(count_block(truth, mask=mask, probability=prob))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(truth.ravel(), prob.ravel()), abs=1e-3)
    assert got["pr_auc"] == pytest.approx(
        skm.average_precision_score(truth.ravel(), prob.ravel()), abs=3e-3)
    c = count_block(truth, mask=mask, probability=prob)
    expected = np.bincount(np.rint(prob.ravel() * 255).astype(int), minlength=256)
    np.testing.assert_array_equal(c.histogram.sum(axis=0), expected)


def test_histogram_uint8_equals_bincount():
    rng = np.random.default_rng(1)
    for n in (0, 1, 1001, (1 << 18) + 1, (1 << 21) * 2 + 7):  # small, odd, several pieces
        a = rng.integers(0, 256, n, dtype=np.uint8)
        np.testing.assert_array_equal(histogram_uint8(a), np.bincount(a, minlength=256))
    a = rng.integers(0, 256, (600, 900), dtype=np.uint8)[:, ::3]  # not contiguous
    np.testing.assert_array_equal(histogram_uint8(a), np.bincount(a.ravel(), minlength=256))


def test_counts_add_up_over_blocks():
    truth, prob, mask = random_case(3, shape=(4, 30, 41))
    whole = count_block(truth, mask=mask, probability=prob, cldice=True)
    parts = [count_block(truth[i], mask=mask[i], probability=prob[i], cldice=True)
             for i in range(4)]
    assert sum(parts) == whole
    assert parts[0] + parts[1] + parts[2] + parts[3] == whole
    assert metrics(sum(parts)) == metrics(whole)


@pytest.mark.parametrize("fraction", [0.2, 0.8])  # sparse and dense ROI take two paths
def test_roi_restricts_counts_exactly(fraction):
    truth, prob, mask = random_case(5)
    roi = (np.random.default_rng(9).random(truth.shape) < fraction).astype(np.uint8)
    got = count_block(truth, mask=mask, probability=prob, roi=roi)
    inside = roi.astype(bool)
    ref = count_block(truth[inside], mask=mask[inside], probability=prob[inside])
    assert got == ref
    assert got.voxels == int(inside.sum())
    ref_sk = sklearn_reference(truth[inside], mask[inside], prob[inside])
    assert (got.tp, got.fp, got.tn, got.fn) == (ref_sk["tp"], ref_sk["fp"], ref_sk["tn"], ref_sk["fn"])


def test_zero_denominators_are_none():
    truth = np.zeros((5, 6), np.uint8)
    got = metrics(count_block(truth, mask=truth, probability=np.zeros_like(truth)))
    assert got["accuracy"] == 1.0 and got["specificity"] == 1.0
    for k in ("sensitivity", "precision", "dice", "iou", "mcc", "balanced_accuracy",
              "roc_auc", "pr_auc", "best_threshold"):
        assert got[k] is None, k
    # all structure, all predicted: specificity has no negatives
    ones = np.ones((5, 6), np.uint8)
    got = metrics(count_block(ones, mask=ones, probability=ones * 255))
    assert got["dice"] == 1.0 and got["specificity"] is None and got["roc_auc"] is None
    assert got["pr_auc"] == 1.0


def test_mask_only_has_no_curve_keys():
    truth, _, mask = random_case(0)
    got = metrics(count_block(truth, mask=mask))
    assert got["dice"] is not None
    assert got["roc_auc"] is None and got["pr_auc"] is None and got["best_threshold"] is None


def test_best_threshold_maximises_dice_brute_force():
    truth, prob, mask = random_case(2)
    got = metrics(count_block(truth, mask=mask, probability=prob))
    y = truth.ravel()
    dices = [skm.f1_score(y, (prob.ravel() >= k).astype(np.uint8), zero_division=0)
             for k in range(256)]
    assert got["best_dice"] == pytest.approx(max(dices), abs=1e-12)
    k = threshold_bin(got["best_threshold"])
    assert dices[k] == pytest.approx(max(dices), abs=1e-12)
    assert got["best_threshold"] == k / 255


def test_other_threshold_from_histogram_equals_thresholding_the_array():
    truth, prob, _ = random_case(4)
    c = count_block(truth, mask=(prob >= 128), probability=prob)
    for thr in (0.0, 0.2, 100 / 255, 0.5, 0.9, 1.0):
        direct = count_block(truth, probability=prob, threshold=thr)
        ref = sklearn_reference(truth, prob >= thr * 255)
        assert (direct.tp, direct.fp, direct.tn, direct.fn) == \
               (ref["tp"], ref["fp"], ref["tn"], ref["fn"]), thr
        via_hist = c.at_threshold(thr)
        assert (via_hist.tp, via_hist.fp, via_hist.tn, via_hist.fn) == \
               (direct.tp, direct.fp, direct.tn, direct.fn), thr


def test_threshold_bin_round_trips_reported_thresholds():
    assert [threshold_bin(k / 255) for k in range(256)] == list(range(256))
    assert threshold_bin(0.5) == 128 and threshold_bin(1.0) == 255


def test_quantise():
    np.testing.assert_array_equal(quantise(np.array([0.0, 0.5, 1.0, 0.002], np.float32)),
                                  [0, 128, 255, 1])
    u8 = np.arange(256, dtype=np.uint8)
    assert quantise(u8) is u8
    np.testing.assert_array_equal(quantise(np.array([0, 500, 1000], np.uint16), scale=1000),
                                  [0, 128, 255])


def test_check_binary():
    check_binary(np.array([0, 1, 1], np.uint8))
    check_binary(np.array([True, False]))
    with pytest.raises(ValueError, match="not binary.*255"):
        check_binary(np.array([0, 1, 255], np.uint8))
    with pytest.raises(ValueError, match="not binary"):
        check_binary(np.array([0, -1], np.int16))
    with pytest.raises(ValueError, match="not binary"):
        count_block(np.array([0, 2], np.uint8), mask=np.array([0, 1], np.uint8))


def _reference_cldice(pred, truth):
    """clDice of one frame straight from the definition (Shit et al., CVPR 2021)."""
    from skimage.morphology import skeletonize

    sp, st = skeletonize(pred), skeletonize(truth)
    tprec = (sp & truth).sum() / sp.sum()
    tsens = (st & pred).sum() / st.sum()
    return 2 * tprec * tsens / (tprec + tsens)


def test_cldice_single_frame_and_summed_frames():
    truth = np.zeros((2, 40, 60), bool)
    truth[0, 18:23, 5:55] = True  # a horizontal tube
    truth[1, 5:35, 28:33] = True  # a vertical tube
    pred = np.zeros_like(truth)
    pred[0, 19:24, 5:40] = True  # shifted and too short
    pred[1, 5:35, 27:32] = True
    got = metrics(count_block(truth, mask=pred, cldice=True))
    assert got["cldice"] == pytest.approx(
        _reference_cldice(np.concatenate(pred, 1), np.concatenate(truth, 1)), rel=0.05)
    one = metrics(count_block(truth[0], mask=pred[0], cldice=True))
    assert one["cldice"] == pytest.approx(_reference_cldice(pred[0], truth[0]), abs=1e-12)
    perfect = metrics(count_block(truth, mask=truth, cldice=True))
    assert perfect["cldice"] == 1.0
    empty = metrics(count_block(np.zeros((8, 8), bool), mask=np.zeros((8, 8), bool), cldice=True))
    assert empty["cldice"] is None


def test_mcc_large_counts_no_overflow():
    big = 10**12
    c = ConfusionHistogram(tp=big, fp=3 * big, tn=500 * big, fn=2 * big)
    y = metrics(c)["mcc"]
    tp, fp, tn, fn = 1, 3, 500, 2  # MCC is scale free
    ref = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert y == pytest.approx(ref, abs=1e-12)


def test_curve_metrics_from_histogram_only():
    hist = np.zeros((2, 256), np.int64)
    hist[0, 10] = 90  # background at 10/255
    hist[1, 200] = 10  # structure at 200/255: perfectly separated
    got = curve_metrics(hist)
    assert got["roc_auc"] == 1.0 and got["pr_auc"] == 1.0 and got["best_dice"] == 1.0
    # Levels 11..200 all separate perfectly: the tie rule takes the one nearest 0.5.
    assert threshold_bin(got["best_threshold"]) == 128
