"""The exception types that mean "the input is wrong" or "the data is damaged".

Library code validates at its boundary and names the *parameter* (``threshold``,
``batch_size``), never a command-line flag: the CLI maps parameter names to its flags
in one place (``volseg_cli.main.FLAGS``), so the same error reads naturally from Python
(``threshold: must be within [0, 1]``) and from the shell (``--threshold: ...``).
"""

from __future__ import annotations

import re


class InputError(Exception):
    """Bad input or usage: the CLI prints the message as one line and exits 2.

    The message must name the file or parameter and say what is wrong (and, where it
    helps, what to do). Anything else raised is an internal error (exit 1).

    Parameters
    ----------
    message : str
        What is wrong (and what to do).
    param : str, optional
        The library parameter at fault (``"threshold"``); shown before the message.
    """

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message

    def __reduce__(self):  # survive the trip back from a Dask worker with ``param``
        return (_rebuild, (type(self), self.message, self.param))


def _rebuild(cls, message, param):
    return cls(message, param=param)


class OperationalError(InputError):
    """The machine's state, not the input (a full disk, a permission): fix it and rerun.

    Work done so far is kept, so the rerun resumes.
    """


class DamagedDataError(InputError):
    """A store's chunk is missing, empty or fails its checksum: never computed on.

    Raised by every checked read (:func:`volseg.io.store.read_region`); the message names
    the store, the array, the frames (t, z) affected and what to do.
    """


#: errno values that are the machine's state, not a bug: what to tell the user.
_OPERATIONAL = {
    "ENOSPC": "no space left on the device; free some space, then rerun the same command "
              "to finish",
    "EDQUOT": "disk quota exceeded; free some space, then rerun the same command to finish",
    "EACCES": "permission denied; fix the permissions, then rerun the same command",
    "EPERM": "operation not permitted; fix the permissions, then rerun the same command",
    "EROFS": "read-only file system; write the output somewhere writable",
    "EIO": "input/output error from the storage; check the disk or file system, then rerun",
    "ENOTCONN": "the file system is not connected; remount it, then rerun",
    "ESTALE": "stale file handle on a network file system; rerun the command",
    "ENAMETOOLONG": "a name in this path is longer than the file system allows (255 bytes "
                    "per name on most); choose a shorter name",
    "ELOOP": "too many levels of symbolic links (a link that points to itself?); fix "
             "the links or give the real path",
}


def operational_error(exc: OSError) -> OperationalError | None:
    """An :class:`OSError` that the user can fix (full disk, permissions) as one line.

    Returns None for other errors (those are bugs and keep their traceback).
    """
    import errno as _errno

    name = _errno.errorcode.get(exc.errno or -1)
    if exc.errno is None and re.fullmatch(r"\d+ requested and \d+ written", str(exc)):
        name = "ENOSPC"  # numpy's tofile (tifffile writes with it) on a short write
    if name not in _OPERATIONAL:
        return None
    where = str(exc.filename or "")
    if name == "ENAMETOOLONG" and len(where) > 120:  # the path itself would fill the line
        where = where[:60] + "..." + where[-40:]
    err = OperationalError(f"{where + ': ' if where else ''}{_OPERATIONAL[name]}")
    err.__cause__ = None
    return err
