"""Training speed of `volseg train`'s defaults, before and after the compiled step, per
instruction set, as ratios from one run.

Each instruction set runs in its own process (oneDNN reads ``ONEDNN_MAX_CPU_ISA`` when
TensorFlow starts): the CPU as it is, and, on a CPU with more than AVX2, capped at AVX2
to stand in for the AVX2-only machines most laptops and many cluster nodes are. In each
process the same streamed loop as `volseg train` (patch sampler on worker threads ahead
of ``train_on_batch``, the default U-Net, loss, batch and patch) runs with

* ``before``: the step as a TensorFlow graph, the only step before ``--compile``;
* ``after``: the step ``--compile auto`` picks on this CPU (XLA without AVX-512);

on the same batches from the same seed, alternating over ``--rounds``; the fastest round
of each is kept. The loss of the first and the last steps of both shows the training is
the same within rounding.

Data: CHASE_DB1 (../shared/data/chasedb1) when present, else a synthetic series.

    .venv/bin/python benchmarks/bench_train_step.py [--steps 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "chasedb1"


def default_model(cfg, normalization, *, precision: str, compile_as: str):
    """`volseg train`'s default U-Net for ``cfg``, seeded, compiled as ``compile_as``
    ("graph" or "xla") under ``precision``."""
    import keras

    from volseg.models.unet import PRECISIONS, build_unet
    from volseg.training import make_loss

    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        model = build_unet(base_filters=cfg.filters, depth=cfg.depth, dropout=cfg.dropout,
                           batch_norm=cfg.batch_norm, normalization=normalization)
        model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                      loss=make_loss(cfg.loss), jit_compile=compile_as == "xla")
    finally:
        keras.config.set_dtype_policy("float32")
    return model


def measure(args) -> dict:
    """In this process: samples/s and losses of the graph and the auto-compiled step."""
    from bench_train_loop import stores
    from volseg.models.backend import import_keras
    from volseg.models.unet import resolve_compile, resolve_precision
    from volseg.training.sampler import Augment, PatchDataset, PatchSampler, prefetch, scan_training_data
    from volseg.training import TrainConfig, resolve_machine_choices
    from volseg.training.losses import SKELETON_TARGET_LOSSES

    import_keras()
    cfg = resolve_machine_choices(TrainConfig("", "", ""), lambda line: None)  # as train does
    precision = resolve_precision("auto")
    variants = {"before": "graph", "after": resolve_compile("auto", precision)}
    what, image, truth, roi, frames = stores(Path(args.out), Path(args.data))
    roi_array = None if roi is None else roi.array
    index = scan_training_data(image.array, truth.array, frames, roi=roi_array)
    norm = index.percentiles()
    sampler = PatchSampler(image.array, truth.array, index, patch=cfg.patch, roi=roi_array,
                           normalization=norm, augment=Augment(),
                           skeleton=cfg.loss in SKELETON_TARGET_LOSSES)

    results = {name: {"compile": how, "rates": [], "cores": []} for name, how in variants.items()}
    for _ in range(args.rounds):
        for name, how in variants.items():
            model = default_model(cfg, norm, precision=precision, compile_as=how)
            data = PatchDataset(sampler, batch_size=cfg.batch, steps=args.warm + args.steps,
                                seed=5, workers=cfg.workers)
            batches = prefetch(data, workers=cfg.workers, depth=2 * cfg.workers)
            losses = []
            t0 = time.monotonic()
            for i, (x, y) in enumerate(batches):
                if i == args.warm:
                    t0, c0 = time.monotonic(), sum(os.times()[:2])
                losses.append(float(np.asarray(model.train_on_batch(x, y)).ravel()[0]))
            wall = time.monotonic() - t0
            results[name]["rates"].append(args.steps * cfg.batch / wall)
            results[name]["cores"].append((sum(os.times()[:2]) - c0) / wall)
            results[name]["losses"] = losses
    return {"data": what, "precision": precision, "results": results,
            "patch": list(cfg.patch), "batch": cfg.batch, "loss": cfg.loss}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=ROOT / "bench-output" / "train_loop")
    p.add_argument("--steps", type=int, default=16, help="timed steps per variant and round")
    p.add_argument("--warm", type=int, default=3, help="untimed steps first (compiling)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return 0
    from _common import machine_line
    from volseg.models.unet import cpu_flags

    settings = [("as it is", None)]
    if "avx512f" in cpu_flags():
        settings.append(("capped at AVX2", "AVX2"))
    rows = {}
    for label, cap in settings:
        env = dict(os.environ)
        env.pop("ONEDNN_MAX_CPU_ISA", None)
        if cap:
            env["ONEDNN_MAX_CPU_ISA"] = cap
        cmd = [sys.executable, __file__, "--child", "--data", str(args.data), "--out",
               str(args.out), "--steps", str(args.steps), "--warm", str(args.warm),
               "--rounds", str(args.rounds)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        rows[label] = json.loads(line[-1][7:])
    print(machine_line())
    first = next(iter(rows.values()))
    print(f"data: {first['data']}; `volseg train` defaults: batch {first['batch']} of "
          f"{first['patch'][0]}x{first['patch'][1]}, loss {first['loss']}; {args.steps} timed "
          f"steps after {args.warm}, best of {args.rounds} rounds")
    print(f"{'instruction set':<16} {'precision':<9} {'step':<6} {'samples/s':>9} "
          f"{'ratio':>6} {'cores':>5}  loss at step 1 / mean of last 4")
    for label, r in rows.items():
        base = max(r["results"]["before"]["rates"])
        for name, v in r["results"].items():
            rate = max(v["rates"])
            loss = v["losses"]
            print(f"{label:<16} {r['precision']:<9} {v['compile']:<6} {rate:9.2f} "
                  f"{rate / base:5.2f}x {max(v['cores']):5.2f}  {loss[0]:.4f} / "
                  f"{np.mean(loss[-4:]):.4f}")
    print("ratio: against the graph step (before) in the same process; the same batches from "
          "the same seed in both")
    return 0


if __name__ == "__main__":
    sys.exit(main())
