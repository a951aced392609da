"""TIFF stacks to an OME-Zarr image store, streamed block by block and resumable."""

from __future__ import annotations

import functools

import numpy as np
import zarr

from volseg.io import store as st
from volseg.engine.blocks import BlockGrid, BlockLedger, frame_runs, run_blocks
from volseg.errors import InputError
from volseg.io.integrity import nonfinite_counts
from volseg.io.location import locate
from volseg.engine.outputs import open_output
from volseg.engine.pyramid import choose_levels, write_levels
from volseg.io.tiff import DEFAULT_PATTERN, TiffStack, discover


def to_binary(frames: np.ndarray, *, names=None) -> np.ndarray:
    """An annotation stack as uint8 0/1; accepts 0/1 or 0/255 (per frame).

    ``names`` (one per frame) are used in error messages.

    Raises
    ------
    InputError
        If a frame holds other values (the message names the frame and the values).
    """
    if frames.dtype == np.bool_:
        return frames.astype(np.uint8)
    out = np.empty(frames.shape, dtype=np.uint8)
    for k, frame in enumerate(frames):
        nonzero = frame[frame != 0]
        if nonzero.size == 0:
            out[k] = 0
            continue
        values = np.unique(nonzero)
        if values.size == 1 and values[0] in (1, 255):
            out[k] = frame != 0
            continue
        shown = ", ".join(str(v) for v in values[:6].tolist()) + (" ..." if values.size > 6 else "")
        name = names[k] if names is not None else f"frame {k}"
        raise InputError(f"{name}: mask has values {{0, {shown}}}; masks must be 0/1 or "
                         "0/255 (threshold or relabel it first, or drop --mask for an image)")
    return out


def finite_frames(frames: np.ndarray, *, names, nonfinite: float | None) -> np.ndarray:
    """Refuse NaN / infinite pixels, or replace them by ``nonfinite`` when given.

    Raises
    ------
    InputError
        Naming the first frame that holds them and how many pixels.
    """
    per_frame = nonfinite_counts(frames)
    if not per_frame.any():
        return frames
    if nonfinite is None:
        k = int(np.flatnonzero(per_frame)[0])
        raise InputError(f"{names[k]}: {int(per_frame[k])} NaN or infinite pixel(s) "
                         f"({int(per_frame.sum())} in frames {names[0]}..{names[-1]}); fix the "
                         "data, or replace them with --nonfinite VALUE (recorded in the store)")
    frames = frames.copy()
    frames[~np.isfinite(frames)] = nonfinite
    return frames


def _convert_block(i: int, *, stack: TiffStack, out: str, grid: BlockGrid, mask: bool,
                   dtype: str, nonfinite: float | None) -> int:
    t, zs = grid.region(i)[:2]
    frames = stack.read_frames(t.start, zs.start, zs.stop)
    names = [stack.frame_name(t.start, z) for z in range(zs.start, zs.stop)]
    if mask:
        frames = to_binary(frames, names=names)
    else:
        frames = finite_frames(frames, names=names, nonfinite=nonfinite)
        if frames.dtype != np.dtype(dtype):
            frames = frames.astype(dtype)
    image = st.open_image(out, require_complete=False, mode="r+")
    image.array[t.start, zs] = frames
    BlockLedger(image.group, len(grid)).mark_done(i)
    return int(frames.nbytes)


def convert(inputs, out, *, mask: bool = False, pattern: str = DEFAULT_PATTERN,
            channel: int | None = None, chunks=None, allow_gaps: bool = False,
            nonfinite: float | None = None, pyramid: bool | None = None,
            overwrite: bool = False, client=None, progress=None, command: str | None = None,
            log=None) -> dict:
    """Convert TIFF stacks to an OME-NGFF image store ``out`` (full resolution at ``out/0``).

    Over 100 lines, most of them its docstring: the stage's wiring (checks, job, output,
    ledger, blocks, pyramid, commit) in order.

    Parameters
    ----------
    inputs : list of path-like
        A folder of per-frame TIFFs, one multi-page TIFF per time point, or a hyperstack.
    out : path-like
        The store to write. An unfinished store of the same inputs and parameters is
        resumed; anything else that exists is refused unless ``overwrite`` (then the new
        store is built beside it and replaces it only once complete).
    mask : bool
        Annotation stack: values must be 0/1 or 0/255; stored as uint8 0/1.
    pattern, channel, allow_gaps :
        See :func:`volseg.io.tiff.discover`.
    chunks : str or tuple, optional
        Inner chunk shape (see :func:`volseg.io.store.parse_chunks`); default per
        :func:`volseg.io.store.default_chunks`.
    nonfinite : float, optional
        Replace NaN and infinite pixels of float images by this value (recorded in the
        store's provenance). Default: refuse them.
    pyramid : bool, optional
        Write downsampled levels ``1``, ``2``, ... (y and x halved per level until a
        frame fits in 256 px; images by mean, masks by max: :mod:`volseg.engine.pyramid`).
        Default: only for frames larger than 1024 px on a side.
    client : distributed.Client, optional
        Where to run; default a pool of threads, one per core this process may use.
    progress : callable, optional
        ``progress(done, total)`` per block.

    Returns
    -------
    dict
        Summary: shape, dtype, chunks, shards, blocks written and skipped, raw bytes,
        pyramid levels below the full resolution.
    """
    stack = discover(inputs, pattern=pattern, channel=channel, allow_gaps=allow_gaps)
    dtype = "uint8" if mask or stack.dtype == "bool" else stack.dtype
    if nonfinite is not None:
        nonfinite = float(nonfinite)
        if not np.isfinite(nonfinite):
            raise InputError("must be a finite number", param="nonfinite")
        largest = float(np.finfo(dtype).max) if np.dtype(dtype).kind == "f" else np.inf
        if abs(nonfinite) > largest:
            raise InputError(f"{nonfinite:g} does not fit the images' {dtype} (largest "
                             f"{largest:g}); give a smaller value", param="nonfinite")
    if isinstance(chunks, str):
        chunks = st.parse_chunks(chunks, stack.shape)
    dchunks, dshards = st.default_chunks(stack.shape, dtype)
    chunks = tuple(chunks) if chunks is not None else dchunks
    shards = tuple(-(-s // c) * c for s, c in zip(dshards, chunks))
    parameters = {"mask": mask, "pattern": pattern, "channel": channel, "chunks": list(chunks),
                  "shards": list(shards), "dtype": dtype}
    if nonfinite is not None:
        parameters["nonfinite"] = nonfinite
    levels = choose_levels(stack.shape, pyramid)
    if levels:  # absent when 0, so jobs without a pyramid keep their fingerprint
        parameters["pyramid_levels"] = levels
    job = st.make_job("convert", command=command, sources=st.source_record(stack.files),
                      parameters=parameters)
    extra = {"content": "mask" if mask else "image", "source_layout": stack.layout}
    if stack.source_indices is not None:
        extra["source_indices"] = stack.source_indices
    with open_output(out, job=job, overwrite=overwrite, what="conversion",
                     command=command) as dest:
        image = dest.open_or_create(
            lambda path: st.open_image(path, require_complete=False, mode="r+"),
            lambda path: st.create_image(path, shape=stack.shape, dtype=dtype, chunks=chunks,
                                         shards=shards, job=job, name=locate(out).stem,
                                         units=stack.units, scale=stack.scale, extra=extra,
                                         levels=levels, downsampling="max" if mask else "mean"))
        grid = frame_runs(stack.shape, image.block_shape[1])
        ledger = BlockLedger(image.group, len(grid))
        todo = ledger.todo()
        if log:
            verb = "resuming" if dest.state == "resume" else "writing"
            log(f"{verb} {out}: {stack.shape} {dtype} from {len(stack.files)} file(s) "
                f"({stack.layout}); {len(todo)} of {len(grid)} blocks to write"
                + (f", then {levels} pyramid level(s)" if levels else ""))
        task = functools.partial(_convert_block, stack=stack, out=str(dest.write_path),
                                 grid=grid, mask=mask, dtype=dtype, nonfinite=nonfinite)
        # Blocks are the parallelism: zarr's own codec threads on top oversubscribe the
        # cores (docs/decisions.md, "convert").
        with zarr.config.set({"threading.max_workers": 1}):
            run_blocks(task, todo, client=client, progress=progress,
                       done_before=len(grid) - len(todo), total=len(grid), grid=grid)
        # levels after the whole full resolution: each is made from the one above it
        level_ledgers = write_levels(dest.write_path, client=client, progress=progress and (
            lambda d, t: progress(len(grid) + d, len(grid) + t)))
        st.finish(image.group, ledger, *level_ledgers)
        shards = image.shards
        dest.commit()
    return {"path": str(out), "shape": stack.shape, "dtype": dtype, "chunks": chunks,
            "shards": shards, "blocks": len(grid), "written": len(todo),
            "skipped": len(grid) - len(todo), "files": len(stack.files), "layout": stack.layout,
            "raw_bytes": int(np.prod(stack.shape)) * np.dtype(dtype).itemsize,
            "source_indices": stack.source_indices, "levels": levels}

