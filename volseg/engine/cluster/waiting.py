"""Waiting for the first Slurm worker, and saying why it does not come: squeue's
state and reason of each job, and the last line of a job's log."""

from __future__ import annotations

import os
import time
from pathlib import Path

from volseg.errors import InputError
from volseg.engine.cluster.checks import run


def job_states(job_ids) -> dict[str, tuple[str, str]]:
    """``{job id: (state, reason)}`` from squeue; jobs Slurm has forgotten are absent."""
    if not job_ids:
        return {}
    result = run(["squeue", "-h", "--states=all", "-j", ",".join(sorted(job_ids)),
                   "-o", "%i|%T|%r"])
    states = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def cluster_job_ids(cluster) -> set[str]:
    for _ in range(5):  # the cluster's event loop thread may change the dict
        try:
            return {str(w.job_id) for w in list(cluster.workers.values())
                    if getattr(w, "job_id", None)}
        except RuntimeError:
            time.sleep(0.01)
    return set()


def log_tail(job_id: str, log_dir: str | None, job_name: str) -> str:
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


def wait_for_first_worker(client, cluster, *, source, settings, pending_timeout,
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
        current = cluster_job_ids(cluster)
        seen |= current
        states = job_states(seen)
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
                "(e.g. ib0 or eth0)" + log_tail(job_id, log_dir, job_name))
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
                    + log_tail(job_id, log_dir, job_name))
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
                f"{detail}; ask for fewer resources or another partition in {source}, or "
                "wait longer (pending timeout)", param="cluster")
