"""Truth stores from partial annotations: sparse frames, scribbles, and updates.

* :func:`convert_sparse` writes a truth store shaped like an image store (``--like``):
  the frames given land at their own (t, z); every other voxel is "not annotated"
  (:data:`volseg.ops.annotation.NOT_ANNOTATED`, recorded in the store's NGFF
  ``image-label`` metadata by :func:`volseg.io.truth.truth_label`).
* :func:`update_truth` adds frames to an existing truth store in place (``--update``):
  a full mask frame replaces the frame, a scribble frame overwrites only the pixels it
  annotates. One writer at a time; while it runs the store reads as incomplete, and an
  interrupted update resumes when rerun (each block is marked in a ledger when written).
"""

from __future__ import annotations

import functools

import numpy as np
import zarr

from volseg.engine.blocks import BlockLedger, frame_runs, run_blocks
from volseg.engine.outputs import check_not_an_input, open_output, writer_lock
from volseg.engine.pyramid import choose_levels, write_levels
from volseg.engine.stage import StageRun
from volseg.errors import InputError
from volseg.io import store as st
from volseg.io.location import locate, text as location_text
from volseg.io.tiff import DEFAULT_PATTERN, SparseFrames, discover_sparse
from volseg.io.truth import not_annotated, other_images, truth_label
from volseg.ops.annotation import NOT_ANNOTATED, from_scribbles, labels_from_annotation

__all__ = ["convert_sparse", "open_like", "update_truth"]

#: The ledger of an update's blocks (beside the store's own, which finish() deleted).
UPDATE_LEDGER = "update_blocks"


def open_like(path) -> st.ImageStore:
    """The image store whose frames an annotation store follows (``--like``); a
    prediction or a truth store is refused in one line."""
    found = st.open_any(path)
    if isinstance(found, st.Prediction):
        raise InputError(f"{path} is a prediction store; give the image store the "
                         "annotations belong to", param="like")
    if found.volseg.get("content") == "mask":
        raise InputError(f"{path} is a truth (mask) store; give the image store the "
                         "annotations belong to", param="like")
    return found


def _frame_values(frames: SparseFrames, k: int, scribbles: bool) -> np.ndarray:
    raw = frames.read(k)
    name = frames.name(k)
    return (from_scribbles(raw, name=name) if scribbles
            else labels_from_annotation(raw, name=name))


def _sparse_block(i: int, *, frames: SparseFrames, out: str, grid, scribbles: bool,
                  ledger_name: str, update: bool) -> int:
    """Process function: block ``i`` (whole frames of one time point) with the given
    frames in place; other frames not annotated (new store) or kept (update)."""
    t, zs = grid.region(i)[:2]
    image = st.open_image(out, require_complete=False, mode="r+")
    shape = (zs.stop - zs.start,) + tuple(image.shape[2:])
    block = (np.asarray(image.array[t.start, zs]) if update
             else np.full(shape, NOT_ANNOTATED, np.uint8))
    for j, z in enumerate(range(zs.start, zs.stop)):
        k = frames.index.get((t.start, z))
        if k is None:
            continue
        values = _frame_values(frames, k, scribbles)
        if update:  # annotated pixels replace theirs; a not-annotated one keeps the store's
            block[j] = np.where(values == NOT_ANNOTATED, block[j], values)
        else:
            block[j] = values
    image.array[t.start, zs] = block
    BlockLedger(image.group, len(grid), ledger_name).mark_done(i)
    return int(block.nbytes)


def convert_sparse(inputs, out, *, like, scribbles: bool = False,
                   pattern: str = DEFAULT_PATTERN, channel: int | None = None,
                   pyramid: bool | None = None, overwrite: bool = False, client=None,
                   progress=None, command: str | None = None, log=None) -> dict:
    """A truth store of ``like``'s shape, chunks and scale from label frames of some
    of its (t, z) frames (:func:`volseg.io.tiff.discover_sparse`); every frame not given
    is not annotated. See :func:`volseg.stages.convert.convert` for the other options."""
    images = open_like(like)
    shape = tuple(int(s) for s in images.shape)
    frames = discover_sparse(inputs, shape=shape, pattern=pattern, channel=channel)
    chunks, shards = tuple(images.chunks), tuple(images.shards or images.chunks)
    job_like = images.volseg.get("job") or {}
    parameters = {"mask": True, "scribbles": bool(scribbles), "pattern": pattern,
                  "channel": channel, "chunks": list(chunks), "shards": list(shards),
                  "dtype": "uint8",
                  "like": {"path": location_text(like), "shape": list(shape),
                           "fingerprint": job_like.get("fingerprint")}}
    levels = choose_levels(shape, pyramid)
    if levels:
        parameters["pyramid_levels"] = levels
    job = st.make_job("convert", command=command, sources=st.source_record(frames.stack.files),
                      parameters=parameters)
    extra = {"content": "mask", "source_layout": "sparse",
             "annotation": "scribbles" if scribbles else "frames"}
    with open_output(out, job=job, overwrite=overwrite, what="conversion",
                     command=command) as dest:
        image = dest.open_or_create(
            lambda path: st.open_image(path, require_complete=False, mode="r+"),
            lambda path: st.create_image(path, shape=shape, dtype="uint8", chunks=chunks,
                                         shards=shards, job=job, name=locate(out).stem,
                                         units=images.units, scale=images.scale, extra=extra,
                                         ome=truth_label(), levels=levels,
                                         downsampling="max"))
        grid = frame_runs(shape, image.block_shape[1])
        stage = StageRun(image, grid)
        todo = stage.todo
        if log:
            verb = "resuming" if dest.state == "resume" else "writing"
            log(f"{verb} {out}: {len(frames.positions)} annotated frame(s) of {shape[0]} x "
                f"{shape[1]} (from {len(frames.stack.files)} file(s)); every other frame "
                f"not annotated; {len(todo)} of {len(grid)} blocks to write")
        task = functools.partial(_sparse_block, frames=frames, out=str(dest.write_path),
                                 grid=grid, scribbles=scribbles, ledger_name=stage.ledger.name,
                                 update=False)
        stage.run(task, client=client, progress=progress)
        dest.commit()
    return {"path": str(out), "shape": shape, "dtype": "uint8", "chunks": chunks,
            "shards": shards, "blocks": len(grid), "written": len(todo),
            "skipped": len(grid) - len(todo), "files": len(frames.stack.files),
            "layout": "sparse", "frames": len(frames.positions), "levels": levels,
            "raw_bytes": int(np.prod(shape))}


def _open_truth_for_update(path) -> st.ImageStore:
    from volseg.io.location import is_url

    if is_url(path):
        raise InputError(f"{path}: --update works on a local truth store", param="output")
    if not locate(path).exists():
        raise InputError(f"{path} does not exist; make it first with `volseg convert "
                         "--mask --like IMAGES.zarr` (then add frames with --update)",
                         param="output")
    store = st.open_image(path, require_complete=False, mode="r+", what="truth store")
    if store.volseg.get("content") != "mask":
        raise InputError(f"{path} is not a truth store made by `volseg convert --mask`; "
                         "--update adds annotation frames to one", param="output")
    return store


def update_truth(inputs, out, *, like=None, scribbles: bool = False,
                 pattern: str = DEFAULT_PATTERN, channel: int | None = None, client=None,
                 progress=None, command: str | None = None, log=None) -> dict:
    """Add annotation frames to the truth store ``out`` in place, leaving every other
    frame byte-identical. A frame's annotated pixels replace theirs: all of a 0/1 mask
    frame; of a scribble frame (with ``scribbles``) or a frame in the store's own values
    (255 not annotated, as ``volseg export`` writes them) only the pixels it annotates.
    Every frame is read and checked before the store is touched, so a bad file leaves
    it as it was; resumable (rerun the same command); one writer at a time."""
    store = _open_truth_for_update(out)
    shape = tuple(int(s) for s in store.shape)
    if like is not None:
        images = open_like(like)
        if tuple(images.shape) != shape:
            raise InputError(f"{like} has shape {tuple(images.shape)}, the truth store {out} "
                             f"{shape}; give the images the truth belongs to", param="like")
        made_for = other_images(store, images)
        if made_for:
            raise InputError(f"{like} is not the image store {out} was made for "
                             f"({made_for}; another conversion); give that one, "
                             "or leave --like out (an update needs only the truth store)",
                             param="like")
    frames = discover_sparse(inputs, shape=shape, pattern=pattern, channel=channel)
    job = st.make_job("update", command=command, sources=st.source_record(frames.stack.files),
                      parameters={"scribbles": bool(scribbles), "pattern": pattern,
                                  "channel": channel})
    check_not_an_input(locate(out), job, what="truth store")
    # every frame's values before the store is marked incomplete: a refused file must not
    # leave a pending update that only that file could finish
    empty = sum(not np.any(_frame_values(frames, k, scribbles) != NOT_ANNOTATED)
                for k in range(len(frames.positions)))
    if log and empty:
        log(f"{empty} of {len(frames.positions)} frame(s) annotate nothing (every pixel not "
            "annotated): the store keeps what it has there")
    with writer_lock(locate(out), command=command):
        attrs = store.volseg
        # a complete store's update record is from a run that stopped after finishing
        pending = None if attrs.get("complete") else attrs.get("update")
        if pending and pending.get("fingerprint") != job["fingerprint"]:
            raise InputError(f"{out}: an earlier update was interrupted ({pending.get('command') or 'another run'}); "
                             "rerun that command to finish it first", param="output")
        if not attrs.get("complete") and not pending:
            raise InputError(f"{out}: incomplete (an interrupted conversion?); rerun the command "
                             "that made it first", param="output")
        if not pending:
            store.group.attrs["volseg"] = {**attrs, "complete": False, "update": job}
        grid = frame_runs(shape, store.block_shape[1])
        per_t = grid.counts[1]
        touched = sorted({t * per_t + z // grid.block[1] for t, z in frames.positions})
        ledger = BlockLedger(store.group, len(grid), UPDATE_LEDGER)
        done = ledger.done()
        todo = [i for i in touched if not done[i]]
        if log:
            log(f"updating {out}: {len(frames.positions)} frame(s) from "
                f"{len(frames.stack.files)} file(s), {len(todo)} of {len(touched)} blocks to "
                "write; the other frames stay as they are")
        task = functools.partial(_sparse_block, frames=frames, out=str(locate(out)), grid=grid,
                                 scribbles=scribbles, ledger_name=UPDATE_LEDGER, update=True)
        with zarr.config.set({"threading.max_workers": 1}):
            run_blocks(task, todo, client=client, progress=progress, grid=grid,
                       done_before=len(touched) - len(todo), total=len(touched))
        level_ledgers = write_levels(locate(out), client=client)
        history = list(attrs.get("updates") or []) + [
            {"frames": len(frames.positions), "files": len(frames.stack.files),
             "scribbles": bool(scribbles), "command": command,
             "fingerprint": job["fingerprint"]}]
        if not_annotated(store) is None:  # volseg's masks hold only 0/1: safe to record
            store.group.attrs["ome"] = {**(store.group.attrs.get("ome") or {}), **truth_label()}
        ledger.delete(store.group)
        st.finish(store.group, *level_ledgers, updates=history)
        store.group.attrs["volseg"] = {k: v for k, v in store.volseg.items() if k != "update"}
    return {"path": str(out), "shape": shape, "frames": len(frames.positions),
            "files": len(frames.stack.files), "blocks": len(touched), "written": len(todo),
            "skipped": len(touched) - len(todo), "layout": "sparse"}
