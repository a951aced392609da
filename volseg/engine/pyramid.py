"""Multiscale pyramids: downsampled levels ``1``, ``2``, ... beside the full resolution.

A viewer zoomed out over a large frame reads a small level instead of every pixel of
level ``0``. Level ``n + 1`` halves level ``n`` in y and x (t and z are kept): images
and probabilities by the mean of 2 x 2 pixels, masks by their maximum, so a tube one
pixel wide survives at every level. At an odd edge the last row or column is
replicated, so an edge value is the mean (or max) of the pixels that exist. Integer
means round half up (``(sum + 2) // 4``); float means are computed in float64 and
cast back.

Levels are written after the full resolution, one level at a time, on the block engine:
a block is one shard of level ``n + 1`` and reads its 2x box from level ``n`` (any
number of level-``n`` shards, read only), so no two blocks write the same chunk whatever
the shard sizes of the two levels. Each level has its own ledger (``volseg_done_N``),
so an interrupted run resumes the level it was in; the store's ``complete`` is written
after the last level.
"""

from __future__ import annotations

import functools

import numpy as np
import zarr

from volseg.io import store as st
from volseg.engine.blocks import BlockGrid, BlockLedger, run_blocks
from volseg.errors import InputError

#: Pyramids are on by default for frames larger than this on a side
#: (docs/decisions.md, "pyramids").
AUTO_SIDE = 1024
#: Levels stop once a frame fits in this many pixels on a side.
SMALLEST_SIDE = 256
METHODS = ("mean", "max")


def level_count(shape, *, smallest: int = SMALLEST_SIDE) -> int:
    """Levels below the full resolution until a frame fits in ``smallest`` px on a side."""
    y, x = int(shape[2]), int(shape[3])
    n = 0
    while max(y, x) > smallest:
        y, x = -(-y // 2), -(-x // 2)
        n += 1
    return n


def choose_levels(shape, pyramid: bool | None) -> int:
    """The levels to write: none when ``pyramid`` is False, the full count when True,
    and when None (the default) the full count only for frames larger than
    :data:`AUTO_SIDE` on a side.

    Raises
    ------
    InputError
        ``pyramid`` is not True, False or None.
    """
    if pyramid not in (None, True, False):
        raise InputError(f"must be true, false or left out (auto), got {pyramid!r}",
                         param="pyramid")
    if pyramid is None:
        pyramid = max(int(shape[2]), int(shape[3])) > AUTO_SIDE
    return level_count(shape) if pyramid else 0


def downsample(frames: np.ndarray, how: str) -> np.ndarray:
    """Halve the last two axes: the mean or max of each 2 x 2 window, in ``frames``' dtype.

    Odd sizes replicate the last row / column, so an edge window's mean (or max) is that
    of the pixels present. Integer means round half up; float means are float64 then cast.
    """
    if how not in METHODS:
        raise ValueError(f"downsampling must be one of {METHODS}, got {how!r}")
    pad = [(0, 0)] * (frames.ndim - 2) + [(0, frames.shape[-2] % 2), (0, frames.shape[-1] % 2)]
    if any(p[1] for p in pad):
        frames = np.pad(frames, pad, mode="edge")
    quads = (frames[..., 0::2, 0::2], frames[..., 0::2, 1::2],
             frames[..., 1::2, 0::2], frames[..., 1::2, 1::2])
    if how == "max":
        return functools.reduce(np.maximum, quads)
    dtype = frames.dtype
    if dtype.kind in "iu" and dtype.itemsize <= 4:
        # exact in int64, then round half up
        total = functools.reduce(np.add, (q.astype(np.int64) for q in quads))
        return ((total + 2) // 4).astype(dtype)
    mean = functools.reduce(np.add, (q.astype(np.float64) for q in quads)) / 4
    if dtype.kind in "iu":  # 64-bit integers: float64 is as close as numpy gets cheaply
        mean = np.floor(mean + 0.5)
    return mean.astype(dtype)


def method_of(image: st.ImageStore) -> str:
    """How ``image``'s levels are made: the ``type`` its ``multiscales`` records."""
    ms = st.ome_attributes(image.group.attrs)["multiscales"][0]
    how = ms.get("type", "mean")
    return how if how in METHODS else "mean"


def _level_ledger_name(level: int) -> str:
    return f"{st.LEDGER}_{level}"


def level_grid(image: st.ImageStore, level: int) -> BlockGrid:
    """Blocks of pyramid ``level``: its shards."""
    array = image.dataset(str(level))
    return BlockGrid(array.shape, array.block_shape)


def level_blocks(image: st.ImageStore) -> int:
    """Blocks over all pyramid levels of ``image`` (0 without a pyramid)."""
    return sum(len(level_grid(image, k)) for k in range(1, len(image.level_paths)))


def ledgers(image: st.ImageStore) -> list[BlockLedger]:
    """The ledger of every pyramid level of ``image`` (created where missing)."""
    return [BlockLedger(image.group, len(level_grid(image, k)), _level_ledger_name(k))
            for k in range(1, len(image.level_paths))]


def _level_block(i: int, *, path: str, level: int, grid: BlockGrid, how: str) -> int:
    """Process function: block ``i`` of ``level`` from level ``level - 1``, then marked done.

    Works one frame and one chunk row at a time, so memory stays near one shard of the
    level whatever the frame size.
    """
    image = st.open_image(path, require_complete=False, mode="r+")
    source = image.dataset(str(level - 1))
    target = image.dataset(str(level))
    t, zs, ys, xs = grid.region(i)
    out = np.empty((1, zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start),
                   dtype=target.dtype)
    step = target.chunks[2]
    sx = slice(2 * xs.start, min(2 * xs.stop, source.shape[3]))
    for k, z in enumerate(range(zs.start, zs.stop)):
        for y0 in range(ys.start, ys.stop, step):
            y1 = min(y0 + step, ys.stop)
            frames = np.asarray(source[t, z, 2 * y0: min(2 * y1, source.shape[2]), sx])
            out[0, k, y0 - ys.start: y1 - ys.start] = downsample(frames, how)
    target[grid.region(i)] = out
    BlockLedger(image.group, len(grid), _level_ledger_name(level)).mark_done(i)
    return int(out.nbytes)


def write_levels(path, *, client=None, progress=None) -> list[BlockLedger]:
    """Write every pyramid level of the image group at ``path`` whose ledger is not done.

    Level 0 must be written. Levels are written in order (each from the one above it);
    ``progress(done, total)`` counts blocks over all levels. Returns the levels'
    ledgers, for :func:`volseg.io.store.finish` to check and delete.
    """
    image = st.open_image(path, require_complete=False, mode="r+")
    how = method_of(image)
    books = ledgers(image)
    grids = [level_grid(image, k) for k in range(1, len(books) + 1)]
    total = sum(len(g) for g in grids)
    offset = 0
    for level, (ledger, grid) in enumerate(zip(books, grids), start=1):
        todo = ledger.todo()
        task = functools.partial(_level_block, path=str(path), level=level, grid=grid, how=how)
        step = None
        if progress:
            step = functools.partial(_shifted, progress, offset, total)
        # blocks are the parallelism, as in convert: no codec threads on top
        with zarr.config.set({"threading.max_workers": 1}):
            run_blocks(task, todo, client=client, total=len(grid),
                       done_before=len(grid) - len(todo), grid=grid, progress=step)
        offset += len(grid)
    return books


def _shifted(progress, offset: int, total: int, done: int, _level_total: int) -> None:
    progress(offset + done, total)
