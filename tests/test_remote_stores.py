"""Stores at URLs: the whole chain against a real S3-compatible server (moto, on
127.0.0.1, request signatures checked) and a local HTTP server (read-only), compared
with the same chain on local disk; storage errors as one line; no secret anywhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from volseg.testing import VOLSEG_COMMAND as VOLSEG, assert_refused, make_tiny_model, write_frames
from volseg.testing.servers import HttpServer, S3Server, free_port

BUCKET = "volseg-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = S3Server(log_path=log)
    server.make_bucket(BUCKET)
    server.log_path = log
    yield server
    server.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """TIFF frames of images and truth (60 blocks of one frame), and a tiny model."""
    root = tmp_path_factory.mktemp("remote-data")
    rng = np.random.default_rng(3)
    from scipy import ndimage

    raw = ndimage.gaussian_filter(rng.normal(size=(60, 1, 24, 32)), sigma=(0, 0, 2, 2))
    images = ((raw - raw.min()) / (raw.max() - raw.min()) * 255).astype(np.uint8)
    truth = (images > 128).astype(np.uint8)
    return {"images": write_frames(root / "frames", images),
            "truth": write_frames(root / "truth", truth),
            "model": make_tiny_model(root / "tiny.keras"), "array": images}


RUNS: list[subprocess.CompletedProcess] = []  # every run, for the secret scan


def volseg(s3, *args, env=None, **kw):
    full = {**os.environ, **s3.env, "AWS_MAX_ATTEMPTS": "1", **(env or {})}
    r = subprocess.run(VOLSEG + [str(a) for a in args], capture_output=True, text=True,
                       env=full, **kw)
    RUNS.append(r)
    return r


def ok(r):
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def s3_keys(s3, prefix=""):
    client = s3.client()
    keys, token = [], None
    while True:
        kw = {"Bucket": BUCKET, "Prefix": prefix}
        if token:
            kw["ContinuationToken"] = token
        page = client.list_objects_v2(**kw)
        keys += [o["Key"] for o in page.get("Contents", [])]
        token = page.get("NextContinuationToken")
        if not token:
            return keys


def read_tiffs(folder: Path) -> dict:
    return {p.name: tifffile.imread(p) for p in sorted(folder.glob("*.tif"))}


def _report(path: Path) -> dict:
    report = json.loads(path.read_text())
    for key in ("prediction", "truth", "seconds", "voxels_per_second"):
        report.pop(key)
    return report


@pytest.mark.slow
def test_chain_on_s3_equals_local_disk(s3, data, tmp_path):
    url = f"s3://{BUCKET}/chain"
    local = tmp_path / "local"
    local.mkdir()
    # the chain on local disk
    ok(volseg(s3, "convert", data["images"], "-o", local / "im.zarr", "-q"))
    ok(volseg(s3, "convert", data["truth"], "--mask", "-o", local / "truth.zarr", "-q"))
    ok(volseg(s3, "predict", local / "im.zarr", "--model", data["model"], "-o",
              local / "pred.zarr", "-q"))
    ok(volseg(s3, "evaluate", local / "pred.zarr", "--truth", local / "truth.zarr",
              "--json", local / "report.json", "-q"))
    ok(volseg(s3, "export", local / "pred.zarr/probability", "-o", local / "prob", "-q"))

    # the same chain on S3, predict killed with SIGKILL after some blocks and rerun
    ok(volseg(s3, "convert", data["images"], "-o", f"{url}/im.zarr", "-q"))
    ok(volseg(s3, "convert", data["truth"], "--mask", "-o", f"{url}/truth.zarr", "-q"))
    env = dict(os.environ, **s3.env)
    proc = subprocess.Popen(VOLSEG + ["predict", f"{url}/im.zarr", "--model", str(data["model"]),
                                      "-o", f"{url}/pred.zarr", "-q", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    ledger = "chain/pred.zarr/volseg_done/c/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if len(s3_keys(s3, ledger)) >= 5:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    time.sleep(0.5)
    done = len(s3_keys(s3, ledger))
    assert 0 < done < 60
    # the killed run's lock is left behind; its process is gone, so it is taken over
    assert "chain/.pred.zarr.lock" in s3_keys(s3, "chain/")
    r = assert_refused(volseg(s3, "evaluate", f"{url}/pred.zarr", "--truth",
                              f"{url}/truth.zarr"), "incomplete")
    assert url in r
    r = ok(volseg(s3, "predict", f"{url}/im.zarr", "--model", data["model"], "-o",
                  f"{url}/pred.zarr"))
    assert f"{60 - done} of 60 blocks to predict" in r.stdout + r.stderr
    assert not [k for k in s3_keys(s3, "chain/") if "lock" in k or "volseg_done" in k]

    ok(volseg(s3, "evaluate", f"{url}/pred.zarr", "--truth", f"{url}/truth.zarr",
              "--json", tmp_path / "report.json", "-q"))
    ok(volseg(s3, "export", f"{url}/pred.zarr/probability", "-o", tmp_path / "prob", "-q"))
    ok(volseg(s3, "verify", f"{url}/pred.zarr", "-q"))

    assert _report(tmp_path / "report.json") == _report(local / "report.json")
    remote, here = read_tiffs(tmp_path / "prob"), read_tiffs(local / "prob")
    assert len(remote) == 60 and remote.keys() == here.keys()
    for name in here:
        np.testing.assert_array_equal(remote[name], here[name])
    # the stores themselves hold the same bytes of metadata, but for paths and times
    pred_meta = json.loads(s3.client().get_object(Bucket=BUCKET, Key="chain/pred.zarr/zarr.json")
                           ["Body"].read())
    assert pred_meta["attributes"]["volseg"]["complete"] is True
    assert pred_meta["attributes"]["volseg"]["job"]["sources"][0]["path"] == f"{url}/im.zarr"


def _untimed(value):
    """A report without times and paths (what differs between two identical runs)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items()
                if "second" not in k and k not in ("path", "source", "mask", "store")}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


@pytest.mark.slow
def test_measure_and_info_from_s3(s3, data, tmp_path):
    url = f"s3://{BUCKET}/measure"
    ok(volseg(s3, "convert", data["truth"], "--mask", "-o", f"{url}/truth.zarr", "-q"))
    ok(volseg(s3, "convert", data["truth"], "--mask", "-o", tmp_path / "truth.zarr", "-q"))
    a = ok(volseg(s3, "measure", f"{url}/truth.zarr", "--json", tmp_path / "a.json", "-q"))
    b = ok(volseg(s3, "measure", tmp_path / "truth.zarr", "--json", tmp_path / "b.json", "-q"))
    del a, b
    ra, rb = (_untimed(json.loads((tmp_path / n).read_text())) for n in ("a.json", "b.json"))
    assert ra == rb
    info = ok(volseg(s3, "info", f"{url}/truth.zarr")).stdout
    assert "complete" in info and f"{url}/truth.zarr" in info


@pytest.mark.slow
def test_overwrite_on_s3_replaces_only_when_complete(s3, data, tmp_path):
    url = f"s3://{BUCKET}/over/im.zarr"
    ok(volseg(s3, "convert", data["truth"], "--mask", "-o", url, "-q"))
    assert_refused(volseg(s3, "convert", data["images"], "-o", url, "-q"),
                   url, "--overwrite")
    ok(volseg(s3, "convert", data["images"], "-o", url, "-q", "--overwrite"))
    ok(volseg(s3, "export", url, "-o", tmp_path / "out", "-q"))
    got = np.stack([tifffile.imread(p) for p in sorted((tmp_path / "out").glob("*.tif"))])
    np.testing.assert_array_equal(got, data["array"].reshape(got.shape))
    left = [k for k in s3_keys(s3, "over/") if not k.startswith("over/im.zarr/")]
    assert left == [], left  # no lock, no .volseg-new, no swap marker


@pytest.mark.slow
def test_interrupted_swap_is_finished_by_the_next_run(s3, data):
    from volseg.io import location
    from volseg.engine.outputs import _SWAP, _sibling, open_output
    from volseg.io.store import make_job

    location.set_storage_options({"endpoint_url": s3.endpoint, "key": s3.key,
                                  "secret": s3.secret})
    try:
        url = f"s3://{BUCKET}/swap/im.zarr"
        ok(volseg(s3, "convert", data["truth"], "--mask", "-o", url, "-q"))
        ok(volseg(s3, "convert", data["images"], "-o", f"s3://{BUCKET}/swap/.im.zarr.volseg-new",
                  "-q"))
        path = location.locate(url)
        _sibling(path, _SWAP).write_text("{}")  # the crash came after the marker
        job = make_job("other", parameters={})
        with pytest.raises(Exception, match="already exists and is complete"):
            with open_output(url, job=job):
                pass
        keys = s3_keys(s3, "swap/")
        assert not [k for k in keys if "volseg-" in k or k.endswith(".lock")], keys
    finally:
        location.set_storage_options(None)
    r = ok(volseg(s3, "info", url))
    assert "content: image" in r.stdout  # the new store, complete, in place


@pytest.mark.slow
def test_one_writer_on_s3(s3, data):
    from volseg.io import location
    from volseg.errors import InputError
    from volseg.engine.outputs import open_output
    from volseg.io.store import make_job

    location.set_storage_options({"endpoint_url": s3.endpoint, "key": s3.key,
                                  "secret": s3.secret})
    try:
        url = f"s3://{BUCKET}/lock/out.zarr"
        job = make_job("x", parameters={})
        with open_output(url, job=job, command="volseg first"):
            with pytest.raises(InputError, match="another volseg is writing it: `volseg first`"):
                with open_output(url, job=job):
                    pass
            r = volseg(s3, "convert", data["images"], "-o", url)
            assert_refused(r, url, "another volseg is writing it")
        assert "lock/.out.zarr.lock" not in s3_keys(s3, "lock/")
    finally:
        location.set_storage_options(None)


def test_http_is_read_only(s3, data, tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    ok(volseg(s3, "convert", data["images"], "-o", served / "im.zarr", "-q"))
    http = HttpServer(served)
    try:
        url = f"{http.url}/im.zarr"
        info = ok(volseg(s3, "info", url)).stdout
        assert "complete" in info
        ok(volseg(s3, "export", url, "-o", tmp_path / "out", "-q"))
        got = np.stack([tifffile.imread(p) for p in sorted((tmp_path / "out").glob("*.tif"))])
        np.testing.assert_array_equal(got, data["array"].reshape(got.shape))
        assert_refused(volseg(s3, "convert", data["images"], "-o", f"{http.url}/new.zarr"),
                       f"{http.url}/new.zarr", "read-only")
        assert_refused(volseg(s3, "predict", url, "--model", data["model"], "-o",
                              f"{http.url}/p.zarr"), "read-only")
        assert_refused(volseg(s3, "info", f"{http.url}/missing.zarr"), "missing.zarr")
        line = assert_refused(volseg(s3, "info", "https://user:secretpw@127.0.0.1:1/x.zarr"),
                              "https://127.0.0.1:1/x.zarr", "cannot reach")
        assert "secretpw" not in line
    finally:
        http.stop()


def test_storage_errors_are_one_line(s3, data, tmp_path):
    frames = data["images"]
    line = assert_refused(volseg(s3, "convert", frames, "-o", "s3://no-such-bucket/im.zarr"),
                          "s3://no-such-bucket/im.zarr", "does not exist", "create it")
    line = assert_refused(volseg(s3, "convert", frames, "-o", f"s3://{BUCKET}/x.zarr",
                                 env={"AWS_SECRET_ACCESS_KEY": "wrong-secret-123"}),
                          f"s3://{BUCKET}/x.zarr", "access denied", "credentials")
    assert "wrong-secret-123" not in line
    line = assert_refused(volseg(s3, "info", f"s3://{BUCKET}/x.zarr",
                                 env={"AWS_ACCESS_KEY_ID": "AKIANOTAKEY"}), "access denied")
    port = free_port()
    assert_refused(volseg(s3, "convert", frames, "-o", f"s3://{BUCKET}/x.zarr",
                          env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}),
                   f"s3://{BUCKET}/x.zarr", "cannot reach", f"127.0.0.1:{port}")
    assert_refused(volseg(s3, "--storage-options", "{not json", "info", f"s3://{BUCKET}/x"),
                   "--storage-options")
    assert_refused(volseg(s3, "info", f"s3://{BUCKET}/nothing.zarr"), "no such")
    # no credentials anywhere (no keys, no profile, no ~/.aws), and an option s3fs lacks
    bare = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    bare.update(HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "none"),
                AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
                AWS_ENDPOINT_URL=s3.env["AWS_ENDPOINT_URL"])
    r = subprocess.run(VOLSEG + ["info", f"s3://{BUCKET}/x.zarr"], capture_output=True,
                       text=True, env=bare)
    assert_refused(r, f"s3://{BUCKET}/x.zarr", "credentials", "AWS_PROFILE")
    assert_refused(volseg(s3, "--storage-options", '{"endpoint_urll": "http://x"}', "info",
                          f"s3://{BUCKET}/x.zarr"), "'endpoint_urll'", "--storage-options")


@pytest.mark.slow
def test_storage_options_flag_and_no_secret_anywhere(s3, data, tmp_path):
    """Keys given with --storage-options work (environment has wrong ones) and appear in
    no attribute, no object, no log line and no message."""
    opts = json.dumps({"key": s3.key, "secret": s3.secret, "endpoint_url": s3.endpoint})
    bad = {"AWS_ACCESS_KEY_ID": "AKIAWRONG", "AWS_SECRET_ACCESS_KEY": "wrong"}
    url = f"s3://{BUCKET}/opts/im.zarr"
    ok(volseg(s3, "--storage-options", opts, "convert", data["images"], "-o", url, env=bad))
    ok(volseg(s3, "--storage-options", opts, "predict", url, "--model", data["model"], "-o",
              f"s3://{BUCKET}/opts/pred.zarr", env=bad))
    meta = json.loads(s3.client().get_object(Bucket=BUCKET, Key="opts/im.zarr/zarr.json")
                      ["Body"].read())
    assert "'<hidden>'" in meta["attributes"]["volseg"]["job"]["command"]
    # every object volseg wrote in this module (attributes, locks, ledgers, chunks)
    client = s3.client()
    for key in s3_keys(s3):
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert s3.secret.encode() not in body, key
    for r in RUNS:
        assert s3.secret not in r.stdout and s3.secret not in r.stderr, r.args
    log = Path(s3.log_path).read_text(errors="replace")
    assert "PUT /volseg-test/" in log  # the server's own log saw the traffic ...
    assert s3.secret not in log  # ... but never the secret (requests are signed)


@pytest.mark.slow
def test_train_forest_from_s3(s3, data, tmp_path):
    """Training reads its images and truth from the bucket; provenance names the URLs."""
    url = f"s3://{BUCKET}/train"
    ok(volseg(s3, "convert", data["images"], "-o", f"{url}/im.zarr", "-q"))
    ok(volseg(s3, "convert", data["truth"], "--mask", "-o", f"{url}/truth.zarr", "-q"))
    r = ok(volseg(s3, "train", "--method", "forest", "--images", f"{url}/im.zarr",
                  "--truth", f"{url}/truth.zarr", "-o", tmp_path / "f.model", "--trees", "5",
                  "--max-samples", "5000"))
    assert "random forest on" in r.stdout
    from volseg.models.forest import load_forest

    info = load_forest(tmp_path / "f.model")[1]
    assert info["provenance"]["images"] == f"{url}/im.zarr"


@pytest.mark.slow
def test_lost_shard_on_s3_is_damage_not_data(s3, data, tmp_path):
    """The integrity rules hold on object storage: a deleted shard object is named as
    missing frames by every read (export) and by verify, never read as zeros."""
    url = f"s3://{BUCKET}/damage/im.zarr"
    ok(volseg(s3, "convert", data["images"], "-o", url, "-q"))
    s3.client().delete_object(Bucket=BUCKET, Key="damage/im.zarr/0/c/7/0/0/0")
    line = assert_refused(volseg(s3, "export", url, "-o", tmp_path / "out", "-q"),
                          f"{url}/0", "missing", "t=7")
    assert "t=7 z=0" in line
    r = volseg(s3, "verify", url)
    assert r.returncode != 0 and "t=7" in r.stdout + r.stderr
