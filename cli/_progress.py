"""Progress display: a bar on a terminal, plain lines in a log, nothing with --quiet."""

from __future__ import annotations

import sys
import time


class Progress:
    """A ``callback(done, total)`` for the library's long-running functions.

    On a terminal it draws a tqdm bar; otherwise it prints a plain line at most every
    ``every`` seconds (and at the end), so logs of batch jobs stay readable.
    """

    def __init__(self, desc: str, *, unit: str = "block", quiet: bool = False,
                 stream=None, every: float = 5.0):
        self.desc = desc
        self.unit = unit
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.every = every
        self._bar = None
        self._last = 0.0
        self._start = time.monotonic()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self._tty:
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=self.desc, unit=self.unit,
                                 file=self.stream, dynamic_ncols=True)
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()
            return
        now = time.monotonic()
        if done == 0 or (done < total and now - self._last < self.every):
            return
        self._last = now
        elapsed = now - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (total - done) / rate if rate > 0 else 0.0
        print(f"{self.desc}: {done}/{total} {self.unit}s, {rate:.2f}/s, "
              f"{elapsed:.0f} s elapsed, ~{left:.0f} s left", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def say(args, message: str) -> None:
    """Print a status line unless --quiet."""
    if not getattr(args, "quiet", False):
        print(message, flush=True)


#: Options whose values never reach a store, a log or a message (they may hold keys).
SECRET_OPTIONS = ("--storage-options",)


def command_line(argv=None) -> str:
    """The command as provenance records it, with ``--storage-options`` hidden."""
    import shlex

    args = list(sys.argv[1:] if argv is None else argv)
    out, hide = [], False
    for a in args:
        if hide:
            out.append("'<hidden>'")
            hide = False
            continue
        name, eq, _ = a.partition("=")
        if name in SECRET_OPTIONS:
            if eq:
                out.append(f"{name}='<hidden>'")
            else:
                out.append(a)
                hide = True
            continue
        out.append(shlex.quote(a))
    return "volseg " + " ".join(out)
