"""Where results go: one writer per output, resume, and ``overwrite`` that loses nothing.

Every command that writes a store goes through :func:`open_output`:

* **One writer.** A lock file beside the output (``.NAME.lock``, created with
  ``O_EXCL``, which is atomic on local disks and on NFS v3+) names the command, host,
  process and start time. While the writer runs, a thread refreshes the file's
  modification time every :data:`HEARTBEAT` seconds. A second writer is refused
  with that information. A lock is stale, and is taken over, when its process is gone
  (same host) or its heartbeat is older than :data:`STALE_AFTER` seconds (another
  host: a killed Slurm job, a crashed node). This needs clocks within a minute of each
  other, which NTP gives every cluster.
* **Resume.** An unfinished store of the same job (inputs and parameters, see
  :func:`volseg.io.store.make_job`) is resumed; anything else is refused unless
  ``overwrite``.
* **Overwrite loses nothing.** The new store is built beside the old one
  (``.NAME.volseg-new``) and swapped in only once complete, so a run that fails or is
  interrupted leaves the old store as it was (rerunning with ``overwrite`` resumes the
  new one). Only stores volseg made are replaced, and only entries that Zarr owns are
  ever deleted: a folder holding anything else is refused.
"""

from __future__ import annotations

import contextlib

import datetime as _dt
import json
import os
import posixpath
import re
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from volseg.errors import InputError
from volseg.io.location import RemotePath, locate, remote_error
from volseg.io.location import check as check_location
from volseg.io.location import text as location_text
from volseg.io.store import read_node

#: Seconds between refreshes of a lock's modification time.
HEARTBEAT = 10.0
#: A lock whose heartbeat is older than this is stale (its writer died on another host).
STALE_AFTER = 90.0

_NEW = ".volseg-new"
#: zarr's LocalStore writes ``NAME.<uuid hex>.partial`` and renames it into place.
_ZARR_TEMP = re.compile(r"\.[0-9a-f]{32}\.partial$")
_OLD = ".volseg-old"
#: On object storage: the marker of a swap in progress (see _finish_remote_swap).
_SWAP = ".volseg-swap"


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}{suffix}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- lock

@dataclass
class WriterLock:
    """The lock file that keeps a second writer away from an output."""

    path: Path
    info: dict
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, output: Path, *, command: str | None) -> "WriterLock":
        if isinstance(output, RemotePath):
            return RemoteLock.acquire(output, command=command)
        path = _sibling(output, ".lock")
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now(),
                "command": command or "volseg"}

        def create() -> None:
            # The lock appears whole or not at all: written beside it, then hard-linked
            # into place (atomic, and refused when a lock is there). A lock created empty
            # and filled after looked abandoned to a second writer in between, which
            # then took it over: two writers.
            part = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")
            try:
                part.write_text(json.dumps(info))
                os.link(part, path)
            except FileExistsError:
                raise
            except OSError as exc:
                raise InputError(f"{output}: cannot write there ({exc.strerror or exc})") from None
            finally:
                part.unlink(missing_ok=True)

        _take_lock(output, path, create=create, stale=lambda holder: _stale(path, holder),
                   remove_hint="remove it")
        return _started(cls(path, info))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        if _read_lock(self.path) == self.info:
            self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def writer_lock(output, *, command: str | None = None):
    """One writer for an output that is not a store (a TIFF file or folder of TIFFs): the
    lock :class:`WriterLock` keeps beside it, held for the ``with`` block. A second run
    to the same output is refused in one line while the first is alive."""
    parent = Path(output).parent if str(Path(output).parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{output}: parent folder {parent} does not exist")
    lock = WriterLock.acquire(Path(output).absolute(), command=command)
    try:
        yield lock
    finally:
        lock.release()


def _take_lock(output, path, *, create, stale, remove_hint: str) -> None:
    """Create the lock ``path`` with ``create()`` (which raises ``FileExistsError`` when
    a lock is there), taking over a lock whose writer is gone (``stale(holder)``) and
    refusing one whose writer is alive."""
    for _ in range(3):
        try:
            create()
            return
        except FileExistsError:
            holder = _read_lock(path)
            if holder is not None and not stale(holder):
                raise _busy(output, holder) from None
            if holder is None and _age(path) < UNREADABLE_GRACE:
                # unreadable but fresh: a lock being written by another tool's rules or
                # damaged a moment ago; never take it over at once
                raise InputError(f"{output}: its writer lock {path} is unreadable; if no "
                                 "volseg is writing it, run again in a minute (or remove "
                                 "the lock)") from None
            path.unlink(missing_ok=True)  # stale: its writer is gone
    raise InputError(f"{output}: cannot take the writer lock {path}; {remove_hint} if no "
                     "volseg is running")


def _busy(output, holder: dict) -> InputError:
    return InputError(f"{output}: another volseg is writing it: `{holder.get('command')}` "
                      f"(process {holder.get('pid')} on {holder.get('host')}, since "
                      f"{holder.get('since')}); wait for it to finish, or stop it first")


def _started(lock):
    """A lock with its heartbeat thread running."""
    lock._thread = threading.Thread(target=lock._beat, daemon=True, name="volseg-lock-heartbeat")
    lock._thread.start()
    return lock


def _process_gone(holder: dict) -> bool:
    """The holder ran on this host and its process has ended."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        pass
    return False


#: Seconds an unreadable lock is left alone before it counts as abandoned.
UNREADABLE_GRACE = 30.0


def _age(path) -> float:
    """Seconds since ``path`` (a local lock) was last touched; infinite if it is gone."""
    try:
        return time.time() - Path(path).stat().st_mtime
    except (OSError, TypeError):
        return float("inf")


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # vanished, or half-written by a writer that died at once


def _stale(path: Path, holder: dict) -> bool:
    """The holder is gone: its process ended (same host) or its heartbeat stopped."""
    if _process_gone(holder):
        return True
    return _age(path) > STALE_AFTER  # also catches a reused process number on this host


# --------------------------------------------------------------------------- ownership

#: Arrays of a volseg group besides its multiscales datasets: the block ledgers.
_LEDGERS = re.compile(r"^(volseg_done\w*|update_blocks)$")
#: A chunk key's path component: the chunk's index along one axis.
_CHUNK_PART = re.compile(r"^\d+$")


def _owned_arrays(node: dict) -> set[str]:
    """The arrays a volseg image group owns: the datasets its multiscales list."""
    attrs = node.get("attributes") or {}
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    names = set()
    for ms in (ome or {}).get("multiscales") or []:
        for d in (ms.get("datasets") if isinstance(ms, dict) else None) or []:
            if isinstance(d, dict) and "path" in d:
                names.add(str(d["path"]).strip("/"))
    return names


def foreign_entries(path: Path) -> list[Path]:
    """What under a volseg store volseg did not write: files Zarr does not own (a user's
    notes), and Zarr nodes of other tools (a label image under ``labels/``, an array
    beside the levels); a group volseg wrote carries its ``volseg`` attributes."""
    if isinstance(path, RemotePath):
        return [path / key for key in _remote_foreign(path.find())]
    found: list[Path] = []

    def chunks(folder: Path) -> None:
        for entry in folder.iterdir():
            if _ZARR_TEMP.search(entry.name):
                continue
            if not _CHUNK_PART.match(entry.name) or entry.is_symlink():
                found.append(entry)
            elif entry.is_dir():
                chunks(entry)

    def walk(node_dir: Path) -> None:
        node = read_node(node_dir) or {}
        array = node.get("node_type") == "array"
        owned = _owned_arrays(node)
        for entry in node_dir.iterdir():
            if entry.name == "zarr.json" or _ZARR_TEMP.search(entry.name):
                continue
            if array and entry.name == "c" and entry.is_dir() and not entry.is_symlink():
                chunks(entry)
                continue
            child = None if array or entry.is_symlink() or not entry.is_dir() else read_node(entry)
            if child is not None:
                if child.get("node_type") == "array":
                    ours = entry.name in owned or bool(_LEDGERS.match(entry.name))
                else:
                    ours = "volseg" in (child.get("attributes") or {}) or entry.name == "labels"
                if ours:
                    walk(entry)
                else:
                    found.append(entry)
                continue
            if entry.is_dir() and not entry.is_symlink() and _empty_tree(entry):
                continue  # a node a failed run began (a full disk): nothing of anyone's
            found.append(entry)

    walk(path)
    return found


def _empty_tree(folder: Path) -> bool:
    """A folder holding nothing but (possibly) empty folders."""
    return all(p.is_dir() and not p.is_symlink() and _empty_tree(p) for p in folder.iterdir())


def remove_store(path: Path) -> None:
    """Delete a store volseg made; refuses (and deletes nothing) if it holds other files."""
    others = foreign_entries(path)
    if others:
        raise InputError(f"{path}: holds files that are not part of the store (e.g. "
                         f"{others[0].relative_to(path)}); volseg deletes only its own stores: "
                         "move them out first")
    if isinstance(path, RemotePath):
        path.rm_tree()
        return
    _delete_tree(path)


def _delete_tree(path: Path) -> None:
    """Delete a local store: the deepest folders first and each folder's ``zarr.json``
    last, so that a deletion cut short (Ctrl-C, a kill) leaves a tree that still reads
    as a store, which the next run recognises as volseg's and finishes deleting
    (``shutil.rmtree`` may take a ``zarr.json`` first: the rest then looks foreign)."""
    for folder, dirs, files in os.walk(path, topdown=False):
        for name in sorted(files, key=lambda n: n == "zarr.json"):
            os.unlink(os.path.join(folder, name))
        for name in dirs:
            entry = os.path.join(folder, name)
            if os.path.islink(entry):
                os.unlink(entry)
            else:
                os.rmdir(entry)
    os.rmdir(path)


# --------------------------------------------------------------------------- object storage

@dataclass
class RemoteLock:
    """The lock object that keeps a second writer away from an output on object storage.

    Object stores have no ``O_EXCL`` and no file times to touch, but S3 (and MinIO,
    moto, Ceph) has the conditional put ``If-None-Match: *``: the lock object
    ``.NAME.lock`` beside the output is created only if it is not there, atomically.
    It names command, host, process, start time and a random token; the heartbeat
    rewrites it with the time of the beat (after checking that the token is still
    ours). Stale, as on a local disk: the process is gone (same host) or the last beat
    is older than :data:`STALE_AFTER` seconds.
    """

    path: RemotePath
    info: dict
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, output: RemotePath, *, command: str | None) -> "RemoteLock":
        import uuid

        path = _sibling(output, ".lock")
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now(),
                "command": command or "volseg", "token": uuid.uuid4().hex, "beat": time.time()}

        def create() -> None:
            try:
                path.fs.pipe_file(path.fs_path, json.dumps(info).encode(), mode="create")
            except FileExistsError:
                raise
            except Exception as exc:  # noqa: BLE001  (storage errors as one line)
                err = remote_error(exc, output)
                if err is None:
                    raise
                raise err from None

        _take_lock(output, path, create=create, stale=_stale_remote,
                   remove_hint="delete that object")
        return _started(cls(path, info))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                if (_read_lock(self.path) or {}).get("token") != self.info["token"]:
                    return  # taken over: not ours to refresh
                self.info["beat"] = time.time()
                self.path.write_text(json.dumps(self.info))
            except Exception:  # noqa: BLE001  (the next beat tries again)
                continue

    def release(self) -> None:
        self._stop.set()
        try:
            if (_read_lock(self.path) or {}).get("token") == self.info["token"]:
                self.path.unlink(missing_ok=True)
        except Exception:  # noqa: BLE001  (a lock left behind goes stale)
            pass


def _stale_remote(holder: dict) -> bool:
    if _process_gone(holder):
        return True
    try:
        return time.time() - float(holder.get("beat", 0)) > STALE_AFTER
    except (TypeError, ValueError):
        return True


def _remote_foreign(keys: list[str]) -> list[str]:
    """Keys under a store on object storage that Zarr does not own: not a node's
    ``zarr.json``, not a chunk (under ``c/`` of a node) and not zarr's temporary file."""
    nodes = {posixpath.dirname(k) for k in keys if posixpath.basename(k) == "zarr.json"}
    out = []
    for key in keys:
        if posixpath.basename(key) == "zarr.json":
            continue
        parts = key.split("/")
        owned = any(parts[i] == "c" and "/".join(parts[:i]) in nodes for i in range(len(parts) - 1))
        if not owned and not _ZARR_TEMP.search(key):
            out.append(key)
    return out


def _finish_remote_swap(path: RemotePath) -> None:
    """Put the complete store at ``.NAME.volseg-new`` in the place of ``path``.

    Object storage has no rename: the new store is copied (server-side) over. The old
    store is deleted only now, when the new one is complete; the new one's root
    ``zarr.json`` (its ``complete``) is copied last, so a reader never takes a half copy
    for a store; the marker ``.NAME.volseg-swap``, written before anything is deleted,
    makes the next run finish an interrupted swap. The new store's root ``zarr.json`` is
    deleted first when it is cleaned up, so a new store without it is a finished copy.
    """
    new, marker = _sibling(path, _NEW), _sibling(path, _SWAP)
    if (new / "zarr.json").is_file():
        if path.exists():
            path.rm_tree()
        keys = [k for k in new.find() if k != "zarr.json"]
        fs = path.fs
        if keys:
            fs.copy([f"{new.fs_path}/{k}" for k in keys], [f"{path.fs_path}/{k}" for k in keys])
        fs.copy(f"{new.fs_path}/zarr.json", f"{path.fs_path}/zarr.json")
        (new / "zarr.json").unlink(missing_ok=True)
    new.rm_tree()
    marker.unlink(missing_ok=True)


# --------------------------------------------------------------------------- outputs

@dataclass
class Output:
    """An output being written: ``write_path`` is where blocks go until :meth:`commit`."""

    path: Path
    write_path: Path
    state: str  # "new" or "resume"
    lock: WriterLock

    @property
    def replacing(self) -> bool:
        return self.write_path != self.path

    def open_or_create(self, open_store, create_store):
        """The store to write: resumed (``open_store(path)``) or made (``create_store(path)``).

        A resumable store whose structure is broken (a run that died while creating it,
        e.g. on a full disk, leaves a group without its arrays) holds no finished block:
        it is removed and made again rather than refused.
        """
        if self.state == "resume":
            try:
                return open_store(self.write_path)
            except InputError:
                if _blocks_done(self.write_path):
                    raise
                remove_store(self.write_path)
                self.state = "new"
        return create_store(self.write_path)

    def commit(self) -> None:
        """Put a complete store in place (swapping out the one it replaces)."""
        if not self.replacing:
            return
        if isinstance(self.path, RemotePath):
            _sibling(self.path, _SWAP).write_text(json.dumps({"since": _now()}))
            _finish_remote_swap(self.path)
            return
        old = _sibling(self.path, _OLD)
        if old.exists():
            _remove_replaced(old, self.path)
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.write_path, self.path)
        if old.exists():
            _remove_replaced(old, self.path)


def _remove_replaced(old: Path, path: Path) -> None:
    """Delete the store ``path`` replaced, kept beside it as ``old`` during the swap."""
    try:
        remove_store(old)
    except InputError as exc:
        raise InputError(f"{old}: the store {path.name} replaced, left beside it by an "
                         f"earlier run, is not as volseg left it ({exc}); {path.name} itself "
                         f"is complete: look inside {old.name} and delete it") from None
    except OSError as exc:
        raise InputError(f"{old}: the store {path.name} replaced could not be deleted "
                         f"({exc.strerror or exc}: {exc.filename}); {path.name} itself is "
                         f"complete: delete {old.name} when you can") from None


def _volseg_attrs(path: Path) -> dict | None:
    node = read_node(path)
    if node is None:
        return None
    attrs = (node.get("attributes") or {}).get("volseg")
    return attrs if isinstance(attrs, dict) else None


def decide_output(path: Path, job: dict, overwrite: bool, what: str) -> str:
    """"new", "resume" or "replace" for an existing store (or an InputError)."""
    remote = isinstance(path, RemotePath)
    if not remote and path.is_dir() and not any(path.iterdir()):
        return "new"  # an empty folder (made by the user, or left by a failed start)
    if read_node(path) is None:
        raise InputError(f"{path}: exists and is not a Zarr store; choose another output path "
                         "(volseg never deletes it, even with --overwrite)")
    attrs = _volseg_attrs(path)
    if attrs is None:
        raise InputError(f"{path}: a Zarr store not made by volseg is there; volseg never "
                         "deletes it, even with --overwrite: choose another output path")
    if not remote and not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"{path}: not writable")
    same_job = (attrs.get("job") or {}).get("fingerprint") == job["fingerprint"]
    if overwrite:
        others = foreign_entries(path)
        if others:
            raise InputError(f"{path}: holds files that are not part of the store (e.g. "
                             f"{others[0].relative_to(path)}); volseg replaces only its own "
                             "stores: move them out, or choose another output path")
        return "replace"
    if attrs.get("complete"):
        raise InputError(f"{path}: already exists and is complete; use --overwrite to replace "
                         f"it, or choose another {what} path")
    if same_job:
        return "resume"
    raise InputError(f"{path}: an unfinished {what} from other inputs or parameters is there"
                     f"{_differences(attrs.get('job') or {}, job)}; rerun the original command "
                     "to finish it, or use --overwrite to start again")


#: Job parameters recorded only when on (absent means False).
_SWITCHES = ("tta",)


def _differences(stored: dict, job: dict) -> str:
    """The parameters in which two jobs differ, as `` (tta: there False, now True)``.

    A parameter missing from a job is shown as its value when off (None, or False for
    a switch recorded only when on, such as ``tta``); "" when only sources differ.
    """
    old, new = stored.get("parameters") or {}, job.get("parameters") or {}
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if not keys:
        return ""

    def shown(params, key):
        value = params.get(key, False if key in _SWITCHES else None)
        return str(value)[:60]

    return " (" + "; ".join(f"{k}: there {shown(old, k)}, now {shown(new, k)}"
                            for k in keys) + ")"



def _recover_swap(path: Path) -> None:
    """Finish or undo a swap that a crash interrupted between its two renames."""
    if isinstance(path, RemotePath):
        if _sibling(path, _SWAP).is_file():
            _finish_remote_swap(path)
        return
    old = _sibling(path, _OLD)
    if not old.exists():
        return
    if path.exists():
        _remove_replaced(old, path)
    else:
        os.replace(old, path)  # the new store is still beside: the old one comes back


def _job_paths(value) -> list[str]:
    """Every ``path`` a job records (its sources, and stores among its parameters such
    as an ROI): what the run reads."""
    if isinstance(value, dict):
        found = [value["path"]] if isinstance(value.get("path"), str) else []
        return found + [p for k, v in value.items() if k != "path" for p in _job_paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _job_paths(v)]
    return []


def check_not_an_input(path, job: dict, what: str = "output") -> None:
    """Refuse an output that is a store or file this run reads, or a folder holding one,
    however the path is spelled (``..``, symbolic links, a trailing slash, ``file://``):
    writing or ``--overwrite`` there would destroy the input.

    An output *inside* an input folder is allowed (a conversion into its own folder of
    frames skips the store it writes).
    """
    out = location_text(path).rstrip("/")
    for given in _job_paths({"sources": job.get("sources"), "parameters": job.get("parameters")}):
        source = location_text(given).rstrip("/")
        if source == out or source.startswith(out + "/"):
            where = "is" if source == out else "holds"
            raise InputError(f"{path}: {where} {given}, which this command reads; write the "
                             f"{what} somewhere else (nothing was changed)")


@contextmanager
def open_output(path, *, job: dict, overwrite: bool = False, what: str = "output",
                command: str | None = None):
    """Take the output ``path`` for writing; yields an :class:`Output`.

    The lock is held until the ``with`` block ends. Call ``Output.commit()`` once the
    store at ``write_path`` is complete.

    Raises
    ------
    InputError
        The output is a symbolic link, its folder is missing or read-only, another volseg
        writes it, or what is there may not be replaced (see module docstring).
    """
    path = locate(path)
    check_not_an_input(path, job, what)
    if isinstance(path, RemotePath):
        check_location(path, write=True, param=None)
    else:
        _check_local_output(path)
    lock = WriterLock.acquire(path, command=command)
    try:
        _recover_swap(path)
        if not path.exists():
            state, write_path = "new", path
        else:
            state = decide_output(path, job, overwrite, what)
            write_path = path
            if state == "replace":
                write_path = _sibling(path, _NEW)
                state = "new"
                attrs = _volseg_attrs(write_path) if write_path.exists() else None
                if attrs is not None and (attrs.get("job") or {}).get("fingerprint") == \
                        job["fingerprint"] and not attrs.get("complete"):
                    state = "resume"
                elif write_path.exists():
                    remove_store(write_path)
        output = Output(path, write_path, state, lock)
        try:
            yield output
        except BaseException as exc:
            if state == "new" and _worthless(write_path, exc):
                _discard(write_path)
            raise
    finally:
        lock.release()


def _check_local_output(path: Path) -> None:
    if path.is_symlink():
        raise InputError(f"{path}: is a symbolic link; give the real path of the output "
                         f"({os.path.realpath(path)})")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: parent folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{path}: folder {parent} is not writable")


def _blocks_done(store: Path) -> int:
    """Blocks marked done in a store's ledger (its chunk files; 0 without a ledger)."""
    from volseg.io.store import LEDGER

    if isinstance(store, RemotePath):
        return sum(1 for k in (store / LEDGER / "c").find() if k.isdigit())
    ledger = store / LEDGER / "c"
    return sum(1 for p in ledger.iterdir() if p.name.isdigit()) if ledger.is_dir() else 0


def _worthless(store: Path, exc: BaseException) -> bool:
    """A store this run created is not worth keeping for a resume after ``exc``.

    Bad input (NaN pixels, a mask with other values, a damaged model) needs a rerun
    with other inputs or parameters, which could not resume it anyway: keeping it would
    only block that rerun. An interruption or a full disk keeps whatever blocks are
    done, so the same command resumes; with none done there is nothing to keep.
    """
    from volseg.errors import OperationalError

    if isinstance(exc, InputError) and not isinstance(exc, OperationalError):
        return True
    try:
        return _blocks_done(store) == 0
    except OSError:
        return False


def _discard(store: Path) -> None:
    """Remove a store this run created (only Zarr's own entries; never raises)."""
    try:
        if store.exists() and not foreign_entries(store):
            if isinstance(store, RemotePath):
                store.rm_tree()
            else:
                _delete_tree(store)
    except (OSError, InputError):
        pass


# --------------------------------------------------------------------------- report files

def check_report_files(*, json=None, csv=None, plots=None, figures=(), csv_paths=(),
                       overwrite: bool = False) -> None:
    """Refuse to replace report files volseg did not write (unless ``overwrite``), and
    two reports named as one file; before any work, for the CLI and the API alike.

    Parameters
    ----------
    json, csv, plots : path-like, optional
        The JSON report, the CSV table and the folder of figures about to be written.
    figures : sequence of str
        The file names a command may write under ``plots``.
    csv_paths : sequence of path-like
        Further CSV files (evaluate's per-slice table).
    """
    named = [(f"--{k}", v) for k, v in (("json", json), ("csv", csv)) if v]
    named += [("--csv (per slice)", p) for p in csv_paths]
    seen: dict = {}
    for option, path in named:
        key = Path(path).resolve()
        if key in seen:
            raise InputError(f"{option} {path}: the same file as {seen[key]}; give each report "
                             "its own file")
        seen[key] = option
    if json:
        check_replaceable(json, marker=json_by_volseg, overwrite=overwrite, what="--json report")
    for path in ([csv] if csv else []) + list(csv_paths):
        check_replaceable(path, marker=csv_by_volseg, overwrite=overwrite, what="--csv table")
    if plots:
        if Path(plots).exists() and not Path(plots).is_dir():
            raise InputError(f"--plots {plots}: exists and is not a folder")
        for name in figures if Path(plots).is_dir() else ():
            check_replaceable(Path(plots) / name, marker=png_by_volseg, overwrite=overwrite,
                              what="--plots figure")


def check_replaceable(path, *, marker, overwrite: bool, what: str) -> None:
    """Refuse to replace a file volseg did not write, unless ``overwrite``.

    Parameters
    ----------
    path : path-like
        The file about to be written.
    marker : callable
        ``marker(path) -> bool``: the existing file is one volseg wrote.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name for the {what}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: folder {parent} does not exist")
    if path.exists() and not overwrite and not marker(path):
        raise InputError(f"{path}: exists and was not written by volseg; use --overwrite to "
                         f"replace it, or choose another {what} path")


def write_text_atomic(path, text: str) -> None:
    """Write a whole file or nothing (a full disk never leaves half a report)."""
    path = Path(path)
    part = path.with_name(f".{path.name}.part")
    try:
        part.write_text(text)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def json_by_volseg(path) -> bool:
    """A JSON report volseg wrote (an object with ``per_timepoint``)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "per_timepoint" in data


def csv_by_volseg(path) -> bool:
    """A per-time-point (or per-slice) CSV volseg wrote: its first column is ``t`` or ``z``."""
    try:
        with open(path, newline="") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return first.split(",")[0].strip() in ("t", "z")


def png_by_volseg(path) -> bool:
    """A PNG figure volseg wrote: its ``Software`` text chunk names volseg."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"Software\x00volseg" in head


def figure_by_volseg(path) -> bool:
    """A figure volseg wrote: a PNG by :func:`png_by_volseg`, a PDF or SVG whose
    ``Creator`` names volseg."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        return png_by_volseg(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 65536))
            tail = fh.read()
    except OSError:
        return False
    if head.startswith(b"%PDF"):
        return b"(volseg " in tail  # the document information dictionary is at the end
    return b"<svg" in head and b"<dc:title>volseg " in head


#: The ``metadata=`` of every figure volseg saves (how :func:`figure_by_volseg` knows it).
def figure_metadata(suffix: str = ".png") -> dict:
    from volseg.version import __version__

    key = "Software" if suffix.lower() == ".png" else "Creator"  # what each format takes
    return {key: f"volseg {__version__}"}
