"""The signal that ends training early, whoever gives it.

Ctrl-C, the time limit and a remote cancellation all end a training run the same way:
the current step finishes, the epoch is validated, and the best model so far is saved.
:class:`StopSignal` is that request as an object: anything may call
:meth:`StopSignal.request` (a progress callback that polls a Dask event, the loop when
the next step would not fit the time limit), and the epoch loop checks it after every
step. Only :meth:`StopSignal.interruptible` turns a ``KeyboardInterrupt`` into a request.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

INTERRUPTED = "interrupted"
TIME_LIMIT = "time limit"


class StopSignal:
    """A request to stop training after the current step, with its reason.

    Parameters
    ----------
    time_limit : float, optional
        Minutes from now; :meth:`would_overrun` measures against it.
    clock : callable, optional
        Seconds, monotonic (default :func:`time.monotonic`); the time limit, and the
        schedule that ends with it, are measured by it.
    """

    def __init__(self, time_limit: float | None = None, *, clock=time.monotonic):
        self.reason: str | None = None
        self.deadline: float | None = None
        self.clock = clock
        self.set_time_limit(time_limit)

    def set_time_limit(self, minutes: float | None) -> None:
        """Start (or clear) the time limit: ``minutes`` from now."""
        self.deadline = self.clock() + 60.0 * minutes if minutes else None

    def request(self, reason: str = INTERRUPTED) -> None:
        """Ask training to stop; the first reason given is the one reported."""
        if self.reason is None:
            self.reason = reason

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def would_overrun(self, seconds: float) -> bool:
        """Request a stop for the time limit unless ``seconds`` more work fits in it."""
        if self.deadline is not None and self.clock() + seconds > self.deadline:
            self.request(TIME_LIMIT)
        return self.requested

    @contextmanager
    def interruptible(self):
        """Run the block; Ctrl-C inside it becomes a stop request instead of an exception."""
        try:
            yield
        except KeyboardInterrupt:
            self.request(INTERRUPTED)
