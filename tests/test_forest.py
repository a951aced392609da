"""The random-forest baseline: seam-free features, balanced bounded sampling, a safe model
file, and forest predict + evaluate end to end through the CLI."""

from __future__ import annotations

import json
import re
import types
import zipfile

import numpy as np
import pytest

from volseg.testing import assert_refused, make_image_store
from volseg.models import forest as fo
from volseg.training import forest as forest_training
from volseg.errors import InputError


class RecordingArray:
    """An array that records the size of every read."""

    def __init__(self, array):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.reads = []

    def __getitem__(self, sel):
        out = np.asarray(self.array[sel])
        self.reads.append(out.size)
        return out


def _tubes(shape, seed=0):
    """Bright horizontal and vertical tubes of radius 3 on a noisy background."""
    rng = np.random.default_rng(seed)
    t, z, y, x = shape
    labels = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[:y, :x]
    for ti in range(t):
        for zi in range(z):
            cy, cx = rng.integers(10, y - 10), rng.integers(10, x - 10)
            labels[ti, zi] = (np.abs(yy - cy) <= 3) | (np.abs(xx - cx) <= 3)
    images = (rng.normal(80, 25, shape) + 70 * labels).clip(0, 255).astype(np.uint8)
    return images, labels


def test_features_of_tiles_with_halo_equal_the_whole_frame():
    spec = fo.FeatureSpec()
    frame = np.random.default_rng(1).random((150, 230)).astype(np.float32) * 255
    whole = fo.features(frame, spec)
    assert whole.shape == (150, 230, spec.n_features)
    assembled = np.full_like(whole, np.nan)
    for ys, xs, f in fo.tile_features(lambda a, b: frame[a, b], 150, 230, spec, tile=64):
        assembled[ys, xs] = f
    np.testing.assert_array_equal(assembled, whole)  # exactly: no seams
    # a region of the frame, computed from its halo only
    part = list(fo.tile_features(lambda a, b: frame[a, b], 150, 230, spec,
                                 ys=slice(40, 100), xs=slice(90, 200), tile=1024))
    assert len(part) == 1
    np.testing.assert_array_equal(part[0][2], whole[40:100, 90:200])
    # too small a halo shows seams: the halo is what makes it exact
    assert spec.halo >= int(4 * spec.sigma_max + 0.5) + 3


def test_sample_is_balanced_bounded_and_reads_each_frame_once(tmp_path):
    images, labels = _tubes((2, 3, 80, 96))
    image = make_image_store(tmp_path / "i.zarr", images)
    truth = make_image_store(tmp_path / "t.zarr", labels, mask=True)
    rec_i, rec_t = RecordingArray(image.array), RecordingArray(truth.array)
    img = types.SimpleNamespace(array=rec_i, shape=image.shape)
    tru = types.SimpleNamespace(array=rec_t, shape=truth.shape)
    frames = [(t, z) for t in range(2) for z in range(3)]
    X, y = forest_training.collect_sample(img, tru, None, frames, spec=fo.FeatureSpec(), max_samples=600,
                             seed=0)
    counts = np.bincount(y, minlength=2)
    assert counts[0] == counts[1] > 0  # balanced although structure is ~15 % of pixels
    assert len(y) <= 600  # bounded by max_samples, not by the data
    assert X.shape == (len(y), 16) and X.dtype == np.float32
    # every frame read once, whole (one tile per frame here), nothing more
    assert sum(rec_i.reads) == len(frames) * 80 * 96
    assert sum(rec_t.reads) == len(frames) * 80 * 96
    # the same seed gives the same sample
    X2, y2 = forest_training.collect_sample(img, tru, None, frames, spec=fo.FeatureSpec(), max_samples=600,
                               seed=0)
    np.testing.assert_array_equal(X, X2)


def test_sample_respects_the_roi(tmp_path):
    images, labels = _tubes((1, 2, 60, 60), seed=3)
    roi_arr = np.zeros((1, 1, 60, 60), np.uint8)
    roi_arr[..., :30] = 1
    image = make_image_store(tmp_path / "i.zarr", images)
    truth = make_image_store(tmp_path / "t.zarr", labels, mask=True)
    roi = make_image_store(tmp_path / "r.zarr", roi_arr, mask=True)
    spec = fo.FeatureSpec(sigma_max=2.0, num_sigma=2)
    X, y = forest_training.collect_sample(image, truth, roi, [(0, 0), (0, 1)], spec=spec,
                             max_samples=10_000, seed=1)
    # every sampled pixel lies inside the ROI: its features match a pixel of the left half
    left = np.concatenate([fo.features(images[0, z], spec)[:, :30].reshape(-1, 8)
                           for z in range(2)])
    rows = {r.tobytes() for r in left}
    assert all(r.tobytes() in rows for r in X)


def _trained(tmp_path, trees=5):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 16)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.uint8)
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=trees, random_state=0).fit(X, y)
    info = {"format": "volseg-model", "format_version": 1, "kind": "forest", "threshold": 0.5,
            "features": fo.FeatureSpec().as_dict()}
    path = tmp_path / "f.model"
    fo.save_forest(path, forest, info=info)
    return path, forest, X


def test_model_file_round_trips_and_is_known_by_content(tmp_path):
    path, forest, X = _trained(tmp_path)
    loaded, info = fo.load_forest(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), forest.predict_proba(X))
    assert info["threshold"] == 0.5 and fo.model_kind(path) == "forest"
    renamed = path.rename(tmp_path / "weights.keras")  # the name does not matter
    assert fo.model_kind(renamed) == "forest"


def test_model_file_with_unexpected_types_is_refused(tmp_path):
    import os

    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    path, _, _ = _trained(tmp_path)
    evil = tmp_path / "evil.model"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        dst.writestr("volseg.json", src.read("volseg.json"))
        dst.writestr(fo.FOREST_MEMBER, sio.dumps(FunctionTransformer(func=os.system)))
    with pytest.raises(InputError, match="types volseg does not load"):
        fo.load_forest(evil)
    garbled = tmp_path / "garbled.model"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(garbled, "w") as dst:
        dst.writestr("volseg.json", src.read("volseg.json"))
        dst.writestr(fo.FOREST_MEMBER, b"PK\x03\x04 not a skops file")
    with pytest.raises(InputError, match="damaged forest model"):
        fo.load_forest(garbled)
    unet = tmp_path / "u.model"
    with zipfile.ZipFile(unet, "w") as dst:
        dst.writestr("volseg.json", json.dumps({"format": "volseg-model", "format_version": 1}))
    with pytest.raises(InputError, match="not a forest model"):
        fo.load_forest(unet)


@pytest.mark.slow
def test_forest_end_to_end_beats_the_best_global_threshold(tmp_path, cli):
    from volseg.data.synth import best_intensity, threshold_histograms

    d = tmp_path / "d"
    assert cli("synth", "-o", d, "--timepoints", "3", "--depth", "3", "--height", "128",
               "--width", "160", "--seed", "4", "-q")[0] == 0
    assert cli("convert", d / "images", "-o", tmp_path / "i.zarr", "-q")[0] == 0
    assert cli("convert", d / "labels", "--mask", "-o", tmp_path / "t.zarr", "-q")[0] == 0
    code, out, err = cli("train", "--method", "forest", "--images", tmp_path / "i.zarr",
                         "--truth", tmp_path / "t.zarr", "-o", tmp_path / "f.model",
                         "--trees", "20", "--max-samples", "20000")
    assert code == 0, err
    assert "random forest on" in out
    code, out, err = cli("predict", tmp_path / "i.zarr", "--model", tmp_path / "f.model",
                         "-o", tmp_path / "p.zarr", "-q")
    assert code == 0, err
    code, out, err = cli("evaluate", tmp_path / "p.zarr", "--truth", tmp_path / "t.zarr",
                         "--json", tmp_path / "r.json", "-q")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    from volseg.io import store as st

    images = st.open_image(tmp_path / "i.zarr").array[...]
    labels = st.open_image(tmp_path / "t.zarr").array[...]
    _, baseline = best_intensity(threshold_histograms(images, labels))
    assert report["dice"] > baseline + 0.1, (report["dice"], baseline)
    pred = st.open_prediction(tmp_path / "p.zarr")
    assert pred.volseg["model"]["kind"] == "forest"
    # predict on the same model again is identical (deterministic trees, one job)
    assert cli("predict", tmp_path / "i.zarr", "--model", tmp_path / "f.model",
               "-o", tmp_path / "p2.zarr", "-q")[0] == 0
    np.testing.assert_array_equal(st.open_prediction(tmp_path / "p2.zarr").probability.array[...],
                                  pred.probability.array[...])
    code, out, err = cli("info", tmp_path / "f.model")
    assert code == 0 and "forest model" in out


def test_forest_bad_input_one_line(tmp_path, cli):
    images, labels = _tubes((2, 1, 40, 40))
    make_image_store(tmp_path / "i.zarr", images)
    make_image_store(tmp_path / "t.zarr", labels[:, :, :30], mask=True)
    code, out, err = cli("train", "--method", "forest", "--images", tmp_path / "i.zarr",
                         "--truth", tmp_path / "t.zarr", "-o", tmp_path / "f.model")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--truth" in err
    make_image_store(tmp_path / "t2.zarr", labels, mask=True)
    code, out, err = cli("train", "--method", "forest", "--images", tmp_path / "i.zarr",
                         "--truth", tmp_path / "t2.zarr", "-o", tmp_path / "f.model",
                         "--trees", "0")
    assert code == 2 and "--trees" in err
    # frames one pixel high: the filter features cannot be computed, in training or
    # in prediction
    thin = make_image_store(tmp_path / "thin.zarr", images[:, :, :1]).path
    make_image_store(tmp_path / "thin-t.zarr", labels[:, :, :1], mask=True)
    code, out, err = cli("train", "--method", "forest", "--images", thin,
                         "--truth", tmp_path / "thin-t.zarr", "-o", tmp_path / "f.model")
    assert code == 2 and "thin.zarr: frames of 1 x 40 pixels are too small" in err, err
    code, out, err = cli("train", "--method", "forest", "--images", tmp_path / "i.zarr",
                         "--truth", tmp_path / "t2.zarr", "-o", tmp_path / "f.model",
                         "--trees", "2", "--max-samples", "2000", "-q")
    assert code == 0, err
    code, out, err = cli("predict", thin, "--model", tmp_path / "f.model",
                         "-o", tmp_path / "p.zarr")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "too small" in err, err
    assert not (tmp_path / "p.zarr").exists()


@pytest.mark.parametrize("truth", ["intensity", "0/255", "0/1/2"])
def test_every_trainer_refuses_a_truth_that_is_not_0_1(tmp_path, cli, truth):
    # one truth rule for the forest and the U-Net (the forest took an intensity image as
    # truth and reported validation Dice 1.0 for a model that marks everything)
    images, labels = _tubes((2, 1, 40, 40))
    make_image_store(tmp_path / "i.zarr", images)
    bad = {"intensity": images, "0/255": labels * 255,
           "0/1/2": labels + (images > 200).astype(np.uint8)}[truth]
    make_image_store(tmp_path / "t.zarr", bad)
    for method in ("forest", "unet"):
        assert_refused(cli("train", "--method", method, "--images", tmp_path / "i.zarr",
                           "--truth", tmp_path / "t.zarr", "-o", tmp_path / "m.keras",
                           "--epochs", "1", "--steps-per-epoch", "1", "--patch", "16",
                           "--depth", "2", "--filters", "2"),
                       "--truth", "not 0/1; the truth must be a 0/1 mask")
        assert not (tmp_path / "m.keras").exists()


def test_a_truth_without_structure_trains_nothing(tmp_path, cli):
    images, labels = _tubes((2, 1, 40, 40))
    make_image_store(tmp_path / "i.zarr", images)
    make_image_store(tmp_path / "t.zarr", np.zeros_like(labels), mask=True)
    assert_refused(cli("train", "--images", tmp_path / "i.zarr", "--truth", tmp_path / "t.zarr",
                       "-o", tmp_path / "m.keras", "--patch", "16", "--depth", "2"),
                   "--truth", "no structure", "nothing to learn")
    assert_refused(cli("train", "--method", "forest", "--images", tmp_path / "i.zarr",
                       "--truth", tmp_path / "t.zarr", "-o", tmp_path / "f.model", "-q"),
                   "--truth", "only one class, no structure", "nothing to learn")
    assert not (tmp_path / "m.keras").exists() and not (tmp_path / "f.model").exists()


def test_a_forest_file_of_another_kind_is_refused(tmp_path):
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    path, forest, X = _trained(tmp_path)
    info = json.loads(zipfile.ZipFile(path).read("volseg.json"))
    y3 = (X[:, 0] > 0).astype(np.uint8) + (X[:, 1] > 1)
    others = {
        "LogisticRegression": LogisticRegression().fit(X, (X[:, 0] > 0).astype(np.uint8)),
        "classes [0, 1, 2]": RandomForestClassifier(n_estimators=2, random_state=0).fit(X, y3),
        "takes 8 features": RandomForestClassifier(n_estimators=2, random_state=0).fit(
            X[:, :8], (X[:, 0] > 0).astype(np.uint8)),
    }
    for wording, model in others.items():
        tampered = tmp_path / f"{len(wording)}.model"
        with zipfile.ZipFile(tampered, "w") as zf:
            zf.writestr("volseg.json", json.dumps(info))
            zf.writestr(fo.FOREST_MEMBER, sio.dumps(model))
        with pytest.raises(InputError, match=re.escape(wording)):
            fo.load_forest(tampered)
