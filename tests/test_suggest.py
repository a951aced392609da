"""volseg suggest: uncertainty per frame, spread picks, never an annotated frame, and
templates that round trip through `convert --mask --update`."""

from __future__ import annotations

import numpy as np
import pytest

from volseg.errors import InputError
from volseg.io import store as st
from volseg.stages.convert import convert
from volseg.stages.suggest import entropy_table, frame_scores, pick_frames, suggest
from volseg.testing import assert_refused, make_image_store, make_prediction

SHAPE = (4, 6, 16, 20)


def _probability(uncertain_frames) -> np.ndarray:
    """Sure everywhere (0 or 255), except 0.5 in the frames named (more in the first)."""
    rng = np.random.default_rng(0)
    prob = np.where(rng.random(SHAPE) < 0.2, 255, 0).astype(np.uint8)
    for k, (t, z) in enumerate(uncertain_frames):
        share = 1.0 - 0.1 * k
        prob[t, z] = np.where(rng.random(SHAPE[2:]) < share, 128, prob[t, z])
    return prob


def test_entropy_table_is_one_bit_at_one_half_and_zero_at_the_ends():
    h = entropy_table()
    assert h[0] == 0 and h[255] == 0 and abs(h[128] - 1) < 1e-3 and np.all(h >= 0)


def test_scores_rank_the_uncertain_frames_first(tmp_path):
    frames = [(1, 2), (3, 5), (0, 0)]
    pred = make_prediction(tmp_path / "p.zarr", _probability(frames))
    scores = frame_scores(pred)
    order = np.argsort(-scores[..., 0], axis=None)[:3]
    assert [divmod(int(i), SHAPE[1]) for i in order] == frames
    assert scores[1, 2, 1] > 0.8 and scores[2, 2, 1] == 0  # share within the band


def test_picks_are_spread_out_and_skip_excluded_frames():
    score = np.zeros((1, 40))
    score[0, 10:14] = [5, 4.9, 4.8, 4.7]  # four neighbouring slices, all very unsure
    score[0, 30] = 3
    picks = pick_frames(score, 2)
    assert picks == [(0, 10), (0, 30)]  # not the neighbour 11
    exclude = np.zeros_like(score, bool)
    exclude[0, 10] = True  # annotated: never picked, and its neighbours are covered by it
    assert pick_frames(score, 1, exclude=exclude) == [(0, 30)]
    two = pick_frames(score, 2, exclude=exclude)
    assert two[0] == (0, 30) and (0, 10) not in two and (0, 11) not in two
    # more picks than room: the spacing relaxes until n are found
    assert len(set(pick_frames(score, 40))) == 40


def test_suggest_never_proposes_an_annotated_frame(tmp_path):
    frames = [(1, 2), (3, 5), (0, 0)]
    make_prediction(tmp_path / "p.zarr", _probability(frames))
    images = make_image_store(tmp_path / "i.zarr", np.zeros(SHAPE, np.uint8)).path
    import tifffile

    (tmp_path / "l").mkdir()
    tifffile.imwrite(tmp_path / "l" / "t001_z002.tif", np.zeros(SHAPE[2:], np.uint8))
    convert([tmp_path / "l"], tmp_path / "truth.zarr", mask=True, like=images)
    report = suggest(tmp_path / "p.zarr", truth=tmp_path / "truth.zarr", n=2)
    picked = [(r["t"], r["z"]) for r in report["picks"]]
    assert (1, 2) not in picked and picked == [(3, 5), (0, 0)]
    assert report["annotated_frames"] == 1 and report["candidates"] == SHAPE[0] * SHAPE[1] - 1


def test_templates_round_trip_through_update(tmp_path, cli):
    import tifffile

    prob = _probability([(2, 4)])
    make_prediction(tmp_path / "p.zarr", prob)
    images = make_image_store(tmp_path / "i.zarr", np.zeros(SHAPE, np.uint8)).path
    (tmp_path / "l").mkdir()
    tifffile.imwrite(tmp_path / "l" / "t000_z000.tif", np.zeros(SHAPE[2:], np.uint8))
    truth = tmp_path / "truth.zarr"
    convert([tmp_path / "l"], truth, mask=True, like=images)
    code, out, err = cli("suggest", tmp_path / "p.zarr", "--truth", truth, "-n", "1",
                         "--templates", tmp_path / "todo", "--csv", tmp_path / "picks.csv",
                         "--plots", tmp_path / "plots", "--images", images)
    assert code == 0, err
    assert "   1     2     4" in out
    template = tmp_path / "todo" / "t002_z004.tif"
    drawn = tifffile.imread(template)
    np.testing.assert_array_equal(drawn, (prob[2, 4] >= 128).astype(np.uint8))
    assert (tmp_path / "plots" / "suggest_t002_z004.png").is_file()
    assert (tmp_path / "picks.csv").read_text().splitlines()[1].startswith("1,2,4,")
    corrected = drawn.copy()
    corrected[:3] = 1  # the user's correction
    tifffile.imwrite(template, corrected)
    code, out, err = cli("convert", tmp_path / "todo", "--mask", "--update", "-o", truth)
    assert code == 0, err
    np.testing.assert_array_equal(st.open_image(truth).array[2, 4], corrected)
    # a second run does not write over the corrected template
    assert_refused(cli("suggest", tmp_path / "p.zarr", "-n", "1", "--templates",
                       tmp_path / "todo"), "t002_z004.tif exists")


def test_a_mask_only_prediction_is_refused(tmp_path):
    make_prediction(tmp_path / "p.zarr", _probability([]), with_probability=False)
    with pytest.raises(InputError, match="only a mask"):
        suggest(tmp_path / "p.zarr")
    with pytest.raises(InputError, match=">= 1"):
        suggest(tmp_path / "p.zarr", n=0)


def test_truths_that_leave_nothing_to_suggest_are_refused(tmp_path, cli):
    make_prediction(tmp_path / "p.zarr", _probability([(1, 2)]))
    images = make_image_store(tmp_path / "i.zarr", np.zeros(SHAPE, np.uint8)).path
    # an image store, or a complete truth: every frame counts as annotated
    assert_refused(cli("suggest", tmp_path / "p.zarr", "--truth", images),
                   "--truth", "records no not-annotated voxels", "nothing to suggest")
    import tifffile

    (tmp_path / "all").mkdir()
    for t in range(SHAPE[0]):
        for z in range(SHAPE[1]):
            tifffile.imwrite(tmp_path / "all" / f"t{t:03d}_z{z:03d}.tif",
                             np.zeros(SHAPE[2:], np.uint8))
    convert([tmp_path / "all"], tmp_path / "truth.zarr", mask=True, like=images)
    assert_refused(cli("suggest", tmp_path / "p.zarr", "--truth", tmp_path / "truth.zarr"),
                   "all 24 frames hold annotations", "nothing left to suggest")


def test_plots_are_checked_before_anything_is_written(tmp_path, cli):
    make_prediction(tmp_path / "p.zarr", _probability([(1, 2)]))
    images = make_image_store(tmp_path / "i.zarr", np.zeros(SHAPE, np.uint8)).path
    (tmp_path / "afile").write_text("")
    common = ("suggest", tmp_path / "p.zarr", "-q", "-n", "1", "--csv", tmp_path / "picks.csv",
              "--templates", tmp_path / "todo", "--images", images)
    assert_refused(cli(*common, "--plots", tmp_path / "afile"), "afile", "not a folder")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "suggest_t001_z002.png").write_bytes(b"a user's figure")
    assert_refused(cli(*common, "--plots", tmp_path / "plots"), "suggest_t001_z002.png exists")
    other = make_image_store(tmp_path / "o.zarr", np.zeros((1,) + SHAPE[1:], np.uint8)).path
    assert_refused(cli(*common[:-2], "--images", other, "--plots", tmp_path / "p2"),
                   "--images", "differs from the prediction's")
    assert not (tmp_path / "picks.csv").exists() and not (tmp_path / "todo").exists()
    assert not (tmp_path / "p2").exists()


def test_an_array_of_a_prediction_is_named_as_such(tmp_path, cli):
    make_prediction(tmp_path / "p.zarr", _probability([(1, 2)]))
    assert_refused(cli("suggest", tmp_path / "p.zarr" / "mask"),
                   "is the mask of the prediction store", "give the store itself")
