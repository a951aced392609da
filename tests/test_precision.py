"""--precision auto: bfloat16 only where the hardware computes it natively, and recorded."""

from __future__ import annotations

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

    assert resolve_compile("auto", precision, flags=flags, gpus=gpus) == expected
    for asked in ("graph", "xla"):  # an explicit choice is kept whatever the hardware
        assert resolve_compile(asked, precision, flags=flags, gpus=gpus) == asked
    with pytest.raises(InputError, match="^compile: must be one of auto, graph, xla"):
        resolve_compile("jit", precision, flags=flags, gpus=gpus)


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
