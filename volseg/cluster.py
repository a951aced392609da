"""The Dask cluster every command runs on: the local machine by default, or Slurm.

One function, :func:`open_client`, builds the cluster for every command, so predict,
evaluate and train share the same choices (and the same error messages).

On Slurm the workers are dask-jobqueue jobs described by a *profile*: the
``jobqueue: slurm:`` section of a YAML file in dask-jobqueue's standard form (the
repository's ``jobqueue.yaml`` is a commented example). The profile is layered over
Dask's own configuration, so the usual locations (``~/.config/dask/``, ``/etc/dask/``,
``$DASK_CONFIG``) work too, and the file named by ``jobqueue_config`` (or
``./jobqueue.yaml``) wins over them.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import weakref
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .errors import InputError

CLUSTER_KINDS = ("local", "slurm")

#: The profile read when none is given, relative to the working directory.
DEFAULT_PROFILE = "jobqueue.yaml"

#: How long a lost worker's job is kept before adaptive scaling replaces it
#: (distributed's default is 15 s).
ADAPT_LOST_WORKER_TIMEOUT = "3s"

# Worker resources that a client's workers advertise, for gpu_resources().
_CLIENT_RESOURCES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@contextmanager
def open_client(cluster: str = "local", *, workers: int | None = None,
                threads: int | None = None, processes: bool = True,
                jobs: int | None = None, adapt: tuple[int, int] | None = None,
                jobqueue_config: str | os.PathLike | None = None, log=None,
                pending_timeout: float = 600.0, connect_timeout: float = 120.0):
    """Start a Dask cluster and yield a ``distributed.Client`` connected to it.

    Parameters
    ----------
    cluster : {"local", "slurm"}
        Where the workers run.
    workers, threads : int, optional
        Local cluster: worker processes and threads per worker (default one worker
        process using every core).
    processes : bool
        Local cluster: workers in processes (True) or threads of this process.
    jobs : int, optional
        Slurm: a fixed number of worker jobs (default 1 when ``adapt`` is not given).
        A fixed cluster does not replace a job that ends (walltime, preemption).
    adapt : (int, int), optional
        Slurm: adaptive scaling between ``min`` and ``max`` jobs; a job that ends is
        replaced within seconds and its unfinished tasks run again elsewhere.
    jobqueue_config : path, optional
        Slurm: the profile (YAML with a ``jobqueue: slurm:`` section). Default:
        ``./jobqueue.yaml`` if it exists, else Dask's configuration alone.
    log : callable, optional
        ``log(message)`` for one-line status messages (jobs submitted, dashboard).
    pending_timeout : float
        Slurm: seconds to wait for a job to start before giving up (with squeue's
        reason for the wait).
    connect_timeout : float
        Slurm: seconds a running job's worker gets to connect to the scheduler.

    Yields
    ------
    distributed.Client
        With at least one worker connected. Pass :func:`gpu_resources` of it as
        ``resources=`` to tasks that run a model.
    """
    if cluster not in CLUSTER_KINDS:
        raise InputError(f"--cluster: unknown cluster {cluster!r}; use one of {', '.join(CLUSTER_KINDS)}")
    if cluster == "local":
        if jobs is not None or adapt is not None:
            raise InputError("--jobs/--adapt: only for --cluster slurm")
        with _local_client(workers=workers, threads=threads, processes=processes) as client:
            yield client
        return
    with _slurm_client(jobs=jobs, adapt=adapt, jobqueue_config=jobqueue_config, log=log,
                       pending_timeout=pending_timeout,
                       connect_timeout=connect_timeout) as client:
        yield client


def gpu_resources(client) -> dict | None:
    """The ``resources=`` that model tasks should ask for on this client's workers.

    ``{"GPU": 1}`` when the workers advertise a ``GPU`` resource (a Slurm profile that
    requests GPUs), else ``None`` (run anywhere: local cluster, CPU-only profile).
    """
    known = _CLIENT_RESOURCES.get(client)
    if known is not None:
        return dict(known) or None
    try:
        workers = client.scheduler_info().get("workers", {})
    except Exception:  # a closed client: nothing to ask for
        return None
    if any("GPU" in (w.get("resources") or {}) for w in workers.values()):
        return {"GPU": 1}
    return None


def job_script(jobqueue_config: str | os.PathLike | None = None) -> str:
    """The batch script one Slurm worker job would run, from the profile.

    Nothing is submitted and no scheduler starts, so this works anywhere (no Slurm
    needed); the scheduler address is a placeholder.
    """
    from dask_jobqueue.slurm import SLURMJob

    with _profile(jobqueue_config) as source:
        kwargs = _job_kwargs(source)
        # dask-jobqueue creates the log directory when it builds a job; only showing
        # the script should not leave one behind.
        made = _missing_dirs(kwargs.get("log_directory"))
        try:
            job = SLURMJob(scheduler="tcp://<scheduler-address>:8786", name="volseg-worker",
                           **kwargs)
            return job.job_script()
        finally:
            for path in made:
                try:
                    path.rmdir()
                except OSError:
                    break


def _missing_dirs(path) -> list[Path]:
    """The directories ``path`` and its parents that do not exist yet, deepest first."""
    missing = []
    if path:
        p = Path(path).absolute()
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
    return missing


def gpus_per_job(directives) -> int:
    """GPUs a job asks for in its ``#SBATCH`` lines (``--gres=gpu[:type]:N``,
    ``--gpus[-per-node]=[type:]N``, ``-G N``); 0 for none."""
    total = 0
    for line in directives or ():
        line = str(line)
        for spec in re.findall(r"--gres[=\s]+(\S+)", line):
            for item in spec.split(","):
                parts = item.split(":")
                if parts[0] == "gpu":
                    total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
        for spec in re.findall(r"(?:--gpus(?:-per-node)?[=\s]+|-G\s*)(\S+)", line):
            count = spec.split(":")[-1]
            total += int(count) if count.isdigit() else 1
    return total


# --------------------------------------------------------------------------- local

@contextmanager
def _local_client(*, workers, threads, processes):
    from distributed import Client, LocalCluster

    cores = os.cpu_count() or 1
    workers = workers or 1
    if workers < 1:
        raise InputError(f"--workers: must be at least 1, got {workers}")
    threads = threads or max(1, cores // workers)
    if threads < 1:
        raise InputError(f"--threads: must be at least 1, got {threads}")
    # Worker processes size their TensorFlow thread pools from VOLSEG_THREADS: the cores
    # each process may use, whatever its number of Dask threads (they would each take
    # every core otherwise); threads of this process share one pool.
    per_process = max(1, cores // workers)
    extra = {"env": {"VOLSEG_THREADS": str(per_process)}} if processes else {}
    # distributed starts workers with MALLOC_TRIM_THRESHOLD_=64 KiB, so each block's
    # buffers go back to the kernel and fault in again (~8,700 page faults per block);
    # larger glibc thresholds make evaluate ~1.6x faster (benchmarks/bench_evaluate.py).
    malloc = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": str(128 * 2**20),
              "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}
    import dask

    with dask.config.set(malloc), \
            LocalCluster(n_workers=workers, threads_per_worker=threads, processes=processes,
                         dashboard_address=":0", silence_logs=logging.ERROR, **extra) as lc:
        with Client(lc) as client:
            yield client


# --------------------------------------------------------------------------- profile

def _profile_path(jobqueue_config) -> Path | None:
    if jobqueue_config is not None:
        path = Path(jobqueue_config).expanduser()
        if not path.is_file():
            raise InputError(f"--jobqueue-config {jobqueue_config}: no such file")
        return path
    default = Path(DEFAULT_PROFILE)
    return default if default.is_file() else None


def _read_profile(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InputError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    section = (data or {}).get("jobqueue", {}) if isinstance(data, dict) else None
    if not isinstance(section, dict) or not isinstance(section.get("slurm"), dict):
        raise InputError(f"{path}: no 'jobqueue: slurm:' section; see the jobqueue.yaml "
                         "in volseg's repository for the form")
    return data


def _import_dask_jobqueue() -> None:
    """Import dask_jobqueue and undo its side effect: its ``runner`` module replaces the
    SIGINT handler by ``sys.exit()``, so Ctrl-C would end volseg silently with exit
    code 0 (a half-done run that looks successful) instead of raising KeyboardInterrupt."""
    import signal
    import threading

    import dask_jobqueue  # noqa: F401

    handler = signal.getsignal(signal.SIGINT)
    if (getattr(handler, "__module__", None) == "dask_jobqueue.runner"
            and threading.current_thread() is threading.main_thread()):
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def _profile(jobqueue_config, extra: dict | None = None):
    """Apply ``extra`` settings, then the profile file over Dask's configuration;
    yield a label for error messages (the file, or where the settings came from)."""
    import dask

    _import_dask_jobqueue()  # registers its defaults in dask.config first

    path = _profile_path(jobqueue_config)
    with ExitStack() as stack:
        if extra:
            stack.enter_context(dask.config.set(extra))
        if path is not None:
            profile = _read_profile(path)
            merged = copy.deepcopy(dask.config.config)
            dask.config.update(merged, profile)  # the file wins, key by key
            changed = {k: v for k, v in merged.items() if dask.config.config.get(k) != v}
            stack.enter_context(dask.config.set(changed))
            yield str(path)
        else:
            yield "the Dask configuration (jobqueue.slurm; give --jobqueue-config PATH)"


def _settings() -> dict:
    import dask

    return dict(dask.config.get("jobqueue.slurm", default={}) or {})


def _job_kwargs(source: str) -> dict:
    """Keyword arguments for SLURMJob/SLURMCluster beyond what they read from the
    config themselves: GPU resource, environment activation, log directory."""
    s = _settings()
    for key in ("cores", "memory"):
        if s.get(key) in (None, ""):
            raise InputError(f"{source}: jobqueue.slurm.{key} is not set; say how many cores "
                             "and how much memory one worker job gets (see jobqueue.yaml)")
    try:
        cores = int(s["cores"])
    except (TypeError, ValueError):
        raise InputError(f"{source}: jobqueue.slurm.cores must be a whole number, "
                         f"got {s['cores']!r}") from None
    processes = s.get("processes")
    if processes is None:
        from dask_jobqueue.core import nprocesses_nthreads

        processes, _ = nprocesses_nthreads(cores)
    processes = int(processes)

    extra_args = [str(a) for a in (s.get("worker-extra-args") or [])]
    gpus = gpus_per_job(s.get("job-extra-directives"))
    if gpus:
        per_worker = gpus // processes
        if per_worker < 1:
            raise InputError(f"{source}: jobqueue.slurm.processes ({processes}) is more than "
                             f"the GPUs per job ({gpus}); set processes: 1")
        extra_args = _with_gpu_resource(extra_args, per_worker)

    # The worker runs this Python (dask-jobqueue's default); VOLSEG_PREFIX lets the
    # profile's prologue activate its environment without a site-specific path.
    # VOLSEG_THREADS sizes TensorFlow's thread pool to the job's cores per process
    # (by default it would take every core of the node).
    threads = max(1, cores // processes)
    prologue = [f"export VOLSEG_PREFIX={shlex.quote(sys.prefix)}",
                f"export VOLSEG_THREADS={threads}"]
    prologue += [str(line) for line in (s.get("job-script-prologue") or [])]

    kwargs = {"worker_extra_args": extra_args, "job_script_prologue": prologue}
    log_dir = s.get("log-directory")
    if log_dir:
        # sbatch -o/-e do not expand ~ or variables: do it here, on the submit side.
        kwargs["log_directory"] = os.path.expandvars(os.path.expanduser(str(log_dir)))
    return kwargs


def _with_gpu_resource(args: list[str], count: int) -> list[str]:
    """Worker arguments that advertise ``GPU=count``, unless they already do."""
    if any("GPU=" in a for a in args):
        return args
    args = list(args)
    for i, a in enumerate(args):
        if a == "--resources" and i + 1 < len(args):
            args[i + 1] = f"{args[i + 1]},GPU={count}"
            return args
        if a.startswith("--resources="):
            args[i] = f"{a},GPU={count}"
            return args
    return args + ["--resources", f"GPU={count}"]


# --------------------------------------------------------------------------- slurm

def _check_slurm_commands() -> None:
    for command in ("sbatch", "squeue", "scancel", "sinfo"):
        if shutil.which(command) is None:
            raise InputError(f"--cluster slurm: `{command}` is not on PATH; run volseg on a "
                             "Slurm login node (or load the Slurm module), or use --cluster local")


def _check_controller() -> None:
    """Fail fast when slurmctld is down (sinfo and sbatch would retry for seconds)."""
    if shutil.which("scontrol") is None:
        return
    result = _run(["scontrol", "ping"])
    if result.returncode != 0 or " is UP" not in result.stdout:
        lines = (result.stdout or result.stderr).strip().splitlines()
        answer = lines[0].strip() if lines else f"exit code {result.returncode}"
        raise InputError(f"--cluster slurm: the Slurm controller does not answer "
                         f"(scontrol ping: {answer}); is Slurm running here?")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def _check_partition(queue, source: str) -> None:
    if not queue:
        return  # Slurm's default partition
    result = _run(["sinfo", "-h", "-p", str(queue), "-o", "%P"])
    if result.returncode != 0:
        raise InputError(f"--cluster slurm: `sinfo` failed ({result.stderr.strip()}); "
                         "is Slurm running here?")
    if not result.stdout.strip():
        known = _run(["sinfo", "-h", "-o", "%P"]).stdout.split()
        known = ", ".join(sorted({p.rstrip("*") for p in known})) or "none"
        raise InputError(f"{source}: partition {queue!r} (jobqueue.slurm.queue) does not "
                         f"exist; partitions here: {known}")


def _check_job_script(kwargs: dict, source: str) -> None:
    """Let Slurm judge one worker job (options, partition, account, GRES, limits)
    with ``sbatch --test-only``: nothing is submitted, and a job it rejects gives one
    clear message here instead of failed submissions inside the cluster later."""
    import tempfile

    from dask_jobqueue.slurm import SLURMJob

    script = SLURMJob(scheduler="tcp://127.0.0.1:8786", name="volseg-worker",
                      **kwargs).job_script()
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="volseg-job-") as f:
        f.write(script)
        f.flush()
        result = _run(["sbatch", "--test-only", f.name])
    if result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
        reason = lines[0] if lines else f"exit code {result.returncode}"
        reason = re.sub(r"^sbatch: (error: )?", "", reason)
        raise InputError(f"{source}: Slurm rejects the worker job: {reason}")


def _check_interface(interface, source: str) -> None:
    """The scheduler listens on the profile's interface here, so it must exist here."""
    if not interface:
        return
    from distributed.utils import get_ip_interface

    try:
        get_ip_interface(str(interface))
    except ValueError as e:
        raise InputError(f"{source}: jobqueue.slurm.interface: {e}; use the network this "
                         "machine shares with the compute nodes") from None


def _job_states(job_ids) -> dict[str, tuple[str, str]]:
    """``{job id: (state, reason)}`` from squeue; jobs Slurm has forgotten are absent."""
    if not job_ids:
        return {}
    result = _run(["squeue", "-h", "--states=all", "-j", ",".join(sorted(job_ids)),
                   "-o", "%i|%T|%r"])
    states = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def _cluster_job_ids(cluster) -> set[str]:
    for _ in range(5):  # the cluster's event loop thread may change the dict
        try:
            return {str(w.job_id) for w in list(cluster.workers.values())
                    if getattr(w, "job_id", None)}
        except RuntimeError:
            time.sleep(0.01)
    return set()


def _log_tail(job_id: str, log_dir: str | None, job_name: str) -> str:
    """The last meaningful line a job wrote, with its file, for error messages."""
    candidates = ([Path(log_dir) / f"{job_name}-{job_id}.err",
                   Path(log_dir) / f"{job_name}-{job_id}.out"] if log_dir
                  else [Path(f"slurm-{job_id}.out")])
    for path in candidates:
        try:
            lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
        except OSError:
            continue
        lines = [ln for ln in lines if ln]
        if lines:
            return f"; last line of {path}: {lines[-1][:300]}"
    return f"; see {candidates[0]}"


_ALIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING",
          "SUSPENDED", "SIGNALING", "STAGE_OUT"}


def _wait_for_first_worker(client, cluster, *, source, settings, pending_timeout,
                           connect_timeout, poll=0.5):
    """Return once a worker is connected; otherwise raise an InputError that says why:
    jobs pending (with squeue's reason), running but not connecting (network
    interface), or ended early (with the job log's last line)."""
    log_dir = settings.get("log-directory")
    log_dir = os.path.expandvars(os.path.expanduser(log_dir)) if log_dir else None
    job_name = settings.get("name") or "worker"
    start = time.monotonic()
    seen: set[str] = set()
    running_since: dict[str, float] = {}
    all_ended_since = None
    while True:
        # A fresh count from the scheduler (wait_for_workers with a timeout would
        # leave a timed-out future behind at every poll).
        if client.scheduler_info(n_workers=1).get("workers"):
            return
        time.sleep(poll)
        now = time.monotonic()
        current = _cluster_job_ids(cluster)
        seen |= current
        states = _job_states(seen)
        for job_id in seen:
            if states.get(job_id, ("",))[0] == "RUNNING":
                running_since.setdefault(job_id, now)
        alive = {j for j in current if states.get(j, ("GONE",))[0] in _ALIVE}
        running = {j for j in alive if states[j][0] == "RUNNING"}

        if running and now - min(running_since[j] for j in running) > connect_timeout:
            job_id = min(running, key=lambda j: running_since[j])
            interface = settings.get("interface")
            raise InputError(
                f"{source}: Slurm job {job_id} has run for {connect_timeout:.0f} s but its "
                f"Dask worker did not connect to the scheduler at {cluster.scheduler_address}; "
                "the compute nodes probably cannot reach that address: set "
                f"jobqueue.slurm.interface (now {interface!r}) to the network the nodes share "
                "(e.g. ib0 or eth0)" + _log_tail(job_id, log_dir, job_name))
        if seen and not alive:
            # Every job ended before its worker connected; adaptive scaling may still
            # submit more, so give it a moment before calling it a failure.
            all_ended_since = all_ended_since or now
            if now - all_ended_since > 5 * poll + 2:
                job_id = max(seen, key=int)
                state = states.get(job_id, ("ENDED", ""))[0]
                raise InputError(
                    f"{source}: Slurm job {job_id} ended ({state}) before its Dask worker "
                    "connected; check the profile's job-script-prologue and python"
                    + _log_tail(job_id, log_dir, job_name))
        else:
            all_ended_since = None
        if not running and now - start > pending_timeout:
            pending = sorted(alive, key=int)
            if pending:
                reasons = "; ".join(f"job {j}: {states[j][0]} ({states[j][1]})" for j in pending)
                detail = f"Slurm jobs still waiting after {pending_timeout:.0f} s: {reasons}"
            else:
                detail = (f"no Slurm job was submitted within {pending_timeout:.0f} s "
                          "(did sbatch fail? see the messages above)")
            raise InputError(
                f"--cluster slurm: {detail}; ask for fewer resources or another partition "
                f"in {source}, or wait longer (pending timeout)")


@contextmanager
def _slurm_client(*, jobs, adapt, jobqueue_config, log, pending_timeout, connect_timeout):
    if jobs is not None and adapt is not None:
        raise InputError("--jobs/--adapt: give one of them, not both")
    if adapt is not None:
        try:
            minimum, maximum = (int(v) for v in adapt)
        except (TypeError, ValueError):
            raise InputError(f"--adapt: expected MIN:MAX job counts, got {adapt!r}") from None
        if minimum < 0 or maximum < max(1, minimum):
            raise InputError(f"--adapt: need 0 <= MIN <= MAX and MAX >= 1, got {minimum}:{maximum}")
    elif jobs is None:
        jobs = 1
    elif jobs < 1:
        raise InputError(f"--jobs: must be at least 1, got {jobs}")

    _check_slurm_commands()
    _check_controller()
    # Under adapt, a job that ends (scancel, walltime) is replaced after this delay.
    extra = ({"distributed.deploy.lost-worker-timeout": ADAPT_LOST_WORKER_TIMEOUT}
             if adapt is not None else None)
    with _profile(jobqueue_config, extra) as source, ExitStack() as stack:
        settings = _settings()
        kwargs = _job_kwargs(source)
        _check_partition(settings.get("queue"), source)

        _check_interface(settings.get("interface"), source)
        _check_job_script(kwargs, source)

        from dask_jobqueue import SLURMCluster
        from distributed import Client

        try:
            cluster = SLURMCluster(silence_logs=logging.ERROR, **kwargs)
        except ValueError as e:  # dask-jobqueue's checks of the profile's values
            raise InputError(f"{source}: {str(e).splitlines()[0]}") from None
        stack.enter_context(cluster)
        if adapt is not None:
            cluster.adapt(minimum_jobs=minimum, maximum_jobs=maximum)
            what = f"adaptive, {minimum} to {maximum} Slurm jobs"
        else:
            cluster.scale(jobs=jobs)
            what = f"{jobs} Slurm job{'s' if jobs != 1 else ''}"
        client = stack.enter_context(Client(cluster))
        gpus = gpus_per_job(settings.get("job-extra-directives"))
        _CLIENT_RESOURCES[client] = {"GPU": 1} if gpus else {}
        if adapt is not None and minimum == 0:
            # Adaptive from zero submits jobs only once there is work: nothing to wait for.
            if log:
                log(f"Slurm: {what} ({source}); dashboard {client.dashboard_link}")
            yield client
            return
        if log:
            log(f"Slurm: {what} ({source}); waiting for the first worker; "
                f"dashboard {client.dashboard_link}")
        t0 = time.monotonic()
        _wait_for_first_worker(client, cluster, source=source, settings=settings,
                               pending_timeout=pending_timeout,
                               connect_timeout=connect_timeout)
        if log:
            log(f"Slurm: first worker connected after {time.monotonic() - t0:.1f} s")
        yield client
