"""volseg's codec pipeline: zarrs where it writes what zarr-python writes, zarr-python
where it would not, and stores that read the same whichever pipeline wrote them."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import zarr

from volseg.io import codecs
from volseg.io.integrity import CheckedArray
from volseg.io.store import default_codecs

pytestmark = pytest.mark.skipif(codecs.FastCodecPipeline is None, reason="zarrs not installed")

SHAPE, CHUNKS, SHARDS = (2, 4, 24, 40), (1, 1, 24, 40), (1, 4, 24, 40)


def _array(path, pipeline=codecs.FAST_PIPELINE, shards=SHARDS):
    with zarr.config.set({"codec_pipeline.path": pipeline}):
        return zarr.create_array(path, shape=SHAPE, chunks=CHUNKS, shards=shards, dtype="uint8",
                                 compressors=default_codecs(), fill_value=0,
                                 config={"write_empty_chunks": True})


def _index(path, key="c/0/0/0/0"):
    raw = (path / key).read_bytes()
    return np.frombuffer(raw[-(16 * 4 + 4):-4], dtype="<u8").reshape(4, 2)


@pytest.fixture
def paths(monkeypatch):
    """The shards (outer chunks) each write handed to zarrs."""
    seen = []
    fast = codecs.ZarrsCodecPipeline.write

    async def rust_write(self, batch_info, *args, **kwargs):
        seen.extend(len(batch_info) * ["zarrs"])
        return await fast(self, batch_info, *args, **kwargs)

    monkeypatch.setattr(codecs.ZarrsCodecPipeline, "write", rust_write)
    return seen


def test_volseg_makes_it_zarrs_default():
    assert zarr.config.get("codec_pipeline.path") == codecs.FAST_PIPELINE


def test_an_image_shard_goes_to_zarrs_and_reads_back_identically(tmp_path, paths):
    data = np.random.default_rng(0).integers(1, 255, SHAPE, dtype=np.uint8)
    array = _array(tmp_path / "a")
    array[:] = data
    assert paths == ["zarrs", "zarrs"]  # both shards
    assert isinstance(array._async_array.codec_pipeline, codecs.FastCodecPipeline)
    with zarr.config.set({"codec_pipeline.path": codecs.ZARR_PIPELINE}):
        python_read = zarr.open_array(tmp_path / "a", mode="r")
        assert not isinstance(python_read._async_array.codec_pipeline, codecs.FastCodecPipeline)
        np.testing.assert_array_equal(python_read[:], data)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a", mode="r")[:], data)


def test_a_shard_with_an_empty_frame_is_written_whole_by_zarr_python(tmp_path, paths):
    """zarrs drops fill-valued chunks even with write_empty_chunks: such a write must
    not reach it, or the store would lose the chunks volseg promises are there."""
    data = np.zeros(SHAPE, dtype=np.uint8)
    data[0, 1] = 1  # shard 0: frames 0, 2, 3 all zero; shard 1: all zero
    data[1] = 1
    data[1, 3, 5, 5] = 0  # shard 1: no frame all zero
    array = _array(tmp_path / "a")
    array[:] = data
    assert paths == ["zarrs"]  # shard 1 only
    assert (_index(tmp_path / "a")[:, 0] != 2**64 - 1).all()  # every inner chunk present
    array[1] = 0  # a whole shard of zeros
    assert paths == ["zarrs"]
    assert (_index(tmp_path / "a", "c/1/0/0/0")[:, 0] != 2**64 - 1).all()
    data[1] = 0
    checked = CheckedArray(zarr.open_array(tmp_path / "a", mode="r"), "a", require_chunks=True)
    assert not checked.damage()
    np.testing.assert_array_equal(checked[:], data)


def test_zarrs_and_zarr_python_write_the_same_chunks(tmp_path):
    """Same format either way: each inner chunk decodes to the same values, the shard
    index is complete and checksummed, whichever pipeline wrote it."""
    data = np.random.default_rng(1).integers(1, 255, SHAPE, dtype=np.uint8)
    for name, pipeline in (("fast", codecs.FAST_PIPELINE), ("zarr", codecs.ZARR_PIPELINE)):
        _array(tmp_path / name, pipeline)[:] = data
    for name in ("fast", "zarr"):
        index = _index(tmp_path / name)
        assert (index[:, 0] != 2**64 - 1).all()
        for pipeline in (codecs.FAST_PIPELINE, codecs.ZARR_PIPELINE):
            with zarr.config.set({"codec_pipeline.path": pipeline}):
                np.testing.assert_array_equal(zarr.open_array(tmp_path / name, mode="r")[:], data)


def test_a_partial_write_goes_to_zarr_python(tmp_path, paths):
    array = _array(tmp_path / "a")
    array[:] = np.full(SHAPE, 7, dtype=np.uint8)
    paths.clear()
    array[0, 1] = 9  # one frame of a shard: read, modify, write
    assert paths == []
    expected = np.full(SHAPE, 7, dtype=np.uint8)
    expected[0, 1] = 9
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a", mode="r")[:], expected)


def test_a_flipped_byte_fails_the_zarrs_read(tmp_path):
    data = np.random.default_rng(2).integers(1, 255, SHAPE, dtype=np.uint8)
    _array(tmp_path / "a")[:] = data
    shard = tmp_path / "a/c/0/0/0/0"
    raw = bytearray(shard.read_bytes())
    raw[40] ^= 0xFF  # inside the first inner chunk's compressed bytes
    shard.write_bytes(bytes(raw))
    checked = CheckedArray(zarr.open_array(tmp_path / "a", mode="r"), "a.zarr/0",
                           require_chunks=True)
    from volseg.errors import DamagedDataError

    with pytest.raises(DamagedDataError, match=r"a\.zarr/0: damaged chunks .* frames t=0 z=0"):
        checked[:]
    np.testing.assert_array_equal(checked[1], data[1])


def test_the_pipeline_travels_to_another_process(tmp_path):
    data = np.random.default_rng(3).integers(1, 255, SHAPE, dtype=np.uint8)
    array = _array(tmp_path / "a")
    array[:] = data
    copy = pickle.loads(pickle.dumps(array))
    assert isinstance(copy._async_array.codec_pipeline, codecs.FastCodecPipeline)
    assert copy._async_array.codec_pipeline.impl is not None
    np.testing.assert_array_equal(copy[:], data)


def test_every_chunk_differs_from_fill():
    region = np.ones((2, 4, 6), dtype=np.uint8)
    assert codecs.every_chunk_differs_from_fill(region, (1, 2, 6), 0)
    region[1, 2:4] = 0
    assert not codecs.every_chunk_differs_from_fill(region, (1, 2, 6), 0)
    assert codecs.every_chunk_differs_from_fill(region, (1, 4, 6), 0)
    assert not codecs.every_chunk_differs_from_fill(region, (1, 3, 6), 0)  # not a multiple
    floats = np.full((2, 2), np.nan, dtype=np.float32)
    assert not codecs.every_chunk_differs_from_fill(floats, (1, 2), np.float32("nan"))
    floats[1, 0] = 0.5
    assert not codecs.every_chunk_differs_from_fill(floats, (1, 2), np.float32("nan"))
    floats[0, 1] = 0.0
    assert codecs.every_chunk_differs_from_fill(floats, (1, 2), np.float32("nan"))


def test_zarrs_own_setting_wins():
    """ZARR_CODEC_PIPELINE__PATH (zarr's setting) keeps zarr-python's pipeline: the
    benchmarks' baseline."""
    code = "import volseg.io, zarr; print(zarr.config.get('codec_pipeline.path'))"
    env_out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={"ZARR_CODEC_PIPELINE__PATH": codecs.ZARR_PIPELINE,
                                  "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert env_out.strip() == codecs.ZARR_PIPELINE


def test_a_partial_read_is_checked(tmp_path):
    """zarrs reads part of a shard without checking its CRC32C: volseg's pipeline gives
    such reads to zarr-python, so a flipped byte in one frame never comes back as data."""
    import struct

    data = np.random.default_rng(4).integers(1, 255, SHAPE, dtype=np.uint8)
    _array(tmp_path / "a")[:] = data
    shard = tmp_path / "a/c/0/0/0/0"
    raw = bytearray(shard.read_bytes())
    offset, nbytes = struct.unpack_from("<QQ", raw, len(raw) - (16 * 4 + 4) + 16)
    raw[offset + nbytes // 2] ^= 0x01  # frame t=0 z=1
    shard.write_bytes(bytes(raw))
    array = zarr.open_array(tmp_path / "a", mode="r")
    for key in [(0, 1), (0, slice(1, 3)), (slice(None),), (0, slice(None))]:
        with pytest.raises(Exception, match="checksum|crc|CRC"):
            array[key]
    np.testing.assert_array_equal(array[0, 2:], data[0, 2:])


def test_a_shard_written_through_an_integer_index_goes_to_zarrs(tmp_path, paths):
    """convert writes ``array[t, z0:z1] = frames``: the value lacks the t axis."""
    data = np.random.default_rng(5).integers(1, 255, SHAPE, dtype=np.uint8)
    array = _array(tmp_path / "a")
    array[1, 0:4] = data[1]
    assert paths == ["zarrs"]
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a", mode="r")[1], data[1])
