"""--precision auto: bfloat16 only where the hardware computes it natively, and recorded."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from volseg.testing import make_image_store, make_tiny_model
from volseg.io import store as st
from volseg.errors import InputError
from volseg.models.unet import native_bf16, resolve_precision


@pytest.mark.parametrize("flags,gpus,expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, [], "bfloat16"),   # Zen 4, Cooper Lake
    ({"avx2", "amx_bf16", "amx_tile"}, [], "bfloat16"),     # Sapphire Rapids
    ({"avx2", "avx512f"}, [], "float32"),                   # Skylake-X: emulated, slow
    ({"sse4_2"}, [], "float32"),                            # no AVX-512 at all
    (set(), [(8, 0)], "bfloat16"),                          # A100
    ({"avx512_bf16"}, [(7, 0)], "float32"),                 # V100 computes, CPU does not
    (set(), [(9, 0), (7, 5)], "float32"),                   # mixed GPUs: the weakest decides
])
def test_auto_picks_bfloat16_only_on_native_hardware(flags, gpus, expected):
    assert resolve_precision("auto", flags=flags, gpus=gpus) == expected
    assert native_bf16(flags=flags, gpus=gpus) == (expected == "bfloat16")
    # an explicit choice is kept whatever the hardware
    assert resolve_precision("float32", flags=flags, gpus=gpus) == "float32"
    assert resolve_precision("bfloat16", flags=flags, gpus=gpus) == "bfloat16"


def test_unknown_precision_names_the_parameter():
    with pytest.raises(InputError, match="^precision: must be one of auto, float32, bfloat16"):
        resolve_precision("fp8")


def test_predict_records_the_precision_it_used(tmp_path):
    from volseg.models.unet import cpu_flags
    from volseg.stages.predict import predict

    images = np.random.default_rng(0).integers(0, 255, (1, 2, 32, 48), dtype=np.uint8)
    make_image_store(tmp_path / "i.zarr", images)
    model = make_tiny_model(tmp_path / "m.keras")
    summary = predict(tmp_path / "i.zarr", model, tmp_path / "p.zarr", precision="auto")
    expected = resolve_precision("auto", flags=cpu_flags(), gpus=[])
    assert summary["precision_used"] == [expected]
    pred = st.open_prediction(tmp_path / "p.zarr")
    assert pred.volseg["precision"] == "auto" and pred.volseg["precision_used"] == [expected]


@pytest.mark.parametrize("flags,gpus,precision,expected", [
    ({"avx", "avx2", "fma"}, [], "float32", "xla"),                # AVX2 only (Zen 2/3)
    ({"avx2", "avx512f", "avx512_bf16"}, [], "float32", "graph"),  # oneDNN's AVX-512 wins
    ({"avx2", "avx512f", "avx512_bf16"}, [], "bfloat16", "graph"),
    ({"avx2"}, [], "bfloat16", "graph"),                           # XLA emulates bfloat16
    ({"avx2"}, [(8, 0)], "float32", "graph"),                      # GPUs: as before
])
def test_auto_compiles_the_step_with_xla_only_on_cpus_without_avx512(flags, gpus, precision,
                                                                      expected):
    from volseg.models.unet import resolve_compile

    tf = dict(flags=flags, gpus=gpus, backend="tensorflow")
    assert resolve_compile("auto", precision, **tf) == expected
    for asked in ("graph", "xla"):  # an explicit choice is kept whatever the hardware
        assert resolve_compile(asked, precision, **tf) == asked
    with pytest.raises(InputError, match="^compile: must be one of auto, graph, xla"):
        resolve_compile("jit", precision, **tf)
    # JAX runs a step it does not compile op by op: every choice compiles with XLA there.
    for asked in ("auto", "graph", "xla"):
        assert resolve_compile(asked, precision, flags=flags, gpus=gpus, backend="jax") == "xla"


_JAX_TRAINING_STEP = """
import sys
from volseg.training import TrainConfig, resolve_machine_choices
lines = []
for asked in ("auto", "graph"):
    config = resolve_machine_choices(TrainConfig("i", "t", "o", compile=asked), lines.append)
    assert config.compile == "xla", (asked, config.compile)
import keras
assert keras.backend.backend() == "jax"
print(lines[-1])
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_training_on_jax_compiles_the_step():
    # Keras on JAX with jit_compile=False runs the step op by op (4.3x slower on a CPU
    # here, far more on a GPU); volseg's "graph" is TensorFlow's and must not mean that.
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", _JAX_TRAINING_STEP], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "step compiled by XLA (JAX has no graph mode" in run.stdout


@pytest.mark.parametrize("flags,isa", [
    ({"avx", "avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "AMX"),
    ({"avx", "avx2", "avx512f", "avx512_bf16"}, "AVX-512 BF16"),
    ({"avx", "avx2", "avx512f"}, "AVX-512"),
    ({"avx", "avx2", "fma"}, "AVX2"),
    ({"sse4_2"}, "SSE"),
])
def test_cpu_isa_names_the_widest_instruction_set(flags, isa):
    from volseg.models.unet import cpu_isa

    assert cpu_isa(flags) == isa


def test_onednn_cap_makes_volseg_choose_as_on_an_avx2_machine(monkeypatch):
    # ONEDNN_MAX_CPU_ISA=AVX2 is how an AVX-512 machine imitates an AVX2 one: volseg's
    # own choices (precision, step compilation, what it prints) must follow the cap.
    from volseg.models.unet import cpu_flags, cpu_isa, resolve_compile

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = cpu_flags()
    assert not any(f.startswith(("avx512", "amx")) for f in capped)
    assert cpu_isa(capped) in ("AVX2", "AVX", "SSE")
    assert resolve_precision("auto", flags=capped, gpus=[]) == "float32"
    assert resolve_compile("auto", "float32", flags=capped, gpus=[]) == "xla"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert capped <= cpu_flags()


_JAX_NUMERICS = """
import sys
from pathlib import Path
from volseg.testing import make_tiny_model
from volseg.stages.predict import cached_model, numerics
path = make_tiny_model(Path(sys.argv[1]) / "m.keras")
print(numerics(cached_model(str(path), "sha", "float32")))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_a_store_records_the_keras_backend_that_predicted(tmp_path):
    # numerics_used must name what computed: JAX's kernels are not TensorFlow's.
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", _JAX_NUMERICS, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    line = run.stdout.strip().splitlines()[-1]
    assert line.startswith("float32, JAX, ") and "TensorFlow" not in line, line
    assert line.endswith("JAX default (every core) threads"), line


class _RecordingModel:
    """Stands in for a Keras model on a GPU (none here): records each call's batch."""

    volseg_precision, volseg_runtime, volseg_gpus = "bfloat16", None, [(9, 0)]

    def __init__(self):
        self.calls = []

    def predict_on_batch(self, x):
        self.calls.append(len(x))
        return x[..., :1] * 0.5


def test_a_gpu_takes_a_batch_of_tiles_per_call_and_the_store_says_so():
    from volseg.stages.predict import numerics, predict_batch_fn

    tiles = np.random.default_rng(0).random((4, 16, 16, 1)).astype(np.float32)
    gpu = _RecordingModel()
    np.testing.assert_array_equal(predict_batch_fn(gpu)(tiles), tiles * 0.5)
    assert gpu.calls == [4]
    line = numerics(gpu, batch_size=4)
    assert "1 GPU(s) (compute capability 9.0), 4 tiles per call" in line, line
    cpu = _RecordingModel()
    cpu.volseg_gpus = []
    predict_batch_fn(cpu)(tiles)
    assert cpu.calls == [1, 1, 1, 1]  # one tile per call: the same bits whatever --batch


def test_calls_of_a_model_that_cannot_share_take_turns():
    # Keras on JAX donates the model's state to each call on a GPU (none here): two
    # threads in one call freed each other's buffers. A model with a call lock is
    # never entered by two threads at once.
    import threading
    import time

    from volseg.stages.predict import predict_batch_fn

    class Shy(_RecordingModel):
        inside = most = 0

        def predict_on_batch(self, x):
            type(self).inside += 1
            type(self).most = max(type(self).most, type(self).inside)
            time.sleep(0.01)
            type(self).inside -= 1
            return super().predict_on_batch(x)

    model = Shy()
    model.volseg_call_lock = threading.Lock()
    run = predict_batch_fn(model)
    tiles = np.zeros((2, 8, 8, 1), np.float32)
    threads = [threading.Thread(target=run, args=(tiles,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Shy.most == 1 and len(model.calls) == 4
