"""volseg predict: tiled streaming prediction into Zarr, resume, model caching, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest
import zarr
from scipy import ndimage

from volseg.testing import VOLSEG_COMMAND as VOLSEG, make_image_store, make_tiny_model
from volseg.io import store as st
from volseg.errors import InputError
from volseg.ops.metrics import threshold_bin
from volseg.stages.predict import model_loads, predict


def smooth_images(shape, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=shape)
    raw = ndimage.gaussian_filter(raw, sigma=(0, 0, 3, 3))
    raw = (raw - raw.min()) / (raw.max() - raw.min()) * 255
    return raw.astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.keras")


@pytest.fixture(scope="module")
def client():
    from volseg.engine.cluster import open_client

    with open_client("local", workers=1, threads=2) as c:
        yield c


def read_pred(path):
    pred = st.open_prediction(path)
    prob = pred.probability.array[:] if pred.probability is not None else None
    return pred, prob, pred.mask.array[:]


def test_predict_writes_complete_consistent_store(tmp_path, tiny_model, client):
    images = make_image_store(tmp_path / "im.zarr", smooth_images((2, 3, 37, 53)))
    summary = predict(images.path, tiny_model, tmp_path / "p.zarr", threshold=0.5, client=client)
    assert summary["computed"] == summary["blocks"] == 2
    pred, prob, mask = read_pred(tmp_path / "p.zarr")
    assert prob.shape == mask.shape == (2, 3, 37, 53)
    assert prob.dtype == mask.dtype == np.uint8
    assert pred.probability.volseg["probability_scale"] == 255
    assert set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, (prob >= threshold_bin(0.5)).astype(np.uint8))
    np.testing.assert_array_equal(mask, (prob / 255.0 >= 0.5).astype(np.uint8))
    assert prob.std() > 0  # the model really ran
    assert pred.volseg["model"]["sha256"] == pred.volseg["job"]["parameters"]["model_sha256"]
    assert st.LEDGER not in pred.group


def _whole_frame(model_path, frames, multiple):
    from volseg.models.unet import load_model

    model, _ = load_model(model_path)
    n, h, w = frames.shape
    hp, wp = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    x = np.pad(frames.astype(np.float32), ((0, 0), (0, hp - h), (0, wp - w)), mode="reflect")
    out = np.asarray(model.predict_on_batch(x[..., None]))[..., 0]
    return out[:, :h, :w]


def test_tiled_equals_whole_frame_without_seams(tmp_path, tiny_model, client):
    arr = smooth_images((1, 2, 150, 190), seed=1)
    images = make_image_store(tmp_path / "im.zarr", arr)
    predict(images.path, tiny_model, tmp_path / "tiled.zarr", tile=(64, 64), halo=16,
            client=client, threshold=0.5)
    _, tiled, _ = read_pred(tmp_path / "tiled.zarr")
    tiled = tiled[0].astype(np.float64) / 255
    whole = _whole_frame(tiny_model, arr[0], 4)
    assert np.abs(tiled - whole).mean() < 1e-2

    from volseg.ops.tiling import tile_plan

    plan = tile_plan(150, 190, tile=(64, 64), halo=16, multiple=4)
    assert plan.n_tiles > 4
    borders = [b for b in plan.y_bounds[1:-1]]
    jumps = np.abs(np.diff(tiled, axis=1)).mean(axis=(0, 2))  # jump between rows r and r+1
    at_border = jumps[[b - 1 for b in borders]].mean()
    elsewhere = np.delete(jumps, [b - 1 for b in borders]).mean()
    assert at_border <= elsewhere * 1.5


def test_store_with_shards_over_time_points(tmp_path, tiny_model, client):
    """A store whose chunks span several time points (made by an older volseg or
    written by hand) is predicted one time point at a time, each from its own frames."""
    arr = smooth_images((4, 2, 37, 53), seed=5)
    job = st.make_job("test", parameters={"mask": False})
    image = st.create_image(tmp_path / "im.zarr", shape=arr.shape, dtype=arr.dtype, job=job,
                            chunks=(2, 1, 37, 53), shards=(4, 2, 37, 53),
                            extra={"content": "image"})
    image.array[...] = arr
    st.finish(image.group)
    predict(tmp_path / "im.zarr", tiny_model, tmp_path / "p.zarr", client=client)
    pred, prob, _ = read_pred(tmp_path / "p.zarr")
    assert pred.probability.chunks[0] == 1
    for t in range(4):
        whole = _whole_frame(tiny_model, arr[t], 4)
        assert np.abs(prob[t].astype(np.float64) / 255 - whole).max() <= 0.5 / 255 + 1e-3


@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (1, 1, 523, 821), (1, 1, 1100, 700)])
def test_odd_sizes(tmp_path, tiny_model, client, shape):
    arr = smooth_images(shape, seed=2)
    images = make_image_store(tmp_path / "im.zarr", arr)
    predict(images.path, tiny_model, tmp_path / "p.zarr", client=client)
    _, prob, mask = read_pred(tmp_path / "p.zarr")
    assert prob.shape == shape
    whole = _whole_frame(tiny_model, arr[0], 4)
    assert np.abs(prob[0].astype(np.float64) / 255 - whole).max() <= 0.5 / 255 + 1e-3


def test_model_loaded_once_per_worker(tmp_path, tiny_model, client):
    images = make_image_store(tmp_path / "im.zarr", smooth_images((6, 2, 32, 32)))
    before = client.run(model_loads)
    predict(images.path, tiny_model, tmp_path / "p.zarr", client=client, precision="float32")
    predict(images.path, tiny_model, tmp_path / "q.zarr", client=client, precision="float32")
    after = client.run(model_loads)
    loads = sum(after.values()) - sum(before.values())
    assert loads <= len(after)  # at most one load per worker process for 12 blocks


def test_no_probability_and_bfloat16(tmp_path, tiny_model, client):
    images = make_image_store(tmp_path / "im.zarr", smooth_images((1, 2, 64, 64), seed=3))
    predict(images.path, tiny_model, tmp_path / "f32.zarr", client=client)
    predict(images.path, tiny_model, tmp_path / "bf16.zarr", client=client, precision="bfloat16",
            probability=False)
    pred = st.open_prediction(tmp_path / "bf16.zarr")
    assert pred.probability is None
    _, _, m32 = read_pred(tmp_path / "f32.zarr")
    assert (pred.mask.array[:] == m32).mean() > 0.95


def test_bad_inputs(cli, tmp_path, tiny_model):
    images = make_image_store(tmp_path / "im.zarr", smooth_images((1, 1, 32, 32)))

    def bad(*args, match):
        code, _, err = cli("predict", *args)
        assert code == 2 and "Traceback" not in err, err
        assert match in err, err

    out = tmp_path / "p.zarr"
    bad(tmp_path / "none.zarr", "--model", tiny_model, "-o", out, match="no such image store")
    bad(images.path, "--model", tmp_path / "none.keras", "-o", out, match="model file not found")
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    bad(images.path, "--model", tmp_path / "junk.keras", "-o", out, match="junk.keras: not a model")
    bad(images.path, "--model", tiny_model, "-o", out, "--threshold", "1.5", match="--threshold")
    bad(images.path, "--model", tiny_model, "-o", out, "--tile", "8,8", "--halo", "8",
        match="--tile: tile 8 is too small for halo 8")
    incomplete = st.create_image(tmp_path / "inc.zarr", shape=(1, 1, 8, 8), dtype="uint8",
                                 job=st.make_job("x", parameters={}))
    bad(incomplete.path, "--model", tiny_model, "-o", out, match="incomplete")
    assert not out.exists()


def test_existing_prediction_refused(tmp_path, tiny_model, client):
    images = make_image_store(tmp_path / "im.zarr", smooth_images((1, 1, 32, 32)))
    predict(images.path, tiny_model, tmp_path / "p.zarr", client=client)
    before = st.open_prediction(tmp_path / "p.zarr").mask.array[:]
    with pytest.raises(InputError, match="already exists and is complete"):
        predict(images.path, tiny_model, tmp_path / "p.zarr", client=client)
    np.testing.assert_array_equal(st.open_prediction(tmp_path / "p.zarr").mask.array[:], before)


@pytest.mark.slow
def test_kill_9_then_rerun_identical(tmp_path, tiny_model, client):
    arr = smooth_images((150, 1, 32, 48), seed=4)
    images = make_image_store(tmp_path / "im.zarr", arr)
    predict(images.path, tiny_model, tmp_path / "ref.zarr", client=client)
    _, ref_prob, ref_mask = read_pred(tmp_path / "ref.zarr")

    out = tmp_path / "p.zarr"
    proc = subprocess.Popen(VOLSEG + ["predict", str(images.path), "--model", str(tiny_model),
                                      "-o", str(out), "-q", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    ledger = out / st.LEDGER / "c"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.exists() and sum(1 for p in ledger.iterdir() if p.name.isdigit()) >= 5:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job: client, scheduler and workers
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    time.sleep(0.5)
    done_after_kill = sum(1 for p in ledger.iterdir() if p.name.isdigit())
    assert 0 < done_after_kill < 150
    with pytest.raises(InputError, match="incomplete"):
        st.open_prediction(out)

    summary = predict(images.path, tiny_model, out, client=client)
    assert summary["computed"] == 150 - done_after_kill
    assert summary["skipped"] == done_after_kill
    _, prob, mask = read_pred(out)
    np.testing.assert_array_equal(prob, ref_prob)
    np.testing.assert_array_equal(mask, ref_mask)


@pytest.mark.slow
def test_roi_skips_blocks_outside_and_zeroes_pixels_outside(tmp_path, cli):
    """Blocks entirely outside the ROI are not run; inside it the prediction equals the
    full one, outside it is zero."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 255, (3, 2, 40, 56), dtype=np.uint8)
    make_image_store(tmp_path / "i.zarr", images)
    roi = np.zeros((3, 1, 40, 56), np.uint8)
    roi[1, :, 5:30, 10:50] = 1  # only time point 1 has any ROI
    make_image_store(tmp_path / "roi.zarr", roi, mask=True)
    model = make_tiny_model(tmp_path / "m.keras")
    from volseg.stages.predict import predict

    full = predict(tmp_path / "i.zarr", model, tmp_path / "full.zarr", threshold=0.5)
    part = predict(tmp_path / "i.zarr", model, tmp_path / "part.zarr", threshold=0.5,
                   roi=tmp_path / "roi.zarr")
    assert part["roi_skipped"] == 2 and full["roi_skipped"] == 0  # t=0 and t=2 not run
    p_full = st.open_prediction(tmp_path / "full.zarr")
    p_part = st.open_prediction(tmp_path / "part.zarr")
    inside = np.broadcast_to(roi != 0, images.shape)
    for name in ("probability", "mask"):
        a = getattr(p_full, name).array[...]
        b = getattr(p_part, name).array[...]
        np.testing.assert_array_equal(b[inside], a[inside])
        assert not b[~inside].any()
    assert p_part.volseg["job"]["parameters"]["roi"]["path"].endswith("roi.zarr")
    code, out, err = cli("predict", tmp_path / "i.zarr", "--model", model, "-o",
                         tmp_path / "c.zarr", "--roi", tmp_path / "roi.zarr")
    assert code == 0 and "2 outside --roi not run" in out
    bad = np.zeros((1, 1, 40, 50), np.uint8)
    make_image_store(tmp_path / "bad.zarr", bad, mask=True)
    code, out, err = cli("predict", tmp_path / "i.zarr", "--model", model, "-o",
                         tmp_path / "d.zarr", "--roi", tmp_path / "bad.zarr")
    assert code == 2 and err.startswith("volseg predict: error: --roi: ") and \
        "bad.zarr: ROI shape (1, 1, 40, 50) does not fit the images'" in err


# ----------------------------------------------------------------- test-time augmentation

def _symmetric_model(seed=0):
    """A model equivariant to rotations and flips: a 3x3 convolution whose kernels are
    averaged over the 8 symmetries of the square, then a per-pixel (1x1) layer."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    conv = model.layers[1]
    k, b = conv.get_weights()
    sym = sum(np.rot90(np.flip(k, 1) if f else k, r, axes=(0, 1))
              for r in range(4) for f in (False, True)) / 8
    conv.set_weights([sym, b])
    return model


def test_dihedral_transforms_are_the_eight_and_invert():
    from volseg.stages.predict import DIHEDRAL, dihedral, undo_dihedral

    x = np.arange(2 * 4 * 6).reshape(2, 4, 6, 1)
    seen = {dihedral(x, *d).tobytes() + bytes(dihedral(x, *d).shape) for d in DIHEDRAL}
    assert len(seen) == 8  # eight distinct images of a non-symmetric tile
    for d in DIHEDRAL:
        np.testing.assert_array_equal(undo_dihedral(dihedral(x, *d), *d), x)


def test_tta_of_an_equivariant_model_is_the_plain_prediction():
    from volseg.stages.predict import predict_batch_fn

    model = _symmetric_model()
    batch = np.random.default_rng(0).random((3, 32, 48, 1)).astype(np.float32)  # not square
    plain = predict_batch_fn(model)(batch)
    for size in (1, 3, 5):
        tta = predict_batch_fn(model, tta=True, batch_size=size)(batch)
        assert tta.shape == plain.shape == (3, 32, 48, 1)
        np.testing.assert_allclose(tta, plain, atol=1e-5)


def _manual_tta(model_path, frames, multiple):
    """The mean over the 8 transforms of whole padded frames, in numpy (float32 model)."""
    from volseg.models.unet import load_model

    model, _ = load_model(model_path, precision="float32")
    n, h, w = frames.shape
    hp, wp = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    x = np.pad(frames.astype(np.float32), ((0, 0), (0, hp - h), (0, wp - w)), mode="reflect")
    outs = []
    for r in range(4):
        for flip in (False, True):
            t = np.rot90(np.flip(x, 2) if flip else x, r, axes=(1, 2))
            y = np.asarray(model.predict_on_batch(np.ascontiguousarray(t)[..., None]))[..., 0]
            y = np.rot90(y, -r, axes=(1, 2))
            outs.append(np.flip(y, 2) if flip else y)
    return np.mean(outs, axis=0)[:, :h, :w]


def test_tta_of_a_unet_equals_the_numpy_mean_of_eight_transforms(tmp_path, tiny_model, client):
    arr = smooth_images((1, 2, 37, 53), seed=5)  # non-square, padded to 40 x 56
    images = make_image_store(tmp_path / "im.zarr", arr)
    predict(images.path, tiny_model, tmp_path / "plain.zarr", client=client, precision="float32")
    summary = predict(images.path, tiny_model, tmp_path / "tta.zarr", client=client,
                      precision="float32", tta=True, batch_size=3)
    assert summary["tta"] is True
    plain, tta = st.open_prediction(tmp_path / "plain.zarr"), st.open_prediction(tmp_path / "tta.zarr")
    assert plain.volseg["tta"] is False and tta.volseg["tta"] is True
    assert tta.volseg["job"]["parameters"]["tta"] is True
    assert "tta" not in plain.volseg["job"]["parameters"]  # old fingerprints unchanged
    p_plain = plain.probability.array[:][0].astype(np.float64) / 255
    p_tta = tta.probability.array[:][0].astype(np.float64) / 255
    manual = _manual_tta(tiny_model, arr[0], 4)
    assert np.abs(p_tta - manual).max() <= 0.5 / 255 + 1e-4
    assert np.abs(p_tta - p_plain).max() > 5 / 255  # a normal U-Net is not equivariant


@pytest.mark.slow
def test_tta_resume_mismatch_and_forest_refused(cli, tmp_path, tiny_model):
    images = make_image_store(tmp_path / "im.zarr", smooth_images((1, 1, 32, 32)))
    out = tmp_path / "p.zarr"
    code, _, err = cli("predict", images.path, "--model", tiny_model, "-o", out, "-q")
    assert code == 0, err
    group = zarr.open_group(out, mode="r+")  # as if the run had been interrupted
    attrs = dict(group.attrs["volseg"])
    attrs["complete"] = False
    group.attrs["volseg"] = attrs
    code, _, err = cli("predict", images.path, "--model", tiny_model, "-o", out, "--tta")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "unfinished prediction" in err and "tta: there False, now True" in err, err

    forest = tmp_path / "f.model"
    labels = make_image_store(tmp_path / "t.zarr", (smooth_images((2, 1, 48, 48)) > 128)
                              .astype(np.uint8), mask=True)
    imgs2 = make_image_store(tmp_path / "im2.zarr", smooth_images((2, 1, 48, 48)))
    code, _, err = cli("train", "--method", "forest", "--images", imgs2.path, "--truth",
                       labels.path, "-o", forest, "--val-timepoints", "1", "--trees", "3", "-q")
    assert code == 0, err
    code, _, err = cli("predict", imgs2.path, "--model", forest, "-o", tmp_path / "f.zarr", "--tta")
    assert code == 2 and err.startswith("volseg predict: error: --tta: only for U-Net"), err
    assert not (tmp_path / "f.zarr").exists()
