"""The compiled counting loops equal numpy's counts, on every length and level."""

import numpy as np
import pytest

from volseg.ops import kernels
from volseg.ops.metrics import count_block
from volseg.ops.thresholds import class_histograms, histogram_uint8


@pytest.mark.parametrize("n", [0, 1, 2, 3, 1001, 70_000])
def test_loops_equal_numpy(n):
    rng = np.random.default_rng(n)
    levels = rng.integers(0, 256, n, dtype=np.uint8)
    truth = rng.random(n) < 0.2
    pred = rng.random(n) < 0.3

    assert kernels.confusion_counts(truth.view(np.uint8), pred.view(np.uint8)) == (
        np.count_nonzero(truth & pred), np.count_nonzero(truth), np.count_nonzero(pred))

    hist = np.full((2, 256), 7, np.int64)  # the loops add to what is there
    kernels.add_class_histograms(levels, truth.view(np.uint8), hist)
    np.testing.assert_array_equal(hist[0] - 7, np.bincount(levels[~truth], minlength=256))
    np.testing.assert_array_equal(hist[1] - 7, np.bincount(levels[truth], minlength=256))

    one = np.zeros(256, np.int64)
    kernels.add_histogram(levels, one)
    np.testing.assert_array_equal(one, np.bincount(levels, minlength=256))


def test_runs_of_one_level_and_extremes():
    # Long runs of one level go through the alternating tables; 0 and 255 are the edges.
    levels = np.repeat(np.array([0, 255, 3], np.uint8), [5, 6, 7])
    truth = np.zeros(levels.size, bool)
    truth[5:11] = True
    hist = class_histograms(levels, truth)
    assert hist[0, 0] == 5 and hist[1, 255] == 6 and hist[0, 3] == 7
    assert hist.sum() == levels.size
    np.testing.assert_array_equal(histogram_uint8(levels), hist.sum(axis=0))


def test_callers_take_views_and_other_truth_dtypes():
    rng = np.random.default_rng(1)
    levels = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    truth = (rng.random((40, 30)) < 0.4).astype(np.uint16)
    view, tview = levels[::2, 1::3], truth[::2, 1::3]  # not contiguous
    expected = np.stack([np.bincount(view[tview == 0], minlength=256),
                         np.bincount(view[tview == 1], minlength=256)])
    np.testing.assert_array_equal(class_histograms(view, tview), expected)
    np.testing.assert_array_equal(histogram_uint8(view), np.bincount(view.ravel(), minlength=256))
    with pytest.raises(TypeError, match="uint8"):
        class_histograms(view.astype(np.int16), tview)

    counts = count_block(tview, mask=view >= 128, probability=view)
    t, p = tview != 0, view >= 128
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (
        np.sum(t & p), np.sum(~t & p), np.sum(t & ~p), np.sum(~t & ~p))
    np.testing.assert_array_equal(counts.histogram, expected)
