"""Predict and evaluate on a local S3 server (moto) against local disk, in the same run.

Prints a table: throughput on local disk and on S3, their ratio, and the HTTP requests
per block the S3 run made (counted in the server's own request log, by method).

    .venv/bin/python benchmarks/bench_remote.py            # ~2 minutes on 2 cores
    .venv/bin/python benchmarks/bench_remote.py --timepoints 8 --size 512

moto is an in-memory Python server, far slower per request than AWS S3 or MinIO: the
ratio is a pessimistic bound; the request counts are what carries over.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from volseg.testing import make_image_store, make_tiny_model  # noqa: E402
from volseg.testing.servers import S3Server  # noqa: E402

# werkzeug colours error statuses (404 ...) with ANSI codes inside the quotes
_REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|HEAD|POST|DELETE) ([^ ]+) HTTP/1\.[01]')


class RequestLog:
    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def mark(self) -> None:
        time.sleep(0.3)
        self.offset = self.path.stat().st_size

    def since_mark(self) -> Counter:
        time.sleep(0.3)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            text = fh.read().decode(errors="replace")
        counts: Counter = Counter()
        for method, target in _REQUEST.findall(text):
            kind = "LIST" if method == "GET" and "list-type" in target else method
            counts[kind] += 1
        return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timepoints", type=int, default=8)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    from _common import machine_line  # the table's machine: compare within one run

    print(machine_line(), flush=True)

    from volseg.io import location
    from volseg.stages.evaluate import evaluate
    from volseg.stages.predict import predict

    tmp = Path(tempfile.mkdtemp(prefix="bench_remote_"))
    server = S3Server(log_path=tmp / "moto.log")
    server.make_bucket("bench")
    location.set_storage_options({"endpoint_url": server.endpoint, "key": server.key,
                                  "secret": server.secret})
    log = RequestLog(tmp / "moto.log")
    try:
        rng = np.random.default_rng(0)
        shape = (args.timepoints, args.depth, args.size, args.size)
        from scipy import ndimage

        raw = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32),
                                      sigma=(0, 0, 3, 3))
        images = ((raw - raw.min()) / (raw.max() - raw.min()) * 255).astype(np.uint8)
        truth = (images > 128).astype(np.uint8)
        model = make_tiny_model(tmp / "tiny.keras")
        where = {"disk": str(tmp), "s3": "s3://bench/run"}
        for place, root in where.items():
            make_image_store(f"{root}/im.zarr", images)
            make_image_store(f"{root}/truth.zarr", truth, mask=True)
        predict(f"{tmp}/im.zarr", model, f"{tmp}/warm.zarr")  # load TF and the model once

        rows, requests = {}, {}
        for stage in ("predict", "evaluate"):
            for place, root in where.items():
                best = None
                for k in range(args.repeat):
                    out = f"{root}/pred{k}.zarr" if stage == "predict" else f"{root}/pred0.zarr"
                    log.mark()
                    start = time.perf_counter()
                    if stage == "predict":
                        summary = predict(f"{root}/im.zarr", model, out)
                        blocks = summary["blocks"]
                    else:
                        report = evaluate(out, f"{root}/truth.zarr")
                        blocks = report["blocks"]
                    seconds = time.perf_counter() - start
                    best = seconds if best is None else min(best, seconds)
                    if place == "s3" and k == 0:
                        requests[stage] = (log.since_mark(), blocks)
                rows[(stage, place)] = (np.prod(shape) / best / 1e6, blocks)
        shards = rows[("predict", "disk")][1]  # one shard of the output per block
        print(f"\nvolume {shape} uint8, {rows[('predict', 'disk')][1]} blocks "
              f"(shards of {shape[1]} frames of "
              f"{args.size} x {args.size}); moto server on 127.0.0.1\n")
        print("| stage | blocks | disk Mvox/s | S3 Mvox/s | S3 / disk | S3 requests per shard "
              "(GET / PUT / HEAD / LIST / DELETE) | S3 requests, whole run |")
        print("|---|---|---|---|---|---|---|")
        for stage in ("predict", "evaluate"):
            disk, s3 = rows[(stage, "disk")][0], rows[(stage, "s3")][0]
            counts, blocks = requests[stage]
            total = sum(counts.values())
            by = " / ".join(f"{counts.get(m, 0) / shards:.1f}"
                            for m in ("GET", "PUT", "HEAD", "LIST", "DELETE"))
            print(f"| {stage} | {blocks} | {disk:.2f} | {s3:.2f} | {s3 / disk:.2f} | "
                  f"{total / shards:.1f} ({by}) | {total} |")
    finally:
        location.set_storage_options(None)
        server.stop()


if __name__ == "__main__":
    main()
