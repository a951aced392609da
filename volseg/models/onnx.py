"""ONNX Runtime: the runtime of model zoo packages, and of volseg's own U-Nets in float32.

A float32 U-Net is converted once per process (Keras' ONNX export, through tf2onnx,
about 3 s for the default network) and run by ONNX Runtime instead of TensorFlow:
1.6x faster on the model alone on a 2-core AVX2 CPU, the same probabilities to within
float32 rounding (benchmarks/bench_predict.py). bfloat16 (what ``auto`` picks on CPUs
with AVX-512 BF16) stays on TensorFlow: ONNX Runtime's CPU kernels have no bfloat16.

Both runtimes run a fixed number of threads (:data:`volseg.engine.blocks.MODEL_THREADS`)
and one tile per call, so a store's bytes do not depend on the cores, worker processes
or ``--batch`` (tests/test_layout.py).
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np


def session(onnx: bytes, threads: int):
    """An ONNX Runtime session on the CPU with a fixed thread count (the same bits
    whatever cores the process has)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])


def keras_to_onnx(network) -> bytes:
    """``network`` (a Keras model on the TensorFlow backend) as ONNX bytes."""
    channels = int(network.inputs[0].shape[-1])
    network(np.zeros((1, 64, 64, channels), np.float32))  # Keras exports only a called model
    with tempfile.TemporaryDirectory(prefix="volseg-onnx-") as tmp, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf2onnx's use of deprecated numpy names
        path = os.path.join(tmp, "network.onnx")
        network.export(path, format="onnx", verbose=False)
        with open(path, "rb") as fh:
            return fh.read()


def runtime_version() -> str:
    import onnxruntime

    return f"ONNX Runtime {onnxruntime.__version__}"


class OnnxNetwork:
    """A Keras network run by ONNX Runtime, called as the Keras model is
    (``predict_on_batch``: float32 (b, H, W, K) in, the network's output out)."""

    def __init__(self, onnx: bytes, threads: int):
        self.session = session(onnx, threads)
        self.input_name = self.session.get_inputs()[0].name

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch,
                                                                          np.float32)})[0]


def onnx_network(model, threads: int) -> OnnxNetwork | None:
    """``model`` (float32, TensorFlow backend) on ONNX Runtime; None where that cannot
    be (another Keras backend, an export that fails, or a converted network whose output
    on a test input differs from the Keras model's in shape or by more than 1e-4), so the
    caller keeps Keras (a fresh copy: a failed export may have changed the model)."""
    from volseg.models.backend import import_keras

    if import_keras().backend.backend() != "tensorflow":
        return None
    channels = int(model.inputs[0].shape[-1])
    probe = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, channels)).astype(np.float32)
    try:
        want = model.predict_on_batch(probe)
        if isinstance(want, (list, tuple)) and len(want) == 1:  # outputs declared as a list
            want = want[0]
        want = np.asarray(want, np.float32)
        network = OnnxNetwork(keras_to_onnx(model), threads)
        got = np.asarray(network.predict_on_batch(probe), np.float32)
    except Exception:  # a layer tf2onnx cannot convert: TensorFlow runs it, as before
        return None
    if got.shape != want.shape or float(np.abs(got - want).max()) > 1e-4:
        return None
    return network
