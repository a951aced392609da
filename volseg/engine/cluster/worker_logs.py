"""Run in every local worker process at start (Dask's ``distributed.worker.preload``).

A worker logs to the terminal volseg prints to. What it says at ``ERROR`` reaches the user
as tracebacks volseg has already reported in one line or that mean nothing to them: the
"Compute Failed" dump of a task whose error travels back to the client, and "Failed to
communicate with scheduler during heartbeat" from a worker still running while an
interrupted run closes its cluster. ``silence_logs`` cannot hide them: it sets the level of
the stream handlers only for the life of the ``Worker`` object, and only to ``ERROR``.

A worker process also ignores SIGINT: Ctrl-C reaches every process of the terminal's
process group, and a worker interrupted in its event loop printed a traceback
(``CancelledError`` ... ``KeyboardInterrupt``) before volseg's one line. volseg's own
process handles the interrupt and closes the cluster, which ends its workers.
"""

from __future__ import annotations

import logging
import signal


def dask_setup(worker) -> None:  # noqa: ARG001 - the preload hook's signature
    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the process's main thread: its interrupts are not ours
        pass
