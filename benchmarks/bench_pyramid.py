"""Measure what a pyramid saves a viewer, and what it costs `volseg convert`.

For square uint16 frames of several sizes (default 1024, 2048, 4096), converts a small
stack of smooth noise with and without ``--pyramid`` and reports:

* ``frame ms``: the time to read one whole frame of level 0 (what napari loads on each
  slice change when there is no pyramid), median of ``--repeat`` cold-ish reads of
  different slices;
* ``level ms``: the same for the pyramid level of at most 1024 px on a side (what napari
  loads for a canvas of that size, zoomed out);
* ``convert s``: wall time of the conversion without and with the pyramid.

    .venv/bin/python benchmarks/bench_pyramid.py [--sizes 1024,2048,4096] [--frames 4]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from volseg.io import store as st
from volseg.stages.convert import convert


def read_ms(array, frames: int, repeat: int) -> float:
    times = []
    for k in range(repeat):
        start = time.perf_counter()
        array[0, k % frames]
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,2048,4096")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from _common import machine_line  # the table's machine: compare within one run

    print(machine_line(), flush=True)
    rng = np.random.default_rng(0)
    print(f"{'size':>6} {'frame ms':>9} {'level':>6} {'level ms':>9} "
          f"{'convert s':>10} {'+pyramid s':>11}")
    for size in (int(s) for s in args.sizes.split(",")):
        tmp = Path(tempfile.mkdtemp(prefix="bench_pyramid_"))
        try:
            base = rng.integers(0, 4096, (args.frames, size // 8, size // 8), dtype=np.uint16)
            stack = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)  # compressible, like data
            stack += rng.integers(0, 64, stack.shape, dtype=np.uint16)
            (tmp / "frames").mkdir()
            for z, frame in enumerate(stack):
                tifffile.imwrite(tmp / "frames" / f"t000_z{z:03d}.tif", frame)
            walls = {}
            for pyramid in (False, True):
                out = tmp / f"{pyramid}.zarr"
                start = time.perf_counter()
                convert([tmp / "frames"], out, pyramid=pyramid)
                walls[pyramid] = time.perf_counter() - start
            image = st.open_image(tmp / "True.zarr")
            paths = image.level_paths
            level = next(p for p in paths if max(image.dataset(p).shape[2:]) <= 1024)
            full = read_ms(image.array, args.frames, args.repeat)
            small = read_ms(image.dataset(level), args.frames, args.repeat)
            print(f"{size:>6} {full:>9.1f} {level:>6} {small:>9.1f} {walls[False]:>10.2f} "
                  f"{walls[True]:>11.2f}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
