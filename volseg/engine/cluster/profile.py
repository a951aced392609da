"""The Slurm profile: ``jobqueue: slurm:`` read from YAML over Dask's configuration,
the keyword arguments of a worker job, its batch script, and the GPUs it asks for."""

from __future__ import annotations

import copy
import os
import re
import shlex
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

from volseg.errors import InputError

#: The profile read when none is given, relative to the working directory.
DEFAULT_PROFILE = "jobqueue.yaml"


def job_script(jobqueue_config: str | os.PathLike | None = None) -> str:
    """The batch script one Slurm worker job would run, from the profile.

    Nothing is submitted and no scheduler starts, so this works anywhere (no Slurm
    needed); the scheduler address is a placeholder.
    """
    from dask_jobqueue.slurm import SLURMJob

    with profile(jobqueue_config) as source:
        kwargs = job_kwargs(source)
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


def _profile_path(jobqueue_config) -> Path | None:
    if jobqueue_config is not None:
        path = Path(jobqueue_config).expanduser()
        if not path.is_file():
            raise InputError(f"{jobqueue_config}: no such file", param="jobqueue_config")
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
def profile(jobqueue_config, extra: dict | None = None):
    """Apply ``extra`` settings, then the profile file over Dask's configuration;
    yield a label for error messages (the file, or where the settings came from)."""
    import dask

    _import_dask_jobqueue()  # registers its defaults in dask.config first

    path = _profile_path(jobqueue_config)
    with ExitStack() as stack:
        if extra:
            stack.enter_context(dask.config.set(extra))
        if path is not None:
            data = _read_profile(path)
            merged = copy.deepcopy(dask.config.config)
            dask.config.update(merged, data)  # the file wins, key by key
            changed = {k: v for k, v in merged.items() if dask.config.config.get(k) != v}
            stack.enter_context(dask.config.set(changed))
            yield str(path)
        else:
            yield "the Dask configuration (jobqueue.slurm; give --jobqueue-config PATH)"


def settings() -> dict:
    import dask

    return dict(dask.config.get("jobqueue.slurm", default={}) or {})


def job_kwargs(source: str) -> dict:
    """Keyword arguments for SLURMJob/SLURMCluster beyond what they read from the
    config themselves: GPU resource, environment activation, log directory."""
    s = settings()
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
