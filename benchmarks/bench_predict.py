"""Benchmark `volseg predict` against the bare model, in the same run (issue 4).

Data: N synthetic 523x821 uint8 frames (default 64: 8 time points x 8 slices,
``volseg.data.synth.synthesize``) in an image store made with ``volseg.io.store.create_image``.
Model: the U-Net of `volseg train`'s defaults (``--filters``, default 8; 16 is the
report's network, 2.16 M parameters), depth 4, untrained seeded weights (speed does not
depend on them), saved with ``save_model`` + ``base_info``;
``--model PATH`` uses a trained file instead (same speed, more telling agreement).

Each measurement runs in its own subprocess (its own TensorFlow, its own peak RSS):

* volseg      -- ``volseg.stages.predict.predict``: Zarr in, Zarr out, a local cluster from
                 ``volseg.engine.cluster.open_client``; float32 and bfloat16, default layout
                 (1 worker process, threads = cores) and 1 worker x 1 thread. The cluster
                 is started and the model loaded in the worker by a warm-up prediction of
                 one block first; then the whole store is predicted once, timed: the time
                 covers everything `predict` does (output store, graph, tasks, ledger,
                 completion).
* (a) bare    -- the model in this process, ``predict_on_batch`` on batches of 4 frames
                 already in memory, reflect-padded to 528x832 (model calls only);
                 and, float32, the same network converted to ONNX and run by ONNX Runtime
                 one frame per call with volseg's thread count (what volseg predict runs
                 in float32 since it adopted ONNX Runtime).
* (b) report  -- the whole padded array in memory through ``model.predict`` (Keras'
                 default batch size, 32), float32.
* phases      -- the steps of one prediction task run in this process on two blocks,
                 timed one by one (zarr read, tiling, model, blending, quantize, writes).
* CLI 1x/8x   -- the `volseg predict` command (default options, float32) on N and 8N
                 frames, for peak memory: a wrapper process starts the command, samples
                 the RSS *sum* over its process tree (the CLI process and the cluster's
                 worker process) with psutil every 50 ms, and reads
                 ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the largest single process of
                 the tree) after it exits. Its wall time includes start-up.

The speed measurements run ``--repeat`` rounds, one after the other in each round (the
machine is shared: rounds spread the noise), and the fastest run of each is reported.
Agreement of bfloat16 with float32 is measured on the two volseg prediction stores
(uint8 probabilities, masks at the model threshold); an untrained network's
probabilities crowd around 0.5, so ``--agreement-model`` adds the same check for a
trained model file (e.g. bench-output/train/chasedb1.keras from bench_train.py).

    .venv/bin/python benchmarks/bench_predict.py              # full: 64 frames, 2 rounds
    .venv/bin/python benchmarks/bench_predict.py --quick      # 8 frames, once, for a try
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
H, W = 523, 821
DEPTH = 8
PAD = (528, 832)  # 523 x 821 rounded up to the U-Net's multiple of 16
BATCH = 4


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mb(kib: float) -> float:
    """ru_maxrss (KiB on Linux) in MB."""
    return kib * 1024 / 1e6


def peak_rss_mb() -> float:
    """This process's peak RSS since it started its program, in MB.

    ``VmHWM`` of /proc/self/status belongs to the address space, which exec replaces;
    ``ru_maxrss`` (RUSAGE_SELF) would also count the parent's pages that a fork copied
    before the exec. Falls back to ru_maxrss where there is no /proc.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# --------------------------------------------------------------------------- set-up

def make_store(path: Path, images: np.ndarray) -> None:
    """A complete image store holding ``images`` (t, z, y, x), default chunks/shards."""
    from volseg.io import store as st

    job = st.make_job("bench", parameters={"shape": list(images.shape)})
    image = st.create_image(path, shape=images.shape, dtype=images.dtype, job=job,
                            extra={"content": "image"})
    for t in range(images.shape[0]):  # one time point at a time (whole shards)
        image.array[t] = images[t]
    st.finish(image.group)


def make_model(path: Path, *, filters: int, seed: int = 0) -> dict:
    """A depth-4 U-Net of ``filters`` first-level filters, untrained, seeded; returns its
    description."""
    from volseg.models.backend import import_keras

    keras = import_keras()
    from volseg.models.unet import base_info, build_unet, save_model

    keras.utils.set_random_seed(seed)
    model = build_unet(base_filters=filters, depth=4)
    save_model(model, path, info=base_info(depth=4, base_filters=filters, dropout=0.1,
                                           batch_norm=True, normalization=(0.0, 255.0)))
    return {"params": int(model.count_params()), "filters": filters, "trained": False}


def setup(work: Path, frames: int, *, model: str | None, eight: bool, filters: int) -> dict:
    from volseg.data.synth import synthesize

    depth = min(DEPTH, frames)
    if frames % depth:
        raise SystemExit(f"--frames: must be a multiple of {DEPTH} (or at most {DEPTH})")
    t0 = time.monotonic()
    images, _ = synthesize(timepoints=frames // depth, depth=depth, height=H, width=W, seed=0)
    make_store(work / "images.zarr", images)
    make_store(work / "warm.zarr", images[:1, :depth])  # one block: cluster + model warm-up
    np.save(work / "images.npy", images)
    if eight:
        # 8x the frames for the memory check: the same time points repeated (content
        # does not change memory use).
        make_store(work / "images8.zarr", np.concatenate([images] * 8, axis=0))
    if model is None:
        desc = make_model(work / "model.keras", filters=filters)
        model_path = work / "model.keras"
    else:
        model_path = Path(model).resolve()
        desc = {"params": None, "trained": True}
    from volseg.models.unet import read_model_info

    info = read_model_info(model_path)
    arch = info["architecture"]
    if (arch["base_filters"], arch["depth"]) != (filters, 4):
        log(f"note: {model_path} is not a depth-4 U-Net of {filters} filters ({arch})")
    log(f"set-up: {frames} frames ({frames // depth} x {depth}) in {time.monotonic() - t0:.1f} s")
    import keras

    return {"model": str(model_path), "shape": list(images.shape), "arch": arch, **desc,
            "keras": keras.__version__,
            "threshold": float(info.get("threshold", 0.5))}


# --------------------------------------------------------------------------- children

def child_volseg(p: dict) -> dict:
    """`volseg predict` through the library on a local cluster: warm-up, then one timed run."""
    from volseg.engine.cluster import open_client
    from volseg.stages.predict import predict

    work = Path(p["work"])
    kw = dict(precision=p["precision"], overwrite=True)
    with open_client("local", workers=p["workers"], threads=p["threads"]) as client:
        nthreads = sorted(client.nthreads().values())
        t0 = time.perf_counter()
        predict(work / "warm.zarr", p["model"], work / f"warm-{p['tag']}.zarr", client=client, **kw)
        warm = time.perf_counter() - t0
        before = client.run(_worker_stats)
        t0 = time.perf_counter()
        summary = predict(work / "images.zarr", p["model"], work / f"pred-{p['tag']}.zarr",
                          client=client, **kw)
        seconds = time.perf_counter() - t0
        after = client.run(_worker_stats)
    workers = []
    for key, a in after.items():
        b = before[key]
        a["cores_busy"] = (a["cpu_s"] - b["cpu_s"]) / seconds  # CPU seconds per second
        workers.append(a)
    return {"seconds": seconds, "warmup_s": warm, "pixels": summary["pixels"],
            "blocks": summary["blocks"], "nthreads": nthreads, "workers": workers,
            "peak_rss_mb": peak_rss_mb()}


def _worker_stats() -> dict:
    """Runs in a worker process: model loads, CPU time, peak RSS, TF thread settings."""
    import sys as _sys

    from volseg.stages.predict import model_loads

    stats = {"model_loads": model_loads(), "cpu_s": sum(os.times()[:2]),
             "peak_rss_mb": peak_rss_mb(),
             "VOLSEG_THREADS": os.environ.get("VOLSEG_THREADS")}
    if "tensorflow" in _sys.modules:
        import tensorflow as tf

        stats["tf_intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
    return stats


def _padded(images: np.ndarray) -> np.ndarray:
    """(n, 528, 832, 1) float32, reflect-padded at the end as volseg's tiling does."""
    frames = images.reshape(-1, H, W)
    out = np.empty((len(frames), *PAD, 1), np.float32)
    for i, f in enumerate(frames):
        out[i, ..., 0] = np.pad(f.astype(np.float32), ((0, PAD[0] - H), (0, PAD[1] - W)),
                                mode="reflect")
    return out


def child_bare(p: dict) -> dict:
    """(a) the bare model: compiled calls on batches of 4 frames already in memory."""
    from volseg.models.backend import import_keras
    from volseg.models.unet import load_model
    from volseg.ops.metrics import quantise

    import_keras()
    model, _ = load_model(p["model"], precision=p["precision"])
    batch = BATCH
    if p.get("runtime") == "onnx":  # the converted network, one frame per call as volseg
        from volseg.engine.blocks import MODEL_THREADS
        from volseg.models.onnx import onnx_network

        model, batch = onnx_network(model, MODEL_THREADS), 1
    x = _padded(np.load(Path(p["work"]) / "images.npy"))
    model.predict_on_batch(x[:batch])  # trace once
    out = np.empty((len(x), *PAD), np.float32)
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        out[i:i + batch] = np.asarray(model.predict_on_batch(x[i:i + batch]))[..., 0]
    seconds = time.perf_counter() - t0
    # Kept to check that volseg writes what the model computes (same quantisation).
    if p.get("runtime") != "onnx":
        np.save(Path(p["work"]) / f"bare-{p['precision']}.npy", quantise(out[:, :H, :W]))
    return {"seconds": seconds, "pixels": len(x) * H * W, "peak_rss_mb": peak_rss_mb()}


def child_keras_predict(p: dict) -> dict:
    """(b) the report's way: the whole array in memory through model.predict."""
    from volseg.models.backend import import_keras
    from volseg.models.unet import load_model

    import_keras()
    model, _ = load_model(p["model"], precision=p["precision"])
    x = _padded(np.load(Path(p["work"]) / "images.npy"))
    # Trace first (Keras traces one function for any batch size), as for (a).
    model.predict(x[:1], verbose=0)
    t0 = time.perf_counter()
    model.predict(x, verbose=0)  # batch_size=None: Keras' default, 32
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "pixels": len(x) * H * W, "peak_rss_mb": peak_rss_mb()}


def child_agree(p: dict) -> dict:
    """bfloat16 against float32 of one model on all frames, as volseg quantises them."""
    from volseg.models.backend import import_keras
    from volseg.models.unet import load_model
    from volseg.ops.metrics import quantise, threshold_bin

    import_keras()
    x = _padded(np.load(Path(p["work"]) / "images.npy"))
    q = {}
    for precision in ("float32", "bfloat16"):
        model, info = load_model(p["model"], precision=precision)
        q[precision] = np.concatenate([
            quantise(np.asarray(model.predict_on_batch(x[i:i + BATCH]))[:, :H, :W, 0])
            for i in range(0, len(x), BATCH)])
    a, b = q["float32"], q["bfloat16"]
    result = {"seconds": 1.0, "pixels": 0}
    for name, threshold in (("model", float(info.get("threshold", 0.5))), ("0.5", 0.5)):
        level = threshold_bin(threshold)
        ma, mb_ = a >= level, b >= level
        result[name] = {
            "threshold": threshold, "mask_equal": float((ma == mb_).mean()),
            "mean_abs_prob": float(np.abs(a.astype(np.int16) - b).mean() / 255),
            "dice": float(2 * (ma & mb_).sum() / max(1, ma.sum() + mb_.sum())),
            "positive_a": float(ma.mean()),
            "near_threshold": float((np.abs(a.astype(np.int16) - level) <= 5).mean())}
    return result


def child_phases(p: dict) -> dict:
    """The steps of `volseg.stages.predict.predict_block`, timed one by one in this process.

    Calls the library's own steps (``read_block``, ``block_probabilities``,
    ``write_block``) on the same block grid, halo included, as ``predict`` does.
    """
    from volseg.io import store as st
    from volseg.engine.blocks import BlockGrid
    from volseg.models.unet import file_sha256, read_model_info
    from volseg.stages.predict import (block_probabilities, cached_model, predict_batch_fn,
                                read_block, write_block)
    from volseg.ops.tiling import default_tile

    work = Path(p["work"])
    images = str(work / "images.zarr")
    info = read_model_info(p["model"])
    model = cached_model(p["model"], file_sha256(p["model"]), p["precision"])
    image = st.open_image(images)
    shape = image.shape
    halo, multiple = int(info["margin"]), int(info["multiple"])
    grid = BlockGrid(shape, image.block_shape, halo=(0, 0, halo, halo))
    out = work / "phases.zarr"
    shutil.rmtree(out, ignore_errors=True)
    job = st.make_job("bench-phases", parameters={})
    st.create_prediction(out, shape=shape, chunks=image.chunks, shards=image.shards, job=job,
                         threshold=0.5)
    tile = default_tile(shape[2], shape[3], multiple=multiple)
    clock = {k: 0.0 for k in ("zarr read", "tiling+blend+quantize", "model",
                              "zarr write + ledger")}
    run_model = predict_batch_fn(model)

    def timed_model(batch):
        t0 = time.perf_counter()
        r = run_model(batch)
        clock["model"] += time.perf_counter() - t0
        return r

    kw = dict(grid=grid, tile=tile, blend=None, multiple=multiple, batch_size=BATCH)
    block_probabilities(read_block(images, grid, 0), run_model, i=0, **kw)  # trace
    blocks = list(range(min(len(grid), p["blocks"])))
    pixels = 0
    total0 = time.perf_counter()
    for i in blocks:
        t0 = time.perf_counter()
        frames = read_block(images, grid, i)
        t1 = time.perf_counter()
        clock["zarr read"] += t1 - t0
        m0 = clock["model"]
        p8 = block_probabilities(frames, timed_model, i=i, **kw)
        t2 = time.perf_counter()
        clock["tiling+blend+quantize"] += (t2 - t1) - (clock["model"] - m0)
        write_block(str(out), grid, i, p8, threshold=0.5, probability=True)
        clock["zarr write + ledger"] += time.perf_counter() - t2
        pixels += p8.size
    total = time.perf_counter() - total0
    return {"seconds": total, "pixels": pixels, "blocks": len(blocks), "phases": clock}


def child_cli(p: dict) -> dict:
    """Run the `volseg predict` command; peak RSS of its process tree."""
    import psutil

    out = Path(p["work"]) / f"cli-{p['tag']}.zarr"
    cmd = [sys.executable, "-m", "volseg_cli.main", "predict", p["store"], "--model", p["model"],
           "-o", str(out), "--overwrite", "-q"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"sum": 0, "procs": 0}
    stop = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                tree = [root] + root.children(recursive=True)
                total = 0
                for q in tree:
                    try:
                        total += q.memory_info().rss
                    except psutil.Error:
                        pass
                if total > peak["sum"]:
                    peak["sum"], peak["procs"] = total, len(tree)
            except psutil.Error:
                return
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"volseg predict failed ({proc.returncode}):\n{stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    frames = int(np.prod(p["shape"][:2]))
    return {"seconds": seconds, "pixels": frames * H * W, "tree_peak_mb": peak["sum"] / 1e6,
            "tree_procs": peak["procs"],
            "largest_process_mb": mb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)}


CHILDREN = {"volseg": child_volseg, "bare": child_bare, "keras-predict": child_keras_predict,
            "phases": child_phases, "cli": child_cli, "agree": child_agree}


def measure(mode: str, **params) -> dict:
    """Run one measurement in a fresh subprocess; returns its JSON result."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--child", mode, json.dumps(params)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} {params.get('tag', '')} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rate = result["pixels"] / result["seconds"] / 1e6
    log(f"  {mode:<14} {params.get('tag', params.get('precision', '')):<10} "
        f"{rate:6.2f} Mpx/s  ({time.monotonic() - t0:.0f} s with start-up)")
    result["all_seconds"] = [result["seconds"]]
    return result


def keep_best(results: dict, key: str, new: dict) -> None:
    """Keep the fastest run of ``key``; remember every run's time."""
    old = results.get(key)
    if old is None:
        results[key] = new
        return
    times = old["all_seconds"] + new["all_seconds"]
    if new["seconds"] < old["seconds"]:
        results[key] = new
    results[key]["all_seconds"] = times


# --------------------------------------------------------------------------- report

def agreement(work: Path, a: str, b: str, threshold: float) -> dict:
    """Masks and uint8 probabilities of two prediction stores, compared frame by frame."""
    from volseg.io import store as st
    from volseg.ops.metrics import threshold_bin

    pa = st.open_prediction(work / a)
    pb = st.open_prediction(work / b)
    shape = pa.mask.shape
    equal = diff = n = inter = sa = sb = near = 0
    level = threshold_bin(threshold)
    for t in range(shape[0]):
        ma, mb_ = pa.mask.array[t], pb.mask.array[t]
        qa = pa.probability.array[t].astype(np.int16)
        qb = pb.probability.array[t].astype(np.int16)
        equal += int((ma == mb_).sum())
        diff += int(np.abs(qa - qb).sum())
        inter += int((ma & mb_).sum())
        sa += int(ma.sum())
        sb += int(mb_.sum())
        near += int((np.abs(qa - level) <= 5).sum())  # within 0.02 of the threshold
        n += ma.size
    return {"mask_equal": equal / n, "mean_abs_prob": diff / n / 255.0,
            "dice": 2 * inter / (sa + sb) if sa + sb else 1.0, "positive_a": sa / n,
            "near_threshold": near / n}


def same_as_bare(work: Path, pred: str) -> float:
    """Largest |volseg - bare model| of the uint8 probabilities (whole frames: ~0)."""
    from volseg.io import store as st

    bare = np.load(work / "bare-float32.npy")
    mine = np.asarray(st.open_prediction(work / pred).probability.array[...]).reshape(bare.shape)
    return int(np.abs(mine.astype(np.int16) - bare).max())


def _rss_text(res: dict) -> str:
    workers = res.get("workers")
    if workers:  # client process + the worker process
        return f"{res['peak_rss_mb']:.0f}+{max(w['peak_rss_mb'] for w in workers):.0f}w"
    return f"{res['peak_rss_mb']:.0f}"


def _agree_line(name: str, a: dict) -> str:
    ok = "PASS" if a["mask_equal"] >= 0.999 else "MISS"
    return (f"bf16 vs fp32, {name}: masks equal on {100 * a['mask_equal']:.4f} % of voxels "
            f"(target >= 99.9 %: {ok}), Dice {a['dice']:.5f}, mean |prob diff| "
            f"{a['mean_abs_prob']:.2e}; fp32 positives {100 * a['positive_a']:.1f} %, "
            f"within 0.02 of the threshold {100 * a['near_threshold']:.2f} %")


def report(args, meta, r, agree, max_diff) -> None:
    rate = {k: v["pixels"] / v["seconds"] for k, v in r.items() if v.get("pixels")}
    a32, a16 = rate["bare fp32"], rate.get("bare bf16")
    print(f"\npredict benchmark: {meta['shape'][0] * meta['shape'][1]} frames "
          f"({meta['shape'][0]} t x {meta['shape'][1]} z) of {H}x{W} uint8; U-Net "
          f"{meta['arch']['base_filters']} filters, depth {meta['arch']['depth']}"
          f"{', ' + format(meta['params'], ',') + ' parameters' if meta['params'] else ''}, "
          f"{'trained' if meta['trained'] else 'untrained'}; best of {args.repeat} rounds; "
          f"{os.cpu_count()} cores; keras {meta['keras']} / tensorflow; load average "
          f"{meta['load_before']} before, {os.getloadavg()[0]:.2f} after")
    from _common import machine_line

    print(machine_line())
    rows = [  # label, key, baseline rate, baseline name, target
        ("volseg predict fp32 (default cluster)", "volseg fp32", a32, "(a) fp32", 0.95),
        ("volseg predict fp32 (default cluster)", "volseg fp32", rate.get("bare fp32 onnx"),
         "(a) fp32 ORT", 0.95),
        ("volseg predict bf16 (default cluster)", "volseg bf16", a32, "(a) fp32", 1.4),
        ("volseg predict fp32 (default cluster)", "volseg fp32", rate.get("report fp32"), "(b)", 1.2),
        ("volseg predict bf16 (default cluster)", "volseg bf16", a16, "(a) bf16", None),
        ("volseg predict fp32, 1 worker x 1 thread", "volseg fp32 1x1", rate.get("volseg fp32"),
         "default fp32", None),
        ("volseg predict bf16, 1 worker x 1 thread", "volseg bf16 1x1", rate.get("volseg bf16"),
         "default bf16", None),
        ("volseg predict fp32, 1 worker x a thread per core", "volseg fp32 1xcores", a32,
         "(a) fp32", None),
        ("(a) bare model fp32, predict_on_batch x4", "bare fp32", None, "", None),
        ("(a) bare model fp32 on ONNX Runtime, x1", "bare fp32 onnx", a32, "(a) fp32", None),
        ("(a) bare model bf16, predict_on_batch x4", "bare bf16", None, "", None),
        ("(b) model.predict(whole array) fp32", "report fp32", None, "", None),
    ]
    print(f"{'measurement':<42} {'Mpx/s':>6} {'ratio':>6}  {'against':<12} {'target':>6} "
          f"{'':4} {'busy':>5} {'peak RSS MB':>11}")
    for label, key, base, against, target in rows:
        if key not in r or (base is None and against):
            continue
        ratio = f"{rate[key] / base:6.2f}" if base else f"{'':6}"
        verdict = ("PASS" if rate[key] / base >= target else "MISS") if target else ""
        tgt = f">={target:g}" if target else ""
        workers = r[key].get("workers")
        busy = f"{max(w['cores_busy'] for w in workers):5.2f}" if workers else f"{'':5}"
        print(f"{label:<42} {rate[key] / 1e6:6.2f} {ratio}  {against:<12} {tgt:>6} {verdict:<4} "
              f"{busy} {_rss_text(r[key]):>11}")
    print("  default = `volseg predict`'s layout: 1 worker process x "
          f"{r['volseg fp32']['nthreads'][0]} threads; busy = worker CPU s per s; peak RSS of "
          "volseg rows = client process + worker (w)")
    times = "; ".join(f"{k} " + " ".join(f"{s:.1f}" for s in v["all_seconds"])
                      for k, v in r.items() if k in dict((row[1], 1) for row in rows))
    print(f"  seconds per round: {times}")
    worker = r["volseg fp32"]["workers"][0]
    print(f"  worker TF intra-op setting {worker.get('tf_intra_op')} (0 = TF default, all cores), "
          f"VOLSEG_THREADS={worker.get('VOLSEG_THREADS')}; 1x1 worker: "
          f"{r.get('volseg fp32 1x1', {}).get('workers', [{}])[0].get('tf_intra_op')}, "
          f"VOLSEG_THREADS={r.get('volseg fp32 1x1', {}).get('workers', [{}])[0].get('VOLSEG_THREADS')}")
    if agree:
        print(_agree_line("volseg stores, this model", agree))
    for name in ("model", "0.5") if "agree" in r else ():
        a = r["agree"][name]
        print(_agree_line(f"bare model {Path(args.agreement_model).name} at threshold "
                          f"{a['threshold']:g}", a))
    if max_diff is not None:
        print(f"volseg fp32 store vs bare model fp32: max |uint8 probability diff| = {max_diff}")
    if "phases" in r:
        ph = r["phases"]
        total = ph["seconds"]
        parts = ", ".join(f"{k} {100 * v / total:.1f} %" for k, v in ph["phases"].items())
        print(f"task phases ({ph['blocks']} blocks in one process, fp32, "
              f"{ph['pixels'] / total / 1e6:.2f} Mpx/s): {parts}")
    loads = [w["model_loads"] for k in r if k.startswith("volseg") for w in r[k]["workers"]]
    if loads:
        print(f"model loads per worker process (warm-up block + timed run): {sorted(set(loads))}")
    if "cli 1x" in r:
        c1, c8 = r["cli 1x"], r.get("cli 8x")
        print(f"`volseg predict` command (fp32, default options, incl. start-up): "
              f"1x {c1['pixels'] / c1['seconds'] / 1e6:.2f} Mpx/s in {c1['seconds']:.1f} s"
              + (f", 8x {c8['pixels'] / c8['seconds'] / 1e6:.2f} Mpx/s in {c8['seconds']:.1f} s"
                 if c8 else ""))
        line = (f"  peak RSS, sum over its process tree (psutil, every 50 ms): 1x "
                f"{c1['tree_peak_mb']:.0f} MB ({c1['tree_procs']} processes)")
        if c8:
            ratio = c8["tree_peak_mb"] / c1["tree_peak_mb"]
            line += (f", 8x {c8['tree_peak_mb']:.0f} MB: 8x/1x = {ratio:.2f} "
                     f"(target <= 1.2: {'PASS' if ratio <= 1.2 else 'MISS'})")
        print(line)
        line = (f"  peak RSS, largest process (getrusage RUSAGE_CHILDREN ru_maxrss): 1x "
                f"{c1['largest_process_mb']:.0f} MB")
        if c8:
            line += (f", 8x {c8['largest_process_mb']:.0f} MB: 8x/1x = "
                     f"{c8['largest_process_mb'] / c1['largest_process_mb']:.2f}")
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=64, help="frames at 1x (multiple of 8; default 64)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="rounds over all speed measurements, best kept (default 2)")
    ap.add_argument("--quick", action="store_true",
                    help="a short try: 8 frames, one round, no 8x memory run")
    ap.add_argument("--model", default=None, help="a volseg .keras file (default: untrained U-Net)")
    ap.add_argument("--filters", type=int, default=None,
                    help="first-level filters of the untrained U-Net (default: volseg train's)")
    ap.add_argument("--agreement-model", default=None, metavar="PATH",
                    help="also measure bf16/fp32 agreement of this (trained) model on the frames")
    ap.add_argument("--skip-rss", action="store_true", help="skip the 1x/8x command runs")
    ap.add_argument("--keep", default=None, metavar="DIR", help="work here and keep the files")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = CHILDREN[args.child[0]](json.loads(args.child[1]))
        print(json.dumps(result))
        return
    if args.quick:
        args.frames, args.repeat = min(args.frames, 8), 1
    load_before = f"{os.getloadavg()[0]:.2f}"
    ctx = (tempfile.TemporaryDirectory(prefix="bench-predict-") if args.keep is None
           else _Keep(args.keep))
    with ctx as tmp:
        work = Path(tmp)
        if args.filters is None:
            from volseg.training.config import TrainConfig

            args.filters = TrainConfig.filters
        meta = setup(work, args.frames, model=args.model, eight=not (args.quick or args.skip_rss),
                     filters=args.filters)
        meta["load_before"] = load_before
        common = dict(work=str(work), model=meta["model"])
        from volseg.stages.predict import LOCAL_THREADS

        # `volseg predict`'s own default: one worker process, LOCAL_THREADS Dask threads
        default = dict(workers=None, threads=LOCAL_THREADS)
        one = dict(workers=1, threads=1)
        two = dict(workers=None, threads=None)  # open_client("local"): a thread per core
        plan = [
            ("bare fp32", "bare", dict(precision="float32")),
            ("bare fp32 onnx", "bare", dict(precision="float32", runtime="onnx")),
            ("volseg fp32", "volseg", dict(precision="float32", tag="fp32", **default)),
            ("bare bf16", "bare", dict(precision="bfloat16")),
            ("volseg bf16", "volseg", dict(precision="bfloat16", tag="bf16", **default)),
            ("report fp32", "keras-predict", dict(precision="float32")),
            ("volseg fp32 1x1", "volseg", dict(precision="float32", tag="fp32-1x1", **one)),
            ("volseg fp32 1xcores", "volseg", dict(precision="float32", tag="fp32-1xn", **two)),
            ("volseg bf16 1x1", "volseg", dict(precision="bfloat16", tag="bf16-1x1", **one)),
        ]
        r = {}
        for round_ in range(args.repeat):
            log(f"round {round_ + 1} of {args.repeat} (Mpx/s of each):")
            for key, mode, params in plan:
                keep_best(r, key, measure(mode, **params, **common))
        log("task phases, memory, agreement:")
        r["phases"] = measure("phases", precision="float32", blocks=2, **common)
        if not args.skip_rss:
            r["cli 1x"] = measure("cli", store=str(work / "images.zarr"), shape=meta["shape"],
                                  tag="1x", **common)
            if not args.quick:
                shape8 = [meta["shape"][0] * 8] + meta["shape"][1:]
                r["cli 8x"] = measure("cli", store=str(work / "images8.zarr"), shape=shape8,
                                      tag="8x", **common)
        if args.agreement_model:
            r["agree"] = measure("agree", work=str(work),
                                 model=str(Path(args.agreement_model).resolve()))
        agree = agreement(work, "pred-fp32.zarr", "pred-bf16.zarr", meta["threshold"])
        max_diff = same_as_bare(work, "pred-fp32.zarr")
        report(args, meta, r, agree, max_diff)
        if args.keep:
            (work / "bench_predict.json").write_text(json.dumps(
                {"meta": meta, "results": r, "agreement": agree}, indent=2, default=str))


class _Keep:
    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        self.path.mkdir(parents=True, exist_ok=True)
        return str(self.path)

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
