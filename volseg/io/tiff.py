"""Reading TIFF stacks: finding the frames of a 4D (t, z, y, x) dataset in TIFF files.

Three input forms: a folder of 2D frames with time and depth in the file
names (``t002_z015.tif``), one multi-page TIFF per time point (several files, or a folder
of them), or one hyperstack (ImageJ / OME-TIFF, axes from its metadata). Discovery reads
only file headers; pixels are read frame by frame, inside the tasks that write them,
through tifffile's Zarr view of the file (which handles pages, contiguous ImageJ data and
compression alike). Files are opened inside tasks because tifffile's stores cannot be
pickled.
"""

from __future__ import annotations

import contextlib
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from volseg.errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")
DEFAULT_PATTERN = "t{t}_z{z}"
_CHANNEL_AXES = "CS"
_DEPTH_AXES = "ZQIP"  # tifffile calls untyped page axes Q (or I, P)


@dataclass(frozen=True)
class TiffStack:
    """Where each (t, z) frame of a dataset lives; plain data, cheap to send to tasks.

    ``frames[t][z]`` is ``(file index, index tuple into the file's series array)``.
    """

    files: tuple[str, ...]
    shape: tuple[int, int, int, int]
    dtype: str
    frames: tuple[tuple[tuple[int, tuple[int, ...]], ...], ...]
    channel: int | None = None
    channel_axis: int | None = None  # position in the file's series axes, if any
    layout: str = "frames"
    units: dict = field(default_factory=dict)
    scale: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    #: The numbers in the file names of each time point and slice, where they are not
    #: simply 0, 1, 2, ... (``{"t": [1, 2, 3], "z": [0, 1]}``); None otherwise.
    source_indices: dict | None = None

    def frame_name(self, t: int, z: int) -> str:
        fi, idx = self.frames[t][z]
        name = Path(self.files[fi]).name
        return name if self.layout == "frames" else f"{name} (t={t}, z={z})"

    def read_frames(self, t: int, z0: int, z1: int) -> np.ndarray:
        """Frames ``z0:z1`` of time point ``t`` as an (n, y, x) array."""
        out = np.empty((z1 - z0,) + self.shape[2:], dtype=self.dtype)
        opened: dict[int, object] = {}
        try:
            for k, z in enumerate(range(z0, z1)):
                fi, idx = self.frames[t][z]
                try:
                    if fi not in opened:
                        opened[fi] = tifffile.TiffFile(self.files[fi])
                    frame = _read_frame(opened[fi], idx)
                    if self.channel is not None and frame.ndim == 3:
                        # samples last (RGB interleaved, YXS) or first (planar, SYX)
                        planar = (frame.shape[1:] == out.shape[1:]
                                  and frame.shape[:2] != out.shape[1:])
                        frame = frame[self.channel] if planar else frame[..., self.channel]
                except InputError:
                    raise
                except Exception as exc:
                    raise InputError(f"{self.frame_name(t, z)}: cannot read the frame "
                                     f"(truncated or corrupt TIFF?): {exc}") from None
                if frame.shape != out.shape[1:]:
                    raise InputError(f"{self.frame_name(t, z)}: frame is {frame.shape[0]}x{frame.shape[1]}, "
                                     f"others are {out.shape[1]}x{out.shape[2]}")
                out[k] = frame
        finally:
            for tif in opened.values():
                tif.close()
        return out


def _read_frame(tif, idx: tuple[int, ...]) -> np.ndarray:
    """One frame of a file's first series; ``idx`` indexes the axes before y, x."""
    series = tif.series[0]
    page_axes = len(idx)
    if page_axes and np.prod(series.shape[:page_axes]) != len(series):
        # axes before y, x that are not pages (e.g. tiles): go through tifffile's Zarr view
        import zarr

        return np.asarray(zarr.open(series.aszarr(), mode="r")[idx])
    # reading the page directly is ~10x faster than tifffile's Zarr view of the file
    page = int(np.ravel_multi_index(idx, series.shape[:page_axes])) if page_axes else 0
    return tif.asarray(series=0, key=page)


def frame_file_name(t: int, z: int, *, timepoints: int, depth: int) -> str:
    """File name of frame (t, z) in the default pattern: ``tTTT_zZZZ.tif``.

    Zero-padded to 3 digits, more where the series needs them, so names sort in order.
    ``volseg synth`` and ``volseg export`` write it; ``volseg convert`` reads it.
    """
    tw = max(3, len(str(max(timepoints - 1, 0))))
    zw = max(3, len(str(max(depth - 1, 0))))
    return f"t{t:0{tw}d}_z{z:0{zw}d}.tif"


def pattern_regex(pattern: str) -> re.Pattern:
    """``t{t}_z{z}`` -> a regex with named integer groups ``t`` and ``z``."""
    if "{t}" not in pattern and "{z}" not in pattern:
        raise InputError(f"{pattern!r} names neither {{t}} nor {{z}}", param="pattern")
    parts = re.split(r"(\{t\}|\{z\})", pattern)
    rx = "".join(f"(?P<{p[1]}>\\d+)" if p in ("{t}", "{z}") else re.escape(p) for p in parts)
    return re.compile(rx)


def name_match(rx: re.Pattern, path: Path, pattern: str):
    """The match of ``pattern`` (compiled as ``rx``) in a file's name, None if none.

    Raises
    ------
    InputError
        The name matches it twice with other numbers (``t{t}_z{z}`` in
        ``t001_z001_x_t002_z003``, or ``t{t}`` in ``set001_t002``): which is the file's
        place cannot be told.
    """
    found = list(rx.finditer(path.stem))
    if len({tuple(sorted(m.groupdict().items())) for m in found}) > 1:
        raise InputError(f"{path}: the name matches the pattern {pattern!r} more than once "
                         f"({', '.join(m.group(0) for m in found)}), so its place is "
                         "ambiguous; rename it, or set --pattern")
    return found[0] if found else None


def _natural_key(path: Path):
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", path.name)]


#: What ``volseg export`` leaves in a per-frame folder; ``complete`` is false until the
#: last frame is written (volseg.export writes it).
EXPORT_MANIFEST = ".volseg-export.json"


def _check_not_unfinished_export(folder: Path) -> None:
    import json

    try:
        manifest = json.loads((folder / EXPORT_MANIFEST).read_text())
    except (OSError, ValueError):
        return
    if isinstance(manifest, dict) and not manifest.get("complete", True):
        raise InputError(f"{folder}: holds an unfinished `volseg export` (interrupted?); rerun "
                         "that export to finish it before converting the folder")


def _list_folder(folder: Path) -> list[Path]:
    _check_not_unfinished_export(folder)
    files = []
    for p in sorted(folder.iterdir(), key=_natural_key):
        if p.name.startswith("."):
            continue  # .DS_Store and friends, and an output's lock and swap folders
        if p.is_dir() and p.suffix.lower() == ".zarr":
            continue  # a store beside the frames (e.g. the conversion's own output)
        if p.is_dir():
            raise InputError(f"{p}: a folder among the frames; volseg reads one level of TIFF files")
        if p.suffix.lower() not in TIFF_SUFFIXES:
            raise InputError(f"{p}: not a TIFF file (expected .tif/.tiff); move it out of {folder}")
        files.append(p)
    if not files:
        raise InputError(f"{folder}: folder contains no TIFF files")
    return files


@dataclass
class _Header:
    path: Path
    axes: str
    shape: tuple[int, ...]
    dtype: np.dtype
    units: dict
    scale: dict


def _header(path: Path) -> _Header:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise InputError(f"{path}: not a TIFF file (expected .tif/.tiff)")
    try:
        with _tifffile_complaints() as complaints, tifffile.TiffFile(path) as tif:
            series = tif.series
            damage = next((c for c in complaints if any(m in c for m in _DAMAGE_MARKS)), None)
            if damage:
                raise InputError(f"{path}: damaged TIFF, {damage} (truncated or corrupt file? "
                                 "its pages cannot all be found); copy or export it again")
            _check_one_series(path, series)
            s = series[0]
            units, scale = _physical(tif)
            return _Header(path, s.axes, tuple(s.shape), np.dtype(s.dtype), units, scale)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable TIFF ({exc})") from None


#: What tifffile logs when a file's chain of pages breaks off (a truncated or damaged
#: file): it then falls back to the pages it found, so the series looks whole.
_DAMAGE_MARKS = ("invalid page offset", "corrupted file")
#: Formats whose further series are previews (thumbnails, slide labels), not images.
_PREVIEW_SERIES_KINDS = ("lsm", "svs", "ndpi", "scn", "bif", "philips", "qpi")


@contextlib.contextmanager
def _tifffile_complaints():
    """Collect what tifffile logs (warnings and errors), without printing it."""
    import logging

    class Collect(logging.Handler):
        def emit(self, record):
            text = record.getMessage()
            complaints.append(re.sub(r"^<[^>]*>\s*", "", text))  # drop the object's repr

    complaints: list[str] = []
    logger = logging.getLogger("tifffile")
    handler = Collect(logging.WARNING)
    saved = logger.level, logger.propagate
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield complaints
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _check_one_series(path: Path, series) -> None:
    """Refuse a file of several image series (stage positions, or pages of different
    sizes): volseg would read the first and silently drop the others."""
    others = [s for s in series[1:]
              if not (s.kind in _PREVIEW_SERIES_KINDS or getattr(s.keyframe, "is_reduced", False))]
    if others:
        shapes = ", ".join(f"{s.axes} {'x'.join(map(str, s.shape))}" for s in series[:4])
        raise InputError(f"{path}: holds {len(series)} image series ({shapes}"
                         f"{', ...' if len(series) > 4 else ''}); volseg reads files of one "
                         "series (one position, frames of one size): save each series to "
                         "its own file (e.g. Fiji: Bio-Formats import, then save each) and "
                         "convert those")


#: OME-XML unit symbols as NGFF unit names (OME's defaults: micrometre and second).
OME_UNITS = {"µm": "micrometer", "um": "micrometer", "\u00b5m": "micrometer",
             "nm": "nanometer", "mm": "millimeter", "cm": "centimeter", "m": "meter",
             "Å": "angstrom", "pm": "picometer", "s": "second", "ms": "millisecond",
             "µs": "microsecond", "ns": "nanosecond", "min": "minute", "h": "hour"}


def _physical(tif) -> tuple[dict, dict]:
    """Pixel sizes and units from OME-XML or ImageJ metadata, where present."""
    if tif.is_ome:
        found = _ome_physical(tif)
        if found[1]:
            return found
    return _imagej_physical(tif)


def _ome_physical(tif) -> tuple[dict, dict]:
    """``PhysicalSize{X,Y,Z}`` and ``TimeIncrement`` (with their units) of the first
    image's ``Pixels`` in the OME-XML; a size in a unit NGFF does not name is left out."""
    import tifffile

    units, scale = {}, {}
    try:
        ome = tifffile.xml2dict(tif.ome_metadata).get("OME", {})
        image = ome.get("Image")
        image = image[0] if isinstance(image, list) else image
        pixels = (image or {}).get("Pixels") or {}
        for axis, key, default in (("x", "PhysicalSizeX", "µm"), ("y", "PhysicalSizeY", "µm"),
                                   ("z", "PhysicalSizeZ", "µm"), ("t", "TimeIncrement", "s")):
            value, unit = pixels.get(key), OME_UNITS.get(str(pixels.get(key + "Unit", default)))
            if value is not None and unit is not None and float(value) > 0:
                scale[axis], units[axis] = float(value), unit
    except Exception:  # metadata is a nicety; never fail a conversion over it
        return {}, {}
    return units, scale


def _imagej_physical(tif) -> tuple[dict, dict]:
    """Pixel sizes and units from ImageJ metadata, where present."""
    units, scale = {}, {}
    ij = tif.imagej_metadata or {}
    try:
        unit = ij.get("unit")
        if unit in ("micron", "um", "\\u00B5m", "µm"):
            unit = "micrometer"
        page = tif.pages.first
        xr = page.tags.get("XResolution")
        yr = page.tags.get("YResolution")
        if unit and xr and yr:
            scale["x"] = xr.value[1] / xr.value[0]
            scale["y"] = yr.value[1] / yr.value[0]
            units["x"] = units["y"] = unit
            if ij.get("spacing"):
                scale["z"] = float(ij["spacing"])
                units["z"] = unit
        if ij.get("finterval"):
            scale["t"] = float(ij["finterval"])
            units["t"] = "second"
    except Exception:  # metadata is a nicety; never fail a conversion over it
        return {}, {}
    return units, scale


def _check_dtype(h: _Header):
    if h.dtype.kind not in "uif" and h.dtype != np.bool_:
        raise InputError(f"{h.path}: pixel type {h.dtype} is not supported (use integer or float images)")


def _plan_axes(h: _Header, channel: int | None):
    """Map a file's series axes to (t, z) positions; returns (t_axis, z_axis, channel_axis)."""
    axes, shape = h.axes, h.shape
    if len(axes) < 2 or axes[-2:] not in ("YX",) and not axes.endswith("YXS"):
        raise InputError(f"{h.path}: cannot find the image plane in axes {axes!r}")
    t_axis = z_axis = c_axis = None
    for i, (a, n) in enumerate(zip(axes, shape)):
        if a in "YX":
            continue
        if a in _CHANNEL_AXES:
            if n > 1:
                if c_axis is not None:
                    raise InputError(f"{h.path}: more than one channel axis ({axes}); split the channels first")
                c_axis = i
            continue
        if a == "T":
            t_axis = i
        elif a in _DEPTH_AXES and z_axis is None:
            z_axis = i
        elif n > 1:
            raise InputError(f"{h.path}: unsupported axis {a!r} of size {n} in {axes!r}; "
                             "volseg reads t, z, y, x (and one channel with --channel)")
    if c_axis is not None:
        n = shape[c_axis]
        if channel is None:
            raise InputError(f"{h.path}: has {n} channels (RGB or multichannel, axes {axes}); "
                             f"pick one with --channel 0..{n - 1}")
        if not 0 <= channel < n:
            raise InputError(f"{channel} is out of range for {h.path} ({n} channels)", param="channel")
    return t_axis, z_axis, c_axis


def _index(h: _Header, t_axis, z_axis, c_axis, t: int, z: int, channel) -> tuple[int, ...]:
    idx = []
    for i, a in enumerate(h.axes):
        if a in "YX":
            break
        if i == t_axis:
            idx.append(t)
        elif i == z_axis:
            idx.append(z)
        elif i == c_axis and a == "C":
            idx.append(channel)
        elif a == "S":
            break
        else:
            idx.append(0)
    return tuple(idx)


def check_numbering(found: dict, *, where, allow_gaps: bool) -> dict | None:
    """Refuse gaps in the numbers of time points or slices found in file names.

    Parameters
    ----------
    found : dict
        ``{"t": sorted numbers, "z": sorted numbers}`` as read from the file names.
    where : str
        The folder or files, for the message.
    allow_gaps : bool
        Accept gaps: indices then map in sorted order (the i-th number found becomes
        index i), and the numbers are recorded.

    Returns
    -------
    dict or None
        The numbers per axis when they are not exactly 0, 1, 2, ... (to record in the
        store), else None.

    Raises
    ------
    InputError
        Naming the missing numbers, unless ``allow_gaps``.
    """
    for axis, values in found.items():
        if len(values) < 2 or allow_gaps:
            continue
        missing = sorted(set(range(values[0], values[-1] + 1)) - set(values))
        if missing:
            shown = ", ".join(str(m) for m in missing[:10]) + (" ..." if len(missing) > 10 else "")
            name = "time points" if axis == "t" else "slices"
            raise InputError(f"{where}: {name} {axis}={shown} are missing ({len(values)} found, "
                             f"numbered {values[0]}..{values[-1]}); add the missing files, or "
                             "pass --allow-gaps to number the ones found 0, 1, 2, ... in order "
                             "(the original numbers are recorded in the store)")
    if all(list(v) == list(range(len(v))) for v in found.values()):
        return None
    return {axis: [int(v) for v in values] for axis, values in found.items()}


def discover(inputs, *, pattern: str = DEFAULT_PATTERN, channel: int | None = None,
             allow_gaps: bool = False) -> TiffStack:
    """Find the frames of a dataset given the INPUT paths of ``volseg convert``.

    Parameters
    ----------
    inputs : list of path-like
        One folder, one file, or several files (one multi-page TIFF per time point).
    pattern : str
        File-name pattern of per-frame files, with ``{t}`` and/or ``{z}``.
    channel : int, optional
        Channel to take from RGB or multichannel files.
    allow_gaps : bool
        Accept missing numbers in the file names (see :func:`check_numbering`).
    """
    files = _files_of(inputs)
    headers = [_header(f) for f in files]
    for h in headers:
        _check_dtype(h)
    plane_first = _plane(headers[0])
    n_frames = _frames_in(headers[0])
    if len(files) > 1 and n_frames == 1:
        return _from_frame_files(headers, pattern, channel, allow_gaps)
    if len(files) == 1:
        return _from_one_file(headers[0], channel)
    return _from_timepoint_files(headers, plane_first, channel, allow_gaps)


def _plane(h: _Header) -> tuple[int, int]:
    i = h.axes.index("Y")
    return h.shape[i], h.shape[i + 1]


def _frames_in(h: _Header) -> int:
    n = 1
    for a, s in zip(h.axes, h.shape):
        if a not in "YX" + _CHANNEL_AXES:
            n *= s
    return n


def _stack_dtype(headers) -> str:
    dtypes = {h.dtype for h in headers}
    if len(dtypes) > 1:
        first = headers[0]
        other = next(h for h in headers if h.dtype != first.dtype)
        raise InputError(f"{other.path}: pixel type {other.dtype} differs from {first.path} ({first.dtype})")
    return str(headers[0].dtype)


def _check_planes(headers):
    first = _plane(headers[0])
    for h in headers[1:]:
        if _plane(h) != first:
            raise InputError(f"{h.path}: frame size {_plane(h)[0]}x{_plane(h)[1]} differs from "
                             f"{headers[0].path.name} ({first[0]}x{first[1]})")


def _from_frame_files(headers, pattern, channel, allow_gaps) -> TiffStack:
    rx = pattern_regex(pattern)
    found: dict[tuple[int, int], int] = {}
    for i, h in enumerate(headers):
        m = name_match(rx, h.path, pattern)
        if m is None:
            raise InputError(f"{h.path}: file name does not match the pattern {pattern!r} "
                             "(set --pattern, e.g. --pattern 'T{t}-Z{z}')")
        if _frames_in(h) != 1:
            raise InputError(f"{h.path}: has {_frames_in(h)} frames, the others one each")
        gd = m.groupdict()
        key = (int(gd.get("t") or 0), int(gd.get("z") or 0))
        if key in found:
            raise InputError(f"{h.path}: same t={key[0]} z={key[1]} as {headers[found[key]].path.name}")
        found[key] = i
    _check_planes(headers)
    dtype = _stack_dtype(headers)
    ts = sorted({k[0] for k in found})
    zs = sorted({k[1] for k in found})
    indices = check_numbering({"t": ts, "z": zs}, where=headers[0].path.parent,
                              allow_gaps=allow_gaps)
    frames = []
    for t in ts:
        row = []
        for z in zs:
            if (t, z) not in found:
                example = pattern.replace("{t}", f"{t:03d}").replace("{z}", f"{z:03d}")
                raise InputError(f"{headers[0].path.parent}: missing frame t={t} z={z} "
                                 f"(expected a file like {example}.tif)")
            i = found[(t, z)]
            t_ax, z_ax, c_ax = _plan_axes(headers[i], channel)
            row.append((i, _index(headers[i], t_ax, z_ax, c_ax, 0, 0, channel)))
        frames.append(tuple(row))
    y, x = _plane(headers[0])
    h0 = headers[0]
    t_ax, z_ax, c_ax = _plan_axes(h0, channel)
    return TiffStack(files=tuple(str(h.path) for h in headers), shape=(len(ts), len(zs), y, x),
                     dtype=dtype, frames=tuple(frames), channel=_sample_channel(h0, c_ax, channel),
                     layout="frames", units=h0.units, scale=_scale_tuple(h0.scale),
                     source_indices=indices)


def _sample_channel(h, c_axis, channel):
    return channel if c_axis is not None and h.axes[c_axis] == "S" else None


def _scale_tuple(scale: dict):
    return tuple(float(scale.get(a, 1.0)) for a in "tzyx")


def _from_one_file(h: _Header, channel) -> TiffStack:
    t_ax, z_ax, c_ax = _plan_axes(h, channel)
    nt = h.shape[t_ax] if t_ax is not None else 1
    nz = h.shape[z_ax] if z_ax is not None else 1
    frames = tuple(tuple((0, _index(h, t_ax, z_ax, c_ax, t, z, channel)) for z in range(nz))
                   for t in range(nt))
    y, x = _plane(h)
    return TiffStack(files=(str(h.path),), shape=(nt, nz, y, x), dtype=str(h.dtype), frames=frames,
                     channel=_sample_channel(h, c_ax, channel), layout="hyperstack",
                     units=h.units, scale=_scale_tuple(h.scale))


def _timepoint_numbers(headers) -> list[int] | None:
    """The time point number in each file name: the last number (``embryo2_t007.tif`` ->
    7), or where that is the same in several files, the one place where the numbers
    differ from file to file (``day10_pos2.tif`` -> 10). None when the names hold no
    numbers.

    Raises
    ------
    InputError
        The names hold numbers, but no one place numbers the files uniquely (so their
        order would be a guess).
    """
    found = [[int(n) for n in re.findall(r"\d+", h.path.stem)] for h in headers]
    if not all(found):
        if any(found):
            missing = headers[[bool(f) for f in found].index(False)].path
            raise InputError(f"{missing}: no number in the file name, others have one; name "
                             "the files by time point (t000.tif, t001.tif, ...)")
        return None  # no numbers at all: the order given is the order
    last = [f[-1] for f in found]
    if len(set(last)) == len(last):
        return last
    if len({len(f) for f in found}) == 1:
        unique = [[f[i] for f in found] for i in range(len(found[0]))]
        unique = [u for u in unique if len(set(u)) == len(u)]
        if len(unique) == 1:
            return unique[0]
    raise InputError(f"{headers[0].path.parent}: cannot tell the time points' order from the "
                     f"file names ({headers[0].path.name}, {headers[1].path.name}, ...: no one "
                     "number differs from file to file); name them by time point (t000.tif, "
                     "t001.tif, ...)")


def _from_timepoint_files(headers, plane, channel, allow_gaps) -> TiffStack:
    _check_planes(headers)
    numbers = _timepoint_numbers(headers)
    indices = None
    if numbers is not None:
        order = np.argsort(numbers, kind="stable")
        headers = [headers[i] for i in order]
        indices = check_numbering({"t": sorted(numbers)}, where=headers[0].path.parent,
                                  allow_gaps=allow_gaps)
    dtype = _stack_dtype(headers)
    nz = _frames_in(headers[0])
    frames = []
    for h in headers:
        t_ax, z_ax, c_ax = _plan_axes(h, channel)
        if t_ax is not None and h.shape[t_ax] > 1:
            raise InputError(f"{h.path}: holds {h.shape[t_ax]} time points; give one hyperstack "
                             "alone, or one file per time point")
        if _frames_in(h) != nz:
            raise InputError(f"{h.path}: has {_frames_in(h)} depth frames, "
                             f"{headers[0].path.name} has {nz}")
        frames.append(tuple((len(frames), _index(h, t_ax, z_ax, c_ax, 0, z, channel))
                            for z in range(nz)))
    h0 = headers[0]
    _, _, c_ax = _plan_axes(h0, channel)
    return TiffStack(files=tuple(str(h.path) for h in headers), shape=(len(headers), nz) + plane,
                     dtype=dtype, frames=tuple(frames), channel=_sample_channel(h0, c_ax, channel),
                     layout="timepoints", units=h0.units, scale=_scale_tuple(h0.scale),
                     source_indices=indices)


# --------------------------------------------------------------------------- sparse frames

@dataclass(frozen=True)
class SparseFrames:
    """Annotation frames for some (t, z) frames of a store of known shape.

    ``stack`` holds the given frames as one time point of ``n`` slices (so reading goes
    through :meth:`TiffStack.read_frames`); ``positions[k]`` is the (t, z) of slice ``k``
    in the target store.
    """

    stack: TiffStack
    positions: tuple[tuple[int, int], ...]

    @functools.cached_property
    def index(self) -> dict[tuple[int, int], int]:
        """(t, z) -> k, the slice of ``stack`` that holds that frame."""
        return {pos: k for k, pos in enumerate(self.positions)}

    def name(self, k: int) -> str:
        fi, _ = self.stack.frames[0][k]
        t, z = self.positions[k]
        return f"{Path(self.stack.files[fi]).name} (t={t}, z={z})"

    def read(self, k: int) -> np.ndarray:
        return self.stack.read_frames(0, k, k + 1)[0]


def _files_of(inputs) -> list[Path]:
    if any(not str(p).strip() for p in inputs):
        raise InputError("INPUT: an empty path (''): give TIFF files or folders")
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputError("INPUT: give at least one TIFF file or folder")
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
    if len(paths) == 1 and paths[0].is_dir():
        return _list_folder(paths[0])
    for p in paths:
        if p.is_dir():
            raise InputError(f"{p}: give either one folder or TIFF files, not both")
    return paths


def discover_sparse(inputs, *, shape, pattern: str = DEFAULT_PATTERN,
                    channel: int | None = None) -> SparseFrames:
    """Find annotation frames for any subset of the (t, z) frames of a store of ``shape``.

    The frames' places come from the files, never from their order: per-frame files
    carry t and z in their names (``pattern``, numbers as in the store, no renumbering);
    a multi-page file per time point carries t in its name and every slice; a hyperstack
    of the store's time points and slices gives them all; a single 2D file whose name
    does not match ``pattern`` is frame (0, 0) of a store of one frame.

    Raises
    ------
    InputError
        A frame outside the store, a frame size that differs from the store's, two files
        for one frame, or a file whose place cannot be told (each naming the file).
    """
    T, Z, Y, X = (int(s) for s in shape)
    files = _files_of(inputs)
    headers = [_header(f) for f in files]
    for h in headers:
        _check_dtype(h)
    rx = pattern_regex(pattern)
    entries: list[tuple[int, tuple[int, ...], int, int]] = []  # file, index, t, z
    if all(_frames_in(h) == 1 for h in headers):
        for axis, size, what in (("t", T, "time points"), ("z", Z, "slices")):
            if axis not in rx.groupindex and size > 1:
                raise InputError(f"{pattern!r} has no {{{axis}}}, and the images have {size} "
                                 f"{what}: a file's {axis} would be unknown (say where "
                                 f"{{{axis}}} is in the names)", param="pattern")
        for i, h in enumerate(headers):
            m = name_match(rx, h.path, pattern)
            t_ax, z_ax, c_ax = _plan_axes(h, channel)
            idx = _index(h, t_ax, z_ax, c_ax, 0, 0, channel)
            if m is None:
                if len(headers) == 1 and (T, Z) == (1, 1):
                    entries.append((i, idx, 0, 0))
                    continue
                raise InputError(f"{h.path}: file name does not match the pattern {pattern!r}, "
                                 "so its place in the images is unknown (name frames like "
                                 "t002_z015.tif, with the images' numbers, or set --pattern)")
            gd = m.groupdict()
            entries.append((i, idx, int(gd.get("t") or 0), int(gd.get("z") or 0)))
    elif len(headers) == 1 and _from_one_file(headers[0], channel).shape[:2] == (T, Z):
        one = _from_one_file(headers[0], channel)
        entries = [(0, one.frames[t][z][1], t, z) for t in range(T) for z in range(Z)]
    else:
        numbers = _timepoint_numbers(headers) if len(headers) > 1 or T > 1 else [0]
        if numbers is None:
            raise InputError(f"{headers[0].path}: cannot tell which time point each file holds; "
                             "name the files by time point (t000.tif, t001.tif, ...)")
        for i, (h, t) in enumerate(zip(headers, numbers)):
            one = _from_one_file(h, channel)
            if one.shape[0] != 1 or one.shape[1] != Z:
                raise InputError(f"{h.path}: holds {one.shape[0]} time point(s) x {one.shape[1]} "
                                 f"slice(s); a file per time point must hold the images' {Z} "
                                 "slices (or give one file per frame, named like t002_z015.tif)")
            entries += [(i, one.frames[0][z][1], t, z) for z in range(Z)]
    seen: dict[tuple[int, int], int] = {}
    for i, _, t, z in entries:
        h = headers[i]
        if not (0 <= t < T and 0 <= z < Z):
            raise InputError(f"{h.path}: frame t={t} z={z} is outside the images ({T} time "
                             f"point(s) x {Z} slice(s), numbered from 0)")
        if (t, z) in seen:
            raise InputError(f"{h.path}: same frame t={t} z={z} as {headers[seen[(t, z)]].path.name}")
        seen[(t, z)] = i
        if _plane(h) != (Y, X):
            raise InputError(f"{h.path}: frame is {_plane(h)[0]}x{_plane(h)[1]}, the images' "
                             f"frames are {Y}x{X}")
    h0 = headers[0]
    _, _, c_ax = _plan_axes(h0, channel)
    # label values are checked frame by frame, so files of different pixel types (a
    # template re-saved as 16-bit by Fiji) read into one type that holds them all
    stack = TiffStack(files=tuple(str(h.path) for h in headers), shape=(1, len(entries), Y, X),
                      dtype=str(np.result_type(*{np.dtype(h.dtype) for h in headers})),
                      frames=(tuple((i, idx) for i, idx, _, _ in entries),),
                      channel=_sample_channel(h0, c_ax, channel), layout="sparse",
                      units=h0.units, scale=_scale_tuple(h0.scale))
    return SparseFrames(stack, tuple((t, z) for _, _, t, z in entries))
