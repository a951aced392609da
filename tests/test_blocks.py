"""The block engine's runner sizes itself to the cores this process may use."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from volseg.engine.blocks import run_blocks, usable_cores


def test_usable_cores_is_the_affinity_not_the_machine():
    if os.cpu_count() < 2:
        pytest.skip("needs 2 cores to restrict to 1")
    # As under Slurm or taskset: the process may run on one core of the machine's two.
    code = ("import os, threading; os.sched_setaffinity(0, {0});"
            "from volseg.engine.blocks import run_blocks, usable_cores;"
            "names = set();"
            "run_blocks(lambda i: names.add(threading.current_thread().name), range(40));"
            "print(usable_cores(), len(names), os.cpu_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    cores, threads, machine = map(int, out.stdout.split())
    assert (cores, threads) == (1, 1) and machine >= 2


def test_runner_uses_every_usable_core_by_default():
    import threading

    names = set()
    barrier = threading.Barrier(min(usable_cores(), 4), timeout=10)

    def block(i):
        names.add(threading.current_thread().name)
        if i < barrier.parties:
            barrier.wait()  # the first blocks run side by side, or this times out
        return i

    assert run_blocks(block, range(8)) >= 0
    assert len(names) == usable_cores()
