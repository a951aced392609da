"""Entry point of the ``volseg`` command.

Each command lives in its own module of this package with two functions:
``add_parser(subparsers)`` (which calls ``set_defaults(run=run)``) and
``run(args) -> int``. This module only wires them up and turns errors into exit codes:
0 success, 2 bad input or usage (one line on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from volseg.version import __version__
from volseg.errors import InputError

COMMANDS = ["synth", "convert", "info", "verify", "train", "predict", "evaluate", "demo", "preview",
            "export", "export_model", "measure", "suggest"]

#: Library parameter names whose flag is not simply ``--`` + the name with dashes.
#: The one place where the library's vocabulary meets the command line's.
FLAGS = {
    "batch_size": "--batch",
    "images_path": "--images",
    "truth_path": "--truth",
    "roi_path": "--roi",
    "out_path": "-o",
    "out": "-o",
    "model_path": "--model",
    "jobqueue_config": "--jobqueue-config",
    "labels_into": "--labels-into-images",
    "authors": "--author",
    "n": "-n",
}


def flag_of(param: str) -> str:
    """The command-line flag of a library parameter (``batch_size`` -> ``--batch``)."""
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def describe(exc: InputError) -> str:
    """An :class:`InputError` as one line in the command line's words."""
    if getattr(exc, "param", None):
        return f"{flag_of(exc.param)}: {exc.message}"
    return str(exc)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="volseg",
        description="Segment microscopy volumes larger than memory, streamed over chunks.",
    )
    parser.add_argument("--version", action="version", version=f"volseg {__version__}")
    parser.add_argument("--storage-options", metavar="JSON", default=None,
                        help="fsspec/s3fs options for s3:// (and other URL) stores, e.g. "
                             "'{\"endpoint_url\": \"http://127.0.0.1:9000\"}' or "
                             "'{\"profile\": \"site\"}'; default: the AWS_* environment "
                             "(AWS_ENDPOINT_URL, AWS_PROFILE, ...)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"volseg_cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"volseg_cli.{name}":
                continue  # command not built yet
            raise
        module.add_parser(sub)
    return parser


def _quiet_libraries() -> None:
    # tifffile logs its own complaints about damaged files; volseg reports them as one line
    import logging

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    # aiohttp's "Unclosed client session" at exit (s3fs's sessions live until the end)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    module = sys.modules.get("distributed.deploy.spec")
    before = set(module.SpecCluster._instances) if module is not None else set()
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before a command started (while the libraries load)
        _ignore_further_interrupts()
        print("volseg: interrupted", file=sys.stderr)
        return 130
    finally:
        _close_clusters_quietly(before)


def _ignore_further_interrupts() -> None:
    """Once interrupted, exit with 130 even if a second Ctrl-C (or the one pending in a
    library's C code) arrives while volseg cleans up."""
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):  # not the main thread (a notebook's worker)
        pass


def _close_clusters_quietly(before) -> None:
    """Close the Dask clusters this run started and left open, saying nothing:
    distributed's own exit handler prints tracebacks for a cluster interrupted while it
    started (``Status.init``) or slow to stop on a loaded machine (tornado's
    ``TimeoutError``), after volseg has already said what happened in one line. A
    cluster that will not close is dropped from that handler's list. Clusters that were
    open before (a notebook's, a test's) are left alone."""
    module = sys.modules.get("distributed.deploy.spec")
    if module is None:
        return
    import contextlib
    import logging

    left = [c for c in list(module.SpecCluster._instances) if c not in before]
    if not left:
        return
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    for cluster in left:
        with contextlib.suppress(BaseException):
            if getattr(cluster, "shutdown_on_close", False) and \
                    not str(getattr(cluster, "status", "closed")).endswith("closed"):
                cluster.close(timeout=10)
        if not str(getattr(cluster, "status", "closed")).endswith("closed"):
            module.SpecCluster._instances.discard(cluster)


def _main(argv: list[str] | None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        if args.storage_options is not None:
            from volseg.io.location import set_storage_options

            set_storage_options(args.storage_options)
        return int(args.run(args) or 0)
    except InputError as exc:
        print(f"volseg {args.command}: error: {describe(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except OSError as exc:
        from volseg.errors import operational_error

        known = operational_error(exc) or _storage_error(exc)
        if known is None or os.environ.get("VOLSEG_DEBUG"):
            raise
        print(f"volseg {args.command}: error: {known}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _ignore_further_interrupts()
        print(f"volseg {args.command}: interrupted; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except Exception as exc:
        known = _storage_error(exc)
        if known is not None and not os.environ.get("VOLSEG_DEBUG"):
            print(f"volseg {args.command}: error: {known}", file=sys.stderr)
            return 2
        if os.environ.get("VOLSEG_DEBUG"):
            raise
        import traceback

        traceback.print_exc()
        print(f"volseg {args.command}: internal error (a bug in volseg); "
              "please report it with the traceback above", file=sys.stderr)
        return 1


def _storage_error(exc: BaseException):
    """A storage service's failure (access denied, no bucket, no endpoint) met in the
    middle of a run, as one line (None: something else)."""
    if "volseg.io.location" not in sys.modules:
        return None  # no URL was used
    from volseg.io.location import remote_error

    return remote_error(exc)


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (``volseg info X | head -1``): exit quietly.

    Python would otherwise complain again when it flushes stdout at exit.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    return 141  # 128 + SIGPIPE, as a shell tool killed by the closed pipe would


def console() -> None:
    """The ``volseg`` program: :func:`main`, then exit ignoring Ctrl-C. One pressed after
    the command finished, while Python waits for library threads at exit, would print
    "Exception ignored in <module 'threading'>" and a traceback under the command's
    last line. :func:`main` itself leaves the caller's SIGINT handler alone (a notebook's,
    a test's)."""
    try:
        code = main()
    except KeyboardInterrupt:  # in the instant between main's own handling and this line
        code = 130
        print("volseg: interrupted", file=sys.stderr)
    _ignore_further_interrupts()
    sys.exit(code)


if __name__ == "__main__":
    console()
