"""The skeleton of every stage that writes a store: blocks, pyramid levels, complete.

Work is a list of blocks (a :class:`~volseg.engine.blocks.BlockGrid`); a block is done
when the store's ledger says so (:class:`~volseg.engine.blocks.BlockLedger`, marked by
the process function after its write), and a rerun does only the blocks not marked, as
in daisy. A stage opens or creates its output (:mod:`volseg.engine.outputs`), makes a
:class:`StageRun` for it (the ledger, and the blocks left to do, to say what it will
do), builds its process function, and calls :meth:`StageRun.run`: the blocks on the
runner, then every pyramid level (each from the level above, so after the whole full
resolution), then the store marked complete, ``complete`` last. Committing the output
(swapping it into place) stays the stage's, after this.

convert (images and truth), the label copy and predict run on it; ``--update`` of a
truth store does not, because it writes only the blocks its frames touch and keeps the
store's own completion.
"""

from __future__ import annotations

import contextlib

import zarr

from volseg.engine.blocks import BlockGrid, BlockLedger, run_blocks
from volseg.engine.pyramid import level_blocks, write_levels
from volseg.io import store as st

__all__ = ["StageRun"]


class StageRun:
    """One resumable run writing ``store`` (an image or prediction store) over ``grid``.

    Attributes
    ----------
    ledger : BlockLedger
        The store's ledger of full-resolution blocks (created on the first run).
    todo : list of int
        The blocks not yet written (all on the first run; the rest on a rerun).
    """

    def __init__(self, store, grid: BlockGrid):
        self.store, self.grid = store, grid
        self.ledger = BlockLedger(store.group, len(grid))
        self.todo = self.ledger.todo()

    @property
    def done_before(self) -> int:
        """Blocks an earlier run wrote."""
        return len(self.grid) - len(self.todo)

    def run(self, task, *, client=None, progress=None, parts=None, codec_threads: bool = False,
            before_finish=None, finish_items=None, **run_options) -> None:
        """Write the blocks left, then the pyramid levels, then mark the store complete.

        Parameters
        ----------
        task : callable
            The process function of one block index (it marks the ledger itself).
        client : distributed.Client, optional
            Where blocks run (threads in this process without one).
        progress : callable, optional
            ``progress(done, total)`` over the blocks, then over the pyramid levels'.
        parts : list of ImageStore, optional
            The image groups whose levels to write, each marked complete on its own (a
            prediction's probability and mask). Without them, the store's own levels,
            finished together with it.
        codec_threads : bool
            Let zarr's codec threads run beside the blocks. Off by default: blocks are
            the parallelism, and codec threads on top oversubscribe the cores
            (docs/decisions.md, "convert"); predict's blocks wait on the model instead.
        before_finish : callable, optional
            Called after every level and before ``complete`` (predict copies its mask
            into the images' labels there, so an interrupted copy resumes with it).
        finish_items : dict or callable, optional
            Items recorded in the store's ``volseg`` attributes as it is marked complete
            (a callable is asked for them then, for what the blocks reported).
        **run_options
            Passed to :func:`volseg.engine.blocks.run_blocks` (threads, resources,
            on_result).
        """
        grid = self.grid
        quiet_codecs = (contextlib.nullcontext() if codec_threads
                        else zarr.config.set({"threading.max_workers": 1}))
        with quiet_codecs:
            run_blocks(task, self.todo, client=client, progress=progress,
                       done_before=self.done_before, total=len(grid), grid=grid,
                       **run_options)
        own = parts is None
        parts = [self.store] if own else list(parts)
        total = len(grid) + sum(level_blocks(part) for part in parts)
        offset, own_levels = len(grid), []
        for part in parts:
            books = write_levels(part.path, client=client, progress=progress and (
                lambda d, _t, offset=offset: progress(offset + d, total)))
            offset += level_blocks(part)
            if own:
                own_levels = books
            else:
                st.finish(part.group, *books)
        if before_finish is not None:
            before_finish()
        items = finish_items() if callable(finish_items) else (finish_items or {})
        st.finish(self.store.group, self.ledger, *own_levels, **items)
