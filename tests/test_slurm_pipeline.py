"""The commands on `--cluster slurm` against a real Slurm: predict, evaluate and train give
what they give locally; a cancelled worker job changes nothing; errors are one line.

Every test here is marked ``slurm`` and needs the one-node Slurm of
``scripts/slurm.sh start`` (CI starts it); without it they skip and say why. Workers are
real dask-jobqueue jobs running this Python; the models are tiny U-Nets.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid

import numpy as np
import pytest
import zarr
from scipy import ndimage

from volseg.testing import VOLSEG_COMMAND as VOLSEG, make_image_store, make_tiny_model
from test_cluster import jobs_named, needs_slurm, write_profile
from volseg.io import store as st
from volseg.errors import InputError

pytestmark = [pytest.mark.slurm, pytest.mark.slow]  # minutes of real Slurm jobs

TINY = ["--filters", "4", "--depth", "2", "--patch", "32", "--batch", "2",
        "--steps-per-epoch", "2", "--workers", "1"]
TRAIN_ARGS = TINY + ["--epochs", "1"]


def smooth(shape, seed=0):
    rng = np.random.default_rng(seed)
    raw = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(0, 0, 3, 3))
    return ((raw - raw.min()) / (raw.max() - raw.min()) * 255).astype(np.uint8)


def read_pred(path):
    pred = st.open_prediction(path)
    return pred.probability.array[:], pred.mask.array[:]


def run_cli(*args):
    """`volseg ARGS` in this process: (exit code, stdout, stderr), for fixtures."""
    import contextlib
    import io

    from volseg_cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Images, truth and a tiny model, with the local prediction and report of them."""
    root = tmp_path_factory.mktemp("slurm-data")
    images = smooth((3, 4, 48, 64))
    truth = (smooth((3, 4, 48, 64), seed=1) > 140).astype(np.uint8)
    d = {"root": root,
         "images": make_image_store(root / "images.zarr", images).path,
         "truth": make_image_store(root / "truth.zarr", truth, mask=True).path,
         "model": make_tiny_model(root / "tiny.keras"),
         "pred": root / "local.zarr", "report": root / "local.json"}
    code, _, err = run_cli("predict", d["images"], "--model", d["model"], "-o", d["pred"],
                           "--threshold", "0.5", "--workers", "1", "-q")
    assert code == 0, err
    code, _, err = run_cli("evaluate", d["pred"], "--truth", d["truth"], "--json", d["report"],
                           "--workers", "1", "-q")
    assert code == 0, err
    return d


@pytest.fixture
def profile(tmp_path, monkeypatch):
    """The repository's profile under a job name of this test's own, run from tmp_path
    (job logs land in tmp_path/slurm-logs); no job of that name outlives the test."""
    monkeypatch.chdir(tmp_path)
    name = f"vp-{uuid.uuid4().hex[:8]}"

    def make(**changes):
        changes.setdefault("scheduler_options", {"dashboard_address": ":0"})
        return write_profile(tmp_path / f"{name}-{len(changes)}.yaml", name=name, **changes)

    make.name = name
    make.path = make()
    yield make
    deadline = time.monotonic() + 10
    while jobs_named(name) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not jobs_named(name)


def same_report(a: dict, b: dict) -> None:
    drop = {"seconds", "voxels_per_second", "blocks"}
    assert {k: v for k, v in a.items() if k not in drop} == \
           {k: v for k, v in b.items() if k not in drop}


# --------------------------------------------------------------------------- predict, evaluate

@needs_slurm
def test_predict_on_slurm_is_identical_to_local(data, profile, cli, tmp_path):
    code, out, err = cli("predict", data["images"], "--model", data["model"], "-o",
                         tmp_path / "slurm.zarr", "--threshold", "0.5", "--cluster", "slurm",
                         "--jobs", "2", "--jobqueue-config", profile.path)
    assert code == 0, err
    assert "Slurm: 2 Slurm jobs" in out and "first worker connected" in out
    local_prob, local_mask = read_pred(data["pred"])
    prob, mask = read_pred(tmp_path / "slurm.zarr")
    np.testing.assert_array_equal(prob, local_prob)
    np.testing.assert_array_equal(mask, local_mask)
    assert local_mask.any() and not local_mask.all()
    assert list((tmp_path / "slurm-logs").glob(f"{profile.name}-*.err"))


@needs_slurm
def test_cancelled_worker_job_mid_prediction_changes_nothing(profile, tmp_path):
    from volseg.engine.cluster import open_client
    from volseg.stages.predict import predict

    n = 200
    images = make_image_store(tmp_path / "many.zarr", smooth((n, 1, 32, 32), seed=2))
    model = make_tiny_model(tmp_path / "tiny.keras")
    assert images.block_shape[0] == 1  # one block per frame: n blocks
    # The reference, on threads of this process (a worker process would cost seconds).
    with open_client("local", processes=False) as client:
        predict(images.path, model, tmp_path / "local.zarr", client=client)
    out = tmp_path / "slurm.zarr"
    proc = subprocess.Popen(VOLSEG + [str(a) for a in (
        "predict", images.path, "--model", model, "-o", out, "--cluster", "slurm",
        "--adapt", "1:2", "--jobqueue-config", profile.path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        done, deadline = 0, time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and (out / st.LEDGER).exists():
                done = int(np.sum(zarr.open_array(str(out / st.LEDGER), mode="r")[:]))
                if done >= 10:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        # The oldest job has surely been working: cancel it in the middle of the run.
        victim = min(jobs_named(profile.name), key=int)
        subprocess.run(["scancel", victim], check=True)
        assert 10 <= done < n
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert f"{n} blocks predicted" in stdout
    for got, want in zip(read_pred(out), read_pred(tmp_path / "local.zarr")):
        np.testing.assert_array_equal(got, want)
    log = (tmp_path / "slurm-logs" / f"{profile.name}-{victim}.err").read_text()
    assert f"JOB {victim} ON" in log and "CANCELLED" in log  # slurmstepd's line


@needs_slurm
def test_evaluate_on_slurm_gives_the_local_report(data, profile, cli, tmp_path):
    code, out, err = cli("evaluate", data["pred"], "--truth", data["truth"], "--json",
                         tmp_path / "slurm.json", "--cluster", "slurm",
                         "--jobqueue-config", profile.path)
    assert code == 0, err
    report = json.loads((tmp_path / "slurm.json").read_text())
    local = json.loads(data["report"].read_text())
    same_report(report, local)
    assert report["voxels"] == 3 * 4 * 48 * 64 and report["tp"] > 0
    assert list((tmp_path / "slurm-logs").glob(f"{profile.name}-*.err"))


# --------------------------------------------------------------------------- train

@needs_slurm
def test_train_on_slurm_writes_a_model_and_streams_progress(data, profile, cli, tmp_path):
    from volseg.models.unet import load_model

    model_path = tmp_path / "out" / "m.keras"
    model_path.parent.mkdir()
    code, out, err = cli("train", "--images", data["images"], "--truth", data["truth"],
                         "-o", model_path, *TRAIN_ARGS, "--cluster", "slurm",
                         "--jobqueue-config", profile.path)
    assert code == 0, err
    lines = out.splitlines()
    where = [i for i, ln in enumerate(lines) if ln.startswith("training on ")]
    epoch = [i for i, ln in enumerate(lines) if ln.startswith("epoch 1/1: loss ")]
    saved = [i for i, ln in enumerate(lines) if ln.startswith(f"saved {model_path}")]
    assert where and epoch and saved and where[0] < epoch[0] < saved[0], out
    assert "in Slurm job" in lines[where[0]]
    assert "epoch 1: 2/2 steps" in err  # the step progress, streamed too
    model, info = load_model(model_path)
    assert model.output_shape[-1] == 1 and 0 < info["threshold"] < 1
    assert info["architecture"]["base_filters"] == 4
    assert (tmp_path / "out" / "m.history.csv").exists()


@needs_slurm
def test_input_error_in_the_training_job_is_one_line_exit_2(data, profile, cli, tmp_path):
    # A held-out time point the images do not have is found by train() in the worker
    # (the split needs the store's shape, which the submitting side does not check).
    code, out, err = cli("train", "--images", data["images"], "--truth", data["truth"],
                         "-o", tmp_path / "m.keras", *TRAIN_ARGS, "--val-timepoints", "5",
                         "--cluster", "slurm", "--jobqueue-config", profile.path)
    assert code == 2
    assert err == ("volseg train: error: --val-timepoints: time point 5 is out of range "
                   "(the last time point is 2)\n")
    assert "training on " in out  # it did run in the job
    assert not (tmp_path / "m.keras").exists()
    # A patch size that does not fit the depth is found before any job is submitted,
    # by the same checks train() makes.
    args = [a if a != "32" else "30" for a in TRAIN_ARGS]
    code, out, err = cli("train", "--images", data["images"], "--truth", data["truth"],
                         "-o", tmp_path / "m.keras", *args, "--cluster", "slurm",
                         "--jobqueue-config", profile.path)
    assert err == "volseg train: error: --patch: 30x30 must be multiples of 4 (2**depth for depth 2)\n"
    assert code == 2 and "training on " not in out


@needs_slurm
def test_ctrl_c_stops_the_training_job_and_keeps_the_best_model(data, profile, tmp_path):
    from volseg.models.unet import load_model

    model_path = tmp_path / "m.keras"
    args = TINY + ["--epochs", "1000", "--patience", "1000"]
    proc = subprocess.Popen(VOLSEG + ["train", "--images", str(data["images"]), "--truth",
                                      str(data["truth"]), "-o", str(model_path), *args,
                                      "--cluster", "slurm", "--jobqueue-config",
                                      str(profile.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = []
    try:
        for line in proc.stdout:  # arrives while the job trains: streamed, not replayed
            lines.append(line.rstrip("\n"))
            if line.startswith("epoch 1/1000: loss "):
                proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, lines
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "\n".join(lines)
    assert "interrupted: the training job stops after its current step" in out
    assert "stopped by interrupted" in out and f"wrote {model_path}" in out
    info = load_model(model_path)[1]
    assert 1 <= info["training"]["epochs_run"] < 1000
    assert info["training"]["stop_reason"] == "interrupted"


@needs_slurm
def test_training_job_cancelled_is_one_clear_error(data, profile, tmp_path):
    from volseg.engine.cluster import open_client
    from volseg.training.remote import train_on_cluster

    cancelled = []

    def cancel_at_first_epoch(line):
        if line.startswith("epoch 1/") and not cancelled:
            cancelled.extend(jobs_named(profile.name))
            subprocess.run(["scancel", *cancelled], check=True)

    start = time.monotonic()
    with open_client("slurm", jobs=1, jobqueue_config=profile.path) as client:
        with pytest.raises(InputError, match=r"Slurm job \d+ running the training ended "
                                             r"before the training did.*nothing was saved"):
            train_on_cluster(client, data["images"], data["truth"], tmp_path / "m.keras",
                             filters=4, depth=2, patch=32, batch=2, steps_per_epoch=2,
                             epochs=1000, patience=1000, workers=1, worker_timeout=3,
                             log=cancel_at_first_epoch)
    assert cancelled and time.monotonic() - start < 60
    assert not (tmp_path / "m.keras").exists()


# --------------------------------------------------------------------------- errors

def _command(which, data, tmp_path):
    if which == "predict":
        return ["predict", data["images"], "--model", data["model"], "-o", tmp_path / "p.zarr"]
    if which == "evaluate":
        return ["evaluate", data["pred"], "--truth", data["truth"]]
    return ["train", "--images", data["images"], "--truth", data["truth"], "-o",
            tmp_path / "m.keras", *TRAIN_ARGS]


@needs_slurm
@pytest.mark.parametrize("which", ["predict", "evaluate", "train"])
def test_missing_partition_is_one_line_exit_2(data, profile, cli, tmp_path, which):
    bad = profile(queue="no-such-partition")
    code, out, err = cli(*_command(which, data, tmp_path), "--cluster", "slurm",
                         "--jobqueue-config", bad)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"volseg {which}: error: {bad}: partition 'no-such-partition' "
                          "(jobqueue.slurm.queue) does not exist; partitions here: debug")


@pytest.mark.parametrize("which", ["predict", "evaluate", "train"])
def test_no_sbatch_on_path_is_one_line_exit_2(data, cli, tmp_path, monkeypatch, which):
    monkeypatch.setenv("PATH", str(tmp_path))
    code, out, err = cli(*_command(which, data, tmp_path), "--cluster", "slurm",
                         "--jobqueue-config", write_profile(tmp_path / "p.yaml"))
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"volseg {which}: error: --cluster: `sbatch` is not on PATH")


@pytest.mark.parametrize("option, value, message", [
    ("-o", "model.h5", "-o: the model file must end in .keras, not 'model.h5'"),
    ("-o", "no/such/folder/m.keras", "-o: folder no/such/folder does not exist"),
    ("--truth", "missing.zarr", "missing.zarr: no such truth store (--truth)"),
])
def test_train_on_slurm_checks_paths_before_submitting(data, cli, tmp_path, monkeypatch,
                                                       option, value, message):
    # No sbatch on PATH: had volseg tried to submit a job, the error would say so.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    args = {"--images": data["images"], "--truth": data["truth"], "-o": "m.keras", option: value}
    code, out, err = cli("train", *[x for kv in args.items() for x in kv], *TRAIN_ARGS,
                         "--cluster", "slurm")
    assert (code, err) == (2, f"volseg train: error: {message}\n")


def test_slurm_time_left_is_parsed_in_minutes():
    from volseg.engine.cluster.walltime import parse_slurm_time

    assert parse_slurm_time("59:30") == 59.5
    assert parse_slurm_time("1:00:00") == 60
    assert parse_slurm_time("2-03:04:30") == 2 * 1440 + 3 * 60 + 4.5
    assert parse_slurm_time("UNLIMITED") is None
    assert parse_slurm_time("NOT_SET") is None
    assert parse_slurm_time("") is None
