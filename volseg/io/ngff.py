"""Reading OME-NGFF image metadata written by any tool (NGFF 0.4 on Zarr v2, 0.5 on v3).

volseg's own stores are one layout among many: the full-resolution array at ``0``,
axes t, z, y, x. Other tools (ome-zarr-py, bioformats2raw, public archives) write
dataset paths such as ``s0``, axes in any subset and order of t, c, z, y, x, and roots
holding several series. This module turns the metadata into what volseg needs
(:class:`NgffImage`: array path, axes, pixel sizes, units) and presents any such array
as (t, z, y, x) through :class:`AxisView`, so every stage keeps its one shape.
"""

from __future__ import annotations

import math

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from volseg.errors import InputError

#: The axes volseg computes on, in this order; ``c`` is chosen, never computed on.
AXES = ("t", "z", "y", "x")
KNOWN_AXES = frozenset("tczyx")
#: The key bioformats2raw writes on the root that holds its series ``0/``, ``1/``, ...
BF2RAW_KEY = "bioformats2raw.layout"


@dataclass(frozen=True)
class NgffImage:
    """What volseg needs from an NGFF image group's ``multiscales[0]``.

    Attributes
    ----------
    path : str
        The full-resolution dataset, relative to the image group (``"0"``, ``"s0"``).
    axes : tuple of str
        Axis names of that array, in its order (a subset of t, c, z, y, x).
    scale : dict
        Pixel size per axis (1.0 where the metadata gives none).
    units : dict
        Unit per axis, only for axes that have one.
    version : str
        The NGFF version the metadata declares (``"0.4"``, ``"0.5"``).
    """

    path: str
    axes: tuple[str, ...]
    scale: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)
    version: str = ""


def ome_attributes(attrs) -> dict:
    """The NGFF part of a group's attributes: ``attrs["ome"]`` (0.5) or ``attrs`` (0.4)."""
    attrs = dict(attrs)
    ome = attrs.get("ome")
    return dict(ome) if isinstance(ome, dict) else attrs


def is_series_root(attrs) -> bool:
    """The group is a bioformats2raw root (series ``0/``, ``1/``, ... below it)."""
    return BF2RAW_KEY in ome_attributes(attrs)


def _axis_names(axes) -> tuple[str, ...]:
    # NGFF 0.3 wrote plain strings; 0.4 and later write {"name": ..., "type": ...}.
    return tuple(str(a["name"] if isinstance(a, dict) else a).lower() for a in axes)


def _scale_of(transforms, n: int, where: str = "store") -> list[float]:
    """The product of the ``scale`` transformations in a list (translations do not scale).

    Raises
    ------
    InputError
        A scale value that is not a positive finite number (a string, null, 0, NaN).
    """
    scale = [1.0] * n
    for tr in transforms or []:
        if isinstance(tr, dict) and tr.get("type") == "scale" and len(tr.get("scale", [])) == n:
            values = tr["scale"]
            try:
                numbers = [float(b) for b in values]
            except (TypeError, ValueError):
                numbers = []
            if len(numbers) != n or not all(math.isfinite(b) and b > 0 for b in numbers):
                raise InputError(f"{where}: the NGFF scale {values} holds a value that is not a "
                                 "positive number; fix the store's metadata (pixel sizes)")
            scale = [a * b for a, b in zip(scale, numbers)]
    return scale


def parse_image(attrs, where: str = "store") -> NgffImage:
    """Parse an NGFF image group's attributes (0.3-0.5) into an :class:`NgffImage`.

    Parameters
    ----------
    attrs : mapping
        The group's attributes.
    where : str
        How messages name the group.

    Raises
    ------
    InputError
        No ``multiscales``, no datasets, axes volseg cannot map onto t, c, z, y, x.
    """
    ome = ome_attributes(attrs)
    multiscales = ome.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise InputError(f"{where}: not an OME-Zarr image group (no 'multiscales' metadata)")
    ms = multiscales[0]
    datasets = ms.get("datasets") or []
    if not datasets or "path" not in datasets[0]:
        raise InputError(f"{where}: the 'multiscales' metadata lists no dataset")
    # NGFF before 0.4 had no axes: the arrays were always 5D t, c, z, y, x.
    axes = _axis_names(ms.get("axes") or "tczyx")
    unknown = [a for a in axes if a not in KNOWN_AXES]
    if unknown or len(set(axes)) != len(axes) or not {"y", "x"} <= set(axes):
        raise InputError(f"{where}: axes {list(axes)} are not a subset of t, c, z, y, x with "
                         "y and x; volseg reads images whose axes are among t, c, z, y, x")
    scale = _scale_of(datasets[0].get("coordinateTransformations"), len(axes), where)
    scale = [a * b for a, b in zip(scale, _scale_of(ms.get("coordinateTransformations"),
                                                    len(axes), where))]
    units = {}
    for a in ms.get("axes") or []:
        if isinstance(a, dict) and a.get("unit"):
            units[str(a["name"]).lower()] = str(a["unit"])
    version = str(ome.get("version") or ms.get("version") or "")
    return NgffImage(str(datasets[0]["path"]).strip("/"), axes,
                     dict(zip(axes, scale)), units, version)


def series_names(root: Path, attrs) -> list[str]:
    """The series of a bioformats2raw root, in order.

    The ``OME`` group's ``series`` attribute lists them when present (NGFF 0.4 "series"
    convention); otherwise the numbered sub-groups ``0``, ``1``, ... that exist.
    """
    for meta in (root / "OME" / "zarr.json", root / "OME" / ".zattrs"):
        try:
            node = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        listed = ome_attributes(node.get("attributes", node)).get("series")
        if isinstance(listed, list) and listed:
            return [str(s) for s in listed]
    names = []
    while node_kind(root / str(len(names))) == "group":
        names.append(str(len(names)))
    return names


def node_kind(path: Path) -> str | None:
    """``"group"``, ``"array"`` or None: what Zarr (v3 or v2) node ``path`` holds."""
    meta = path / "zarr.json"
    if not isinstance(path, Path):  # a URL: one request, not an existence check and a read
        try:
            return json.loads(meta.read_text()).get("node_type")
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError):
            return None
    elif meta.is_file():
        try:
            return json.loads(meta.read_text()).get("node_type")
        except (OSError, ValueError, AttributeError):
            return None
    if (path / ".zgroup").is_file():
        return "group"
    if (path / ".zarray").is_file():
        return "array"
    return None


def choose_channel(axes, shape, channel: int | None, where: str) -> int | None:
    """The channel to read from an array with ``axes`` and ``shape`` (None: no ``c`` axis).

    Raises
    ------
    InputError
        Several channels and none chosen, or a channel that is not there.
    """
    if "c" not in axes:
        return None
    n = int(shape[axes.index("c")])
    if channel is None:
        if n == 1:
            return 0
        raise InputError(f"{where} has {n} channels; choose one (0-{n - 1})", param="channel")
    if not isinstance(channel, (int, np.integer)) or not 0 <= channel < n:
        raise InputError(f"{where} has {n} channel(s) (0-{n - 1}); got {channel!r}",
                         param="channel")
    return int(channel)


# --------------------------------------------------------------------------- the view

def _full_key(key, ndim: int) -> tuple:
    """A basic-indexing key as one int or slice per axis (Ellipsis and short keys expanded)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(n for n, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    if len(key) > ndim:
        raise IndexError(f"too many indices: {len(key)} for {ndim} dims")
    for k in key:
        if not isinstance(k, (slice, int, np.integer)):
            raise TypeError(f"only ints and slices index a (t, z, y, x) view, not {type(k).__name__}")
    return tuple(key) + (slice(None),) * (ndim - len(key))


class AxisView:
    """An array with axes in any subset and order of t, c, z, y, x, seen as (t, z, y, x).

    Missing axes are singletons; ``c`` is fixed at ``channel``. Basic indexing (ints and
    slices) reads only the requested box from the array below, a
    :class:`~volseg.io.integrity.CheckedArray`, so damaged chunks are still refused. Shape,
    dtype, chunks, shards and block shape are those of the array, in (t, z, y, x).
    Read-only; pickles small (the array's store and metadata).

    Parameters
    ----------
    array : CheckedArray
    axes : sequence of str
        The array's axis names, in its order.
    channel : int, optional
        The channel to present; required when ``c`` is an axis.
    """

    ndim = 4

    def __init__(self, array, axes, channel: int | None = None):
        self.array = array
        self.axes = tuple(axes)
        self.channel = channel
        if "c" in self.axes and channel is None:
            raise ValueError("an array with a 'c' axis needs a channel")

    def __getattr__(self, name):
        if name in ("array", "axes", "channel"):  # not yet set (unpickling)
            raise AttributeError(name)
        return getattr(self.array, name)

    def __repr__(self) -> str:
        return (f"<AxisView {self.array.label} axes={''.join(self.axes)} channel={self.channel} "
                f"as tzyx {self.shape}>")

    def _tzyx(self, sizes) -> tuple[int, ...] | None:
        if sizes is None:
            return None
        return tuple(int(sizes[self.axes.index(a)]) if a in self.axes else 1 for a in AXES)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._tzyx(self.array.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return self._tzyx(self.array.chunks)

    @property
    def shards(self) -> tuple[int, ...] | None:
        return self._tzyx(self.array.shards)

    @property
    def block_shape(self) -> tuple[int, ...]:
        return self._tzyx(self.array.block_shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def source_key(self, key) -> tuple:
        """A (t, z, y, x) key (ints and slices) as a key of the array below."""
        key = _full_key(key, 4)
        return tuple(self.channel if a == "c" else key[AXES.index(a)] for a in self.axes)

    def __getitem__(self, key):
        key = _full_key(key, 4)
        data = np.asarray(self.array[self.source_key(key)])
        # The axes left after the read (those indexed by a slice), then the missing
        # ones as trailing singletons, put into t, z, y, x order.
        kept = [a for a, k in zip(self.axes, self.source_key(key)) if isinstance(k, slice)]
        missing = [a for a in AXES if a not in self.axes]
        data = data.reshape(data.shape + (1,) * len(missing))
        names = kept + missing
        order = [names.index(a) for a in AXES if a in names]
        data = data.transpose(order)
        # A missing axis takes its key on its singleton (an int there drops it).
        return data[tuple(key[i] if a in missing else slice(None)
                          for i, a in enumerate(AXES) if a in names)]

    def missing_frames(self, box=None) -> frozenset:
        """Frames (t, z) in ``box`` whose shard files are absent or empty."""
        return self.array.missing_frames(self._source_box(box))

    def damage(self, box=None):
        """Every frame (t, z) in ``box`` that is missing or fails to decode."""
        return self.array.damage(self._source_box(box))

    def _source_box(self, box):
        from volseg.io.integrity import key_box

        return None if box is None else key_box(self.source_key(box), self.array.shape)
