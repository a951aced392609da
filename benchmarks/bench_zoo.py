"""Predict through a BioImage Model Zoo package (ONNX Runtime) against the `.keras` model
(TensorFlow), on the same store, in one run.

Data: N synthetic 523x821 uint8 frames (``volseg.data.synth.synthesize``, default 16: 2 time
points x 8 slices) in an image store. Model: the U-Net of `volseg train`'s defaults (8
filters, depth 4), untrained seeded weights (speed does not depend on them), exported with
``volseg.export_model``.

Rows, each in its own subprocess, ``--repeat`` rounds, fastest kept:

* command -- the whole `volseg predict IMAGES --model M -o OUT -q` (start-up, the local
             cluster, every block): what a user waits. Both run on ONNX Runtime since
             volseg predicts float32 U-Nets with it (the `.keras` model is converted in
             the worker, about 3 s): the difference is the conversion and TensorFlow's
             import.
* model   -- the network alone on the store's frames padded to 528x832, one frame per
             call, 2 threads each (volseg's MODEL_THREADS), after one warm-up call:
             ``predict_on_batch`` against ``InferenceSession.run``.

Agreement: the two prediction stores' uint8 probabilities and masks.

    .venv/bin/python benchmarks/bench_zoo.py            # 16 frames, 2 rounds
    .venv/bin/python benchmarks/bench_zoo.py --quick    # 8 frames, once
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_line  # noqa: E402


def setup(work: Path, frames: int) -> None:
    from volseg.data.synth import synthesize
    from volseg.models.backend import import_keras
    from volseg.models.unet import base_info, build_unet, save_model
    from volseg.stages.package import export_model
    from volseg.testing import make_image_store

    images, _ = synthesize(timepoints=frames // 8, depth=8, seed=0)
    make_image_store(work / "images.zarr", images)
    keras = import_keras()
    keras.utils.set_random_seed(0)
    model = build_unet(base_filters=8, depth=4, normalization=(0.0, 255.0))
    save_model(model, work / "unet.keras",
               info=base_info(depth=4, base_filters=8, dropout=0.1, batch_norm=True,
                              normalization=(0.0, 255.0)))
    export_model(work / "unet.keras", work / "unet.zip", images=work / "images.zarr",
                 authors=["volseg benchmark"])


def child_command(work: Path, model: str, out: str) -> dict:
    import shutil

    shutil.rmtree(work / out, ignore_errors=True)
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "volseg_cli.main", "predict",
                          str(work / "images.zarr"), "--model", str(work / model), "-o",
                          str(work / out), "-q"], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr)
    return {"seconds": time.perf_counter() - t0}


def child_model(work: Path, runtime: str) -> dict:
    import zarr

    frames = zarr.open_array(work / "images.zarr" / "0")[:].reshape(-1, 523, 821)
    frames = np.pad(frames.astype(np.float32), ((0, 0), (0, 5), (0, 11)), mode="reflect")
    batches = [f[None, ..., None] for f in frames]
    if runtime == "keras":
        from volseg.models.backend import fix_model_threads, import_keras
        from volseg.models.unet import load_model

        fix_model_threads()
        import_keras()
        model, _ = load_model(work / "unet.keras", precision="float32")
        call = model.predict_on_batch
    else:
        from volseg.engine.blocks import MODEL_THREADS
        from volseg.models import zoo
        from volseg.models.onnx import session

        package = zoo.read_package(work / "unet.zip")
        sess = session(package.onnx, MODEL_THREADS)
        pre = package.preprocessing
        call = lambda b: zoo.run_tiles(sess, package, zoo.apply_steps(b, pre))  # noqa: E731
    call(batches[0])
    t0 = time.perf_counter()
    for b in batches:
        call(b)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "mpx_s": len(batches) * 523 * 821 / seconds / 1e6}


def measure(work: Path, kind: str, *args) -> dict:
    run = subprocess.run([sys.executable, __file__, "--child", kind, str(work), *args],
                         capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(run.stderr[-3000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def agreement(work: Path) -> dict:
    import zarr

    a = zarr.open_array(work / "keras.zarr" / "probability" / "0")[:].astype(int)
    b = zarr.open_array(work / "zoo.zarr" / "probability" / "0")[:].astype(int)
    ma = zarr.open_array(work / "keras.zarr" / "mask" / "0")[:]
    mb = zarr.open_array(work / "zoo.zarr" / "mask" / "0")[:]
    return {"max_diff": int(np.abs(a - b).max()), "differ": int((a != b).sum()),
            "mask_differ": int((ma != mb).sum()), "voxels": int(a.size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16, help="frames (multiple of 8)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="8 frames, one round")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, work, *rest = args.child
        result = (child_command(Path(work), *rest) if kind == "command"
                  else child_model(Path(work), *rest))
        print(json.dumps(result))
        return
    frames, repeat = (8, 1) if args.quick else (args.frames, args.repeat)
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as tmp:
        work = Path(tmp)
        setup(work, frames)
        best: dict = {}
        for _ in range(repeat):
            for key, kind, extra in (("command keras", "command", ("unet.keras", "keras.zarr")),
                                     ("command zoo", "command", ("unet.zip", "zoo.zarr")),
                                     ("model keras", "model", ("keras",)),
                                     ("model zoo", "model", ("onnx",))):
                r = measure(work, kind, *extra)
                if key not in best or r["seconds"] < best[key]["seconds"]:
                    best[key] = r
        agree = agreement(work)
    print(machine_line())
    print(f"{frames} frames of 523 x 821, U-Net 8 filters depth 4, float32, fastest of {repeat}")
    print()
    print("| what | TensorFlow (.keras) | ONNX Runtime (package) | ONNX / TF speed |")
    print("|---|---|---|---|")
    ck, cz = best["command keras"]["seconds"], best["command zoo"]["seconds"]
    print(f"| `volseg predict` command | {ck:.1f} s | {cz:.1f} s | {ck / cz:.2f}x |")
    mk, mz = best["model keras"], best["model zoo"]
    print(f"| model alone, 2 threads | {mk['mpx_s']:.2f} Mpx/s | {mz['mpx_s']:.2f} Mpx/s | "
          f"{mz['mpx_s'] / mk['mpx_s']:.2f}x |")
    print()
    print(f"agreement: probabilities differ in {agree['differ']} of {agree['voxels']} voxels "
          f"(at most {agree['max_diff']}/255), masks in {agree['mask_differ']}")


if __name__ == "__main__":
    main()
