"""What `volseg measure` costs: time per time point, and peak memory against the data.

Data: the labels of ``volseg synth`` (the generator's tubes, rendered without the
image), one time point written to every time point of a mask store:

* 523x821x8   -- the microscope's frames (z step 3 pixels);
* 64x1024x1024 -- a larger stack (``--large 64,1024,1024``);

Each run is ``volseg measure STORE --spacing 3,1,1 --threads N --json ...`` in a fresh
subprocess; its peak RSS is read from ``getrusage(RUSAGE_CHILDREN)`` by a wrapper
process that runs only it. Printed:

* time per time point (from the report) for both stacks;
* peak RSS at 1x (N time points, one per thread) and 8x (8 N time points): memory must
  not grow with the number of time points (target 8x <= 1.2 x 1x);
* the memory factor: (peak RSS of the large stack - peak RSS of a tiny one) / voxels of
  the large stack, at z resampling k = 3 (spacing 3,1,1) and k = 1 (spacing 1,1,1):
  bytes a task needs per voxel of its z-stack, ``MEMORY_BASE + MEMORY_PER_PLANE * k``.

With ``--flat``: only flat stacks of large frames (2 x 3000 x 3000, 2 and 8 x 1500 x 1500,
2 x 2000 x 2000 at k = 3), each one time point on one thread, their peak RSS above the
tiny stack's against ``task_bytes``' estimate (what ``--max-bytes`` is compared with).

    python benchmarks/bench_measure.py [--threads 2] [--large 64,1024,1024] [--out bench-output/measure]
    python benchmarks/bench_measure.py --flat
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402

_WRAP = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def labels(depth: int, height: int, width: int, seed: int = 1) -> np.ndarray:
    """The generator's tube labels of one time point (no image: fast, little memory)."""
    from volseg.data import synth

    segments = synth._segments(synth._network(depth, height, width, seed), 0.5, height, width,
                               seed)
    sd = synth._render_tubes((depth, height, width), segments)[0]
    return (sd <= 0).astype(np.uint8)


def make_store(path: Path, volume: np.ndarray, timepoints: int) -> Path:
    from volseg.io import store as st

    shutil.rmtree(path, ignore_errors=True)
    image = st.create_image(path, shape=(timepoints,) + volume.shape, dtype=np.uint8,
                            job=st.make_job("bench", parameters={}),
                            extra={"content": "mask"})
    for t in range(timepoints):
        image.array[t] = volume
    st.finish(image.group)
    return path


def run(store: Path, spacing: str, threads: int, out: Path) -> tuple[dict, float]:
    """(report, peak RSS in MiB) of one `volseg measure` subprocess."""
    report = out / "report.json"
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "volseg_cli.main", "measure", str(store), "--spacing", spacing,
           "--threads", str(threads), "--json", str(report), "-q"]
    done = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True,
                          check=True)
    return json.loads(report.read_text()), int(done.stdout.split()[-1]) / 1024


def flat(out: Path, rss_tiny: float) -> None:
    """Peak RSS of flat stacks against ``task_bytes`` (issue 29: it was 3x low there)."""
    from volseg.stages.measure import task_bytes

    print(machine_line())
    print(f"{'stack':28}{'spacing':>9}{'estimate MiB':>14}{'peak - tiny MiB':>17}{'ratio':>7}")
    for shape, spacing in (((2, 3000, 3000), "1,1,1"), ((2, 1500, 1500), "1,1,1"),
                           ((8, 1500, 1500), "1,1,1"), ((2, 2000, 2000), "3,1,1")):
        store = make_store(out / "flat.zarr", labels(*shape), 1)
        _, rss = run(store, spacing, 1, out)
        estimate = task_bytes(shape, tuple(float(v) for v in spacing.split(","))) / 2**20
        name = " x ".join(str(n) for n in shape)
        print(f"{name:28}{spacing:>9}{estimate:>14.0f}{rss - rss_tiny:>17.0f}"
              f"{estimate / (rss - rss_tiny):>7.2f}")
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--large", default="64,1024,1024", help="Z,Y,X of the larger stack")
    ap.add_argument("--out", type=Path, default=Path("bench-output/measure"))
    ap.add_argument("--flat", action="store_true", help="flat stacks against the estimate")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    n = args.threads

    tiny = make_store(args.out / "tiny.zarr", labels(4, 32, 32), 1)
    _, rss_tiny = run(tiny, "3,1,1", 1, args.out)
    if args.flat:
        flat(args.out, rss_tiny)
        return
    frames = labels(8, 523, 821)
    rows = []
    one, rss_1 = run(make_store(args.out / "x1.zarr", frames, n), "3,1,1", n, args.out)
    eight, rss_8 = run(make_store(args.out / "x8.zarr", frames, 8 * n), "3,1,1", n, args.out)
    rows.append((f"8x523x821, {n} time points (1x)", one["seconds_per_timepoint"], rss_1))
    rows.append((f"8x523x821, {8 * n} time points (8x)", eight["seconds_per_timepoint"], rss_8))

    z, y, x = (int(v) for v in args.large.split(","))
    big = make_store(args.out / "large.zarr", labels(z, y, x), 1)
    factors = {}
    for spacing, k in (("3,1,1", 3), ("1,1,1", 1)):
        report, rss = run(big, spacing, 1, args.out)
        rows.append((f"{z}x{y}x{x}, 1 time point, k={k}", report["seconds_per_timepoint"], rss))
        factors[k] = (rss - rss_tiny) * 2**20 / (z * y * x)

    print(machine_line())
    print(f"{'stack':44}{'s / time point':>16}{'peak RSS MiB':>14}")
    for name, sec, rss in rows:
        print(f"{name:44}{sec:>16.2f}{rss:>14.0f}")
    print(f"\npeak RSS 8x / 1x: {rss_8 / rss_1:.2f} (target <= 1.2); tiny stack: {rss_tiny:.0f} MiB")
    per_plane = (factors[3] - factors[1]) / 2
    print(f"bytes per voxel of the z-stack: k=3 {factors[3]:.1f}, k=1 {factors[1]:.1f} "
          f"-> about {factors[1] - per_plane:.1f} + {per_plane:.1f} * k")
    shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
