"""What the benchmarks share: the machine line every table starts with."""

from __future__ import annotations

import os

#: The CPU flags that decide volseg's speed (vector width, bfloat16, matrix units).
SPEED_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
               "amx_tile")


def machine_line() -> str:
    """CPU model, widest instruction set, the flags that matter, cores and load: the line
    to print above every table (figures compare only within one run on one machine)."""
    from volseg.models.unet import cpu_flags, cpu_isa, cpu_model

    flags = cpu_flags()
    shown = " ".join(f for f in SPEED_FLAGS if f in flags) or "none of " + " ".join(SPEED_FLAGS)
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"machine: {cpu_model()}, {cpu_isa(flags)} (flags: {shown})"
            f"{f', capped by ONEDNN_MAX_CPU_ISA={cap}' if cap else ''}; "
            f"{len(os.sched_getaffinity(0))} usable cores; load average "
            f"{os.getloadavg()[0]:.2f}")
