"""Tests for volseg.sampler: splits, the streaming scan, patch draws, the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from volseg.errors import InputError
from volseg.training.sampler import (
    Augment,
    PatchDataset,
    PatchSampler,
    percentiles_from_histogram,
    prefetch,
    scan_training_data,
    resample,
    split_frames,
    tubed_skeleton,
    warp_offsets,
)
from volseg.io.store import create_image, finish, make_job, open_image


def make_store(path, data, chunks=None):
    store = create_image(path, shape=data.shape, dtype=data.dtype, chunks=chunks,
                         job=make_job("test", parameters={}))
    store.array[...] = data
    finish(store.group)
    return open_image(path)


def synthetic(shape=(2, 3, 64, 80), seed=0):
    """Noisy images with bright thin lines; labels mark the lines (a few % of pixels)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    for t in range(shape[0]):
        for z in range(shape[1]):
            for _ in range(2):
                r = rng.integers(8, shape[2] - 8)
                labels[t, z, r:r + 2, 5:-5] = 1
            c = rng.integers(8, shape[3] - 8)
            labels[t, z, 5:-5, c:c + 2] = 1
    images = (rng.normal(60, 10, shape) + 120 * labels).clip(0, 255).astype(np.uint8)
    return images, labels


class RecordingArray:
    """Wraps an array and records every region read from it."""

    def __init__(self, array):
        self.array = array
        self.shape, self.dtype = array.shape, array.dtype
        self.chunks = getattr(array, "chunks", None)
        self.shards = getattr(array, "shards", None)
        self.reads = []

    def __getitem__(self, sel):
        out = np.asarray(self.array[sel])
        self.reads.append(out.size)
        return out


@pytest.fixture
def stores(tmp_path):
    images, labels = synthetic()
    return (make_store(tmp_path / "i.zarr", images), make_store(tmp_path / "t.zarr", labels),
            images, labels)


def test_validation_lists_use_the_one_index_syntax():
    s = split_frames((1, 20, 8, 8), val_frames="14-19")
    assert s.by == "frames" and s.val_indices == [14, 15, 16, 17, 18, 19]
    assert split_frames((5, 1, 8, 8), val_timepoints="3, 1,2-3").val_indices == [1, 2, 3]
    for bad in ("", "a", "5-2", "7"):
        with pytest.raises(InputError, match="^val_timepoints: "):
            split_frames((5, 1, 8, 8), val_timepoints=bad)


def test_split_by_timepoints_and_frames():
    s = split_frames((5, 2, 8, 8), val_fraction=0.2)
    assert s.by == "timepoints" and s.val_indices == [4]
    assert s.val == [(4, 0), (4, 1)] and len(s.train) == 8
    assert not set(s.train) & set(s.val)
    s = split_frames((1, 20, 8, 8), val_frames="14-19")
    assert s.by == "frames" and [z for _, z in s.val] == list(range(14, 20))
    assert [z for _, z in s.train] == list(range(14))
    s = split_frames((4, 3, 8, 8), val_timepoints="0,2")
    assert {t for t, _ in s.val} == {0, 2} and {t for t, _ in s.train} == {1, 3}
    with pytest.raises(InputError, match="val_frames"):
        split_frames((4, 3, 8, 8), val_frames="1")
    with pytest.raises(InputError, match="single frame"):
        split_frames((1, 1, 8, 8))
    with pytest.raises(InputError, match="nothing left"):
        split_frames((1, 3, 8, 8), val_frames="0-2")


def test_scan_counts_and_percentiles(stores):
    image, truth, images, labels = stores
    split = split_frames(image.shape, val_fraction=0.5)
    index = scan_training_data(image.array, truth.array, split.train)
    train = np.stack([images[t, z] for t, z in split.train])
    train_labels = np.stack([labels[t, z] for t, z in split.train])
    assert index.foreground.total == int(train_labels.sum())
    assert index.pixels == train.size
    for q in (0.5, 50.0, 99.5):
        ref = np.percentile(train, q, method="inverted_cdf")
        got = percentiles_from_histogram(index.histogram, (q, 100.0))[0]
        assert got == ref
    # Kept coordinates really are foreground.
    fg = index.foreground
    for k in range(len(fg.count)):
        t, z = split.train[fg.frame[k]]
        ys, xs = fg.coords[fg.start[k]:fg.start[k + 1]].T
        assert labels[t, z, ys, xs].all()


def test_float_images_percentiles(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.normal(100, 20, (1, 2, 32, 32)).astype(np.float32)
    labels = np.zeros(images.shape, np.uint8)
    index = scan_training_data(images, labels, [(0, 0), (0, 1)])
    lo, hi = index.percentiles(1, 99)
    ref_lo, ref_hi = np.percentile(images, [1, 99], method="inverted_cdf")
    span = images.max() - images.min()
    assert abs(lo - ref_lo) < span / 1000 and abs(hi - ref_hi) < span / 1000


def test_truth_must_be_binary(tmp_path):
    images, labels = synthetic((1, 2, 32, 32))
    labels[0, 0, 3, 3] = 255
    with pytest.raises(InputError, match="values 0, 1, 255, not 0/1"):
        scan_training_data(images, labels, [(0, 0), (0, 1)])


def test_foreground_share(stores):
    image, truth, _, labels = stores
    frames = split_frames(image.shape, val_fraction=0.3).train
    index = scan_training_data(image.array, truth.array, frames)
    rng = np.random.default_rng(0)
    results = {}
    for share in (1 / 3, 0.0):
        sampler = PatchSampler(image.array, truth.array, index, patch=(32, 32),
                               foreground_share=share, augment=Augment.none())
        forced, centred_on_fg = 0, 0
        n = 600
        for _ in range(n):
            x, y, info = sampler.draw(rng)
            t, z = info["frame"]
            cy, cx = info["origin"][0] + info["centre"][0], info["origin"][1] + info["centre"][1]
            on_fg = labels[t, z, cy, cx] == 1
            assert y[info["centre"]][0] == labels[t, z, cy, cx]  # the patch is that place
            if info["forced"]:
                forced += 1
                assert on_fg
            centred_on_fg += on_fg
        results[share] = (forced / n, centred_on_fg / n)
    base = index.foreground_fraction
    assert abs(results[1 / 3][0] - 1 / 3) < 0.07
    assert results[0.0][0] == 0
    assert abs(results[0.0][1] - base) < 0.05
    # Forced third plus chance hits on the rest.
    assert abs(results[1 / 3][1] - (1 / 3 + 2 / 3 * base)) < 0.07


def test_each_draw_reads_one_patch(stores):
    image, truth, _, _ = stores
    frames = split_frames(image.shape).train
    img, lab = RecordingArray(image.array), RecordingArray(truth.array)
    index = scan_training_data(img, lab, frames)
    assert sum(img.reads) == len(frames) * 64 * 80  # the scan reads each training pixel once
    img.reads.clear()
    lab.reads.clear()
    sampler = PatchSampler(img, lab, index, patch=(16, 24))
    rng = np.random.default_rng(3)
    for _ in range(50):
        sampler.draw(rng)
        assert len(img.reads) == 1 and len(lab.reads) == 1
        assert img.reads[0] <= 16 * 24 and lab.reads[0] <= 16 * 24
        img.reads.clear()
        lab.reads.clear()


def test_roi_centres_and_weights(tmp_path):
    images, labels = synthetic((1, 4, 64, 64))
    roi = np.zeros((1, 1, 64, 64), np.uint8)  # one ROI for every frame
    roi[0, 0, 16:48, 8:40] = 1
    frames = [(0, z) for z in range(3)]
    index = scan_training_data(images, labels, frames, roi=roi)
    assert index.pixels == 3 * 32 * 32
    sampler = PatchSampler(images, labels, index, patch=(16, 16), roi=roi,
                           augment=Augment.none())
    rng = np.random.default_rng(0)
    for _ in range(100):
        x, y, info = sampler.draw(rng)
        cy = info["origin"][0] + info["centre"][0]
        cx = info["origin"][1] + info["centre"][1]
        assert roi[0, 0, cy, cx] == 1
        oy, ox = info["origin"]
        np.testing.assert_array_equal(y[..., 1], roi[0, 0, oy:oy + 16, ox:ox + 16])
        if info["forced"]:
            assert labels[0, info["frame"][1], cy, cx] == 1


def test_small_frames_are_padded_with_zero_weight():
    images, labels = synthetic((1, 2, 20, 24))
    index = scan_training_data(images, labels, [(0, 0), (0, 1)])
    sampler = PatchSampler(images, labels, index, patch=(32, 32), augment=Augment.none())
    x, y, info = sampler.draw(np.random.default_rng(0))
    assert x.shape == (32, 32, 1) and y.shape == (32, 32, 2)
    weight = y[..., 1]
    assert weight.sum() == 20 * 24
    assert weight[6:26, 4:28].all()  # the frame sits in the middle
    np.testing.assert_array_equal(x[6:26, 4:28, 0], images[0, info["frame"][1]])


def test_augmentation_keeps_image_and_labels_aligned():
    images, labels = synthetic((1, 2, 48, 48))
    images = (labels * 200 + 20).astype(np.uint8)
    index = scan_training_data(images, labels, [(0, 0), (0, 1)])
    sampler = PatchSampler(images, labels, index, patch=(32, 32))
    rng = np.random.default_rng(5)
    changed = 0
    for _ in range(40):
        x, y, info = sampler.draw(rng)
        np.testing.assert_array_equal(x[..., 0] > 120, y[..., 0] > 0.5)
        oy, ox = info["origin"]
        raw = labels[0, info["frame"][1], oy:oy + 32, ox:ox + 32]
        changed += not np.array_equal(y[..., 0], raw)
        assert np.isclose(y[..., 0].sum(), raw.sum())
    assert changed > 10  # flips and rotations happen


def test_warp_offsets_rotate_scale_and_bend():
    rng = np.random.default_rng(0)
    shape = (48, 64)
    grid = warp_offsets(rng, shape)  # no warp: each pixel from itself
    assert grid.shape == (2, 48, 64) and grid.dtype == np.float32
    np.testing.assert_allclose(grid[:, 0, 0], [-23.5, -31.5])
    np.testing.assert_allclose(grid[:, 47, 63], [23.5, 31.5])
    radius = np.hypot(*grid)
    for _ in range(5):
        rotated = warp_offsets(rng, shape, angle=180)
        np.testing.assert_allclose(np.hypot(*rotated), radius, atol=1e-4)  # distances kept
        assert not np.allclose(rotated, grid, atol=0.5)
        scaled = warp_offsets(rng, shape, scale=0.3)
        ratio = np.hypot(*scaled)[radius > 0] / radius[radius > 0]
        assert np.ptp(ratio) < 1e-4 and np.exp(-0.3) - 1e-5 <= ratio[0] <= np.exp(0.3) + 1e-5
        bent = warp_offsets(rng, shape, elastic=3.0) - grid
        assert np.sqrt(np.mean(bent ** 2)) == pytest.approx(3.0, rel=1e-3)
        # smooth: neighbours move together (a per-pixel jitter would differ by ~4 px)
        assert np.abs(np.diff(bent, axis=2)).max() < 1.0


def test_resample_interpolates_images_and_keeps_labels_binary():
    image = np.arange(20, dtype=np.float32).reshape(4, 5)
    coords = np.array([[[0.5, 3.0, -1.0]], [[1.0, 2.5, 9.0]]], np.float32)  # (2, 1, 3)
    np.testing.assert_allclose(resample(image, coords, order=1), [[3.5, 17.5, 4.0]])
    np.testing.assert_allclose(resample(image, coords, order=0), [[1.0, 17.0, 4.0]])
    two = resample(np.stack([image, -image], axis=-1), coords, order=1)
    assert two.shape == (1, 3, 2)
    np.testing.assert_allclose(two[..., 1], -two[..., 0])


def test_warped_draws_read_one_region_keep_alignment_and_weight_the_frame_only():
    images, labels = synthetic((1, 2, 48, 56))
    images = (labels * 200 + 20).astype(np.uint8)
    img, lab = RecordingArray(images), RecordingArray(labels)
    index = scan_training_data(img, lab, [(0, 0), (0, 1)])
    img.reads.clear()
    lab.reads.clear()
    warp = Augment(angle=45, scale=0.2, elastic=2.0)
    sampler = PatchSampler(img, lab, index, patch=(32, 32), augment=warp, skeleton=True)
    rng = np.random.default_rng(7)
    agree = []
    for _ in range(30):
        x, y, info = sampler.draw(rng)
        assert len(img.reads) == 1 and len(lab.reads) == 1  # one window, not one per pixel
        img.reads.clear()
        lab.reads.clear()
        assert x.shape == (32, 32, 1) and y.shape == (32, 32, 3)
        assert set(np.unique(y[..., :2])) <= {0.0, 1.0}  # truth and weight stay binary
        np.testing.assert_array_equal(y[..., 2], tubed_skeleton(y[..., 0]))
        agree.append(np.mean((x[..., 0] > 120) == (y[..., 0] > 0.5)))
    assert np.mean(agree) > 0.98  # linear image and nearest truth: only corners differ
    # a frame smaller than the patch: weight 1 only where the source lies in the frame,
    # about the frame's area (rotation keeps areas; scaling is off here)
    small_images, small_labels = synthetic((1, 1, 20, 24))
    small = PatchSampler(small_images, small_labels,
                         scan_training_data(small_images, small_labels, [(0, 0)]),
                         patch=(32, 32), augment=Augment(angle=45))
    for _ in range(5):
        _, y, _ = small.draw(rng)
        assert 0.85 * 480 < y[..., 1].sum() < 1.15 * 480


def test_tubed_skeleton_is_a_band_along_the_centre_line_inside_the_truth():
    truth = np.zeros((40, 40), np.float32)
    truth[10:21, 3:-3] = 1.0  # an 11-px bar
    truth[30, 5:-5] = 1.0  # a 1-px line
    tube = tubed_skeleton(truth)
    assert tube.dtype == np.float32 and set(np.unique(tube)) == {0.0, 1.0}
    assert not (tube > truth).any()  # never outside the truth
    assert tube[13:18, 10:-10].all()  # the centre row and 2 rows either side
    assert not tube[[10, 11, 19, 20], 10:-10].any()  # not the whole wide bar
    np.testing.assert_array_equal(tube[30, 8:-8], 1.0)  # the thin line is its own tube
    assert not tubed_skeleton(np.zeros((8, 8), np.float32)).any()


def test_skeleton_channel_follows_the_augmented_truth():
    images, labels = synthetic((1, 2, 48, 48))
    index = scan_training_data(images, labels, [(0, 0), (0, 1)])
    sampler = PatchSampler(images, labels, index, patch=(32, 32), skeleton=True)
    rng = np.random.default_rng(3)
    for _ in range(10):
        _, y, _ = sampler.draw(rng)
        assert y.shape == (32, 32, 3)
        np.testing.assert_array_equal(y[..., 2], tubed_skeleton(y[..., 0]))
    x, y = sampler.batch(rng, 4)
    assert y.shape == (4, 32, 32, 3) and y[..., 2].any()


def test_dataset_is_deterministic_and_prefetch_keeps_order(stores):
    image, truth, _, _ = stores
    frames = split_frames(image.shape).train
    index = scan_training_data(image.array, truth.array, frames)
    sampler = PatchSampler(image.array, truth.array, index, patch=(16, 16))
    ds = PatchDataset(sampler, batch_size=3, steps=6, seed=7, workers=2)
    seq = [ds[i] for i in range(len(ds))]
    par = list(prefetch(ds, workers=2, depth=3))
    assert len(par) == 6
    for (a, b), (c, d) in zip(seq, par):
        assert a.shape == (3, 16, 16, 1) and b.shape == (3, 16, 16, 2)
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert not np.array_equal(seq[0][0], seq[1][0])
    ds.on_epoch_end()
    assert not np.array_equal(ds[0][0], seq[0][0])  # a new epoch draws new patches
