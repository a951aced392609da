"""Stores back to TIFF for Fiji, ImageJ and Imaris, streamed frame by frame.

Two layouts:

* per-frame 2D files ``OUT/tTTT_zZZZ.tif``, the naming ``volseg convert`` reads by
  default, so ``export`` then ``convert`` gives back the same array;
* one ImageJ hyperstack ``OUT.tif`` (axes TZYX, pixel sizes and units from the store's
  NGFF metadata), written page by page.

Memory stays at a few frames whatever the size of the store: per-frame export runs
runs of frames (one shard row each) on threads of this process (resumable: a
manifest marks the folder unfinished until the last frame is written); the hyperstack is
written from a generator that reads the next group of frames while the current one is
written. Files are written under a hidden ``.part`` name and renamed when complete, so an
interrupted export never leaves a truncated file that looks finished.
"""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile

from volseg.io import store as st
from volseg.engine.blocks import frame_runs, run_blocks
from volseg.errors import InputError
from volseg.io.location import is_url, locate
from volseg.engine.outputs import writer_lock, write_text_atomic
from volseg.io.store import read_node
from volseg.io.tiff import EXPORT_MANIFEST, frame_file_name

#: ImageJ reads these pixel types (uint8, uint16, int16, float32).
IMAGEJ_DTYPES = ("uint8", "uint16", "int16", "float32")
#: Above this many bytes a classic TIFF cannot hold one directory per frame; ImageJ (and
#: tifffile) then write a single directory followed by all pixel data ("truncated").
IMAGEJ_CLASSIC_LIMIT = 2**32 - 2**25
#: File names of per-frame export (and of ``volseg convert``'s default pattern).
FRAME_RE = re.compile(r"^t\d+_z\d+\.tif$")
_PART_RE = re.compile(r"^\.t\d+_z\d+\.tif\.part$")
_PRED_ARRAYS = ("probability", "mask")
#: NGFF time units in seconds (ImageJ's frame interval is in seconds).
_SECONDS = {"second": 1.0, "millisecond": 1e-3, "microsecond": 1e-6, "minute": 60.0,
            "hour": 3600.0, "day": 86400.0}


# --------------------------------------------------------------------------- sources

def open_source(path, *, array: str | None = None, channel: int | None = None,
                series: int | None = None) -> tuple[st.ImageStore, str, list[str]]:
    """Resolve ``STORE[/ARRAY]`` to the image group to export.

    ``path`` may be an image store (``volseg convert`` output), a prediction store, or a
    prediction store with ``/probability`` or ``/mask`` appended (or given as ``array``).
    A prediction store without an array means its mask. ``channel`` and ``series``
    choose what to read from another tool's image store (see :func:`volseg.io.store.open_image`).

    Returns
    -------
    image : ImageStore
        A complete image group.
    name : str
        What is exported, for messages (``PRED.zarr/mask``).
    notes : list of str
        Things the user should know (e.g. that the mask was chosen).

    Raises
    ------
    InputError
        Missing, incomplete or unknown stores and arrays.
    """
    path = locate(path)
    notes: list[str] = []
    if array is None and path.name == "0" and _is_zarr(path.parent):
        path = path.parent  # STORE/0: the full-resolution array itself
    if array is None and path.name in _PRED_ARRAYS and _is_prediction(path.parent):
        path, array = path.parent, path.name
    if _is_prediction(path):
        pred = st.open_prediction(path)
        if array is None:
            array = "mask"
            notes.append(f"{path} is a prediction store: exporting its mask "
                         f"(append /probability for the probabilities)")
        if array not in _PRED_ARRAYS:
            raise InputError(f"{path}/{array}: a prediction store holds 'probability' and "
                             "'mask'; append one of those")
        image = pred.probability if array == "probability" else pred.mask
        if image is None:
            raise InputError(f"{path}/probability: this prediction store has no probabilities "
                             "(it was predicted with the mask only); export /mask")
        if array == "probability":
            scale = pred.probability_scale()
            notes.append(f"probability values are stored as 0..{scale:g} (value / {scale:g} "
                         "is the probability)")
        return image, f"{path}/{array}", notes
    if array not in (None, "0"):
        raise InputError(f"{path}/{array}: {path} is an image store; it has no array "
                         f"{array!r} (give the store itself)")
    return st.open_image(path, channel=channel, series=series), str(path), notes


def _is_zarr(path: Path) -> bool:
    return read_node(path) is not None


def _is_prediction(path: Path) -> bool:
    try:
        return _is_zarr(path) and st.is_prediction(path)
    except InputError:  # unreadable metadata: not a prediction here; open_image reports it
        return False


# --------------------------------------------------------------------------- metadata

def physical_size(image: st.ImageStore) -> tuple[dict, dict]:
    """Pixel sizes and units per axis from the store's NGFF metadata.

    Returns
    -------
    scale, units : dict
        ``{"t": 1.0, "z": 2.0, ...}`` and ``{"x": "micrometer", ...}`` (only axes that
        have a unit).
    """
    return dict(zip(st.AXES, image.scale)), image.units


def imagej_metadata(scale: dict, units: dict) -> tuple[dict, tuple | None]:
    """ImageJ metadata (unit, spacing, finterval) and TIFF resolution from NGFF sizes.

    ImageJ has one spatial unit: x and y must share it (and z too, for ``spacing``).
    Micrometres are written as ImageJ's ``micron``; times become a frame interval in
    seconds.
    """
    meta: dict = {}
    resolution = None
    unit = units.get("x")
    if unit and units.get("y") == unit and scale.get("x", 0) > 0 and scale.get("y", 0) > 0:
        meta["unit"] = "micron" if unit == "micrometer" else unit
        resolution = (1.0 / scale["x"], 1.0 / scale["y"])
        if units.get("z") == unit and scale.get("z", 0) > 0:
            meta["spacing"] = scale["z"]
    tunit = units.get("t")
    if tunit in _SECONDS and scale.get("t", 0) > 0:
        meta["finterval"] = scale["t"] * _SECONDS[tunit]
    return meta, resolution


def _display_range(image: st.ImageStore) -> dict:
    """Display range for ImageJ, so a 0/1 mask is not shown black."""
    info = image.volseg
    if "probability_scale" in info:
        return {"min": 0, "max": info["probability_scale"]}
    if info.get("content") == "mask" or image.path.name == "mask":
        return {"min": 0, "max": 1}
    return {}


# --------------------------------------------------------------------------- outputs

def _is_tiff_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


#: A per-frame export folder's record of what it holds; ``complete`` is written last.
MANIFEST = EXPORT_MANIFEST


def read_manifest(folder) -> dict | None:
    """The export manifest of a folder (None if it has none or it is unreadable)."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _prepare_folder(out: Path, *, source: dict, overwrite: bool) -> bool:
    """Check (and with ``overwrite`` clear) a per-frame output folder; True to resume.

    An unfinished export of the same source is resumed (frames already written are
    kept: each was renamed into place whole). Only volseg's own frame files
    (``tTTT_zZZZ.tif``), its ``.part`` files and the manifest are ever deleted; a folder
    holding anything else is refused.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; per-frame export writes a folder "
                         "of TIFF files (or use --hyperstack for one file)")
    if not out.exists():
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"{out}: parent folder {parent} does not exist")
        return False
    entries = [p for p in out.iterdir()]
    others = [p for p in entries if not (FRAME_RE.match(p.name) or _PART_RE.match(p.name)
                                         or p.name == MANIFEST)]
    if others:
        raise InputError(f"{out}: folder holds other files (e.g. {others[0].name}); give a new "
                         "or empty folder (volseg only ever replaces its own tTTT_zZZZ.tif files)")
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"{out}: folder is not writable")
    manifest = read_manifest(out)
    frames = [p for p in entries if FRAME_RE.match(p.name)]
    if not overwrite:
        if manifest is not None and not manifest.get("complete") and \
                {k: manifest.get(k) for k in source} == source:
            return True
        if frames or manifest is not None:
            state = "a complete export" if (manifest or {}).get("complete") else \
                f"{len(frames)} exported frame(s) of another export"
            raise InputError(f"{out}: already holds {state}; use --overwrite to replace it, or "
                             "choose another folder")
    # Remove every old frame (not only those we will rewrite): a smaller export must not
    # leave stale frames behind for `volseg convert` to pick up.
    for p in entries:
        if p.is_file():
            p.unlink()
    return False


def _prepare_file(out: Path, *, overwrite: bool) -> None:
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"{out}: a hyperstack is one TIFF file; give a name ending in .tif")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{out}: parent folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{out}: folder {parent} is not writable")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give a file name for the hyperstack")
    if out.exists():
        if not overwrite:
            raise InputError(f"{out}: already exists; use --overwrite to replace it, or choose "
                             "another file name")
        if not _is_tiff_file(out):
            raise InputError(f"{out}: exists and is not a TIFF file; volseg does not replace it, "
                             "even with --overwrite")


# --------------------------------------------------------------------------- writing

def _write_frames(i: int, *, array, grid, out: Path, imagej: bool, meta: dict,
                  resolution) -> int:
    """Process function: read one run of frames and write each as a 2D TIFF.

    Each file is written under a ``.part`` name and renamed when whole, so a file with
    its final name is a finished frame: a resumed export skips it.
    """
    region = grid.region(i)
    t, zs = region[0].start, region[1]
    names = [frame_file_name(t, z, timepoints=grid.shape[0], depth=grid.shape[1])
             for z in range(zs.start, zs.stop)]
    if all((out / name).exists() for name in names):
        return 0
    frames = np.asarray(array[t, zs])
    kw = dict(imagej=True, metadata={"axes": "YX", **meta}, resolution=resolution) if imagej \
        else dict(photometric="minisblack", metadata=None)
    for frame, name in zip(frames, names):
        part = out / f".{name}.part"
        tifffile.imwrite(part, frame, **kw)
        os.replace(part, out / name)
    return int(frames.nbytes)


def _frames_in_order(array, grid, progress, total_frames):
    """Yield frames in (t, z) order, reading the next run while this one is written."""
    done = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        read = lambda r: np.asarray(array[r[0].start, r[1]])  # noqa: E731
        future = pool.submit(read, grid.region(0))
        for i in range(len(grid)):
            frames = future.result()
            if i + 1 < len(grid):
                future = pool.submit(read, grid.region(i + 1))
            for frame in frames:
                yield frame
            done += len(frames)
            if progress:
                progress(done, total_frames)


def export_tiff(store, out, *, array: str | None = None, hyperstack: bool = False,
                overwrite: bool = False, progress=None, channel: int | None = None,
                series: int | None = None, command: str | None = None) -> dict:
    """Export an image or prediction store to TIFF, streamed frame by frame.

    One writer at a time: a second export to the same file or folder is refused while
    the first runs (:func:`volseg.engine.outputs.writer_lock`).

    Parameters
    ----------
    store : path-like
        An image store, a prediction store (its mask), or ``PRED.zarr/probability`` /
        ``PRED.zarr/mask``.
    out : path-like
        Per-frame layout: a folder to fill with ``tTTT_zZZZ.tif`` files (made if
        missing). Hyperstack: a ``.tif`` file.
    array : {"probability", "mask"}, optional
        Which array of a prediction store (instead of appending it to ``store``).
    hyperstack : bool
        Write one ImageJ hyperstack (axes TZYX) instead of one file per frame.
    overwrite : bool
        Replace an existing export. Only volseg's own frame files or a TIFF file are
        ever deleted.
    progress : callable, optional
        ``progress(done, total)``: groups of frames (per-frame layout) or frames
        (hyperstack).
    channel, series : int, optional
        The channel and bioformats2raw series of an image store made by another tool.

    Returns
    -------
    dict
        ``path``, ``source``, ``layout``, ``files``, ``shape``, ``dtype``, ``bytes``
        (pixel bytes written), ``truncated`` (hyperstack over 4 GiB) and ``notes``.

    Notes
    -----
    ImageJ hyperstacks hold uint8, uint16, int16 or float32 pixels; other types are
    refused with ``hyperstack`` (per-frame files take any type, as plain TIFF). A
    hyperstack over 4 GiB is written the way ImageJ itself writes one: a classic (not
    Big) TIFF with a single directory followed by all frames, which Fiji, ImageJ and
    tifffile (so ``volseg convert``) read; BigTIFF would not open in ImageJ as a
    hyperstack. Programs that follow the TIFF directories (e.g. Imaris) see only the
    first frame of such a file: export per-frame files for them.
    """
    image, source, notes = open_source(store, array=array, channel=channel, series=series)
    from volseg.io.truth import not_annotated

    if not_annotated(image) is not None:
        notes.append(f"{not_annotated(image)} marks pixels nobody annotated (0 background, "
                     "1 structure): `volseg convert --mask --like IMAGES.zarr` (or --update) "
                     "reads these files back so")
    out = Path(out)
    with writer_lock(out, command=command):  # two exports to one place would mix
        return _export(image, source, notes, out, hyperstack=hyperstack, overwrite=overwrite,
                       progress=progress, channel=channel, series=series)


def _export(image, source, notes, out: Path, *, hyperstack, overwrite, progress, channel,
            series) -> dict:
    """:func:`export_tiff` once the output is locked (over 100 lines with its caller:
    the two layouts' wiring in order)."""
    shape, dtype = tuple(image.shape), np.dtype(image.dtype)
    scale, units = physical_size(image)
    meta, resolution = imagej_metadata(scale, units)
    meta.update(_display_range(image))
    grid = frame_runs(shape, image.block_shape[1])
    nbytes = int(np.prod(shape)) * dtype.itemsize
    zarray = image.array
    truncated = False
    if not hyperstack:
        record = {"source": str(image.path) if is_url(image.path)
                  else os.path.abspath(str(image.path)), "shape": list(shape),
                  "dtype": str(dtype), "made": image.volseg.get("finished")}
        if channel is not None or series is not None:  # absent otherwise: old records match
            record.update(channel=channel, series=series)
        resume = _prepare_folder(out, source=record, overwrite=overwrite)
        out.mkdir(exist_ok=True)
        if not resume:
            write_text_atomic(out / MANIFEST, json.dumps({**record, "complete": False}) + "\n")
        else:
            notes.append(f"resuming the unfinished export in {out}")
        imagej = dtype.name in IMAGEJ_DTYPES
        if not imagej:
            notes.append(f"pixel type {dtype} is not an ImageJ type: frames are plain TIFF "
                         "without pixel sizes")
        task = functools.partial(_write_frames, array=zarray, grid=grid, out=out,
                                 imagej=imagej, meta=meta, resolution=resolution)
        # threads of this process: zarr decoding and TIFF writing release the GIL
        run_blocks(task, range(len(grid)), progress=progress, total=len(grid), grid=grid)
        write_text_atomic(out / MANIFEST, json.dumps({**record, "complete": True}) + "\n")
        files = shape[0] * shape[1]
    else:
        _prepare_file(out, overwrite=overwrite)
        if dtype.name not in IMAGEJ_DTYPES:
            raise InputError(f"{source}: pixel type {dtype} cannot be stored in an ImageJ "
                             f"hyperstack (ImageJ reads {', '.join(IMAGEJ_DTYPES)}); drop "
                             "--hyperstack to export per-frame files")
        truncated = nbytes > IMAGEJ_CLASSIC_LIMIT
        if truncated:
            notes.append(f"{out} is over 4 GiB: written as ImageJ writes such files (one TIFF "
                         "directory, then all frames), which Fiji/ImageJ read; for Imaris and "
                         "other TIFF readers export per-frame files instead")
        part = out.with_name(f".{out.name}.part")
        total_frames = shape[0] * shape[1]
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*truncating ImageJ file")
                with tifffile.TiffWriter(part, imagej=True) as tw:
                    tw.write(_frames_in_order(zarray, grid, progress, total_frames),
                             shape=shape, dtype=dtype, resolution=resolution,
                             metadata={"axes": "TZYX", **meta}, truncate=truncated)
            os.replace(part, out)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        files = 1
    return {"path": str(out), "source": source, "layout": "hyperstack" if hyperstack else "frames",
            "files": files, "shape": shape, "dtype": str(dtype), "bytes": nbytes,
            "truncated": truncated, "scale": scale, "units": units, "notes": notes}
