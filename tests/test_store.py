"""The block ledger: which blocks of an output are written, asked of the store's listing."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from volseg.engine.blocks import BlockLedger
from volseg.io import store as st
from volseg.errors import InputError


def _ledger(tmp_path, n):
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="a", zarr_format=3)
    return group, BlockLedger(group, n)


def test_ledger_marks_are_exactly_the_blocks_marked(tmp_path):
    group, ledger = _ledger(tmp_path, 1000)
    assert not ledger.done().any()
    marked = [0, 7, 12, 999, 500]
    for i in marked:
        ledger.mark_done(i)
    again = BlockLedger(group, 1000)  # a rerun opens the ledger afresh
    assert np.flatnonzero(again.done()).tolist() == sorted(marked)
    assert len(again.todo()) == 1000 - len(marked)
    assert 7 not in again.todo() and 8 in again.todo()


def test_a_torn_mark_still_says_done_and_stray_files_are_not_marks(tmp_path):
    # A mark is written only after its block's data, so a mark torn by a kill (an empty
    # file) still means the data is there; a file that is no chunk key is not a mark.
    group, ledger = _ledger(tmp_path, 20)
    ledger.mark_done(3)
    chunks = tmp_path / "out.zarr" / st.LEDGER / "c"
    (chunks / "5").write_bytes(b"")
    (chunks / "notes.txt").write_text("left by a person")
    (chunks / "25").write_bytes(b"\x01")  # beyond the ledger: ignored
    assert np.flatnonzero(ledger.done()).tolist() == [3, 5]


def test_ledger_of_another_size_is_refused(tmp_path):
    group, _ = _ledger(tmp_path, 10)
    with pytest.raises(InputError, match="does not match"):
        BlockLedger(group, 11)
