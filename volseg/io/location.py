"""Where a store is: a local path, or a URL (``s3://``, ``https://``, ``file://``).

The one place that turns a path-or-URL (and storage options) into something to read
and write. Callers never build fsspec or s3fs objects themselves:

* :func:`locate` gives a :class:`pathlib.Path` for a local path (or ``file://`` URL),
  so local stores behave exactly as they always did, and a :class:`RemotePath` for any
  other URL: the few path operations volseg uses (``/``, ``name``, ``exists``,
  ``read_text`` ...) over an fsspec filesystem;
* :func:`zarr_store` gives what ``zarr.open_group`` / ``zarr.create_group`` take: the
  path string for a local store (zarr's ``LocalStore``), a ``FsspecStore`` for a URL.

Storage options (an endpoint, a profile, keys) are, as everywhere in the ecosystem,
taken by s3fs/botocore from ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``,
``AWS_ACCESS_KEY_ID`` ... and may be given explicitly: :func:`set_storage_options`
(the CLI's ``--storage-options JSON``, the API's ``storage_options=``), or the
environment variable ``VOLSEG_STORAGE_OPTIONS`` (JSON) which child processes inherit.
They are process-wide and never part of a location's text: ``str(location)`` is the
URL without any ``user:password@``, and that text is all that stores, provenance,
logs and messages ever see.

``http://`` and ``https://`` are read-only (HTTP has no standard write).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from volseg.errors import InputError, OperationalError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
#: Schemes that can only be read.
READ_ONLY_SCHEMES = ("http", "https")
_OPTIONS: dict = {}
_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "http", "https", "file")
_LOCK = threading.Lock()
_CHECKED: set = set()


def is_url(path) -> bool:
    """A URL other than ``file://`` (what :class:`RemotePath` handles)."""
    return isinstance(path, (str, RemotePath)) and bool(_URL.match(str(path))) \
        and not str(path).startswith("file://")


def is_remote(path) -> bool:
    return isinstance(path, RemotePath) or is_url(path)


def set_storage_options(options) -> None:
    """Set the process-wide storage options (a dict or a JSON text; None: none)."""
    opts = parse_storage_options(options) if options is not None else {}
    with _LOCK:
        _OPTIONS.clear()
        _OPTIONS.update(opts)
        _CHECKED.clear()
    # worker processes (a local cluster's, a Slurm job's: sbatch exports the environment)
    # read the same options; the environment is never logged or recorded
    if opts:
        os.environ["VOLSEG_STORAGE_OPTIONS"] = json.dumps(opts)
    else:
        os.environ.pop("VOLSEG_STORAGE_OPTIONS", None)


def parse_storage_options(text) -> dict:
    if isinstance(text, dict):
        return dict(text)
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise InputError("not valid JSON; give an object such as "
                         "'{\"endpoint_url\": \"http://127.0.0.1:9000\"}'",
                         param="storage_options") from None
    if not isinstance(value, dict):
        raise InputError("must be a JSON object (keys: fsspec/s3fs options)",
                         param="storage_options")
    return value


def storage_options(protocol: str) -> dict:
    """The options fsspec gets for ``protocol``: explicit ones, else the environment's."""
    with _LOCK:
        opts = dict(_OPTIONS)
    if not opts and os.environ.get("VOLSEG_STORAGE_OPTIONS"):
        opts = parse_storage_options(os.environ["VOLSEG_STORAGE_OPTIONS"])
    if any(k in _PROTOCOLS for k in opts):  # {"s3": {...}, "https": {...}}
        opts = dict(opts.get(protocol) or {})
    elif protocol in READ_ONLY_SCHEMES:
        opts = {}  # flat options are the object store's
    if protocol in ("s3", "s3a"):
        # an endpoint option, a client_kwargs one and AWS_ENDPOINT_URL all work
        endpoint = opts.pop("endpoint_url", None) or (opts.get("client_kwargs") or {}).get(
            "endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
    return opts


def clean_url(url: str) -> str:
    """``url`` without ``user:password@`` (what messages and attributes may show)."""
    parts = urlsplit(str(url))
    if "@" not in parts.netloc:
        return str(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def endpoint_of(protocol: str) -> str | None:
    return storage_options(protocol).get("endpoint_url") if protocol.startswith("s3") else None


class RemotePath:
    """A store (or a file) at a URL, with the path operations volseg uses.

    Pickles as its URL text; the filesystem is made in each process from that process's
    storage options (fsspec caches the instances).
    """

    def __init__(self, url: str):
        url = str(url).rstrip("/")
        self._url = url
        parts = urlsplit(url)
        self.protocol = parts.scheme.lower()
        self.url = clean_url(url)

    # ---------------------------------------------------------------- text
    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)

    def __reduce__(self):
        return (RemotePath, (self._url,))

    def __truediv__(self, name) -> "RemotePath":
        name = str(name).strip("/")
        return RemotePath(f"{self._url}/{name}") if name else self

    @property
    def name(self) -> str:
        return self._url.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        name = self.name
        return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(self._url.rsplit("/", 1)[0])

    def with_name(self, name: str) -> "RemotePath":
        return RemotePath(f"{self._url.rsplit('/', 1)[0]}/{name}")

    def resolve(self) -> "RemotePath":
        return self

    absolute = resolve

    def relative_to(self, other) -> str:
        return self._url[len(str(other._url if isinstance(other, RemotePath) else other)):] \
            .lstrip("/")

    @property
    def read_only(self) -> bool:
        return self.protocol in READ_ONLY_SCHEMES

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    # ---------------------------------------------------------------- filesystem
    @property
    def fs(self):
        """The (synchronous) fsspec filesystem of this URL."""
        import fsspec

        return fsspec.filesystem(self.protocol, **storage_options(self.protocol))

    @property
    def fs_path(self) -> str:
        """The path the filesystem understands (``bucket/key`` for S3, the URL for HTTP)."""
        if self.protocol in READ_ONLY_SCHEMES:
            return self._url
        return self._url.split("://", 1)[1]

    def is_symlink(self) -> bool:
        return False

    def is_file(self) -> bool:
        try:
            return self.fs.isfile(self.fs_path)
        except FileNotFoundError:
            return False

    def is_dir(self) -> bool:
        if self.read_only:  # HTTP lists nothing reliably: a store is known by its zarr.json
            return (self / "zarr.json").is_file()
        try:
            return self.fs.isdir(self.fs_path)
        except FileNotFoundError:
            return False

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.fs_path)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        self.fs.pipe_file(self.fs_path, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.fs_path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def iterdir(self):
        try:
            entries = self.fs.ls(self.fs_path, detail=False, refresh=True)
        except FileNotFoundError:
            return iter(())
        return iter(self / e.rstrip("/").rsplit("/", 1)[-1] for e in entries
                    if e.rstrip("/") != self.fs_path)

    def find(self) -> list[str]:
        """Every object under this prefix, as keys relative to it."""
        try:
            keys = self.fs.find(self.fs_path)
        except FileNotFoundError:
            return []
        n = len(self.fs_path) + 1
        return [k[n:] for k in keys if k.startswith(self.fs_path + "/")]

    def rm_tree(self) -> None:
        try:
            self.fs.rm(self.fs_path, recursive=True)
        except FileNotFoundError:
            pass


def locate(path) -> Path | RemotePath:
    """A :class:`Path` for a local path or ``file://`` URL; a :class:`RemotePath` for a URL."""
    if isinstance(path, (Path, RemotePath)):
        return path
    text = os.fspath(path) if not isinstance(path, str) else path
    if not text.strip():
        raise InputError(f"an empty path ({text!r}): give a file, folder or URL")
    if text.startswith("file://"):
        return Path(urlsplit(text).path)
    if _URL.match(text):
        return RemotePath(text)
    return Path(text)


def text(path) -> str:
    """A location as provenance records it: an absolute local path, or the clean URL."""
    loc = locate(path)
    return str(loc.resolve()) if isinstance(loc, Path) else str(loc)


def zarr_store(path, *, mode: str = "r"):
    """What zarr's ``open_group``/``create_group`` take for ``path``.

    A local path stays a string (zarr's ``LocalStore``); a URL becomes a ``FsspecStore``
    (read-only for ``mode="r"`` and for HTTP).
    """
    loc = locate(path)
    if isinstance(loc, Path):
        return str(loc)
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(loc._url, storage_options=storage_options(loc.protocol),
                                read_only=mode == "r" or loc.read_only)


# --------------------------------------------------------------------------- errors

def check(path, *, write: bool = False, param: str | None = None) -> None:
    """Fail early, in one line, when a URL cannot be used: HTTP as an output, a
    missing bucket, access denied, an endpoint that does not answer. Local paths and
    buckets already checked in this process pass at no cost."""
    loc = locate(path)
    if not isinstance(loc, RemotePath):
        return
    if write and loc.read_only:
        raise InputError(f"{loc}: {loc.protocol}:// URLs are read-only; write the output to "
                         "a local path or an s3:// URL", param=param)
    if loc.read_only:
        return
    key = (loc.protocol, loc.bucket, write)
    if key in _CHECKED:
        return
    try:
        loc.fs.ls(loc.bucket, detail=False, refresh=True)
    except PermissionError as exc:
        if write:
            raise remote_error(exc, loc) from None
        return  # a reader may be allowed to get objects but not to list: its reads say
    except Exception as exc:  # noqa: BLE001  (mapped to a message, or re-raised)
        err = remote_error(exc, loc)
        if err is None:
            raise
        raise err from None
    _CHECKED.add(key)


def remote_error(exc: BaseException, where=None) -> OperationalError | None:
    """A storage service's failure as one line naming the URL and what to do (None: not
    one of those)."""
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    loc = locate(where) if where is not None else None
    label = str(loc) if loc is not None else "storage"
    message = str(exc).splitlines()[0] if str(exc) else name
    endpoint = endpoint_of(loc.protocol) if isinstance(loc, RemotePath) else None
    at = f" at {clean_url(endpoint)}" if endpoint else ""
    if isinstance(exc, FileNotFoundError) and "bucket" in message.lower():
        bucket = loc.bucket if isinstance(loc, RemotePath) else "?"
        return OperationalError(f"{label}: bucket {bucket!r} does not exist{at}; create it, or "
                                "check the URL and the endpoint (AWS_ENDPOINT_URL or "
                                "--storage-options)")
    if isinstance(exc, PermissionError) or "AccessDenied" in message or \
            "InvalidAccessKeyId" in message or "SignatureDoesNotMatch" in message:
        return OperationalError(f"{label}: access denied{at} ({_short(message)}); check the "
                                "credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID / "
                                "AWS_SECRET_ACCESS_KEY or --storage-options)")
    if "Endpoint" in name and "Connection" in name or name in (
            "ClientConnectorError", "ServerDisconnectedError", "ConnectTimeoutError",
            "ConnectionClosedError") or (module.startswith(("aiohttp", "botocore"))
                                         and "connect" in message.lower()):
        return OperationalError(f"{label}: cannot reach the storage endpoint{at}; check the "
                                "URL, AWS_ENDPOINT_URL or --storage-options, and the network, "
                                "then rerun")
    if name in ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound"):
        return OperationalError(f"{label}: {_short(message)}; give credentials the way AWS "
                                "tools take them (AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials), or "
                                "--storage-options '{\"anon\": true}' for a public bucket")
    if isinstance(exc, TypeError) and "unexpected keyword argument" in message:
        key = message.rsplit("argument", 1)[-1].strip(" '\"")
        return OperationalError(f"{label}: the storage client does not take the option "
                                f"{key!r}; check --storage-options (s3fs options such as "
                                "endpoint_url, key, secret, anon, profile, client_kwargs)")
    if module.startswith("aiohttp") and "ClientResponseError" in name:
        status = getattr(exc, "status", "?")  # its text may hold the URL's user:password
        return OperationalError(f"{label}: the server refused the request (HTTP {status}); "
                                "check the URL and access to it")
    return None


def _short(message: str) -> str:
    return message[:160]
