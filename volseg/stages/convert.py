"""TIFF stacks to an OME-Zarr image store, streamed block by block and resumable."""

from __future__ import annotations

import functools

import numpy as np

from volseg.io import store as st
from volseg.engine.blocks import BlockGrid, BlockLedger, frame_runs
from volseg.errors import InputError
from volseg.io.integrity import nonfinite_counts
from volseg.io.location import locate
from volseg.engine.outputs import open_output
from volseg.engine.pyramid import choose_levels
from volseg.engine.stage import StageRun
from volseg.io.tiff import DEFAULT_PATTERN, TiffStack, discover
from volseg.io.truth import truth_label
from volseg.ops.annotation import from_scribbles, labels_from_mask


def to_binary(frames: np.ndarray, *, names=None) -> np.ndarray:
    """An annotation stack as uint8 0/1; accepts 0/1 or 0/255 (per frame).

    ``names`` (one per frame) are used in error messages.

    Raises
    ------
    InputError
        If a frame holds other values (the message names the frame and the values).
    """
    return _per_frame(labels_from_mask, frames, names)


def scribble_frames(frames: np.ndarray, *, names=None) -> np.ndarray:
    """A stack of scribble frames (0 not annotated, 1 structure, 2 background) as stored
    truth (255 / 1 / 0, uint8)."""
    return _per_frame(from_scribbles, frames, names)


def _per_frame(rule, frames, names) -> np.ndarray:
    out = np.empty(frames.shape, dtype=np.uint8)
    for k, frame in enumerate(frames):
        out[k] = rule(frame, name=names[k] if names is not None else f"frame {k}")
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


def _convert_block(i: int, *, stack: TiffStack, array, ledger: BlockLedger, grid: BlockGrid,
                   mask: bool, dtype: str, nonfinite: float | None,
                   scribbles: bool = False) -> int:
    t, zs = grid.region(i)[:2]
    frames = stack.read_frames(t.start, zs.start, zs.stop)
    names = [stack.frame_name(t.start, z) for z in range(zs.start, zs.stop)]
    if scribbles:
        frames = scribble_frames(frames, names=names)
    elif mask:
        frames = to_binary(frames, names=names)
    else:
        frames = finite_frames(frames, names=names, nonfinite=nonfinite)
        if frames.dtype != np.dtype(dtype):
            frames = frames.astype(dtype)
    # the store opened once by convert, not per block: opening took a third of a block's
    # time (8.4 of 31.7 ms for 8 frames of 523x821, benchmarks/bench_convert.py)
    array[t.start, zs] = frames
    ledger.mark_done(i)
    return int(frames.nbytes)


def convert(inputs, out, *, mask: bool = False, pattern: str = DEFAULT_PATTERN,
            channel: int | None = None, chunks=None, allow_gaps: bool = False,
            nonfinite: float | None = None, pyramid: bool | None = None,
            like=None, scribbles: bool = False, update: bool = False,
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
    like : path-like, optional
        The image store the annotations belong to: the files hold some of its (t, z)
        frames, placed by the numbers in their names (:func:`volseg.io.tiff.discover_sparse`),
        and the truth store takes its shape, chunks and scale, every frame not given
        not annotated (:mod:`volseg.stages.truth`).
    scribbles : bool
        The files are scribbles (0 not annotated, 1 structure, 2 background), stored as
        255 / 1 / 0; implies ``mask``.
    update : bool
        Add the frames to the existing truth store ``out`` in place (the other frames
        stay byte-identical); resumable, one writer.
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
    mask = mask or scribbles
    if like is not None or update:
        return _annotations(inputs, out, mask=mask, like=like, scribbles=scribbles,
                            update=update, pattern=pattern, channel=channel, chunks=chunks,
                            allow_gaps=allow_gaps, nonfinite=nonfinite, pyramid=pyramid,
                            overwrite=overwrite, client=client, progress=progress,
                            command=command, log=log)
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
    if scribbles:  # absent otherwise, so other jobs keep their fingerprint
        parameters["scribbles"] = True
    if nonfinite is not None:
        parameters["nonfinite"] = nonfinite
    levels = choose_levels(stack.shape, pyramid)
    if levels:  # absent when 0, so jobs without a pyramid keep their fingerprint
        parameters["pyramid_levels"] = levels
    job = st.make_job("convert", command=command, sources=st.source_record(stack.files),
                      parameters=parameters)
    extra = {"content": "mask" if mask else "image", "source_layout": stack.layout}
    if scribbles:
        extra["annotation"] = "scribbles"
    if stack.source_indices is not None:
        extra["source_indices"] = stack.source_indices
    with open_output(out, job=job, overwrite=overwrite, what="conversion",
                     command=command) as dest:
        image = dest.open_or_create(
            lambda path: st.open_image(path, require_complete=False, mode="r+"),
            lambda path: st.create_image(path, shape=stack.shape, dtype=dtype, chunks=chunks,
                                         shards=shards, job=job, name=locate(out).stem,
                                         units=stack.units, scale=stack.scale, extra=extra,
                                         ome=truth_label() if scribbles else None,
                                         levels=levels, downsampling="max" if mask else "mean"))
        grid = frame_runs(stack.shape, image.block_shape[1])
        stage = StageRun(image, grid)
        todo = stage.todo
        if log:
            verb = "resuming" if dest.state == "resume" else "writing"
            log(f"{verb} {out}: {stack.shape} {dtype} from {len(stack.files)} file(s) "
                f"({stack.layout}); {len(todo)} of {len(grid)} blocks to write"
                + (f", then {levels} pyramid level(s)" if levels else ""))
        task = functools.partial(_convert_block, stack=stack, array=image.array,
                                 ledger=stage.ledger, grid=grid, mask=mask, dtype=dtype,
                                 nonfinite=nonfinite, scribbles=scribbles)
        stage.run(task, client=client, progress=progress)
        shards = image.shards
        dest.commit()
    return {"path": str(out), "shape": stack.shape, "dtype": dtype, "chunks": chunks,
            "shards": shards, "blocks": len(grid), "written": len(todo),
            "skipped": len(grid) - len(todo), "files": len(stack.files), "layout": stack.layout,
            "raw_bytes": int(np.prod(stack.shape)) * np.dtype(dtype).itemsize,
            "source_indices": stack.source_indices, "levels": levels}



def _annotations(inputs, out, *, mask, like, scribbles, update, pattern, channel, chunks,
                 allow_gaps, nonfinite, pyramid, overwrite, client, progress, command, log):
    """``like`` and ``update``: annotation frames placed by their own numbers
    (:mod:`volseg.stages.truth`); the options that do not apply are refused."""
    from volseg.stages.truth import convert_sparse, update_truth

    what = "--update" if update else "--like"
    if not mask:
        raise InputError(f"{what} places annotation frames: add --mask (0/1 or 0/255 "
                         "frames) or --scribbles (0/1/2 labels)", param="like" if like else "update")
    for given, name, why in ((allow_gaps, "allow_gaps", "frames keep the numbers in their names"),
                             (chunks is not None, "chunks", "the truth takes the images' chunks"),
                             (nonfinite is not None, "nonfinite", "masks hold no NaN")):
        if given:
            raise InputError(f"does not apply with {what}: {why}", param=name)
    if update:
        if overwrite:
            raise InputError("--update changes the store in place; --overwrite replaces it: "
                             "give one", param="overwrite")
        if pyramid is not None:
            raise InputError("does not apply with --update: the store keeps its pyramid "
                             "levels (and they are recomputed)", param="pyramid")
        return update_truth(inputs, out, like=like, scribbles=scribbles, pattern=pattern,
                            channel=channel, client=client, progress=progress,
                            command=command, log=log)
    return convert_sparse(inputs, out, like=like, scribbles=scribbles, pattern=pattern,
                          channel=channel, pyramid=pyramid, overwrite=overwrite, client=client,
                          progress=progress, command=command, log=log)
