"""The learning rate over a run: warm-up, then cosine decay that ends at the deadline.

A run with ``--time-limit`` is measured in time, not epochs, so the schedule is a
function of the *fraction of the run done*: elapsed time over the time available to
train when there is a time limit, steps done over ``epochs * steps_per_epoch``
otherwise. The rate then reaches its floor exactly when training must stop, however
fast the machine is. ``plateau`` keeps the older rule (halve after ``lr_patience``
epochs without a better validation Dice), applied by the epoch loop.
"""

from __future__ import annotations

import math
import time

from volseg.errors import InputError

SCHEDULES = ("cosine", "plateau")
#: Share of the run spent warming up (linearly from WARMUP_START of the base rate).
WARMUP = 0.03
WARMUP_START = 0.1
#: The cosine ends at this share of the base rate.
FLOOR = 0.01


def check_schedule(schedule: str) -> None:
    """:class:`InputError` naming ``schedule`` unless it is one of :data:`SCHEDULES`."""
    if schedule not in SCHEDULES:
        raise InputError(f"must be one of {', '.join(SCHEDULES)}, not {schedule!r}",
                         param="schedule")


def cosine_rate(fraction: float, *, base: float, warmup: float = WARMUP,
                floor: float = FLOOR) -> float:
    """The rate at ``fraction`` (0..1) of the run: linear warm-up, then cosine to ``floor``.

    Parameters
    ----------
    fraction : float
        Share of the run done; clipped to [0, 1].
    base : float
        Peak rate, reached at the end of the warm-up.
    warmup : float
        Share of the run spent warming up from ``WARMUP_START * base``.
    floor : float
        The rate at ``fraction == 1`` as a share of ``base``.
    """
    f = min(max(float(fraction), 0.0), 1.0)
    if f < warmup:
        return base * (WARMUP_START + (1.0 - WARMUP_START) * f / warmup)
    p = (f - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p)))


class RunClock:
    """How much of a run is done: by the deadline when there is one, else by steps.

    Parameters
    ----------
    total_steps : int
        ``epochs * steps_per_epoch``: the run's length without a time limit.
    deadline : float, optional
        ``time.monotonic()`` at which training must stop (the time limit).
    reserve : float
        Seconds before the deadline that training gives up for the last validation
        and saving; the schedule ends there.
    """

    def __init__(self, total_steps: int, *, deadline: float | None = None, reserve: float = 0.0,
                 clock=time.monotonic):
        self.total_steps = max(1, int(total_steps))
        self.deadline, self.reserve, self.clock = deadline, float(reserve), clock
        self.start = clock()

    def fraction(self, steps_done: int) -> float:
        """Share of the run done after ``steps_done`` steps; the larger of both measures
        when there is a deadline (a run may end by epochs before its time limit)."""
        by_steps = steps_done / self.total_steps
        if self.deadline is None:
            return min(by_steps, 1.0)
        span = max(self.deadline - self.reserve - self.start, 1e-9)
        return min(max(by_steps, (self.clock() - self.start) / span), 1.0)
