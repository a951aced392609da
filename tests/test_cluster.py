"""volseg.cluster: the local cluster, the Slurm profile, and a real Slurm.

Tests marked ``slurm`` need the one-node Slurm of ``scripts/slurm.sh start`` (CI starts
it before pytest); without it they skip and say so. The others (profile, job script,
missing sbatch) run anywhere.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dask
import pytest
import yaml

from volseg.engine.cluster import (check_options, gpu_resources, gpus_per_job, job_script,
                            open_client, parse_adapt)
from volseg.engine.cluster.waiting import cluster_job_ids
from volseg.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "jobqueue.yaml"


def _slurm_state() -> str | None:
    """Why Slurm cannot be used here, or None when it is up."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed (run scripts/slurm.sh start)"
    try:
        # scontrol ping answers at once; sinfo retries for seconds when Slurm is down.
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
        if "UP" not in ping.stdout:
            return "the Slurm controller is not running (run scripts/slurm.sh start)"
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=10)
    except subprocess.TimeoutExpired:
        return "Slurm does not answer (run scripts/slurm.sh start)"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s in ("idle", "mixed", "allocated") for s in states):
        return f"Slurm is not up (sinfo: {out.stderr.strip() or states}); run scripts/slurm.sh start"
    return None


_WHY_NOT = _slurm_state()


def needs_slurm(test):
    """Mark a test ``slurm`` (and slow: real jobs take seconds to start) and skip it,
    saying why, when Slurm is not up."""
    skip = pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))
    return pytest.mark.slurm(pytest.mark.slow(skip(test)))


def write_profile(path: Path, **changes) -> Path:
    """The repository's profile with some jobqueue.slurm settings changed."""
    config = yaml.safe_load(PROFILE.read_text())
    slurm = config["jobqueue"]["slurm"]
    for key, value in changes.items():
        key = key.replace("_", "-")
        if key.startswith("add-"):
            slurm[key[4:]] = list(slurm.get(key[4:]) or []) + list(value)
        else:
            slurm[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


def jobs_named(name: str) -> list[str]:
    """Ids of the pending or running Slurm jobs of this name."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True,
                         text=True)
    return out.stdout.split()


# --------------------------------------------------------------------------- local

def test_local_client_runs_tasks_and_asks_for_no_gpu():
    with open_client("local", workers=1, threads=2, processes=False) as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert gpu_resources(client) is None
        assert sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()) == 2


def test_local_worker_processes_know_their_thread_count():
    with open_client("local", workers=2, threads=1) as client:
        env = client.run(lambda: __import__("os").environ.get("VOLSEG_THREADS"))
        assert list(env.values()) == ["1", "1"]


def test_local_worker_processes_say_nothing_below_critical(capfd):
    # a worker's ERROR logs are tracebacks volseg reports in one line (a failed task) or
    # that mean nothing to a user (a heartbeat failing while an interrupted run closes)
    import logging

    def fail():
        logging.getLogger("distributed.worker").error("a worker's error log")
        raise ValueError("a task's error")

    with open_client("local", workers=1, threads=1) as client:
        levels = client.run(lambda: logging.getLogger("distributed.worker").getEffectiveLevel())
        assert list(levels.values()) == [logging.CRITICAL]
        with pytest.raises(ValueError, match="a task's error"):
            client.submit(fail, pure=False).result()
    err = capfd.readouterr().err
    assert "a worker's error log" not in err and "Compute Failed" not in err, err


def test_local_client_refuses_slurm_options():
    with pytest.raises(InputError, match="jobs: only for a Slurm cluster"):
        with open_client("local", jobs=2):
            pass
    with pytest.raises(InputError, match="cluster: unknown cluster 'pbs'"):
        with open_client("pbs"):
            pass


@pytest.mark.parametrize("options, param, message", [
    (dict(cluster="local", adapt=(1, 2)), "adapt", "only for a Slurm cluster"),
    (dict(cluster="slurm", jobs=1, adapt=(1, 2)), "adapt", "not both"),
    (dict(cluster="slurm", adapt=(3, 2)), "adapt", "need 0 <= MIN <= MAX"),
    (dict(cluster="slurm", adapt=(0, 0)), "adapt", "MAX >= 1"),
    (dict(cluster="slurm", jobs=0), "jobs", "must be at least 1, got 0"),
    (dict(cluster="local", workers=0), "workers", "must be at least 1, got 0"),
])
def test_cluster_options_are_checked_in_one_place(options, param, message):
    with pytest.raises(InputError) as exc:
        check_options(**options)
    assert exc.value.param == param and message in exc.value.message
    assert parse_adapt("1:8") == (1, 8) and parse_adapt(None) is None
    with pytest.raises(InputError, match="adapt: expected MIN:MAX"):
        parse_adapt("8")


def test_cli_reports_cluster_options_as_flags(cli, tmp_path):
    code, _, err = cli("predict", tmp_path / "i.zarr", "--model", tmp_path / "m.keras", "-o",
                       tmp_path / "p.zarr", "--adapt", "1:4")
    assert (code, err) == (2, "volseg predict: error: --adapt: only for a Slurm cluster\n")
    code, _, err = cli("predict", tmp_path / "i.zarr", "--model", tmp_path / "m.keras", "-o",
                       tmp_path / "p.zarr", "--cluster", "slurm", "--adapt", "4:1")
    assert code == 2 and err == ("volseg predict: error: --adapt: need 0 <= MIN <= MAX and "
                                 "MAX >= 1, got 4:1\n")


# --------------------------------------------------------------------------- profile

def test_job_script_from_repository_profile_has_gres_and_prologue():
    script = job_script(PROFILE)
    lines = script.splitlines()
    assert "#SBATCH --gres=gpu:1" in lines
    assert "#SBATCH -p debug" in lines
    assert f"export VOLSEG_PREFIX={sys.prefix}" in lines
    assert "export VOLSEG_THREADS=1" in lines  # cores 1, processes 1
    activate = [ln for ln in lines if "source" in ln and "VOLSEG_PREFIX" in ln]
    assert activate and lines.index(activate[0]) > lines.index(f"export VOLSEG_PREFIX={sys.prefix}")
    worker = [ln for ln in lines if "distributed.cli.dask_worker" in ln]
    assert len(worker) == 1 and worker[0].startswith(sys.executable + " ")
    # The activation comes before the worker; GPU workers advertise the resource once.
    assert lines.index(activate[0]) < lines.index(worker[0])
    assert worker[0].count("GPU=1") == 1 and "--interface lo" in worker[0]


def test_gpu_resource_follows_the_gres_request(tmp_path):
    gpu = write_profile(tmp_path / "gpu.yaml", worker_extra_args=[],
                        job_extra_directives=["--gres=gpu:a100:2"], processes=2, cores=2)
    script = job_script(gpu)
    assert "--resources GPU=1" in script  # 2 GPUs over 2 worker processes
    assert "export VOLSEG_THREADS=1" in script  # 2 cores over 2 processes
    cpu = write_profile(tmp_path / "cpu.yaml", worker_extra_args=[], job_extra_directives=[])
    script = job_script(cpu)
    assert "--resources" not in script and "--gres" not in script
    mixed = write_profile(tmp_path / "mixed.yaml", worker_extra_args=["--resources", "MEM=1e9"])
    assert "--resources MEM=1e9,GPU=1" in job_script(mixed)
    too_few = write_profile(tmp_path / "few.yaml", processes=2, cores=2)
    with pytest.raises(InputError, match="processes"):
        job_script(too_few)


def test_gpus_per_job_parses_the_usual_spellings():
    assert gpus_per_job(["--gres=gpu:1"]) == 1
    assert gpus_per_job(["--gres=gpu:v100:4,tmp:10G"]) == 4
    assert gpus_per_job(["--gres=gpu"]) == 1
    assert gpus_per_job(["--gpus=2", "--qos=short"]) == 2
    assert gpus_per_job(["--gpus-per-node=a100:3"]) == 3
    assert gpus_per_job(["-G 2"]) == 2
    assert gpus_per_job(["--constraint=gpu_node", "--gres=tmp:1"]) == 0
    assert gpus_per_job(None) == 0


def test_profile_file_overrides_dask_config_key_by_key(tmp_path):
    profile = tmp_path / "site.yaml"
    profile.write_text("jobqueue:\n  slurm:\n    cores: 3\n    memory: 5GB\n"
                       "    walltime: '00:07:00'\n")
    # What ~/.config/dask/jobqueue.yaml would hold: the file wins where it says
    # something, the rest still comes through.
    with dask.config.set({"jobqueue.slurm.walltime": "05:00:00",
                          "jobqueue.slurm.account": "lab42"}):
        script = job_script(profile)
        # ... and the dask configuration is as it was afterwards.
        assert dask.config.get("jobqueue.slurm.walltime") == "05:00:00"
    assert "#SBATCH -t 00:07:00" in script
    assert "#SBATCH -A lab42" in script
    assert "#SBATCH --cpus-per-task=3" in script


def test_default_profile_is_jobqueue_yaml_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_profile(tmp_path / "jobqueue.yaml", queue="gpu-long")
    assert "#SBATCH -p gpu-long" in job_script()


def test_bad_profiles_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        job_script(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobqueue:\n  slurm: [\n")
    with pytest.raises(InputError, match="bad.yaml: not valid YAML"):
        job_script(bad)
    other = tmp_path / "other.yaml"
    other.write_text("jobqueue:\n  pbs:\n    cores: 1\n")
    with pytest.raises(InputError, match="no 'jobqueue: slurm:' section"):
        job_script(other)
    nocores = tmp_path / "nocores.yaml"
    nocores.write_text("jobqueue:\n  slurm:\n    memory: 1GB\n")
    with dask.config.set({"jobqueue.slurm.cores": None}):
        with pytest.raises(InputError, match="cores is not set"):
            job_script(nocores)


def test_no_sbatch_on_path_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InputError, match="`sbatch` is not on PATH"):
        with open_client("slurm", jobqueue_config=PROFILE):
            pass


# --------------------------------------------------------------------------- real Slurm

@pytest.fixture
def slurm_profile(tmp_path, monkeypatch, request):
    """Write the repository's profile, with a job name of this test's own and any
    changes, into tmp_path and run from there (job logs land in tmp_path/slurm-logs).
    Afterwards no job of that name is left: open_client cancels its jobs on the way
    out, whatever happened inside."""
    monkeypatch.chdir(tmp_path)
    name = f"vt-{uuid.uuid4().hex[:8]}"

    def make(**changes):
        # Any free port for the dashboard: 8787 may be taken by another cluster.
        changes.setdefault("scheduler_options", {"dashboard_address": ":0"})
        return write_profile(tmp_path / f"{name}.yaml", name=name, **changes)

    make.name = name
    yield make
    deadline = time.monotonic() + 10
    while jobs_named(name) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not jobs_named(name)


@needs_slurm
def test_two_slurm_workers_from_repository_profile(slurm_profile, tmp_path):
    messages = []
    profile = slurm_profile()
    with open_client("slurm", jobs=2, jobqueue_config=profile, log=messages.append) as client:
        client.wait_for_workers(2, timeout=30)
        assert len(jobs_named(slurm_profile.name)) == 2
        workers = client.scheduler_info()["workers"].values()
        assert all(w["resources"] == {"GPU": 1.0} for w in workers)
        assert gpu_resources(client) == {"GPU": 1}
        pids = client.run(lambda: __import__("os").getpid())
        assert len(set(pids.values())) == 2
        futures = client.map(lambda x: x * x, range(20), resources=gpu_resources(client))
        assert sum(client.gather(futures)) == sum(x * x for x in range(20))
        # The workers run this Python, in the environment the prologue activated.
        env = client.run(lambda: (__import__("sys").executable,
                                  __import__("os").environ.get("VIRTUAL_ENV")))
        assert all(e == (sys.executable, sys.prefix) for e in env.values())
        threads = client.run(lambda: __import__("os").environ.get("VOLSEG_THREADS"))
        assert list(threads.values()) == ["1", "1"]
    assert any("first worker connected" in m for m in messages)
    assert len(list((tmp_path / "slurm-logs").glob(f"{slurm_profile.name}-*.err"))) == 2


@needs_slurm
def test_cancelled_job_under_adapt_is_replaced_and_result_is_complete(slurm_profile):
    def slow_square(i):
        import time

        time.sleep(0.05)
        return i * i

    n = 300
    with open_client("slurm", adapt=(1, 2), jobqueue_config=slurm_profile()) as client:
        futures = client.map(slow_square, range(n), pure=False)
        client.wait_for_workers(2, timeout=20)
        while sum(f.done() for f in futures) < 20:
            time.sleep(0.05)
        before = cluster_job_ids(client.cluster)
        assert len(before) == 2
        victim = max(before, key=int)
        subprocess.run(["scancel", victim], check=True)
        assert sum(f.done() for f in futures) < n  # cancelled mid-computation
        assert client.gather(futures) == [i * i for i in range(n)]
        # Adaptive scaling submitted a job in place of the cancelled one.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = cluster_job_ids(client.cluster)
            if victim not in now and now - before:
                break
            time.sleep(0.2)
        assert victim not in now and now - before


@needs_slurm
def test_missing_partition_is_an_input_error(slurm_profile):
    profile = slurm_profile(queue="no-such-partition")
    with pytest.raises(InputError, match=r"\.yaml: partition 'no-such-partition'.*"
                                         r"does not exist; partitions here: .*debug"):
        with open_client("slurm", jobqueue_config=profile):
            pass


@needs_slurm
def test_job_slurm_cannot_run_is_an_input_error(slurm_profile):
    profile = slurm_profile(cores=4096)
    with pytest.raises(InputError, match="Slurm rejects the worker job: .*not available"):
        with open_client("slurm", jobqueue_config=profile):
            pass


@needs_slurm
def test_pending_past_timeout_shows_squeue_reason(slurm_profile):
    profile = slurm_profile(add_job_extra_directives=["--begin=now+3600"])
    start = time.monotonic()
    with pytest.raises(InputError, match=r"waiting after 2 s: job \d+: PENDING \(BeginTime\)"):
        with open_client("slurm", jobqueue_config=profile, pending_timeout=2):
            pass
    assert time.monotonic() - start < 15


@needs_slurm
def test_worker_that_never_connects_suggests_interface(slurm_profile):
    # A running job whose worker does not reach the scheduler looks the same from
    # here whatever the cause; a prologue that hangs makes it happen on one machine.
    profile = slurm_profile(add_job_script_prologue=["sleep 120"])
    with pytest.raises(InputError, match=r"did not connect .* jobqueue\.slurm\.interface"):
        with open_client("slurm", jobqueue_config=profile, connect_timeout=2):
            pass


@needs_slurm
def test_job_that_dies_early_points_to_its_log(slurm_profile):
    profile = slurm_profile(add_job_script_prologue=["echo 'module: command not found' >&2",
                                                     "exit 3"])
    with pytest.raises(InputError, match=r"ended \(FAILED\) before its Dask worker connected.*"
                                         rf"{slurm_profile.name}-\d+\.err: module: command not found"):
        with open_client("slurm", jobqueue_config=profile):
            pass
