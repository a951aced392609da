"""Pre-flight checks of a Slurm cluster, before any job is submitted: the commands on
PATH, the controller, the partition, Slurm's verdict on one worker job
(``sbatch --test-only``) and the scheduler's network interface. Each failure is one
:class:`InputError` that says what to do."""

from __future__ import annotations

import re
import shutil
import subprocess

from volseg.errors import InputError


def check_slurm_commands() -> None:
    for command in ("sbatch", "squeue", "scancel", "sinfo"):
        if shutil.which(command) is None:
            raise InputError(f"`{command}` is not on PATH; run volseg on a Slurm login node (or "
                             "load the Slurm module), or use the local cluster", param="cluster")


def check_controller() -> None:
    """Fail fast when slurmctld is down (sinfo and sbatch would retry for seconds)."""
    if shutil.which("scontrol") is None:
        return
    result = run(["scontrol", "ping"])
    if result.returncode != 0 or " is UP" not in result.stdout:
        lines = (result.stdout or result.stderr).strip().splitlines()
        answer = lines[0].strip() if lines else f"exit code {result.returncode}"
        raise InputError(f"the Slurm controller does not answer (scontrol ping: {answer}); "
                         "is Slurm running here?", param="cluster")


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def check_partition(queue, source: str) -> None:
    if not queue:
        return  # Slurm's default partition
    result = run(["sinfo", "-h", "-p", str(queue), "-o", "%P"])
    if result.returncode != 0:
        raise InputError(f"`sinfo` failed ({result.stderr.strip()}); is Slurm running here?",
                         param="cluster")
    if not result.stdout.strip():
        known = run(["sinfo", "-h", "-o", "%P"]).stdout.split()
        known = ", ".join(sorted({p.rstrip("*") for p in known})) or "none"
        raise InputError(f"{source}: partition {queue!r} (jobqueue.slurm.queue) does not "
                         f"exist; partitions here: {known}")


def check_job_script(kwargs: dict, source: str) -> None:
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
        result = run(["sbatch", "--test-only", f.name])
    if result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
        reason = lines[0] if lines else f"exit code {result.returncode}"
        reason = re.sub(r"^sbatch: (error: )?", "", reason)
        raise InputError(f"{source}: Slurm rejects the worker job: {reason}")


def check_interface(interface, source: str) -> None:
    """The scheduler listens on the profile's interface here, so it must exist here."""
    if not interface:
        return
    from distributed.utils import get_ip_interface

    try:
        get_ip_interface(str(interface))
    except ValueError as e:
        raise InputError(f"{source}: jobqueue.slurm.interface: {e}; use the network this "
                         "machine shares with the compute nodes") from None
