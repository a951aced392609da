"""Tests for volseg.model: the U-Net and the volseg model file."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from volseg.errors import InputError
from volseg.models.unet import (
    base_info,
    build_unet,
    count_parameters,
    default_margin,
    file_sha256,
    load_model,
    model_normalization,
    read_model_info,
    receptive_field,
    save_model,
    update_model_info,
)

TINY = dict(base_filters=2, depth=2, dropout=0.1, batch_norm=True)


def tiny_info(**kw):
    return base_info(depth=TINY["depth"], base_filters=TINY["base_filters"],
                     dropout=TINY["dropout"], batch_norm=TINY["batch_norm"],
                     normalization=(10.0, 200.0), patch=(32, 32), **kw)


@pytest.fixture(scope="module")
def tiny_model():
    return build_unet(**TINY, normalization=(10.0, 200.0))


@pytest.fixture
def frames():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(2, 32, 48, 1)).astype("float32")


def test_output_shape_and_range(tiny_model, frames):
    out = np.asarray(tiny_model.predict_on_batch(frames))
    assert out.shape == frames.shape
    assert out.dtype == np.float32
    assert np.all(out >= 0.0) and np.all(out <= 1.0)
    assert out.std() > 0  # not a constant


def test_default_model_is_the_reports():
    model = build_unet()
    # The report's network (16 base filters, 4 levels) has exactly this many weights.
    assert count_parameters(model) == 2_164_305
    assert model.input_shape == (None, None, None, 1)
    assert model.output_shape == (None, None, None, 1)


def test_normalization_lives_in_the_model(tiny_model):
    assert model_normalization(tiny_model) == pytest.approx((10.0, 200.0))
    rescale = tiny_model.get_layer("normalize")
    x = np.array([[[[10.0]], [[200.0]]]], dtype="float32")
    assert np.asarray(rescale(x)).ravel() == pytest.approx([0.0, 1.0])
    with pytest.raises(ValueError):
        build_unet(normalization=(5.0, 5.0))


def test_margin_and_receptive_field():
    assert receptive_field(4) == 230
    assert default_margin(4) == 32 and default_margin(4) % 16 == 0
    assert default_margin(6) == 64  # rounded up to the multiple


def test_save_load_identical_predictions(tmp_path, tiny_model, frames):
    path = tmp_path / "m.keras"
    info = tiny_info(training={"epochs": 3}, provenance={"images": "x.zarr"})
    save_model(tiny_model, path, info=info)
    assert not [p for p in tmp_path.iterdir() if p.name != "m.keras"]  # no temp left
    model, loaded = load_model(path)
    np.testing.assert_array_equal(np.asarray(model.predict_on_batch(frames)),
                                  np.asarray(tiny_model.predict_on_batch(frames)))
    from volseg.models.unet import weights_digest

    # the record, plus the digest of the weights that load_model checks
    assert loaded == {**json.loads(json.dumps(info)), "weights_sha256": weights_digest(tiny_model)}
    assert loaded["multiple"] == 4 and loaded["margin"] == 32
    assert read_model_info(path)["training"] == {"epochs": 3}


def test_bfloat16_reload_is_close(tmp_path, tiny_model, frames):
    path = tmp_path / "m.keras"
    save_model(tiny_model, path, info=tiny_info())
    model, _ = load_model(path, precision="bfloat16")
    out = np.asarray(model.predict_on_batch(frames))
    assert out.dtype == np.float32
    ref = np.asarray(tiny_model.predict_on_batch(frames))
    assert np.abs(out - ref).max() < 0.05
    import keras

    assert keras.config.dtype_policy().name == "float32"  # global policy restored


def test_update_model_info(tmp_path, tiny_model, frames):
    path = tmp_path / "m.keras"
    save_model(tiny_model, path, info=tiny_info())
    before = file_sha256(path)
    new = update_model_info(path, threshold=0.37)
    assert new["threshold"] == 0.37
    assert read_model_info(path)["threshold"] == 0.37
    assert file_sha256(path) != before
    model, _ = load_model(path)  # still a loadable archive
    np.testing.assert_array_equal(np.asarray(model.predict_on_batch(frames)),
                                  np.asarray(tiny_model.predict_on_batch(frames)))


def test_file_sha256(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert file_sha256(p) == ("ba7816bf8f01cfea414140de5dae2223"
                              "b00361a396177a9cb410ff61f20015ad")


def test_bad_model_files(tmp_path, tiny_model):
    with pytest.raises(InputError, match="not found"):
        read_model_info(tmp_path / "missing.keras")
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "missing.keras")
    text = tmp_path / "text.keras"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a model: .*not one"):
        load_model(text)
    plain = tmp_path / "plain.keras"
    tiny_model.save(plain)  # a Keras model, but not a volseg one
    with pytest.raises(InputError, match="not a volseg model"):
        load_model(plain)
    # A volseg.json but broken Keras content.
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("volseg.json", json.dumps(tiny_info()))
        zf.writestr("config.json", "{not json")
    with pytest.raises(InputError, match="cannot load"):
        load_model(broken)
    with pytest.raises(InputError, match=".keras"):
        save_model(tiny_model, tmp_path / "m.h5", info=tiny_info())


JAX_SCRIPT = """
import sys, numpy as np
import keras
assert keras.backend.backend() == "jax", keras.backend.backend()
from volseg.models.unet import load_model
model, info = load_model(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(model.predict_on_batch(x)))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
@pytest.mark.slow
def test_tf_model_runs_under_jax(tmp_path, tiny_model, frames):
    path = tmp_path / "m.keras"
    save_model(tiny_model, path, info=tiny_info())
    np.save(tmp_path / "x.npy", frames)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(path),
                           str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jax_out = np.load(tmp_path / "y.npy")
    tf_out = np.asarray(tiny_model.predict_on_batch(frames))
    assert jax_out.shape == tf_out.shape
    assert np.abs(jax_out - tf_out).max() < 1e-4


def _resaved_with(path, out, change):
    """``path``'s network with ``change(weights)`` applied, saved as ``out`` with the
    original volseg.json (what flipped bytes with a recomputed zip checksum amount to)."""
    import keras

    net = keras.saving.load_model(path, compile=False)
    weights = net.get_weights()
    change(weights)
    net.set_weights(weights)
    net.save(out)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "a") as dst:
        dst.writestr("volseg.json", src.read("volseg.json"))
    return out


def test_a_model_is_checked_before_it_is_trusted(tmp_path, cli):
    from volseg.models.unet import load_model, update_model_info
    from volseg.testing import assert_refused, make_image_store, make_tiny_model

    images = np.random.default_rng(0).integers(0, 255, (1, 1, 32, 32), dtype=np.uint8)
    make_image_store(tmp_path / "i.zarr", images)
    good = make_tiny_model(tmp_path / "good.keras")
    load_model(good)  # a sound model loads

    def nan_bias(weights):
        bias = next(i for i, w in enumerate(weights) if w.ndim == 1)
        weights[bias][0] = np.nan

    def nudged(weights):
        weights[0].flat[0] += 0.25  # finite, but not what was trained

    cases = {
        "nan": (_resaved_with(good, tmp_path / "nan.keras", nan_bias), "NaN or infinite"),
        "changed": (_resaved_with(good, tmp_path / "changed.keras", nudged),
                    "weights differ from those its record names"),
    }
    for name, (threshold, wording) in {"threshold2": (2.0, "threshold 2.0"),
                                       "thresholdnan": (float("nan"), "threshold nan")}.items():
        path = tmp_path / f"{name}.keras"
        path.write_bytes(good.read_bytes())
        update_model_info(path, threshold=threshold)
        cases[name] = (path, wording)
    path = tmp_path / "context.keras"
    path.write_bytes(good.read_bytes())
    update_model_info(path, context=3)
    cases["context"] = (path, "depth context 3 but the network takes 1 input channel")
    for name, (path, wording) in cases.items():
        if name not in ("threshold2", "thresholdnan"):
            with pytest.raises(InputError, match=wording):
                load_model(path)
        line = assert_refused(cli("predict", tmp_path / "i.zarr", "--model", path, "-o",
                                  tmp_path / f"{name}.zarr"), str(path), wording)
        assert "--threshold" not in line  # the model's record is at fault, not an option
        assert not (tmp_path / f"{name}.zarr" / "zarr.json").exists() or not json.loads(
            (tmp_path / f"{name}.zarr" / "zarr.json").read_text())["attributes"].get(
            "volseg", {}).get("complete")
