"""volseg preview: figure size and panels, frame ranges, Dice, error colours, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from volseg.testing import assert_refused, make_image_store, make_prediction
from volseg.stages import preview as pv
from volseg.io import store as st
from volseg.errors import InputError

SHAPE = (3, 4, 24, 40)


@pytest.fixture
def stores(tmp_path):
    """Images, truth (a bar per frame) and a prediction shifted by two pixels."""
    rng = np.random.default_rng(0)
    truth = np.zeros(SHAPE, np.uint8)
    truth[:, :, 8:16, 10:30] = 1
    images = np.clip(rng.normal(50, 10, SHAPE) + 120 * truth, 0, 255).astype(np.uint8)
    prob = np.zeros(SHAPE, np.uint8)
    prob[:, :, 10:18, 10:30] = 230  # rows 8-9 missed (FN), rows 16-17 extra (FP)
    make_image_store(tmp_path / "images.zarr", images)
    make_image_store(tmp_path / "truth.zarr", truth, mask=True)
    make_prediction(tmp_path / "pred.zarr", prob)
    return tmp_path


def png_size(path):
    with Image.open(path) as im:
        return im.size  # (width, height)


def expected_size(n_panels, n_rows, dpi=100):
    w, h = pv.figure_size(n_panels, n_rows, SHAPE[2:])
    return round(w * dpi), round(h * dpi)


def assert_size(path, n_panels, n_rows, dpi=100):
    got, want = png_size(path), expected_size(n_panels, n_rows, dpi)
    assert abs(got[0] - want[0]) <= 1 and abs(got[1] - want[1]) <= 1, (got, want)


# ----------------------------------------------------------------- figures

def test_one_frame_with_truth_five_panels_and_dice(stores, cli):
    out = stores / "fig.png"
    code, stdout, err = cli("preview", stores / "pred.zarr", "--images", stores / "images.zarr",
                            "--truth", stores / "truth.zarr", "--t", 1, "--z", 2, "-o", out)
    assert code == 0, err
    assert_size(out, 5, 1)
    # truth 160 px, prediction 160 px, overlap 120: Dice = 240 / 320
    assert "t=1 z=2: Dice 0.7500" in stdout and "40 false positive" in stdout


def test_width_scales_with_panels(stores, cli):
    common = ("--images", stores / "images.zarr", "--t", 0, "--z", 0)
    assert cli("preview", stores / "pred.zarr", *common, "-o", stores / "a.png")[0] == 0
    assert cli("preview", stores / "pred.zarr", *common, "--truth", stores / "truth.zarr",
               "-o", stores / "b.png")[0] == 0
    assert_size(stores / "a.png", 4, 1)  # image, probability, mask, mask on image
    assert_size(stores / "b.png", 5, 1)
    (wa, ha), (wb, hb) = png_size(stores / "a.png"), png_size(stores / "b.png")
    assert wb > wa * 1.2 and ha == hb
    # twice the dpi, twice the pixels
    assert cli("preview", stores / "pred.zarr", *common, "--dpi", 200, "-o", stores / "c.png")[0] == 0
    assert_size(stores / "c.png", 4, 1, dpi=200)


def test_figure_panels_are_labelled(stores):
    p, im, gt = pv.open_inputs(stores / "pred.zarr", stores / "images.zarr", stores / "truth.zarr")
    frames = [pv.read_frame(p, im, 0, z, truth=gt) for z in (0, 3)]
    fig = pv.preview_figure(frames)
    labels = [ax.get_label() for ax in fig.axes if ax.get_label() != "colorbar"]
    assert labels == ["image", "truth", "probability", "mask", "errors"] * 2
    assert len(fig.legends) == 1
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert [s.split()[0] for s in legend] == ["true", "false", "false"]


def test_mask_only_prediction_has_no_probability_panel(stores, cli):
    make_prediction(stores / "m.zarr", np.full(SHAPE, 200, np.uint8), with_probability=False)
    code, _, err = cli("preview", stores / "m.zarr", "--images", stores / "images.zarr",
                       "--truth", stores / "truth.zarr", "-o", stores / "m.png")
    assert code == 0, err
    assert_size(stores / "m.png", 4, 1)


def test_ranges_write_one_file_per_frame_or_a_grid(stores, cli):
    code, stdout, err = cli("preview", stores / "pred.zarr", "--images", stores / "images.zarr",
                            "--t", "0-1", "--z", "1,3", "-o", stores / "f.png", "-q")
    assert code == 0, err
    assert stdout == ""
    names = sorted(p.name for p in stores.glob("f_*.png"))
    assert names == ["f_t000_z001.png", "f_t000_z003.png", "f_t001_z001.png", "f_t001_z003.png"]
    assert_size(stores / "f_t001_z003.png", 4, 1)

    paths = pv.preview(stores / "pred.zarr", stores / "images.zarr", t="all", z=2,
                       out=stores / "g.png", grid=True)
    assert paths == [stores / "g.png"]
    assert_size(stores / "g.png", 4, 3)  # a row per time point


def test_error_overlay_colours():
    image = np.zeros((2, 3), np.uint8)
    mask = np.array([[1, 1, 0], [0, 0, 0]], np.uint8)
    truth = np.array([[1, 0, 1], [0, 0, 0]], np.uint8)
    rgb = pv.overlay(image, pv.error_layers(mask, truth))
    colour = {k: np.asarray(pv.COLOURS[k][0]) * pv.COLOURS[k][1] for k in ("tp", "fp", "fn")}
    np.testing.assert_allclose(rgb[0, 0], colour["tp"], atol=1e-6)  # on a black image
    np.testing.assert_allclose(rgb[0, 1], colour["fp"], atol=1e-6)
    np.testing.assert_allclose(rgb[0, 2], colour["fn"], atol=1e-6)
    assert (rgb[1] == 0).all()  # true negatives keep the image
    # false positives and negatives differ clearly in every channel mix (not just hue)
    assert np.abs(colour["fp"] - colour["fn"]).sum() > 0.8


def test_dice_and_confusion():
    m = np.array([[1, 1, 0, 0]])
    g = np.array([[1, 0, 1, 0]])
    c = pv.confusion(m, g)
    assert c == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert pv.dice(c) == 0.5
    assert pv.dice(pv.confusion(np.zeros(3), np.zeros(3))) is None


# ----------------------------------------------------------------- bad input

def test_out_of_range_frames_exit_2(stores, cli):
    base = ("preview", stores / "pred.zarr", "--images", stores / "images.zarr")
    assert_refused(cli(*base, "--t", 3, "-o", stores / "x.png"), "--t", "out of range")
    assert_refused(cli(*base, "--z", "2:9", "-o", stores / "x.png"), "--z")
    assert_refused(cli(*base, "--t", "soon", "-o", stores / "x.png"), "--t")
    assert not (stores / "x.png").exists()


def test_shape_mismatch_exit_2(stores, cli):
    make_image_store(stores / "small.zarr", np.zeros((3, 4, 24, 39), np.uint8))
    make_image_store(stores / "smallmask.zarr", np.zeros((2, 4, 24, 40), np.uint8), mask=True)
    assert_refused(cli("preview", stores / "pred.zarr", "--images", stores / "small.zarr",
                        "-o", stores / "x.png"), "--images", "shape")
    assert_refused(cli("preview", stores / "pred.zarr", "--images", stores / "images.zarr",
                        "--truth", stores / "smallmask.zarr", "-o", stores / "x.png"), "--truth")


def test_other_bad_inputs_exit_2(stores, cli):
    base = ("preview", stores / "pred.zarr", "--images", stores / "images.zarr")
    assert_refused(cli(*base, "-o", stores / "fig.jpg2"), ".png")
    assert_refused(cli(*base, "-o", stores / "nope" / "fig.png"), "does not exist")
    # the images store as truth is not a 0/1 mask
    assert_refused(cli(*base, "--truth", stores / "images.zarr", "-o", stores / "x.png"),
                    "0/1 mask")
    # negative or fractional truths: evaluate refuses them, so does preview
    shape = st.open_image(stores / "truth.zarr").shape
    minus = np.zeros(shape, np.int16)
    minus[0, 0, 0, 0] = -1
    half = np.zeros(shape, np.float32)
    half[0, 0, 0, 0] = 0.5
    for name, array in (("minus.zarr", minus), ("half.zarr", half)):
        make_image_store(stores / name, array)
        assert_refused(cli(*base, "--truth", stores / name, "-o", stores / "x.png"),
                        "the truth must be a 0/1 mask")
    # a prediction store given as images: not an image group
    assert_refused(cli("preview", stores / "images.zarr", "--images", stores / "images.zarr",
                        "-o", stores / "x.png"), "images.zarr")


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_files_not_written_by_volseg_are_kept_unless_overwrite(stores, cli, suffix):
    base = ("preview", stores / "pred.zarr", "--images", stores / "images.zarr")
    mine = stores / f"notes{suffix}"
    mine.write_text("my own figure")
    assert_refused(cli(*base, "-o", mine), "was not written by volseg")
    assert mine.read_text() == "my own figure"
    # one frame per file: checked before any frame is written
    (stores / f"fig_t000_z001{suffix}").write_text("mine too")
    assert_refused(cli(*base, "--z", "0-1", "-o", stores / f"fig{suffix}"), "fig_t000_z001")
    assert not (stores / f"fig_t000_z000{suffix}").exists()
    # volseg's own figures are replaced; others with --overwrite
    assert cli(*base, "-o", stores / f"own{suffix}")[0] == 0
    assert cli(*base, "-o", stores / f"own{suffix}")[0] == 0
    assert cli(*base, "-o", mine, "--overwrite")[0] == 0
    assert mine.read_bytes() != b"my own figure"
    assert not list(stores.glob(".*.part"))


def test_grid_row_limit(tmp_path):
    shape = (1, pv.MAX_GRID_ROWS + 1, 4, 4)
    make_image_store(tmp_path / "i.zarr", np.zeros(shape, np.uint8))
    make_prediction(tmp_path / "p.zarr", np.zeros(shape, np.uint8))
    with pytest.raises(InputError, match="^grid: 65 frames"):
        pv.preview(tmp_path / "p.zarr", tmp_path / "i.zarr", t=0, z="all",
                   out=tmp_path / "g.png", grid=True)
    assert not (tmp_path / "g.png").exists()
