"""Depth context (2.5D, ``--context K``): the slices each stage reads, at the stack's ends
and at block boundaries, and that training, validation and predict agree."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from volseg.testing import make_image_store
from volseg.io import store as st
from volseg.ops.context import channels_from_slab, check_context, context_slices, read_context
from volseg.errors import InputError
from volseg.training.sampler import Augment, PatchSampler, scan_training_data


def z_coded(shape):
    """uint8 images whose every pixel of frame (t, z) is 50 t + 10 z (its slice, exactly)."""
    t = np.arange(shape[0])[:, None, None, None]
    z = np.arange(shape[1])[None, :, None, None]
    return np.broadcast_to(50 * t + 10 * z, shape).astype(np.uint8)


def edge_reference(stack, k):
    """(z, y, x) -> (z, y, x, K) by numpy's edge padding: the documented end rule."""
    r = (k - 1) // 2
    padded = np.pad(stack, ((r, r), (0, 0), (0, 0)), mode="edge")
    return np.stack([padded[j:j + len(stack)] for j in range(k)], axis=-1)


def reflect_reference(stack, k):
    """The rule *not* chosen, to show the tests tell the two apart."""
    r = (k - 1) // 2
    padded = np.pad(stack, ((r, r), (0, 0), (0, 0)), mode="reflect")
    return np.stack([padded[j:j + len(stack)] for j in range(k)], axis=-1)


# --------------------------------------------------------------------------- the rule

def test_context_slices_clamp_to_the_edge_slice():
    assert context_slices(0, 6, 3).tolist() == [0, 0, 1]
    assert context_slices(5, 6, 3).tolist() == [4, 5, 5]
    assert context_slices(3, 6, 5).tolist() == [1, 2, 3, 4, 5]
    assert context_slices(0, 6, 5).tolist() == [0, 0, 0, 1, 2]
    assert context_slices(0, 1, 5).tolist() == [0] * 5  # one slice: repeated
    assert context_slices(1, 2, 3).tolist() == [0, 1, 1]
    assert context_slices(4, 9, 1).tolist() == [4]


@pytest.mark.parametrize("bad", [0, 2, 4, -1, 1.5, "3"])
def test_context_must_be_odd_and_positive(bad):
    with pytest.raises(InputError) as err:
        check_context(bad)
    assert err.value.param == "context"


def test_channels_from_a_clipped_slab_equal_edge_padding():
    stack = np.random.default_rng(0).integers(0, 255, (7, 5, 6)).astype(np.uint8)
    for k in (3, 5):
        ref = edge_reference(stack, k)
        assert np.array_equal(channels_from_slab(stack, 0, range(7), 7, k), ref)
        r = (k - 1) // 2
        for z in range(7):  # a slab cut to exactly what slice z needs
            lo, hi = max(0, z - r), min(7, z + r + 1)
            got = channels_from_slab(stack[lo:hi], lo, [z], 7, k)[0]
            assert np.array_equal(got, ref[z])
    with pytest.raises(ValueError):
        channels_from_slab(stack[1:3], 1, [1], 7, 3)  # slice 0 is not in the slab


# --------------------------------------------------------------------------- sampling

def _sampler(images, *, context, augment=None, patch=(16, 16)):
    labels = np.zeros(images.shape, np.uint8)
    labels[:, :, 10:12, :] = 1
    frames = [(t, z) for t in range(images.shape[0]) for z in range(images.shape[1])]
    index = scan_training_data(images, labels, frames)
    return PatchSampler(images, labels, index, patch=patch, context=context,
                        augment=augment or Augment.none(), normalization=(0.0, 255.0)), labels


@pytest.mark.parametrize("k", [3, 5])
def test_sampler_channels_are_the_neighbouring_slices(k):
    """Every draw's channel j is slice clamp(z - r + j) of its own time point, at z = 0
    and z = last too; truth and weight are the centre slice's."""
    images = z_coded((2, 4, 32, 32))
    sampler, labels = _sampler(images, context=k)
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(80):
        x, y, info = sampler.draw(rng)
        t, z = info["frame"]
        seen.add(z)
        oy, ox = info["origin"]
        assert x.shape == (16, 16, k) and x.dtype == np.float32
        want = [50 * t + 10 * zz for zz in context_slices(z, 4, k)]
        assert np.array_equal(x[0, 0], np.float32(want))
        assert np.all(x == x[:1, :1])  # the whole patch of each channel is that slice
        assert np.array_equal(y[..., 0], labels[t, z, oy:oy + 16, ox:ox + 16])
        assert np.all(y[..., 1] == 1)
    assert {0, 3} <= seen


def test_sampler_augments_every_channel_alike():
    """Flips, rotations and intensity jitter: each channel is the centre channel's
    transformed image plus a constant (the slices differ by a constant here)."""
    rng0 = np.random.default_rng(2)
    base = rng0.integers(0, 150, (1, 1, 32, 32))
    images = (base + 20 * np.arange(5)[None, :, None, None]).astype(np.uint8)
    sampler, _ = _sampler(images, context=3, augment=Augment())
    rng = np.random.default_rng(3)
    for _ in range(20):
        x, _, info = sampler.draw(rng)
        diffs = x - x[..., 1:2]
        assert np.allclose(diffs, diffs[:1, :1], atol=1e-3)  # same transform for all
        assert np.ptp(x[..., 1]) > 0


def test_sampler_on_a_single_slice_repeats_it():
    images = z_coded((3, 1, 32, 32)) + np.arange(32, dtype=np.uint8)[None, None, :, None]
    sampler, _ = _sampler(images, context=5)
    x, _, info = sampler.draw(np.random.default_rng(0))
    assert x.shape == (16, 16, 5)
    assert all(np.array_equal(x[..., j], x[..., 0]) for j in range(5))


def test_sampler_context_1_is_the_frame_alone():
    images = z_coded((2, 3, 32, 32))
    a, _ = _sampler(images, context=1)
    x, _, info = a.draw(np.random.default_rng(4))
    t, z = info["frame"]
    assert x.shape == (16, 16, 1) and np.all(x == 50 * t + 10 * z)


def test_read_context_reads_one_slab(tmp_path):
    images = make_image_store(tmp_path / "i.zarr", z_coded((2, 5, 8, 8)))
    got = read_context(images.array, 1, 4, context=3)
    assert got.shape == (8, 8, 3) and got[0, 0].tolist() == [80, 90, 90]


# --------------------------------------------------------------------------- predict

def k_model(path, k, *, seed=0):
    """An untrained, seeded U-Net taking K slices, saved as a volseg model."""
    import keras

    from volseg.models.unet import base_info, build_unet, save_model

    keras.utils.set_random_seed(seed)
    model = build_unet(base_filters=4, depth=2, normalization=(0.0, 255.0), channels=k)
    save_model(model, path, info=base_info(depth=2, base_filters=4, dropout=0.1,
                                           batch_norm=True, normalization=(0.0, 255.0),
                                           context=k))
    return path


def slices_differ(shape, seed=0):
    """Smooth images, independent from slice to slice (so channels matter)."""
    raw = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape),
                                  sigma=(0, 0, 2, 2))
    return ((raw - raw.min()) / np.ptp(raw) * 255).astype(np.uint8)


def reference(model_path, stack, k, rule=edge_reference):
    """Whole-stack prediction in numpy + Keras: channels by ``rule``, frames padded to
    the model's multiple (4) by reflection as predict pads them."""
    from volseg.models.unet import load_model

    model, _ = load_model(model_path)
    x = rule(stack.astype(np.float32), k)
    n, h, w, _ = x.shape
    hp, wp = -(-h // 4) * 4, -(-w // 4) * 4
    x = np.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)), mode="reflect")
    out = np.concatenate([np.asarray(model.predict_on_batch(x[i:i + 1])) for i in range(n)])
    return out[:, :h, :w, 0]


def store_with_shards(path, array, zdepth):
    """An image store whose blocks (shards) hold ``zdepth`` slices."""
    job = st.make_job("test", parameters={})
    shape = array.shape
    image = st.create_image(path, shape=shape, dtype=array.dtype, job=job,
                            chunks=(1, 1, shape[2], shape[3]),
                            shards=(1, zdepth, shape[2], shape[3]))
    image.array[...] = array
    st.finish(image.group)
    return st.open_image(path)


@pytest.fixture(scope="module")
def model3(tmp_path_factory):
    return k_model(tmp_path_factory.mktemp("k3") / "k3.keras", 3)


def test_predict_z_halo_at_ends_and_block_boundaries(tmp_path, model3):
    """K = 3 on blocks of 1, 2 and all 5 slices: the same probabilities, equal to a
    whole-stack numpy reference with the edge rule (and not the reflect rule)."""
    from volseg.stages.predict import predict

    arr = slices_differ((2, 5, 37, 53))
    probs = {}
    for zdepth in (1, 2, 5):
        images = store_with_shards(tmp_path / f"i{zdepth}.zarr", arr, zdepth)
        summary = predict(images.path, model3, tmp_path / f"p{zdepth}.zarr", threshold=0.5,
                          batch_size=1, precision="float32")
        assert summary["blocks"] == 2 * -(-5 // zdepth)
        pred = st.open_prediction(tmp_path / f"p{zdepth}.zarr")
        assert pred.volseg["job"]["parameters"]["context"] == 3
        probs[zdepth] = pred.probability.array[:]
    assert np.array_equal(probs[1], probs[2]) and np.array_equal(probs[1], probs[5])
    for t in range(2):
        want = reference(model3, arr[t], 3)
        got = probs[1][t].astype(np.float64) / 255
        assert np.abs(got - want).max() <= 0.5 / 255 + 1e-3
        wrong = reference(model3, arr[t], 3, rule=reflect_reference)
        assert np.abs(wrong[[0, -1]] - want[[0, -1]]).max() > 5 / 255  # the ends matter
        assert np.abs(wrong[1:-1] - want[1:-1]).max() < 1e-6


def test_predict_k3_on_a_single_slice_stack_repeats_it(tmp_path, model3):
    from volseg.stages.predict import predict

    arr = slices_differ((2, 1, 24, 24), seed=3)
    images = make_image_store(tmp_path / "i.zarr", arr)
    predict(images.path, model3, tmp_path / "p.zarr", threshold=0.5, batch_size=1,
            precision="float32")
    got = st.open_prediction(tmp_path / "p.zarr").probability.array[:, 0] / 255
    for t in range(2):
        want = reference(model3, arr[t], 3)[0]
        assert np.abs(got[t] - want).max() <= 0.5 / 255 + 1e-3


def test_context_1_predict_keeps_its_job_and_2d_input(tmp_path):
    """K = 1 models (and models without the key) read no z-halo, feed 2D frames and
    record no context in the job, so existing predictions keep their fingerprint."""
    from volseg.testing import make_tiny_model
    from volseg.models.unet import read_model_info
    from volseg.stages.predict import _unet_method

    path = make_tiny_model(tmp_path / "m.keras")
    info = read_model_info(path)
    method = _unet_method(info, (1, 4, 32, 32), (1, 4, 32, 32), precision="float32",
                          tile=None, halo=None, blend=None, batch_size=4)
    assert method["z_halo"] == 0 and "context" not in method["parameters"]
    info.pop("context")
    old = _unet_method(info, (1, 4, 32, 32), (1, 4, 32, 32), precision="float32",
                       tile=None, halo=None, blend=None, batch_size=4)
    assert old["parameters"] == method["parameters"] and old["z_halo"] == 0


# --------------------------------------------------------------------------- training

def tubes(shape, seed=0):
    """Tubes running along z (a disc in every slice) under noise: a tiny 4D dataset."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[:shape[2], :shape[3]]
    for t in range(shape[0]):
        for _ in range(3):
            cy, cx = rng.integers(6, shape[2] - 6), rng.integers(6, shape[3] - 6)
            labels[t, :, (yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 1
    images = (rng.normal(80, 30, shape) + 60 * labels).clip(0, 255).astype(np.uint8)
    return images, labels


@pytest.mark.slow
def test_a_context_3_model_trains_validates_and_predicts_alike(tmp_path):
    """Train with context 3; predict reads K from the model (nothing passed), and the
    validator's probabilities of the end slices equal predict's."""
    from volseg.models.unet import load_model, read_model_info
    from volseg.stages.predict import predict
    from volseg.training import Validator, train

    images, labels = tubes((3, 4, 32, 32))
    im = make_image_store(tmp_path / "i.zarr", images)
    make_image_store(tmp_path / "t.zarr", labels, mask=True)
    summary = train(im.path, tmp_path / "t.zarr", tmp_path / "m.keras", epochs=1,
                    steps_per_epoch=3, patch=16, batch=2, filters=4, depth=2, context=3,
                    precision="float32")
    info = read_model_info(summary["model"])
    assert info["context"] == 3
    model, _ = load_model(summary["model"])
    assert model.inputs[0].shape[-1] == 3
    predict(im.path, summary["model"], tmp_path / "p.zarr", batch_size=1, precision="float32")
    prob = st.open_prediction(tmp_path / "p.zarr").probability.array[:]
    validator = Validator(im.array, st.open_image(tmp_path / "t.zarr").array, [(2, 0), (2, 3)],
                          multiple=4, margin=info["margin"], context=3)
    from volseg.ops.metrics import quantise

    for t, z in validator.frames:
        v = quantise(validator.probabilities(model, t, z)).astype(int)
        assert np.abs(v - prob[t, z]).max() <= 1


def test_init_must_match_the_models_context(tmp_path, model3):
    from volseg.training import TrainConfig, open_inputs

    images, labels = tubes((2, 2, 16, 16))
    make_image_store(tmp_path / "i.zarr", images)
    make_image_store(tmp_path / "t.zarr", labels, mask=True)
    config = TrainConfig(tmp_path / "i.zarr", tmp_path / "t.zarr", tmp_path / "m.keras",
                         init=model3, patch=16)
    with pytest.raises(InputError) as err:
        open_inputs(config)
    assert err.value.param == "context" and "3" in err.value.message


@pytest.mark.parametrize("args, words", [
    (["--context", "2"], "--context: must be an odd number"),
    (["--context", "3", "--method", "forest"], "--context: the random forest"),
])
def test_cli_refuses_bad_context_in_one_line(tmp_path, cli, args, words):
    images, labels = tubes((2, 2, 16, 16))
    make_image_store(tmp_path / "i.zarr", images)
    make_image_store(tmp_path / "t.zarr", labels, mask=True)
    code, out, err = cli("train", "--images", tmp_path / "i.zarr", "--truth", tmp_path / "t.zarr",
                         "-o", tmp_path / "m.keras", "--patch", "16", *args)
    assert code == 2
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
