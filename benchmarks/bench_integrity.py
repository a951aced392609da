"""What the integrity checks cost: evaluate and predict throughput with and without them.

Data: N synthetic 523x821 frames (default 64: 8 time points x 8 slices) from
``volseg.data.synth.synthesize``: images, truth, and a prediction (probability + mask) made
from the truth with noise, so every array holds realistic content.

Each pair of stores holds the same values, written twice:

* checked   -- as volseg writes them: every chunk written, CRC32C per chunk,
               ``volseg.io.integrity`` recorded, so every read also checks that its shard
               files exist (one size query per shard) and verifies checksums;
* unchecked -- the baseline: the same codec without CRC32C and no integrity record
               (what volseg wrote before the checks), so reads do neither.

Measured in this process, alternating checked and unchecked runs (``--repeats`` each,
median), so machine load hits both alike:

* read      -- every block of the probability array through ``ImageStore.array``;
* evaluate  -- ``volseg.stages.evaluate.evaluate`` on threads of this process;
* predict   -- ``volseg.stages.predict.predict`` with the report's U-Net (untrained, seeded),
               one block at a time in this process, on the first ``--predict-frames``.

Prints a table; the ratio is checked / unchecked throughput (1.00 = free).

    python benchmarks/bench_integrity.py [--frames 64] [--repeats 3] [--out bench-output/integrity]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np


def _make_stores(root: Path, *, frames: int, checked: bool, predict_frames: int):
    from volseg.io import store as st
    from volseg.data.synth import synthesize

    depth = 8
    timepoints = max(1, frames // depth)
    images, labels = synthesize(timepoints=timepoints, depth=depth, seed=3)
    rng = np.random.default_rng(0)
    prob = np.clip(labels.astype(np.float32) * 200 + rng.normal(30, 25, labels.shape), 0, 255)
    prob = prob.astype(np.uint8)
    codecs = st.default_codecs
    if not checked:  # the baseline: what volseg wrote before the integrity checks
        st.default_codecs = lambda: [st.default_compressor()]
    try:
        job = st.make_job("bench", parameters={})
        made = {}
        for name, arr in (("images", images), ("truth", labels.astype(np.uint8)),
                          ("small", images[:1, :predict_frames])):
            image = st.create_image(root / f"{name}.zarr", shape=arr.shape, dtype=arr.dtype,
                                    job=job)
            image.array[...] = arr
            st.finish(image.group)
            made[name] = root / f"{name}.zarr"
        pred = st.create_prediction(root / "pred.zarr", shape=prob.shape, chunks=None,
                                    shards=None, job=job, threshold=0.5)
        pred.probability.array[...] = prob
        pred.mask.array[...] = (prob >= 128).astype(np.uint8)
        for part in pred.parts:
            st.finish(part.group)
        st.finish(pred.group)
        made["pred"] = root / "pred.zarr"
    finally:
        st.default_codecs = codecs
    if not checked:
        import zarr

        for group_path in (made["images"], made["truth"], made["small"],
                           made["pred"] / "probability", made["pred"] / "mask"):
            g = zarr.open_group(str(group_path), mode="r+")
            attrs = dict(g.attrs["volseg"])
            attrs.pop("integrity", None)
            g.attrs["volseg"] = attrs
    return made, int(np.prod(prob.shape)), int(np.prod(images[:1, :predict_frames].shape))


def _read_all(pred_path) -> None:
    from volseg.io import store as st
    from volseg.engine.blocks import BlockGrid

    array = st.open_prediction(pred_path).probability.array
    grid = BlockGrid(array.shape, array.block_shape)
    for region in grid:
        array[region]


def _evaluate(made) -> None:
    from volseg.stages.evaluate import evaluate

    evaluate(made["pred"], made["truth"])


def _predict(made, model, out: Path) -> None:
    from volseg.stages.predict import predict

    shutil.rmtree(out, ignore_errors=True)
    predict(made["small"], model, out, threshold=0.5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--predict-frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench-output/integrity")
    args = ap.parse_args(argv)
    from _common import machine_line  # the table's machine: compare within one run

    print(machine_line(), flush=True)
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    stores = {}
    for kind in ("checked", "unchecked"):
        (root / kind).mkdir(parents=True)
        stores[kind] = _make_stores(root / kind, frames=args.frames, checked=kind == "checked",
                                    predict_frames=args.predict_frames)
    voxels = stores["checked"][1]
    px_predict = stores["checked"][2]

    from volseg.models.unet import base_info, build_unet, save_model

    model = root / "unet.keras"
    save_model(build_unet(normalization=(0.0, 255.0)), model,
               info=base_info(depth=4, base_filters=16, dropout=0.1, batch_norm=True,
                              normalization=(0.0, 255.0), threshold=0.5))

    cases = [("read probability", voxels, lambda made, kind: _read_all(made["pred"])),
             ("evaluate", voxels, lambda made, kind: _evaluate(made)),
             ("predict (U-Net)", px_predict,
              lambda made, kind: _predict(made, model, root / kind / "out.zarr"))]
    print(f"{args.frames} frames of 523x821, {args.repeats} alternating runs each, median")
    print(f"{'stage':18}{'checked':>16}{'unchecked':>16}{'ratio':>8}")
    for name, units, fn in cases:
        fn(stores["checked"][0], "checked")  # warm-up: page cache, model load
        times = {"checked": [], "unchecked": []}
        for _ in range(args.repeats):
            for kind in ("unchecked", "checked"):
                start = time.perf_counter()
                fn(stores[kind][0], kind)
                times[kind].append(time.perf_counter() - start)
        rate = {k: units / statistics.median(v) / 1e6 for k, v in times.items()}
        print(f"{name:18}{rate['checked']:>12.1f} M/s{rate['unchecked']:>12.1f} M/s"
              f"{rate['checked'] / rate['unchecked']:>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
