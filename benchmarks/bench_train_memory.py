"""Peak memory of U-Net training against the batch size: what `train` checks before it
starts (volseg.training.config.STEP_BYTES_PER_PIXEL_FILTER).

Each configuration trains 3 steps in a fresh process and reports its peak resident
memory; the slope over the batch size, per patch pixel and base filter, is the constant
the check uses, and the table shows the estimate beside each measurement.

    .venv/bin/python benchmarks/bench_train_memory.py
    .venv/bin/python benchmarks/bench_train_memory.py --patch 256 --filters 8,16 --batches 2,16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_line  # noqa: E402

CHILD = """
import json, resource, sys
import numpy as np
from pathlib import Path
from volseg.testing import make_image_store
from volseg.training import train
root = Path(sys.argv[1]); patch, batch, filters = (int(a) for a in sys.argv[2:5])
rng = np.random.default_rng(0)
if not (root / "i.zarr").exists():
    make_image_store(root / "i.zarr", rng.integers(0, 255, (2, 2, 256, 256), dtype=np.uint8))
    make_image_store(root / "t.zarr", (rng.random((2, 2, 256, 256)) < 0.2).astype(np.uint8),
                     mask=True)
train(root / "i.zarr", root / "t.zarr", root / f"m{batch}-{filters}.keras", epochs=1,
      steps_per_epoch=3, patch=patch, batch=batch, filters=filters, workers=1,
      precision="float32", overwrite=True)
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def peak(root, patch, batch, filters) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(patch), str(batch),
                          str(filters)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def main(argv=None) -> int:
    from volseg.training.config import STEP_BYTES_PER_PIXEL_FILTER, step_bytes

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--filters", default="8")
    ap.add_argument("--batches", default="2,16,32")
    args = ap.parse_args(argv)
    print(machine_line())
    batches = [int(b) for b in args.batches.split(",")]
    print(f"patch {args.patch}x{args.patch}, float32, 3 steps; estimate = "
          f"{STEP_BYTES_PER_PIXEL_FILTER} B per pixel and filter x batch (+ the model)")
    print(f"{'filters':>8} {'batch':>6} {'peak MiB':>9} {'over first':>11} {'estimate':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for filters in (int(f) for f in args.filters.split(",")):
            rows = [(b, peak(tmp, args.patch, b, filters)) for b in batches]
            base_b, base = rows[0]
            for b, p in rows:
                est = step_bytes(patch=(args.patch, args.patch), batch=b - base_b,
                                 filters=filters)
                print(f"{filters:>8} {b:>6} {p / 2**20:>9.0f} {(p - base) / 2**20:>11.0f} "
                      f"{est / 2**20:>9.0f}")
            slope = (rows[-1][1] - base) / (rows[-1][0] - base_b)
            print(f"  measured: {slope / (args.patch ** 2 * filters):.0f} B per pixel and filter "
                  f"per patch (the check uses {STEP_BYTES_PER_PIXEL_FILTER})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
