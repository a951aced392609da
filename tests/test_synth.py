"""Tests of volseg.synth and ``volseg synth``: realism, determinism, files, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from volseg.errors import InputError
from volseg.data.synth import (best_intensity, frame_name, synthesize, synthesize_timepoint,
                          threshold_baseline, threshold_histograms, write_synth)
from volseg_cli.main import main

SMALL = dict(timepoints=2, depth=3, height=64, width=96)


def _dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def default_frames():
    """Time points 0 and 3 of the default-size series, seed 0 (about 0.7 s each)."""
    return {t: synthesize_timepoint(t, timepoints=4, seed=0) for t in (0, 3)}


# ------------------------------------------------------------------ arrays

def test_shape_dtype_binary_labels():
    images, labels = synthesize(**SMALL, seed=0)
    assert images.shape == labels.shape == (2, 3, 64, 96)
    assert images.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1}
    assert labels.any()
    assert images.std() > 5  # not a constant image


def test_deterministic_by_seed_and_different_across_seeds():
    a_img, a_lab = synthesize(**SMALL, seed=3)
    b_img, b_lab = synthesize(**SMALL, seed=3)
    c_img, c_lab = synthesize(**SMALL, seed=4)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_lab, c_lab)


def test_synthesize_is_timepoint_by_timepoint():
    images, labels = synthesize(**SMALL, seed=1)
    for t in range(SMALL["timepoints"]):
        img, lab = synthesize_timepoint(t, **SMALL, seed=1)
        np.testing.assert_array_equal(images[t], img)
        np.testing.assert_array_equal(labels[t], lab)


def test_default_size_foreground_fraction(default_frames):
    image, label = default_frames[0]
    assert image.shape == label.shape == (8, 523, 821)
    assert 0.01 <= label.mean() <= 0.05


def test_default_size_threshold_is_a_poor_segmentation(default_frames):
    image, label = default_frames[0]
    thr, dice = threshold_baseline(image, label)
    assert 0.2 < dice < 0.6
    # ... though the tubes are clearly brighter than the background on average.
    assert image[label == 1].mean() > 2 * image[label == 0].mean()


def test_blobs_are_bright_and_unlabelled(default_frames):
    image, label = default_frames[0]
    thr, _ = threshold_baseline(image, label)
    # Bright (above the best threshold), compact objects well away from any tube.
    bright = ndimage.binary_opening(image >= thr, structure=np.ones((1, 3, 3)))
    near_tube = ndimage.binary_dilation(label.astype(bool), structure=np.ones((1, 7, 7)))
    far = bright & ~near_tube
    comps, n = ndimage.label(far)
    sizes = np.bincount(comps.ravel())[1:]
    assert np.count_nonzero(sizes >= 20) >= 30  # dozens of blob cross-sections per stack
    assert far.sum() > 0.2 * bright.sum()


def test_tubes_run_through_several_slices(default_frames):
    _, label = default_frames[0]
    per_slice = label.reshape(label.shape[0], -1).sum(axis=1)
    assert np.count_nonzero(per_slice) >= 6  # structure in most slices
    # A tube seen in one slice is often seen in the next one at the same place.
    assert _dice(label[:-1], label[1:]) > 0.4


def test_network_changes_slowly_over_time(default_frames):
    _, lab0 = default_frames[0]
    _, lab3 = default_frames[3]
    assert not np.array_equal(lab0, lab3)
    assert 0.5 < _dice(lab0, lab3) < 0.98  # mostly the same network ...
    assert lab3.sum() > lab0.sum()  # ... that has grown


def test_consecutive_timepoints_overlap_more_than_distant_ones():
    size = dict(timepoints=5, depth=4, height=200, width=260)
    labels = [synthesize_timepoint(t, **size, seed=2)[1] for t in (0, 1, 4)]
    assert _dice(labels[0], labels[1]) > _dice(labels[0], labels[2])


@pytest.mark.parametrize("kwargs, name", [
    (dict(height=0), "height"), (dict(width=-3), "width"), (dict(depth=1.5), "depth"),
    (dict(timepoints=0), "timepoints"), (dict(seed=-1), "seed"), (dict(seed="1"), "seed"),
])
def test_bad_parameters_name_the_option(kwargs, name):
    with pytest.raises(InputError, match=name):
        synthesize(**{**SMALL, **kwargs})


def test_bad_timepoint_index():
    with pytest.raises(InputError, match="t:"):
        synthesize_timepoint(2, **SMALL)


# ------------------------------------------------------------------ threshold baseline

def test_threshold_baseline_matches_brute_force():
    rng = np.random.default_rng(0)
    labels = (rng.random((3, 40, 50)) < 0.1).astype(np.uint8)
    images = np.clip(rng.normal(60, 25, labels.shape) + 50 * labels, 0, 255).astype(np.uint8)
    dices = [_dice(images >= thr, labels) for thr in range(256)]
    thr, dice = threshold_baseline(images, labels)
    assert dice == pytest.approx(max(dices), abs=1e-12)
    # The one tie rule (volseg.thresholds): of the levels with the best Dice, the
    # nearest to the middle of the range.
    tied = [k for k in range(256) if dices[k] >= max(dices) - 1e-12]
    assert thr == min(tied, key=lambda k: (abs(2 * k - 255), -k))


def test_threshold_baseline_perfect_and_histograms_add_up():
    images = np.array([[10, 200], [30, 220]], np.uint8)
    labels = np.array([[0, 1], [0, 1]], np.uint8)
    thr, dice = threshold_baseline(images, labels)
    # Every level in 31..200 separates perfectly; the tie rule takes the middle one.
    assert thr == 128 and dice == 1.0
    h = threshold_histograms(images, labels)
    assert h.shape == (2, 256) and h.sum() == 4 and h[1, 200] == 1 and h[0, 10] == 1
    # Histograms of pieces add up to the histogram of the whole.
    both = (threshold_histograms(images[:1], labels[:1])
            + threshold_histograms(images[1:], labels[1:]))
    np.testing.assert_array_equal(both, h)
    assert best_intensity(both) == (thr, dice)


def test_threshold_baseline_rejects_bad_input():
    img = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        threshold_baseline(img, np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="labels is not binary"):
        threshold_baseline(img, np.full((4, 4), 255, np.uint8))
    thr, dice = threshold_baseline(img, np.zeros((4, 4), np.uint8))
    assert thr is None and np.isnan(dice)


# ------------------------------------------------------------------ files

def test_frame_names():
    assert frame_name(0, 3, timepoints=4, depth=8) == "t000_z003.tif"
    assert frame_name(12, 999, timepoints=20, depth=1000) == "t012_z999.tif"
    assert frame_name(7, 5, timepoints=1001, depth=8) == "t0007_z005.tif"


def test_write_synth_round_trip(tmp_path):
    calls = []
    summary = write_synth(tmp_path / "out", **SMALL, seed=5,
                          progress=lambda done, total: calls.append((done, total)))
    images, labels = synthesize(**SMALL, seed=5)
    img_files = sorted((tmp_path / "out" / "images").iterdir())
    lab_files = sorted((tmp_path / "out" / "labels").iterdir())
    expected = [f"t{t:03d}_z{z:03d}.tif" for t in range(2) for z in range(3)]
    assert [p.name for p in img_files] == expected
    assert [p.name for p in lab_files] == expected
    for p in img_files:
        t, z = int(p.name[1:4]), int(p.name[6:9])
        np.testing.assert_array_equal(tifffile.imread(p), images[t, z])
        lab = tifffile.imread(tmp_path / "out" / "labels" / p.name)
        assert lab.dtype == np.uint8
        np.testing.assert_array_equal(lab, labels[t, z])
    with tifffile.TiffFile(img_files[0]) as tif:
        assert tif.pages[0].compression.name in ("ADOBE_DEFLATE", "DEFLATE")
    assert calls[-1] == (6, 6) and len(calls) == 6
    assert summary["frames"] == 6 and summary["files"] == 12
    assert summary["shape"] == [2, 3, 64, 96]
    assert summary["foreground_voxels"] == int(labels.sum())
    assert summary["foreground_fraction"] == pytest.approx(labels.mean())
    assert (summary["threshold"], summary["threshold_dice"]) == threshold_baseline(images, labels)
    assert json.loads((tmp_path / "out" / "synth.json").read_text())["seed"] == 5


def test_write_synth_refuses_existing_tiffs_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    write_synth(out, timepoints=2, depth=2, height=32, width=40, seed=0)
    with pytest.raises(InputError, match="overwrite"):
        write_synth(out, timepoints=1, depth=1, height=32, width=40, seed=0)
    # Overwriting with a smaller series leaves no stale frame behind.
    write_synth(out, timepoints=1, depth=1, height=32, width=40, seed=0, overwrite=True)
    assert [p.name for p in (out / "images").iterdir()] == ["t000_z000.tif"]
    assert [p.name for p in (out / "labels").iterdir()] == ["t000_z000.tif"]


def test_write_synth_output_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        write_synth(tmp_path / "f", **SMALL)


# ------------------------------------------------------------------ CLI

SMALL_ARGS = ["--timepoints", "2", "--depth", "2", "--height", "48", "--width", "64"]


def test_cli_writes_files_and_reports(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["synth", "-o", str(out), *SMALL_ARGS, "--seed", "7"]) == 0
    printed = capsys.readouterr().out
    assert "foreground" in printed and "Dice" in printed
    assert len(list((out / "images").glob("t*_z*.tif"))) == 4
    assert len(list((out / "labels").glob("t*_z*.tif"))) == 4
    np.testing.assert_array_equal(
        tifffile.imread(out / "images" / "t001_z001.tif"),
        synthesize_timepoint(1, timepoints=2, depth=2, height=48, width=64, seed=7)[0][1])


def test_cli_refuses_existing_output(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["synth", "-o", str(out), *SMALL_ARGS, "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["synth", "-o", str(out), *SMALL_ARGS, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and "Traceback" not in err
    assert main(["synth", "-o", str(out), *SMALL_ARGS, "--quiet", "--overwrite"]) == 0


@pytest.mark.parametrize("bad", [["--height", "0"], ["--depth", "-2"], ["--seed", "-1"],
                                 ["--timepoints", "x"], []])
def test_cli_bad_options_exit_2(tmp_path, capsys, bad):
    argv = ["synth", *bad] if not bad else ["synth", "-o", str(tmp_path / "d"), *bad]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error" in err and (not bad or bad[0] in err)
    assert not (tmp_path / "d").exists()
