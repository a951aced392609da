"""How long a Slurm job has left (its walltime), for stopping work in time."""

from __future__ import annotations

import subprocess


def job_minutes_left(job_id) -> float | None:
    """Minutes until Slurm ends job ``job_id`` (its walltime), or None if unknown."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%L"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_slurm_time(out.stdout.strip()) if out.returncode == 0 else None


def parse_slurm_time(text: str) -> float | None:
    """Slurm's ``[days-]hours:minutes:seconds`` (or ``minutes:seconds``) in minutes;
    None for ``UNLIMITED``, ``NOT_SET`` or anything else."""
    text = text.strip()
    days = 0
    if "-" in text:
        head, text = text.split("-", 1)
        if not head.isdigit():
            return None
        days = int(head)
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    values = [int(p) for p in parts]
    while len(values) < 3:
        values.insert(0, 0)
    hours, minutes, seconds = values
    return days * 1440 + hours * 60 + minutes + seconds / 60
