"""Partial annotations: sparse frames (--like), scribbles, --update, and every reader
treating "not annotated" (255) as neither background nor structure."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from volseg.errors import InputError
from volseg.io import store as st
from volseg.io.truth import (AnnotatedRegion, KnownLabels, annotation_counts, learning_views,
                             not_annotated)
from volseg.ops.annotation import NOT_ANNOTATED, from_scribbles, labels_from_mask
from volseg.stages.convert import convert
from volseg.testing import assert_refused, make_image_store, make_prediction, write_frames

SHAPE = (3, 4, 24, 32)  # t, z, y, x


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 200, size=SHAPE, dtype=np.uint8)
    return make_image_store(tmp_path / "images.zarr", arr).path


def frame(seed: int, values=(0, 1)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(np.array(values, np.uint8), size=SHAPE[2:])


def write(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / name, array, photometric="minisblack")
    return folder / name


# ----------------------------------------------------------------- pure rules

def test_scribbles_map_to_stored_values_and_others_are_refused():
    s = np.array([[0, 1, 2], [2, 1, 0]], np.uint32)  # napari writes labels as uint32
    np.testing.assert_array_equal(from_scribbles(s, name="s.tif"),
                                  [[255, 1, 0], [0, 1, 255]])
    with pytest.raises(InputError, match=r"s.tif: scribble value\(s\) 3, 7"):
        from_scribbles(np.array([0, 3, 7, 1]), name="s.tif")


def test_one_rule_for_truth_values_and_one_for_roi_inside():
    from volseg.ops.annotation import check_mask, check_mask_dtype, inside_roi

    check_mask(np.array([0, 1, 1], np.uint8), name="t.zarr")
    check_mask(np.array([True, False]), name="t.zarr")
    for values, found in ((np.array([0, 1, 255], np.uint8), "values 0, 1, 255, not 0/1"),
                          (np.array([-1, 0, 1], np.int16), "values -1, 0, 1, not 0/1"),
                          (np.array([0.0, 1.0]), "float64, not an integer mask")):
        with pytest.raises(InputError, match=f"^t.zarr: {found}; the truth must be a 0/1 mask"):
            check_mask(values, name="t.zarr")
    with pytest.raises(InputError, match="float32, not an integer mask"):
        check_mask_dtype(np.float32, name="t.zarr")
    # nonzero is inside, whatever the dtype: a label image, -1, a float mask
    np.testing.assert_array_equal(inside_roi(np.array([0, 3, -1, 0.5])),
                                  [False, True, True, True])


def test_mask_frames_accept_0_1_and_0_255_only():
    np.testing.assert_array_equal(labels_from_mask(np.array([0, 255], np.uint8), name="m"), [0, 1])
    with pytest.raises(InputError, match=r"m.tif: mask has values \{0, 1, 2\}.*--scribbles"):
        labels_from_mask(np.array([0, 1, 2]), name="m.tif")


def test_views_read_not_annotated_as_outside_and_never_as_a_class():
    truth = np.array([[[[0, 1, 255, 1]]]], np.uint8)
    roi = np.array([[[[1, 1, 1, 0]]]], np.uint8)
    np.testing.assert_array_equal(KnownLabels(truth, 255)[0, 0], [[0, 1, 0, 1]])
    np.testing.assert_array_equal(AnnotatedRegion(truth, 255)[0, 0], [[1, 1, 0, 1]])
    np.testing.assert_array_equal(AnnotatedRegion(truth, 255, roi)[:], [[[[1, 1, 0, 0]]]])


# ----------------------------------------------------------------- convert --like

def test_like_places_frames_by_their_numbers_and_the_rest_is_not_annotated(tmp_path, images):
    a, b = frame(1), frame(2, (0, 255))
    write(tmp_path / "labels", "t000_z001.tif", a)
    write(tmp_path / "labels", "t002_z003.tif", b)
    summary = convert([tmp_path / "labels"], tmp_path / "truth.zarr", mask=True, like=images)
    assert summary["frames"] == 2
    truth = st.open_image(tmp_path / "truth.zarr")
    source = st.open_image(images)
    assert truth.shape == SHAPE and truth.chunks == source.chunks and truth.scale == source.scale
    assert not_annotated(truth) == NOT_ANNOTATED
    data = truth.array[:]
    np.testing.assert_array_equal(data[0, 1], a)
    np.testing.assert_array_equal(data[2, 3], b // 255)
    others = np.ones(SHAPE[:2], bool)
    others[0, 1] = others[2, 3] = False
    assert (data[others] == NOT_ANNOTATED).all()
    counts = annotation_counts(truth)
    assert counts[0, 1] == counts[2, 3] == SHAPE[2] * SHAPE[3] and counts.sum() == 2 * counts[0, 1]


def test_label_files_of_different_pixel_types_are_read_together(tmp_path, images):
    write(tmp_path / "l", "t000_z001.tif", frame(1))
    write(tmp_path / "l", "t001_z002.tif", frame(2).astype(np.uint16))  # re-saved by Fiji
    convert([tmp_path / "l"], tmp_path / "truth.zarr", mask=True, like=images)
    data = st.open_image(tmp_path / "truth.zarr").array[:]
    np.testing.assert_array_equal(data[0, 1], frame(1))
    np.testing.assert_array_equal(data[1, 2], frame(2))


def test_like_reads_a_multipage_file_per_time_point_and_a_single_frame(tmp_path, images):
    stack = np.stack([frame(k) for k in range(SHAPE[1])])
    write(tmp_path / "tp", "t002.tif", stack)
    convert([tmp_path / "tp" / "t002.tif"], tmp_path / "truth.zarr", mask=True, like=images)
    data = st.open_image(tmp_path / "truth.zarr").array[:]
    np.testing.assert_array_equal(data[2], stack)
    assert (data[:2] == NOT_ANNOTATED).all()
    one = make_image_store(tmp_path / "one.zarr", np.zeros((1, 1) + SHAPE[2:], np.uint8)).path
    single = write(tmp_path / "single", "drawn.tif", frame(5))
    convert([single], tmp_path / "t1.zarr", mask=True, like=one)
    np.testing.assert_array_equal(st.open_image(tmp_path / "t1.zarr").array[0, 0], frame(5))


def test_like_refusals_name_the_file(tmp_path, images, cli):
    write(tmp_path / "out", "t005_z000.tif", frame(1))
    assert_refused(cli("convert", tmp_path / "out", "--mask", "--like", images, "-o",
                       tmp_path / "a.zarr"), "t005_z000.tif", "outside the images")
    write(tmp_path / "size", "t000_z000.tif", np.zeros((10, 10), np.uint8))
    assert_refused(cli("convert", tmp_path / "size", "--mask", "--like", images, "-o",
                       tmp_path / "b.zarr"), "t000_z000.tif", "10x10", "24x32")
    truth_like = make_image_store(tmp_path / "m.zarr", np.zeros(SHAPE, np.uint8), mask=True).path
    write(tmp_path / "ok", "t000_z000.tif", frame(1))
    assert_refused(cli("convert", tmp_path / "ok", "--mask", "--like", truth_like, "-o",
                       tmp_path / "c.zarr"), "--like", "truth (mask) store")
    pred = tmp_path / "p.zarr"
    make_prediction(pred, np.zeros(SHAPE, np.uint8))
    assert_refused(cli("convert", tmp_path / "ok", "--mask", "--like", pred, "-o",
                       tmp_path / "d.zarr"), "--like", "prediction store")
    assert_refused(cli("convert", tmp_path / "ok", "--like", images, "-o", tmp_path / "e.zarr"),
                   "add --mask")
    assert not any((tmp_path / n).exists() for n in ("a.zarr", "b.zarr", "c.zarr", "d.zarr"))


def test_napari_labels_round_trip_as_scribbles(tmp_path, images):
    from napari_builtins.io import napari_write_labels

    painted = np.zeros(SHAPE[2:], np.uint32)  # napari's writer keeps its uint32 labels
    painted[3:6, 4:20] = 1  # a stroke on the structure
    painted[15:17, 2:30] = 2  # a stroke on the background
    (tmp_path / "painted").mkdir()
    napari_write_labels(str(tmp_path / "painted" / "t001_z002.tif"), painted, {})
    convert([tmp_path / "painted"], tmp_path / "truth.zarr", scribbles=True, like=images)
    data = st.open_image(tmp_path / "truth.zarr").array[1, 2]
    np.testing.assert_array_equal(data, from_scribbles(painted, name="x"))
    assert (data == 1).sum() == 3 * 16 and (data == 0).sum() == 2 * 28


def test_dense_scribbles_without_like(tmp_path):
    arr = np.stack([np.stack([frame(t * 4 + z, (0, 1, 2)) for z in range(2)]) for t in range(2)])
    write_frames(tmp_path / "s", arr)
    convert([tmp_path / "s"], tmp_path / "truth.zarr", scribbles=True)
    truth = st.open_image(tmp_path / "truth.zarr")
    assert not_annotated(truth) == NOT_ANNOTATED
    np.testing.assert_array_equal(truth.array[:], from_scribbles(arr, name="x"))


# ----------------------------------------------------------------- --update

def _chunk_files(store):
    return {p.relative_to(store): p.read_bytes() for p in (store / "0").rglob("*") if p.is_file()}


def test_update_adds_frames_and_keeps_every_other_byte(tmp_path, images, cli):
    write(tmp_path / "first", "t000_z001.tif", frame(1))
    truth = tmp_path / "truth.zarr"
    convert([tmp_path / "first"], truth, mask=True, like=images)
    before = st.open_image(truth).array[:]
    files_before = _chunk_files(truth)
    write(tmp_path / "more", "t002_z000.tif", frame(3))
    code, out, err = cli("convert", tmp_path / "more", "--mask", "--update", "-o", truth)
    assert code == 0, err
    after = st.open_image(truth).array[:]
    np.testing.assert_array_equal(after[2, 0], frame(3))
    keep = np.ones(SHAPE[:2], bool)
    keep[2, 0] = False
    np.testing.assert_array_equal(after[keep], before[keep])
    files_after = _chunk_files(truth)
    changed = {k for k in files_before if files_before[k] != files_after.get(k)}
    # only the shard holding t=2 changed; t=0 (the first frame) is byte-identical
    assert changed and all(str(k).startswith("0/c/2/") for k in changed), changed
    store = st.open_image(truth)
    assert store.complete and "update" not in store.volseg and len(store.volseg["updates"]) == 1
    assert not any(p.name.endswith(".lock") for p in tmp_path.iterdir())


def test_scribble_update_overwrites_only_painted_pixels(tmp_path, images):
    write(tmp_path / "first", "t001_z001.tif", frame(1))
    truth = tmp_path / "truth.zarr"
    convert([tmp_path / "first"], truth, mask=True, like=images)
    strokes = np.zeros(SHAPE[2:], np.uint8)
    strokes[0, :5] = 1
    strokes[1, :5] = 2
    write(tmp_path / "fix", "t001_z001.tif", strokes)
    convert([tmp_path / "fix"], truth, scribbles=True, update=True)
    data = st.open_image(truth).array[1, 1]
    expected = frame(1).copy()
    expected[0, :5], expected[1, :5] = 1, 0
    np.testing.assert_array_equal(data, expected)


def test_update_refusals(tmp_path, images, cli):
    write(tmp_path / "f", "t000_z000.tif", frame(1))
    assert_refused(cli("convert", tmp_path / "f", "--mask", "--update", "-o", tmp_path / "no.zarr"),
                   "does not exist", "--like")
    assert_refused(cli("convert", tmp_path / "f", "--mask", "--update", "-o", images),
                   "not a truth store")
    truth = tmp_path / "truth.zarr"
    convert([tmp_path / "f"], truth, mask=True, like=images)
    assert_refused(cli("convert", tmp_path / "f", "--mask", "--update", "--overwrite", "-o",
                       truth), "--overwrite")
    assert_refused(cli("convert", tmp_path / "f", "--mask", "--update", "--pyramid", "-o",
                       truth), "--pyramid", "keeps its pyramid levels")


def test_a_refused_update_leaves_the_store_complete_and_unchanged(tmp_path, images, cli):
    write(tmp_path / "first", "t000_z000.tif", frame(1))
    truth = tmp_path / "truth.zarr"
    convert([tmp_path / "first"], truth, mask=True, like=images)
    before = st.open_image(truth).array[:]
    write(tmp_path / "bad", "t001_z000.tif", frame(2))
    write(tmp_path / "bad", "t002_z000.tif", frame(3, values=(0, 1, 3)))  # the second is bad
    assert_refused(cli("convert", tmp_path / "bad", "--scribbles", "--update", "-o", truth),
                   "t002_z000.tif", "scribble value(s) 3")
    store = st.open_image(truth)  # complete: no pending update for that file to finish
    assert "update" not in store.volseg
    np.testing.assert_array_equal(store.array[:], before)
    write(tmp_path / "good", "t001_z000.tif", frame(2))
    convert([tmp_path / "good"], truth, mask=True, update=True)
    np.testing.assert_array_equal(st.open_image(truth).array[1, 0], frame(2))


def test_an_exported_partial_truth_goes_back_unchanged(partial, tmp_path, cli):
    """export writes 255 for "not annotated"; convert --like / --update read it as that,
    never as structure (an all-255 frame is a frame nobody annotated)."""
    images, truth_path, _ = partial
    stored = st.open_image(truth_path).array[:]
    code, out, err = cli("export", truth_path, "-o", tmp_path / "exported")
    assert code == 0, err
    assert "255 marks pixels nobody annotated" in out + err
    code, _, err = cli("convert", tmp_path / "exported", "--mask", "--like", images,
                       "-o", tmp_path / "again.zarr")
    assert code == 0, err
    np.testing.assert_array_equal(st.open_image(tmp_path / "again.zarr").array[:], stored)
    code, out, err = cli("convert", tmp_path / "exported", "--mask", "--update",
                         "-o", truth_path)
    assert code == 0, err
    assert "9 of 12 frame(s) annotate nothing" in out + err
    np.testing.assert_array_equal(st.open_image(truth_path).array[:], stored)
    # a 0/1/255 frame corrects its annotated pixels and keeps the store's elsewhere
    edited = np.full(SHAPE[2:], NOT_ANNOTATED, np.uint8)
    edited[:2] = 1
    write(tmp_path / "edit", "t002_z003.tif", edited)
    convert([tmp_path / "edit"], truth_path, mask=True, update=True)
    expected = stored[2, 3].copy()
    expected[:2] = 1
    np.testing.assert_array_equal(st.open_image(truth_path).array[2, 3], expected)
    # without --like, frames of 255 only (or 0/1/255) are refused, pointing at the way back
    assert_refused(cli("convert", tmp_path / "exported", "--mask", "-o", tmp_path / "d.zarr"),
                   ".tif: every pixel is 255", "--like IMAGES.zarr")
    assert_refused(cli("convert", tmp_path / "edit", "--mask", "-o", tmp_path / "d.zarr"),
                   "mask has values {0, 1, 255}", "--like IMAGES.zarr or --update")


def test_update_refuses_images_other_than_the_truths(tmp_path, images, cli):
    write(tmp_path / "f", "t000_z000.tif", frame(1))
    truth = tmp_path / "truth.zarr"
    convert([tmp_path / "f"], truth, mask=True, like=images)
    rng = np.random.default_rng(9)
    write_frames(tmp_path / "other", rng.integers(0, 200, size=SHAPE, dtype=np.uint8))
    convert([tmp_path / "other"], tmp_path / "other.zarr")  # same shape, other conversion
    write(tmp_path / "g", "t001_z000.tif", frame(2))
    assert_refused(cli("convert", tmp_path / "g", "--mask", "--update", "--like",
                       tmp_path / "other.zarr", "-o", truth),
                   "--like", "not the image store")
    assert st.open_image(truth).complete
    # training on them is not refused (the same frames converted again are another
    # conversion too) but said
    from volseg.training.forest import train_forest

    write(tmp_path / "g2", "t001_z000.tif", frame(2))
    convert([tmp_path / "g2"], truth, mask=True, update=True)
    lines = []
    train_forest(tmp_path / "other.zarr", truth, tmp_path / "f.model", trees=2,
                 max_samples=500, log=lines.append)
    assert any("another conversion than" in line for line in lines)


def test_a_name_that_matches_the_pattern_twice_is_refused(tmp_path, images, cli):
    write(tmp_path / "f", "t001_z001_x_t002_z003.tif", frame(1))
    assert_refused(cli("convert", tmp_path / "f", "--mask", "--like", images, "-o",
                       tmp_path / "t.zarr"),
                   "t001_z001_x_t002_z003.tif: the name matches the pattern", "more than once")
    write_frames(tmp_path / "dense", np.zeros((1, 2, 8, 8), np.uint8),
                 name="set001_t{t:03d}_z{z:03d}.tif")  # one match of t{t}_z{z}: fine
    convert([tmp_path / "dense"], tmp_path / "d.zarr")
    assert_refused(cli("convert", tmp_path / "dense", "-o", tmp_path / "e.zarr",
                       "--pattern", "t{t}"), "set001_t000_z000.tif", "more than once")


def test_a_pattern_without_an_axis_the_images_have_is_refused(tmp_path, images, cli):
    write(tmp_path / "f", "t001_z002.tif", frame(1))
    assert_refused(cli("convert", tmp_path / "f", "--mask", "--like", images, "-o",
                       tmp_path / "t.zarr", "--pattern", "z{z}"),
                   "--pattern", "no {t}", "3 time points")
    assert not (tmp_path / "t.zarr").exists()


def test_interrupted_update_reads_incomplete_and_a_rerun_finishes_it(tmp_path, images):
    from volseg.stages import truth as truth_stage

    write(tmp_path / "first", "t000_z000.tif", frame(1))
    truth = tmp_path / "truth.zarr"
    convert([tmp_path / "first"], truth, mask=True, like=images)
    write(tmp_path / "more", "t001_z000.tif", frame(2))
    write(tmp_path / "more", "t002_z000.tif", frame(3))

    calls = []
    original = truth_stage._sparse_block

    def stop_after_one(i, **kw):
        if calls:
            raise KeyboardInterrupt
        calls.append(i)
        return original(i, **kw)

    truth_stage._sparse_block = stop_after_one
    try:
        with pytest.raises(KeyboardInterrupt):
            convert([tmp_path / "more"], truth, mask=True, update=True, client=None)
    finally:
        truth_stage._sparse_block = original
    with pytest.raises(InputError, match="incomplete"):
        st.open_image(truth)
    other = tmp_path / "other"
    write(other, "t002_z001.tif", frame(4))
    with pytest.raises(InputError, match="earlier update was interrupted"):
        convert([other], truth, mask=True, update=True)
    convert([tmp_path / "more"], truth, mask=True, update=True)
    data = st.open_image(truth).array[:]
    np.testing.assert_array_equal(data[1, 0], frame(2))
    np.testing.assert_array_equal(data[2, 0], frame(3))


# ----------------------------------------------------------------- readers

@pytest.fixture
def partial(tmp_path):
    """Images, a partial truth (frames (0, 1) and (2, 3) annotated) and its full labels."""
    rng = np.random.default_rng(7)
    full = (rng.random(SHAPE) < 0.3).astype(np.uint8)
    image = (full * 150 + rng.integers(0, 60, SHAPE)).astype(np.uint8)
    images = make_image_store(tmp_path / "images.zarr", image).path
    for t, z in ((0, 1), (2, 3), (1, 2)):
        write(tmp_path / "labels", f"t{t:03d}_z{z:03d}.tif", full[t, z])
    convert([tmp_path / "labels"], tmp_path / "truth.zarr", mask=True, like=images)
    return images, tmp_path / "truth.zarr", full


def test_training_reads_only_annotated_pixels(partial):
    from volseg.training.sampler import PatchSampler, scan_training_data, split_frames

    images, truth_path, full = partial
    labels, region, annotated = learning_views(st.open_image(truth_path), None)
    assert sorted(annotated) == [(0, 1), (1, 2), (2, 3)]
    split = split_frames(SHAPE, annotated=annotated)
    assert split.val == [(2, 3)] and split.train == [(0, 1), (1, 2)]
    image = st.open_image(images).array
    index = scan_training_data(image, labels.array, split.train, roi=region.array)
    # were 255 background, pixels would count every frame; were it structure, foreground too
    assert index.pixels == 2 * SHAPE[2] * SHAPE[3]
    assert index.foreground.total == int(full[0, 1].sum() + full[1, 2].sum())
    sampler = PatchSampler(image, labels.array, index, patch=(16, 16), roi=region.array)
    rng = np.random.default_rng(0)
    for _ in range(20):
        _, target, info = sampler.draw(rng)
        assert info["frame"] in split.train
        assert set(np.unique(target[..., 0])) <= {0.0, 1.0}


def test_forest_samples_only_annotated_pixels(partial, tmp_path):
    from volseg.training.forest import sample_pixels, train_forest

    labels = np.array([[0, 1, 255, 255]], np.uint8)
    region = AnnotatedRegion(labels[None, None], 255)[0, 0]
    feats = np.arange(4, dtype=np.float32).reshape(1, 4, 1)  # the feature is the pixel index
    X, y = sample_pixels(feats, KnownLabels(labels, 255)[:], region, quota=10,
                         rng=np.random.default_rng(0))
    assert sorted(X[:, 0].tolist()) == [0.0, 1.0] and sorted(y.tolist()) == [0, 1]
    images, truth_path, _ = partial
    summary = train_forest(images, truth_path, tmp_path / "f.model", trees=3, max_samples=2000)
    assert summary["samples"] <= 2 * SHAPE[2] * SHAPE[3]


def test_evaluate_counts_annotated_voxels_only(partial, tmp_path):
    from volseg.stages.evaluate import evaluate

    images, truth_path, full = partial
    rng = np.random.default_rng(3)
    prob = rng.integers(0, 256, SHAPE).astype(np.uint8)
    make_prediction(tmp_path / "p.zarr", prob)
    report = evaluate(tmp_path / "p.zarr", truth_path)
    mask = prob >= 128
    frames = [(0, 1), (1, 2), (2, 3)]
    m = np.stack([mask[f] for f in frames]).astype(bool)
    g = np.stack([full[f] for f in frames]).astype(bool)
    assert report["tp"] == int((m & g).sum()) and report["fp"] == int((m & ~g).sum())
    assert report["fn"] == int((~m & g).sum()) and report["tn"] == int((~m & ~g).sum())
    assert report["voxels"] == 3 * SHAPE[2] * SHAPE[3]
    assert all(row["annotated"] for row in report["per_timepoint"])


def test_a_time_point_without_annotation_is_reported_as_such(tmp_path, images):
    from volseg.stages.evaluate import evaluate

    write(tmp_path / "l", "t000_z000.tif", frame(1))
    convert([tmp_path / "l"], tmp_path / "truth.zarr", mask=True, like=images)
    make_prediction(tmp_path / "p.zarr", np.zeros(SHAPE, np.uint8))
    rows = evaluate(tmp_path / "p.zarr", tmp_path / "truth.zarr")["per_timepoint"]
    assert [r["annotated"] for r in rows] == [True, False, False]
    assert rows[1]["dice"] is None and rows[1]["voxels"] == 0


def test_nothing_annotated_is_refused_everywhere(tmp_path, images, cli):
    from volseg.stages.evaluate import evaluate

    truth = tmp_path / "truth.zarr"
    write(tmp_path / "l", "t000_z000.tif", frame(1))
    convert([tmp_path / "l"], truth, mask=True, like=images)
    store = st.open_image(truth, mode="r+")
    store.array[...] = NOT_ANNOTATED  # every voxel not annotated
    make_prediction(tmp_path / "p.zarr", np.zeros(SHAPE, np.uint8))
    with pytest.raises(InputError, match="no voxel is annotated"):
        evaluate(tmp_path / "p.zarr", truth)
    assert_refused(cli("train", "--method", "forest", "--images", images, "--truth", truth,
                       "-o", tmp_path / "m.model"), "--truth", "no voxel is annotated")


def test_measure_compares_fully_annotated_time_points_only(tmp_path, images):
    from volseg.stages.measure import measure

    stack = np.zeros(SHAPE[1:], np.uint8)
    stack[:, 8:14, 4:28] = 1
    write(tmp_path / "tp", "t001.tif", stack)
    write(tmp_path / "tp2", "t002_z000.tif", frame(1))
    truth = tmp_path / "truth.zarr"
    convert([tmp_path / "tp" / "t001.tif"], truth, mask=True, like=images)
    convert([tmp_path / "tp2"], truth, mask=True, update=True)
    pred = np.zeros(SHAPE, np.uint8)
    pred[:, :, 8:14, 4:28] = 255
    make_prediction(tmp_path / "p.zarr", pred)
    report = measure(tmp_path / "p.zarr", truth_path=truth)
    rows = report["per_timepoint"]
    assert ["truth" in r for r in rows] == [False, True, False]
    assert rows[1]["relative_error"]["volume"] == 0.0
    assert report["truth_timepoints"] == [1] and "not compared: 0,2" in report["note"]
    with pytest.raises(InputError, match="partly annotated truth.*as --truth"):
        measure(truth)  # the partial truth as the mask: not a mask of every voxel


def test_preview_draws_not_annotated_apart_and_scores_annotated_pixels(partial, tmp_path):
    from volseg.stages.preview import preview, read_frame

    images, truth_path, full = partial
    make_prediction(tmp_path / "p.zarr", (full * 255).astype(np.uint8))
    pred, image, truth = (st.open_prediction(tmp_path / "p.zarr"), st.open_image(images),
                          st.open_image(truth_path))
    annotated_frame = read_frame(pred, image, 0, 1, truth=truth)
    assert annotated_frame.dice == 1.0 and annotated_frame.annotated.all()
    empty = read_frame(pred, image, 0, 0, truth=truth)  # nothing annotated: no Dice at all
    assert not empty.annotated.any() and empty.dice is None

    seen = []
    preview(tmp_path / "p.zarr", images, truth=truth_path, t=0, z=0,
            out=tmp_path / "f.png", on_frame=seen.append)
    assert seen[0]["annotated"] is False and "dice" not in seen[0]


def test_info_reports_the_annotated_share(partial, cli):
    _, truth_path, _ = partial
    code, out, err = cli("info", truth_path)
    assert code == 0, err
    assert "3 of 12 frames hold annotations" in out and "25.0 % of voxels" in out


@pytest.mark.slow
def test_unet_trains_on_sparse_frames_and_records_them(partial, tmp_path):
    from volseg.training import train

    images, truth_path, _ = partial
    lines = []
    summary = train(images, truth_path, tmp_path / "m.keras", epochs=1, steps_per_epoch=2,
                    patch=16, batch=2, filters=2, depth=2, log=lines.append)
    assert any("3 annotated frame(s) of 12" in line for line in lines)
    assert summary["val_dice"] is not None or summary.get("val_best_dice") is not None
    from volseg.models.unet import read_model_info

    split = read_model_info(tmp_path / "m.keras")["training"]["split"]
    assert split["train_frames"] == 2 and split["val_frames"] == 1
    assert split["annotated_frames"] == 3


def test_forest_on_scribbles_chooses_its_threshold_for_the_frames_share(tmp_path):
    """Scribbles hold 17 % structure; the frames 5 %. The threshold is chosen for the frames' estimated share, so the stored threshold's Dice
    on the whole validation frame is not worse than the scribbles' own best threshold's
    (which was lower: more false positives where 95 % is background)."""
    from volseg.models.forest import FeatureSpec, load_forest, probability_levels
    from volseg.ops.thresholds import best_level, class_histograms, dice_at
    from volseg.training.forest import train_forest

    rng = np.random.default_rng(5)
    shape = (1, 4, 64, 64)
    full = (rng.random(shape) < 0.05).astype(np.uint8)
    image = (full * 90 + rng.normal(80, 30, shape)).clip(0, 255).astype(np.uint8)
    images = make_image_store(tmp_path / "images.zarr", image).path
    scribbles = np.zeros(shape, np.uint8)
    for z in range(4):
        for cls, value in ((1, 1), (0, 2)):
            where = np.flatnonzero(full[0, z].ravel() == cls)
            n = 60 if value == 1 else 300  # background strokes are the longer ones
            scribbles[0, z].ravel()[rng.choice(where, n, replace=False)] = value
        write(tmp_path / "s", f"t000_z{z:03d}.tif", scribbles[0, z])
    convert([tmp_path / "s"], tmp_path / "truth.zarr", scribbles=True, like=images)
    lines = []
    train_forest(images, tmp_path / "truth.zarr", tmp_path / "f.model", trees=10,
                  max_samples=2000, spec=FeatureSpec(sigma_min=0.7, sigma_max=1.6),
                  log=lines.append)
    forest, info = load_forest(tmp_path / "f.model")
    share = info["training"]["val_structure_share"]
    assert 0.025 < share < 0.1, share
    assert any("estimated structure share" in line for line in lines)
    assert info["training"]["val_split"] == "frames"  # one time point: z held out
    (z,) = info["training"]["val_indices"]
    levels = probability_levels(forest, st.open_image(images), 0, z,
                                FeatureSpec.from_dict(info["features"]))
    whole = class_histograms(levels, full[0, z])
    scribbled = scribbles[0, z] != 0
    naive = best_level(class_histograms(levels[scribbled], full[0, z][scribbled]))[0]
    assert info["threshold"] > naive / 255
    assert dice_at(whole, info["threshold"]) >= dice_at(whole, naive / 255)
