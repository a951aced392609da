"""Benchmark `volseg convert` against a single-threaded loop and ome-zarr-py.

Writes N uncompressed 523x821 uint8 frames (default 64: 8 time points x 8 slices) as
per-frame TIFFs, then, each in its own subprocess (so peak RSS is its own):

* volseg     -- volseg.stages.convert.convert (default: local threads on every core,
                volseg's codec pipeline: zarrs where it writes what zarr-python writes)
* volseg, zarr codecs -- the same with zarr-python's own codec pipeline (what volseg did
                before volseg.io.codecs; ZARR_CODEC_PIPELINE__PATH set in that child)
* baseline   -- one thread: tifffile.imread each frame + write the same Zarr layout and
                codec (whole shards, as volseg does) through zarr-python's pipeline
* irreducible -- one thread, no Zarr: read the frames, Blosc-encode each (numcodecs, the
                same codec), CRC32C it, write the bytes to one file per shard: the work
                any converter has to do
* ome-zarr   -- ome_zarr.writer.write_image of the whole array (held in memory)
* tensorstore -- TensorStore (when installed: `pip install tensorstore`) writing the same
                store format (zarr 3, the same shards, Blosc and CRC32C codecs), shard by
                shard from one thread with its own codec threads on every core; the child
                then reads the store back through volseg (zarrs) and checks every voxel,
                and times a whole-array read with each library
* volseg 8x  -- volseg on 8x the frames (peak RSS must stay flat)
* volseg 8x, 1 core -- the same with the process pinned to one core (what parallel
                blocks buy; under 1.2x its 2-core rate says the CPU is not the limit)
* baseline 8x -- the single-thread loop on 8x the frames (the ratio at 8x)
* read 8x    -- only tifffile.imread of the 8x frames, one thread (the reading's share)
* irreducible 8x -- the one-thread floor on the 8x frames

Prints MB/s of raw pixels, the ratio against the baseline, against volseg with zarr's
codecs and against the irreducible work of the same run, and peak RSS.

    .venv/bin/python benchmarks/bench_convert.py [--frames 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402

H, W = 523, 821


def make_frames(folder: Path, timepoints: int, depth: int, seed: int = 0) -> None:
    import tifffile
    from scipy import ndimage

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.normal(size=(H, W)), 8)
    base = (base - base.min()) / (base.max() - base.min())
    for t in range(timepoints):
        for z in range(depth):
            frame = 40 + 120 * np.roll(base, 7 * t + 3 * z, axis=1) + rng.normal(0, 12, (H, W))
            tifffile.imwrite(folder / f"t{t:03d}_z{z:03d}.tif", np.clip(frame, 0, 255).astype(np.uint8))


def run_volseg(src: Path, out: Path) -> dict:
    from volseg.stages.convert import convert

    t0 = time.perf_counter()
    summary = convert([src], out)
    return {"seconds": time.perf_counter() - t0, "raw_bytes": summary["raw_bytes"]}


def run_baseline(src: Path, out: Path) -> dict:
    import tifffile
    import zarr

    from volseg.io import store as st

    files = sorted(src.glob("*.tif"))
    t0 = time.perf_counter()
    first = tifffile.imread(files[0])
    nt = len({f.name[:4] for f in files})
    nz = len(files) // nt
    shape = (nt, nz) + first.shape
    chunks, shards = st.default_chunks(shape, first.dtype)
    arr = zarr.create_array(str(out), shape=shape, dtype=first.dtype, chunks=chunks, shards=shards,
                            compressors=st.default_compressor(), fill_value=0)
    with zarr.config.set({"threading.max_workers": 1, "async.concurrency": 1}):
        for t in range(nt):
            for z0 in range(0, nz, shards[1]):
                z1 = min(nz, z0 + shards[1])
                block = np.stack([tifffile.imread(src / f"t{t:03d}_z{z:03d}.tif") for z in range(z0, z1)])
                arr[t, z0:z1] = block
    return {"seconds": time.perf_counter() - t0, "raw_bytes": int(np.prod(shape))}


def run_omezarr(src: Path, out: Path) -> dict:
    import tifffile
    import zarr
    from ome_zarr.writer import write_image

    from volseg.io import store as st

    files = sorted(src.glob("*.tif"))
    t0 = time.perf_counter()
    nt = len({f.name[:4] for f in files})
    data = np.stack([tifffile.imread(f) for f in files]).reshape(nt, -1, H, W)
    group = zarr.open_group(str(out), mode="w")
    write_image(data, group, axes="tzyx", scaler=None,
                storage_options={"chunks": (1, 1, H, W), "compressor": st.default_compressor()})
    return {"seconds": time.perf_counter() - t0, "raw_bytes": int(data.nbytes)}


def run_irreducible(src: Path, out: Path) -> dict:
    import google_crc32c
    import tifffile
    from numcodecs import Blosc, blosc as blosc_library

    # one thread: Blosc would otherwise compress on every core from the main thread
    blosc_library.use_threads = False
    blosc_library.set_nthreads(1)
    blosc = Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE)
    files = sorted(src.glob("*.tif"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    raw = 0
    for k in range(0, len(files), 8):  # one file per 8 frames, as a shard
        parts = []
        for f in files[k:k + 8]:
            frame = tifffile.imread(f)
            raw += frame.nbytes
            encoded = blosc.encode(frame)
            parts += [encoded, google_crc32c.value(encoded).to_bytes(4, "little")]
        (out / f"{k}").write_bytes(b"".join(parts))
    return {"seconds": time.perf_counter() - t0, "raw_bytes": raw}


def run_tensorstore(src: Path, out: Path) -> dict:
    import os

    import tensorstore as ts
    import tifffile

    from volseg.io import store as st

    files = sorted(src.glob("*.tif"))
    t0 = time.perf_counter()
    nt = len({f.name[:4] for f in files})
    nz = len(files) // nt
    shape = (nt, nz, H, W)
    chunks, shards = st.default_chunks(shape, np.uint8)
    blosc = {"name": "blosc", "configuration": {"cname": "zstd", "clevel": 3,
                                                "shuffle": "shuffle", "typesize": 1,
                                                "blocksize": 0}}
    cores = len(os.sched_getaffinity(0))
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(out)},
            "context": {"data_copy_concurrency": {"limit": cores},
                        "file_io_concurrency": {"limit": cores}},
            "metadata": {"shape": list(shape), "data_type": "uint8", "fill_value": 0,
                         "chunk_grid": {"name": "regular",
                                        "configuration": {"chunk_shape": list(shards)}},
                         "dimension_names": ["t", "z", "y", "x"],
                         "codecs": [{"name": "sharding_indexed", "configuration": {
                             "chunk_shape": list(chunks),
                             "codecs": [{"name": "bytes"}, blosc, {"name": "crc32c"}],
                             "index_codecs": [{"name": "bytes",
                                               "configuration": {"endian": "little"}},
                                              {"name": "crc32c"}],
                             "index_location": "end"}}]},
            "create": True, "delete_existing": True}
    arr = ts.open(spec).result()
    pending = []
    for t in range(nt):
        for z0 in range(0, nz, shards[1]):
            z1 = min(nz, z0 + shards[1])
            block = np.stack([tifffile.imread(src / f"t{t:03d}_z{z:03d}.tif")
                              for z in range(z0, z1)])
            pending.append(arr[t, z0:z1].write(block))
            if len(pending) > cores:  # bounded memory: a few shards in flight
                pending.pop(0).result()
    for p in pending:
        p.result()
    seconds = time.perf_counter() - t0
    import zarr

    import volseg  # noqa: F401  (its codec pipeline: zarrs for whole-shard reads)

    r0 = time.perf_counter()
    by_zarr = zarr.open_array(str(out), mode="r")[:]
    read_zarr = time.perf_counter() - r0
    r0 = time.perf_counter()
    by_ts = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(out)},
                     "context": spec["context"]}).result().read().result()
    read_ts = time.perf_counter() - r0
    want = np.stack([tifffile.imread(f) for f in files]).reshape(shape)
    return {"seconds": seconds, "raw_bytes": int(np.prod(shape)),
            "identical": bool(np.array_equal(by_zarr, want) and np.array_equal(by_ts, want)),
            "read_zarr_s": read_zarr, "read_ts_s": read_ts}


def run_read_only(src: Path, out: Path) -> dict:
    import tifffile

    files = sorted(src.glob("*.tif"))
    t0 = time.perf_counter()
    raw = sum(tifffile.imread(f).nbytes for f in files)
    return {"seconds": time.perf_counter() - t0, "raw_bytes": raw}


def run_volseg_one_core(src: Path, out: Path) -> dict:
    import os

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    return run_volseg(src, out)


MODES = {"volseg": run_volseg, "baseline": run_baseline, "ome-zarr": run_omezarr,
         "volseg-1core": run_volseg_one_core, "read-only": run_read_only,
         "volseg-zarr-codecs": run_volseg, "irreducible": run_irreducible,
         "tensorstore": run_tensorstore}
#: zarr's own setting: these children run zarr-python's codec pipeline.
ZARR_CODECS = {"ZARR_CODEC_PIPELINE__PATH": "zarr.core.codec_pipeline.BatchedCodecPipeline"}
ENV = {"baseline": ZARR_CODECS, "volseg-zarr-codecs": ZARR_CODECS, "ome-zarr": ZARR_CODECS}


def child(mode: str, src: str, out: str) -> None:
    result = MODES[mode](Path(src), Path(out))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(mode: str, src: Path, work: Path) -> dict:
    out = work / f"{mode}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    import os

    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(src), str(out)],
                          capture_output=True, text=True, env={**os.environ, **ENV.get(mode, {})})
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=64, help="frames at 1x (multiple of 8)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode (best is reported)")
    ap.add_argument("--skip-8x", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        work = Path(tmp)
        t = args.frames // 8
        make_frames(work / "x1", t, 8)
        rows = {}
        import importlib.util

        with_ts = importlib.util.find_spec("tensorstore") is not None
        modes = ("baseline", "volseg", "volseg-zarr-codecs", "irreducible", "ome-zarr") + \
            ("tensorstore",) * with_ts
        for _ in range(args.repeat):
            for mode in modes:
                r = measure(mode, work / "x1", work)
                name = "volseg, zarr codecs" if mode == "volseg-zarr-codecs" else mode
                best = rows.get(name)
                if best is None or r["seconds"] < best["seconds"]:
                    rows[name] = r
        if not args.skip_8x:
            make_frames(work / "x8", 8 * t, 8)
            rows["volseg 8x"] = measure("volseg", work / "x8", work)
            rows["volseg 8x, zarr codecs"] = measure("volseg-zarr-codecs", work / "x8", work)
            rows["irreducible 8x"] = measure("irreducible", work / "x8", work)
            if with_ts:
                rows["tensorstore 8x"] = measure("tensorstore", work / "x8", work)
            rows["volseg 8x, 1 core"] = measure("volseg-1core", work / "x8", work)
            rows["baseline 8x"] = measure("baseline", work / "x8", work)
            rows["read 8x"] = measure("read-only", work / "x8", work)
        print(f"\nconvert: {args.frames} frames of {H}x{W} uint8 (8x = {8 * args.frames}), "
              f"best of {args.repeat} at 1x, one run at 8x")
        print(machine_line())

        def rate_of(name):
            r = rows.get(name)
            return r["raw_bytes"] / r["seconds"] if r else float("nan")

        print(f"{'mode':<24} {'MB/s':>8} {'x baseline':>11} {'x zarr codecs':>14} "
              f"{'x irreducible':>14} {'peak RSS MB':>12}")
        for mode, r in rows.items():
            rate = rate_of(mode)
            scale = " 8x" if " 8x" in mode else ""
            print(f"{mode:<24} {rate / 1e6:>8.1f} {rate / rate_of('baseline' + scale):>11.2f} "
                  f"{rate / rate_of('volseg' + scale + ', zarr codecs'):>14.2f} "
                  f"{rate / rate_of('irreducible' + scale):>14.2f} {r['peak_rss_mb']:>12.0f}")
        for mode in ("tensorstore", "tensorstore 8x"):
            r = rows.get(mode)
            if r:
                print(f"{mode}: store read back by volseg (zarrs) and TensorStore identical to "
                      f"the frames: {r['identical']}; whole-array read MB/s: zarr + zarrs "
                      f"{r['raw_bytes'] / r['read_zarr_s'] / 1e6:.0f}, TensorStore "
                      f"{r['raw_bytes'] / r['read_ts_s'] / 1e6:.0f}")
        if not with_ts:
            print("tensorstore: not installed (pip install tensorstore), row skipped")
        if "volseg 8x" in rows:
            print(f"peak RSS 8x / 1x (volseg): "
                  f"{rows['volseg 8x']['peak_rss_mb'] / rows['volseg']['peak_rss_mb']:.2f}")
            print(f"volseg / ome-zarr throughput: "
                  f"{(rows['volseg']['raw_bytes'] / rows['volseg']['seconds']) / (rows['ome-zarr']['raw_bytes'] / rows['ome-zarr']['seconds']):.1f}x")


if __name__ == "__main__":
    main()
