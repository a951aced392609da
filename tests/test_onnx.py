"""ONNX Runtime for volseg's own U-Nets: the converted network computes what Keras does."""

from __future__ import annotations

import numpy as np
import pytest

from volseg.testing import make_tiny_model

pytest.importorskip("onnxruntime")


def test_the_converted_network_matches_keras_and_runs_in_predict(tmp_path):
    from volseg.engine.blocks import MODEL_THREADS
    from volseg.models.onnx import onnx_network
    from volseg.models.unet import load_model
    from volseg.stages.predict import predict_batch_fn

    model, _ = load_model(make_tiny_model(tmp_path / "m.keras"), precision="float32")
    tiles = np.random.default_rng(0).uniform(0, 255, (3, 96, 128, 1)).astype(np.float32)
    want = np.asarray(model.predict_on_batch(tiles), np.float32)
    network = onnx_network(model, MODEL_THREADS)
    assert network is not None
    got = predict_batch_fn(network)(tiles)
    assert got.shape == want.shape == (3, 96, 128, 1)
    assert float(np.abs(got - want).max()) < 1e-5 and want.std() > 0


def test_a_model_call_that_gives_a_one_element_list_gives_its_array():
    """Keras models declared with ``outputs=[y]`` may answer a list of one array."""
    from volseg.stages.predict import _one_output

    y = np.random.default_rng(1).random((1, 8, 8, 1)).astype(np.float32)
    for out in ([y], (y,), y):
        got = _one_output(out)
        assert got.shape == (1, 8, 8, 1) and got.dtype == np.float32
        np.testing.assert_array_equal(got, y)
